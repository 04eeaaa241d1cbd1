package main

// Tests for the agent protocol (reports.go, §6): the desired-generation
// lookup and reports (ACC-35 … ACC-47): auto-registration, what is stored,
// validation and the order of checks, tag sync (§6.4), audit on change
// (§6.5), auto-activation and decommissioned machines, and the report fields
// across a restart (ACC-39).

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDesiredGenerationLookup covers ACC-35 and §4.5: 404 for unknown machines
// and machines without a desired generation (and no auto-registration), 400
// for invalid path IDs, and that the call writes nothing.
func TestDesiredGenerationLookup(t *testing.T) {
	e := newTestEnv(t)
	expect(t, e.register(t, "web-02", nil), 201, "")
	long := strings.Repeat("a", 129)
	before := e.fingerprint(t)
	for _, tc := range []struct {
		path   string
		status int
		msg    string
	}{
		{"web-01", 404, "no desired generation"}, // unknown
		{"web-02", 404, "no desired generation"}, // registered, nothing set
		{long, 400, "invalid machine id"},
		{"web%2001", 400, "invalid machine id"},
		{"web%2F01", 400, "invalid machine id"},
		{"web%01", 400, "invalid machine id"},
		{"%2E%2E", 400, "invalid machine id"},
		{"web~01", 400, "invalid machine id"},
	} {
		t.Run(tc.path[:min(len(tc.path), 12)], func(t *testing.T) {
			r := e.desired(t, tc.path)
			expect(t, r, tc.status, tc.msg)
			if r.status == 404 && len(r.body) == 0 {
				t.Fatal("404 without a body")
			}
		})
	}
	// A 128-byte ID is valid.
	expect(t, e.desired(t, strings.Repeat("a", 128)), 404, "no desired generation")
	if after := e.fingerprint(t); after != before {
		t.Fatalf("desired-generation polls changed the database:\n%s\n%s", before, after)
	}
	if _, ok := e.machine(t, "web-01"); ok {
		t.Fatal("a desired-generation poll registered an unknown machine")
	}
	// HEAD is served like GET.
	r := do(t, e.c, "HEAD", e.url+"/api/v1/machines/web-02/desired-generation", "", nil)
	if r.status != 404 || len(r.body) != 0 {
		t.Fatalf("HEAD: %d %q", r.status, r.body)
	}
}

// TestReportPathIDs covers the report half of ACC-35: invalid path IDs get
// 400, count as rejected and store nothing.
func TestReportPathIDs(t *testing.T) {
	e := newTestEnv(t)
	for _, id := range []string{strings.Repeat("a", 129), "web%2001", "%2E%2E", "%2e"} {
		t.Run(id[:min(len(id), 12)], func(t *testing.T) {
			before, rej := e.fingerprint(t), e.metric(t, reportsRejected)
			r := do(t, e.c, "POST", e.url+"/api/v1/machines/"+id+"/report", "", reportBody(id, "", true, "up-to-date"))
			// Encoded dot segments reach the route and fail the ID rule;
			// plain ones are redirected by ServeMux (TestPathCleaning).
			expect(t, r, 400, "invalid machine id")
			if after := e.fingerprint(t); after != before {
				t.Fatalf("state changed:\n%s\n%s", before, after)
			}
			if got := e.metric(t, reportsRejected); got != rej+1 {
				t.Fatalf("rejected %v -> %v", rej, got)
			}
		})
	}
	// 128 bytes is the longest valid ID.
	long := strings.Repeat("a", 128)
	expect(t, e.report(t, long, reportBody(long, "", true, "up-to-date")), 200, "")
}

