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
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

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
		"staleAfter":         {"string", `"4m"`},
		"driftGrace":         {"string", `"10m"`},
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
	staleAfter, driftGrace                    time.Duration
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
	staleAfter: defaultStaleAfter, driftGrace: defaultDriftGrace,
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
			" --report-retention 168h --log-level info --stale-after 4m --drift-grace 10m --tls-cert %d/tls-cert --tls-key %d/tls-key"),
		flags: func(f moduleFlags) moduleFlags {
			f.listen, f.tlsCert, f.tlsKey = "[::]:8443", "%d/tls-cert", "%d/tls-key"
			return f
		},
	},
	{
		name: "readme mtls with bootstrap token",
		cfg:  `import ./testdata/nix/readme-mtls.nix`,
		argv: strings.Fields("--listen 0.0.0.0:8443 --db-path /var/lib/nixfleet-cp/state.db --executor-interval 2s" +
			" --report-retention 168h --log-level info --stale-after 4m --drift-grace 10m --tls-cert %d/tls-cert --tls-key %d/tls-key" +
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
			reportRetention = "720h"; logLevel = "warn"; staleAfter = "15m"; driftGrace = "1h"; extraArgs = [ "--log-level=debug" "--report-retention" "336h" ]; }`,
		argv: strings.Fields("--listen 127.0.0.1:9000 --db-path /srv/nixfleet/state.db --executor-interval 500ms" +
			" --report-retention 720h --log-level warn --stale-after 15m --drift-grace 1h --log-level=debug --report-retention 336h"),
		flags: func(f moduleFlags) moduleFlags {
			f.listen, f.dbPath, f.executorInterval = "127.0.0.1:9000", "/srv/nixfleet/state.db", 500*time.Millisecond
			f.reportRetention, f.logLevel = 336*time.Hour, "debug" // extraArgs come last and win
			f.staleAfter, f.driftGrace = 15*time.Minute, time.Hour
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
