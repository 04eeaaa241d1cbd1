package main

// Tests for the binary's entry point (main.go, §1): a smoke test through
// run (ACC-4), the version and usage errors, exit codes (ACC-2), environment
// versus flags (ACC-5), and SIGTERM during an in-flight request (ACC-6).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSmoke starts the server through run, makes real requests over
// loopback, cancels it and expects a clean exit (ACC-4).
func TestSmoke(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "missing", "dir")
	db := filepath.Join(dir, "state.db")
	rs := startRun(t, nil, "--db-path", db)
	c := &http.Client{Timeout: 10 * time.Second}

	r := do(t, c, "GET", rs.url+"/health", "", nil)
	if r.status != 200 || string(r.body) != "ok" {
		t.Fatalf("health: %d %q", r.status, r.body)
	}
	fi, err := os.Stat(db)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("db mode %v, want 0600", fi.Mode().Perm())
	}
	logs := rs.logs.String()
	for _, want := range []string{"Control plane listening", "running without TLS: traffic is unencrypted and agent endpoints are unauthenticated", "database ready"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
	key := bootstrapKey(t, c, rs.url)
	expect(t, do(t, c, "POST", rs.url+"/api/v1/machines/web-01/report", "", reportBody("web-01", storePath('a', "sys"), true, "up-to-date")), 200, "")
	ms := listMachinesT(t, c, rs.url, key, "")
	if len(ms) != 1 || ms[0].MachineID != "web-01" || ms[0].Lifecycle != "active" {
		t.Fatalf("machines: %+v", ms)
	}
	if err := rs.stop(t); err != nil {
		t.Fatal(err)
	}
}

// TestVersion covers ACC-1.
func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"version"}, func(string) string { return "" }, &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "nixfleet-control-plane ") {
		t.Fatalf("version output %q", out.String())
	}
}

// TestUsageErrors covers the exit-2 part of ACC-2 and flag validation.
func TestUsageErrors(t *testing.T) {
	env := func(string) string { return "" }
	for _, args := range [][]string{
		{"--tls-cert", "c.pem"},
		{"--client-ca", "ca.pem"},
		{"--executor-interval", "5"},
		{"--executor-interval", "50ms"},
		{"--report-retention", "30m"},
		{"--stale-after", "30s"},
		{"--stale-after", "25h"},
		{"--stale-after", "4"},
		{"--drift-grace", "59s"},
		{"--drift-grace", "169h"},
		{"--log-level", "loud"},
		{"--listen", "nonsense"},
		{"serve", "extra"},
		{"bogus"},
	} {
		err := run(context.Background(), args, env, &bytes.Buffer{}, &bytes.Buffer{})
		var ue *usageError
		if !errors.As(err, &ue) {
			t.Errorf("%v: got %v, want a usage error", args, err)
		}
	}
}

// TestStaleDriftFlags: --stale-after and --drift-grace have their documented defaults, are read from their
// environment variables, and a flag beats its variable.
func TestStaleDriftFlags(t *testing.T) {
	env := map[string]string{"NIXFLEET_CP_STALE_AFTER": "15m", "NIXFLEET_CP_DRIFT_GRACE": "2h"}
	for _, tc := range []struct {
		args              []string
		getenv            func(string) string
		stale, driftGrace time.Duration
	}{
		{nil, func(string) string { return "" }, 4 * time.Minute, 10 * time.Minute},
		{nil, func(k string) string { return env[k] }, 15 * time.Minute, 2 * time.Hour},
		{[]string{"--stale-after", "1m", "--drift-grace=168h"}, func(k string) string { return env[k] }, time.Minute, 168 * time.Hour},
	} {
		cfg, err := parseServeFlags(tc.args, tc.getenv)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if cfg.staleAfter != tc.stale || cfg.driftGrace != tc.driftGrace {
			t.Errorf("%v: stale-after %v drift-grace %v, want %v %v", tc.args, cfg.staleAfter, cfg.driftGrace, tc.stale, tc.driftGrace)
		}
	}
}