// TestFirstReport covers ACC-36, ACC-40 and ACC-41: auto-registration by the
// first report, the MachineStatus fields before and after it, the output
// timestamp format and seconds_since_last_report against the server clock.
func TestFirstReport(t *testing.T) {
	e := newTestEnv(t)
	p1 := storePath('a', "nixos-system-web-01")

	// ACC-41: registered, never reported.
	expect(t, e.register(t, "web-02", map[string]any{"lifecycle": "pending"}), 201, "")
	r := do(t, e.c, "GET", e.url+"/api/v1/machines", e.A, nil)
	expect(t, r, 200, "")
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var raw []map[string]any
	r.json(t, &raw)
	if len(raw) != 1 {
		t.Fatalf("list %s", r.body)
	}
	want := map[string]any{"machine_id": "web-02", "current_generation": "", "desired_generation": nil, "agent_version": "",
		"system_state": "unknown", "uptime_seconds": float64(0), "last_report": nil, "lifecycle": "pending",
		"tags": []any{}, "seconds_since_last_report": nil}
	for k, v := range want {
		got, present := raw[0][k]
		if !present || fmt.Sprint(got) != fmt.Sprint(v) {
			t.Errorf("never-reported %s = %#v (present %v), want %#v", k, got, present, v)
		}
	}
	if reg, _ := raw[0]["registered_at"].(string); !outputTimeRE.MatchString(reg) {
		t.Errorf("registered_at %q", reg)
	}

	// ACC-36: the first report of an unknown machine registers it.
	body := reportBody("web-01", p1, true, "up-to-date")
	body["tags"] = []string{"web", "canary"}
	expect(t, e.report(t, "web-01", body), 200, "")
	m := e.mustMachine(t, "web-01")
	if m.Lifecycle != "active" || !slices.Equal(m.Tags, []string{"canary", "web"}) || m.SystemState != "ok" ||
		m.CurrentGeneration != p1 || m.AgentVersion != "0.1.0" || m.UptimeSeconds != 100 || m.DesiredGeneration != nil {
		t.Fatalf("after first report: %+v", m)
	}
	// ACC-40: the server clock, not the agent's, and millisecond precision.
	wantLast := e.ts.clock.now().UTC().Format(timeLayout)
	if m.LastReport == nil || *m.LastReport != wantLast || !outputTimeRE.MatchString(*m.LastReport) {
		t.Fatalf("last_report %v, want %s", m.LastReport, wantLast)
	}
	if m.SecondsSinceLastReport == nil || *m.SecondsSinceLastReport != 0 {
		t.Fatalf("seconds_since_last_report %v right after the report", m.SecondsSinceLastReport)
	}
	if !outputTimeRE.MatchString(m.RegisteredAt) || m.RegisteredAt != wantLast {
		t.Fatalf("registered_at %q, want %q", m.RegisteredAt, wantLast)
	}
	e.ts.clock.advance(12*time.Second + 700*time.Millisecond)
	m = e.mustMachine(t, "web-01")
	if m.SecondsSinceLastReport == nil || *m.SecondsSinceLastReport != 12 || *m.LastReport != wantLast {
		t.Fatalf("12.7 s later: seconds_since_last_report %v, last_report %v", m.SecondsSinceLastReport, *m.LastReport)
	}
	// A server clock that went backwards never gives a negative age.
	e.ts.clock.advance(-time.Hour)
	if m = e.mustMachine(t, "web-01"); m.SecondsSinceLastReport == nil || *m.SecondsSinceLastReport != 0 {
		t.Fatalf("clock moved back: seconds_since_last_report %v, want 0", m.SecondsSinceLastReport)
	}
	e.ts.clock.advance(time.Hour)
	evs := e.audit(t, "web-01")
	if len(evs) != 2 || evs[0].Action != "report" || *evs[0].Detail != "registered" || evs[0].Actor != "machine:web-01" ||
		evs[1].Action != "tags.update" || *evs[1].Detail != "[] -> [canary,web]" || evs[1].Actor != "machine:web-01" {
		t.Fatalf("audit %+v", e.auditSummary(t, "web-01"))
	}
	for _, ev := range evs {
		if !outputTimeRE.MatchString(ev.Timestamp) {
			t.Errorf("audit timestamp %q", ev.Timestamp)
		}
	}
	if got := e.metric(t, `nixfleet_machine_last_seen_timestamp_seconds{machine_id="web-01"}`); got != float64(newFakeClock().now().UnixMilli())/1000 {
		t.Errorf("last_seen gauge %v", got)
	}
	if got := e.metric(t, "nixfleet_fleet_size"); got != 2 {
		t.Errorf("fleet size %v, want 2", got)
	}
}

