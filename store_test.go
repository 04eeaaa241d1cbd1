package main

// Store tests (store.go, §12): refused database files (ACC-3), the schema
// version and migrations (ACC-118), durability across kill -9 (ACC-117) and a
// restart (ACC-119), and the writer connection after a cancelled BEGIN or a
// panic inside a write transaction.

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// makeDB creates a rollback-journal SQLite file with the given statements.
func makeDB(t *testing.T, path string, stmts ...string) {
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
			makeDB(t, path, "CREATE TABLE machine (machine_id TEXT PRIMARY KEY)", "INSERT INTO machine VALUES ('web-01')",
				fmt.Sprintf("PRAGMA user_version = %d", len(migrations)+98))
		}, fmt.Sprintf("database schema version %d is newer than this binary supports (%d)", len(migrations)+98, len(migrations))},
		{"schema version N+1 without tables", func(t *testing.T, path string) {
			makeDB(t, path, fmt.Sprintf("PRAGMA user_version = %d", len(migrations)+1))
		}, fmt.Sprintf("database schema version %d is newer than this binary supports (%d)", len(migrations)+1, len(migrations))},
		{"unknown schema", func(t *testing.T, path string) {
			makeDB(t, path, "CREATE TABLE foreign_table (a INTEGER)", "INSERT INTO foreign_table VALUES (1)")
		}, "database has an unknown schema; refusing to modify it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.db")
			tc.make(t, path)
			before := snapFile(t, path)
			fi, _ := os.Stat(path)
			stderr := expectRefusedStart(t, path)
			if !strings.Contains(stderr, tc.msg) {
				t.Fatalf("stderr lacks %q:\n%s", tc.msg, stderr)
			}
			if fi2, _ := os.Stat(path); fi2.Mode() != fi.Mode() || !fi2.ModTime().Equal(fi.ModTime()) {
				t.Fatalf("mode or mtime changed: %v %v -> %v %v", fi.Mode(), fi.ModTime(), fi2.Mode(), fi2.ModTime())
			}
			// keys create refuses it the same way.
			code, stderr := runBinary(t, nil, "keys", "create", "--name", "ops", "--db-path", path)
			if code != 1 || !strings.Contains(stderr, tc.msg) {
				t.Fatalf("keys create: %d\n%s", code, stderr)
			}
			if after := snapFile(t, path); !bytes.Equal(after.data, before.data) || len(after.companion) != 0 {
				t.Fatal("keys create modified the refused file")
			}
		})
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
			mustScan(t, rows, &typ, &name, &sqlText)
			fmt.Fprintf(&b, "%s %s %s\n", typ, name, sqlText)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		var mode string
		mustScan(t, sdb.QueryRow("PRAGMA journal_mode"), &mode)
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

// fltLateCancel is a context whose Done channel closes on its n-th call to
// Done: the driver sees it open when the statement starts and closed while
// it runs, which is the moment a client disconnect can hit a BEGIN.
type fltLateCancel struct {
	context.Context
	calls, n atomic.Int32
	ch       chan struct{}
	once     sync.Once
}

func (c *fltLateCancel) Done() <-chan struct{} {
	if c.calls.Add(1) >= c.n.Load() {
		c.once.Do(func() { close(c.ch) })
	}
	return c.ch
}

func (c *fltLateCancel) Err() error {
	select {
	case <-c.ch:
		return context.Canceled
	default:
		return nil
	}
}

