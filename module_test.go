package main

// Tests for the NixOS module (module.nix) and the flake (flake.nix), SPEC §13, ACC-120 and ACC-121.
//
// There is no NixOS here, but the module system is the real one: testdata/nix/eval.nix evaluates module.nix with
// lib.evalModules from the nixpkgs library in ../shared/nixpkgs-lib/lib, beside stand-in modules that declare the
// NixOS options module.nix defines or reads (with their NixOS types), and returns the resulting configuration as
// JSON. testdata/nix/flake-eval.nix calls the flake's outputs with a stub nixpkgs around the same library. The tests
// skip without nix-instantiate, and fail when the nixpkgs library is missing.

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// moduleStubPackage is the outPath of pkgs.nixfleet-control-plane in testdata/nix/eval.nix.
const moduleStubPackage = "/nix/store/00000000000000000000000000000000-nixfleet-control-plane-stub"

const (
	assertListenMsg   = "listen must be in HOST:PORT format"
	assertCertKeyMsg  = "tls.cert and tls.key must be set together"
	assertClientCAMsg = "tls.clientCa requires tls.cert and tls.key"
	warnNoPrometheus  = "services.nixfleet-control-plane.prometheusRules is set, but this host runs no Prometheus" +
		" (services.prometheus.enable is not true), so the alerting rules are not evaluated here."
	moduleStateDir    = "/var/lib/nixfleet-cp"
	moduleDefaultArgs = "--listen 0.0.0.0:8080 --db-path /var/lib/nixfleet-cp/state.db --executor-interval 2s --report-retention 168h --log-level info"
)

// requireNix skips the test when nix-instantiate is missing (for example inside the Nix build sandbox).
func requireNix(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("nix-instantiate"); err != nil {
		t.Skip("nix-instantiate not installed; install Debian package nix-bin")
	}
}

// nixpkgsLib returns the absolute path of the nixpkgs library that the evaluations import: ../shared/nixpkgs-lib/lib,
// where CI checks it out beside the repository (as it does ../shared/SPEC.md). Without nix-instantiate the test is
// skipped first; with it, a missing library fails the test, since the module cannot be checked without it.
func nixpkgsLib(t *testing.T) string {
	t.Helper()
	requireNix(t)
	dir, err := filepath.Abs(filepath.Join("..", "shared", "nixpkgs-lib", "lib"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "default.nix")); err != nil {
		t.Fatalf("nixpkgs library not found at %s: %v\nmodule.nix is evaluated with nixpkgs' own lib.evalModules, "+
			"from ../shared/nixpkgs-lib/lib beside the repository (where CI checks it out, next to ../shared/SPEC.md)", dir, err)
	}
	return dir
}

// nixEnv returns the environment for a nix command that must work as any user, with no daemon and no store:
// state, configuration and home point into a temporary directory, so neither /nix/var nor the host's nix.conf
// is read.
func nixEnv(t *testing.T) []string {
	t.Helper()
	dir := t.TempDir()
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NIX_") && !strings.HasPrefix(kv, "XDG_") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	return append(env,
		"HOME="+dir,
		"NIX_STATE_DIR="+filepath.Join(dir, "state"),
		"NIX_CONF_DIR="+filepath.Join(dir, "conf"),
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"),
		"XDG_CACHE_HOME="+filepath.Join(dir, "cache"),
	)
}

// runNixInstantiate runs nix-instantiate against the dummy store, which holds nothing and accepts no writes: an
// evaluation that tried to copy a path to the store would fail here.
func runNixInstantiate(t *testing.T, args ...string) (stdout []byte, stderr string, err error) {
	t.Helper()
	requireNix(t)
	args = append([]string{"--store", "dummy://", "--option", "build-users-group", ""}, args...)
	cmd := exec.Command("nix-instantiate", args...)
	cmd.Env = nixEnv(t)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.Bytes(), errb.String(), err
}

// moduleEval is the output of testdata/nix/eval.nix.
type moduleEval struct {
	// Options are the module's options by their name below services.nixfleet-control-plane ("tls.cert").
	Options map[string]struct {
		Type        string          `json:"type"` // the type's description, as in the NixOS manual
		Default     json.RawMessage `json:"default"`
		DefaultText *struct {
			Type string `json:"_type"`
			Text string `json:"text"`
		} `json:"defaultText"`
		Description string `json:"description"`
	} `json:"options"`
	// Defined lists the NixOS options that module.nix defines, after mkIf.
	Defined    []string     `json:"defined"`
	Config     moduleConfig `json:"config"`
	Assertions []struct {
		Assertion bool   `json:"assertion"`
		Message   string `json:"message"`
	} `json:"assertions"`
	FailedAssertions []string        `json:"failedAssertions"`
	Warnings         []string        `json:"warnings"`
	ConfigRaw        json.RawMessage `json:"-"`
}

// moduleConfig holds the values of the NixOS options declared by the stand-ins of testdata/nix/eval.nix.
type moduleConfig struct {
	Users struct {
		Users map[string]struct {
			IsSystemUser bool   `json:"isSystemUser"`
			Group        string `json:"group"`
		} `json:"users"`
		Groups map[string]json.RawMessage `json:"groups"`
	} `json:"users"`
	Systemd struct {
		Services map[string]moduleService `json:"services"`
		Tmpfiles struct {
			Rules []string `json:"rules"`
		} `json:"tmpfiles"`
	} `json:"systemd"`
	Networking struct {
		Firewall struct {
			AllowedTCPPorts []int `json:"allowedTCPPorts"`
		} `json:"firewall"`
	} `json:"networking"`
	Environment struct {
		// Persistence is nil when the impermanence module is not loaded (the option does not exist).
		Persistence map[string]struct {
			Directories []map[string]string `json:"directories"`
		} `json:"persistence"`
	} `json:"environment"`
	Services struct {
		// Prometheus is nil when the Prometheus module is not loaded.
		Prometheus *struct {
			Enable    bool     `json:"enable"`
			RuleFiles []string `json:"ruleFiles"`
		} `json:"prometheus"`
	} `json:"services"`
}

type moduleService struct {
	Description   string                     `json:"description"`
	WantedBy      []string                   `json:"wantedBy"`
	After         []string                   `json:"after"`
	Wants         []string                   `json:"wants"`
	ServiceConfig map[string]json.RawMessage `json:"serviceConfig"`
}

// moduleHost describes the host module.nix is evaluated in, beside the NixOS stand-ins that are always there.
type moduleHost struct {
	impermanence    bool   // load the impermanence stand-in (environment.persistence)
	prometheus      bool   // load the Prometheus stand-in (services.prometheus.enable and ruleFiles)
	extraConfig     string // a Nix expression defining other options, e.g. `{ services.prometheus.enable = true; }`
	checkAssertions bool   // fail on a failed assertion, as a NixOS build does
}