// TestReportStored covers ACC-37 and ACC-13's report half: a failed report
// sets system_state error and current_generation but not the desired
// generation; null tags and health are accepted; a health object is stored
// with the report's generation.
func TestReportStored(t *testing.T) {
	e := newTestEnv(t)
	p1, p2 := storePath('a', "sys-1"), storePath('b', "sys-2")
	expect(t, do(t, e.c, "POST", e.url+"/api/v1/machines/web-01/notify-deploy", e.D, map[string]string{"store_path": p2}), 200, "")
	expect(t, e.report(t, "web-01", reportBody("web-01", p1, true, "up-to-date")), 200, "")

	body := reportBody("web-01", p1, false, "rolled back: switch failed")
	body["tags"], body["health"] = nil, nil
	succ, fail := e.metric(t, reportsSuccess), e.metric(t, reportsFailure)
	r := e.report(t, "web-01", body)
	expect(t, r, 200, "")
	if len(r.body) != 0 {
		t.Errorf("report answer body %q, want empty", r.body)
	}
	m := e.mustMachine(t, "web-01")
	if m.SystemState != "error" || m.CurrentGeneration != p1 || m.DesiredGeneration == nil || *m.DesiredGeneration != p2 {
		t.Fatalf("after failure report: %+v", m)
	}
	if e.metric(t, reportsFailure) != fail+1 || e.metric(t, reportsSuccess) != succ {
		t.Fatal("failure report not counted as failure")
	}

	// A health-check report stores a health record for the measured generation.
	expect(t, e.report(t, "web-01", healthBody("web-01", p2, "nginx.service")), 200, "")
	var gen, results string
	var allPassed, measured int64
	if err := e.ts.st.ro.QueryRow(`SELECT h.generation, h.all_passed, h.results, h.measured_at FROM health_report h
		JOIN report r ON r.id = h.report_id WHERE h.machine_id = 'web-01'`).Scan(&gen, &allPassed, &results, &measured); err != nil {
		t.Fatal(err)
	}
	wantMeasured, _ := time.Parse(time.RFC3339, "2026-04-11T09:30:00.51Z")
	if gen != p2 || allPassed != 0 || !strings.Contains(results, `"nginx.service"`) || measured != wantMeasured.UnixMilli() {
		t.Fatalf("health record %q %d %s %d", gen, allPassed, results, measured)
	}
	if n := countRows(t, e.ts, "SELECT count(*) FROM report WHERE machine_id = 'web-01'"); n != 3 {
		t.Fatalf("%d reports stored, want 3", n)
	}
	if n := countRows(t, e.ts, "SELECT count(*) FROM health_report"); n != 1 {
		t.Fatalf("%d health reports stored, want 1", n)
	}
	// Input timestamps accept any RFC 3339 offset.
	body = reportBody("web-01", p2, true, "health-check")
	body["timestamp"] = "2026-04-11T11:30:00+02:00"
	expect(t, e.report(t, "web-01", body), 200, "")
	var agentTS int64
	mustScan(t, e.ts.st.ro.QueryRow("SELECT agent_ts FROM report ORDER BY id DESC LIMIT 1"), &agentTS)
	if want := time.Date(2026, 4, 11, 9, 30, 0, 0, time.UTC).UnixMilli(); agentTS != want {
		t.Fatalf("agent_ts %d, want %d", agentTS, want)
	}
}

