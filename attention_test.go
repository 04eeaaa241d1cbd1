package main

// Tests for stale and drifted machines and the attention reason (attention.go), over real HTTP and a real SQLite
// file, with the test server's fake clock standing in for time (default --stale-after 4m, --drift-grace 10m).

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// attIDs returns the machine ids of GET /api/v1/machines?query.
func attIDs(t *testing.T, e *testEnv, query string) []string {
	t.Helper()
	var ids []string
	for _, m := range listMachinesT(t, e.c, e.url, e.R, query) {
		ids = append(ids, m.MachineID)
	}
	return ids
}

func attWantIDs(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s: %v, want %v", what, got, want)
	}
}

// TestStaleMachines: the stale field, the ?stale filter and the gauge follow the fake clock; pending and
// decommissioned machines are never stale; a machine that never reported is stale once its registration is older
// than --stale-after; a report makes a machine fresh again.
func TestStaleMachines(t *testing.T) {
	e := newTestEnv(t)
	gen := storePath('a', "nixos-system-web")
	start := e.ts.clock.now().UnixMilli()
	expect(t, e.register(t, "pend-01", map[string]any{"lifecycle": "pending"}), 201, "")
	expect(t, e.register(t, "prov-01", map[string]any{"lifecycle": "provisioning"}), 201, "")
	expect(t, e.register(t, "quiet-01", nil), 201, "") // active, never reports
	expect(t, e.register(t, "gone-01", nil), 201, "")
	expect(t, e.patch(t, "gone-01", "decommissioned"), 200, "")
	expect(t, e.register(t, "maint-01", nil), 201, "")
	expect(t, e.report(t, "maint-01", reportBody("maint-01", gen, true, "up-to-date")), 200, "")
	expect(t, e.patch(t, "maint-01", "maintenance"), 200, "")
	expect(t, e.report(t, "web-01", reportBody("web-01", gen, true, "up-to-date")), 200, "")
	expect(t, e.report(t, "web-02", reportBody("web-02", gen, true, "up-to-date")), 200, "")

	attWantIDs(t, "stale=true at start", attIDs(t, e, "?stale=true"))
	if v := e.metric(t, "nixfleet_machines_stale"); v != 0 {
		t.Fatalf("nixfleet_machines_stale = %v at start, want 0", v)
	}

	// Exactly --stale-after is not yet stale: "older than".
	e.ts.clock.advance(4 * time.Minute)
	attWantIDs(t, "stale=true at exactly 4m", attIDs(t, e, "?stale=true"))

	e.ts.clock.advance(time.Millisecond)
	expect(t, e.report(t, "web-02", reportBody("web-02", gen, true, "up-to-date")), 200, "") // web-02 stays fresh
	attWantIDs(t, "stale=true after 4m", attIDs(t, e, "?stale=true"), "maint-01", "prov-01", "quiet-01", "web-01")
	attWantIDs(t, "stale=false after 4m", attIDs(t, e, "?stale=false"), "gone-01", "pend-01", "web-02")
	if v := e.metric(t, "nixfleet_machines_stale"); v != 4 {
		t.Fatalf("nixfleet_machines_stale = %v, want 4", v)
	}
	m := e.mustMachine(t, "web-01")
	if !m.Stale || m.Attention != "no report since "+fmtTime(start) {
		t.Fatalf("web-01: stale %v attention %q", m.Stale, m.Attention)
	}
	m = e.mustMachine(t, "quiet-01")
	if !m.Stale || m.Attention != "no report since registration at "+fmtTime(start) {
		t.Fatalf("quiet-01: stale %v attention %q", m.Stale, m.Attention)
	}
	for _, id := range []string{"web-02", "pend-01", "gone-01"} {
		if m := e.mustMachine(t, id); m.Stale || m.Attention != "" {
			t.Fatalf("%s: stale %v attention %q, want neither", id, m.Stale, m.Attention)
		}
	}

	// The filters combine with the others (AND).
	attWantIDs(t, "stale and lifecycle", attIDs(t, e, "?stale=true&lifecycle=active"), "quiet-01", "web-01")
	attWantIDs(t, "stale=true&stale=false takes the first", attIDs(t, e, "?stale=true&stale=false&limit=1"), "maint-01")

	// A report makes the machine fresh; a pending machine stays never stale however long it waits.
	expect(t, e.report(t, "web-01", reportBody("web-01", gen, true, "up-to-date")), 200, "")
	e.ts.clock.advance(24 * time.Hour)
	expect(t, e.report(t, "web-01", reportBody("web-01", gen, true, "up-to-date")), 200, "")
	if m := e.mustMachine(t, "web-01"); m.Stale {
		t.Fatal("web-01 is stale right after a report")
	}
	if m := e.mustMachine(t, "pend-01"); m.Stale {
		t.Fatal("a pending machine is stale")
	}

	for _, q := range []string{"?stale=yes", "?stale=", "?stale=TRUE", "?stale=1", "?drifted=no"} {
		r := do(t, e.c, "GET", e.url+"/api/v1/machines"+q, e.R, nil)
		name := "stale"
		if q == "?drifted=no" {
			name = "drifted"
		}
		expect(t, r, 400, name+": must be true or false")
	}
}