// runModuleEval runs testdata/nix/eval.nix with cfg, a Nix expression for the services.nixfleet-control-plane
// values, on host.
func runModuleEval(t *testing.T, cfg string, host moduleHost) (stdout []byte, stderr string, err error) {
	t.Helper()
	args := []string{"--eval", "--strict", "--json", "testdata/nix/eval.nix",
		"--argstr", "nixpkgsLib", nixpkgsLib(t),
		"--arg", "cfg", cfg,
		"--arg", "withImpermanence", fmt.Sprint(host.impermanence),
		"--arg", "withPrometheus", fmt.Sprint(host.prometheus),
		"--arg", "checkAssertions", fmt.Sprint(host.checkAssertions),
	}
	if host.extraConfig != "" {
		args = append(args, "--arg", "extraConfig", host.extraConfig)
	}
	return runNixInstantiate(t, args...)
}

// evalModule evaluates module.nix with cfg, with or without the impermanence module.
func evalModule(t *testing.T, cfg string, withImpermanence bool) moduleEval {
	t.Helper()
	return evalModuleOn(t, cfg, moduleHost{impermanence: withImpermanence})
}

// evalModuleOn evaluates module.nix with cfg on host and decodes the result.
func evalModuleOn(t *testing.T, cfg string, host moduleHost) moduleEval {
	t.Helper()
	out, stderr, err := runModuleEval(t, cfg, host)
	if err != nil {
		t.Fatalf("evaluate module with %s on %+v: %v\n%s", cfg, host, err, stderr)
	}
	var ev moduleEval
	if err := json.Unmarshal(out, &ev); err != nil {
		t.Fatalf("decode evaluation of %s: %v", cfg, err)
	}
	var raw struct {
		Config json.RawMessage `json:"config"`
	}
	if err := json.Unmarshal(out, &raw); err != nil {
		t.Fatalf("decode evaluation of %s: %v", cfg, err)
	}
	ev.ConfigRaw = raw.Config
	return ev
}

// evalModuleError evaluates module.nix with cfg on host, requires the evaluation to fail and returns its stderr.
func evalModuleError(t *testing.T, cfg string, host moduleHost) string {
	t.Helper()
	_, stderr, err := runModuleEval(t, cfg, host)
	if err == nil {
		t.Fatalf("evaluate module with %s on %+v: succeeded, want an error", cfg, host)
	}
	return stderr
}

// moduleUnit returns the nixfleet-control-plane service of ev.
func moduleUnit(t *testing.T, ev moduleEval) moduleService {
	t.Helper()
	svc, ok := ev.Config.Systemd.Services["nixfleet-control-plane"]
	if !ok {
		t.Fatalf("no systemd.services.nixfleet-control-plane in %s", ev.ConfigRaw)
	}
	return svc
}

// serviceString returns the string value of serviceConfig key, or fails.
func serviceString(t *testing.T, svc moduleService, key string) string {
	t.Helper()
	var s string
	if err := json.Unmarshal(svc.ServiceConfig[key], &s); err != nil {
		t.Fatalf("serviceConfig.%s = %s: want a string", key, svc.ServiceConfig[key])
	}
	return s
}

// serviceList returns the list value of serviceConfig key; nil when the key is absent.
func serviceList(t *testing.T, svc moduleService, key string) []string {
	t.Helper()
	raw, ok := svc.ServiceConfig[key]
	if !ok {
		return nil
	}
	var l []string
	if err := json.Unmarshal(raw, &l); err != nil {
		t.Fatalf("serviceConfig.%s = %s: want a list of strings", key, raw)
	}
	return l
}

// execArgv returns the server arguments of ExecStart (argv without argv[0]) after checking that argv[0] is the
// package's binary.
func execArgv(t *testing.T, ev moduleEval) []string {
	t.Helper()
	line := serviceString(t, moduleUnit(t, ev), "ExecStart")
	argv, err := splitExecStart(line)
	if err != nil {
		t.Fatalf("split ExecStart %q: %v", line, err)
	}
	if len(argv) == 0 || argv[0] != moduleStubPackage+"/bin/nixfleet-control-plane" {
		t.Fatalf("ExecStart %q: want it to start with %s/bin/nixfleet-control-plane", line, moduleStubPackage)
	}
	return argv[1:]
}

// splitExecStart is the inverse of lib.escapeShellArgs: words are separated by single spaces; a word is made of
// bare safe characters (those escapeShellArg leaves unquoted), single-quoted runs taken literally, and \' for a
// literal quote. systemd splits ExecStart= the same way for these words. Anything escapeShellArgs never produces
// is an error, so a change in the quoting cannot slip through unnoticed.
func splitExecStart(line string) ([]string, error) {
	var argv []string
	var word strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quoted && c == '\'':
			quoted = false
		case quoted:
			word.WriteByte(c)
		case c == ' ':
			if !inWord {
				return nil, fmt.Errorf("empty word at byte %d", i)
			}
			argv = append(argv, word.String())
			word.Reset()
			inWord = false
		case c == '\'':
			quoted, inWord = true, true
		case c == '\\':
			if i+1 >= len(line) || line[i+1] != '\'' {
				return nil, fmt.Errorf("backslash not followed by a quote at byte %d", i)
			}
			word.WriteByte('\'')
			inWord = true
			i++
		case isSafeShellByte(c):
			word.WriteByte(c)
			inWord = true
		default:
			return nil, fmt.Errorf("unquoted %q at byte %d", c, i)
		}
	}
	if quoted {
		return nil, errors.New("unterminated quote")
	}
	if !inWord {
		return nil, errors.New("empty word at the end")
	}
	return append(argv, word.String()), nil
}

// isSafeShellByte reports whether escapeShellArg leaves c unquoted ([[:alnum:],._+:@%/-]).
func isSafeShellByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte(",._+:@%/-", c) >= 0
}

func TestModuleSplitExecStart(t *testing.T) {
	tests := []struct {
		line string
		want []string
	}{
		{"/bin/x --listen 0.0.0.0:8080", []string{"/bin/x", "--listen", "0.0.0.0:8080"}},
		{"/bin/x --listen '[::]:8443'", []string{"/bin/x", "--listen", "[::]:8443"}},
		{"/bin/x '/run/keys/a b'", []string{"/bin/x", "/run/keys/a b"}},
		{`/bin/x 'it'\''s'`, []string{"/bin/x", "it's"}},
		{"/bin/x ''", []string{"/bin/x", ""}},
		{"/bin/x %d/tls-cert", []string{"/bin/x", "%d/tls-cert"}},
	}
	for _, tt := range tests {
		got, err := splitExecStart(tt.line)
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("splitExecStart(%q) = %q, %v; want %q", tt.line, got, err, tt.want)
		}
	}
	for _, line := range []string{"", "/bin/x  y", "/bin/x 'y", `/bin/x "y"`, `/bin/x a\b`, "/bin/x $HOME", "/bin/x y "} {
		if got, err := splitExecStart(line); err == nil {
			t.Errorf("splitExecStart(%q) = %q, want an error", line, got)
		}
	}
}