// TestReportValidation covers ACC-38, ACC-12's report half and ACC-110's
// second half: each invalid report gets 400 (with the specified message where
// there is one), stores nothing, writes no audit row, leaves last_report
// alone and counts as rejected.
func TestReportValidation(t *testing.T) {
	e := newTestEnv(t)
	p1 := storePath('a', "sys")
	expect(t, e.report(t, "web-01", reportBody("web-01", p1, true, "up-to-date")), 200, "")
	e.ts.clock.advance(time.Minute)
	base := e.mustMachine(t, "web-01")

	with := func(k string, v any) map[string]any {
		b := reportBody("web-01", p1, false, "x")
		if v == nil {
			delete(b, k)
		} else {
			b[k] = v
		}
		return b
	}
	health := func(mut func(h map[string]any)) map[string]any {
		b := healthBody("web-01", p1, "nginx.service")
		mut(b["health"].(map[string]any))
		return b
	}
	results := func(h map[string]any) []map[string]any { return h["results"].([]map[string]any) }
	for _, tc := range []struct {
		name string
		body any
		msg  string // "" = any message
	}{
		{"513-byte generation", with("current_generation", strings.Repeat("g", 513)), ""},
		{"4097-byte message", with("message", strings.Repeat("m", 4097)), ""},
		{"machine_id mismatch", with("machine_id", "web-02"), "machine_id: does not match the machine id in the path"},
		{"invalid machine_id", with("machine_id", "web 01"), ""},
		{"missing timestamp", with("timestamp", nil), "timestamp: required"},
		{"null timestamp", `{"machine_id":"web-01","current_generation":"","success":true,"message":"x","timestamp":null}`, "timestamp: required"},
		{"timestamp yesterday", with("timestamp", "yesterday"), ""},
		{"timestamp without zone", with("timestamp", "2026-04-11T09:30:00"), ""},
		{"bad tag", with("tags", []string{"web", "bad tag"}), ""},
		{"65-byte tag", with("tags", []string{strings.Repeat("t", 65)}), ""},
		{"65 tags", with("tags", numberedTags(65)), ""},
		{"missing machine_id", with("machine_id", nil), "machine_id: required"},
		{"missing current_generation", with("current_generation", nil), "current_generation: required"},
		{"missing success", with("success", nil), "success: required"},
		{"null success", `{"machine_id":"web-01","current_generation":"","success":null,"message":"x","timestamp":"2026-04-11T09:30:00Z"}`, "success: required"},
		{"missing message", with("message", nil), "message: required"},
		{"success yes", with("success", "yes"), ""},
		{"uptime fraction", with("uptime_seconds", 1.5), ""},
		{"uptime negative", with("uptime_seconds", -1), ""},
		{"uptime string", with("uptime_seconds", "5"), ""},
		{"129-byte agent_version", with("agent_version", strings.Repeat("v", 129)), ""},
		{"health without results", health(func(h map[string]any) { delete(h, "results") }), "health.results: required"},
		{"health without all_passed", health(func(h map[string]any) { delete(h, "all_passed") }), "health.all_passed: required"},
		{"health without timestamp", health(func(h map[string]any) { delete(h, "timestamp") }), "health.timestamp: required"},
		{"health status skip", health(func(h map[string]any) { results(h)[0]["status"] = "skip" }), ""},
		{"health status Pass", health(func(h map[string]any) { results(h)[0]["status"] = "Pass" }), ""},
		{"health empty check_name", health(func(h map[string]any) { results(h)[0]["check_name"] = "" }), ""},
		{"health fail without message", health(func(h map[string]any) { delete(results(h)[1], "message") }), ""},
		{"health negative duration", health(func(h map[string]any) { results(h)[0]["duration_ms"] = -1 }), ""},
		{"health 257 results", health(func(h map[string]any) {
			rs := make([]map[string]any, 257)
			for i := range rs {
				rs[i] = map[string]any{"status": "pass", "check_name": fmt.Sprint("c", i), "duration_ms": 1}
			}
			h["results"] = rs
		}), ""},
		{"truncated JSON", `{"machine_id":"web-01","current_generation":`, ""},
		{"array body", `[{"machine_id":"web-01"}]`, ""},
		{"empty body", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, rej := e.fingerprint(t), e.metric(t, reportsRejected)
			expect(t, e.report(t, "web-01", tc.body), 400, tc.msg)
			if after := e.fingerprint(t); after != before {
				t.Fatalf("state changed:\n%s\n%s", before, after)
			}
			if got := e.metric(t, reportsRejected); got != rej+1 {
				t.Fatalf("rejected %v -> %v, want +1", rej, got)
			}
			if m := e.mustMachine(t, "web-01"); !sameMachineStatus(m, base) {
				t.Fatalf("machine changed: %+v, was %+v", m, base)
			}
		})
	}
	// The limits themselves are accepted.
	ok := reportBody("web-01", strings.Repeat("g", 512), true, strings.Repeat("m", 4096))
	ok["agent_version"] = strings.Repeat("v", 128)
	ok["tags"] = numberedTags(64)
	expect(t, e.report(t, "web-01", ok), 200, "")
}

