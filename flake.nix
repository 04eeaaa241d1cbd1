{
  description = "nixfleet control plane: desired NixOS generations, rollouts and an audit log for a fleet";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # The release version, linked into the binary (`nixfleet-control-plane version`). Bump it with each release.
      version = "0.2.0";

      # One package function, called by both `packages` and `overlays.default`, so they build the same thing.
      # go.mod's `go` line must not be newer than nixpkgs' Go: buildGoModule sets GOTOOLCHAIN=local.
      package = { lib, buildGoModule }:
        buildGoModule {
          pname = "nixfleet-control-plane";
          inherit version;
          src = ./.;

          # The NAR hash of `go mod vendor` for go.mod/go.sum. It changes whenever a dependency changes, and
          # module_test.go (TestFlakeVendorHash) fails with the new value. To refresh it, either
          #   1. set `vendorHash = lib.fakeHash;`, run `nix build`, and copy the hash printed after `got:`; or
          #   2. run `go mod vendor -o /tmp/nfvendor && nix hash path /tmp/nfvendor && rm -rf /tmp/nfvendor`
          #      (`nix --extra-experimental-features nix-command hash path …` where nix-command is not enabled).
          vendorHash = "sha256-n+WU7qcF6NauBw9DFU4VG1fnDQ387+nibJ/uzApqehk=";

          # A single binary in the module root.
          subPackages = [ "." ];

          # Pure Go (SQLite through modernc.org/sqlite): a static binary with no C toolchain in the build.
          env.CGO_ENABLED = 0;

          # -trimpath is not listed: buildGoModule already adds it to GOFLAGS (as long as allowGoReference is
          # false, the default) and warns when it is given twice.
          ldflags = [ "-s" "-w" "-X main.version=${version}" ];

          meta = {
            description = "Control plane for nixfleet: serves desired NixOS generations to agents and drives rollouts";
            mainProgram = "nixfleet-control-plane";
            platforms = lib.platforms.linux;
          };
        };
    in
    {
      packages = forAllSystems (pkgs: rec {
        nixfleet-control-plane = pkgs.callPackage package { };
        default = nixfleet-control-plane;
      });

      # Adds `pkgs.nixfleet-control-plane`, the default of the module's `package` option.
      overlays.default = final: prev: {
        nixfleet-control-plane = final.callPackage package { };
      };

      # The NixOS module with `package` defaulting to this flake's build; mkDefault so a host can still override
      # it with a plain definition.
      nixosModules.default = { lib, pkgs, ... }: {
        imports = [ ./module.nix ];
        services.nixfleet-control-plane.package =
          lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      };
    };
}
