package main

// Helpers of the NixOS module and flake tests: running nix-instantiate on
// testdata/nix/eval.nix with the real nixpkgs library, and reading the result.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
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
	moduleDefaultArgs = "--listen 0.0.0.0:8080 --db-path /var/lib/nixfleet-cp/state.db --executor-interval 2s --report-retention 168h --log-level info --stale-after 4m --drift-grace 10m"
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