// TestReportOrderOfChecks covers ACC-47 (decommissioned 403, rejected +1),
// ACC-15, §4.6 and §2.6 for reports: path ID (400)
// before the body (415, 400), the body before the decommissioned 403, and the
// 403 last; each is counted as rejected and stores nothing.
func TestReportOrderOfChecks(t *testing.T) {
	e := newTestEnv(t)
	p1 := storePath('a', "sys")
	expect(t, e.report(t, "web-01", reportBody("web-01", p1, true, "up-to-date")), 200, "")
	expect(t, e.patch(t, "web-01", "decommissioned"), 200, "")
	valid, _ := json.Marshal(reportBody("web-01", p1, true, "up-to-date"))
	for _, tc := range []struct {
		name, path, ct, body string
		status               int
		msg                  string
	}{
		{"bad id and bad body", "web%2001", "text/plain", "nope", 400, "invalid machine id"},
		{"content type before decommissioned", "web-01", "text/plain", string(valid), 415, "Content-Type must be application/json"},
		{"JSON before decommissioned", "web-01", "application/json", "{", 400, ""},
		{"mismatch before decommissioned", "web-01", "application/json", strings.Replace(string(valid), `"web-01"`, `"web-02"`, 1), 400,
			"machine_id: does not match the machine id in the path"},
		{"decommissioned", "web-01", "application/json", string(valid), 403, "machine is decommissioned"},
		{"decommissioned, no content type", "web-01", "", string(valid), 403, "machine is decommissioned"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, rej := e.fingerprint(t), e.metric(t, reportsRejected)
			expect(t, apiSend(t, e.c, "POST", e.url+"/api/v1/machines/"+tc.path+"/report", "", tc.ct, []byte(tc.body), false), tc.status, tc.msg)
			if after := e.fingerprint(t); after != before {
				t.Fatalf("state changed:\n%s\n%s", before, after)
			}
			if got := e.metric(t, reportsRejected); got != rej+1 {
				t.Fatalf("rejected %v -> %v, want +1", rej, got)
			}
		})
	}
}