// TestFaultCancelledBeginLeavesWriterUsable is the regression test for a
// request context that ends while BEGIN IMMEDIATE runs: the driver then
// reports the context's error although BEGIN succeeded, and the writer
// connection used to stay inside that transaction, so that every later write
// failed with "cannot start a transaction within a transaction" (500) until a
// restart. A client that disconnects at the wrong moment, or the executor
// stopped at shutdown, could cause it. store.begin now rolls back after a
// failed BEGIN.
func TestFaultCancelledBeginLeavesWriterUsable(t *testing.T) {
	t.Parallel()
	st, err := openStore(context.Background(), filepath.Join(t.TempDir(), "state.db"), time.Now, newMetrics())
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	failed := 0
	check := func(what string, first error) {
		t.Helper()
		if first != nil {
			failed++
		}
		if err := st.write(context.Background(), func(tx *txn) error { return nil }); err != nil {
			t.Fatalf("%s (%v), then a write fails: %v", what, first, err)
		}
	}
	// The driver's context checks happen at a few calls to Done; ending the
	// context at each of them in turn hits the window after BEGIN succeeded.
	for n := int32(1); n <= 6; n++ {
		for range 700 {
			ctx := &fltLateCancel{Context: context.Background(), ch: make(chan struct{})}
			ctx.n.Store(n)
			check(fmt.Sprintf("context ended at Done call %d", n),
				st.write(ctx, func(tx *txn) error { return nil }))
		}
	}
	// And real cancellations at random moments.
	for i := range 2000 {
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			// Not a wait for a condition: a varying delay, so that the
			// cancellation lands at a different moment of the write each time.
			time.Sleep(time.Duration(i%40) * time.Microsecond)
			cancel()
		}()
		check("cancelled write", st.write(ctx, func(tx *txn) error {
			_, err := tx.exec("UPDATE api_key SET last_used_at = 0 WHERE id = -1")
			return err
		}))
		cancel()
	}
	if failed == 0 {
		t.Fatal("no write failed: the test did not cancel any")
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
	deployed := poll(15*time.Second, func() bool {
		r = do(t, c, "GET", rs.url+"/api/v1/machines/web-01/desired-generation", "", nil)
		return r.status == 200
	})
	if !deployed {
		t.Fatalf("the executor did not deploy: %d %s\n%s", r.status, r.body, rs.logs.String())
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

// TestWritePanicSafe checks that a panic inside a write transaction cannot
// wedge the writer. store.write rolls the transaction back and releases the
// writer before the panic goes on: the row inserted before the panic is not
// committed, the machine it staged never reaches the fleet index, the panic
// reaches the caller, and the next write commits. The group-commit writer
// (commitReports) recovers such a panic and fails the whole group: a report
// applied before the panicking one, in the same transaction, is rolled back
// with it, every waiter gets an error, and the next report is stored. A
// report that never went through validate (all its fields nil) makes
// applyReport panic after it has inserted the machine.
func TestWritePanicSafe(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	ctx := context.Background()
	// bounded runs f, failing the test instead of hanging if the writer is wedged.
	bounded := func(what string, f func() error) error {
		t.Helper()
		done := make(chan error, 1)
		go func() { done <- f() }()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			t.Fatalf("%s did not return within 10 s: the writer is wedged", what)
			return nil
		}
	}

	t.Run("store.write", func(t *testing.T) {
		insert := func(tx *txn, target string) error {
			_, err := tx.exec("INSERT INTO audit_event (timestamp, actor, action, target) VALUES (?, 'test', 'panic', ?)", tx.now, target)
			return err
		}
		type boom struct{}
		var recovered any
		err := bounded("a write that panics", func() (err error) {
			defer func() { recovered = recover() }()
			return ts.st.write(ctx, func(tx *txn) error {
				if err := insert(tx, "before-panic"); err != nil {
					return err
				}
				if _, err := tx.insertMachine("panic-01", lcActive); err != nil {
					return err
				}
				panic(boom{})
			})
		})
		if _, ok := recovered.(boom); !ok {
			t.Fatalf("write returned %v and the caller recovered %v, want fn's panic to reach the caller", err, recovered)
		}
		if n := countRows(t, ts, "SELECT count(*) FROM audit_event WHERE target = 'before-panic'"); n != 0 {
			t.Fatalf("the row inserted before the panic was committed (%d rows)", n)
		}
		if n := countRows(t, ts, "SELECT count(*) FROM machine WHERE machine_id = 'panic-01'"); n != 0 {
			t.Fatalf("the machine inserted before the panic was committed")
		}
		if ts.st.fleet.get("panic-01") != nil {
			t.Fatal("the machine of the rolled-back transaction is in the fleet index")
		}
		if err := bounded("the next write", func() error {
			return ts.st.write(ctx, func(tx *txn) error { return insert(tx, "after-panic") })
		}); err != nil {
			t.Fatalf("the write after a panic: %v", err)
		}
		if n := countRows(t, ts, "SELECT count(*) FROM audit_event WHERE target = 'after-panic'"); n != 1 {
			t.Fatalf("the write after a panic committed %d rows, want 1", n)
		}
	})

	t.Run("group commit", func(t *testing.T) {
		p1 := storePath('a', "sys-1")
		b, err := json.Marshal(reportBody("web-01", p1, true, "up-to-date"))
		if err != nil {
			t.Fatal(err)
		}
		var good reportRequest
		if err := unmarshalObject(b, &good); err != nil {
			t.Fatal(err)
		}
		if err := good.validate(); err != nil {
			t.Fatal(err)
		}
		batch := []*reportJob{
			{id: "web-01", req: &good, done: make(chan error, 1)},
			{id: "web-02", req: &reportRequest{}, done: make(chan error, 1)},
		}
		if err := bounded("the group commit", func() error {
			ts.st.commitReports(batch, ts.log)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		// The group fails, and each report is retried alone: the good one is
		// committed, the one that panics is refused and leaves no row.
		if err := <-batch[0].done; err != nil {
			t.Fatalf("the good report of a group that panicked: %v, want it committed on its own", err)
		}
		if err := <-batch[1].done; err == nil {
			t.Fatal("the report that panics was acknowledged")
		}
		if !strings.Contains(ts.logs.String(), `err="panic: `) {
			t.Fatalf("no panic logged:\n%s", ts.logs.String())
		}
		if n := countRows(t, ts, "SELECT count(*) FROM report WHERE machine_id = 'web-01'"); n != 1 {
			t.Fatalf("%d reports of web-01 stored, want 1", n)
		}
		for _, table := range []string{"machine", "report"} {
			if n := countRows(t, ts, "SELECT count(*) FROM "+table+" WHERE machine_id = 'web-02'"); n != 0 {
				t.Fatalf("%d %s rows committed for the report that panicked", n, table)
			}
		}
		if ts.st.fleet.get("web-02") != nil {
			t.Fatal("the machine of the report that panicked is in the fleet index")
		}
		// The writer goes on: the next report is stored.
		expect(t, do(t, ts.client(""), "POST", ts.url+"/api/v1/machines/web-01/report", "",
			reportBody("web-01", p1, true, "up-to-date")), 200, "")
		if n := countRows(t, ts, "SELECT count(*) FROM report WHERE machine_id = 'web-01'"); n != 2 {
			t.Fatalf("%d reports stored after the panic, want 2", n)
		}
	})
}
