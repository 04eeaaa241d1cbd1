package main

// Rollout routes through the real HTTP stack (rollout_actions.go, §4.18–§4.24,
// §9.1, §9.9, ACC-72–83, ACC-99–104, ACC-115): create, list and get, pause,
// resume, cancel and delete, with their events, audit rows and metrics.

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"sync"
	"testing"
	"time"
)

var rtRolloutIDRE = regexp.MustCompile(`^r-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// TestRolloutCreateValidationACC72to76 checks the 400s and 404 of
// POST /api/v1/rollouts (§5.5, §9.1 step 1, §2.7).
func TestRolloutCreateValidationACC72to76(t *testing.T) {
	a := rtNewAPI(t)
	rtRegister(t, a.c, a.url, a.A, "web-01")
	rel := rtRelease(t, a.c, a.url, a.D, nil, rtRelPath, "web-01")
	base := func() map[string]any {
		return map[string]any{"release_id": rel, "strategy": "all_at_once", "target": map[string]any{"hosts": []string{"web-01"}}}
	}
	with := func(kv ...any) map[string]any {
		b := base()
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "<absent>" {
				delete(b, kv[i].(string))
			} else {
				b[kv[i].(string)] = kv[i+1]
			}
		}
		return b
	}
	t.Run("ACC-72 unknown release", func(t *testing.T) {
		r := a.post(t, "/api/v1/rollouts", a.D, with("release_id", "rel-ghost", "target", map[string]any{"tags": []string{"nomatch"}}))
		expect(t, r, 404, "release rel-ghost not found")
	})
	bad := []struct {
		name string
		body any
		msg  string // "" for any message
	}{
		{"ACC-73 empty tags", with("target", map[string]any{"tags": []string{}}), ""},
		{"ACC-73 empty target", with("target", map[string]any{}), ""},
		{"ACC-73 tags and hosts", with("target", map[string]any{"tags": []string{"web"}, "hosts": []string{"web-01"}}), ""},
		{"ACC-73 empty hosts", with("target", map[string]any{"hosts": []string{}}), ""},
		{"ACC-73 null target", with("target", nil), "target: required"},
		{"ACC-73 absent target", with("target", "<absent>"), "target: required"},
		{"ACC-73 strategy all-at-once", with("strategy", "all-at-once"), ""},
		{"ACC-73 strategy absent", with("strategy", "<absent>"), "strategy: required"},
		{"ACC-73 on_failure ignore", with("on_failure", "ignore"), ""},
		{"release_id absent", with("release_id", "<absent>"), "release_id: required"},
		{"bad host id", with("target", map[string]any{"hosts": []string{"bad host"}}), ""},
		{"bad tag", with("target", map[string]any{"tags": []string{"bad tag"}}), ""},
		{"ACC-74 threshold foo", with("failure_threshold", "foo"), ""},
		{"ACC-74 threshold 150%", with("failure_threshold", "150%"), ""},
		{"ACC-74 threshold -1", with("failure_threshold", "-1"), ""},
		{"ACC-74 threshold as a number", with("failure_threshold", 1), ""},
		{"ACC-75 batch_sizes 0", with("strategy", "staged", "batch_sizes", []string{"0"}), ""},
		{"ACC-75 batch_sizes abc", with("strategy", "staged", "batch_sizes", []string{"abc"}), ""},
		{"ACC-75 batch_sizes 0%", with("strategy", "staged", "batch_sizes", []string{"0%"}), ""},
		{"ACC-75 batch_sizes 0 with canary", with("strategy", "canary", "batch_sizes", []string{"0"}), ""},
		{"ACC-75 batch_sizes abc with canary", with("strategy", "canary", "batch_sizes", []string{"abc"}), ""},
		{"ACC-75 batch_sizes 0% with canary", with("strategy", "canary", "batch_sizes", []string{"0%"}), ""},
		{"ACC-75 batch_sizes 101%", with("strategy", "staged", "batch_sizes", []string{"101%"}), ""},
		{"ACC-75 101 batch sizes", with("strategy", "staged", "batch_sizes", slices.Repeat([]string{"1"}, 101)), ""},
		{"ACC-76 health_timeout 0", with("health_timeout", 0), ""},
		{"ACC-76 health_timeout 86401", with("health_timeout", 86401), ""},
		{"ACC-76 soak_seconds -1", with("soak_seconds", -1), ""},
		{"soak_seconds 86401", with("soak_seconds", 86401), ""},
		{"health_timeout 1.5", with("health_timeout", 1.5), ""},
		{"bad cache_url", with("cache_url", "not a url"), ""},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			expect(t, a.post(t, "/api/v1/rollouts", a.D, tc.body), 400, tc.msg)
		})
	}
	if n := len(auditRows(t, a.c, a.url, a.A, "?action=rollout.created")); n != 0 {
		t.Fatalf("rejected creates wrote %d audit rows", n)
	}
	good := []struct {
		name   string
		body   map[string]any
		check  func(t *testing.T, d rolloutDetail)
		strict map[string]string // raw JSON values of the detail
	}{
		{"ACC-74 threshold 0", with("failure_threshold", "0"), nil, map[string]string{"failure_threshold": `"0"`}},
		{"ACC-74 threshold 3", with("failure_threshold", "3"), nil, map[string]string{"failure_threshold": `"3"`}},
		{"ACC-74 threshold 30%", with("failure_threshold", "30%"), nil, map[string]string{"failure_threshold": `"30%"`}},
		{"ACC-76 defaults", base(), nil, map[string]string{
			"health_timeout": "300", "soak_seconds": "0", "failure_threshold": `"0"`, "on_failure": `"pause"`,
			"cache_url": "null", "batch_sizes": `["100%"]`, "target": `{"hosts":["web-01"]}`,
		}},
		{"limits", with("health_timeout", 86400, "soak_seconds", 86400, "on_failure", "revert", "cache_url", "https://c.example.org"), nil,
			map[string]string{"health_timeout": "86400", "soak_seconds": "86400", "on_failure": `"revert"`, "cache_url": `"https://c.example.org"`}},
		{"ACC-13 unknown key ignored and nulls absent", with("policy", nil, "failure_threshold", nil, "soak_seconds", nil), nil,
			map[string]string{"failure_threshold": `"0"`, "soak_seconds": "0"}},
		{"staged batch_sizes stored", with("strategy", "staged", "batch_sizes", []string{"1", "10%", "100%"}), nil,
			map[string]string{"batch_sizes": `["1","10%","100%"]`, "strategy": `"staged"`}},
		{"canary effective sizes", with("strategy", "canary", "batch_sizes", []string{"5"}), nil,
			map[string]string{"batch_sizes": `["1","100%"]`}},
	}
	for _, tc := range good {
		t.Run(tc.name, func(t *testing.T) {
			cr := rtCreate(t, a.c, a.url, a.D, tc.body)
			r := do(t, a.c, "GET", a.url+"/api/v1/rollouts/"+cr.RolloutID, a.R, nil)
			expect(t, r, 200, "")
			var raw map[string]json.RawMessage
			r.json(t, &raw)
			for k, want := range tc.strict {
				if got := string(raw[k]); got != want {
					t.Errorf("%s = %s, want %s", k, got, want)
				}
			}
			expect(t, a.post(t, "/api/v1/rollouts/"+cr.RolloutID+"/cancel", a.D, nil), 200, "")
		})
	}
}

// TestRolloutCreateTargetsACC77to80 checks target resolution (§9.1 steps
// 4–6): skipped machines and their reasons, the "no machines" 400s and the
// 409 for a machine in an active rollout.
func TestRolloutCreateTargetsACC77to80(t *testing.T) {
	a := rtNewAPI(t)
	rtRegister(t, a.c, a.url, a.A, "web-01", "web-02", "web-03", "web-04", "web-05")
	expect(t, do(t, a.c, "POST", a.url+"/api/v1/machines/db-01/register", a.A, map[string]any{"tags": []string{"db"}}), 201, "")
	rtLifecycle(t, a.c, a.url, a.A, "web-02", "maintenance")
	expect(t, do(t, a.c, "POST", a.url+"/api/v1/machines/web-06/register", a.A, map[string]any{"lifecycle": "pending", "tags": []string{"web"}}), 201, "")
	rtLifecycle(t, a.c, a.url, a.A, "web-05", "decommissioned")
	rel := rtRelease(t, a.c, a.url, a.D, nil, rtRelPath, "web-01", "web-02", "web-05", "web-06", "db-01")

	t.Run("ACC-77 no active tag match", func(t *testing.T) {
		r := a.post(t, "/api/v1/rollouts", a.D, map[string]any{"release_id": rel, "strategy": "canary", "target": map[string]any{"tags": []string{"nomatch"}}})
		expect(t, r, 400, "no active machines match the target")
	})
	t.Run("ACC-77 hosts naming only a maintenance machine", func(t *testing.T) {
		r := a.post(t, "/api/v1/rollouts", a.D, rtHostsRollout(rel, "canary", "web-02"))
		expect(t, r, 400, "no active machines match the target")
	})
	t.Run("no machine in both target and release", func(t *testing.T) {
		r := a.post(t, "/api/v1/rollouts", a.D, rtHostsRollout(rel, "canary", "web-03"))
		expect(t, r, 400, "no machines match both the target and release "+rel)
	})
	t.Run("ACC-78 hosts with unknown, maintenance and duplicates", func(t *testing.T) {
		r := a.post(t, "/api/v1/rollouts", a.D, rtHostsRollout(rel, "canary", "web-01", "ghost", "web-02", "web-01"))
		expect(t, r, 201, "")
		if !bytes.Contains(r.body, []byte(`"skipped":[{"machine_id":"ghost","reason":"not registered"},{"machine_id":"web-02","reason":"lifecycle maintenance"}]`)) {
			t.Fatalf("body %s", r.body)
		}
		var cr createRolloutResponse
		r.json(t, &cr)
		if cr.TotalMachines != 1 || len(cr.Batches) != 1 || !slices.Equal(cr.Batches[0].MachineIDs, []string{"web-01"}) {
			t.Fatalf("%+v", cr)
		}
		wantStrings := rtAudit(t, a.c, a.url, a.A, "?target="+cr.RolloutID)
		rtWantStrings(t, "audit", wantStrings, []string{
			fmt.Sprintf("rollout.created|apikey:deployer|%s|strategy=canary machines=1 batches=1 skipped=2", cr.RolloutID),
		})
		expect(t, a.post(t, "/api/v1/rollouts/"+cr.RolloutID+"/cancel", a.D, nil), 200, "")
	})
	t.Run("ACC-79 tag target: lifecycles and not in release", func(t *testing.T) {
		cr := rtCreate(t, a.c, a.url, a.D, map[string]any{"release_id": rel, "strategy": "all_at_once", "target": map[string]any{"tags": []string{"web"}}})
		want := []skippedMachine{
			{"web-02", "lifecycle maintenance"}, {"web-03", "not in release"}, {"web-04", "not in release"}, {"web-06", "lifecycle pending"},
		}
		if !slices.Equal(cr.Skipped, want) || cr.TotalMachines != 1 || !slices.Equal(cr.Batches[0].MachineIDs, []string{"web-01"}) {
			t.Fatalf("%+v", cr)
		}
		expect(t, a.post(t, "/api/v1/rollouts/"+cr.RolloutID+"/cancel", a.D, nil), 200, "")
	})
	t.Run("ACC-80 conflict names the smallest machine and the rollout", func(t *testing.T) {
		cr := rtCreate(t, a.c, a.url, a.D, rtHostsRollout(rel, "all_at_once", "web-01", "db-01"))
		for _, hosts := range [][]string{{"web-01"}, {"web-01", "db-01"}, {"db-01", "web-01"}} {
			r := a.post(t, "/api/v1/rollouts", a.D, rtHostsRollout(rel, "canary", hosts...))
			expect(t, r, 409, fmt.Sprintf("machine %s is in active rollout %s", slices.Min(hosts), cr.RolloutID))
		}
		expect(t, a.post(t, "/api/v1/rollouts/"+cr.RolloutID+"/pause", a.D, nil), 200, "")
		expect(t, a.post(t, "/api/v1/rollouts", a.D, rtHostsRollout(rel, "canary", "web-01")), 409,
			fmt.Sprintf("machine web-01 is in active rollout %s", cr.RolloutID))
		expect(t, a.post(t, "/api/v1/rollouts/"+cr.RolloutID+"/cancel", a.D, nil), 200, "")
		cr2 := rtCreate(t, a.c, a.url, a.D, rtHostsRollout(rel, "canary", "web-01"))
		expect(t, a.post(t, "/api/v1/rollouts/"+cr2.RolloutID+"/cancel", a.D, nil), 200, "")
	})
}

// TestRolloutConcurrentCreatesACC81 sends two creates over the same machine
// at once, 20 rounds: each round gives exactly one 201 and one 409 (§9.1
// step 2).
func TestRolloutConcurrentCreatesACC81(t *testing.T) {
	a := rtNewAPI(t)
	rtRegister(t, a.c, a.url, a.A, "web-01", "web-02", "web-03")
	rel := rtRelease(t, a.c, a.url, a.D, nil, rtRelPath, "web-01", "web-02", "web-03")
	bodies := []map[string]any{
		rtHostsRollout(rel, "all_at_once", "web-01", "web-02"),
		{"release_id": rel, "strategy": "canary", "target": map[string]any{"tags": []string{"web"}}},
	}
	for round := range 20 {
		var wg sync.WaitGroup
		start := make(chan struct{})
		status := make([]int, 2)
		body := make([][]byte, 2)
		errs := make([]error, 2)
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				status[i], body[i], errs[i] = tryDo(a.c, "POST", a.url+"/api/v1/rollouts", a.D, bodies[i])
			}()
		}
		close(start)
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		slices.Sort(status)
		if !slices.Equal(status, []int{201, 409}) {
			t.Fatalf("round %d: statuses %v: %s / %s", round, status, body[0], body[1])
		}
		var rid string
		for _, b := range body {
			var cr createRolloutResponse
			if json.Unmarshal(b, &cr) == nil && cr.RolloutID != "" {
				rid = cr.RolloutID
			}
		}
		for _, b := range body {
			if bytes.Contains(b, []byte(`"error"`)) && !bytes.Contains(b, []byte("is in active rollout "+rid)) {
				t.Fatalf("round %d: 409 body %s does not name %s", round, b, rid)
			}
		}
		var active []rolloutDetail
		do(t, a.c, "GET", a.url+"/api/v1/rollouts?status=running", a.R, nil).json(t, &active)
		if len(active) != 1 || active[0].ID != rid {
			t.Fatalf("round %d: running rollouts %d", round, len(active))
		}
		expect(t, a.post(t, "/api/v1/rollouts/"+rid+"/cancel", a.D, nil), 200, "")
	}
}

// TestRolloutCreateResponseACC82and83 checks the 201 body (§5.5) and the
// batch plans of ACC-83.
func TestRolloutCreateResponseACC82and83(t *testing.T) {
	a := rtNewAPI(t, "--executor-interval", "1m") // the executor stays out of the way
	var ms []string
	for i := 1; i <= 20; i++ {
		ms = append(ms, fmt.Sprintf("web-%02d", i))
	}
	rtRegister(t, a.c, a.url, a.A, ms...)
	rel := rtRelease(t, a.c, a.url, a.D, nil, rtRelPath, ms...)
	cases := []struct {
		name     string
		hosts    []string
		strategy string
		sizes    []string
		want     []int
		eff      []string // the batch_sizes echoed in the response (§9.2's effective sizes)
	}{
		{"canary over 5", ms[:5], "canary", nil, []int{1, 4}, []string{"1", "100%"}},
		{"all_at_once over 3", ms[:3], "all_at_once", nil, []int{3}, []string{"100%"}},
		{"staged 1,25%,100% over 20", ms, "staged", []string{"1", "25%", "100%"}, []int{1, 5, 14}, []string{"1", "25%", "100%"}},
		{"staged without batch_sizes over 4", ms[:4], "staged", nil, []int{4}, []string{"100%"}},
		{"staged with [] over 2", ms[4:6], "staged", []string{}, []int{2}, []string{"100%"}},
	}
	for _, tc := range cases {
		t.Run("ACC-83 "+tc.name, func(t *testing.T) {
			body := rtHostsRollout(rel, tc.strategy, tc.hosts...)
			if tc.sizes != nil {
				body["batch_sizes"] = tc.sizes
			}
			r := a.post(t, "/api/v1/rollouts", a.D, body)
			expect(t, r, 201, "")
			if !bytes.Contains(r.body, []byte(`"skipped":[]`)) {
				t.Fatalf("ACC-82: body lacks \"skipped\":[]: %s", r.body)
			}
			var cr createRolloutResponse
			r.json(t, &cr)
			if !rtRolloutIDRE.MatchString(cr.RolloutID) || len(cr.RolloutID) != 38 {
				t.Fatalf("rollout_id %q", cr.RolloutID)
			}
			if !slices.Equal(cr.BatchSizes, tc.eff) {
				t.Fatalf("batch_sizes %q, want %q", cr.BatchSizes, tc.eff)
			}
			var sizes []int
			var all []string
			for i, b := range cr.Batches {
				if b.BatchIndex != i || b.Status != "pending" || !slices.IsSorted(b.MachineIDs) {
					t.Fatalf("batch %d: %+v", i, b)
				}
				sizes = append(sizes, len(b.MachineIDs))
				all = append(all, b.MachineIDs...)
			}
			slices.Sort(all)
			if !slices.Equal(sizes, tc.want) || !slices.Equal(all, tc.hosts) || cr.TotalMachines != len(tc.hosts) {
				t.Fatalf("sizes %v (want %v), machines %v", sizes, tc.want, all)
			}
			d := rtDetail(t, a.c, a.url, a.R, cr.RolloutID)
			if d.Status != "running" || d.CreatedBy != "apikey:deployer" || !outputTimeRE.MatchString(d.CreatedAt) {
				t.Fatalf("detail %s %s %s", d.Status, d.CreatedBy, d.CreatedAt)
			}
			// The creation woke the executor, so batch 0 may already have started.
			if evs := rtEvents(t, d); evs[0] != fmt.Sprintf(`status_change|apikey:deployer|{"from":"created","to":"running","strategy":"%s"}`, tc.strategy) {
				t.Fatalf("first event %s", evs[0])
			}
			for i, b := range d.Batches {
				if !slices.Equal(b.MachineIDs, cr.Batches[i].MachineIDs) || b.ID != fmt.Sprintf("%s-b%d", cr.RolloutID, i) {
					t.Fatalf("detail batch %d differs from the plan", i)
				}
				for _, m := range b.MachineIDs {
					if rtHealthOf(t, b.MachineHealth[m]) != "pending" {
						t.Fatalf("%s not pending", m)
					}
				}
			}
			expect(t, a.post(t, "/api/v1/rollouts/"+cr.RolloutID+"/cancel", a.D, nil), 200, "")
		})
	}
}

// TestRolloutListAndGetACC103and104 checks GET /api/v1/rollouts and
// GET /api/v1/rollouts/{id} (§4.19, §4.20).
func TestRolloutListAndGetACC103and104(t *testing.T) {
	a := rtNewAPI(t)
	rtRegister(t, a.c, a.url, a.A, "web-01", "web-02", "web-03")
	rel := rtRelease(t, a.c, a.url, a.D, nil, rtRelPath, "web-01", "web-02", "web-03")
	r1 := rtCreate(t, a.c, a.url, a.D, rtHostsRollout(rel, "all_at_once", "web-01")).RolloutID
	expect(t, a.post(t, "/api/v1/rollouts/"+r1+"/cancel", a.D, nil), 200, "")
	body := rtHostsRollout(rel, "all_at_once", "web-02")
	body["failure_threshold"] = "30%"
	body["soak_seconds"] = 7
	r2 := rtCreate(t, a.c, a.url, a.D, body).RolloutID
	r3 := rtCreate(t, a.c, a.url, a.D, rtHostsRollout(rel, "all_at_once", "web-03")).RolloutID
	expect(t, a.post(t, "/api/v1/rollouts/"+r3+"/pause", a.D, nil), 200, "")
	a.waitBatch(t, r2, 0, "waiting_health")

	list := func(q string) []map[string]json.RawMessage {
		r := do(t, a.c, "GET", a.url+"/api/v1/rollouts"+q, a.R, nil)
		expect(t, r, 200, "")
		var out []map[string]json.RawMessage
		r.json(t, &out)
		return out
	}
	ids := func(items []map[string]json.RawMessage) []string {
		var out []string
		for _, it := range items {
			var id string
			json.Unmarshal(it["id"], &id)
			out = append(out, id)
			if string(it["events"]) != "[]" {
				t.Fatalf("ACC-103: list item %s has events %s", id, it["events"])
			}
		}
		return out
	}
	rtWantStrings(t, "all, newest first", ids(list("")), []string{r3, r2, r1})
	rtWantStrings(t, "running", ids(list("?status=running")), []string{r2})
	rtWantStrings(t, "paused", ids(list("?status=paused")), []string{r3})
	rtWantStrings(t, "cancelled", ids(list("?status=cancelled")), []string{r1})
	// ACC-103, §4.19: a value that is not a rollout status is a 400 naming
	// the parameter, so that a typo never looks like an empty fleet.
	expect(t, do(t, a.c, "GET", a.url+"/api/v1/rollouts?status=bogus", a.R, nil), 400,
		"status: must be one of created, running, paused, completed, failed, cancelled")
	rtWantStrings(t, "limit=1", ids(list("?limit=1")), []string{r3})
	expect(t, do(t, a.c, "GET", a.url+"/api/v1/rollouts?limit=0", a.R, nil), 400, "")
	expect(t, do(t, a.c, "GET", a.url+"/api/v1/rollouts?limit=abc", a.R, nil), 400, "")
	if got := len(list("?limit=100000")); got != 3 {
		t.Fatalf("clamped limit: %d items", got)
	}

	expect(t, do(t, a.c, "GET", a.url+"/api/v1/rollouts/r-ghost", a.R, nil), 404, "rollout r-ghost not found")
	expect(t, do(t, a.c, "GET", a.url+"/api/v1/rollouts/r-ghost", "", nil), 401, "")
	r := do(t, a.c, "GET", a.url+"/api/v1/rollouts/"+r2, a.R, nil)
	expect(t, r, 200, "")
	var raw map[string]json.RawMessage
	r.json(t, &raw)
	for k, want := range map[string]string{"soak_seconds": "7", "failure_threshold": `"30%"`, "status": `"running"`} {
		if string(raw[k]) != want {
			t.Fatalf("%s = %s, want %s", k, raw[k], want)
		}
	}
	var evs []map[string]json.RawMessage
	json.Unmarshal(raw["events"], &evs)
	if len(evs) < 2 {
		t.Fatalf("events %s", raw["events"])
	}
	var lastID int64
	for _, ev := range evs {
		var id int64
		json.Unmarshal(ev["id"], &id)
		if id <= lastID || !bytes.HasPrefix(ev["detail"], []byte(`"{`)) {
			t.Fatalf("event id %d after %d, detail %s (must be a JSON string)", id, lastID, ev["detail"])
		}
		lastID = id
	}
	var batches []map[string]json.RawMessage
	json.Unmarshal(raw["batches"], &batches)
	for _, k := range []string{"id", "batch_index", "machine_ids", "status", "machine_health", "started_at", "completed_at", "soak_started_at"} {
		if _, ok := batches[0][k]; !ok {
			t.Fatalf("batch lacks %s: %v", k, batches[0])
		}
	}
	for _, k := range []string{"id", "status", "strategy", "release_id", "on_failure", "failure_threshold", "health_timeout",
		"soak_seconds", "cache_url", "batch_sizes", "target", "batches", "created_at", "updated_at", "created_by", "events"} {
		if _, ok := raw[k]; !ok {
			t.Fatalf("detail lacks %s", k)
		}
	}
}