// TestReportTagSync covers ACC-42, ACC-43 and §6.4: empty or absent tags never
// clear, the same set in another order or with duplicates writes nothing, and
// a different set replaces the tags (also tags set by an admin) with one
// tags.update row by machine:<id>.
func TestReportTagSync(t *testing.T) {
	e := newTestEnv(t)
	p1 := storePath('a', "sys")
	rep := func(tags any) {
		t.Helper()
		b := reportBody("web-01", p1, true, "up-to-date")
		if tags != nil {
			b["tags"] = tags
		}
		expect(t, e.report(t, "web-01", b), 200, "")
	}
	tagRows := func() []string {
		var out []string
		for _, ev := range e.audit(t, "web-01") {
			if ev.Action == "tags.update" {
				out = append(out, ev.Actor+" "+*ev.Detail)
			}
		}
		return out
	}
	rep([]string{"a", "b"})
	for _, tc := range []struct {
		name     string
		tags     any
		wantTags []string
		wantRows []string
	}{
		{"empty list keeps", []string{}, []string{"a", "b"}, []string{"machine:web-01 [] -> [a,b]"}},
		{"absent keeps", nil, []string{"a", "b"}, []string{"machine:web-01 [] -> [a,b]"}},
		{"null keeps", json.RawMessage("null"), []string{"a", "b"}, []string{"machine:web-01 [] -> [a,b]"}},
		{"same set, other order and duplicates", []string{"b", "a", "a"}, []string{"a", "b"}, []string{"machine:web-01 [] -> [a,b]"}},
		{"different set replaces", []string{"web", "canary"}, []string{"canary", "web"},
			[]string{"machine:web-01 [] -> [a,b]", "machine:web-01 [a,b] -> [canary,web]"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep(tc.tags)
			if m := e.mustMachine(t, "web-01"); !slices.Equal(m.Tags, tc.wantTags) {
				t.Fatalf("tags %v, want %v", m.Tags, tc.wantTags)
			}
			if got := tagRows(); !slices.Equal(got, tc.wantRows) {
				t.Fatalf("tags.update rows %q, want %q", got, tc.wantRows)
			}
		})
	}
	t.Run("admin tags last until a different agent set", func(t *testing.T) {
		expect(t, do(t, e.c, "PUT", e.url+"/api/v1/machines/web-01/tags", e.A, map[string]any{"tags": []string{"db"}}), 200, "")
		rep([]string{})
		rep(nil)
		if m := e.mustMachine(t, "web-01"); !slices.Equal(m.Tags, []string{"db"}) {
			t.Fatalf("tags %v, want [db]", m.Tags)
		}
		rep([]string{"canary", "web"})
		if m := e.mustMachine(t, "web-01"); !slices.Equal(m.Tags, []string{"canary", "web"}) {
			t.Fatalf("tags %v", m.Tags)
		}
		rows := tagRows()
		if len(rows) != 4 || rows[2] != "apikey:first-admin [canary,web] -> [db]" || rows[3] != "machine:web-01 [db] -> [canary,web]" {
			t.Fatalf("tags.update rows %q", rows)
		}
	})
}

// TestReportAuditOnChange covers ACC-44, ACC-45 and §6.5: every report is
// stored and counted, but a report audit row is written only for a creation,
// a first report, or a change of generation or success state.
func TestReportAuditOnChange(t *testing.T) {
	e := newTestEnv(t)
	p1, p2 := storePath('a', "sys-1"), storePath('b', "sys-2")
	reportRows := func(id string) []string {
		var out []string
		for _, ev := range e.audit(t, id) {
			if ev.Action == "report" {
				if ev.Actor != "machine:"+id {
					t.Fatalf("report row actor %q", ev.Actor)
				}
				out = append(out, *ev.Detail)
			}
		}
		return out
	}

	t.Run("ACC-44 ten identical reports", func(t *testing.T) {
		succ := e.metric(t, reportsSuccess)
		for range 10 {
			expect(t, e.report(t, "web-01", reportBody("web-01", p1, true, "up-to-date")), 200, "")
		}
		if got := reportRows("web-01"); !slices.Equal(got, []string{"registered"}) {
			t.Fatalf("report rows %q", got)
		}
		if got := e.metric(t, reportsSuccess); got != succ+10 {
			t.Fatalf("success %v -> %v, want +10", succ, got)
		}
		if n := countRows(t, e.ts, "SELECT count(*) FROM report WHERE machine_id = 'web-01'"); n != 10 {
			t.Fatalf("%d reports stored, want 10", n)
		}
	})

	steps := []struct {
		name string
		gen  string
		ok   bool
		want string // "" = no new row
	}{
		{"ACC-45 new generation", p2, true, "generation " + p1 + " -> " + p2},
		{"ACC-45 ok to error", p2, false, "state ok -> error"},
		{"still error", p2, false, ""},
		{"both change", "", true, "generation " + p2 + " -> (none); state error -> ok"},
		{"from none", p1, true, "generation (none) -> " + p1},
		{"message only", p1, true, ""},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			before := reportRows("web-01")
			expect(t, e.report(t, "web-01", reportBody("web-01", s.gen, s.ok, "message "+s.name)), 200, "")
			got := reportRows("web-01")
			if s.want == "" {
				if len(got) != len(before) {
					t.Fatalf("rows %q, want no new row", got)
				}
				return
			}
			if len(got) != len(before)+1 || got[len(got)-1] != s.want {
				t.Fatalf("rows %q, want a new %q", got, s.want)
			}
		})
	}

	t.Run("first report of a registered machine", func(t *testing.T) {
		expect(t, e.register(t, "web-02", nil), 201, "")
		expect(t, e.report(t, "web-02", reportBody("web-02", "", false, "applying")), 200, "")
		expect(t, e.report(t, "web-02", reportBody("web-02", "", false, "applying")), 200, "")
		if got := reportRows("web-02"); !slices.Equal(got, []string{"first report"}) {
			t.Fatalf("rows %q", got)
		}
	})
	t.Run("first report after notify-deploy", func(t *testing.T) {
		expect(t, do(t, e.c, "POST", e.url+"/api/v1/machines/web-03/notify-deploy", e.D, map[string]string{"store_path": p1}), 200, "")
		expect(t, e.report(t, "web-03", reportBody("web-03", p1, true, "deployed")), 200, "")
		if got := reportRows("web-03"); !slices.Equal(got, []string{"first report"}) {
			t.Fatalf("rows %q", got)
		}
	})
}

