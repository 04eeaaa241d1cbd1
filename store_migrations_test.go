package main

// Upgrades (issue 17, part 6): a database written by the code as of the
// issue's start (schema version 1), built by testdata/migrate/make-v1-fixture.sh
// and committed, is opened by the current code. Every migration since must
// keep its data: machines, releases, rollouts and their events, reports, the
// audit log (whose rows become "unchained") and the API keys.

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// v1Fixture is testdata/migrate: the database, its keys by name, and the
// old server's answers.
const v1Fixture = "testdata/migrate"

// copyV1Fixture copies v1.db into a temp dir and returns the copy's path.
func copyV1Fixture(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(v1Fixture, "v1.db"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "state.db")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// v1Keys reads v1-keys.txt: name → (role, token).
func v1Keys(t *testing.T) map[string][2]string {
	t.Helper()
	f, err := os.Open(filepath.Join(v1Fixture, "v1-keys.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string][2]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) == 3 && !strings.HasPrefix(fs[0], "#") {
			keys[fs[0]] = [2]string{fs[1], fs[2]}
		}
	}
	if len(keys) != 4 {
		t.Fatalf("v1-keys.txt: %d keys", len(keys))
	}
	return keys
}

// v1ReportHistory reads the report history of machine straight from the
// unmigrated fixture, in the schema of version 1 (which never changes).
func v1ReportHistory(t *testing.T, v1path, machine string) []reportRecord {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+v1path+"?mode=ro&immutable=1")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	out, err := queryAll(dbq{context.Background(), db}, "v1 reports", func(row scanner) (reportRecord, error) {
		var r reportRecord
		var hGen, hResults, hFailed sql.NullString
		var hPassed sql.NullBool
		var hMeasured sql.NullInt64
		err := row.Scan(&r.Generation, &r.Success, &r.Message, &r.AgentTS, &r.ReceivedAt, &r.AgentVersion, &r.UptimeSeconds,
			&hGen, &hPassed, &hResults, &hFailed, &hMeasured)
		if hGen.Valid {
			r.Health = &healthRecord{hGen.String, hPassed.Bool, hResults.String, hFailed.String, hMeasured.Int64}
		}
		return r, err
	}, `SELECT r.generation, r.success, r.message, r.agent_ts, r.received_at, r.agent_version, r.uptime_seconds,
		h.generation, h.all_passed, h.results, h.failed_checks, h.measured_at
		FROM report r LEFT JOIN health_report h ON h.report_id = r.id WHERE r.machine_id = ? ORDER BY r.id`, machine)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// migratedReportHistory reads the report history of machine from the
// migrated database through the store. This is the one helper to change
// if a later migration restructures the report tables.
func migratedReportHistory(t *testing.T, st *store, machine string) []reportRecord {
	t.Helper()
	out, err := readValue(context.Background(), st, func(d dbq) ([]reportRecord, error) { return d.reportHistory(machine) })
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// jsonSubset reports where want is not contained in got: every key of every
// object of want must be in got with a value that contains it in turn;
// arrays must have the same length. Keys in skip are not compared (values
// that depend on the time of the request).
func jsonSubset(path string, want, got any, skip map[string]bool) []string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return []string{path + ": not an object"}
		}
		var diffs []string
		for k, v := range w {
			if skip[k] {
				continue
			}
			gv, ok := g[k]
			if !ok {
				diffs = append(diffs, path+"."+k+": missing")
				continue
			}
			diffs = append(diffs, jsonSubset(path+"."+k, v, gv, skip)...)
		}
		return diffs
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return []string{path + ": not an array of the same length"}
		}
		var diffs []string
		for i := range w {
			diffs = append(diffs, jsonSubset(path+"["+itoa(i)+"]", w[i], g[i], skip)...)
		}
		return diffs
	default:
		if !reflect.DeepEqual(want, got) {
			b1, _ := json.Marshal(want)
			b2, _ := json.Marshal(got)
			return []string{path + ": " + string(b1) + " became " + string(b2)}
		}
		return nil
	}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

