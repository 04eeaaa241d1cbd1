package main

// Tests for the binary's startup and shutdown (§1): exit codes (ACC-2),
// refused database files (ACC-3), environment versus flags (ACC-5), SIGTERM
// during an in-flight request (ACC-6), durability across kill -9 (ACC-117),
// the schema version (ACC-118) and a desired generation's cache_url across a
// restart (ACC-119).

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// suRunBinary runs the built binary to completion (at most 30 s) and returns
// its exit code and stderr.
func suRunBinary(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, buildBinary(t), args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, stderr.String()
	case errors.As(err, &ee) && ee.Exited():
		return ee.ExitCode(), stderr.String()
	default:
		t.Fatalf("%v: %v\n%s", args, err, stderr.String())
		return -1, ""
	}
}

// suFreePort returns a loopback address that was free a moment ago.
func suFreePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func suListening(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
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
			addr := suFreePort(t)
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
			code, stderr := suRunBinary(t, tc.env, args...)
			if code != tc.code {
				t.Fatalf("exit code %d, want %d\n%s", code, tc.code, stderr)
			}
			if !strings.Contains(stderr, tc.msg) || strings.TrimSpace(stderr) == "" {
				t.Fatalf("stderr lacks %q:\n%s", tc.msg, stderr)
			}
			if strings.Contains(stderr, "Control plane listening") {
				t.Fatalf("the server listened:\n%s", stderr)
			}
			if tc.name != "port taken" && suListening(addr) {
				t.Fatalf("something listens on %s", addr)
			}
			if _, err := os.Stat(db); err == nil && !tc.dbMaybe {
				t.Fatalf("the database was created although startup failed before opening it")
			}
		})
	}
	// A successful start and stop exits 0 (the control case for the codes above).
	code, stderr := suRunBinary(t, nil, "version")
	if code != 0 || stderr != "" {
		t.Fatalf("version: %d %q", code, stderr)
	}
}

// suSnapshot is a file's bytes and the names of its SQLite companions.
type suSnapshot struct {
	data      []byte
	companion []string
}

func suSnap(t *testing.T, path string) suSnapshot {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var s suSnapshot
	s.data = b
	for _, suffix := range []string{"-wal", "-shm", "-journal"} {
		if _, err := os.Stat(path + suffix); err == nil {
			s.companion = append(s.companion, path+suffix)
		}
	}
	return s
}

