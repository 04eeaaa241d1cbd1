package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
)

// A group commit writes each table with multi-row statements: every report
// gets its own row and id in arrival order, a health report is linked to its
// own report, a machine met twice keeps the values of its last report, and a
// machine created by the group gets them too (§6.3, §12.3).
func TestGroupCommitRows(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	req := func(body map[string]any) *reportRequest {
		t.Helper()
		raw, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		var r reportRequest
		if err := unmarshalObject(raw, &r); err != nil {
			t.Fatal(err)
		}
		if err := r.validate(); err != nil {
			t.Fatal(err)
		}
		return &r
	}
	genA, genB := storePath('a', "sys-a"), storePath('b', "sys-b")
	commit := func(bodies ...map[string]any) {
		t.Helper()
		batch := make([]*reportJob, len(bodies))
		for i, b := range bodies {
			batch[i] = &reportJob{id: b["machine_id"].(string), req: req(b), done: make(chan error, 1)}
		}
		ts.st.commitReports(batch, ts.log)
		for _, j := range batch {
			if err := <-j.done; err != nil {
				t.Fatalf("report of %s: %v", j.id, err)
			}
		}
	}
	commit(reportBody("web-01", genA, true, "up-to-date"))
	first := ts.st.lastReportID

	commit(
		healthBody("web-01", genA, "nginx.service"),
		reportBody("web-02", genA, true, "registered in this group"),
		healthBody("web-01", genB),
		reportBody("web-01", genB, false, "switch failed"),
	)
	if got, want := ts.st.lastReportID, first+4; got != want {
		t.Fatalf("last report id %d, want %d", got, want)
	}
	rows, err := ts.st.ro.QueryContext(context.Background(), `SELECT r.id, r.machine_id, r.generation, r.message,
		coalesce(h.all_passed, -1), coalesce(h.failed_checks, '') FROM report r
		LEFT JOIN health_report h ON h.report_id = r.id WHERE r.id > ? ORDER BY r.id`, first)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	type row struct {
		id                    int64
		machine, gen, message string
		allPassed             int
		failed                string
	}
	want := []row{
		{first + 1, "web-01", genA, "health-check", 0, "nginx.service"},
		{first + 2, "web-02", genA, "registered in this group", -1, ""},
		{first + 3, "web-01", genB, "health-check", 1, ""},
		{first + 4, "web-01", genB, "switch failed", -1, ""},
	}
	var got []row
	for rows.Next() {
		var r row
		mustScan(t, rows, &r.id, &r.machine, &r.gen, &r.message, &r.allPassed, &r.failed)
		got = append(got, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("stored %d reports, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("report %d: %+v, want %+v", i, got[i], want[i])
		}
	}

	// The machine rows hold each machine's last report, in the database and
	// in memory.
	for _, m := range []struct {
		id, gen string
		success int
	}{{"web-01", genB, 0}, {"web-02", genA, 1}} {
		var gen string
		var success int
		mustScan(t, ts.st.ro.QueryRowContext(context.Background(),
			"SELECT current_generation, last_success FROM machine WHERE machine_id = ?", m.id), &gen, &success)
		if gen != m.gen || success != m.success {
			t.Errorf("%s in the database: generation %s success %d, want %s %d", m.id, gen, success, m.gen, m.success)
		}
		if rec := ts.st.fleet.get(m.id); rec == nil || rec.CurrentGen != m.gen || int(rec.LastSuccess) != m.success {
			t.Errorf("%s in memory: %+v, want generation %s success %d", m.id, rec, m.gen, m.success)
		}
	}
}

// The queries that read the report history go through the rowid or an
// index, never a scan of a whole table (issue: append-only history). The
// plans are printed with -v for BENCHMARKS.md.
func TestReportQueryPlans(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	for _, q := range []struct {
		name  string
		query string
		args  []any
	}{
		{"retention: health reports in arrival order", healthAfterQuery, []any{0, 1000}},
		{"retention: a machine's newest health report", newestHealthQuery, []any{"web-01"}},
		{"retention: a machine's expired reports", expiredReportsQuery, []any{"web-01", 0, 99}},
		{"executor: reports since the last pass", batchReportsQuery, []any{"r-1", 0, 0, 0}},
		{"executor: reports of a new batch attempt", batchReportsInitialQuery, []any{0, "r-1", 0, 0}},
	} {
		rows, err := ts.st.ro.QueryContext(context.Background(), "EXPLAIN QUERY PLAN "+q.query, q.args...)
		if err != nil {
			t.Fatalf("%s: %v", q.name, err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			mustScan(t, rows, &id, &parent, &unused, &detail)
			plan = append(plan, detail)
		}
		rows.Close()
		t.Logf("%s:\n  %s", q.name, strings.Join(plan, "\n  "))
		for _, step := range plan {
			if strings.HasPrefix(step, "SCAN ") && !strings.Contains(step, "USING") {
				t.Errorf("%s: full scan %q in plan %q", q.name, step, plan)
			}
		}
	}
}
