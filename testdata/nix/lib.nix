# A small stand-in for the parts of nixpkgs' `lib` that module.nix and flake.nix use, so that both can be
# evaluated by plain nix-instantiate without a nixpkgs checkout. Each function follows the nixpkgs definition
# closely enough for what the module does with it; anything the module uses that is missing here fails loudly.
let
  inherit (builtins)
    all concatLists concatStringsSep elem filter isAttrs isBool isList isString listToAttrs match
    replaceStrings;

  isDerivation = v: isAttrs v && (v.type or null) == "derivation";

  # mkOption's argument is a closed set, as in nixpkgs, but smaller: only what the driver honours, so a typo or
  # an unsupported attribute (apply, readOnly, …) is an evaluation error rather than silently ignored.
  mkOption = { default ? null, defaultText ? null, example ? null, description ? null, type ? null }@attrs:
    attrs // { _type = "option"; };

  # Option types carry `sig`, a short signature the tests compare against SPEC §13.1, and `check`, which the
  # driver applies to every default and every user value.
  mkType = sig: check: { _type = "option-type"; inherit sig check; };

  types = {
    bool = mkType "bool" isBool;
    str = mkType "str" isString;
    package = mkType "package" isDerivation;
    nullOr = t: mkType "nullOr ${t.sig}" (v: v == null || t.check v);
    listOf = t: mkType "listOf ${t.sig}" (v: isList v && all t.check v);
    enum = values: mkType "enum ${concatStringsSep "/" values}" (v: elem v values);
  };

  # lib.escapeShellArg as in current nixpkgs: words made only of safe characters stay bare, anything else is
  # single-quoted with embedded quotes written as '\''.
  escapeShellArg = arg:
    let string = toString arg;
    in if match "[[:alnum:],._+:@%/-]+" string == null
    then "'${replaceStrings [ "'" ] [ "'\\''" ] string}'"
    else string;
in
{
  inherit mkOption types isDerivation escapeShellArg;

  mkEnableOption = name: mkOption {
    default = false;
    example = true;
    description = "Whether to enable ${name}.";
    type = types.bool;
  };

  literalExpression = text: { _type = "literalExpression"; inherit text; };

  mkIf = condition: content: { _type = "if"; inherit condition content; };
  mkMerge = contents: { _type = "merge"; inherit contents; };
  mkDefault = content: { _type = "override"; priority = 1000; inherit content; };

  optional = cond: elem: if cond then [ elem ] else [ ];
  optionalAttrs = cond: as: if cond then as else { };

  inherit filter;
  concatMap = f: list: concatLists (map f list);
  escapeShellArgs = args: concatStringsSep " " (map escapeShellArg args);
  genAttrs = names: f: listToAttrs (map (name: { inherit name; value = f name; }) names);
  # What flake.nix's vendorHash is set to while refreshing it (TestFlakeOutputs rejects it).
  fakeHash = "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

  fix = f: let x = f x; in x;

  platforms.linux = [ "x86_64-linux" "aarch64-linux" ];
}
