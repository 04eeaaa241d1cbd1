package main

// Tests for the agent protocol and the machine routes: bootstrap (ACC-16,
// ACC-17), keys added behind the server's back (ACC-19), reports and the
// machine list (ACC-35 … ACC-50), the machine admin routes (ACC-51 … ACC-62),
// audit on change (§6.5), tag sync (§6.4), the lifecycle table (§7.2) and
// decommissioning (§7.3).

import (
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// mtEnv is a plain-mode test server (fake clock) with an admin key A (from
// bootstrap, named first-admin), a deploy key D and a readonly key R.
type mtEnv struct {
	ts      *testServer
	c       *http.Client
	url     string
	A, D, R string
}

func newMTEnv(t testing.TB) *mtEnv {
	t.Helper()
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	e := &mtEnv{ts: ts, c: c, url: ts.url}
	e.A = bootstrapKey(t, c, ts.url)
	e.D = createTestKey(t, c, ts.url, e.A, "deployer", "deploy")
	e.R = createTestKey(t, c, ts.url, e.A, "reader", "readonly")
	return e
}

func (e *mtEnv) report(t testing.TB, id string, body any) response {
	t.Helper()
	return do(t, e.c, "POST", e.url+"/api/v1/machines/"+id+"/report", "", body)
}

func (e *mtEnv) register(t testing.TB, id string, body any) response {
	t.Helper()
	return do(t, e.c, "POST", e.url+"/api/v1/machines/"+id+"/register", e.A, body)
}

func (e *mtEnv) patch(t testing.TB, id, lifecycle string) response {
	t.Helper()
	return do(t, e.c, "PATCH", e.url+"/api/v1/machines/"+id+"/lifecycle", e.A, map[string]any{"lifecycle": lifecycle})
}

func (e *mtEnv) desired(t testing.TB, id string) response {
	t.Helper()
	return do(t, e.c, "GET", e.url+"/api/v1/machines/"+id+"/desired-generation", "", nil)
}

// machine returns the listed status of id; ok is false if it is not listed.
func (e *mtEnv) machine(t testing.TB, id string) (machineStatus, bool) {
	t.Helper()
	for _, m := range listMachinesT(t, e.c, e.url, e.A, "") {
		if m.MachineID == id {
			return m, true
		}
	}
	return machineStatus{}, false
}

func (e *mtEnv) mustMachine(t testing.TB, id string) machineStatus {
	t.Helper()
	m, ok := e.machine(t, id)
	if !ok {
		t.Fatalf("machine %s not listed", id)
	}
	return m
}

// audit returns the audit rows for target (all actions), oldest first.
func (e *mtEnv) audit(t testing.TB, target string) []auditEvent {
	t.Helper()
	evs := auditRows(t, e.c, e.url, e.A, "?limit=1000&target="+target)
	slices.Reverse(evs)
	return evs
}

// auditActions returns "action|actor|detail" for each audit row of target,
// oldest first.
func (e *mtEnv) auditSummary(t testing.TB, target string) []string {
	t.Helper()
	var out []string
	for _, ev := range e.audit(t, target) {
		d := "<null>"
		if ev.Detail != nil {
			d = *ev.Detail
		}
		out = append(out, ev.Action+"|"+ev.Actor+"|"+d)
	}
	return out
}

// fingerprint summarises the stored state: row counts of the tables that a
// rejected request must not touch, and the highest audit id.
func (e *mtEnv) fingerprint(t testing.TB) string {
	t.Helper()
	return dbFingerprint(t, e.ts)
}

func dbFingerprint(t testing.TB, ts *testServer) string {
	t.Helper()
	var b strings.Builder
	for _, table := range []string{"machine", "machine_tag", "desired_generation", "report", "health_report",
		"api_key", "audit_event", "release", "release_entry", "rollout", "rollout_batch", "rollout_machine"} {
		var n int
		if err := ts.st.ro.QueryRow("SELECT count(*) FROM " + table).Scan(&n); err != nil {
			t.Fatalf("count %s: %v", table, err)
		}
		fmt.Fprintf(&b, "%s=%d ", table, n)
	}
	var maxID int64
	ts.st.ro.QueryRow("SELECT coalesce(max(id), 0) FROM audit_event").Scan(&maxID)
	fmt.Fprintf(&b, "audit_max=%d", maxID)
	return b.String()
}

func (e *mtEnv) metric(t testing.TB, series string) float64 {
	t.Helper()
	return metricValue(t, e.c, e.url, series)
}

// countRows returns the number of rows of query (a SELECT count(*) …).
func (e *mtEnv) countRows(t testing.TB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := e.ts.st.ro.QueryRow(query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

const (
	mtRejected = `nixfleet_reports_total{result="rejected"}`
	mtSuccess  = `nixfleet_reports_total{result="success"}`
	mtFailure  = `nixfleet_reports_total{result="failure"}`
)

var mtTimeRE = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`)

// TestBootstrapKeys covers ACC-16: the first bootstrap, its 409 afterwards,
// and the name defaults (empty body, null, "") on fresh databases.
func TestBootstrapKeys(t *testing.T) {
	keyRE := regexp.MustCompile(`^nfk-[0-9a-f]{64}$`)
	for _, tc := range []struct {
		name        string
		body        string
		contentType string
		wantName    string
	}{
		{"named", `{"name":"first-admin"}`, "application/json", "first-admin"},
		{"empty body", "", "application/json", "admin"},
		{"empty body with text/plain", "", "text/plain", "admin"},
		{"empty object", `{}`, "application/json", "admin"},
		{"null name", `{"name":null}`, "application/json", "admin"},
		{"empty name", `{"name":""}`, "", "admin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestServer(t, testServerOptions{})
			c := ts.client("")
			r := mtRawPost(t, c, ts.url+"/api/v1/keys/bootstrap", tc.contentType, tc.body)
			expect(t, r, 200, "")
			var k keyCreated
			r.json(t, &k)
			if !keyRE.MatchString(k.Key) || k.Name != tc.wantName || k.Role != "admin" || k.ExpiresAt != nil {
				t.Fatalf("bootstrap gave %+v", k)
			}
			if !mtTimeRE.MatchString(k.CreatedAt) {
				t.Errorf("created_at %q", k.CreatedAt)
			}
			// The key works, and bootstrap is closed from now on.
			expect(t, do(t, c, "GET", ts.url+"/api/v1/keys", k.Key, nil), 200, "")
			before := dbFingerprint(t, ts)
			expect(t, do(t, c, "POST", ts.url+"/api/v1/keys/bootstrap", "", `{"name":"second"}`), 409,
				"API keys already exist. Use an admin key to create more.")
			expect(t, do(t, c, "POST", ts.url+"/api/v1/keys/bootstrap", "", nil), 409, "")
			if after := dbFingerprint(t, ts); after != before {
				t.Fatalf("a refused bootstrap changed the database:\n%s\n%s", before, after)
			}
			evs := auditRows(t, c, ts.url, k.Key, "?action=bootstrap")
			if len(evs) != 1 || evs[0].Actor != "system:bootstrap" || evs[0].Target != tc.wantName ||
				evs[0].Detail == nil || *evs[0].Detail != "first admin key created" {
				t.Fatalf("bootstrap audit rows %+v", evs)
			}
		})
	}

	t.Run("invalid bodies create nothing", func(t *testing.T) {
		ts := newTestServer(t, testServerOptions{})
		c := ts.client("")
		for _, body := range []string{`null`, `[]`, `{"name":"` + strings.Repeat("n", 65) + `"}`, `{"name":"a\u0001b"}`, `{"name":5}`, `{} {}`} {
			expect(t, do(t, c, "POST", ts.url+"/api/v1/keys/bootstrap", "", body), 400, "")
		}
		expect(t, mtRawPost(t, c, ts.url+"/api/v1/keys/bootstrap", "text/plain", `{"name":"x"}`), 415,
			"Content-Type must be application/json")
		var n int
		ts.st.ro.QueryRow("SELECT count(*) FROM api_key").Scan(&n)
		if n != 0 {
			t.Fatalf("%d keys after rejected bootstraps", n)
		}
		// Bootstrap is still open.
		bootstrapKey(t, c, ts.url)
	})
}

// mtRawPost posts body with the given Content-Type ("" for none).
func mtRawPost(t testing.TB, c *http.Client, url, contentType, body string) response {
	t.Helper()
	req, err := http.NewRequest("POST", url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return send(t, c, req)
}

// TestBootstrapConcurrent covers ACC-17: 20 concurrent bootstraps on an empty
// database give exactly one 200 and nineteen 409s, and one key exists.
func TestBootstrapConcurrent(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	const n = 20
	var wg sync.WaitGroup
	results := make([]response, n)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			req, _ := http.NewRequest("POST", ts.url+"/api/v1/keys/bootstrap", strings.NewReader(fmt.Sprintf(`{"name":"admin-%d"}`, i)))
			resp, err := c.Do(req)
			if err != nil {
				t.Errorf("bootstrap %d: %v", i, err)
				return
			}
			defer resp.Body.Close()
			var k keyCreated
			json.NewDecoder(resp.Body).Decode(&k)
			results[i] = response{status: resp.StatusCode, body: []byte(k.Key)}
		}()
	}
	close(start)
	wg.Wait()
	var key string
	ok, conflicts := 0, 0
	for _, r := range results {
		switch r.status {
		case 200:
			ok++
			key = string(r.body)
		case 409:
			conflicts++
		default:
			t.Errorf("unexpected status %d", r.status)
		}
	}
	if ok != 1 || conflicts != n-1 {
		t.Fatalf("%d × 200 and %d × 409, want 1 and %d", ok, conflicts, n-1)
	}
	var keys []keyInfo
	r := do(t, c, "GET", ts.url+"/api/v1/keys", key, nil)
	expect(t, r, 200, "")
	r.json(t, &keys)
	if len(keys) != 1 || keys[0].Role != "admin" {
		t.Fatalf("keys after concurrent bootstrap: %+v", keys)
	}
	if evs := auditRows(t, c, ts.url, key, "?action=bootstrap"); len(evs) != 1 {
		t.Fatalf("%d bootstrap audit rows, want 1", len(evs))
	}
}

// TestKeyInsertedBySQLite covers ACC-19 (and the revocation half of §3.1): a
// row written into the live database by another process authorises its token
// on the very next request, and revoking it there takes effect at once.
func TestKeyInsertedBySQLite(t *testing.T) {
	dbPath := filepath.Join(t.TempDir(), "state.db")
	ts := newTestServer(t, testServerOptions{dbPath: dbPath})
	c := ts.client("")
	sum := sha256.Sum256([]byte("test-admin-key"))
	hash := hex.EncodeToString(sum[:])

	// Negative answers are not cached either.
	expect(t, do(t, c, "GET", ts.url+"/api/v1/machines", "test-admin-key", nil), 401, "invalid API key")

	exec1 := func(stmt string) {
		t.Helper()
		if path, err := exec.LookPath("sqlite3"); err == nil {
			out, err := exec.Command(path, "-cmd", ".timeout 5000", dbPath, stmt).CombinedOutput()
			if err != nil {
				t.Fatalf("sqlite3 %q: %v\n%s", stmt, err, out)
			}
			return
		}
		db := mtOpenDB(t, dbPath)
		if _, err := db.Exec(stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	exec1(fmt.Sprintf("INSERT INTO api_key (key_hash, name, role, created_at) VALUES ('%s', 'sqlite-admin', 'admin', %d)",
		hash, time.Now().UnixMilli()))

	expect(t, do(t, c, "GET", ts.url+"/api/v1/machines", "test-admin-key", nil), 200, "")
	r := do(t, c, "GET", ts.url+"/api/v1/keys", "test-admin-key", nil) // an admin-only route
	expect(t, r, 200, "")
	var keys []keyInfo
	r.json(t, &keys)
	if len(keys) != 1 || keys[0].Name != "sqlite-admin" || keys[0].Role != "admin" {
		t.Fatalf("keys %+v", keys)
	}
	// The actor of a key inserted by hand is its name.
	expect(t, do(t, c, "POST", ts.url+"/api/v1/machines/web-01/register", "test-admin-key", nil), 201, "")
	if evs := auditRows(t, c, ts.url, "test-admin-key", "?action=register"); len(evs) != 1 || evs[0].Actor != "apikey:sqlite-admin" {
		t.Fatalf("register audit %+v", evs)
	}

	exec1(fmt.Sprintf("UPDATE api_key SET revoked_at = %d WHERE key_hash = '%s'", time.Now().UnixMilli(), hash))
	expect(t, do(t, c, "GET", ts.url+"/api/v1/machines", "test-admin-key", nil), 401, "API key revoked")
}

// TestDesiredGenerationLookup covers ACC-35 and §4.5: 404 for unknown machines
// and machines without a desired generation (and no auto-registration), 400
// for invalid path IDs, and that the call writes nothing.
func TestDesiredGenerationLookup(t *testing.T) {
	e := newMTEnv(t)
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
	e := newMTEnv(t)
	for _, id := range []string{strings.Repeat("a", 129), "web%2001", "%2E%2E", "%2e"} {
		t.Run(id[:min(len(id), 12)], func(t *testing.T) {
			before, rej := e.fingerprint(t), e.metric(t, mtRejected)
			r := do(t, e.c, "POST", e.url+"/api/v1/machines/"+id+"/report", "", reportBody(id, "", true, "up-to-date"))
			// Encoded dot segments reach the route and fail the ID rule;
			// plain ones are redirected by ServeMux (TestPathCleaning).
			expect(t, r, 400, "invalid machine id")
			if after := e.fingerprint(t); after != before {
				t.Fatalf("state changed:\n%s\n%s", before, after)
			}
			if got := e.metric(t, mtRejected); got != rej+1 {
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
	e := newMTEnv(t)
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
	if reg, _ := raw[0]["registered_at"].(string); !mtTimeRE.MatchString(reg) {
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
	if m.LastReport == nil || *m.LastReport != wantLast || !mtTimeRE.MatchString(*m.LastReport) {
		t.Fatalf("last_report %v, want %s", m.LastReport, wantLast)
	}
	if m.SecondsSinceLastReport == nil || *m.SecondsSinceLastReport != 0 {
		t.Fatalf("seconds_since_last_report %v right after the report", m.SecondsSinceLastReport)
	}
	if !mtTimeRE.MatchString(m.RegisteredAt) || m.RegisteredAt != wantLast {
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
		if !mtTimeRE.MatchString(ev.Timestamp) {
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
	e := newMTEnv(t)
	p1, p2 := storePath('a', "sys-1"), storePath('b', "sys-2")
	expect(t, do(t, e.c, "POST", e.url+"/api/v1/machines/web-01/notify-deploy", e.D, map[string]string{"store_path": p2}), 200, "")
	expect(t, e.report(t, "web-01", reportBody("web-01", p1, true, "up-to-date")), 200, "")

	body := reportBody("web-01", p1, false, "rolled back: switch failed")
	body["tags"], body["health"] = nil, nil
	succ, fail := e.metric(t, mtSuccess), e.metric(t, mtFailure)
	r := e.report(t, "web-01", body)
	expect(t, r, 200, "")
	if len(r.body) != 0 {
		t.Errorf("report answer body %q, want empty", r.body)
	}
	m := e.mustMachine(t, "web-01")
	if m.SystemState != "error" || m.CurrentGeneration != p1 || m.DesiredGeneration == nil || *m.DesiredGeneration != p2 {
		t.Fatalf("after failure report: %+v", m)
	}
	if e.metric(t, mtFailure) != fail+1 || e.metric(t, mtSuccess) != succ {
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
	if n := e.countRows(t, "SELECT count(*) FROM report WHERE machine_id = 'web-01'"); n != 3 {
		t.Fatalf("%d reports stored, want 3", n)
	}
	if n := e.countRows(t, "SELECT count(*) FROM health_report"); n != 1 {
		t.Fatalf("%d health reports stored, want 1", n)
	}
	// Input timestamps accept any RFC 3339 offset.
	body = reportBody("web-01", p2, true, "health-check")
	body["timestamp"] = "2026-04-11T11:30:00+02:00"
	expect(t, e.report(t, "web-01", body), 200, "")
	var agentTS int64
	e.ts.st.ro.QueryRow("SELECT agent_ts FROM report ORDER BY id DESC LIMIT 1").Scan(&agentTS)
	if want := time.Date(2026, 4, 11, 9, 30, 0, 0, time.UTC).UnixMilli(); agentTS != want {
		t.Fatalf("agent_ts %d, want %d", agentTS, want)
	}
}

// TestReportValidation covers ACC-38, ACC-12's report half and ACC-110's
// second half: each invalid report gets 400 (with the specified message where
// there is one), stores nothing, writes no audit row, leaves last_report
// alone and counts as rejected.
func TestReportValidation(t *testing.T) {
	e := newMTEnv(t)
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
		{"65 tags", with("tags", mtTags(65)), ""},
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
			before, rej := e.fingerprint(t), e.metric(t, mtRejected)
			expect(t, e.report(t, "web-01", tc.body), 400, tc.msg)
			if after := e.fingerprint(t); after != before {
				t.Fatalf("state changed:\n%s\n%s", before, after)
			}
			if got := e.metric(t, mtRejected); got != rej+1 {
				t.Fatalf("rejected %v -> %v, want +1", rej, got)
			}
			if m := e.mustMachine(t, "web-01"); !mtSameStatus(m, base) {
				t.Fatalf("machine changed: %+v, was %+v", m, base)
			}
		})
	}
	// The limits themselves are accepted.
	ok := reportBody("web-01", strings.Repeat("g", 512), true, strings.Repeat("m", 4096))
	ok["agent_version"] = strings.Repeat("v", 128)
	ok["tags"] = mtTags(64)
	expect(t, e.report(t, "web-01", ok), 200, "")
}

func mtTags(n int) []string {
	tags := make([]string, n)
	for i := range tags {
		tags[i] = fmt.Sprintf("t%02d", i)
	}
	return tags
}

// mtSameStatus compares two statuses, seconds_since_last_report aside.
func mtSameStatus(a, b machineStatus) bool {
	a.SecondsSinceLastReport, b.SecondsSinceLastReport = nil, nil
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

// TestReportOrderOfChecks covers ACC-47 (decommissioned 403, rejected +1),
// ACC-15, §4.6 and §2.6 for reports: path ID (400)
// before the body (415, 400), the body before the decommissioned 403, and the
// 403 last; each is counted as rejected and stores nothing.
func TestReportOrderOfChecks(t *testing.T) {
	e := newMTEnv(t)
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
			before, rej := e.fingerprint(t), e.metric(t, mtRejected)
			expect(t, mtRawPost(t, e.c, e.url+"/api/v1/machines/"+tc.path+"/report", tc.ct, tc.body), tc.status, tc.msg)
			if after := e.fingerprint(t); after != before {
				t.Fatalf("state changed:\n%s\n%s", before, after)
			}
			if got := e.metric(t, mtRejected); got != rej+1 {
				t.Fatalf("rejected %v -> %v, want +1", rej, got)
			}
		})
	}
}

// TestAgentRoutesMTLS covers ACC-31, ACC-32 and ACC-33 and the order of checks of §4.5 and §4.6 in mTLS
// mode: the CN check (403) comes before the ID rule (400) and the lookup, a
// CN-rejected report is not counted as a report, and the own CN works.
func TestAgentRoutesMTLS(t *testing.T) {
	ts := newTestServer(t, testServerOptions{mode: "mtls"})
	op, web01 := ts.client("operator"), ts.client("web-01")
	A := bootstrapKey(t, op, ts.url)
	base := ts.url + "/api/v1/machines/"
	p1 := storePath('a', "sys")

	expect(t, do(t, web01, "GET", base+"web-01/desired-generation", "", nil), 404, "no desired generation")
	for _, path := range []string{"web-02", "web%2001", strings.Repeat("a", 129)} {
		expect(t, do(t, web01, "GET", base+path+"/desired-generation", "", nil), 403, "client certificate CN does not match machine id")
	}
	before := dbFingerprint(t, ts)
	rej := metricValue(t, op, ts.url, mtRejected)
	cnFail := metricValue(t, op, ts.url, `nixfleet_auth_failures_total{reason="cn_mismatch"}`)
	expect(t, do(t, web01, "POST", base+"web-02/report", "", reportBody("web-02", p1, true, "up-to-date")), 403,
		"client certificate CN does not match machine id")
	expect(t, do(t, web01, "POST", base+"web%2001/report", "", "garbage"), 403, "client certificate CN does not match machine id")
	if after := dbFingerprint(t, ts); after != before {
		t.Fatalf("CN-rejected reports changed the database:\n%s\n%s", before, after)
	}
	if got := metricValue(t, op, ts.url, mtRejected); got != rej {
		t.Errorf("CN-rejected reports counted as rejected reports: %v -> %v", rej, got)
	}
	if got := metricValue(t, op, ts.url, `nixfleet_auth_failures_total{reason="cn_mismatch"}`); got != cnFail+2 {
		t.Errorf("cn_mismatch %v -> %v, want +2", cnFail, got)
	}
	expect(t, do(t, web01, "POST", base+"web-01/report", "", "{"), 400, "")
	expect(t, do(t, web01, "POST", base+"web-01/report", "", reportBody("web-01", p1, true, "up-to-date")), 200, "")
	ms := listMachinesT(t, op, ts.url, A, "")
	if len(ms) != 1 || ms[0].MachineID != "web-01" || ms[0].CurrentGeneration != p1 {
		t.Fatalf("machines %+v", ms)
	}
	// Admin routes need the key too; the CN is not checked there.
	expect(t, do(t, web01, "GET", ts.url+"/api/v1/machines", "", nil), 401, "missing API key")
}

// TestReportTagSync covers ACC-42, ACC-43 and §6.4: empty or absent tags never
// clear, the same set in another order or with duplicates writes nothing, and
// a different set replaces the tags (also tags set by an admin) with one
// tags.update row by machine:<id>.
func TestReportTagSync(t *testing.T) {
	e := newMTEnv(t)
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
	e := newMTEnv(t)
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
		succ := e.metric(t, mtSuccess)
		for range 10 {
			expect(t, e.report(t, "web-01", reportBody("web-01", p1, true, "up-to-date")), 200, "")
		}
		if got := reportRows("web-01"); !slices.Equal(got, []string{"registered"}) {
			t.Fatalf("report rows %q", got)
		}
		if got := e.metric(t, mtSuccess); got != succ+10 {
			t.Fatalf("success %v -> %v, want +10", succ, got)
		}
		if n := e.countRows(t, "SELECT count(*) FROM report WHERE machine_id = 'web-01'"); n != 10 {
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
	e := newMTEnv(t)
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
	e := newMTEnv(t)
	p1, p2 := storePath('a', "sys-1"), storePath('b', "sys-2")
	expect(t, e.report(t, "web-01", reportBody("web-01", p1, true, "up-to-date")), 200, "")
	expect(t, e.patch(t, "web-01", "decommissioned"), 200, "")
	e.ts.clock.advance(time.Minute)
	base := e.mustMachine(t, "web-01")
	before, rej, succ := e.fingerprint(t), e.metric(t, mtRejected), e.metric(t, mtSuccess)
	body := healthBody("web-01", p2)
	body["tags"] = []string{"other"}
	expect(t, e.report(t, "web-01", body), 403, "machine is decommissioned")
	if after := e.fingerprint(t); after != before {
		t.Fatalf("state changed:\n%s\n%s", before, after)
	}
	if m := e.mustMachine(t, "web-01"); !mtSameStatus(m, base) || m.Lifecycle != "decommissioned" {
		t.Fatalf("machine changed: %+v", m)
	}
	if got := e.metric(t, mtRejected); got != rej+1 {
		t.Fatalf("rejected %v -> %v, want +1", rej, got)
	}
	if got := e.metric(t, mtSuccess); got != succ {
		t.Fatalf("success changed %v -> %v", succ, got)
	}
	expect(t, e.desired(t, "web-01"), 404, "no desired generation")
}

// TestListMachines covers ACC-48, ACC-49 and ACC-50, and the query rules of
// §2.4 for the list.
func TestListMachines(t *testing.T) {
	e := newMTEnv(t)
	if ms := listMachinesT(t, e.c, e.url, e.R, ""); ms == nil || len(ms) != 0 {
		t.Fatalf("empty list %v", ms)
	}
	r := do(t, e.c, "GET", e.url+"/api/v1/machines", e.R, nil)
	if strings.TrimSpace(string(r.body)) != "[]" {
		t.Fatalf("empty list body %q", r.body)
	}
	machines := []struct {
		id, lifecycle string
		tags          []string
	}{
		{"web-03", "active", []string{"web", "eu"}},
		{"db-01", "pending", []string{"db", "eu"}},
		{"web-01", "pending", []string{"web"}},
		{"web-02", "active", []string{"web", "eu"}},
		{"Z-01", "maintenance", []string{"eu"}},
	}
	for _, m := range machines {
		expect(t, e.register(t, m.id, map[string]any{"lifecycle": m.lifecycle, "tags": m.tags}), 201, "")
	}
	ids := func(ms []machineStatus) []string {
		out := []string{}
		for _, m := range ms {
			out = append(out, m.MachineID)
		}
		return out
	}
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"", []string{"Z-01", "db-01", "web-01", "web-02", "web-03"}}, // byte order
		{"?tag=web&tag=eu", []string{"web-02", "web-03"}},
		{"?tag=eu", []string{"Z-01", "db-01", "web-02", "web-03"}},
		{"?tag=nope", []string{}},
		{"?lifecycle=pending&lifecycle=active", []string{"db-01", "web-01", "web-02", "web-03"}},
		{"?lifecycle=maintenance", []string{"Z-01"}},
		{"?lifecycle=pending&tag=web", []string{"web-01"}},
		{"?limit=2", []string{"Z-01", "db-01"}},
		{"?limit=2&after=db-01", []string{"web-01", "web-02"}},
		{"?limit=2&after=web-02", []string{"web-03"}},
		{"?after=web-03", []string{}},
		{"?limit=2&limit=abc", []string{"Z-01", "db-01"}}, // the first value is used
		{"?limit=5000", []string{"Z-01", "db-01", "web-01", "web-02", "web-03"}},
		{"?unknown=1", []string{"Z-01", "db-01", "web-01", "web-02", "web-03"}},
	} {
		t.Run("query"+tc.query, func(t *testing.T) {
			if got := ids(listMachinesT(t, e.c, e.url, e.R, tc.query)); !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	t.Run("pages", func(t *testing.T) {
		var all []string
		after, pages := "", 0
		for {
			q := "?limit=2"
			if after != "" {
				q += "&after=" + after
			}
			page := ids(listMachinesT(t, e.c, e.url, e.R, q))
			pages++
			all = append(all, page...)
			if len(page) < 2 {
				break
			}
			after = page[len(page)-1]
		}
		if pages != 3 || !slices.Equal(all, []string{"Z-01", "db-01", "web-01", "web-02", "web-03"}) {
			t.Fatalf("%d pages: %v", pages, all)
		}
	})
	for _, tc := range []struct{ query, msg string }{
		{"?lifecycle=bogus", "invalid lifecycle state: bogus"},
		{"?lifecycle=Active", "invalid lifecycle state: Active"},
		{"?limit=0", ""},
		{"?limit=abc", ""},
		{"?limit=-1", ""},
		{"?limit=", ""},
		{"?tag=bad%20tag", ""},
		{"?after=..", ""},
		{"?after=web%2001", ""},
	} {
		t.Run("bad"+tc.query, func(t *testing.T) {
			expect(t, do(t, e.c, "GET", e.url+"/api/v1/machines"+tc.query, e.R, nil), 400, tc.msg)
		})
	}
}

// TestRegister covers ACC-51, ACC-52 and ACC-53 and the audit rows of §4.8.
func TestRegister(t *testing.T) {
	e := newMTEnv(t)
	p1 := storePath('a', "sys")
	type want struct {
		status    int
		lifecycle string
		tags      []string
		audit     []string // the rows this request adds
	}
	steps := []struct {
		name string
		id   string
		body any
		want want
	}{
		{"ACC-51 new with tags", "web-01", `{"tags":["web"]}`, want{201, "active", []string{"web"},
			[]string{"register|apikey:first-admin|active", "tags.update|apikey:first-admin|[] -> [web]"}}},
		{"ACC-51 empty body", "web-02", nil, want{201, "active", []string{}, []string{"register|apikey:first-admin|active"}}},
		{"ACC-51 empty object", "web-07", `{}`, want{201, "active", []string{}, []string{"register|apikey:first-admin|active"}}},
		{"ACC-51 pending", "web-03", `{"lifecycle":"pending"}`, want{201, "pending", []string{}, []string{"register|apikey:first-admin|pending"}}},
		{"ACC-51 not-a-real-state", "web-04", `{"lifecycle":"not-a-real-state"}`, want{400, "", nil, nil}},
		{"ACC-51 ACTIVE", "web-04", `{"lifecycle":"ACTIVE"}`, want{400, "", nil, nil}},
		{"bad tag", "web-04", `{"tags":["bad tag"]}`, want{400, "", nil, nil}},
		{"65 tags", "web-04", map[string]any{"tags": mtTags(65)}, want{400, "", nil, nil}},
		{"lifecycle wrong type", "web-04", `{"lifecycle":1}`, want{400, "", nil, nil}},
		{"ACC-52 same lifecycle", "web-01", `{"lifecycle":"active"}`, want{201, "active", []string{"web"}, []string{"register|apikey:first-admin|active"}}},
		{"same tags in another order", "web-01", `{"tags":["web","web"]}`, want{201, "active", []string{"web"}, []string{"register|apikey:first-admin|active"}}},
		{"empty tags keep", "web-01", `{"tags":[]}`, want{201, "active", []string{"web"}, []string{"register|apikey:first-admin|active"}}},
		{"null tags keep", "web-01", `{"tags":null,"lifecycle":null}`, want{201, "active", []string{"web"}, []string{"register|apikey:first-admin|active"}}},
		{"allowed transition", "web-03", `{"lifecycle":"provisioning"}`, want{201, "provisioning", []string{}, []string{"register|apikey:first-admin|pending -> provisioning"}}},
		{"forbidden transition", "web-03", `{"lifecycle":"maintenance"}`, want{409, "", nil, nil}},
		{"ACC-53 maintenance", "web-05", `{"lifecycle":"maintenance"}`, want{201, "maintenance", []string{}, []string{"register|apikey:first-admin|maintenance"}}},
		{"ACC-53 tags only", "web-05", `{"tags":["x"]}`, want{201, "maintenance", []string{"x"},
			[]string{"register|apikey:first-admin|maintenance", "tags.update|apikey:first-admin|[] -> [x]"}}},
		{"decommission by register", "web-06", `{"lifecycle":"active"}`, want{201, "active", []string{}, []string{"register|apikey:first-admin|active"}}},
		{"notify web-06", "", nil, want{}},
		{"decommission web-06", "web-06", `{"lifecycle":"decommissioned"}`, want{201, "decommissioned", []string{},
			[]string{"register|apikey:first-admin|active -> decommissioned", "clear_desired|apikey:first-admin|" + p1}}},
		{"ACC-52 decommissioned to active", "web-06", `{"lifecycle":"active"}`, want{409, "", nil, nil}},
		{"decommissioned stays", "web-06", `{"lifecycle":"decommissioned"}`, want{201, "decommissioned", []string{},
			[]string{"register|apikey:first-admin|decommissioned"}}},
		{"invalid id", "web%2001", nil, want{400, "", nil, nil}},
		{"new machine decommissioned", "web-08", `{"lifecycle":"decommissioned","tags":["old"]}`, want{201, "decommissioned", []string{"old"},
			[]string{"register|apikey:first-admin|decommissioned", "tags.update|apikey:first-admin|[] -> [old]"}}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if s.id == "" {
				expect(t, do(t, e.c, "POST", e.url+"/api/v1/machines/web-06/notify-deploy", e.D, map[string]string{"store_path": p1}), 200, "")
				return
			}
			before := e.fingerprint(t)
			auditBefore := e.auditSummary(t, s.id)
			old, existed := e.machine(t, s.id)
			r := e.register(t, s.id, s.body)
			expect(t, r, s.want.status, "")
			if s.want.status != 201 {
				if after := e.fingerprint(t); after != before {
					t.Fatalf("rejected register changed state:\n%s\n%s", before, after)
				}
				if m, ok := e.machine(t, s.id); ok != existed || ok && !mtSameStatus(m, old) {
					t.Fatalf("machine changed: %+v", m)
				}
				if s.want.status == 409 && !strings.HasPrefix(r.errMsg(t), "invalid transition: ") {
					t.Fatalf("409 message %q", r.errMsg(t))
				}
				return
			}
			if want := fmt.Sprintf(`{"machine_id":%q,"lifecycle":%q}`, s.id, s.want.lifecycle); strings.TrimSpace(string(r.body)) != want {
				t.Fatalf("body %s, want %s", r.body, want)
			}
			m := e.mustMachine(t, s.id)
			if m.Lifecycle != s.want.lifecycle || !slices.Equal(m.Tags, s.want.tags) {
				t.Fatalf("machine %+v, want %s %v", m, s.want.lifecycle, s.want.tags)
			}
			got := e.auditSummary(t, s.id)[len(auditBefore):]
			if !slices.Equal(got, s.want.audit) {
				t.Fatalf("audit rows\n got %q\nwant %q", got, s.want.audit)
			}
		})
	}
	expect(t, e.report(t, "web-08", reportBody("web-08", "", true, "up-to-date")), 403, "machine is decommissioned")
	if m := e.mustMachine(t, "web-06"); m.DesiredGeneration != nil {
		t.Fatalf("decommissioning by register kept the desired generation %v", *m.DesiredGeneration)
	}
	// Roles: only admins register.
	expect(t, do(t, e.c, "POST", e.url+"/api/v1/machines/x/register", e.D, nil), 403, "admin role required")
	expect(t, do(t, e.c, "POST", e.url+"/api/v1/machines/x/register", e.R, nil), 403, "admin role required")
	expect(t, do(t, e.c, "POST", e.url+"/api/v1/machines/x/register", "", nil), 401, "missing API key")
	if _, ok := e.machine(t, "x"); ok {
		t.Fatal("a refused register created the machine")
	}
}

// TestPatchLifecycle covers ACC-54 and the order of checks of §4.9.
func TestPatchLifecycle(t *testing.T) {
	e := newMTEnv(t)
	expect(t, e.register(t, "web-01", nil), 201, "")
	for _, s := range []struct {
		id, to string
		status int
		msg    string
		after  string
	}{
		{"web-01", "maintenance", 200, "", "maintenance"},
		{"web-01", "active", 200, "", "active"},
		{"web-01", "active", 409, "invalid transition: active -> active", "active"},
		{"web-01", "decommissioned", 200, "", "decommissioned"},
		{"web-01", "active", 409, "invalid transition: decommissioned -> active", "decommissioned"},
		{"ghost", "active", 404, "machine ghost not found", ""},
		{"ghost", "bogus", 400, "invalid lifecycle state: bogus", ""},
		{"web-01", "bogus", 400, "invalid lifecycle state: bogus", "decommissioned"},
		{"bad%20id", "bogus", 400, "invalid machine id", ""},
	} {
		t.Run(s.id+"->"+s.to, func(t *testing.T) {
			before := e.fingerprint(t)
			r := e.patch(t, s.id, s.to)
			expect(t, r, s.status, s.msg)
			if s.status == 200 {
				if len(r.body) != 0 {
					t.Errorf("200 body %q, want empty", r.body)
				}
			} else if after := e.fingerprint(t); after != before {
				t.Fatalf("rejected PATCH changed state:\n%s\n%s", before, after)
			}
			if s.after != "" {
				if m := e.mustMachine(t, s.id); m.Lifecycle != s.after {
					t.Fatalf("lifecycle %s, want %s", m.Lifecycle, s.after)
				}
			}
		})
	}
	got := e.auditSummary(t, "web-01")
	want := []string{"register|apikey:first-admin|active", "update_lifecycle|apikey:first-admin|active -> maintenance",
		"update_lifecycle|apikey:first-admin|maintenance -> active", "update_lifecycle|apikey:first-admin|active -> decommissioned"}
	if !slices.Equal(got, want) {
		t.Fatalf("audit\n got %q\nwant %q", got, want)
	}
	for _, body := range []string{`{}`, `{"lifecycle":null}`, ""} {
		expect(t, do(t, e.c, "PATCH", e.url+"/api/v1/machines/web-01/lifecycle", e.A, body), 400, "")
	}
	expect(t, do(t, e.c, "PATCH", e.url+"/api/v1/machines/web-01/lifecycle", e.A, `{}`), 400, "lifecycle: required")
	expect(t, do(t, e.c, "PATCH", e.url+"/api/v1/machines/web-01/lifecycle", e.D, `{"lifecycle":"active"}`), 403, "admin role required")
}

// TestLifecycleTransitionTable covers ACC-55: PATCH gets 200 for exactly the
// nine allowed (from, to) pairs of §7.2 and 409 for the other sixteen, with
// the audit row and the lifecycle gauges to match.
func TestLifecycleTransitionTable(t *testing.T) {
	e := newMTEnv(t)
	allowed := map[[2]string]bool{
		{"pending", "provisioning"}: true, {"pending", "active"}: true, {"pending", "decommissioned"}: true,
		{"provisioning", "pending"}: true, {"provisioning", "active"}: true,
		{"active", "maintenance"}: true, {"active", "decommissioned"}: true,
		{"maintenance", "active"}: true, {"maintenance", "decommissioned"}: true,
	}
	states := []string{"pending", "provisioning", "active", "maintenance", "decommissioned"}
	final := map[string]int{}
	okCount := 0
	for _, from := range states {
		for _, to := range states {
			t.Run(from+"->"+to, func(t *testing.T) {
				id := "m-" + from + "-" + to
				expect(t, e.register(t, id, map[string]any{"lifecycle": from}), 201, "")
				before := len(e.audit(t, id))
				r := e.patch(t, id, to)
				m := e.mustMachine(t, id)
				rows := e.audit(t, id)
				if allowed[[2]string{from, to}] {
					okCount++
					expect(t, r, 200, "")
					if m.Lifecycle != to {
						t.Fatalf("lifecycle %s, want %s", m.Lifecycle, to)
					}
					last := rows[len(rows)-1]
					if len(rows) != before+1 || last.Action != "update_lifecycle" || *last.Detail != from+" -> "+to {
						t.Fatalf("audit %+v", e.auditSummary(t, id))
					}
				} else {
					expect(t, r, 409, "invalid transition: "+from+" -> "+to)
					if m.Lifecycle != from || len(rows) != before {
						t.Fatalf("refused transition changed lifecycle to %s or wrote %d rows", m.Lifecycle, len(rows)-before)
					}
				}
				final[m.Lifecycle]++
			})
		}
	}
	if okCount != 9 {
		t.Errorf("%d allowed transitions, want 9", okCount)
	}
	for _, s := range states {
		if got := e.metric(t, `nixfleet_machines_by_lifecycle{lifecycle="`+s+`"}`); got != float64(final[s]) {
			t.Errorf("machines_by_lifecycle{%s} = %v, want %d", s, got, final[s])
		}
	}
}

// TestDecommissionEffects covers ACC-56 and §7.3: the desired generation is
// cleared with a clear_desired row in the same change, the last-seen series
// disappears, and every later agent or deploy call is refused.
func TestDecommissionEffects(t *testing.T) {
	e := newMTEnv(t)
	p1, p2 := storePath('a', "sys-1"), storePath('b', "sys-2")
	expect(t, e.report(t, "web-01", reportBody("web-01", p1, true, "up-to-date")), 200, "")
	expect(t, e.report(t, "web-02", reportBody("web-02", p1, true, "up-to-date")), 200, "")
	expect(t, do(t, e.c, "POST", e.url+"/api/v1/machines/web-01/notify-deploy", e.D, map[string]string{"store_path": p2}), 200, "")
	seen := `nixfleet_machine_last_seen_timestamp_seconds{machine_id="web-01"}`
	if e.metric(t, seen) <= 0 {
		t.Fatal("no last_seen series before decommissioning")
	}
	expect(t, e.patch(t, "web-01", "decommissioned"), 200, "")

	m := e.mustMachine(t, "web-01")
	if m.DesiredGeneration != nil || m.Lifecycle != "decommissioned" {
		t.Fatalf("after decommission: %+v", m)
	}
	rows := e.auditSummary(t, "web-01")
	tail := rows[len(rows)-2:]
	if !slices.Equal(tail, []string{"update_lifecycle|apikey:first-admin|active -> decommissioned", "clear_desired|apikey:first-admin|" + p2}) {
		t.Fatalf("audit %q", rows)
	}
	if got := e.metric(t, seen); got != -1 {
		t.Fatalf("last_seen series still present: %v", got)
	}
	if e.metric(t, `nixfleet_machine_last_seen_timestamp_seconds{machine_id="web-02"}`) <= 0 {
		t.Fatal("another machine's series disappeared")
	}
	if got := e.metric(t, `nixfleet_machines_by_lifecycle{lifecycle="decommissioned"}`); got != 1 {
		t.Fatalf("decommissioned gauge %v", got)
	}
	if n := e.countRows(t, "SELECT count(*) FROM desired_generation WHERE machine_id = 'web-01'"); n != 0 {
		t.Fatalf("desired generation row still stored")
	}
	expect(t, e.desired(t, "web-01"), 404, "no desired generation")
	expect(t, do(t, e.c, "POST", e.url+"/api/v1/machines/web-01/notify-deploy", e.D, map[string]string{"store_path": p1}), 409,
		"machine web-01 is decommissioned")
	expect(t, e.report(t, "web-01", reportBody("web-01", p1, true, "up-to-date")), 403, "machine is decommissioned")
	for _, to := range []string{"pending", "provisioning", "active", "maintenance", "decommissioned"} {
		expect(t, e.patch(t, "web-01", to), 409, "invalid transition: decommissioned -> "+to)
	}
	// Clearing a decommissioned machine's (absent) desired generation is a no-op.
	expect(t, do(t, e.c, "DELETE", e.url+"/api/v1/machines/web-01/desired-generation", e.A, nil), 204, "")
	// A machine without a desired generation is decommissioned without clear_desired.
	expect(t, e.patch(t, "web-02", "decommissioned"), 200, "")
	for _, ev := range e.audit(t, "web-02") {
		if ev.Action == "clear_desired" {
			t.Fatal("clear_desired written though nothing was set")
		}
	}
}

// TestPutTags covers ACC-57 and §4.10.
func TestPutTags(t *testing.T) {
	e := newMTEnv(t)
	expect(t, e.register(t, "web-01", nil), 201, "")
	put := func(key string, body any, id ...string) response {
		target := "web-01"
		if len(id) > 0 {
			target = id[0]
		}
		return do(t, e.c, "PUT", e.url+"/api/v1/machines/"+target+"/tags", key, body)
	}
	tagRows := func() int {
		n := 0
		for _, ev := range e.audit(t, "web-01") {
			if ev.Action == "tags.update" {
				n++
			}
		}
		return n
	}
	r := put(e.A, `{"tags":["eu","db"]}`)
	expect(t, r, 200, "")
	var ms machineStatus
	r.json(t, &ms)
	if ms.MachineID != "web-01" || !slices.Equal(ms.Tags, []string{"db", "eu"}) || ms.Lifecycle != "active" || ms.SystemState != "unknown" {
		t.Fatalf("PUT answer %s", r.body)
	}
	if got := e.mustMachine(t, "web-01").Tags; !slices.Equal(got, []string{"db", "eu"}) {
		t.Fatalf("listed tags %v", got)
	}
	if rows := e.auditSummary(t, "web-01"); rows[len(rows)-1] != "tags.update|apikey:first-admin|[] -> [db,eu]" {
		t.Fatalf("audit %q", rows)
	}
	// The same set (order, duplicates) is not a change.
	expect(t, put(e.A, `{"tags":["eu","db","db"]}`), 200, "")
	if n := tagRows(); n != 1 {
		t.Fatalf("%d tags.update rows, want 1", n)
	}
	for _, tc := range []struct {
		name   string
		key    string
		body   any
		id     string
		status int
		msg    string
	}{
		{"empty object", e.A, `{}`, "web-01", 400, "tags: required"},
		{"null tags", e.A, `{"tags":null}`, "web-01", 400, "tags: required"},
		{"empty body", e.A, nil, "web-01", 400, ""},
		{"65 tags", e.A, map[string]any{"tags": mtTags(65)}, "web-01", 400, ""},
		{"bad tag", e.A, `{"tags":["ok","bad tag"]}`, "web-01", 400, ""},
		{"65-byte tag", e.A, map[string]any{"tags": []string{strings.Repeat("t", 65)}}, "web-01", 400, ""},
		{"string tags", e.A, `{"tags":"web"}`, "web-01", 400, ""},
		{"unknown machine", e.A, `{"tags":["x"]}`, "ghost", 404, "machine ghost not found"},
		{"readonly", e.R, `{"tags":["x"]}`, "web-01", 403, "admin role required"},
		{"deploy", e.D, `{"tags":["x"]}`, "web-01", 403, "admin role required"},
		{"anonymous", "", `{"tags":["x"]}`, "web-01", 401, "missing API key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.fingerprint(t)
			expect(t, put(tc.key, tc.body, tc.id), tc.status, tc.msg)
			if after := e.fingerprint(t); after != before {
				t.Fatalf("state changed:\n%s\n%s", before, after)
			}
		})
	}
	r = put(e.A, map[string]any{"tags": append(mtTags(64), "t00")}) // 64 distinct
	expect(t, r, 200, "")
	r.json(t, &ms)
	if len(ms.Tags) != 64 {
		t.Fatalf("%d tags", len(ms.Tags))
	}
	r = put(e.A, `{"tags":[]}`)
	expect(t, r, 200, "")
	r.json(t, &ms)
	if ms.Tags == nil || len(ms.Tags) != 0 || !strings.Contains(string(r.body), `"tags":[]`) {
		t.Fatalf("cleared tags answer %s", r.body)
	}
	if rows := e.auditSummary(t, "web-01"); !strings.HasSuffix(rows[len(rows)-1], "] -> []") {
		t.Fatalf("audit %q", rows)
	}
}

// TestClearDesired covers ACC-58 and §4.11.
func TestClearDesired(t *testing.T) {
	e := newMTEnv(t)
	p1 := storePath('a', "sys")
	expect(t, do(t, e.c, "POST", e.url+"/api/v1/machines/web-01/notify-deploy", e.D, map[string]string{"store_path": p1}), 200, "")
	del := func(key, id string) response {
		return do(t, e.c, "DELETE", e.url+"/api/v1/machines/"+id+"/desired-generation", key, nil)
	}
	expect(t, del(e.D, "web-01"), 403, "admin role required")
	expect(t, del(e.R, "web-01"), 403, "admin role required")
	expect(t, del("", "web-01"), 401, "missing API key")
	if m := e.mustMachine(t, "web-01"); m.DesiredGeneration == nil {
		t.Fatal("a refused DELETE cleared the desired generation")
	}
	r := del(e.A, "web-01")
	expect(t, r, 204, "")
	if len(r.body) != 0 {
		t.Errorf("204 body %q", r.body)
	}
	if m := e.mustMachine(t, "web-01"); m.DesiredGeneration != nil {
		t.Fatalf("desired %v after DELETE", *m.DesiredGeneration)
	}
	expect(t, e.desired(t, "web-01"), 404, "no desired generation")
	before := e.fingerprint(t)
	expect(t, del(e.A, "web-01"), 204, "") // idempotent, no audit row
	if after := e.fingerprint(t); after != before {
		t.Fatalf("repeated DELETE changed state:\n%s\n%s", before, after)
	}
	expect(t, del(e.A, "ghost"), 404, "machine ghost not found")
	expect(t, del(e.A, "web%2001"), 400, "invalid machine id")
	var clears []string
	for _, ev := range e.audit(t, "web-01") {
		if ev.Action == "clear_desired" {
			clears = append(clears, ev.Actor+" "+*ev.Detail)
		}
	}
	if !slices.Equal(clears, []string{"apikey:first-admin " + p1}) {
		t.Fatalf("clear_desired rows %q", clears)
	}
}

// TestNotifyDeploy covers ACC-59, ACC-60 and ACC-61 and §4.12.
func TestNotifyDeploy(t *testing.T) {
	e := newMTEnv(t)
	p0, p1, p2 := storePath('0', "sys-0"), storePath('a', "sys-1"), storePath('b', "sys-2")
	notify := func(key, id string, body any) response {
		return do(t, e.c, "POST", e.url+"/api/v1/machines/"+id+"/notify-deploy", key, body)
	}
	expect(t, e.report(t, "web-01", reportBody("web-01", p0, true, "up-to-date")), 200, "")

	t.Run("ACC-59", func(t *testing.T) {
		r := notify(e.D, "web-01", map[string]string{"store_path": p1})
		expect(t, r, 200, "")
		if len(r.body) != 0 {
			t.Errorf("body %q, want empty", r.body)
		}
		m := e.mustMachine(t, "web-01")
		if m.DesiredGeneration == nil || *m.DesiredGeneration != p1 || m.CurrentGeneration != p0 {
			t.Fatalf("machine %+v", m)
		}
		r = e.desired(t, "web-01")
		expect(t, r, 200, "")
		if got, want := strings.TrimSpace(string(r.body)), `{"hash":"`+p1+`","cache_url":null,"poll_hint":null}`; got != want {
			t.Fatalf("desired-generation %s, want %s", got, want)
		}
		if ct := r.header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		// An admin may notify too; the last one wins.
		expect(t, notify(e.A, "web-01", map[string]string{"store_path": p2}), 200, "")
		r = e.desired(t, "web-01")
		var dg desiredGeneration
		r.json(t, &dg)
		if dg.Hash != p2 || dg.CacheURL != nil || dg.PollHint != nil {
			t.Fatalf("desired %+v", dg)
		}
		var rows []string
		for _, ev := range e.audit(t, "web-01") {
			if ev.Action == "notify_deploy" {
				rows = append(rows, ev.Actor+" "+*ev.Detail)
			}
		}
		if !slices.Equal(rows, []string{"apikey:deployer " + p1, "apikey:first-admin " + p2}) {
			t.Fatalf("notify_deploy rows %q", rows)
		}
	})

	t.Run("ACC-60 unknown machine is registered", func(t *testing.T) {
		fleet := e.metric(t, "nixfleet_fleet_size")
		expect(t, notify(e.D, "ssh-01", map[string]string{"store_path": p1}), 200, "")
		m := e.mustMachine(t, "ssh-01")
		if m.Lifecycle != "active" || m.DesiredGeneration == nil || *m.DesiredGeneration != p1 || m.CurrentGeneration != "" || m.LastReport != nil {
			t.Fatalf("ssh-01 %+v", m)
		}
		want := []string{"register|apikey:deployer|active", "notify_deploy|apikey:deployer|" + p1}
		if got := e.auditSummary(t, "ssh-01"); !slices.Equal(got, want) {
			t.Fatalf("audit %q, want %q", got, want)
		}
		if got := e.metric(t, "nixfleet_fleet_size"); got != fleet+1 {
			t.Fatalf("fleet size %v -> %v", fleet, got)
		}
	})

	t.Run("served for pending, provisioning and maintenance machines", func(t *testing.T) {
		for _, lc := range []string{"pending", "provisioning", "maintenance"} {
			id := "keep-" + lc
			expect(t, e.register(t, id, map[string]any{"lifecycle": lc}), 201, "")
			expect(t, notify(e.D, id, map[string]string{"store_path": p1}), 200, "")
			r := e.desired(t, id)
			expect(t, r, 200, "")
			var dg desiredGeneration
			r.json(t, &dg)
			if dg.Hash != p1 {
				t.Fatalf("%s: desired %+v", lc, dg)
			}
			if m := e.mustMachine(t, id); m.Lifecycle != lc {
				t.Fatalf("notify-deploy changed the lifecycle to %s", m.Lifecycle)
			}
		}
	})

	t.Run("ACC-61 rejected", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			key    string
			body   any
			status int
			msg    string
		}{
			{"tmp path", e.D, map[string]string{"store_path": "/tmp/x"}, 400, "store_path: not a valid Nix store path"},
			{"31-character hash", e.D, map[string]string{"store_path": "/nix/store/" + strings.Repeat("a", 31) + "-sys"}, 400, "store_path: not a valid Nix store path"},
			{"hash with e", e.D, map[string]string{"store_path": "/nix/store/" + strings.Repeat("e", 32) + "-sys"}, 400, ""},
			{"no name", e.D, map[string]string{"store_path": "/nix/store/" + strings.Repeat("a", 32) + "-"}, 400, ""},
			{"513 bytes", e.D, map[string]string{"store_path": storePath('a', strings.Repeat("n", 513-44))}, 400, ""},
			{"missing", e.D, `{}`, 400, "store_path: required"},
			{"null", e.D, `{"store_path":null}`, 400, "store_path: required"},
			{"readonly", e.R, map[string]string{"store_path": p1}, 403, "deploy or admin role required"},
			{"anonymous", "", map[string]string{"store_path": p1}, 401, "missing API key"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before := e.fingerprint(t)
				expect(t, notify(tc.key, "ssh-99", tc.body), tc.status, tc.msg)
				if after := e.fingerprint(t); after != before {
					t.Fatalf("state changed:\n%s\n%s", before, after)
				}
				if _, ok := e.machine(t, "ssh-99"); ok {
					t.Fatal("a rejected notify-deploy registered the machine")
				}
			})
		}
		// 512 bytes is the longest valid path.
		expect(t, notify(e.D, "ssh-98", map[string]string{"store_path": storePath('a', strings.Repeat("n", 512-44))}), 200, "")
	})
}

// TestActiveRolloutConflicts covers ACC-62: notify-deploy and clearing the
// desired generation are refused for a machine in an active rollout (running
// or paused), and notify-deploy for a decommissioned machine.
func TestActiveRolloutConflicts(t *testing.T) {
	e := newMTEnv(t)
	p1, p2 := storePath('a', "sys-1"), storePath('b', "sys-2")
	for _, id := range []string{"web-01", "web-02", "web-03"} {
		expect(t, e.report(t, id, reportBody(id, p1, true, "up-to-date")), 200, "")
	}
	r := do(t, e.c, "POST", e.url+"/api/v1/releases", e.D, map[string]any{"entries": []map[string]any{
		{"hostname": "web-01", "store_path": p2, "platform": "x86_64-linux"},
		{"hostname": "web-02", "store_path": p2, "platform": "x86_64-linux"},
	}})
	expect(t, r, 201, "")
	var rel struct{ ID string }
	r.json(t, &rel)
	r = do(t, e.c, "POST", e.url+"/api/v1/rollouts", e.D, map[string]any{
		"release_id": rel.ID, "strategy": "all_at_once", "target": map[string]any{"hosts": []string{"web-01"}}})
	expect(t, r, 201, "")
	var ro createRolloutResponse
	r.json(t, &ro)
	wantMsg := "machine web-01 is in active rollout " + ro.RolloutID

	check := func(t *testing.T) {
		before := e.fingerprint(t)
		expect(t, do(t, e.c, "POST", e.url+"/api/v1/machines/web-01/notify-deploy", e.D, map[string]string{"store_path": p1}), 409, wantMsg)
		expect(t, do(t, e.c, "DELETE", e.url+"/api/v1/machines/web-01/desired-generation", e.A, nil), 409, wantMsg)
		if after := e.fingerprint(t); after != before {
			t.Fatalf("state changed:\n%s\n%s", before, after)
		}
		// Machines outside the rollout are not affected.
		expect(t, do(t, e.c, "POST", e.url+"/api/v1/machines/web-02/notify-deploy", e.D, map[string]string{"store_path": p1}), 200, "")
		expect(t, do(t, e.c, "DELETE", e.url+"/api/v1/machines/web-02/desired-generation", e.A, nil), 204, "")
	}
	t.Run("running", check)
	expect(t, do(t, e.c, "POST", e.url+"/api/v1/rollouts/"+ro.RolloutID+"/pause", e.D, nil), 200, "")
	t.Run("paused", check)
	expect(t, do(t, e.c, "POST", e.url+"/api/v1/rollouts/"+ro.RolloutID+"/cancel", e.D, nil), 200, "")
	t.Run("cancelled", func(t *testing.T) {
		expect(t, do(t, e.c, "POST", e.url+"/api/v1/machines/web-01/notify-deploy", e.D, map[string]string{"store_path": p1}), 200, "")
		expect(t, do(t, e.c, "DELETE", e.url+"/api/v1/machines/web-01/desired-generation", e.A, nil), 204, "")
	})
	t.Run("decommissioned", func(t *testing.T) {
		expect(t, e.patch(t, "web-03", "decommissioned"), 200, "")
		before := e.fingerprint(t)
		expect(t, do(t, e.c, "POST", e.url+"/api/v1/machines/web-03/notify-deploy", e.D, map[string]string{"store_path": p1}), 409,
			"machine web-03 is decommissioned")
		if after := e.fingerprint(t); after != before {
			t.Fatalf("state changed:\n%s\n%s", before, after)
		}
	})
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
		if !mtSameStatus(after[i], before[i]) {
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

// mtOpenDB opens the database file with database/sql (modernc driver), for
// checks and writes beside a server or after it has stopped.
func mtOpenDB(t testing.TB, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}