// TestRolloutOperatorActionsACC99to102 checks pause, resume, cancel and
// delete through HTTP (§4.21–§4.24, §9.9).
func TestRolloutOperatorActionsACC99to102(t *testing.T) {
	a := rtNewAPI(t)
	ms := []string{"web-01", "web-02", "web-03", "web-04"}
	rtRegister(t, a.c, a.url, a.A, ms...)
	rel := rtRelease(t, a.c, a.url, a.D, nil, rtRelPath, ms...)
	act := func(rid, what, key string, body any) response {
		return a.post(t, "/api/v1/rollouts/"+rid+"/"+what, key, body)
	}

	t.Run("ACC-99 pause and resume", func(t *testing.T) {
		rid := rtCreate(t, a.c, a.url, a.D, rtHostsRollout(rel, "all_at_once", "web-01")).RolloutID
		expect(t, act(rid, "resume", a.D, nil), 409, "rollout is running, not paused")
		expect(t, act(rid, "pause", a.R, nil), 403, "deploy or admin role required")
		expect(t, act(rid, "pause", a.D, nil), 200, "")
		d := rtDetail(t, a.c, a.url, a.R, rid)
		evs := rtEvents(t, d)
		if d.Status != "paused" || evs[len(evs)-1] != `status_change|apikey:deployer|{"from":"running","to":"paused","reason":"manual"}` {
			t.Fatalf("%s %v", d.Status, evs)
		}
		expect(t, act(rid, "pause", a.D, nil), 409, "rollout is paused, not running")
		expect(t, act(rid, "resume", a.A, nil), 200, "")
		d = rtDetail(t, a.c, a.url, a.R, rid)
		evs = rtEvents(t, d)
		if d.Status != "running" || evs[len(evs)-1] != `status_change|apikey:first-admin|{"from":"paused","to":"running"}` {
			t.Fatalf("%s %v", d.Status, evs)
		}
		for _, what := range []string{"pause", "resume", "cancel"} {
			expect(t, act("r-ghost", what, a.D, nil), 404, "rollout r-ghost not found")
			expect(t, act("bad%20id", what, a.D, nil), 400, "invalid rollout id")
		}
		expect(t, act(rid, "cancel", a.D, nil), 200, "")
		expect(t, act(rid, "pause", a.D, nil), 409, "rollout is cancelled, not running")
		expect(t, act(rid, "resume", a.D, nil), 409, "rollout is cancelled, not paused")
	})
	t.Run("ACC-100 cancel", func(t *testing.T) {
		rid := rtCreate(t, a.c, a.url, a.D, rtHostsRollout(rel, "all_at_once", "web-01")).RolloutID
		expect(t, act(rid, "cancel", a.R, nil), 403, "deploy or admin role required")
		expect(t, act(rid, "cancel", a.D, nil), 200, "")
		if d := rtDetail(t, a.c, a.url, a.R, rid); d.Status != "cancelled" {
			t.Fatalf("status %s", d.Status)
		}
		expect(t, act(rid, "cancel", a.D, nil), 409, "rollout is cancelled, cannot cancel")
		expect(t, act("r-ghost", "cancel", a.D, nil), 404, "rollout r-ghost not found")
		rid2 := rtCreate(t, a.c, a.url, a.D, rtHostsRollout(rel, "all_at_once", "web-01")).RolloutID
		expect(t, act(rid2, "pause", a.D, nil), 200, "")
		expect(t, act(rid2, "cancel", a.D, `{"revert":false}`), 200, "")
		d := rtDetail(t, a.c, a.url, a.R, rid2)
		evs := rtEvents(t, d)
		if d.Status != "cancelled" || evs[len(evs)-1] != `status_change|apikey:deployer|{"from":"paused","to":"cancelled"}` {
			t.Fatalf("%s %v", d.Status, evs)
		}
		expect(t, act(rid2, "cancel", a.D, `{"revert":"yes"}`), 400, "")
	})
	t.Run("ACC-101 cancel without and with revert", func(t *testing.T) {
		rtNotify(t, a.c, a.url, a.D, "web-02", rtOldPath("web-02"))
		run := func(body any) (string, []string) {
			rid := rtCreate(t, a.c, a.url, a.D, rtHostsRollout(rel, "all_at_once", "web-02", "web-03")).RolloutID
			a.waitBatch(t, rid, 0, "deploying", "waiting_health")
			rtWantDesired(t, a.c, a.url, "web-02", rtRelPath("web-02"), "null", "5")
			expect(t, act(rid, "cancel", a.D, body), 200, "")
			return rid, rtAudit(t, a.c, a.url, a.A, "?action=machine.reverted")
		}
		_, rows := run(nil)
		if len(rows) != 0 {
			t.Fatalf("cancel without revert wrote %v", rows)
		}
		for _, m := range []string{"web-02", "web-03"} {
			rtWantDesired(t, a.c, a.url, m, rtRelPath(m), "null", "null")
		}
		// The next rollout captures the release path as web-02's and web-03's
		// previous generation, so set web-02 and web-03 back first.
		expect(t, do(t, a.c, "DELETE", a.url+"/api/v1/machines/web-03/desired-generation", a.A, nil), 204, "")
		rtNotify(t, a.c, a.url, a.D, "web-02", rtOldPath("web-02"))
		rid, rows := run(map[string]any{"revert": true})
		rtWantStrings(t, "reverted", rows, []string{
			fmt.Sprintf("machine.reverted|apikey:deployer|web-02|%s -> %s", rtRelPath("web-02"), rtOldPath("web-02")),
			fmt.Sprintf("machine.reverted|apikey:deployer|web-03|%s -> (cleared)", rtRelPath("web-03")),
		})
		rtWantDesired(t, a.c, a.url, "web-02", rtOldPath("web-02"), "null", "null")
		rtWantDesired(t, a.c, a.url, "web-03", "", "", "")
		rtWantStrings(t, "cancel audit", rtAudit(t, a.c, a.url, a.A, "?action=rollout.cancelled&target="+rid), []string{
			fmt.Sprintf("rollout.cancelled|apikey:deployer|%s|revert: restored 1, cleared 1", rid),
		})
	})
	t.Run("ACC-102 delete", func(t *testing.T) {
		rid := rtCreate(t, a.c, a.url, a.D, rtHostsRollout(rel, "all_at_once", "web-04")).RolloutID
		a.waitBatch(t, rid, 0, "waiting_health")
		del := func(id, key string) response { return do(t, a.c, "DELETE", a.url+"/api/v1/rollouts/"+id, key, nil) }
		expect(t, del(rid, a.A), 409, fmt.Sprintf("rollout %s cannot be deleted: status is running (must be completed, cancelled, or failed)", rid))
		expect(t, act(rid, "pause", a.D, nil), 200, "")
		expect(t, del(rid, a.A), 409, fmt.Sprintf("rollout %s cannot be deleted: status is paused (must be completed, cancelled, or failed)", rid))
		expect(t, act(rid, "cancel", a.D, nil), 200, "")
		expect(t, del(rid, a.R), 403, "admin role required")
		expect(t, del(rid, a.D), 403, "admin role required")
		expect(t, del("r-ghost", a.A), 404, "rollout r-ghost not found")
		db, err := sql.Open("sqlite", "file:"+a.rs.dbPath)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		rowsOf := func() (n [3]int) {
			for i, table := range []string{"rollout_batch", "rollout_machine", "rollout_event"} {
				if err := db.QueryRow("SELECT count(*) FROM "+table+" WHERE rollout_id = ?", rid).Scan(&n[i]); err != nil {
					t.Fatal(err)
				}
			}
			return n
		}
		if n := rowsOf(); n[0] == 0 || n[1] == 0 || n[2] == 0 {
			t.Fatalf("rows before delete: %v", n)
		}
		expect(t, del(rid, a.A), 204, "")
		if n := rowsOf(); n != [3]int{} {
			t.Fatalf("batch, machine and event rows left after delete: %v", n)
		}
		expect(t, do(t, a.c, "GET", a.url+"/api/v1/rollouts/"+rid, a.R, nil), 404, "rollout "+rid+" not found")
		expect(t, del(rid, a.A), 404, "rollout "+rid+" not found")
		rows := rtAudit(t, a.c, a.url, a.A, "?target="+rid)
		if len(rows) != 4 || rows[3] != fmt.Sprintf("rollout.deleted|apikey:first-admin|%s|<nil>", rid) {
			t.Fatalf("audit rows after delete: %v", rows)
		}
		if n := len(auditRows(t, a.c, a.url, a.A, "?target="+rid+"-b0")); n == 0 {
			t.Fatal("the batch audit rows went with the rollout")
		}
	})
}