// TestDriftedMachines: a machine is drifted when its reported generation differs from its desired one for longer
// than --drift-grace; not while it is in an unfinished batch of a running rollout; the attention reason puts a
// stale machine first, then a failed last report, then the drift.
func TestDriftedMachines(t *testing.T) {
	e := newTestEnv(t)
	old, want := storePath('a', "nixos-system-web-01-old"), storePath('b', "nixos-system-web-01-new")
	keepAlive := func(gen string) { // reports often enough never to be stale
		t.Helper()
		expect(t, e.report(t, "web-01", reportBody("web-01", gen, true, "up-to-date")), 200, "")
	}
	keepAlive(old)
	e.ts.clock.advance(time.Second)
	expect(t, do(t, e.c, "POST", e.url+"/api/v1/machines/web-01/notify-deploy", e.A, map[string]any{"store_path": want}), 200, "")
	setAt := e.ts.clock.now().UnixMilli()
	keepAlive(old) // the agent has not switched

	for range 3 { // 9 minutes: inside the grace period
		e.ts.clock.advance(3 * time.Minute)
		keepAlive(old)
	}
	if m := e.mustMachine(t, "web-01"); m.Drifted || m.Attention != "" {
		t.Fatalf("inside the grace period: drifted %v attention %q", m.Drifted, m.Attention)
	}
	e.ts.clock.advance(61 * time.Second)
	m := e.mustMachine(t, "web-01")
	wantReason := "running " + old + " but desired " + want + " since " + fmtTime(setAt)
	if !m.Drifted || m.Stale || m.Attention != wantReason {
		t.Fatalf("after the grace period: drifted %v stale %v attention %q, want %q", m.Drifted, m.Stale, m.Attention, wantReason)
	}
	attWantIDs(t, "drifted=true", attIDs(t, e, "?drifted=true"), "web-01")
	attWantIDs(t, "drifted=false", attIDs(t, e, "?drifted=false"))
	if v := e.metric(t, "nixfleet_machines_drifted"); v != 1 {
		t.Fatalf("nixfleet_machines_drifted = %v, want 1", v)
	}

	// A failed report outranks the drift; silence outranks both.
	expect(t, e.report(t, "web-01", reportBody("web-01", old, false, "rolled back: switch failed")), 200, "")
	if m := e.mustMachine(t, "web-01"); !m.Drifted || m.Attention != "last report failed: rolled back: switch failed" {
		t.Fatalf("after a failed report: drifted %v attention %q", m.Drifted, m.Attention)
	}
	e.ts.clock.advance(5 * time.Minute)
	if m := e.mustMachine(t, "web-01"); !m.Drifted || !m.Stale || !strings.HasPrefix(m.Attention, "no report since ") {
		t.Fatalf("silent: drifted %v stale %v attention %q", m.Drifted, m.Stale, m.Attention)
	}

	// Reporting the desired generation ends the drift at once.
	keepAlive(want)
	if m := e.mustMachine(t, "web-01"); m.Drifted || m.Attention != "" {
		t.Fatalf("on the desired generation: drifted %v attention %q", m.Drifted, m.Attention)
	}
	if v := e.metric(t, "nixfleet_machines_drifted"); v != 0 {
		t.Fatalf("nixfleet_machines_drifted = %v, want 0", v)
	}

	// A switch away starts a new mismatch, dated by the report that showed it.
	e.ts.clock.advance(time.Minute)
	keepAlive(old)
	away := e.ts.clock.now().UnixMilli()
	e.ts.clock.advance(3 * time.Minute)
	keepAlive(old)
	e.ts.clock.advance(3 * time.Minute)
	keepAlive(old)
	e.ts.clock.advance(3 * time.Minute)
	keepAlive(old)
	e.ts.clock.advance(time.Minute + time.Second)
	if m := e.mustMachine(t, "web-01"); !m.Drifted || m.Attention != "running "+old+" but desired "+want+" since "+fmtTime(away) {
		t.Fatalf("after a switch away: drifted %v attention %q", m.Drifted, m.Attention)
	}
}

