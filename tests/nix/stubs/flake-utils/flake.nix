{
  description = "offline stub of numtide/flake-utils: lib.eachDefaultSystem only";

  outputs = { self }: {
    # Same shape as the real one: { devShells.default = x; } for each system becomes
    # { devShells.<system>.default = x; }.
    lib.eachDefaultSystem = f:
      let
        systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
        merge = acc: system:
          let out = f system;
          in acc // builtins.mapAttrs (name: value: (acc.${name} or { }) // { ${system} = value; }) out;
      in builtins.foldl' merge { } systems;
  };
}
