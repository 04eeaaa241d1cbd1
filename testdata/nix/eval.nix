# Evaluates ../../module.nix the way the NixOS module system would for one host, without NixOS or nixpkgs, and
# returns plain data for module_test.go (nix-instantiate --eval --strict --json).
#
#   cfg               the user's `services.nixfleet-control-plane` values, e.g. { enable = true; listen = "[::]:8443"; }
#                     (or `import ./readme-mtls.nix`). Unknown names and values of the wrong type are errors, as
#                     in NixOS.
#   withImpermanence  declare the impermanence module's `environment.persistence` option.
#
# What it does, in NixOS terms:
#   * `lib` is the stub in ./lib.nix; `pkgs` holds only a fake `nixfleet-control-plane` derivation whose outPath
#     is a made-up store path (nothing is built or copied to the store).
#   * `options` declares the module's own options, the NixOS options it defines (assertions, users, systemd,
#     networking.firewall), an unrelated `environment.etc` and, with withImpermanence, `environment.persistence`,
#     so `options ? environment.persistence` behaves as on a real host. A definition of an undeclared option is an
#     error even behind mkIf false, as in NixOS.
#   * `config.services.nixfleet-control-plane` is each declared option's user value, else its default, checked
#     against the option's type. This module is the only one defining it, so no priorities are needed. As in
#     NixOS, it can only be read once the top-level attribute names of the module's config are known, so a
#     module that picks those names from its own cfg fails with infinite recursion here too.
#   * The module's `config` is resolved by `resolve`: mkIf keeps or drops its content, mkMerge and attribute sets
#     merge recursively (lists concatenate, equal leaves are kept, different leaves are a conflict), mkOverride
#     unwraps. A dropped value leaves no attribute behind, as an undefined option would.
#
# The result:
#   options  { "<dotted name>" = { type; default; defaultText; description; }; }, e.g. "tls.cert"
#   cfg      the effective option values
#   config   the resolved module output. The command line is only in
#            config.systemd.services.nixfleet-control-plane.serviceConfig.ExecStart, exactly as systemd gets it;
#            module_test.go splits it back into argv with the quoting rules of escapeShellArg (see lib.nix), so
#            the test checks the real string rather than a copy of the argument list.
{ cfg ? { }, withImpermanence ? false }:

