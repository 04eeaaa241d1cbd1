package main

// Tests for the NixOS module (module.nix) and the flake (flake.nix), SPEC §13, ACC-120 and ACC-121.
//
// There is no NixOS here: testdata/nix/eval.nix evaluates module.nix with a small stub of nixpkgs' lib
// (testdata/nix/lib.nix) and returns the resolved configuration as JSON, and testdata/nix/flake-eval.nix calls the
// flake's outputs with a stub nixpkgs. Only nix-instantiate is needed; the tests skip without it.

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
	Options map[string]struct {
		Type        string          `json:"type"`
		Default     json.RawMessage `json:"default"`
		DefaultText *struct {
			Type string `json:"_type"`
			Text string `json:"text"`
		} `json:"defaultText"`
		Description string `json:"description"`
	} `json:"options"`
	Config    moduleConfig    `json:"config"`
	ConfigRaw json.RawMessage `json:"-"`
}

type moduleConfig struct {
	Assertions []struct {
		Assertion bool   `json:"assertion"`
		Message   string `json:"message"`
	} `json:"assertions"`
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
	// Environment is nil when the module defines no environment.* at all.
	Environment *struct {
		Persistence map[string]struct {
			Directories []map[string]string `json:"directories"`
		} `json:"persistence"`
	} `json:"environment"`
}

type moduleService struct {
	Description   string                     `json:"description"`
	WantedBy      []string                   `json:"wantedBy"`
	After         []string                   `json:"after"`
	Wants         []string                   `json:"wants"`
	ServiceConfig map[string]json.RawMessage `json:"serviceConfig"`
}

