package main

// Retention tests (retention.go, §12.6, ACC-119 first half): health reports
// older than 24 h except each machine's newest, reports beyond
// --report-retention except the newest 100 per machine (their health reports
// with them), by the server's receive time only, in chunks of at most 1000
// rows per transaction, with the counts logged as msg=retention.

import (
	"context"
	"database/sql"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// retReport is one report to seed: its receive time (Unix ms) and whether
// it carries a health report, whose agent-side measured_at is measured.
type retReport struct {
	at       int64
	health   bool
	measured int64
}

// retSeed inserts a machine's reports (and health reports) directly, in one
// transaction, and returns the report ids in the order given.
func retSeed(t testing.TB, ts *testServer, machine string, reps []retReport) []int64 {
	t.Helper()
	var ids []int64
	err := ts.st.write(context.Background(), func(tx *txn) error {
		if tx.machine(machine) == nil {
			if _, err := tx.insertMachine(machine, lcActive); err != nil {
				return err
			}
		}
		for _, r := range reps {
			res, err := tx.exec(`INSERT INTO report (machine_id, generation, success, message, agent_ts,
				received_at, agent_version, uptime_seconds) VALUES (?, '', 1, 'health-check', ?, ?, '0.1.0', 1)`, machine, r.at, r.at)
			if err != nil {
				return err
			}
			id, err := res.LastInsertId()
			if err != nil {
				return err
			}
			ids = append(ids, id)
			if r.health {
				if _, err := tx.exec(`INSERT INTO health_report (report_id, machine_id, generation, all_passed,
					results, failed_checks, measured_at, received_at) VALUES (?, ?, '', 1, '[]', '', ?, ?)`,
					id, machine, r.measured, r.at); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// retIDs returns the ids a query selects, in ascending order.
func retIDs(t testing.TB, db queryer, q string, args ...any) []int64 {
	t.Helper()
	rows, err := db.QueryContext(context.Background(), q, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	ids := []int64{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(ids)
	return ids
}

// retHealthOf returns the report ids whose health report survives, for a machine.
func retHealthOf(t testing.TB, db queryer, machine string) []int64 {
	t.Helper()
	return retIDs(t, db, "SELECT report_id FROM health_report WHERE machine_id = ?", machine)
}

func retReportsOf(t testing.TB, db queryer, machine string) []int64 {
	t.Helper()
	return retIDs(t, db, "SELECT id FROM report WHERE machine_id = ?", machine)
}

// retNoOrphans fails if a health report outlives its report.
func retNoOrphans(t testing.TB, db queryer) {
	t.Helper()
	if ids := retIDs(t, db, `SELECT h.id FROM health_report h LEFT JOIN report r ON r.id = h.report_id WHERE r.id IS NULL`); len(ids) != 0 {
		t.Fatalf("health reports without their report: %v", ids)
	}
}

// retWaitLog waits (up to 20 s) for the log to contain substr; startRun
// gives no other signal that the startup retention run has finished.
func retWaitLog(t testing.TB, logs *syncBuffer, substr string) string {
	t.Helper()
	if !poll(20*time.Second, func() bool { return strings.Contains(logs.String(), substr) }) {
		t.Fatalf("log never contained %q:\n%s", substr, logs.String())
	}
	return logs.String()
}

// TestRetentionAtStartup covers ACC-119 (first half) through run: over a
// database prepared beforehand, the startup retention run removes the
// health reports received more than 24 h ago that are not their machine's
// newest, keeps a machine's newest even when it is old, keeps every report
// (all within --report-retention or among the newest 100), and logs the
// counts as msg=retention.
func TestRetentionAtStartup(t *testing.T) {
	dbPath := filepath.Join(t.TempDir(), "state.db")
	now := time.Now() // run uses the real clock
	ms := func(d time.Duration) int64 { return now.Add(-d).UnixMilli() }
	var web01 []int64
	t.Run("prepare", func(t *testing.T) {
		ts := newTestServer(t, testServerOptions{dbPath: dbPath})
		web01 = retSeed(t, ts, "web-01", []retReport{
			{at: ms(48 * time.Hour), health: true, measured: ms(48 * time.Hour)}, // old, not newest: removed
			{at: ms(30 * time.Hour), health: true, measured: ms(time.Minute)},    // old by receive time: removed
			{at: ms(2 * time.Hour), health: true, measured: ms(72 * time.Hour)},  // newest: kept
			{at: ms(time.Hour)},
		})
		retSeed(t, ts, "web-02", []retReport{{at: ms(48 * time.Hour), health: true, measured: ms(48 * time.Hour)}}) // its newest: kept
		old := make([]retReport, 5)
		for i := range old {
			old[i] = retReport{at: ms(300*time.Hour + time.Duration(i)*time.Minute)}
		}
		retSeed(t, ts, "web-03", old) // beyond retention but fewer than 100: kept
	})

	rs := startRun(t, nil, "--db-path", dbPath, "--executor-interval", "1m")
	logs := retWaitLog(t, rs.logs, "msg=retention ")
	if err := rs.stop(t); err != nil {
		t.Fatal(err)
	}
	line := regexp.MustCompile(`(?m)^.*msg=retention .*$`).FindString(logs)
	if !strings.Contains(line, "level=INFO") || !strings.Contains(line, "health_reports=2") || !strings.Contains(line, "reports=0") {
		t.Fatalf("retention log line %q, want INFO with health_reports=2 reports=0", line)
	}
	if strings.Contains(logs, "retention failed") {
		t.Fatalf("retention failed:\n%s", logs)
	}

	db, err := sql.Open("sqlite", "file:"+dbPath+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if got := retHealthOf(t, db, "web-01"); !slices.Equal(got, web01[2:3]) {
		t.Errorf("web-01 health reports left on reports %v, want %v", got, web01[2:3])
	}
	if got := retHealthOf(t, db, "web-02"); len(got) != 1 {
		t.Errorf("web-02 lost its only (newest) health report: %v", got)
	}
	for machine, n := range map[string]int{"web-01": 4, "web-02": 1, "web-03": 5} {
		if got := retReportsOf(t, db, machine); len(got) != n {
			t.Errorf("%s has %d reports, want %d", machine, len(got), n)
		}
	}
	retNoOrphans(t, db)
}

// TestRetentionHealthReports checks the 24 h rule with the fake clock:
// strictly older than 24 h by the server's receive time (the agent's
// measured_at is ignored), each machine's newest kept (and only its own),
// and the reports themselves untouched.
func TestRetentionHealthReports(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	now := ts.clock.now()
	at := func(d time.Duration) int64 { return now.Add(-d).UnixMilli() }
	day := 24 * time.Hour
	a := retSeed(t, ts, "web-01", []retReport{
		{at: at(day + time.Millisecond), health: true, measured: at(0)},   // 1 ms past the limit: removed
		{at: at(day), health: true, measured: at(1000 * time.Hour)},       // exactly 24 h: kept
		{at: at(day - time.Millisecond), health: true, measured: at(day)}, // kept
		{at: at(time.Hour), health: false},                                // not a health report
		{at: at(50 * day), health: true},                                  // inserted last but received first: removed
	})
	b := retSeed(t, ts, "web-02", []retReport{
		{at: at(10 * day), health: true}, // older
		{at: at(9 * day), health: true},  // web-02's newest, though old: kept
	})
	c := retSeed(t, ts, "web-03", []retReport{{at: at(5 * day), health: true}}) // only one: kept
	reportsBefore := countRows(t, ts, "SELECT count(*) FROM report")

	health, reports, err := ts.ret.prune(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if health != 3 || reports != 0 {
		t.Fatalf("retain deleted %d health reports and %d reports, want 3 and 0", health, reports)
	}
	ro := ts.st.ro
	for _, tc := range []struct {
		machine string
		want    []int64
	}{
		{"web-01", []int64{a[1], a[2]}},
		{"web-02", []int64{b[1]}},
		{"web-03", c},
	} {
		if got := retHealthOf(t, ro, tc.machine); !slices.Equal(got, tc.want) {
			t.Errorf("%s health reports on %v, want %v", tc.machine, got, tc.want)
		}
	}
	if n := countRows(t, ts, "SELECT count(*) FROM report"); n != reportsBefore {
		t.Errorf("reports %d -> %d: the 24 h rule must not delete reports", reportsBefore, n)
	}
	// A second run finds nothing more to do.
	if h, r, err := ts.ret.prune(context.Background()); err != nil || h != 0 || r != 0 {
		t.Fatalf("second run: %d, %d, %v", h, r, err)
	}
}

// TestRetentionReports checks the report rule with the fake clock: reports
// received more than --report-retention (168 h here) ago are deleted unless
// among their machine's newest 100 (by receive time, then id); their
// health reports go with them, even a machine's newest; nothing else is
// pruned.
func TestRetentionReports(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	now := ts.clock.now()
	ret := 168 * time.Hour
	at := func(d time.Duration) int64 { return now.Add(-d).UnixMilli() }
	series := func(n int, from time.Duration, health func(i int) bool) []retReport {
		out := make([]retReport, n)
		for i := range out { // oldest first, one minute apart
			out[i] = retReport{at: at(from - time.Duration(i)*time.Minute), health: health != nil && health(i)}
		}
		return out
	}
	old := ret + 100*time.Hour
	// web-a: 150 old reports: the oldest 50 go.
	a := retSeed(t, ts, "web-a", series(150, old, nil))
	// web-b: 80 old reports: all stay (fewer than 100).
	b := retSeed(t, ts, "web-b", series(80, old, nil))
	// web-c: 150 recent reports: all stay.
	c := retSeed(t, ts, "web-c", series(150, ret-3*time.Hour, nil))
	// web-d: 101 old reports; its only health report is on the oldest one,
	// which goes, and takes the machine's newest health report with it.
	d := retSeed(t, ts, "web-d", series(101, old, func(i int) bool { return i == 0 }))
	// web-e: 100 recent reports and two older ones on either side of the
	// retention limit: only the one strictly older than the limit goes.
	e := retSeed(t, ts, "web-e", []retReport{{at: at(ret + time.Millisecond)}, {at: at(ret)}})
	e = append(e, retSeed(t, ts, "web-e", series(100, time.Hour, nil))...)
	// web-f: 120 old reports received in the same millisecond: the 100
	// with the highest ids stay.
	f := retSeed(t, ts, "web-f", slices.Repeat([]retReport{{at: at(old)}}, 120))
	// web-g: old reports that are among its newest 100 keep their health
	// reports, except what the 24 h rule removes (all but the newest).
	g := retSeed(t, ts, "web-g", series(10, old, func(int) bool { return true }))

	auditBefore := countRows(t, ts, "SELECT count(*) FROM audit_event")
	machinesBefore := countRows(t, ts, "SELECT count(*) FROM machine")
	health, reports, err := ts.ret.prune(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(50 + 1 + 1 + 20); reports != want {
		t.Errorf("retain deleted %d reports, want %d", reports, want)
	}
	ro := ts.st.ro
	for _, tc := range []struct {
		machine string
		want    []int64
	}{
		{"web-a", a[50:]},
		{"web-b", b},
		{"web-c", c},
		{"web-d", d[1:]},
		{"web-e", e[1:]},
		{"web-f", f[20:]},
		{"web-g", g},
	} {
		if got := retReportsOf(t, ro, tc.machine); !slices.Equal(got, tc.want) {
			t.Errorf("%s keeps %d reports (%v…), want %d (%v…)", tc.machine, len(got), got[:min(3, len(got))], len(tc.want), tc.want[:min(3, len(tc.want))])
		}
	}
	if got := retHealthOf(t, ro, "web-d"); len(got) != 0 {
		t.Errorf("web-d's health report outlived its report: %v", got)
	}
	if got := retHealthOf(t, ro, "web-g"); !slices.Equal(got, g[9:]) {
		t.Errorf("web-g health reports %v, want only the newest %v", got, g[9:])
	}
	if health != 9 {
		t.Errorf("24 h rule deleted %d health reports, want 9 (web-g's older ones)", health)
	}
	retNoOrphans(t, ro)
	if n := countRows(t, ts, "SELECT count(*) FROM audit_event"); n != auditBefore {
		t.Errorf("audit rows %d -> %d", auditBefore, n)
	}
	if n := countRows(t, ts, "SELECT count(*) FROM machine"); n != machinesBefore {
		t.Errorf("machines %d -> %d", machinesBefore, n)
	}

	// A shorter --report-retention through the server option: web-c's
	// reports are now old, and only its newest 100 stay.
	ts.ret.period = 2 * time.Hour
	if _, reports, err := ts.ret.prune(context.Background()); err != nil || reports != 50+1 {
		t.Fatalf("retain with 2h retention: %d reports, %v; want 51 (web-c's 50 and web-e's last old one)", reports, err)
	}
	if got := retReportsOf(t, ro, "web-c"); !slices.Equal(got, c[50:]) {
		t.Errorf("web-c keeps %d reports, want its newest 100", len(got))
	}
}

// TestRetentionChunks deletes more than 1000 rows of each kind and checks
// that one run removes them all, in at least ceil(n/1000) write
// transactions per kind (§12.6: at most 1000 rows per transaction).
func TestRetentionChunks(t *testing.T) {
	if testing.Short() {
		t.Skip("bulk retention skipped in -short mode")
	}
	ts := newTestServer(t, testServerOptions{})
	now := ts.clock.now()
	// 2,500 health reports received 48 h ago, one a minute: 2,499 go.
	hs := make([]retReport, 2500)
	for i := range hs {
		hs[i] = retReport{at: now.Add(-48*time.Hour - time.Duration(2500-i)*time.Minute).UnixMilli(), health: true}
	}
	h := retSeed(t, ts, "web-h", hs)
	// 1,400 reports received 300 h ago: all but the newest 100 go.
	rs := make([]retReport, 1400)
	for i := range rs {
		rs[i] = retReport{at: now.Add(-300*time.Hour - time.Duration(1400-i)*time.Second).UnixMilli()}
	}
	r := retSeed(t, ts, "web-r", rs)

	commits := ts.m.commitDuration.snapshot().count
	start := time.Now()
	health, reports, err := ts.ret.prune(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	txns := ts.m.commitDuration.snapshot().count - commits
	t.Logf("retention deleted %d health reports and %d reports in %d write transactions (%v)", health, reports, txns, time.Since(start))
	if health != 2499 || reports != 1300 {
		t.Fatalf("deleted %d health reports and %d reports, want 2499 and 1300", health, reports)
	}
	if min := uint64((2499+999)/1000 + (1300+999)/1000); txns < min {
		t.Errorf("%d write transactions for %d + %d rows: chunks larger than 1000", txns, health, reports)
	}
	if got := retHealthOf(t, ts.st.ro, "web-h"); !slices.Equal(got, h[2499:]) {
		t.Errorf("web-h keeps health reports %v, want only the newest", got)
	}
	if got := retReportsOf(t, ts.st.ro, "web-r"); !slices.Equal(got, r[1300:]) {
		t.Errorf("web-r keeps %d reports, want the newest 100", len(got))
	}
	if n := countRows(t, ts, "SELECT count(*) FROM report WHERE machine_id = 'web-h'"); n != 2500 {
		t.Errorf("web-h lost reports: %d", n)
	}
	retNoOrphans(t, ts.st.ro)
}