let
  lib = import ./lib.nix;
  inherit (builtins) all attrNames concatStringsSep filter foldl' isAttrs isList listToAttrs mapAttrs typeOf;

  prefix = "services.nixfleet-control-plane";

  pkgs = {
    nixfleet-control-plane = {
      type = "derivation";
      name = "nixfleet-control-plane-stub";
      outPath = "/nix/store/00000000000000000000000000000000-nixfleet-control-plane-stub";
    };
  };

  module = import ../../module.nix { inherit config lib pkgs options; };
  declared = module.options.services.nixfleet-control-plane;

  # The option tree, passed to the module as `options` and used to reject definitions of undeclared options.
  # Options of other NixOS modules are declared without a type: the driver checks only where they exist.
  nixosOption = description: lib.mkOption { inherit description; };
  options = {
    services.nixfleet-control-plane = declared;
    assertions = nixosOption "assertions";
    users = { users = nixosOption "users"; groups = nixosOption "groups"; };
    systemd = { services = nixosOption "services"; tmpfiles.rules = nixosOption "tmpfiles rules"; };
    networking.firewall.allowedTCPPorts = nixosOption "open TCP ports";
    environment = {
      etc = nixosOption "unrelated option beside environment.persistence";
    } // lib.optionalAttrs withImpermanence {
      persistence = nixosOption "stand-in for impermanence's environment.persistence";
    };
  };

  isOption = v: isAttrs v && (v._type or null) == "option";

  # Walks the declarations beside the user's values; returns the effective values.
  effective = path: decls: values:
    let
      unknown = filter (n: !(decls ? ${n})) (attrNames values);
      name = n: concatStringsSep "." ([ prefix ] ++ path ++ [ n ]);
    in
    if unknown != [ ] then throw "the option `${name (builtins.head unknown)}' does not exist"
    else mapAttrs
      (n: decl:
        if isOption decl then
          let v = if values ? ${n} then values.${n} else decl.default;
          in if decl.type.check v then v
          else throw "the option `${name n}' is not of type `${decl.type.sig}' (got a ${typeOf v})"
        else effective (path ++ [ n ]) decl (values.${n} or { }))
      decls;

  # In NixOS an option's value is merged from every module's definitions, so reading any config.services.* value
  # first needs the top-level attribute names of this module's config (through mkIf and mkMerge, without their
  # conditions). Making cfg wait for them reproduces the module system's infinite recursion when a module decides
  # its top-level attributes from its own cfg.
  topNames = v:
    if isAttrs v && (v._type or null) == "if" then topNames v.content
    else if isAttrs v && (v._type or null) == "merge" then lib.concatMap topNames v.contents
    else if isAttrs v && (v._type or null) == "override" then topNames v.content
    else if isAttrs v then attrNames v
    else [ ];

  config.services.nixfleet-control-plane =
    builtins.seq (builtins.length (topNames module.config)) (effective [ ] declared cfg);

  # Like the module system, every definition must name a declared option, even behind mkIf false: walks the
  # definitions through mkIf, mkMerge and mkOverride without evaluating conditions, down to the options.
  checkDeclared = path: opts: def:
    if isAttrs def && (def._type or null) == "if" then checkDeclared path opts def.content
    else if isAttrs def && (def._type or null) == "merge" then all (checkDeclared path opts) def.contents
    else if isAttrs def && (def._type or null) == "override" then checkDeclared path opts def.content
    else if isOption opts then true
    else if isPlainSet def then
      all
        (n: if opts ? ${n} then checkDeclared (path ++ [ n ]) opts.${n} def.${n}
          else throw "The option `${concatStringsSep "." (path ++ [ n ])}' does not exist.")
        (attrNames def)
    else throw "`${concatStringsSep "." path}' is a set of options, not a value";

  # Flattens the declarations to { "tls.cert" = { ... }; }.
  flatten = path: decls:
    foldl' (acc: n:
      let decl = decls.${n}; p = path ++ [ n ];
      in acc // (if isOption decl then {
        ${concatStringsSep "." p} = {
          type = decl.type.sig;
          default = decl.default;
          defaultText = decl.defaultText or null;
          description = decl.description or null;
        };
      } else flatten p decl))
      { }
      (attrNames decls);

  absent = { _type = "absent"; };
  isAbsent = v: isAttrs v && (v._type or null) == "absent";
  isPlainSet = v: isAttrs v && !(v ? _type) && !(lib.isDerivation v);

  resolve = v:
    if isAttrs v && (v._type or null) == "if" then
      (if v.condition then resolve v.content else absent)
    else if isAttrs v && (v._type or null) == "merge" then
      foldl' merge absent (map resolve v.contents)
    else if isAttrs v && (v._type or null) == "override" then
      resolve v.content
    else if isAttrs v && v ? _type then
      throw "resolve: unexpected ${v._type} in the module's config"
    else if isPlainSet v then
      let resolved = mapAttrs (_: resolve) v;
      in listToAttrs (map (name: { inherit name; value = resolved.${name}; })
        (filter (n: !(isAbsent resolved.${n})) (attrNames resolved)))
    else v;

  merge = a: b:
    if isAbsent a then b
    else if isAbsent b then a
    else if isPlainSet a && isPlainSet b then
      a // b // mapAttrs (n: _: merge a.${n} b.${n}) (builtins.intersectAttrs a b)
    else if isList a && isList b then a ++ b
    else if a == b then a
    else throw "conflicting definitions in the module's config";

  resolvedConfig = assert checkDeclared [ ] options module.config; resolve module.config;
in
{
  options = flatten [ ] declared;
  cfg = config.services.nixfleet-control-plane;
  config = if isAbsent resolvedConfig then { } else resolvedConfig;
}