// TestStartupExitCodes covers ACC-2 and §1.4/§1.6: configuration errors exit
// 2 and naming the flag or variable, unreadable TLS material and a taken port
// exit 1 naming the file or address; in every case nothing listens and (for
// errors found before step 4) no database is created.
func TestStartupExitCodes(t *testing.T) {
	pki := newTestPKI(t)
	dir := t.TempDir()
	short := filepath.Join(dir, "short-token")
	os.WriteFile(short, []byte("  too-short \n"), 0o600)
	garbage := filepath.Join(dir, "garbage.pem")
	os.WriteFile(garbage, []byte("not a certificate\n"), 0o600)
	missingCert := filepath.Join(dir, "no-such-dir", "missing-cert.pem")
	missingKey := filepath.Join(dir, "missing-key.pem")
	missingCA := filepath.Join(dir, "missing-ca.pem")
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()

	for _, tc := range []struct {
		name    string
		env     []string
		args    []string
		code    int
		msg     string
		dbMaybe bool // the database may exist (the failure comes after step 4)
	}{
		{"tls-cert without tls-key", nil, []string{"--tls-cert", pki.serverCert}, 2, "--tls-cert and --tls-key must be set together", false},
		{"tls-key without tls-cert", nil, []string{"--tls-key", pki.serverKey}, 2, "--tls-cert and --tls-key must be set together", false},
		{"client-ca without cert and key", nil, []string{"--client-ca", pki.caFile}, 2, "--client-ca requires --tls-cert and --tls-key", false},
		{"client-ca without key", nil, []string{"--client-ca", pki.caFile, "--tls-cert", pki.serverCert}, 2, "", false},
		{"executor-interval 5", nil, []string{"--executor-interval", "5"}, 2, "--executor-interval", false},
		{"executor-interval 2m", nil, []string{"--executor-interval", "2m"}, 2, "--executor-interval", false},
		{"executor-interval from env", []string{"NIXFLEET_CP_EXECUTOR_INTERVAL=5"}, nil, 2, "NIXFLEET_CP_EXECUTOR_INTERVAL", false},
		{"report-retention 30m", nil, []string{"--report-retention=30m"}, 2, "--report-retention", false},
		{"stale-after 30s", nil, []string{"--stale-after", "30s"}, 2, "--stale-after", false},
		{"drift-grace from env", []string{"NIXFLEET_CP_DRIFT_GRACE=forever"}, nil, 2, "NIXFLEET_CP_DRIFT_GRACE", false},
		{"log-level", nil, []string{"-log-level", "loud"}, 2, "--log-level", false},
		{"log-level from env", []string{"NIXFLEET_CP_LOG_LEVEL=DEBUG"}, nil, 2, "NIXFLEET_CP_LOG_LEVEL", false},
		{"listen without port", nil, []string{"--listen", "127.0.0.1"}, 2, "--listen", false},
		{"unknown flag", nil, []string{"--no-such-flag"}, 2, "", false},
		{"positional argument", nil, []string{"serve", "extra"}, 2, "extra", false},
		{"unknown command", nil, []string{"bogus"}, 2, "bogus", false},
		{"short bootstrap token", nil, []string{"--bootstrap-token-file", short}, 2, "bootstrap-token-file", false},
		{"missing tls-cert file", nil, []string{"--tls-cert", missingCert, "--tls-key", pki.serverKey}, 1, missingCert, false},
		{"missing tls-key file", nil, []string{"--tls-cert", pki.serverCert, "--tls-key", missingKey}, 1, missingKey, false},
		{"invalid tls-cert file", nil, []string{"--tls-cert", garbage, "--tls-key", pki.serverKey}, 1, garbage, false},
		{"key does not match", nil, []string{"--tls-cert", pki.serverCert, "--tls-key", pki.clientFile["web-01"][1]}, 1, pki.clientFile["web-01"][1], false},
		{"missing client-ca file", nil, []string{"--tls-cert", pki.serverCert, "--tls-key", pki.serverKey, "--client-ca", missingCA}, 1, missingCA, false},
		{"client-ca without certificates", nil, []string{"--tls-cert", pki.serverCert, "--tls-key", pki.serverKey, "--client-ca", garbage}, 1, garbage, false},
		{"port taken", nil, []string{"--listen", taken.Addr().String()}, 1, taken.Addr().String(), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := filepath.Join(t.TempDir(), "sub", "state.db")
			addr := freePort(t)
			if tc.name == "port taken" {
				addr = taken.Addr().String()
			}
			// Flags go before any positional argument; "serve" and "bogus"
			// stay first.
			var args []string
			rest := tc.args
			if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
				args, rest = append(args, rest[0]), rest[1:]
			}
			args = append(args, "--db-path", db)
			if !strings.Contains(strings.Join(rest, " "), "listen") {
				args = append(args, "--listen", addr)
			}
			args = append(args, rest...)
			code, stderr := runBinary(t, tc.env, args...)
			if code != tc.code {
				t.Fatalf("exit code %d, want %d\n%s", code, tc.code, stderr)
			}
			if !strings.Contains(stderr, tc.msg) || strings.TrimSpace(stderr) == "" {
				t.Fatalf("stderr lacks %q:\n%s", tc.msg, stderr)
			}
			if strings.Contains(stderr, "Control plane listening") {
				t.Fatalf("the server listened:\n%s", stderr)
			}
			if tc.name != "port taken" && isListening(addr) {
				t.Fatalf("something listens on %s", addr)
			}
			if _, err := os.Stat(db); err == nil && !tc.dbMaybe {
				t.Fatalf("the database was created although startup failed before opening it")
			}
		})
	}
	// A successful start and stop exits 0 (the control case for the codes above).
	code, stderr := runBinary(t, nil, "version")
	if code != 0 || stderr != "" {
		t.Fatalf("version: %d %q", code, stderr)
	}
}