func TestNixFilesParse(t *testing.T) {
	files := []string{"module.nix", "flake.nix"}
	more, err := filepath.Glob("testdata/nix/*.nix")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range append(files, more...) {
		t.Run(f, func(t *testing.T) {
			if _, stderr, err := runNixInstantiate(t, "--parse", f); err != nil {
				t.Fatalf("nix-instantiate --parse %s: %v\n%s", f, err, stderr)
			}
		})
	}
}

// TestModuleOptions checks every option of SPEC §13.1, and prometheusRules: its type (as the NixOS manual
// describes it: "null or string" is nullOr str), its default and that it is documented.
func TestModuleOptions(t *testing.T) {
	ev := evalModule(t, "{ }", false)
	want := map[string]struct{ typ, def string }{
		"enable":             {"boolean", `false`},
		"package":            {"package", `"` + moduleStubPackage + `"`},
		"listen":             {"string", `"0.0.0.0:8080"`},
		"dbPath":             {"string", `"/var/lib/nixfleet-cp/state.db"`},
		"openFirewall":       {"boolean", `false`},
		"tls.cert":           {"null or string", `null`},
		"tls.key":            {"null or string", `null`},
		"tls.clientCa":       {"null or string", `null`},
		"executorInterval":   {"string", `"2s"`},
		"reportRetention":    {"string", `"168h"`},
		"logLevel":           {`one of "debug", "info", "warn", "error"`, `"info"`},
		"bootstrapTokenFile": {"null or string", `null`},
		"extraArgs":          {"list of string", `[]`},
		"persist":            {"boolean", `true`},
		"persistPath":        {"string", `"/persist"`},
		"prometheusRules":    {"boolean", `false`},
		"statusPage":         {"boolean", `true`},
		"maxEventStreams":    {"null or (positive integer, meaning >0)", `null`},
	}
	var names, wantNames []string
	for name := range ev.Options {
		names = append(names, name)
	}
	for name := range want {
		wantNames = append(wantNames, name)
	}
	slices.Sort(names)
	slices.Sort(wantNames)
	if !slices.Equal(names, wantNames) {
		t.Fatalf("options = %q, want %q", names, wantNames)
	}
	for name, w := range want {
		opt := ev.Options[name]
		if opt.Type != w.typ {
			t.Errorf("%s: type %q, want %q", name, opt.Type, w.typ)
		}
		if string(opt.Default) != w.def {
			t.Errorf("%s: default %s, want %s", name, opt.Default, w.def)
		}
		if strings.TrimSpace(opt.Description) == "" {
			t.Errorf("%s: no description", name)
		}
	}
	if got := ev.Options["enable"].Description; got != "Whether to enable NixFleet control plane server." {
		t.Errorf("enable: description %q, want the one of mkEnableOption \"NixFleet control plane server\"", got)
	}
	if dt := ev.Options["package"].DefaultText; dt == nil || dt.Type != "literalExpression" || dt.Text != "pkgs.nixfleet-control-plane" {
		t.Errorf("package: defaultText %+v, want literalExpression pkgs.nixfleet-control-plane", dt)
	}
	// Disabled, the module defines nothing at all.
	if len(ev.Defined) != 0 {
		t.Errorf("with enable = false the module defines %q, want nothing", ev.Defined)
	}
	// Enabled, it defines these NixOS options and no others (environment.persistence and services.prometheus
	// only with their modules: TestModuleImpermanenceACC121, TestModulePrometheusRules).
	enabled := evalModule(t, "{ enable = true; }", false)
	wantDefined := []string{"assertions", "networking.firewall.allowedTCPPorts", "systemd.services",
		"systemd.tmpfiles.rules", "users.groups", "users.users", "warnings"}
	if !slices.Equal(enabled.Defined, wantDefined) {
		t.Errorf("with enable = true the module defines %q, want %q", enabled.Defined, wantDefined)
	}
}

// TestModuleRejectsInvalidValues checks that the option types do their job: the errors are those of the nixpkgs
// module system, word for word.
func TestModuleRejectsInvalidValues(t *testing.T) {
	const notOfType = "A definition for option `services.nixfleet-control-plane."
	tests := []struct{ name, cfg, wantErr string }{
		{"listen not a string", `{ enable = true; listen = 8080; }`, notOfType + "listen' is not of type `string'."},
		{"log level outside the enum", `{ enable = true; logLevel = "loud"; }`,
			notOfType + "logLevel' is not of type `one of \"debug\", \"info\", \"warn\", \"error\"'."},
		{"log level of another program", `{ enable = true; logLevel = "verbose"; }`,
			notOfType + "logLevel' is not of type `one of \"debug\", \"info\", \"warn\", \"error\"'."},
		{"extraArgs not a list", `{ enable = true; extraArgs = "--log-level=debug"; }`,
			notOfType + "extraArgs' is not of type `list of string'."},
		{"tls.cert not a string", `{ enable = true; tls.cert = true; tls.key = "/k.pem"; }`,
			notOfType + "tls.cert' is not of type `null or string'."},
		{"prometheusRules not a bool", `{ enable = true; prometheusRules = "yes"; }`,
			notOfType + "prometheusRules' is not of type `boolean'."},
		{"unknown option", `{ enable = true; lsten = "0.0.0.0:80"; }`,
			"The option `services.nixfleet-control-plane.lsten' does not exist."},
		{"unknown tls option", `{ enable = true; tls.ca = "/run/secrets/ca.pem"; }`,
			"The option `services.nixfleet-control-plane.tls.ca' does not exist."},
		// The NixOS options the module defines are typed too: the listen assertion accepts any digits, but
		// networking.firewall.allowedTCPPorts, a list of ports, does not take 70000.
		{"firewall port out of range", `{ enable = true; listen = "0.0.0.0:70000"; openFirewall = true; }`,
			"is not of type `16 bit unsigned integer; between 0 and 65535 (both inclusive)'."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if stderr := evalModuleError(t, tt.cfg, moduleHost{}); !strings.Contains(stderr, tt.wantErr) {
				t.Errorf("error %q, want it to contain %q", stderr, tt.wantErr)
			}
		})
	}
}