// TestExecutorOperatorEventsAndMetricsACC115 checks the operator transitions'
// events and audit rows (§9.9, §9.11, §10.2) and nixfleet_rollouts_active and
// nixfleet_rollouts_total after a create, a pause, a resume, a cancel and a
// delete.
func TestExecutorOperatorEventsAndMetricsACC115(t *testing.T) {
	e := rtNewExecEnv(t)
	e.register("web-01", "web-02")
	rel := e.release(nil, "web-01", "web-02")
	total := func(s string) float64 { return e.metric(`nixfleet_rollouts_total{status="` + s + `"}`) }
	active := func() float64 { return e.metric("nixfleet_rollouts_active") }
	for _, s := range []string{"paused", "completed", "failed", "cancelled"} {
		if got := total(s); got != 0 {
			t.Fatalf("rollouts_total %s = %v on a fresh server", s, got)
		}
	}
	if active() != 0 {
		t.Fatal("rollouts_active not 0")
	}
	r1 := e.create(rtHostsRollout(rel, "all_at_once", "web-01")).RolloutID
	r2 := e.create(rtHostsRollout(rel, "all_at_once", "web-02")).RolloutID
	if got := active(); got != 2 {
		t.Fatalf("active %v after two creates", got)
	}
	e.advance(time.Second)
	expect(t, e.action(r1, "pause", nil), 200, "")
	if d := e.detail(r1); d.UpdatedAt != e.nowStr() || d.Status != "paused" {
		t.Fatalf("pause: updated_at %s (want %s), status %s", d.UpdatedAt, e.nowStr(), d.Status)
	}
	if active() != 2 || total("paused") != 1 {
		t.Fatalf("after pause: active %v paused %v", active(), total("paused"))
	}
	e.advance(time.Second)
	expect(t, e.action(r1, "resume", nil), 200, "")
	if d := e.detail(r1); d.UpdatedAt != e.nowStr() {
		t.Fatalf("resume: updated_at %s, want %s", d.UpdatedAt, e.nowStr())
	}
	e.advance(time.Second)
	expect(t, e.action(r2, "cancel", map[string]any{}), 200, "")
	if d := e.detail(r2); d.UpdatedAt != e.nowStr() {
		t.Fatalf("cancel: updated_at %s, want %s", d.UpdatedAt, e.nowStr())
	}
	if active() != 1 || total("cancelled") != 1 {
		t.Fatalf("after cancel: active %v cancelled %v", active(), total("cancelled"))
	}
	expect(t, e.action(r1, "pause", nil), 200, "")
	expect(t, e.action(r1, "cancel", map[string]any{"revert": false}), 200, "")
	if active() != 0 || total("cancelled") != 2 || total("paused") != 2 {
		t.Fatalf("after pause+cancel: active %v cancelled %v paused %v", active(), total("cancelled"), total("paused"))
	}
	rtWantStrings(t, "events", rtEvents(t, e.detail(r1)), []string{
		`status_change|apikey:deployer|{"from":"created","to":"running","strategy":"all_at_once"}`,
		`status_change|apikey:deployer|{"from":"running","to":"paused","reason":"manual"}`,
		`status_change|apikey:deployer|{"from":"paused","to":"running"}`,
		`status_change|apikey:deployer|{"from":"running","to":"paused","reason":"manual"}`,
		`status_change|apikey:deployer|{"from":"paused","to":"cancelled"}`,
	})
	rtWantStrings(t, "audit", rtAudit(t, e.c, e.url, e.admin, "?target="+r1), []string{
		fmt.Sprintf("rollout.created|apikey:deployer|%s|strategy=all_at_once machines=1 batches=1 skipped=0", r1),
		fmt.Sprintf("rollout.paused|apikey:deployer|%s|Paused by operator", r1),
		fmt.Sprintf("rollout.resumed|apikey:deployer|%s|<nil>", r1),
		fmt.Sprintf("rollout.paused|apikey:deployer|%s|Paused by operator", r1),
		fmt.Sprintf("rollout.cancelled|apikey:deployer|%s|<nil>", r1),
	})
	expect(t, do(t, e.c, "DELETE", e.url+"/api/v1/rollouts/"+r1, e.admin, nil), 204, "")
	if active() != 0 {
		t.Fatal("active changed by delete")
	}
	rows := rtAudit(t, e.c, e.url, e.admin, "?target="+r1)
	if got := rows[len(rows)-1]; got != fmt.Sprintf("rollout.deleted|apikey:first-admin|%s|<nil>", r1) || len(rows) != 6 {
		t.Fatalf("audit after delete: %v", rows)
	}
	// The executor sees no rollout and does nothing.
	e.pass()
	if n := e.ts.m.executorTicks.Load(); n == 0 {
		t.Fatal("pass not counted in executor ticks")
	}
}
