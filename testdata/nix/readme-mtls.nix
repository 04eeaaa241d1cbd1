# The README's production (mTLS) NixOS example: it shows this attribute set, exactly as written below this comment,
# as the value of `services.nixfleet-control-plane = …;`. module_test.go evaluates it and checks that README.md
# matches.
{
  enable = true;
  listen = "0.0.0.0:8443";
  openFirewall = true;
  tls = {
    cert = "/run/secrets/cp-cert.pem";
    key = "/run/secrets/cp-key.pem";
    clientCa = "/run/secrets/fleet-ca.pem";
  };
  bootstrapTokenFile = "/run/secrets/cp-bootstrap-token";
}