// TestModuleAssertionsACC120 checks ACC-120: each bad combination fails its assertion with the exact message of
// SPEC §13.1, and good configurations fail none.
func TestModuleAssertionsACC120(t *testing.T) {
	tests := []struct {
		name, cfg string
		failing   []string
	}{
		{"minimal", `{ enable = true; }`, nil},
		{"tls", `{ enable = true; tls.cert = "/run/secrets/cp-cert.pem"; tls.key = "/run/secrets/cp-key.pem"; }`, nil},
		{"mtls", `{ enable = true; tls = { cert = "/c.pem"; key = "/k.pem"; clientCa = "/ca.pem"; }; }`, nil},
		{"ipv6 listen", `{ enable = true; listen = "[::]:8443"; }`, nil},
		{"clientCa without cert and key", `{ enable = true; tls.clientCa = "/ca.pem"; }`, []string{assertClientCAMsg}},
		{"clientCa with cert only", `{ enable = true; tls = { cert = "/c.pem"; clientCa = "/ca.pem"; }; }`, []string{assertCertKeyMsg, assertClientCAMsg}},
		{"cert without key", `{ enable = true; tls.cert = "/c.pem"; }`, []string{assertCertKeyMsg}},
		{"key without cert", `{ enable = true; tls.key = "/k.pem"; }`, []string{assertCertKeyMsg}},
		{"listen without port", `{ enable = true; listen = "localhost"; }`, []string{assertListenMsg}},
		{"listen with empty port", `{ enable = true; listen = "0.0.0.0:"; }`, []string{assertListenMsg}},
		{"ipv6 listen without port", `{ enable = true; listen = "[::]"; openFirewall = true; }`, []string{assertListenMsg}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := evalModule(t, tt.cfg, false)
			var messages []string
			for _, a := range ev.Assertions {
				messages = append(messages, a.Message)
			}
			if want := []string{assertListenMsg, assertCertKeyMsg, assertClientCAMsg}; !slices.Equal(messages, want) {
				t.Errorf("assertion messages %q, want %q", messages, want)
			}
			if !slices.Equal(ev.FailedAssertions, tt.failing) {
				t.Errorf("failing assertions %q, want %q", ev.FailedAssertions, tt.failing)
			}

			// Checked as a NixOS build checks them, a failed assertion stops the evaluation with every message.
			checked := moduleHost{checkAssertions: true}
			if tt.failing == nil {
				evalModuleOn(t, tt.cfg, checked)
				return
			}
			want := []string{"Failed assertions:"}
			for _, m := range tt.failing {
				want = append(want, "- "+m)
			}
			if stderr := evalModuleError(t, tt.cfg, checked); !containsLineRun(trimmedLines([]byte(stderr)), want) {
				t.Errorf("error %q, want the lines %q", stderr, want)
			}
		})
	}
}

// moduleFlags holds the serveConfig fields that the module sets through flags.
type moduleFlags struct {
	listen, dbPath, tlsCert, tlsKey, clientCA string
	executorInterval, reportRetention         time.Duration
	logLevel, bootstrapTokenFile              string
	bootstrapCNs                              []string
	maxConnections                            int
	maxEventStreams                           int
	ui                                        bool
}

func moduleFlagsOf(c serveConfig) moduleFlags {
	return moduleFlags(c) // a conversion: it stops compiling if a field is added to one and not the other
}

// defaultModuleFlags is what the daemon sees from the module's defaults.
var defaultModuleFlags = moduleFlags{
	listen: "0.0.0.0:8080", dbPath: "/var/lib/nixfleet-cp/state.db",
	executorInterval: 2 * time.Second, reportRetention: 168 * time.Hour, logLevel: "info",
	maxConnections: defaultMaxConnections, maxEventStreams: defaultMaxEventStreams, ui: true,
}

// execStartCases are the configurations whose command line is checked word for word, and then parsed by the
// daemon's own flag parser. The README examples are included.
var execStartCases = []struct {
	name, cfg string
	argv      []string // the expected server arguments
	flags     func(f moduleFlags) moduleFlags
}{
	{
		name:  "minimal",
		cfg:   `{ enable = true; }`,
		argv:  strings.Fields(moduleDefaultArgs),
		flags: func(f moduleFlags) moduleFlags { return f },
	},
	{
		name:  "readme minimal",
		cfg:   `import ./testdata/nix/readme-minimal.nix`,
		argv:  strings.Fields(moduleDefaultArgs),
		flags: func(f moduleFlags) moduleFlags { return f },
	},
	{
		name: "tls",
		cfg:  `{ enable = true; listen = "[::]:8443"; tls.cert = "/run/secrets/cp-cert.pem"; tls.key = "/run/secrets/cp-key.pem"; }`,
		argv: strings.Fields("--listen [::]:8443 --db-path /var/lib/nixfleet-cp/state.db --executor-interval 2s" +
			" --report-retention 168h --log-level info --tls-cert %d/tls-cert --tls-key %d/tls-key"),
		flags: func(f moduleFlags) moduleFlags {
			f.listen, f.tlsCert, f.tlsKey = "[::]:8443", "%d/tls-cert", "%d/tls-key"
			return f
		},
	},
	{
		name: "readme mtls with bootstrap token",
		cfg:  `import ./testdata/nix/readme-mtls.nix`,
		argv: strings.Fields("--listen 0.0.0.0:8443 --db-path /var/lib/nixfleet-cp/state.db --executor-interval 2s" +
			" --report-retention 168h --log-level info --tls-cert %d/tls-cert --tls-key %d/tls-key" +
			" --client-ca %d/client-ca --bootstrap-token-file %d/bootstrap-token"),
		flags: func(f moduleFlags) moduleFlags {
			f.listen, f.tlsCert, f.tlsKey, f.clientCA = "0.0.0.0:8443", "%d/tls-cert", "%d/tls-key", "%d/client-ca"
			f.bootstrapTokenFile = "%d/bootstrap-token"
			return f
		},
	},
	{
		name: "plain with bootstrap token",
		cfg:  `{ enable = true; bootstrapTokenFile = "/run/secrets/cp-bootstrap-token"; }`,
		argv: strings.Fields(moduleDefaultArgs + " --bootstrap-token-file %d/bootstrap-token"),
		flags: func(f moduleFlags) moduleFlags {
			f.bootstrapTokenFile = "%d/bootstrap-token"
			return f
		},
	},
	{
		name: "status page off, more event streams",
		cfg:  `{ enable = true; statusPage = false; maxEventStreams = 500; }`,
		argv: strings.Fields(moduleDefaultArgs + " --ui false --max-event-streams 500"),
		flags: func(f moduleFlags) moduleFlags {
			f.ui, f.maxEventStreams = false, 500
			return f
		},
	},
	{
		name: "tuned with extraArgs",
		cfg: `{ enable = true; listen = "127.0.0.1:9000"; dbPath = "/srv/nixfleet/state.db"; executorInterval = "500ms";
			reportRetention = "720h"; logLevel = "warn"; extraArgs = [ "--log-level=debug" "--report-retention" "336h" ]; }`,
		argv: strings.Fields("--listen 127.0.0.1:9000 --db-path /srv/nixfleet/state.db --executor-interval 500ms" +
			" --report-retention 720h --log-level warn --log-level=debug --report-retention 336h"),
		flags: func(f moduleFlags) moduleFlags {
			f.listen, f.dbPath, f.executorInterval = "127.0.0.1:9000", "/srv/nixfleet/state.db", 500*time.Millisecond
			f.reportRetention, f.logLevel = 336*time.Hour, "debug" // extraArgs come last and win
			return f
		},
	},
	{
		name: "extraArgs that need quoting",
		cfg:  `{ enable = true; extraArgs = [ "--bootstrap-token-file=/run/keys/operator's token" ]; }`,
		argv: append(strings.Fields(moduleDefaultArgs), "--bootstrap-token-file=/run/keys/operator's token"),
		flags: func(f moduleFlags) moduleFlags {
			f.bootstrapTokenFile = "/run/keys/operator's token"
			return f
		},
	},
}

