# Calls ../../flake.nix's `outputs` with a stub nixpkgs around the real nixpkgs library and returns plain data for
# module_test.go (nix-instantiate --eval --strict --json). Nothing is fetched or built.
#
# The stub's buildGoModule returns the arguments it was given plus the GOFLAGS that nixpkgs' buildGoModule derives
# from them (-mod=vendor, and -trimpath unless allowGoReference), and fails, as nixpkgs does, on a missing
# vendorHash and on CGO_ENABLED given both at the top level and in `env`. `src` is replaced by whether it is the
# repository root, so no path is ever copied to the store.
#
# `nixpkgsLib` is the absolute path of the nixpkgs `lib` directory, as for eval.nix.
{ nixpkgsLib }:

let
  lib = import nixpkgsLib;
  systems = [ "x86_64-linux" "aarch64-linux" ];

  buildGoModule = args:
    assert args ? vendorHash || throw "buildGoModule: vendorHash is missing";
    assert !(args ? CGO_ENABLED && (args.env or { }) ? CGO_ENABLED)
      || throw "the env attribute set cannot contain any attributes passed to derivation: CGO_ENABLED";
    let name = "${args.pname}-${args.version}";
    in {
      type = "derivation";
      inherit name;
      outPath = "/nix/store/00000000000000000000000000000000-${name}";
      args = removeAttrs args [ "src" ] // { srcIsRepoRoot = args.src == ../..; };
      GOFLAGS = (args.GOFLAGS or [ ]) ++ [ "-mod=vendor" ]
        ++ lib.optional (!(args.allowGoReference or false)) "-trimpath";
    };

  stubPkgs = system: lib.fix (self: {
    inherit lib;
    buildGoModule = args: buildGoModule args // { inherit system; };
    stdenv.hostPlatform.system = system;
    callPackage = fn: overrides: fn (builtins.intersectAttrs (builtins.functionArgs fn) self // overrides);
  });

  nixpkgs = {
    inherit lib;
    legacyPackages = lib.genAttrs systems stubPkgs;
  };

  flake = import ../../flake.nix;
  outputs = flake.outputs { inherit self nixpkgs; };
  self = outputs // { outPath = "/nix/store/00000000000000000000000000000000-source"; };

  # Applies overlays.default to a stub package set, as nixpkgs' fixed point would.
  overlaid = lib.fix (final: let prev = stubPkgs "x86_64-linux"; in prev // outputs.overlays.default final prev);

  nixosModule = outputs.nixosModules.default { inherit lib; pkgs = stubPkgs "aarch64-linux"; };
  packageDef = nixosModule.services.nixfleet-control-plane.package;
in
{
  inputs = builtins.mapAttrs (_: input: input.url or null) flake.inputs;
  packages = builtins.mapAttrs (_: pkgs: builtins.mapAttrs (_: p: { inherit (p) name system args GOFLAGS; }) pkgs)
    outputs.packages;
  overlay = { inherit (overlaid.nixfleet-control-plane) name system args GOFLAGS; };
  nixosModule = {
    imports = map (p: if p == ../../module.nix then "module.nix" else toString p) nixosModule.imports;
    package = { inherit (packageDef) _type priority; content = { inherit (packageDef.content) name system; }; };
  };
}
