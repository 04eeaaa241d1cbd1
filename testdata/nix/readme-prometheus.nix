# The README's Prometheus example: it shows this attribute set, exactly as written below this comment, as the value
# of `services.nixfleet-control-plane = …;`, beside a `services.prometheus` that scrapes the control plane.
# module_test.go evaluates it (TestModulePrometheusRules).
{
  enable = true;
  prometheusRules = true;
}