// TestModuleExecStartACC120 checks ACC-120's "ExecStart carries TLS flags only when they are set", and the exact
// order of SPEC §13.2: fixed flags, credential flags, extraArgs.
func TestModuleExecStartACC120(t *testing.T) {
	for _, tt := range execStartCases {
		t.Run(tt.name, func(t *testing.T) {
			ev := evalModule(t, tt.cfg, false)
			if got, want := execArgv(t, ev), tt.argv; !slices.Equal(got, want) {
				t.Errorf("argv %q\nwant %q", got, want)
			}
			// Secrets travel by LoadCredential only; their paths never appear on the command line.
			if line := serviceString(t, moduleUnit(t, ev), "ExecStart"); strings.Contains(line, "/run/secrets") {
				t.Errorf("ExecStart %q names a secret path", line)
			}
		})
	}
}

// TestModuleExecStartParsesWithBinaryFlags checks the contract between module.nix and main.go: every command
// line the module produces is accepted by the daemon's own flag parser, and means what the configuration says.
func TestModuleExecStartParsesWithBinaryFlags(t *testing.T) {
	noEnv := func(string) string { return "" }
	for _, tt := range execStartCases {
		t.Run(tt.name, func(t *testing.T) {
			argv := execArgv(t, evalModule(t, tt.cfg, false))
			cfg, err := parseServeFlags(argv, noEnv)
			if err != nil {
				t.Fatalf("parseServeFlags(%q): %v", argv, err)
			}
			if got, want := moduleFlagsOf(cfg), tt.flags(defaultModuleFlags); !reflect.DeepEqual(got, want) {
				t.Errorf("parseServeFlags(%q) = %+v\nwant %+v", argv, got, want)
			}
		})
	}
}

