{
  description = "shopstream dev shell: Python 3.11, JDK 17, Spark, PostgreSQL, Kafka, MinIO";

  # No flake.lock is committed: nixpkgs could not be fetched where this was written.
  # `nix develop` creates one on first use; commit it from a machine with Nix.
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
    flake-utils.url = "github:numtide/flake-utils";
  };

  outputs = { self, nixpkgs, flake-utils }:
    flake-utils.lib.eachDefaultSystem (system:
      let pkgs = nixpkgs.legacyPackages.${system};
      in {
        devShells.default = pkgs.mkShell {
          packages = [
            pkgs.python311
            pkgs.jdk17
            pkgs.spark
            pkgs.postgresql_15 # same major as Debian 12, so .run/ data dirs stay readable
            pkgs.apacheKafka
            pkgs.minio
            pkgs.minio-client
            pkgs.uv
            pkgs.python311Packages.invoke
            pkgs.git
            pkgs.curl
            pkgs.wrk # the API benchmark's load generator
          ] ++ pkgs.lib.optionals pkgs.stdenv.isLinux [
            pkgs.chromium # the dashboard's browser test (Playwright drives it)
          ];
          # .venv holds manylinux wheels (pyarrow, psycopg2-binary, ...) that need
          # libstdc++ and zlib, which NixOS has on no default library path.
          LD_LIBRARY_PATH = pkgs.lib.makeLibraryPath [ pkgs.stdenv.cc.cc.lib pkgs.zlib ];
          shellHook = ''
            export JAVA_HOME=${pkgs.jdk17.home}
            echo "shopstream dev shell: run ./shopstream setup to create .venv (then ./shopstream up)"
          '';
        };
      });
}