// freePort returns a loopback address that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// isListening reports whether something accepts connections on addr.
func isListening(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// TestListenEnvAndFlag covers ACC-5 and §1.2: NIXFLEET_CP_LISTEN is used when
// no flag is given, --listen beats it, and an empty variable counts as unset.
func TestListenEnvAndFlag(t *testing.T) {
	envAddr, flagAddr := freePort(t), freePort(t)
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"env only", map[string]string{"NIXFLEET_CP_LISTEN": envAddr}, nil, envAddr},
		{"flag beats env", map[string]string{"NIXFLEET_CP_LISTEN": envAddr}, []string{"--listen", flagAddr}, flagAddr},
		{"flag with = beats env", map[string]string{"NIXFLEET_CP_LISTEN": envAddr}, []string{"-listen=" + flagAddr}, flagAddr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := filepath.Join(t.TempDir(), "state.db")
			getenv := func(k string) string { return tc.env[k] }
			rs := launchRun(t, getenv, append([]string{"--db-path", db}, tc.args...)...)
			addr := rs.addr
			if addr != tc.want {
				t.Fatalf("listening on %s, want %s", addr, tc.want)
			}
			r := do(t, &http.Client{Timeout: 10 * time.Second}, "GET", "http://"+addr+"/health", "", nil)
			if r.status != 200 || string(r.body) != "ok" {
				t.Fatalf("health %d %q", r.status, r.body)
			}
			if other := map[string]string{envAddr: flagAddr, flagAddr: envAddr}[addr]; isListening(other) {
				t.Fatalf("also listening on %s", other)
			}
			if err := rs.stop(t); err != nil {
				t.Fatalf("run returned %v\n%s", err, rs.logs.String())
			}
		})
	}
	t.Run("env for the database and an empty variable", func(t *testing.T) {
		db := filepath.Join(t.TempDir(), "env", "state.db")
		env := map[string]string{"NIXFLEET_CP_DB_PATH": db, "NIXFLEET_CP_LISTEN": "127.0.0.1:0", "NIXFLEET_CP_LOG_LEVEL": ""}
		rs := launchRun(t, func(k string) string { return env[k] })
		if _, err := os.Stat(db); err != nil {
			t.Fatalf("NIXFLEET_CP_DB_PATH not used: %v", err)
		}
		if !strings.Contains(rs.logs.String(), "path="+db) {
			t.Fatalf("logs:\n%s", rs.logs.String())
		}
		if err := rs.stop(t); err != nil {
			t.Fatal(err)
		}
	})
}