// TestModuleFirewallACC120 checks ACC-120's firewall rule: the port after the last colon, only with openFirewall.
func TestModuleFirewallACC120(t *testing.T) {
	tests := []struct {
		listen string
		open   bool
		want   []int
	}{
		{"0.0.0.0:8080", true, []int{8080}},
		{"[::]:8443", true, []int{8443}},
		{"[::1]:443", true, []int{443}},
		{"127.0.0.1:0443", true, []int{443}},
		{"0.0.0.0:8080", false, []int{}},
		{"[::]:8443", false, []int{}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s open=%v", tt.listen, tt.open), func(t *testing.T) {
			ev := evalModule(t, fmt.Sprintf(`{ enable = true; listen = %q; openFirewall = %v; }`, tt.listen, tt.open), false)
			if got := ev.Config.Networking.Firewall.AllowedTCPPorts; !slices.Equal(got, tt.want) {
				t.Errorf("allowedTCPPorts = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestModuleServiceUnitACC121 checks the unit of SPEC §13.2 for the minimal configuration: every key and value,
// the unprivileged user (ACC-121) and StateDirectory=nixfleet-cp (ACC-120).
func TestModuleServiceUnitACC121(t *testing.T) {
	ev := evalModule(t, `{ enable = true; }`, false)
	svc := moduleUnit(t, ev)
	if svc.Description != "NixFleet Control Plane Server" {
		t.Errorf("description %q", svc.Description)
	}
	for _, l := range []struct {
		name      string
		got, want []string
	}{
		{"wantedBy", svc.WantedBy, []string{"multi-user.target"}},
		{"after", svc.After, []string{"network-online.target"}},
		{"wants", svc.Wants, []string{"network-online.target"}},
	} {
		if !slices.Equal(l.got, l.want) {
			t.Errorf("%s = %q, want %q", l.name, l.got, l.want)
		}
	}

	// Values as JSON, so that types count: true is not "true", 30 is not "30".
	want := map[string]string{
		"Type":                    `"simple"`,
		"Restart":                 `"always"`,
		"RestartSec":              `10`,
		"User":                    `"nixfleet-cp"`,
		"Group":                   `"nixfleet-cp"`,
		"StateDirectory":          `"nixfleet-cp"`,
		"StateDirectoryMode":      `"0700"`,
		"UMask":                   `"0077"`,
		"KillSignal":              `"SIGTERM"`,
		"TimeoutStopSec":          `30`,
		"NoNewPrivileges":         `true`,
		"ProtectSystem":           `"strict"`,
		"ProtectHome":             `true`,
		"PrivateTmp":              `true`,
		"PrivateDevices":          `true`,
		"ProtectKernelTunables":   `true`,
		"ProtectKernelModules":    `true`,
		"ProtectKernelLogs":       `true`,
		"ProtectControlGroups":    `true`,
		"ProtectClock":            `true`,
		"ProtectHostname":         `true`,
		"RestrictNamespaces":      `true`,
		"RestrictRealtime":        `true`,
		"RestrictSUIDSGID":        `true`,
		"LockPersonality":         `true`,
		"MemoryDenyWriteExecute":  `true`,
		"SystemCallArchitectures": `"native"`,
		"SystemCallFilter":        `["@system-service"]`,
		"RestrictAddressFamilies": `["AF_INET","AF_INET6","AF_UNIX"]`,
		"ReadWritePaths":          `["/var/lib/nixfleet-cp"]`,
		"CapabilityBoundingSet":   `""`,
		"LimitNOFILE":             `65536`,
	}
	for key, w := range want {
		if got, ok := svc.ServiceConfig[key]; !ok || string(got) != w {
			t.Errorf("serviceConfig.%s = %s, want %s", key, got, w)
		}
	}
	for key := range svc.ServiceConfig {
		if _, ok := want[key]; !ok && key != "ExecStart" {
			t.Errorf("unexpected serviceConfig.%s = %s", key, svc.ServiceConfig[key])
		}
	}

	// The module passes flags only: no environment (NIXFLEET_CP_*), no other unit attributes. The stand-in for
	// systemd.services declares only these, so setting another one fails the evaluation; this also catches a
	// stand-in that gains an attribute with a default.
	var raw struct {
		Systemd struct {
			Services map[string]map[string]json.RawMessage `json:"services"`
		} `json:"systemd"`
	}
	if err := json.Unmarshal(ev.ConfigRaw, &raw); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for key := range raw.Systemd.Services["nixfleet-control-plane"] {
		keys = append(keys, key)
	}
	slices.Sort(keys)
	if want := []string{"after", "description", "serviceConfig", "wantedBy", "wants"}; !slices.Equal(keys, want) {
		t.Errorf("unit attributes %q, want %q", keys, want)
	}

	users := ev.Config.Users
	if u, ok := users.Users["nixfleet-cp"]; !ok || !u.IsSystemUser || u.Group != "nixfleet-cp" {
		t.Errorf("users.users.nixfleet-cp = %+v (declared %v), want a system user in group nixfleet-cp", u, ok)
	}
	if _, ok := users.Groups["nixfleet-cp"]; !ok {
		t.Errorf("users.groups.nixfleet-cp is not declared")
	}
	if len(users.Users) != 1 || len(users.Groups) != 1 {
		t.Errorf("users %+v: want exactly the nixfleet-cp user and group", users)
	}
}

// TestModuleCapabilities checks that CAP_NET_BIND_SERVICE is granted only for a port below 1024.
func TestModuleCapabilities(t *testing.T) {
	tests := []struct {
		listen string
		cap    bool
	}{
		{"0.0.0.0:8080", false},
		{"[::]:8443", false},
		{"0.0.0.0:1024", false},
		{"127.0.0.1:0", false}, // a kernel-chosen port needs no privilege
		{"0.0.0.0:443", true},
		{"[::]:80", true},
		{"0.0.0.0:1023", true},
	}
	for _, tt := range tests {
		t.Run(tt.listen, func(t *testing.T) {
			svc := moduleUnit(t, evalModule(t, fmt.Sprintf(`{ enable = true; listen = %q; }`, tt.listen), false))
			wantBounding, wantAmbient := `""`, ""
			if tt.cap {
				wantBounding, wantAmbient = `"CAP_NET_BIND_SERVICE"`, `"CAP_NET_BIND_SERVICE"`
			}
			if got := string(svc.ServiceConfig["CapabilityBoundingSet"]); got != wantBounding {
				t.Errorf("CapabilityBoundingSet = %s, want %s", got, wantBounding)
			}
			if got := string(svc.ServiceConfig["AmbientCapabilities"]); got != wantAmbient {
				t.Errorf("AmbientCapabilities = %q, want %q", got, wantAmbient)
			}
		})
	}
}

// TestModuleLoadCredentialACC121 checks ACC-121's "reads TLS files through LoadCredential": one entry per
// configured file, none otherwise.
func TestModuleLoadCredentialACC121(t *testing.T) {
	tests := []struct {
		name, cfg string
		want      []string
	}{
		{"plain", `{ enable = true; }`, nil},
		{"tls", `{ enable = true; tls.cert = "/run/secrets/cp-cert.pem"; tls.key = "/run/secrets/cp-key.pem"; }`,
			[]string{"tls-cert:/run/secrets/cp-cert.pem", "tls-key:/run/secrets/cp-key.pem"}},
		{"bootstrap token only", `{ enable = true; bootstrapTokenFile = "/run/secrets/cp-bootstrap-token"; }`,
			[]string{"bootstrap-token:/run/secrets/cp-bootstrap-token"}},
		{"readme mtls", `import ./testdata/nix/readme-mtls.nix`, []string{
			"tls-cert:/run/secrets/cp-cert.pem",
			"tls-key:/run/secrets/cp-key.pem",
			"client-ca:/run/secrets/fleet-ca.pem",
			"bootstrap-token:/run/secrets/cp-bootstrap-token",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := moduleUnit(t, evalModule(t, tt.cfg, false))
			_, present := svc.ServiceConfig["LoadCredential"]
			if got := serviceList(t, svc, "LoadCredential"); !slices.Equal(got, tt.want) || present != (tt.want != nil) {
				t.Errorf("LoadCredential = %q (present %v), want %q", got, present, tt.want)
			}
		})
	}
}

// TestModuleDBPathOutsideStateDir checks that a database directory other than /var/lib/nixfleet-cp is created by
// tmpfiles and made writable under ProtectSystem=strict.
func TestModuleDBPathOutsideStateDir(t *testing.T) {
	tests := []struct {
		dbPath    string
		wantRW    []string
		wantRules []string
	}{
		{"/var/lib/nixfleet-cp/state.db", []string{moduleStateDir}, []string{}},
		{"/var/lib/nixfleet-cp/other.db", []string{moduleStateDir}, []string{}},
		{"/srv/nixfleet/state.db", []string{moduleStateDir, "/srv/nixfleet"}, []string{"d /srv/nixfleet 0700 nixfleet-cp nixfleet-cp -"}},
		{"/var/lib/nixfleet-cp/db/state.db", []string{moduleStateDir, "/var/lib/nixfleet-cp/db"},
			[]string{"d /var/lib/nixfleet-cp/db 0700 nixfleet-cp nixfleet-cp -"}},
	}
	for _, tt := range tests {
		t.Run(tt.dbPath, func(t *testing.T) {
			ev := evalModule(t, fmt.Sprintf(`{ enable = true; dbPath = %q; }`, tt.dbPath), false)
			if got := serviceList(t, moduleUnit(t, ev), "ReadWritePaths"); !slices.Equal(got, tt.wantRW) {
				t.Errorf("ReadWritePaths = %q, want %q", got, tt.wantRW)
			}
			if got := ev.Config.Systemd.Tmpfiles.Rules; !slices.Equal(got, tt.wantRules) {
				t.Errorf("tmpfiles rules = %q, want %q", got, tt.wantRules)
			}
		})
	}
}

// TestModuleImpermanenceACC121 checks ACC-121: with the impermanence module the state directory is persisted
// under persistPath; without it the configuration still evaluates and mentions no environment.persistence.
func TestModuleImpermanenceACC121(t *testing.T) {
	entry := map[string]string{"directory": moduleStateDir, "user": "nixfleet-cp", "group": "nixfleet-cp", "mode": "0700"}
	tests := []struct {
		name, cfg    string
		impermanence bool
		want         map[string][]map[string]string // persistence root -> directories; nil: no such option
	}{
		{"with impermanence", `{ enable = true; }`, true, map[string][]map[string]string{"/persist": {entry}}},
		{"custom persistPath", `{ enable = true; persistPath = "/nix/persist"; }`, true,
			map[string][]map[string]string{"/nix/persist": {entry}}},
		{"persist disabled", `{ enable = true; persist = false; }`, true, map[string][]map[string]string{}},
		{"without impermanence", `{ enable = true; }`, false, nil},
		{"without impermanence, persistPath set", `{ enable = true; persistPath = "/nix/persist"; }`, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := evalModule(t, tt.cfg, tt.impermanence)
			persistence := ev.Config.Environment.Persistence
			if defines := slices.Contains(ev.Defined, "environment.persistence"); defines != (len(tt.want) > 0) {
				t.Errorf("module defines environment.persistence: %v, want %v", defines, len(tt.want) > 0)
			}
			if tt.want == nil {
				if persistence != nil {
					t.Fatalf("environment.persistence = %+v, want no such option without the impermanence module", persistence)
				}
				return
			}
			if persistence == nil {
				t.Fatal("no environment.persistence with the impermanence module")
			}
			got := map[string][]map[string]string{}
			for root, p := range persistence {
				got[root] = p.Directories
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("environment.persistence = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestModulePrometheusRules checks the prometheusRules option: the rules file goes into services.prometheus.ruleFiles
// only when it is set, Prometheus itself is left alone, and without the Prometheus module the configuration still
// evaluates and mentions no services.prometheus at all.
func TestModulePrometheusRules(t *testing.T) {
	rules, err := filepath.Abs(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	const running = `{ services.prometheus.enable = true; }`
	tests := []struct {
		name, cfg   string
		host        moduleHost
		wantRules   []string // services.prometheus.ruleFiles; nil: the option does not exist
		wantWarning bool     // the warning that no local Prometheus evaluates the rules
	}{
		{"off by default", `{ enable = true; }`, moduleHost{prometheus: true, extraConfig: running}, []string{}, false},
		{"on", `{ enable = true; prometheusRules = true; }`, moduleHost{prometheus: true, extraConfig: running},
			[]string{rules}, false},
		{"readme example", `import ./testdata/nix/readme-prometheus.nix`, moduleHost{prometheus: true, extraConfig: running},
			[]string{rules}, false},
		{"on, Prometheus not enabled", `{ enable = true; prometheusRules = true; }`, moduleHost{prometheus: true},
			[]string{rules}, true},
		{"on, service disabled", `{ prometheusRules = true; }`, moduleHost{prometheus: true, extraConfig: running},
			[]string{}, false},
		{"without the Prometheus module", `{ enable = true; }`, moduleHost{}, nil, false},
		{"on, without the Prometheus module", `{ enable = true; prometheusRules = true; }`, moduleHost{}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := evalModuleOn(t, tt.cfg, tt.host)
			if defines := slices.Contains(ev.Defined, "services.prometheus.ruleFiles"); defines != (len(tt.wantRules) > 0) {
				t.Errorf("module defines services.prometheus.ruleFiles: %v, want %v", defines, len(tt.wantRules) > 0)
			}
			prom := ev.Config.Services.Prometheus
			switch {
			case tt.wantRules == nil && prom != nil:
				t.Errorf("services.prometheus = %+v, want no such option without the Prometheus module", *prom)
			case tt.wantRules != nil && prom == nil:
				t.Errorf("no services.prometheus with the Prometheus module")
			case tt.wantRules != nil:
				if !slices.Equal(prom.RuleFiles, tt.wantRules) {
					t.Errorf("services.prometheus.ruleFiles = %q, want %q", prom.RuleFiles, tt.wantRules)
				}
				// The host decides whether Prometheus runs; the module never enables it.
				if wantEnable := tt.host.extraConfig == running; prom.Enable != wantEnable {
					t.Errorf("services.prometheus.enable = %v, want %v as the host set it", prom.Enable, wantEnable)
				}
			}
			var wantWarnings []string
			if tt.wantWarning {
				wantWarnings = []string{warnNoPrometheus}
			}
			if !slices.Equal(ev.Warnings, wantWarnings) {
				t.Errorf("warnings %q, want %q", ev.Warnings, wantWarnings)
			}
		})
	}
	// The file the module hands to Prometheus is the one rules_test.go checks with promtool.
	if _, err := os.Stat(rules); err != nil {
		t.Errorf("rules file: %v", err)
	}
}

// TestModuleReadmeExamples evaluates the README's two NixOS examples (testdata/nix/readme-*.nix) on a host with
// impermanence and a running Prometheus: no assertion fails, nothing warns, and README.md, once written, shows each
// of them verbatim.
func TestModuleReadmeExamples(t *testing.T) {
	host := moduleHost{impermanence: true, prometheus: true, extraConfig: `{ services.prometheus.enable = true; }`,
		checkAssertions: true}
	for _, name := range []string{"readme-minimal.nix", "readme-mtls.nix"} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join("testdata", "nix", name)
			ev := evalModuleOn(t, "import ./"+filepath.ToSlash(path), host)
			if len(ev.FailedAssertions) != 0 || len(ev.Warnings) != 0 {
				t.Errorf("failed assertions %q, warnings %q; want none", ev.FailedAssertions, ev.Warnings)
			}
			if len(ev.Assertions) != 3 {
				t.Errorf("%d assertions, want 3", len(ev.Assertions))
			}
			moduleUnit(t, ev)

			readme, err := os.ReadFile("README.md")
			if errors.Is(err, os.ErrNotExist) {
				t.Skip("README.md not written yet: the example evaluates, its text is not compared")
			} else if err != nil {
				t.Fatal(err)
			}
			example, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			want := readmeSnippet(example)
			if !containsLineRun(trimmedLines(readme), trimmedLines([]byte(want))) {
				t.Errorf("README.md does not show the example of %s; it must contain (indentation aside):\n%s", path, want)
			}
		})
	}
}

// readmeSnippet returns the text the README must show for an example file: the attribute set without the file's
// leading comment, as the value of services.nixfleet-control-plane.
func readmeSnippet(example []byte) string {
	lines := strings.Split(strings.TrimSpace(string(example)), "\n")
	for len(lines) > 0 && strings.HasPrefix(lines[0], "#") {
		lines = lines[1:]
	}
	return "services.nixfleet-control-plane = " + strings.TrimSpace(strings.Join(lines, "\n")) + ";"
}

// trimmedLines returns the lines of b without leading and trailing white space.
func trimmedLines(b []byte) []string {
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		lines = append(lines, strings.TrimSpace(sc.Text()))
	}
	for len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}

// containsLineRun reports whether want occurs as consecutive lines of lines.
func containsLineRun(lines, want []string) bool {
	for i := 0; i+len(want) <= len(lines); i++ {
		if slices.Equal(lines[i:i+len(want)], want) {
			return true
		}
	}
	return false
}

// flakeEval is the output of testdata/nix/flake-eval.nix.
type flakeEval struct {
	Inputs   map[string]string                  `json:"inputs"`
	Packages map[string]map[string]flakePackage `json:"packages"`
	Overlay  flakePackage                       `json:"overlay"`
	Module   struct {
		Imports []string `json:"imports"`
		Package struct {
			Type     string `json:"_type"`
			Priority int    `json:"priority"`
			Content  struct {
				Name   string `json:"name"`
				System string `json:"system"`
			} `json:"content"`
		} `json:"package"`
	} `json:"nixosModule"`
}

type flakePackage struct {
	Name    string   `json:"name"`
	System  string   `json:"system"`
	GOFLAGS []string `json:"GOFLAGS"`
	Args    struct {
		Pname      string `json:"pname"`
		Version    string `json:"version"`
		VendorHash string `json:"vendorHash"`
		Env        struct {
			CGOEnabled *int `json:"CGO_ENABLED"`
		} `json:"env"`
		Ldflags       []string `json:"ldflags"`
		SubPackages   []string `json:"subPackages"`
		SrcIsRepoRoot bool     `json:"srcIsRepoRoot"`
	} `json:"args"`
}

// TestFlakeOutputs checks SPEC §13.4 by calling the flake's outputs with a stub nixpkgs around the real lib.
func TestFlakeOutputs(t *testing.T) {
	// -X main.version only works on a string variable; this fails to compile if main.version is not one.
	var _ *string = &version

	out, stderr, err := runNixInstantiate(t, "--eval", "--strict", "--json", "testdata/nix/flake-eval.nix",
		"--argstr", "nixpkgsLib", nixpkgsLib(t))
	if err != nil {
		t.Fatalf("evaluate flake outputs: %v\n%s", err, stderr)
	}
	var fl flakeEval
	if err := json.Unmarshal(out, &fl); err != nil {
		t.Fatalf("decode flake evaluation: %v", err)
	}

	if url := fl.Inputs["nixpkgs"]; !strings.HasPrefix(url, "github:NixOS/nixpkgs/") || len(fl.Inputs) != 1 {
		t.Errorf("inputs = %v, want only nixpkgs", fl.Inputs)
	}
	var systems []string
	for system := range fl.Packages {
		systems = append(systems, system)
	}
	slices.Sort(systems)
	if want := []string{"aarch64-linux", "x86_64-linux"}; !slices.Equal(systems, want) {
		t.Errorf("package systems %q, want %q", systems, want)
	}
	for system, pkgs := range fl.Packages {
		def, named := pkgs["default"], pkgs["nixfleet-control-plane"]
		if len(pkgs) != 2 || !reflect.DeepEqual(def, named) {
			t.Errorf("packages.%s = %+v: want default and nixfleet-control-plane, the same package", system, pkgs)
		}
		checkFlakePackage(t, "packages."+system+".default", def)
		if def.System != system {
			t.Errorf("packages.%s.default built for %s", system, def.System)
		}
	}
	checkFlakePackage(t, "overlays.default", fl.Overlay)

	if !slices.Equal(fl.Module.Imports, []string{"module.nix"}) {
		t.Errorf("nixosModules.default imports %q, want [module.nix]", fl.Module.Imports)
	}
	pkg := fl.Module.Package
	if pkg.Type != "override" || pkg.Priority != 1000 || pkg.Content.Name != "nixfleet-control-plane-"+fl.Overlay.Args.Version ||
		pkg.Content.System != "aarch64-linux" {
		t.Errorf("nixosModules.default package definition %+v, want mkDefault of the host system's flake package", pkg)
	}
}

var sriSHA256 = regexp.MustCompile(`^sha256-[A-Za-z0-9+/]{43}=$`)

func checkFlakePackage(t *testing.T, where string, p flakePackage) {
	t.Helper()
	a := p.Args
	if a.Pname != "nixfleet-control-plane" || a.Version == "" || p.Name != a.Pname+"-"+a.Version {
		t.Errorf("%s: name %q pname %q version %q", where, p.Name, a.Pname, a.Version)
	}
	if !sriSHA256.MatchString(a.VendorHash) || a.VendorHash == "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" {
		t.Errorf("%s: vendorHash %q, want a pinned SRI sha256", where, a.VendorHash)
	}
	if a.Env.CGOEnabled == nil || *a.Env.CGOEnabled != 0 {
		t.Errorf("%s: env.CGO_ENABLED is not 0", where)
	}
	if !slices.Contains(p.GOFLAGS, "-trimpath") {
		t.Errorf("%s: GOFLAGS %q lack -trimpath", where, p.GOFLAGS)
	}
	if want := []string{"-s", "-w", "-X main.version=" + a.Version}; !slices.Equal(a.Ldflags, want) {
		t.Errorf("%s: ldflags %q, want %q", where, a.Ldflags, want)
	}
	if !a.SrcIsRepoRoot || !slices.Equal(a.SubPackages, []string{"."}) {
		t.Errorf("%s: src is the repository root %v, subPackages %q", where, a.SrcIsRepoRoot, a.SubPackages)
	}
}

// TestFlakeVendorHash recomputes the flake's vendorHash the way buildGoModule does (the NAR hash of
// `go mod vendor`) in a copy of the module's top-level files, so a dependency change cannot leave it stale.
func TestFlakeVendorHash(t *testing.T) {
	requireNix(t)
	if _, err := exec.LookPath("nix-hash"); err != nil {
		t.Skip("nix-hash not installed; install Debian package nix-bin")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found")
	}
	flake, err := os.ReadFile("flake.nix")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`vendorHash = "([^"]*)";`).FindSubmatch(flake)
	if m == nil {
		t.Fatal("no vendorHash in flake.nix")
	}
	pinned := string(m[1])

	// go mod vendor may rewrite go.mod, so it runs in a copy of what it reads: go.mod, go.sum and the Go files
	// (their imports decide which packages are vendored).
	dir := t.TempDir()
	goFiles, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range append([]string{"go.mod", "go.sum"}, goFiles...) {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	vendor := filepath.Join(dir, "vendor")
	cmd := exec.Command(goBin, "mod", "vendor", "-o", vendor)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOTOOLCHAIN=local", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("go mod vendor failed (no module cache or proxy?): %v\n%s", err, out)
	}
	if _, err := os.Stat(vendor); err != nil {
		t.Skipf("go mod vendor produced no vendor directory (no dependencies yet?): %v", err)
	}

	cmd = exec.Command("nix-hash", "--type", "sha256", vendor)
	cmd.Env = nixEnv(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix-hash %s: %v", vendor, err)
	}
	sum, err := hex.DecodeString(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("nix-hash output %q: %v", out, err)
	}
	if got := "sha256-" + base64.StdEncoding.EncodeToString(sum); got != pinned {
		t.Errorf("flake.nix vendorHash = %s, but go.mod and go.sum now vendor to %s; update it (see the comment beside it)",
			pinned, got)
	}
}
