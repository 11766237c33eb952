{
  description = "offline stub of nixpkgs: only the attributes shopstream's flake.nix uses";

  # Anything the real flake asks for that is missing here fails evaluation, so a
  # misspelt attribute is caught. Whether the name exists in real nixpkgs is not.
  outputs = { self }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      mkPkgs = system:
        let
          # Never built (`--no-build`); a derivation so it can be put in a store path.
          fake = name: derivation {
            inherit name system;
            builder = "/bin/sh";
            args = [ "-c" "echo ${name} > $out" ];
          };
          named = names: builtins.listToAttrs (map (name: { inherit name; value = fake name; }) names);
        in
        named [ "python311" "spark" "postgresql_15" "apacheKafka" "minio" "minio-client" "uv" "git" "curl" "zlib" "wrk" "chromium" ]
        // {
          jdk17 = fake "jdk17" // { home = "${fake "jdk17"}/lib/openjdk"; };
          python311Packages = named [ "invoke" ];
          stdenv.cc.cc.lib = fake "gcc-lib";
          stdenv.isLinux = builtins.match ".*-linux" system != null;
          lib.optionals = cond: list: if cond then list else [ ];
          lib.makeLibraryPath = ps: builtins.concatStringsSep ":" (map (p: "${p}/lib") ps);
          # Like the real mkShell, every other argument becomes an environment variable
          # of the derivation, so values that are not strings or paths fail here too.
          mkShell = { packages ? [ ], shellHook ? "", ... }@attrs:
            derivation (builtins.removeAttrs attrs [ "packages" ] // {
              name = "nix-shell";
              inherit system packages shellHook;
              builder = "/bin/sh";
              args = [ "-c" "echo ok > $out" ];
            });
        };
    in {
      legacyPackages = builtins.listToAttrs (map (system: { name = system; value = mkPkgs system; }) systems);
    };
}