// TestDriftNotDuringRollout: a machine in an unfinished batch of a running rollout is never drifted, however long
// its batch waits; once the rollout is paused it is.
func TestDriftNotDuringRollout(t *testing.T) {
	e := newTestEnv(t)
	old := storePath('a', "nixos-system-web-01-old")
	relRegister(t, e, "web-01")
	expect(t, e.report(t, "web-01", reportBody("web-01", old, true, "up-to-date")), 200, "")
	rel := relCreate(t, e, e.D, map[string]any{"entries": []any{relEntry("web-01", 'b')}})
	rid := relRollout(t, e, rel, map[string]any{"health_timeout": 86400}, "web-01")
	e.ts.pass(context.Background()) // deploy: the desired generation is the release's
	for range 10 {
		e.ts.clock.advance(3 * time.Minute)
		expect(t, e.report(t, "web-01", reportBody("web-01", old, true, "applying")), 200, "")
		e.ts.pass(context.Background())
	}
	if m := e.mustMachine(t, "web-01"); m.Drifted || m.DesiredGeneration == nil {
		t.Fatalf("in a running batch: drifted %v desired %v", m.Drifted, m.DesiredGeneration)
	}
	expect(t, do(t, e.c, "POST", e.url+"/api/v1/rollouts/"+rid+"/pause", e.D, nil), 200, "")
	if m := e.mustMachine(t, "web-01"); !m.Drifted {
		t.Fatalf("paused rollout: not drifted (attention %q)", m.Attention)
	}
}

// TestDriftAcrossRestart documents what a restart does: the mismatch start is not stored, so after a restart it is
// dated from the desired generation's set_at (here 5 minutes before the first report that showed it).
func TestDriftAcrossRestart(t *testing.T) {
	db := filepath.Join(t.TempDir(), "state.db")
	ts := newTestServer(t, testServerOptions{dbPath: db})
	c := ts.client("")
	A := bootstrapKey(t, c, ts.url)
	old, want := storePath('a', "nixos-system-web-01-old"), storePath('b', "nixos-system-web-01-new")
	expect(t, do(t, c, "POST", ts.url+"/api/v1/machines/web-01/notify-deploy", A, map[string]any{"store_path": want}), 200, "")
	setAt := ts.clock.now().UnixMilli()
	ts.clock.advance(5 * time.Minute)
	expect(t, do(t, c, "POST", ts.url+"/api/v1/machines/web-01/report", "", reportBody("web-01", old, true, "up-to-date")), 200, "")
	expect(t, do(t, c, "POST", ts.url+"/api/v1/machines/web-02/report", "", reportBody("web-02", old, false, "rolled back: oops")), 200, "")
	ts.ts.Close()
	if err := ts.close(); err != nil {
		t.Fatal(err)
	}

	ts2 := newTestServer(t, testServerOptions{dbPath: db}) // its clock starts again at setAt
	c2 := ts2.client("")
	// The failed report's message is read back from the database.
	if ms := listMachinesT(t, c2, ts2.url, A, "?after=web-01"); len(ms) != 1 || ms[0].Attention != "last report failed: rolled back: oops" {
		t.Fatalf("web-02 after a restart: %+v", ms)
	}
	ts2.clock.advance(10*time.Minute + time.Second) // 5m01s after the first report, 10m01s after set_at
	expect(t, do(t, c2, "POST", ts2.url+"/api/v1/machines/web-01/report", "", reportBody("web-01", old, true, "up-to-date")), 200, "")
	ms := listMachinesT(t, c2, ts2.url, A, "?drifted=true")
	if len(ms) != 1 || ms[0].Attention != "running "+old+" but desired "+want+" since "+fmtTime(setAt) {
		t.Fatalf("after a restart: %+v", ms)
	}
}

// TestStaleHealthTimeoutReason: a machine of a batch under evaluation that went silent is not failed any earlier
// than before (it stays pending until the health timeout), and the timeout's reason names the silence.
func TestStaleHealthTimeoutReason(t *testing.T) {
	e := rtNewExecEnv(t)
	e.register("web-01", "web-02")
	rel := e.release(nil, "web-01", "web-02")
	e.report(reportBody("web-01", rtOldPath("web-01"), true, "up-to-date"))
	lastReport := e.nowStr()
	rid := e.create(rtHostsRollout(rel, "all_at_once", "web-01", "web-02")).RolloutID
	e.advance(time.Second)
	e.pass()
	e.advance(4*time.Minute + time.Second) // web-01 is stale now, and the batch still waits
	e.pass()
	if got := rtMachineHealth(t, e.detail(rid), "web-01"); got != "pending" {
		t.Fatalf("stale before the timeout: %s, want pending", got)
	}
	e.healthy("web-02")
	e.advance(time.Minute)
	e.pass()
	d := e.detail(rid)
	if got := rtMachineHealth(t, d, "web-01"); got != "unhealthy:health timeout after 300s: no report since "+lastReport {
		t.Fatalf("web-01 at the timeout: %s", got)
	}
	if got := d.Batches[0].Status; got != "failed" {
		t.Fatalf("batch %s, want failed", got)
	}
}