// suMakeDB creates a rollback-journal SQLite file with the given statements.
func suMakeDB(t *testing.T, path string, stmts ...string) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stmts {
		if _, err := db.Exec(s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestStartupRefusesDatabase covers ACC-3 and §12.4/§12.5: a file that is not
// SQLite, a schema version newer than the binary's and an unknown schema each
// exit 1 with the specified message and leave the file byte-for-byte
// unchanged, with no -wal, -shm or -journal file appearing.
func TestStartupRefusesDatabase(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func(t *testing.T, path string)
		msg  string
	}{
		{"text file", func(t *testing.T, path string) {
			os.WriteFile(path, []byte("this is not a database\n"), 0o644)
		}, "is not a SQLite database"},
		{"header prefix only", func(t *testing.T, path string) {
			os.WriteFile(path, []byte("SQLite form"), 0o644)
		}, "is not a SQLite database"},
		{"16 zero bytes and more", func(t *testing.T, path string) {
			os.WriteFile(path, make([]byte, 4096), 0o644)
		}, "is not a SQLite database"},
		{"schema version too new", func(t *testing.T, path string) {
			suMakeDB(t, path, "CREATE TABLE machine (machine_id TEXT PRIMARY KEY)", "INSERT INTO machine VALUES ('web-01')",
				fmt.Sprintf("PRAGMA user_version = %d", len(migrations)+98))
		}, fmt.Sprintf("database schema version %d is newer than this binary supports (%d)", len(migrations)+98, len(migrations))},
		{"schema version N+1 without tables", func(t *testing.T, path string) {
			suMakeDB(t, path, fmt.Sprintf("PRAGMA user_version = %d", len(migrations)+1))
		}, fmt.Sprintf("database schema version %d is newer than this binary supports (%d)", len(migrations)+1, len(migrations))},
		{"unknown schema", func(t *testing.T, path string) {
			suMakeDB(t, path, "CREATE TABLE foreign_table (a INTEGER)", "INSERT INTO foreign_table VALUES (1)")
		}, "database has an unknown schema; refusing to modify it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.db")
			tc.make(t, path)
			before := suSnap(t, path)
			if len(before.companion) != 0 {
				t.Fatalf("fixture left %v", before.companion)
			}
			fi, _ := os.Stat(path)
			code, stderr := suRunBinary(t, nil, "--db-path", path, "--listen", "127.0.0.1:0")
			if code != 1 {
				t.Fatalf("exit code %d, want 1\n%s", code, stderr)
			}
			if !strings.Contains(stderr, tc.msg) {
				t.Fatalf("stderr lacks %q:\n%s", tc.msg, stderr)
			}
			if strings.Contains(stderr, "Control plane listening") {
				t.Fatalf("the server listened:\n%s", stderr)
			}
			after := suSnap(t, path)
			if !bytes.Equal(after.data, before.data) {
				t.Fatal("the refused file was modified")
			}
			if len(after.companion) != 0 {
				t.Fatalf("the refused file got companions %v", after.companion)
			}
			if fi2, _ := os.Stat(path); fi2.Mode() != fi.Mode() || !fi2.ModTime().Equal(fi.ModTime()) {
				t.Fatalf("mode or mtime changed: %v %v -> %v %v", fi.Mode(), fi.ModTime(), fi2.Mode(), fi2.ModTime())
			}
			// keys create refuses it the same way.
			code, stderr = suRunBinary(t, nil, "keys", "create", "--name", "ops", "--db-path", path)
			if code != 1 || !strings.Contains(stderr, tc.msg) {
				t.Fatalf("keys create: %d\n%s", code, stderr)
			}
			if after := suSnap(t, path); !bytes.Equal(after.data, before.data) || len(after.companion) != 0 {
				t.Fatal("keys create modified the refused file")
			}
		})
	}
}