// evalModule evaluates module.nix with cfg, a Nix expression for the services.nixfleet-control-plane values.
func evalModule(t *testing.T, cfg string, withImpermanence bool) moduleEval {
	t.Helper()
	out, stderr, err := runNixInstantiate(t, "--eval", "--strict", "--json", "testdata/nix/eval.nix",
		"--arg", "cfg", cfg, "--arg", "withImpermanence", fmt.Sprint(withImpermanence))
	if err != nil {
		t.Fatalf("evaluate module with %s: %v\n%s", cfg, err, stderr)
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

// evalModuleError evaluates module.nix with cfg, requires the evaluation to fail and returns its stderr.
func evalModuleError(t *testing.T, cfg string) string {
	t.Helper()
	_, stderr, err := runNixInstantiate(t, "--eval", "--strict", "--json", "testdata/nix/eval.nix", "--arg", "cfg", cfg)
	if err == nil {
		t.Fatalf("evaluate module with %s: succeeded, want an error", cfg)
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

// TestModuleOptions checks every option of SPEC §13.1: its type, its default and that it is documented.
func TestModuleOptions(t *testing.T) {
	ev := evalModule(t, "{ }", false)
	want := map[string]struct{ typ, def string }{
		"enable":             {"bool", `false`},
		"package":            {"package", `"` + moduleStubPackage + `"`},
		"listen":             {"str", `"0.0.0.0:8080"`},
		"dbPath":             {"str", `"/var/lib/nixfleet-cp/state.db"`},
		"openFirewall":       {"bool", `false`},
		"tls.cert":           {"nullOr str", `null`},
		"tls.key":            {"nullOr str", `null`},
		"tls.clientCa":       {"nullOr str", `null`},
		"executorInterval":   {"str", `"2s"`},
		"reportRetention":    {"str", `"168h"`},
		"logLevel":           {"enum debug/info/warn/error", `"info"`},
		"bootstrapTokenFile": {"nullOr str", `null`},
		"extraArgs":          {"listOf str", `[]`},
		"persist":            {"bool", `true`},
		"persistPath":        {"str", `"/persist"`},
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
	if string(ev.ConfigRaw) != "{}" {
		t.Errorf("config with enable = false: %s, want {}", ev.ConfigRaw)
	}
}

// TestModuleRejectsInvalidValues checks that the option types do their job, as the NixOS module system would.
func TestModuleRejectsInvalidValues(t *testing.T) {
	tests := []struct{ name, cfg, wantErr string }{
		{"log level outside the enum", `{ enable = true; logLevel = "verbose"; }`, "services.nixfleet-control-plane.logLevel' is not of type"},
		{"extraArgs not a list", `{ enable = true; extraArgs = "--log-level=debug"; }`, "services.nixfleet-control-plane.extraArgs' is not of type"},
		{"unknown option", `{ enable = true; lsten = "0.0.0.0:80"; }`, "services.nixfleet-control-plane.lsten' does not exist"},
		{"unknown tls option", `{ enable = true; tls.ca = "/run/secrets/ca.pem"; }`, "services.nixfleet-control-plane.tls.ca' does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if stderr := evalModuleError(t, tt.cfg); !strings.Contains(stderr, tt.wantErr) {
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
			var messages, failing []string
			for _, a := range ev.Config.Assertions {
				messages = append(messages, a.Message)
				if !a.Assertion {
					failing = append(failing, a.Message)
				}
			}
			if want := []string{assertListenMsg, assertCertKeyMsg, assertClientCAMsg}; !slices.Equal(messages, want) {
				t.Errorf("assertion messages %q, want %q", messages, want)
			}
			if !slices.Equal(failing, tt.failing) {
				t.Errorf("failing assertions %q, want %q", failing, tt.failing)
			}
		})
	}
}

// moduleFlags holds the serveConfig fields that the module sets through flags.
type moduleFlags struct {
	listen, dbPath, tlsCert, tlsKey, clientCA string
	executorInterval, reportRetention         time.Duration
	logLevel, bootstrapTokenFile              string
}

func moduleFlagsOf(c serveConfig) moduleFlags {
	return moduleFlags(c) // a conversion: it stops compiling if a field is added to one and not the other
}

// defaultModuleFlags is what the daemon sees from the module's defaults.
var defaultModuleFlags = moduleFlags{
	listen: "0.0.0.0:8080", dbPath: "/var/lib/nixfleet-cp/state.db",
	executorInterval: 2 * time.Second, reportRetention: 168 * time.Hour, logLevel: "info",
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

	// The module passes flags only: no environment (NIXFLEET_CP_*), no other unit attributes.
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
		want         map[string][]map[string]string // persistence root -> directories; nil: no environment at all
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
			env := ev.Config.Environment
			if tt.want == nil {
				if env != nil {
					t.Fatalf("environment = %+v, want none without the impermanence module", *env)
				}
				return
			}
			got := map[string][]map[string]string{}
			if env != nil {
				for root, p := range env.Persistence {
					got[root] = p.Directories
				}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("environment.persistence = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestModuleReadmeExamples evaluates the README's two NixOS examples (testdata/nix/readme-*.nix): no assertion
// fails, and README.md, once written, shows each of them verbatim.
func TestModuleReadmeExamples(t *testing.T) {
	for _, name := range []string{"readme-minimal.nix", "readme-mtls.nix"} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join("testdata", "nix", name)
			ev := evalModule(t, "import ./"+filepath.ToSlash(path), true)
			for _, a := range ev.Config.Assertions {
				if !a.Assertion {
					t.Errorf("assertion failed: %s", a.Message)
				}
			}
			if len(ev.Config.Assertions) != 3 {
				t.Errorf("%d assertions, want 3", len(ev.Config.Assertions))
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

// TestFlakeOutputs checks SPEC §13.4 by calling the flake's outputs with a stub nixpkgs.
func TestFlakeOutputs(t *testing.T) {
	// -X main.version only works on a string variable; this fails to compile if main.version is not one.
	var _ *string = &version

	out, stderr, err := runNixInstantiate(t, "--eval", "--strict", "--json", "testdata/nix/flake-eval.nix")
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
