# The README's minimal NixOS example: it shows this attribute set, exactly as written below this comment, as the
# value of `services.nixfleet-control-plane = …;`. module_test.go evaluates it and checks that README.md matches.
{
  enable = true;
}