// suStart runs run(ctx, ["serve", args...]) with getenv, without adding any
// flag, waits until it listens and returns the listening address and a stop
// function that returns run's result.
func suStart(t *testing.T, getenv func(string) string, args ...string) (string, *syncBuffer, func() error) {
	t.Helper()
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, append([]string{"serve"}, args...), getenv, io.Discard, logs) }()
	stopped := false
	var result error
	stop := func() error {
		if stopped {
			return result
		}
		stopped = true
		cancel()
		select {
		case result = <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("server did not stop\n%s", logs.String())
		}
		return result
	}
	t.Cleanup(func() { stop() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		if m := listeningRE.FindStringSubmatch(logs.String()); m != nil {
			return m[1], logs, stop
		}
		select {
		case err := <-done:
			stopped, result = true, err
			t.Fatalf("server exited during startup: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("server did not start\n%s", logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestListenEnvAndFlag covers ACC-5 and §1.2: NIXFLEET_CP_LISTEN is used when
// no flag is given, --listen beats it, and an empty variable counts as unset.
func TestListenEnvAndFlag(t *testing.T) {
	envAddr, flagAddr := suFreePort(t), suFreePort(t)
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
			addr, logs, stop := suStart(t, getenv, append([]string{"--db-path", db}, tc.args...)...)
			if addr != tc.want {
				t.Fatalf("listening on %s, want %s", addr, tc.want)
			}
			r := do(t, &http.Client{Timeout: 10 * time.Second}, "GET", "http://"+addr+"/health", "", nil)
			if r.status != 200 || string(r.body) != "ok" {
				t.Fatalf("health %d %q", r.status, r.body)
			}
			if other := map[string]string{envAddr: flagAddr, flagAddr: envAddr}[addr]; suListening(other) {
				t.Fatalf("also listening on %s", other)
			}
			if err := stop(); err != nil {
				t.Fatalf("run returned %v\n%s", err, logs.String())
			}
		})
	}
	t.Run("env for the database and an empty variable", func(t *testing.T) {
		db := filepath.Join(t.TempDir(), "env", "state.db")
		env := map[string]string{"NIXFLEET_CP_DB_PATH": db, "NIXFLEET_CP_LISTEN": "127.0.0.1:0", "NIXFLEET_CP_LOG_LEVEL": ""}
		_, logs, stop := suStart(t, func(k string) string { return env[k] })
		if _, err := os.Stat(db); err != nil {
			t.Fatalf("NIXFLEET_CP_DB_PATH not used: %v", err)
		}
		if !strings.Contains(logs.String(), "path="+db) {
			t.Fatalf("logs:\n%s", logs.String())
		}
		if err := stop(); err != nil {
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
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(bs.logs.String(), "shutting down") {
		if time.Now().After(deadline) {
			t.Fatalf("no shutdown log after SIGTERM:\n%s", bs.logs.String())
		}
		time.Sleep(5 * time.Millisecond)
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
	sdb := mtOpenDB(t, db)
	var gen string
	if err := sdb.QueryRow("SELECT current_generation FROM machine WHERE machine_id = 'web-01'").Scan(&gen); err != nil || gen != p1 {
		t.Fatalf("stored generation %q: %v", gen, err)
	}
	var n int
	sdb.QueryRow("SELECT count(*) FROM report").Scan(&n)
	if n != 1 {
		t.Fatalf("%d reports stored", n)
	}
}

// TestReportSurvivesKill9 covers ACC-117: after a 200 to a report, kill -9
// and a restart still show its current_generation and last_report.
func TestReportSurvivesKill9(t *testing.T) {
	db := filepath.Join(t.TempDir(), "state.db")
	c := &http.Client{Timeout: 10 * time.Second}
	bs := startBinary(t, "--db-path", db)
	A := bootstrapKey(t, c, bs.url)
	p1, p2 := storePath('a', "sys-1"), storePath('b', "sys-2")
	expect(t, do(t, c, "POST", bs.url+"/api/v1/machines/web-01/report", "", reportBody("web-01", p1, true, "up-to-date")), 200, "")
	before := time.Now().UTC().Truncate(time.Millisecond)
	expect(t, do(t, c, "POST", bs.url+"/api/v1/machines/web-01/report", "", reportBody("web-01", p2, false, "rolled back: x")), 200, "")
	after := time.Now().UTC()
	bs.kill9(t)

	bs2 := startBinary(t, "--db-path", db)
	ms := listMachinesT(t, c, bs2.url, A, "")
	if len(ms) != 1 || ms[0].CurrentGeneration != p2 || ms[0].SystemState != "error" || ms[0].LastReport == nil {
		t.Fatalf("after kill -9: %+v", ms)
	}
	last, err := time.Parse(time.RFC3339, *ms[0].LastReport)
	if err != nil || last.Before(before) || last.After(after) {
		t.Fatalf("last_report %s outside [%s, %s]", *ms[0].LastReport, before, after)
	}
	if evs := auditRows(t, c, bs2.url, A, "?action=report"); len(evs) != 2 {
		t.Fatalf("%d report audit rows, want 2", len(evs))
	}
}

// TestSchemaVersion covers ACC-118 and §12.4: after the first start
// user_version is N (the number of migrations); a second start changes
// neither the version nor the schema.
func TestSchemaVersion(t *testing.T) {
	db := filepath.Join(t.TempDir(), "state.db")
	schema := func() (int, string) {
		t.Helper()
		sdb, err := sql.Open("sqlite", "file:"+db+"?mode=ro")
		if err != nil {
			t.Fatal(err)
		}
		defer sdb.Close()
		var v int
		if err := sdb.QueryRow("PRAGMA user_version").Scan(&v); err != nil {
			t.Fatal(err)
		}
		rows, err := sdb.Query("SELECT type, name, coalesce(sql, '') FROM sqlite_schema ORDER BY type, name")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var b strings.Builder
		for rows.Next() {
			var typ, name, sqlText string
			rows.Scan(&typ, &name, &sqlText)
			fmt.Fprintf(&b, "%s %s %s\n", typ, name, sqlText)
		}
		var mode string
		sdb.QueryRow("PRAGMA journal_mode").Scan(&mode)
		return v, b.String() + "journal_mode=" + mode
	}

	rs := startRun(t, nil, "--db-path", db)
	if !strings.Contains(rs.logs.String(), fmt.Sprintf("schema_version=%d", len(migrations))) {
		t.Errorf("database ready log:\n%s", rs.logs.String())
	}
	if err := rs.stop(t); err != nil {
		t.Fatal(err)
	}
	v1, s1 := schema()
	if v1 != len(migrations) || v1 < 1 {
		t.Fatalf("user_version %d after the first start, want %d", v1, len(migrations))
	}
	if !strings.Contains(s1, "journal_mode=wal") || !strings.Contains(s1, "table audit_event") {
		t.Fatalf("schema after the first start:\n%s", s1)
	}

	rs = startRun(t, nil, "--db-path", db)
	if err := rs.stop(t); err != nil {
		t.Fatal(err)
	}
	v2, s2 := schema()
	if v2 != v1 || s2 != s1 {
		t.Fatalf("the second start changed the schema: %d -> %d\n%s\n---\n%s", v1, v2, s1, s2)
	}
}

// TestDesiredCacheURLSurvivesRestart covers ACC-119's second half: the
// cache_url stored with a desired generation written by a rollout is served
// again after a restart.
func TestDesiredCacheURLSurvivesRestart(t *testing.T) {
	db := filepath.Join(t.TempDir(), "state.db")
	c := &http.Client{Timeout: 10 * time.Second}
	rs := startRun(t, nil, "--db-path", db, "--executor-interval", "100ms")
	A := bootstrapKey(t, c, rs.url)
	p0, p1 := storePath('a', "sys-0"), storePath('b', "sys-1")
	expect(t, do(t, c, "POST", rs.url+"/api/v1/machines/web-01/report", "", reportBody("web-01", p0, true, "up-to-date")), 200, "")
	r := do(t, c, "POST", rs.url+"/api/v1/releases", A, map[string]any{
		"cache_url": "https://release-cache.example.org",
		"entries":   []map[string]any{{"hostname": "web-01", "store_path": p1, "platform": "x86_64-linux"}},
	})
	expect(t, r, 201, "")
	var rel struct{ ID string }
	r.json(t, &rel)
	const cacheURL = "https://cache.example.org/nix?priority=10"
	expect(t, do(t, c, "POST", rs.url+"/api/v1/rollouts", A, map[string]any{
		"release_id": rel.ID, "strategy": "all_at_once", "cache_url": cacheURL,
		"target": map[string]any{"hosts": []string{"web-01"}},
	}), 201, "")

	want := `{"hash":"` + p1 + `","cache_url":"` + cacheURL + `","poll_hint":5}`
	deadline := time.Now().Add(15 * time.Second)
	for {
		r = do(t, c, "GET", rs.url+"/api/v1/machines/web-01/desired-generation", "", nil)
		if r.status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the executor did not deploy: %d %s\n%s", r.status, r.body, rs.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := strings.TrimSpace(string(r.body)); got != want {
		t.Fatalf("before restart %s, want %s", got, want)
	}
	if err := rs.stop(t); err != nil {
		t.Fatal(err)
	}

	rs2 := startRun(t, nil, "--db-path", db, "--executor-interval", "1m")
	r = do(t, c, "GET", rs2.url+"/api/v1/machines/web-01/desired-generation", "", nil)
	expect(t, r, 200, "")
	if got := strings.TrimSpace(string(r.body)); got != want {
		t.Fatalf("after restart %s, want %s", got, want)
	}
}
