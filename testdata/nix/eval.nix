# Evaluates ../../module.nix with the real module system of nixpkgs (`lib.evalModules` from the nixpkgs library),
# as NixOS evaluates a host, and returns plain data for module_test.go (nix-instantiate --eval --strict --json).
# Nothing is built or fetched and nothing is copied to the store: module_test.go runs it against the dummy:// store.
#
# Arguments:
#   nixpkgsLib        the absolute path of a nixpkgs `lib` directory (a string: --argstr). module_test.go passes
#                     ../shared/nixpkgs-lib/lib, beside the repository, where CI puts it.
#   cfg               the `services.nixfleet-control-plane` definition, e.g. { enable = true; listen = "[::]:8443"; }
#                     or `import ./testdata/nix/readme-mtls.nix`.
#   extraConfig       a definition of other options, e.g. { services.prometheus.enable = true; }.
#   withImpermanence  declare impermanence's `environment.persistence`.
#   withPrometheus    declare the NixOS Prometheus module's `services.prometheus.{enable,ruleFiles}`.
#   checkAssertions   fail as a NixOS build does when an assertion fails ("Failed assertions: …", through
#                     lib.asserts.checkAssertWarn), and print the warnings otherwise.
#
# NixOS itself is not evaluated. In its place, stand-in modules declare just the NixOS options that module.nix
# defines or reads, with the types and defaults NixOS gives them (simplified where a comment says so). So the module
# system checks every definition for real: a value of the wrong type, a definition of an option that does not exist
# (even behind mkIf false), a conflict or an infinite recursion fails here as it would on a NixOS host. `pkgs` holds
# only a fake `nixfleet-control-plane` derivation whose outPath is a made-up store path.
#
# The result:
#   options           { "<name below services.nixfleet-control-plane>" = { type; default; defaultText; description; }; },
#                     e.g. "tls.cert"; `type` is the type's description as the NixOS manual shows it ("null or string")
#   defined           the other modules' options that module.nix defines, after mkIf (from `options.<name>.files`)
#   config            the resulting values of the stand-in options. The command line is only in
#                     systemd.services.nixfleet-control-plane.serviceConfig.ExecStart, exactly as systemd gets it;
#                     module_test.go splits it back into argv with the quoting rules of lib.escapeShellArg. With
#                     withPrometheus, services.prometheus.ruleFiles holds each path as a string (never copied).
#   assertions        config.assertions
#   failedAssertions  the messages of the failed assertions, as NixOS collects them
#   warnings          config.warnings
#
# By hand, from the repository root:
#   nix-instantiate --eval --strict --json testdata/nix/eval.nix --argstr nixpkgsLib "$PWD/../shared/nixpkgs-lib/lib" \
#     --arg cfg '{ enable = true; }'
{ nixpkgsLib
, cfg ? { }
, extraConfig ? { }
, withImpermanence ? false
, withPrometheus ? false
, checkAssertions ? false
}:

let
  lib = import nixpkgsLib;
  inherit (lib) mkOption types;

  modulePath = ../../module.nix;

  pkgs = {
    nixfleet-control-plane = {
      type = "derivation";
      name = "nixfleet-control-plane-stub";
      outPath = "/nix/store/00000000000000000000000000000000-nixfleet-control-plane-stub";
    };
  };

  # A value of a systemd unit setting. Simplified: nixos/lib/systemd-unit-options.nix also takes nested lists.
  unitValue = types.oneOf [ types.bool types.int types.str (types.listOf types.str) ];

  # The NixOS options that module.nix defines, always present on a NixOS host, and the module arguments.
  nixos = {
    _file = "testdata/nix/eval.nix (NixOS stand-ins)";
    options = {
      # nixos/modules/misc/assertions.nix
      assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; internal = true; };
      warnings = mkOption { type = types.listOf types.str; default = [ ]; internal = true; };

      # nixos/modules/config/users-groups.nix, with the sub-options module.nix uses.
      users.users = mkOption {
        type = types.attrsOf (types.submodule {
          options = {
            isSystemUser = mkOption { type = types.bool; default = false; };
            group = mkOption { type = types.str; default = ""; };
            description = mkOption { type = types.passwdEntry types.str; default = ""; };
          };
        });
        default = { };
      };
      users.groups = mkOption {
        type = types.attrsOf (types.submodule {
          options = {
            gid = mkOption { type = types.nullOr types.int; default = null; };
            members = mkOption { type = types.listOf types.str; default = [ ]; };
          };
        });
        default = { };
      };

      # nixos/lib/systemd-unit-options.nix, with the unit attributes module.nix uses: anything else it set
      # (an `environment`, say) would fail the evaluation as an option that does not exist.
      systemd.services = mkOption {
        type = types.attrsOf (types.submodule {
          options = {
            description = mkOption { type = types.singleLineStr; default = ""; };
            wantedBy = mkOption { type = types.listOf types.str; default = [ ]; };
            after = mkOption { type = types.listOf types.str; default = [ ]; };
            wants = mkOption { type = types.listOf types.str; default = [ ]; };
            serviceConfig = mkOption { type = types.attrsOf unitValue; default = { }; };
          };
        });
        default = { };
      };
      # nixos/modules/system/boot/systemd/tmpfiles.nix
      systemd.tmpfiles.rules = mkOption { type = types.listOf types.str; default = [ ]; };

      # nixos/modules/services/networking/firewall.nix
      networking.firewall.allowedTCPPorts = mkOption { type = types.listOf types.port; default = [ ]; };

      # nixos/modules/system/etc/etc.nix. Not used by module.nix, but always beside impermanence's
      # environment.persistence on NixOS: `options ? environment` proves nothing about impermanence.
      environment.etc = mkOption { type = types.attrsOf types.anything; default = { }; };
    };
    config._module.args.pkgs = pkgs;
  };

  # nix-community/impermanence: environment.persistence.<root>.directories, whose entries are a path or
  # { directory; user; group; mode; }.
  impermanence = {
    _file = "testdata/nix/eval.nix (impermanence stand-in)";
    options.environment.persistence = mkOption {
      type = types.attrsOf (types.submodule {
        options.directories = mkOption {
          type = types.listOf (types.coercedTo types.str (directory: { inherit directory; }) (types.submodule {
            options = {
              directory = mkOption { type = types.str; };
              user = mkOption { type = types.str; default = "root"; };
              group = mkOption { type = types.str; default = "root"; };
              mode = mkOption { type = types.str; default = "0755"; };
            };
          }));
          default = [ ];
        };
      });
      default = { };
    };
  };

  # nixos/modules/services/monitoring/prometheus/default.nix, with the options module.nix defines or reads.
  prometheus = {
    _file = "testdata/nix/eval.nix (Prometheus stand-in)";
    options.services.prometheus = {
      enable = lib.mkEnableOption "Prometheus monitoring daemon";
      ruleFiles = mkOption { type = types.listOf types.path; default = [ ]; };
    };
  };

  evaluated = lib.evalModules {
    class = "nixos";
    modules = [
      modulePath
      nixos
      { _file = "cfg (testdata/nix/eval.nix)"; config.services.nixfleet-control-plane = cfg; }
      { _file = "extraConfig (testdata/nix/eval.nix)"; config = extraConfig; }
    ]
    ++ lib.optional withImpermanence impermanence
    ++ lib.optional withPrometheus prometheus;
  };
  inherit (evaluated) config options;

  # The option declarations of a subtree, without the module system's own `_module` options.
  optionsOf = tree: lib.collect lib.isOption (removeAttrs tree [ "_module" ]);

  result = {
    options = lib.listToAttrs (map
      (opt: lib.nameValuePair (lib.concatStringsSep "." (lib.drop 2 opt.loc)) {
        type = opt.type.description;
        default = opt.default or null;
        defaultText = opt.defaultText or null;
        description = opt.description or null;
      })
      (optionsOf options.services.nixfleet-control-plane));

    # An option's default counts as a definition from the file that declares it, so module.nix's own options
    # are left out.
    defined = map (opt: lib.showOption opt.loc)
      (lib.filter (opt: lib.elem (toString modulePath) opt.files && !lib.elem (toString modulePath) opt.declarations)
        (optionsOf options));

    config = {
      inherit (config) users systemd networking environment;
    } // lib.optionalAttrs withPrometheus {
      services.prometheus = {
        inherit (config.services.prometheus) enable;
        ruleFiles = map toString config.services.prometheus.ruleFiles;
      };
    };

    inherit (config) assertions warnings;
    # Collected as lib.asserts.checkAssertWarn (below) collects them for NixOS.
    failedAssertions = map (x: x.message) (lib.filter (x: !x.assertion) config.assertions);
  };
in
if checkAssertions then lib.asserts.checkAssertWarn config.assertions config.warnings result else result