// TestShutdownDuringRequest covers ACC-6 and §1.5 with the built binary: a
// report whose body is still arriving when SIGTERM comes is read to the end,
// committed and answered 200, and the process then exits 0.
func TestShutdownDuringRequest(t *testing.T) {
	db := filepath.Join(t.TempDir(), "state.db")
	bs := startBinary(t, "--db-path", db)
	addr := strings.TrimPrefix(bs.url, "http://")
	p1 := storePath('a', "sys-1")
	body, _ := json.Marshal(reportBody("web-01", p1, true, "deployed"))

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(conn)
	// Expect: 100-continue makes the server say when the handler starts
	// reading the body: from then on the request is certainly in flight.
	fmt.Fprintf(conn, "POST /api/v1/machines/web-01/report HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"+
		"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n", addr, len(body))
	status, err := br.ReadString('\n')
	if err != nil || !strings.Contains(status, " 100 ") {
		t.Fatalf("interim response %q: %v", status, err)
	}
	if blank, _ := br.ReadString('\n'); blank != "\r\n" {
		t.Fatalf("after 100 Continue: %q", blank)
	}
	half := len(body) / 2
	if _, err := conn.Write(body[:half]); err != nil {
		t.Fatal(err)
	}

	if err := bs.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !poll(10*time.Second, func() bool { return strings.Contains(bs.logs.String(), "shutting down") }) {
		t.Fatalf("no shutdown log after SIGTERM:\n%s", bs.logs.String())
	}
	if _, err := conn.Write(body[half:]); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, &http.Request{Method: "POST"})
	if err != nil {
		t.Fatalf("reading the answer: %v\n%s", err, bs.logs.String())
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}

	select {
	case err := <-bs.done:
		bs.done <- err
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, bs.logs.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the process did not exit within 20 s of SIGTERM\n%s", bs.logs.String())
	}
	// The acknowledged report is in the database.
	sdb := openDB(t, db)
	var gen string
	if err := sdb.QueryRow("SELECT current_generation FROM machine WHERE machine_id = 'web-01'").Scan(&gen); err != nil || gen != p1 {
		t.Fatalf("stored generation %q: %v", gen, err)
	}
	var n int
	mustScan(t, sdb.QueryRow("SELECT count(*) FROM report"), &n)
	if n != 1 {
		t.Fatalf("%d reports stored", n)
	}
}

// TestHelpAndVersionFlags covers the help of every subcommand (help CMD and
// CMD --help print the same text, with an example, on stdout) and --version.
func TestHelpAndVersionFlags(t *testing.T) {
	env := func(string) string { return "" }
	runOut := func(args ...string) (string, string, error) {
		var out, errOut bytes.Buffer
		err := run(context.Background(), args, env, &out, &errOut)
		return out.String(), errOut.String(), err
	}
	for cmd, text := range commandHelp {
		if !strings.Contains(text, "Example") || !strings.Contains(text, "nixfleet-control-plane "+cmd) {
			t.Errorf("help of %s lacks an example of itself:\n%s", cmd, text)
		}
		invocations := [][]string{{"help", cmd}, {cmd, "--help"}, {cmd, "-h"}}
		if cmd == "keys" {
			invocations = append(invocations, []string{"help", "keys", "create"}, []string{"keys", "create", "--help"})
		}
		if cmd == "help" {
			invocations = [][]string{{"help", "help"}}
		}
		for _, args := range invocations {
			out, errOut, err := runOut(args...)
			if err != nil || out != text || errOut != "" {
				t.Errorf("%q: err %v, stderr %q, stdout:\n%s", args, err, errOut, out)
			}
		}
	}
	for _, args := range [][]string{{"help"}, {"--help"}, {"-h"}, {"help", "--help"}} {
		out, _, err := runOut(args...)
		if err != nil || out != usageText {
			t.Errorf("%q: %v %q", args, err, out)
		}
	}
	if _, _, err := runOut("help", "bogus"); err == nil {
		t.Error("help bogus: no usage error")
	}
	for _, args := range [][]string{{"--version"}, {"-version"}, {"version"}} {
		out, _, err := runOut(args...)
		if err != nil || out != "nixfleet-control-plane "+versionString()+" "+runtime.Version()+"\n" {
			t.Errorf("%q: %v %q", args, err, out)
		}
	}
}

