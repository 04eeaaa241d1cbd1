package main

// Tests for the machine routes (machines.go): the machine list (ACC-48 …
// ACC-50), register, lifecycle, tags, clearing the desired generation and
// notify-deploy (ACC-51 … ACC-62), the lifecycle table (§7.2) and
// decommissioning (§7.3). The agent protocol is in reports_test.go.

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// TestListMachines covers ACC-48, ACC-49 and ACC-50, and the query rules of
// §2.4 for the list.
func TestListMachines(t *testing.T) {
	e := newTestEnv(t)
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
	e := newTestEnv(t)
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
		{"65 tags", "web-04", map[string]any{"tags": numberedTags(65)}, want{400, "", nil, nil}},
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
				if m, ok := e.machine(t, s.id); ok != existed || ok && !sameMachineStatus(m, old) {
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
	e := newTestEnv(t)
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
	e := newTestEnv(t)
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
	e := newTestEnv(t)
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
	if n := countRows(t, e.ts, "SELECT count(*) FROM desired_generation WHERE machine_id = 'web-01'"); n != 0 {
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
	e := newTestEnv(t)
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
		{"65 tags", e.A, map[string]any{"tags": numberedTags(65)}, "web-01", 400, ""},
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
	r = put(e.A, map[string]any{"tags": append(numberedTags(64), "t00")}) // 64 distinct
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
	e := newTestEnv(t)
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
	e := newTestEnv(t)
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
	e := newTestEnv(t)
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

// TestGetMachine covers GET /api/v1/machines/{id} (beyond SPEC §4.1): any
// role gets the one MachineStatus the list shows, whatever the lifecycle; an
// unknown id is a 404 naming it, an invalid id a 400, and no key a 401.
func TestGetMachine(t *testing.T) {
	e := newTestEnv(t)
	expect(t, e.report(t, "web-01", healthBody("web-01", storePath('a', "sys"))), 200, "")
	expect(t, e.register(t, "db-01", map[string]any{"lifecycle": "pending", "tags": []string{"db"}}), 201, "")
	for _, id := range []string{"web-01", "db-01"} {
		for _, key := range []string{e.R, e.D, e.A} {
			r := do(t, e.c, "GET", e.url+"/api/v1/machines/"+id, key, nil)
			expect(t, r, 200, "")
			var got machineStatus
			r.json(t, &got)
			if want := e.mustMachine(t, id); !sameMachineStatus(got, want) {
				t.Fatalf("GET %s: %+v, want the listed %+v", id, got, want)
			}
		}
	}
	expect(t, do(t, e.c, "GET", e.url+"/api/v1/machines/ghost-01", e.R, nil), 404, "machine ghost-01 not found")
	r := do(t, e.c, "GET", e.url+"/api/v1/machines/web%2A01", e.R, nil)
	if r.status != 400 || !strings.Contains(r.errMsg(t), "machine id") {
		t.Fatalf("invalid id: %d %s", r.status, r.body)
	}
	authExpect401(t, do(t, e.c, "GET", e.url+"/api/v1/machines/web-01", "", nil), "missing API key")
}