// TestMigrateV1Fixture opens a copy of the version-1 fixture with the current
// code and checks that it migrates to the current version with its data
// intact: every answer the old server gave is still given (new fields
// allowed), reports and health reports are unchanged, the keys still
// authenticate with their roles, and the audit rows are reported as
// unchained by the verifier; the first row written afterwards starts the
// chain at the genesis value.
func TestMigrateV1Fixture(t *testing.T) {
	path := copyV1Fixture(t)
	var v int
	if err := openDB(t, path).QueryRow("PRAGMA user_version").Scan(&v); err != nil || v != 1 {
		t.Fatalf("fixture schema version %d (%v), want 1", v, err)
	}
	v1path := filepath.Join(t.TempDir(), "v1.db") // an untouched copy, for the raw reads
	if b, err := os.ReadFile(path); err != nil || os.WriteFile(v1path, b, 0o600) != nil {
		t.Fatal("copy fixture")
	}
	machines := []string{"db-01", "web-01", "web-02", "web-03"}

	ts := newTestServer(t, testServerOptions{dbPath: path, realClock: true})
	c := ts.client("")
	if err := openDB(t, path).QueryRow("PRAGMA user_version").Scan(&v); err != nil || v != len(migrations) {
		t.Fatalf("migrated schema version %d (%v), want %d", v, err, len(migrations))
	}

	keys := v1Keys(t)
	reader := keys["fixture-reader"][1]
	for name, k := range keys {
		r := do(t, c, "GET", ts.url+"/api/v1/machines", k[1], nil)
		if k[0] == "revoked" {
			authExpect401(t, r, "API key revoked")
			continue
		}
		expect(t, r, 200, "")
		want := map[string]int{"readonly": 403, "deploy": 403, "admin": 404}[k[0]]
		if r := do(t, c, "PATCH", ts.url+"/api/v1/machines/nope/lifecycle", k[1], `{"lifecycle":"active"}`); r.status != want {
			t.Errorf("key %s (%s): PATCH gave %d, want %d", name, k[0], r.status, want)
		}
	}

	var completed, paused struct{ ID string }
	var release struct{ ID string }
	for _, f := range []string{"rollout-completed.json", "rollout-paused.json", "release.json"} {
		b, _ := os.ReadFile(filepath.Join(v1Fixture, "v1-api", f))
		dst := map[string]any{"rollout-completed.json": &completed, "rollout-paused.json": &paused, "release.json": &release}[f]
		if err := json.Unmarshal(b, dst); err != nil {
			t.Fatal(err)
		}
	}
	skip := map[string]bool{"seconds_since_last_report": true}
	for file, route := range map[string]string{
		"machines.json":          "/api/v1/machines",
		"releases.json":          "/api/v1/releases",
		"release.json":           "/api/v1/releases/" + release.ID,
		"rollout-completed.json": "/api/v1/rollouts/" + completed.ID,
		"rollout-paused.json":    "/api/v1/rollouts/" + paused.ID,
		"audit.json":             "/api/v1/audit?limit=1000",
	} {
		b, err := os.ReadFile(filepath.Join(v1Fixture, "v1-api", file))
		if err != nil {
			t.Fatal(err)
		}
		var want, got any
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatal(err)
		}
		r := do(t, c, "GET", ts.url+route, reader, nil)
		expect(t, r, 200, "")
		r.json(t, &got)
		for _, d := range jsonSubset(file, want, got, skip) {
			t.Errorf("after migration: %s", d)
		}
	}

	// The fixture covers what the issue asks: tags, a lifecycle change,
	// generations, rollout events, reports with and without health.
	var ms []machineStatus
	do(t, c, "GET", ts.url+"/api/v1/machines", reader, nil).json(t, &ms)
	if len(ms) != 4 || ms[0].Lifecycle != "maintenance" || strings.Join(ms[1].Tags, ",") != "eu,web" || ms[2].DesiredGeneration == nil {
		t.Errorf("machines %+v", ms)
	}
	var detail rolloutDetail
	do(t, c, "GET", ts.url+"/api/v1/rollouts/"+completed.ID, reader, nil).json(t, &detail)
	if detail.Status != "completed" || len(detail.Events) < 3 {
		t.Errorf("completed rollout: %s with %d events", detail.Status, len(detail.Events))
	}
	withHealth := 0
	for _, m := range machines {
		want, got := v1ReportHistory(t, v1path, m), migratedReportHistory(t, ts.st, m)
		if len(want) == 0 || !reflect.DeepEqual(got, want) {
			t.Errorf("reports of %s: %+v, want %+v", m, got, want)
		}
		for _, r := range want {
			if r.Health != nil {
				withHealth++
			}
		}
	}
	if withHealth < 2 {
		t.Errorf("%d health reports in the fixture", withHealth)
	}

	// The audit log: all rows unchained, the head is the genesis value, and
	// the verifier says so without calling anything broken.
	audit := auditRows(t, c, ts.url, reader, "?limit=1000")
	for _, ev := range audit {
		if ev.PrevHash != nil || ev.Hash != nil {
			t.Errorf("old row %d has hashes", ev.ID)
		}
	}
	n := len(audit)
	var head auditHeadInfo
	do(t, c, "GET", ts.url+"/api/v1/audit/head", reader, nil).json(t, &head)
	if head != (auditHeadInfo{0, auditGenesis}) {
		t.Errorf("head before any chained row: %+v", head)
	}
	unchained := itoa(n) + " rows before the chain started (unchained): seq 1.." + itoa(n)
	expectVerify(t, 0, []string{unchained, "chain: no chained rows", "result: intact"}, "--db-path", path)
	expectVerify(t, 0, []string{itoa(n) + " audit rows", unchained, "result: intact"}, "--db-path", v1path) // unmigrated

	// Migration 2 left the append-only triggers of migration 1 in force, the
	// new columns included.
	for _, q := range []string{"UPDATE audit_event SET hash = '" + auditGenesis + "' WHERE id = 1", "DELETE FROM audit_event WHERE id = 1"} {
		if _, err := openDB(t, path).Exec(q); err == nil || !strings.Contains(err.Error(), "append-only") {
			t.Errorf("%s: %v", q, err)
		}
	}

	// The first row written now starts the chain.
	expect(t, do(t, c, "PUT", ts.url+"/api/v1/machines/web-03/tags", keys["fixture-admin"][1], `{"tags":["web"]}`), 200, "")
	do(t, c, "GET", ts.url+"/api/v1/audit/head", reader, nil).json(t, &head)
	first := auditRows(t, c, ts.url, reader, "?limit=1")[0]
	if head.Seq != int64(n+1) || first.ID != head.Seq || *first.PrevHash != auditGenesis || *first.Hash != head.Hash {
		t.Errorf("first chained row %+v, head %+v", first, head)
	}
	expectVerify(t, 0, []string{unchained, "chain: seq " + itoa(n+1) + ".." + itoa(n+1), "result: intact"},
		"--db-path", path, "--head", itoa(int(head.Seq))+":"+head.Hash)
	// An attacker who deletes the chained rows leaves only unchained ones:
	// only a recorded head tells.
	ts.ts.Close()
	if err := ts.app.close(); err != nil {
		t.Fatal(err)
	}
	tamperedPath := tampered(t, path, dropTriggers+"DELETE FROM audit_event WHERE hash IS NOT NULL")
	expectVerify(t, 1, []string{"the recorded head is missing: the log was truncated"}, "--db-path", tamperedPath, "--head", itoa(int(head.Seq))+":"+head.Hash)
}