// TestVersionFromBuildInfo checks the version the built binary prints with
// --version: dev-<commit> from a git checkout, or plain dev when the
// toolchain stamped no revision (go run, -buildvcs=false). The -ldflags value
// and the fallback rules are TestVersionFrom's.
func TestVersionFromBuildInfo(t *testing.T) {
	code, out := runBinaryStdout(t, buildBinary(t), "--version")
	if code != 0 || !regexp.MustCompile(`^nixfleet-control-plane dev(-[0-9a-f]{1,12}(-dirty)?)? go\S+\n$`).MatchString(out) {
		t.Fatalf("--version: %d %q", code, out)
	}
}

// TestVersionFrom covers the fallback of versionString: the link-time value
// wins; otherwise the VCS revision stamped by the toolchain, shortened to 12
// digits and marked -dirty for a modified tree; otherwise dev.
func TestVersionFrom(t *testing.T) {
	stamped := func(kv ...string) *debug.BuildInfo {
		info := &debug.BuildInfo{}
		for i := 0; i < len(kv); i += 2 {
			info.Settings = append(info.Settings, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
		}
		return info
	}
	rev := "0123456789abcdef0123456789abcdef01234567"
	for _, tc := range []struct {
		version string
		info    *debug.BuildInfo
		want    string
	}{
		{"1.2.3", stamped("vcs.revision", rev), "1.2.3"},
		{"dev", nil, "dev"},
		{"dev", stamped(), "dev"},
		{"dev", stamped("vcs.revision", rev, "vcs.modified", "false"), "dev-0123456789ab"},
		{"dev", stamped("vcs.revision", rev, "vcs.modified", "true"), "dev-0123456789ab-dirty"},
		{"dev", stamped("vcs.revision", "abc"), "dev-abc"},
	} {
		if got := versionFrom(tc.version, tc.info); got != tc.want {
			t.Errorf("versionFrom(%q, %v) = %q, want %q", tc.version, tc.info, got, tc.want)
		}
	}
}

// runBinaryStdout runs bin with args and returns its exit code and stdout.
func runBinaryStdout(t *testing.T, bin string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	out, err := cmd.Output()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

// TestKeysCreateExpiresAtDuration covers `keys create --expires-at` with a
// duration (30d, 12h, 90m, 1h30m) as well as RFC 3339, and its refusals.
func TestKeysCreateExpiresAtDuration(t *testing.T) {
	db := filepath.Join(t.TempDir(), "state.db")
	st, err := openStore(context.Background(), db, time.Now, newMetrics())
	if err != nil {
		t.Fatal(err)
	}
	st.close()
	for i, tc := range []struct {
		arg  string
		want time.Duration
	}{{"30d", 30 * 24 * time.Hour}, {"12h", 12 * time.Hour}, {"90m", 90 * time.Minute}, {"1h30m", 90 * time.Minute}} {
		before := time.Now()
		var out, errOut bytes.Buffer
		args := []string{"keys", "create", "--name", fmt.Sprintf("k%d", i), "--expires-at", tc.arg, "--db-path", db}
		if err := run(context.Background(), args, func(string) string { return "" }, &out, &errOut); err != nil {
			t.Fatalf("%s: %v %s", tc.arg, err, errOut.String())
		}
		after := time.Now()
		var ms int64
		sdb := openDB(t, db)
		mustScan(t, sdb.QueryRow(`SELECT expires_at FROM api_key WHERE name = ?`, fmt.Sprintf("k%d", i)), &ms)
		if got := time.UnixMilli(ms); got.Before(before.Add(tc.want).Truncate(time.Millisecond)) || got.After(after.Add(tc.want)) {
			t.Errorf("%s: expires_at %v, want now + %v", tc.arg, got, tc.want)
		}
	}
	for _, bad := range []string{"0d", "-1h", "0s", "36501d", "soon", "2001-01-01T00:00:00Z"} {
		args := []string{"keys", "create", "--name", "bad", "--expires-at", bad, "--db-path", db}
		var ue *usageError
		if err := run(context.Background(), args, func(string) string { return "" }, io.Discard, io.Discard); !errors.As(err, &ue) {
			t.Errorf("%s: got %v, want a usage error", bad, err)
		}
	}
}