// TestReportAutoActivation covers ACC-46 and ACC-47's first half: pending and
// provisioning machines become active on their first report (audited by the
// machine, after the report row), maintenance machines stay maintenance.
func TestReportAutoActivation(t *testing.T) {
	e := newTestEnv(t)
	p1 := storePath('a', "sys")
	for _, tc := range []struct {
		from, want string
		rows       []string
	}{
		{"pending", "active", []string{"register|apikey:first-admin|pending", "report|machine:m-pending|first report",
			"update_lifecycle|machine:m-pending|pending -> active", "tags.update|machine:m-pending|[] -> [web]"}},
		{"provisioning", "active", []string{"register|apikey:first-admin|provisioning", "report|machine:m-provisioning|first report",
			"update_lifecycle|machine:m-provisioning|provisioning -> active", "tags.update|machine:m-provisioning|[] -> [web]"}},
		{"maintenance", "maintenance", []string{"register|apikey:first-admin|maintenance", "report|machine:m-maintenance|first report",
			"tags.update|machine:m-maintenance|[] -> [web]"}},
	} {
		t.Run(tc.from, func(t *testing.T) {
			id := "m-" + tc.from
			expect(t, e.register(t, id, map[string]any{"lifecycle": tc.from}), 201, "")
			body := reportBody(id, p1, true, "up-to-date")
			body["tags"] = []string{"web"}
			expect(t, e.report(t, id, body), 200, "")
			m := e.mustMachine(t, id)
			if m.Lifecycle != tc.want || m.CurrentGeneration != p1 || m.LastReport == nil {
				t.Fatalf("after report: %+v", m)
			}
			if got := e.auditSummary(t, id); !slices.Equal(got, tc.rows) {
				t.Fatalf("audit\n got %q\nwant %q", got, tc.rows)
			}
			// A later report does not touch the lifecycle again.
			expect(t, e.report(t, id, reportBody(id, p1, true, "up-to-date")), 200, "")
			if got := e.auditSummary(t, id); len(got) != len(tc.rows) {
				t.Fatalf("second report wrote audit rows: %q", got)
			}
		})
	}
	if got := e.metric(t, `nixfleet_machines_by_lifecycle{lifecycle="active"}`); got != 2 {
		t.Errorf("active gauge %v, want 2", got)
	}
	if got := e.metric(t, `nixfleet_machines_by_lifecycle{lifecycle="pending"}`); got != 0 {
		t.Errorf("pending gauge %v, want 0", got)
	}
}

