package main

// Tests for the Prometheus alerting rules in contrib/prometheus: promtool validates nixfleet.rules.yml and runs its
// unit tests (nixfleet.rules.test.yml), and every alert is checked for what an operator needs (a `for`, a severity,
// a summary and a description) and for unit tests that make it fire and keep it quiet. Like the metrics tests, the
// promtool tests skip without promtool (Debian package prometheus, which .ci/run installs).

import (
	"bytes"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const (
	rulesFile     = "contrib/prometheus/nixfleet.rules.yml"
	rulesTestFile = "contrib/prometheus/nixfleet.rules.test.yml"
)

// requirePromtool returns the path of promtool, or skips the test when it is not installed.
func requirePromtool(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not on PATH (Debian package prometheus); skipping the promtool rule checks")
	}
	return bin
}

// runPromtool runs promtool with args and fails the test, with promtool's output, when it exits non-zero.
func runPromtool(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command(requirePromtool(t), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
}

// TestRulesCheck validates the rules file: YAML, PromQL and templates.
func TestRulesCheck(t *testing.T) {
	runPromtool(t, "check", "rules", rulesFile)
}

// TestRulesUnitTests runs the rules' unit tests: each alert fires on its input series, with its labels and its
// rendered annotations, and stays quiet on the cases that must not fire.
func TestRulesUnitTests(t *testing.T) {
	runPromtool(t, "test", "rules", rulesTestFile)
}

// rulesAlert is one alerting rule of the rules file, as read by readRulesAlerts.
type rulesAlert struct {
	name string
	body string // the rule's lines, `- alert:` line included
}

// readRulesAlerts splits the rules file into its alerting rules. It relies on the file's layout (one `- alert:` line
// per rule, the rule's other keys below it); promtool checks the YAML itself.
func readRulesAlerts(t *testing.T) []rulesAlert {
	t.Helper()
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var alerts []rulesAlert
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if name, ok := strings.CutPrefix(strings.TrimSpace(line), "- alert:"); ok {
			alerts = append(alerts, rulesAlert{name: strings.TrimSpace(name)})
		}
		if len(alerts) > 0 {
			alerts[len(alerts)-1].body += line
		}
	}
	if len(alerts) == 0 {
		t.Fatalf("no alerting rules in %s", rulesFile)
	}
	return alerts
}

// rulesTestCases returns, for each alert name in the unit-test file, how many of its alert_rule_test cases expect
// it to fire and how many expect it not to (`exp_alerts: []`).
func rulesTestCases(t *testing.T) (firing, quiet map[string]int) {
	t.Helper()
	b, err := os.ReadFile(rulesTestFile)
	if err != nil {
		t.Fatal(err)
	}
	firing, quiet = map[string]int{}, map[string]int{}
	alert := ""
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if name, ok := strings.CutPrefix(line, "alertname:"); ok {
			alert = strings.TrimSpace(name)
		} else if rest, ok := strings.CutPrefix(line, "exp_alerts:"); ok && alert != "" {
			if strings.TrimSpace(rest) == "[]" {
				quiet[alert]++
			} else {
				firing[alert]++
			}
			alert = ""
		}
	}
	return firing, quiet
}

// TestRulesEveryAlert checks the alerts this repository promises: exactly these names, each with a `for`, a
// severity, a summary and a description that shows the value, and each both fired and kept quiet by the unit tests.
func TestRulesEveryAlert(t *testing.T) {
	alerts := readRulesAlerts(t)
	var names []string
	for _, a := range alerts {
		names = append(names, a.name)
	}
	want := []string{"NixfleetMachinesStale", "NixfleetMachinesDrifted", "NixfleetRolloutPaused", "NixfleetRolloutFailed",
		"NixfleetAuthFailureBurst", "NixfleetDatabaseBusy", "NixfleetExecutorErrors", "NixfleetControlPlaneDown"}
	if !slices.Equal(names, want) {
		t.Errorf("alerts %q, want %q", names, want)
	}

	firing, quiet := rulesTestCases(t)
	keys := []*regexp.Regexp{
		regexp.MustCompile(`(?m)^\s+for: \d+[smh]$`),
		regexp.MustCompile(`(?m)^\s+severity: (critical|warning|info)$`),
		regexp.MustCompile(`(?m)^\s+summary: \S`),
		regexp.MustCompile(`(?m)^\s+description: \S`),
	}
	showsValue := regexp.MustCompile(`\{\{ \$value[ }|]`)
	for _, a := range alerts {
		t.Run(a.name, func(t *testing.T) {
			for _, re := range keys {
				if !re.MatchString(a.body) {
					t.Errorf("rule has nothing matching %s:\n%s", re, a.body)
				}
			}
			// The value of NixfleetControlPlaneDown is always 0 (up == 0); it names the instance instead.
			if a.name == "NixfleetControlPlaneDown" {
				if !strings.Contains(a.body, "{{ $labels.instance }}") {
					t.Errorf("annotations do not name the instance:\n%s", a.body)
				}
			} else if !showsValue.MatchString(a.body) {
				t.Errorf("annotations do not show the value:\n%s", a.body)
			}
			if firing[a.name] == 0 || quiet[a.name] == 0 {
				t.Errorf("%s has %d firing and %d quiet cases in %s, want at least one of each",
					a.name, firing[a.name], quiet[a.name], rulesTestFile)
			}
		})
	}
}

// TestRulesMetricNames checks that every nixfleet_* name in the rules file is a metric the daemon exports (per
// testdata/metrics.golden), so a typo cannot make an alert silently never fire.
func TestRulesMetricNames(t *testing.T) {
	golden, err := os.ReadFile("testdata/metrics.golden")
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (\S+) `).FindAllStringSubmatch(string(golden), -1) {
		exported[m[1]] = true
	}
	rules, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	used := regexp.MustCompile(`\bnixfleet_[a-z0-9_]+`).FindAllString(string(rules), -1)
	slices.Sort(used)
	for _, name := range slices.Compact(used) {
		switch {
		case exported[name]:
		default:
			t.Errorf("%s reads %s, which the daemon does not export (not in testdata/metrics.golden)", rulesFile, name)
		}
	}
}