// TestReportDecommissioned covers ACC-47's second half and §6.6: 403, nothing
// stored, last_report unchanged, counted as rejected.
func TestReportDecommissioned(t *testing.T) {
	e := newTestEnv(t)
	p1, p2 := storePath('a', "sys-1"), storePath('b', "sys-2")
	expect(t, e.report(t, "web-01", reportBody("web-01", p1, true, "up-to-date")), 200, "")
	expect(t, e.patch(t, "web-01", "decommissioned"), 200, "")
	e.ts.clock.advance(time.Minute)
	base := e.mustMachine(t, "web-01")
	before, rej, succ := e.fingerprint(t), e.metric(t, reportsRejected), e.metric(t, reportsSuccess)
	body := healthBody("web-01", p2)
	body["tags"] = []string{"other"}
	expect(t, e.report(t, "web-01", body), 403, "machine is decommissioned")
	if after := e.fingerprint(t); after != before {
		t.Fatalf("state changed:\n%s\n%s", before, after)
	}
	if m := e.mustMachine(t, "web-01"); !sameMachineStatus(m, base) || m.Lifecycle != "decommissioned" {
		t.Fatalf("machine changed: %+v", m)
	}
	if got := e.metric(t, reportsRejected); got != rej+1 {
		t.Fatalf("rejected %v -> %v, want +1", rej, got)
	}
	if got := e.metric(t, reportsSuccess); got != succ {
		t.Fatalf("success changed %v -> %v", succ, got)
	}
	expect(t, e.desired(t, "web-01"), 404, "no desired generation")
}

// TestReportFieldsSurviveRestart covers ACC-39: agent_version, uptime and the
// other MachineStatus fields are persisted and read back after a restart.
func TestReportFieldsSurviveRestart(t *testing.T) {
	db := filepath.Join(t.TempDir(), "state.db")
	c := &http.Client{Timeout: 10 * time.Second}
	rs := startRun(t, nil, "--db-path", db)
	A := bootstrapKey(t, c, rs.url)
	p1, p2 := storePath('a', "sys-1"), storePath('b', "sys-2")
	body := reportBody("web-01", p1, false, "rolled back: x")
	body["uptime_seconds"] = 86400
	body["tags"] = []string{"web", "eu"}
	expect(t, do(t, c, "POST", rs.url+"/api/v1/machines/web-01/report", "", body), 200, "")
	expect(t, do(t, c, "POST", rs.url+"/api/v1/machines/web-01/notify-deploy", A, map[string]string{"store_path": p2}), 200, "")
	expect(t, do(t, c, "POST", rs.url+"/api/v1/machines/web-02/register", A, `{"lifecycle":"provisioning"}`), 201, "")
	before := listMachinesT(t, c, rs.url, A, "")
	if err := rs.stop(t); err != nil {
		t.Fatal(err)
	}

	rs2 := startRun(t, nil, "--db-path", db)
	after := listMachinesT(t, c, rs2.url, A, "")
	if len(after) != 2 || len(before) != 2 {
		t.Fatalf("machines before %+v, after %+v", before, after)
	}
	for i := range after {
		if !sameMachineStatus(after[i], before[i]) {
			t.Errorf("after restart %+v\nbefore        %+v", after[i], before[i])
		}
	}
	m := after[0]
	if m.AgentVersion != "0.1.0" || m.UptimeSeconds != 86400 || m.SystemState != "error" || m.CurrentGeneration != p1 ||
		*m.DesiredGeneration != p2 || !slices.Equal(m.Tags, []string{"eu", "web"}) || m.LastReport == nil {
		t.Fatalf("web-01 after restart %+v", m)
	}
	// The next report compares against the persisted values: no change, no row.
	n := len(auditRows(t, c, rs2.url, A, "?action=report"))
	body["uptime_seconds"] = 86460
	expect(t, do(t, c, "POST", rs2.url+"/api/v1/machines/web-01/report", "", body), 200, "")
	if got := len(auditRows(t, c, rs2.url, A, "?action=report")); got != n {
		t.Fatalf("an unchanged report after restart wrote a report row")
	}
	if s := strconv.Itoa(int(listMachinesT(t, c, rs2.url, A, "?limit=1")[0].UptimeSeconds)); s != "86460" {
		t.Fatalf("uptime %s", s)
	}
}
