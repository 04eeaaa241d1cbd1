package main

// Rollout tests: the pure planning functions (§9.2, §9.6), the health
// classification (§9.5), and the executor driven step by step with the fake
// clock (§9.3–§9.11, ACC-84–98, ACC-101, ACC-115). The executor loop is never
// started here: every test calls pass or step itself, so nothing sleeps.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// ---------------------------------------------------------------------------
// Shared helpers of the rollout test files (rollout_test.go,
// rollouts_api_test.go, rollout_crash_test.go, rollout_bench_test.go).

// rtRelPath is the store path the test releases give machine m.
func rtRelPath(m string) string { return storePath('b', "nixos-system-"+m+"-new") }

// rtOldPath is a generation m ran (or was pinned to) before the rollout.
func rtOldPath(m string) string { return storePath('c', "nixos-system-"+m+"-old") }

// rtOtherPath is a generation that is neither the old one nor the release's.
func rtOtherPath(m string) string { return storePath('d', "nixos-system-"+m+"-other") }

// rtRegister registers active machines (tagged "web") through the admin API.
func rtRegister(t testing.TB, c *http.Client, base, admin string, ids ...string) {
	t.Helper()
	for _, id := range ids {
		expect(t, do(t, c, "POST", base+"/api/v1/machines/"+id+"/register", admin, map[string]any{"tags": []string{"web"}}), 201, "")
	}
}

// rtLifecycle changes a machine's lifecycle through the admin API.
func rtLifecycle(t testing.TB, c *http.Client, base, admin, id, to string) {
	t.Helper()
	expect(t, do(t, c, "PATCH", base+"/api/v1/machines/"+id+"/lifecycle", admin, map[string]any{"lifecycle": to}), 200, "")
}

// rtNotify pins a machine to path with notify-deploy.
func rtNotify(t testing.TB, c *http.Client, base, key, id, path string) {
	t.Helper()
	expect(t, do(t, c, "POST", base+"/api/v1/machines/"+id+"/notify-deploy", key, map[string]any{"store_path": path}), 200, "")
}

// rtRelease creates a release that maps every machine to pathOf(machine) and
// returns its id. cacheURL may be nil.
func rtRelease(t testing.TB, c *http.Client, base, key string, cacheURL *string, pathOf func(string) string, ids ...string) string {
	t.Helper()
	entries := make([]map[string]any, 0, len(ids))
	for _, id := range ids {
		entries = append(entries, map[string]any{"hostname": id, "store_path": pathOf(id), "platform": "x86_64-linux"})
	}
	r := do(t, c, "POST", base+"/api/v1/releases", key, map[string]any{"entries": entries, "cache_url": cacheURL})
	expect(t, r, 201, "")
	var out struct {
		ID string `json:"id"`
	}
	r.json(t, &out)
	return out.ID
}

// rtCreate creates a rollout and expects 201.
func rtCreate(t testing.TB, c *http.Client, base, key string, body map[string]any) createRolloutResponse {
	t.Helper()
	r := do(t, c, "POST", base+"/api/v1/rollouts", key, body)
	expect(t, r, 201, "")
	var out createRolloutResponse
	r.json(t, &out)
	return out
}

// rtDetail returns GET /api/v1/rollouts/{id}.
func rtDetail(t testing.TB, c *http.Client, base, key, rid string) rolloutDetail {
	t.Helper()
	r := do(t, c, "GET", base+"/api/v1/rollouts/"+rid, key, nil)
	expect(t, r, 200, "")
	var d rolloutDetail
	r.json(t, &d)
	return d
}

// rtReport posts an agent report and expects 200.
func rtReport(t testing.TB, c *http.Client, base string, body map[string]any) {
	t.Helper()
	expect(t, do(t, c, "POST", base+"/api/v1/machines/"+body["machine_id"].(string)+"/report", "", body), 200, "")
}

// rtDesired returns the status of GET …/desired-generation and, on 200, its
// body as raw JSON values (so that a null poll_hint is told from 0 or absent).
func rtDesired(t testing.TB, c *http.Client, base, id string) (int, map[string]json.RawMessage) {
	t.Helper()
	r := do(t, c, "GET", base+"/api/v1/machines/"+id+"/desired-generation", "", nil)
	if r.status != 200 {
		expect(t, r, 404, "no desired generation")
		return r.status, nil
	}
	var m map[string]json.RawMessage
	r.json(t, &m)
	return r.status, m
}

// rtWantDesired checks the desired generation served to the machine: hash
// ("" for a 404), cache_url and poll_hint as raw JSON ("null", `"…"`, "5").
func rtWantDesired(t testing.TB, c *http.Client, base, id, hash, cacheURL, pollHint string) {
	t.Helper()
	status, m := rtDesired(t, c, base, id)
	if hash == "" {
		if status != 404 {
			t.Fatalf("%s: desired generation %v, want 404", id, m)
		}
		return
	}
	if status != 200 {
		t.Fatalf("%s: desired generation status %d, want 200 with %s", id, status, hash)
	}
	var got string
	json.Unmarshal(m["hash"], &got)
	if got != hash {
		t.Fatalf("%s: hash %s, want %s", id, got, hash)
	}
	if string(m["cache_url"]) != cacheURL {
		t.Fatalf("%s: cache_url %s, want %s", id, m["cache_url"], cacheURL)
	}
	if string(m["poll_hint"]) != pollHint {
		t.Fatalf("%s: poll_hint %s, want %s", id, m["poll_hint"], pollHint)
	}
}

// rtHealthOf renders a machine_health value: "pending", "healthy" or
// "unhealthy:<reason>".
func rtHealthOf(t testing.TB, v any) string {
	t.Helper()
	switch x := v.(type) {
	case string:
		if x != "pending" && x != "healthy" {
			t.Fatalf("machine_health value %q", x)
		}
		return x
	case map[string]any:
		reason, ok := x["unhealthy"].(string)
		if len(x) != 1 || !ok {
			t.Fatalf("machine_health value %#v", x)
		}
		return "unhealthy:" + reason
	}
	t.Fatalf("machine_health value %#v", v)
	return ""
}

// rtMachineHealth returns the rendered health of machine m in the rollout.
func rtMachineHealth(t testing.TB, d rolloutDetail, m string) string {
	t.Helper()
	for _, b := range d.Batches {
		if v, ok := b.MachineHealth[m]; ok {
			return rtHealthOf(t, v)
		}
	}
	t.Fatalf("machine %s is in no batch of %s", m, d.ID)
	return ""
}

// rtBatchStatuses returns the batch statuses in index order.
func rtBatchStatuses(d rolloutDetail) []string {
	var out []string
	for _, b := range d.Batches {
		out = append(out, b.Status)
	}
	return out
}

var rtOutputTimeRE = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`)

// rtEvents renders the rollout's events as "type|actor|detail", checking that
// ids ascend, details are JSON objects and timestamps are well formed.
func rtEvents(t testing.TB, d rolloutDetail) []string {
	t.Helper()
	var out []string
	var last int64
	for _, ev := range d.Events {
		if ev.ID <= last {
			t.Fatalf("event ids not ascending: %d after %d", ev.ID, last)
		}
		last = ev.ID
		if ev.RolloutID != d.ID {
			t.Fatalf("event %d has rollout_id %s", ev.ID, ev.RolloutID)
		}
		if !rtOutputTimeRE.MatchString(ev.CreatedAt) {
			t.Fatalf("event %d created_at %q", ev.ID, ev.CreatedAt)
		}
		var obj map[string]any
		if err := json.Unmarshal([]byte(ev.Detail), &obj); err != nil {
			t.Fatalf("event %d detail %q is not a JSON object: %v", ev.ID, ev.Detail, err)
		}
		out = append(out, ev.EventType+"|"+ev.Actor+"|"+ev.Detail)
	}
	return out
}

// rtAudit returns audit rows matching query, oldest first, rendered as
// "action|actor|target|detail" (detail "<nil>" for null).
func rtAudit(t testing.TB, c *http.Client, base, key, query string) []string {
	t.Helper()
	rows := auditRows(t, c, base, key, query)
	var out []string
	for i := len(rows) - 1; i >= 0; i-- {
		r := rows[i]
		detail := "<nil>"
		if r.Detail != nil {
			detail = *r.Detail
		}
		out = append(out, r.Action+"|"+r.Actor+"|"+r.Target+"|"+detail)
	}
	return out
}

func rtWantStrings(t testing.TB, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s:\n got %d:\n  %s\nwant %d:\n  %s", what, len(got), strings.Join(got, "\n  "),
			len(want), strings.Join(want, "\n  "))
	}
}

// rtHealthNoFailed is a health-check report with all_passed=false but without
// any failed result.
func rtHealthNoFailed(id, gen string, success bool) map[string]any {
	b := reportBody(id, gen, success, "health-check")
	b["health"] = map[string]any{
		"results":    []map[string]any{{"status": "pass", "check_name": "sshd.service", "duration_ms": 3}},
		"all_passed": false, "timestamp": "2026-04-11T09:30:00.51Z",
	}
	return b
}

// ---------------------------------------------------------------------------
// Pure planning (§9.2, §9.6, §2.7).

// TestPlanBatchesSpecTable checks every worked example of the §9.2 table and
// ACC-83: the batch sizes, machine_ids sorted within each batch, and every
// machine in exactly one batch, over many shuffles.
func TestPlanBatchesSpecTable(t *testing.T) {
	cases := []struct {
		name     string
		n        int
		strategy string
		sizes    []string
		want     []int
	}{
		{"20 staged 1,25%,100%", 20, "staged", []string{"1", "25%", "100%"}, []int{1, 5, 14}},
		{"20 canary", 20, "canary", nil, []int{1, 19}},
		{"1 canary is a single batch", 1, "canary", nil, []int{1}},
		{"6 staged 2,2,2", 6, "staged", []string{"2", "2", "2"}, []int{2, 2, 2}},
		{"10 staged 2,2", 10, "staged", []string{"2", "2"}, []int{2, 8}},
		{"10 staged 1,1", 10, "staged", []string{"1", "1"}, []int{1, 9}},
		{"10 staged 50%,50%,100%", 10, "staged", []string{"50%", "50%", "100%"}, []int{5, 3, 2}},
		{"3 staged 5,100% takes everything at once", 3, "staged", []string{"5", "100%"}, []int{3}},
		{"10 all_at_once", 10, "all_at_once", nil, []int{10}},
		{"ACC-83 canary over 5", 5, "canary", nil, []int{1, 4}},
		{"ACC-83 all_at_once over 3", 3, "all_at_once", nil, []int{3}},
		{"staged without batch_sizes", 4, "staged", nil, []int{4}},
		{"staged with empty batch_sizes", 4, "staged", []string{}, []int{4}},
		{"all_at_once ignores batch_sizes", 4, "all_at_once", []string{"1"}, []int{4}},
		{"canary ignores batch_sizes", 4, "canary", []string{"2", "2"}, []int{1, 3}},
		{"the last spec takes the rest whatever its value", 10, "staged", []string{"1", "1%"}, []int{1, 9}},
		{"a percentage takes at least one", 3, "staged", []string{"1%", "1%", "1%"}, []int{1, 1, 1}},
		{"a percentage of the remaining rounds up", 7, "staged", []string{"50%", "100%"}, []int{4, 3}},
		{"no empty batches when specs outnumber machines", 2, "staged", []string{"1", "1", "1", "1"}, []int{1, 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			machines := make([]string, tc.n)
			for i := range machines {
				machines[i] = fmt.Sprintf("host-%03d", (i*7919)%1000) // not in sorted order
			}
			orig := slices.Clone(machines)
			specs := effectiveBatchSizes(tc.strategy, tc.sizes)
			for seed := range uint64(50) {
				batches := planBatches(machines, specs, rand.New(rand.NewPCG(seed, seed*31+7)))
				if !slices.Equal(machines, orig) {
					t.Fatal("planBatches modified its input")
				}
				var sizes []int
				seen := map[string]int{}
				for _, b := range batches {
					sizes = append(sizes, len(b))
					if !slices.IsSorted(b) {
						t.Fatalf("seed %d: batch not sorted: %v", seed, b)
					}
					for _, id := range b {
						seen[id]++
					}
				}
				if !slices.Equal(sizes, tc.want) {
					t.Fatalf("seed %d: sizes %v, want %v", seed, sizes, tc.want)
				}
				if len(seen) != tc.n {
					t.Fatalf("seed %d: %d distinct machines, want %d", seed, len(seen), tc.n)
				}
				for id, k := range seen {
					if k != 1 || !slices.Contains(machines, id) {
						t.Fatalf("seed %d: machine %s appears %d times", seed, id, k)
					}
				}
			}
		})
	}
}

// TestPlanBatchesShuffles checks that the canary is not always the same
// machine (§9.2 step 1: the machines are shuffled).
func TestPlanBatchesShuffles(t *testing.T) {
	machines := make([]string, 20)
	for i := range machines {
		machines[i] = fmt.Sprintf("m-%02d", i)
	}
	canaries := map[string]bool{}
	for seed := range uint64(200) {
		b := planBatches(machines, []string{"1", "100%"}, rand.New(rand.NewPCG(seed, 1)))
		canaries[b[0][0]] = true
	}
	if len(canaries) < 10 {
		t.Fatalf("only %d distinct canaries in 200 shuffles: %v", len(canaries), canaries)
	}
}

// TestEffectiveBatchSizes checks the stored effective sizes (§9.2).
func TestEffectiveBatchSizes(t *testing.T) {
	cases := []struct {
		strategy string
		sizes    []string
		want     []string
	}{
		{"canary", nil, []string{"1", "100%"}},
		{"canary", []string{"5"}, []string{"1", "100%"}},
		{"all_at_once", []string{"5"}, []string{"100%"}},
		{"staged", nil, []string{"100%"}},
		{"staged", []string{}, []string{"100%"}},
		{"staged", []string{"1", "10%", "100%"}, []string{"1", "10%", "100%"}},
	}
	for _, tc := range cases {
		if got := effectiveBatchSizes(tc.strategy, tc.sizes); !slices.Equal(got, tc.want) {
			t.Errorf("%s %v: got %v, want %v", tc.strategy, tc.sizes, got, tc.want)
		}
	}
}

// TestThresholdForSpecExamples checks every example of §9.6 and a few
// rounding cases.
func TestThresholdForSpecExamples(t *testing.T) {
	cases := []struct {
		spec string
		n    int
		want int
	}{
		{"0", 10, 0}, {"1", 10, 1}, {"30%", 10, 3}, {"10%", 20, 2}, {"50%", 3, 2}, {"100%", 10, 10}, {"5", 2, 5},
		{"0%", 10, 0}, {"1%", 1, 1}, {"33%", 3, 1}, {"34%", 3, 2}, {"50%", 0, 0}, {"30%", 9, 3}, {"25%", 19, 5},
	}
	for _, tc := range cases {
		if got := thresholdFor(tc.spec, tc.n); got != tc.want {
			t.Errorf("thresholdFor(%q, %d) = %d, want %d", tc.spec, tc.n, got, tc.want)
		}
	}
}

// TestThresholdAndBatchSizeValidation checks the §2.7 rules behind ACC-74 and
// ACC-75.
func TestThresholdAndBatchSizeValidation(t *testing.T) {
	thresholds := []struct {
		v  string
		ok bool
	}{
		{"0", true}, {"3", true}, {"30%", true}, {"0%", true}, {"100%", true}, {"999999999", true},
		{"foo", false}, {"150%", false}, {"-1", false}, {"", false}, {"%", false}, {"101%", false},
		{"1.5", false}, {"1000000000", false}, {" 1", false}, {"1 ", false}, {"+1", false}, {"1e2", false},
		{"50%%", false}, {"%50", false}, {"٣", false}, {"1000%", false},
	}
	for _, tc := range thresholds {
		err := checkThreshold(tc.v)
		if (err == nil) != tc.ok {
			t.Errorf("checkThreshold(%q) = %v, want ok=%v", tc.v, err, tc.ok)
		}
		var ve *validationError
		if err != nil && (!errors.As(err, &ve) || !strings.HasPrefix(ve.msg, "failure_threshold: ")) {
			t.Errorf("checkThreshold(%q) error %v, want a 400 naming failure_threshold", tc.v, err)
		}
	}
	sizes := []struct {
		v  string
		ok bool
	}{
		{"1", true}, {"2", true}, {"1%", true}, {"25%", true}, {"100%", true}, {"999999999", true},
		{"0", false}, {"0%", false}, {"abc", false}, {"101%", false}, {"-1", false}, {"", false}, {"%", false},
		{"1000000000", false}, {"1.0", false}, {"10 %", false},
	}
	for _, tc := range sizes {
		err := checkBatchSize("batch_sizes[0]", tc.v)
		if (err == nil) != tc.ok {
			t.Errorf("checkBatchSize(%q) = %v, want ok=%v", tc.v, err, tc.ok)
		}
		var ve *validationError
		if err != nil && (!errors.As(err, &ve) || !strings.HasPrefix(ve.msg, "batch_sizes[0]: ")) {
			t.Errorf("checkBatchSize(%q) error %v, want a 400 naming batch_sizes[0]", tc.v, err)
		}
	}
}

// TestClassifyPure checks rows 2–4 of §9.5 and the reason strings on the
// pure classifier.
func TestClassifyPure(t *testing.T) {
	const D, O = "/nix/store/d", "/nix/store/o"
	pass := func(id int64, gen string) evidence {
		return evidence{id: id, generation: gen, success: true, message: "health-check", hasHealth: true, allPassed: true}
	}
	fail := func(id int64, gen, checks string) evidence {
		return evidence{id: id, generation: gen, message: "health-check", hasHealth: true, failedChecks: checks}
	}
	plain := func(id int64, gen string, ok bool, msg string) evidence {
		return evidence{id: id, generation: gen, success: ok, message: msg}
	}
	long := strings.Repeat("a", 199) + "é" + "tail" // é straddles byte 200
	cases := []struct {
		name    string
		reports []evidence
		want    string
	}{
		{"no report", nil, "pending"},
		{"applying on the old generation", []evidence{plain(1, O, true, "applying")}, "pending"},
		{"deployed on D", []evidence{plain(1, D, true, "deployed")}, "pending"},
		{"passing health on D", []evidence{pass(1, D)}, "healthy"},
		{"passing health on another generation", []evidence{pass(1, O)}, "pending"},
		{"passing, then last on another generation", []evidence{pass(1, D), plain(2, O, true, "up-to-date")}, "pending"},
		{"reported failure", []evidence{plain(1, O, false, "rolled back: x")}, "unhealthy:reported failure: rolled back: x"},
		{"failed checks", []evidence{fail(1, D, "a, b")}, "unhealthy:health check failed: a, b"},
		{"all_passed=false without failed results", []evidence{{id: 1, generation: D, success: true, hasHealth: true}}, "unhealthy:health check failed"},
		{"failure then success on the old generation", []evidence{plain(1, O, false, "rolled back: y"), pass(2, O)}, "unhealthy:reported failure: rolled back: y"},
		{"failure then passing health on D", []evidence{fail(1, D, "a"), pass(2, D)}, "healthy"},
		{"passing then failure", []evidence{pass(1, D), plain(2, D, false, "boom")}, "unhealthy:reported failure: boom"},
		{"the latest negative report gives the reason", []evidence{fail(1, D, "a"), plain(2, O, false, "later")}, "unhealthy:reported failure: later"},
		{"message cut at 200 bytes on a UTF-8 boundary", []evidence{plain(1, O, false, long)}, "unhealthy:reported failure: " + strings.Repeat("a", 199)},
		{"message of exactly 200 bytes is kept", []evidence{plain(1, O, false, strings.Repeat("ü", 100))}, "unhealthy:reported failure: " + strings.Repeat("ü", 100)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h, reason := classify(D, tc.reports)
			got := h
			if h == healthUnhealthy {
				got += ":" + reason
			}
			if got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestEvaluateBatchPure checks rows 1 and 5 of §9.5 and the verdict rules
// of §9.6 (fail fast, wait, soak) on the pure evaluation.
func TestEvaluateBatchPure(t *testing.T) {
	const S = int64(1_000_000)
	D := "/nix/store/d"
	r := &rolloutRow{ID: "r-x", FailureThreshold: "1", HealthTimeout: 10}
	mem := func(id string) memberRow { return memberRow{MachineID: id, StorePath: D, Health: healthPending} }
	active := func(string) lifecycle { return lcActive }
	pass := []evidence{{id: 1, generation: D, success: true, hasHealth: true, allPassed: true}}
	bad := []evidence{{id: 2, generation: D, success: false, message: "x"}}

	t.Run("row 1: skipped members are not counted", func(t *testing.T) {
		skipped := memberRow{MachineID: "a", StorePath: D, Health: healthSkipped, Reason: "skipped: lifecycle maintenance"}
		v := evaluateBatch(r, batchRow{Status: "deploying", StartedAt: rtPtr(S)}, []memberRow{skipped, mem("b")},
			map[string][]evidence{"a": bad, "b": pass}, active, S+1)
		if v.health["a"] != [2]string{healthSkipped, "skipped: lifecycle maintenance"} || v.n != 1 || v.outcome != outcomeSucceed {
			t.Fatalf("verdict %+v", v)
		}
	})
	t.Run("row 1: decommissioned during evaluation", func(t *testing.T) {
		lc := func(id string) lifecycle {
			if id == "a" {
				return lcDecommissioned
			}
			return lcActive
		}
		v := evaluateBatch(r, batchRow{Status: "waiting_health", StartedAt: rtPtr(S)}, []memberRow{mem("a"), mem("b")},
			map[string][]evidence{"b": pass}, lc, S+1)
		if v.health["a"] != [2]string{healthSkipped, "skipped: lifecycle decommissioned"} || v.n != 1 || v.outcome != outcomeSucceed {
			t.Fatalf("verdict %+v", v)
		}
	})
	t.Run("row 5: timeout at exactly health_timeout", func(t *testing.T) {
		b := batchRow{Status: "waiting_health", StartedAt: rtPtr(S)}
		v := evaluateBatch(r, b, []memberRow{mem("a")}, nil, active, S+9999)
		if v.p != 1 || v.timedOut != 0 || v.outcome != outcomeWait {
			t.Fatalf("before the timeout: %+v", v)
		}
		v = evaluateBatch(r, b, []memberRow{mem("a"), mem("b")}, map[string][]evidence{"b": bad}, active, S+10000)
		if v.health["a"] != [2]string{healthUnhealthy, "health timeout after 10s"} || v.timedOut != 1 ||
			v.u != 2 || v.outcome != outcomeFail || v.threshold != 1 {
			t.Fatalf("at the timeout: %+v", v)
		}
	})
	t.Run("fail fast while others are pending", func(t *testing.T) {
		r0 := *r
		r0.FailureThreshold = "0"
		v := evaluateBatch(&r0, batchRow{Status: "deploying", StartedAt: rtPtr(S)}, []memberRow{mem("a"), mem("b"), mem("c")},
			map[string][]evidence{"a": bad}, active, S+1)
		if v.outcome != outcomeFail || v.statusAfter != "failed" || v.u != 1 || v.p != 2 {
			t.Fatalf("verdict %+v", v)
		}
	})
	t.Run("tolerated unhealthy and pending waits", func(t *testing.T) {
		v := evaluateBatch(r, batchRow{Status: "deploying", StartedAt: rtPtr(S)}, []memberRow{mem("a"), mem("b")},
			map[string][]evidence{"a": bad}, active, S+1)
		if v.outcome != outcomeWait || v.statusAfter != "waiting_health" || v.soakStart != nil {
			t.Fatalf("verdict %+v", v)
		}
	})
	t.Run("soak", func(t *testing.T) {
		rs := *r
		rs.SoakSeconds = 10
		members := []memberRow{mem("a")}
		ev := map[string][]evidence{"a": pass}
		v := evaluateBatch(&rs, batchRow{Status: "deploying", StartedAt: rtPtr(S)}, members, ev, active, S+5)
		if v.outcome != outcomeWait || v.statusAfter != "waiting_health" || v.soakStart == nil || *v.soakStart != S+5 {
			t.Fatalf("soak start: %+v", v)
		}
		b := batchRow{Status: "waiting_health", StartedAt: rtPtr(S), SoakStarted: rtPtr(S + 5)}
		if v := evaluateBatch(&rs, b, members, ev, active, S+5+9999); v.outcome != outcomeWait || *v.soakStart != S+5 {
			t.Fatalf("during soak: %+v", v)
		}
		if v := evaluateBatch(&rs, b, members, ev, active, S+5+10000); v.outcome != outcomeSucceed {
			t.Fatalf("after soak: %+v", v)
		}
		if v := evaluateBatch(&rs, b, members, nil, active, S+6); v.outcome != outcomeWait || v.soakStart != nil {
			t.Fatalf("pending during soak must restart it: %+v", v)
		}
		rs.FailureThreshold = "0"
		if v := evaluateBatch(&rs, b, members, map[string][]evidence{"a": bad}, active, S+6); v.outcome != outcomeFail {
			t.Fatalf("failure during soak must fail: %+v", v)
		}
	})
}

func rtPtr[T any](v T) *T { return &v }

// ---------------------------------------------------------------------------
// The executor, driven by hand with the fake clock.

// rtExecEnv is a test server (fake clock, executor loop not started) with an
// admin key and a deploy key named "deployer".
type rtExecEnv struct {
	t     *testing.T
	ts    *testServer
	c     *http.Client
	url   string
	admin string
	dep   string
	ctx   context.Context
	// wantErrors is the number of failed executor steps the test expects.
	wantErrors uint64
}

func rtNewExecEnv(t *testing.T) *rtExecEnv {
	t.Helper()
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	admin := bootstrapKey(t, c, ts.url)
	dep := createTestKey(t, c, ts.url, admin, "deployer", "deploy")
	e := &rtExecEnv{t: t, ts: ts, c: c, url: ts.url, admin: admin, dep: dep, ctx: context.Background()}
	t.Cleanup(func() {
		if n := ts.m.executorErrors.Load(); n != e.wantErrors {
			t.Errorf("%d executor errors, want %d; logs:\n%s", n, e.wantErrors, ts.logs.String())
		}
	})
	return e
}

func (e *rtExecEnv) register(ids ...string) {
	e.t.Helper()
	rtRegister(e.t, e.c, e.url, e.admin, ids...)
}
func (e *rtExecEnv) release(cacheURL *string, ids ...string) string {
	e.t.Helper()
	return rtRelease(e.t, e.c, e.url, e.dep, cacheURL, rtRelPath, ids...)
}
func (e *rtExecEnv) create(body map[string]any) createRolloutResponse {
	e.t.Helper()
	return rtCreate(e.t, e.c, e.url, e.dep, body)
}
func (e *rtExecEnv) detail(rid string) rolloutDetail {
	e.t.Helper()
	return rtDetail(e.t, e.c, e.url, e.admin, rid)
}
func (e *rtExecEnv) report(body map[string]any) { e.t.Helper(); rtReport(e.t, e.c, e.url, body) }
func (e *rtExecEnv) advance(d time.Duration)    { e.ts.clock.advance(d) }
func (e *rtExecEnv) pass()                      { e.ts.pass(e.ctx) }
func (e *rtExecEnv) nowStr() string             { return fmtTime(e.ts.clock.now().UnixMilli()) }
func (e *rtExecEnv) metric(series string) float64 {
	e.t.Helper()
	return metricValue(e.t, e.c, e.url, series)
}

// step runs one executor step and fails the test on error.
func (e *rtExecEnv) step(rid string) bool {
	e.t.Helper()
	progressed, err := e.ts.exec.advance(e.ctx, rid, e.ts.clock.now().UnixMilli())
	if err != nil {
		e.t.Fatalf("step: %v", err)
	}
	return progressed
}

// action posts to a rollout action route with the deploy key.
func (e *rtExecEnv) action(rid, what string, body any) response {
	e.t.Helper()
	return do(e.t, e.c, "POST", e.url+"/api/v1/rollouts/"+rid+"/"+what, e.dep, body)
}

// healthy makes machine m report "deployed" and a passing health check on
// its release path.
func (e *rtExecEnv) healthy(m string) {
	e.t.Helper()
	e.report(reportBody(m, rtRelPath(m), true, "deployed"))
	e.report(healthBody(m, rtRelPath(m)))
}

// prev returns rollout_machine.prev_captured and prev_hash for a machine.
func (e *rtExecEnv) prev(rid, m string) (bool, *string) {
	e.t.Helper()
	var captured bool
	var hash *string
	if err := e.ts.st.ro.QueryRowContext(e.ctx, `SELECT prev_captured, prev_hash FROM rollout_machine
		WHERE rollout_id = ? AND machine_id = ?`, rid, m).Scan(&captured, &hash); err != nil {
		e.t.Fatal(err)
	}
	return captured, hash
}

func rtHostsRollout(rel, strategy string, hosts ...string) map[string]any {
	return map[string]any{"release_id": rel, "strategy": strategy, "target": map[string]any{"hosts": hosts}}
}

// TestExecutorHealthEvaluationTable drives every row of the §9.5 table, one
// case each, through real reports and executor passes (ACC-87, ACC-89). The
// subject web-01 shares an all_at_once batch with a silent web-02 and the
// threshold is "1", so web-01's classification can be watched without the
// verdict ending the batch.
func TestExecutorHealthEvaluationTable(t *testing.T) {
	const m1, m2 = "web-01", "web-02"
	D, O, X := rtRelPath(m1), rtOldPath(m1), rtOtherPath(m1)
	type act struct {
		advance   time.Duration // before the action; 0 means 1s
		report    map[string]any
		lifecycle string
		want      string // web-01's machine_health after a pass
	}
	failedX := healthBody(m1, X, "nginx.service")
	successNotPassedX := healthBody(m1, X, "nginx.service")
	successNotPassedX["success"] = true
	longMsg := strings.Repeat("x", 150) + strings.Repeat("€", 30) // € is 3 bytes: 150+3×16 = 198, the 17th would end at 201
	cases := []struct {
		name      string
		before    []act // before the deploy step: evidence older than S
		acts      []act
		wantBatch string // default waiting_health
		check     func(t *testing.T, e *rtExecEnv)
	}{
		{name: "row 4: no fresh report", acts: []act{{want: "pending"}, {advance: time.Minute, want: "pending"}}},
		{name: "row 4: applying on the old generation", acts: []act{{report: reportBody(m1, O, true, "applying"), want: "pending"}}},
		{name: "row 4: dry-run on the old generation", acts: []act{{report: reportBody(m1, O, true, "dry-run: would apply"), want: "pending"}}},
		{name: "row 4: deployed on D without health (ACC-87)", acts: []act{{report: reportBody(m1, D, true, "deployed"), want: "pending"}}},
		{name: "row 4: deployed and up-to-date alone never healthy", acts: []act{
			{report: reportBody(m1, D, true, "deployed"), want: "pending"},
			{report: reportBody(m1, D, true, "up-to-date"), want: "pending"},
			{report: reportBody(m1, D, true, "up-to-date"), want: "pending"},
		}},
		{name: "row 4: passing health on a non-desired path (ACC-87)", acts: []act{{report: healthBody(m1, X), want: "pending"}}},
		{name: "row 4: passing health on the old generation", acts: []act{{report: healthBody(m1, O), want: "pending"}}},
		{name: "row 4: last report on another generation", acts: []act{
			{report: healthBody(m1, D), want: "healthy"},
			{report: reportBody(m1, X, true, "up-to-date"), want: "pending"},
		}},
		{name: "row 4: a failing-but-successful health report on another generation is no evidence", acts: []act{
			{report: successNotPassedX, want: "pending"},
		}},
		{name: "row 4: passing evidence from before S is ignored", before: []act{{report: healthBody(m1, D)}},
			acts: []act{{want: "pending"}}},
		{name: "row 4: negative evidence from before S is ignored", before: []act{{report: reportBody(m1, O, false, "rolled back: old")}},
			acts: []act{{want: "pending"}, {report: healthBody(m1, D), want: "healthy"}}},
		{name: "row 3: passing health on D after deployed", acts: []act{
			{report: reportBody(m1, D, true, "deployed"), want: "pending"},
			{report: healthBody(m1, D), want: "healthy"},
		}},
		{name: "row 3: healthy stays healthy with up-to-date on D", acts: []act{
			{report: healthBody(m1, D), want: "healthy"},
			{report: reportBody(m1, D, true, "up-to-date"), want: "healthy"},
		}},
		{name: "row 2: reported failure", acts: []act{
			{report: reportBody(m1, O, false, "rolled back: switch failed"), want: "unhealthy:reported failure: rolled back: switch failed"},
		}},
		{name: "row 2: failed checks on D (ACC-89)", acts: []act{
			{report: healthBody(m1, D, "nginx.service", "postgresql.service"), want: "unhealthy:health check failed: nginx.service, postgresql.service"},
		}},
		{name: "row 2: all_passed=false without failed results", acts: []act{
			{report: rtHealthNoFailed(m1, D, false), want: "unhealthy:health check failed"},
		}},
		{name: "row 2: all_passed=false on D with success=true", acts: []act{
			{report: rtHealthNoFailed(m1, D, true), want: "unhealthy:health check failed"},
		}},
		{name: "row 2: failing health on another generation", acts: []act{
			{report: failedX, want: "unhealthy:health check failed: nginx.service"},
		}},
		{name: "row 2: failure then success on the old generation stays unhealthy (agent rolled back)", acts: []act{
			{report: reportBody(m1, O, true, "applying"), want: "pending"},
			{report: reportBody(m1, O, false, "rolled back: health checks failed"), want: "unhealthy:reported failure: rolled back: health checks failed"},
			{report: reportBody(m1, O, true, "up-to-date"), want: "unhealthy:reported failure: rolled back: health checks failed"},
			{report: healthBody(m1, O), want: "unhealthy:reported failure: rolled back: health checks failed"},
		}},
		{name: "row 2 then 3: a later passing health report on D makes the machine healthy again", acts: []act{
			{report: healthBody(m1, D, "nginx.service"), want: "unhealthy:health check failed: nginx.service"},
			{report: healthBody(m1, D), want: "healthy"},
		}},
		{name: "row 2: a failure after a passing report", acts: []act{
			{report: healthBody(m1, D), want: "healthy"},
			{report: reportBody(m1, D, false, "rolled back: oops"), want: "unhealthy:reported failure: rolled back: oops"},
		}},
		{name: "row 2: the latest negative report gives the reason", acts: []act{
			{report: healthBody(m1, D, "a.service", "b.service"), want: "unhealthy:health check failed: a.service, b.service"},
			{report: reportBody(m1, O, false, "rolled back: second"), want: "unhealthy:reported failure: rolled back: second"},
		}},
		{name: "row 2: the reason is cut at 200 bytes on a UTF-8 boundary", acts: []act{
			{report: reportBody(m1, O, false, longMsg), want: "unhealthy:reported failure: " + longMsg[:198]},
		}},
		{name: "row 1: skipped at deploy time", before: []act{{lifecycle: "maintenance"}},
			acts: []act{
				{want: "unhealthy:skipped: lifecycle maintenance"},
				{report: healthBody(m1, D), want: "unhealthy:skipped: lifecycle maintenance"},
			},
			check: func(t *testing.T, e *rtExecEnv) {
				rtWantDesired(t, e.c, e.url, m1, "", "", "") // the release path was never written
			}},
		{name: "row 1: decommissioned after deploy", acts: []act{
			{report: healthBody(m1, D), want: "healthy"},
			{lifecycle: "decommissioned", want: "unhealthy:skipped: lifecycle decommissioned"},
		}},
		{name: "§7.5: maintenance after deploy is still evaluated", acts: []act{
			{lifecycle: "maintenance", want: "pending"},
			{report: healthBody(m1, D), want: "healthy"},
		}},
		{name: "row 5: health timeout", acts: []act{
			{advance: 299 * time.Second, want: "pending"},
			{advance: time.Second, want: "unhealthy:health timeout after 300s"},
		}, wantBatch: "failed"},
		{name: "row 5: the timeout converts only pending machines", acts: []act{
			{report: reportBody(m1, O, false, "rolled back: early"), want: "unhealthy:reported failure: rolled back: early"},
			{advance: 300 * time.Second, want: "unhealthy:reported failure: rolled back: early"},
		}, wantBatch: "failed", check: func(t *testing.T, e *rtExecEnv) {
			if !strings.Contains(e.ts.logs.String(), `msg="Health timeout elapsed"`) {
				t.Fatal("no Health timeout elapsed log line")
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := rtNewExecEnv(t)
			e.register(m1, m2)
			rel := e.release(nil, m1, m2)
			body := rtHostsRollout(rel, "all_at_once", m1, m2)
			body["failure_threshold"] = "1"
			rid := e.create(body).RolloutID
			apply := func(a act) {
				t.Helper()
				d := a.advance
				if d == 0 {
					d = time.Second
				}
				e.advance(d)
				if a.report != nil {
					e.report(a.report)
				}
				if a.lifecycle != "" {
					rtLifecycle(t, e.c, e.url, e.admin, m1, a.lifecycle)
				}
			}
			for _, a := range tc.before {
				apply(a)
			}
			e.advance(time.Second)
			e.pass() // deploy, then a first evaluation
			d := e.detail(rid)
			if got := d.Batches[0].Status; got != "waiting_health" {
				t.Fatalf("after deploy: batch %s, want waiting_health", got)
			}
			for i, a := range tc.acts {
				apply(a)
				e.pass()
				d = e.detail(rid)
				if got := rtMachineHealth(t, d, m1); got != a.want {
					t.Fatalf("after action %d: web-01 is %q, want %q", i, got, a.want)
				}
			}
			want := tc.wantBatch
			if want == "" {
				want = "waiting_health"
			}
			if got := d.Batches[0].Status; got != want {
				t.Fatalf("batch %s, want %s", got, want)
			}
			if tc.check != nil {
				tc.check(t, e)
			}
		})
	}
}

// TestExecutorDeployACC84 checks the Deploy step (§9.4): one step turns the
// batch to deploying, writes the release path with the rollout's effective
// cache_url and poll_hint 5, and records its event and audit row; the next
// step turns it to waiting_health.
func TestExecutorDeployACC84(t *testing.T) {
	for _, tc := range []struct {
		name, releaseCache string
		rolloutCache       any
		want               string
	}{
		{"cache_url from the release", "https://cache.example.org", nil, `"https://cache.example.org"`},
		{"cache_url from the rollout", "https://cache.example.org", "https://other.example.org", `"https://other.example.org"`},
		{"no cache_url", "", nil, "null"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := rtNewExecEnv(t)
			ms := []string{"web-01", "web-02", "web-03"}
			e.register(ms...)
			var relCache *string
			if tc.releaseCache != "" {
				relCache = &tc.releaseCache
			}
			rel := e.release(relCache, ms...)
			body := rtHostsRollout(rel, "canary", ms...)
			body["cache_url"] = tc.rolloutCache
			cr := e.create(body)
			rid := cr.RolloutID
			for _, m := range ms { // creating a rollout writes no desired generation
				rtWantDesired(t, e.c, e.url, m, "", "", "")
			}
			canary := cr.Batches[0].MachineIDs[0]

			e.advance(2 * time.Second)
			deployedAt := e.nowStr()
			if !e.step(rid) {
				t.Fatal("deploy step reported no progress")
			}
			d := e.detail(rid)
			rtWantStrings(t, "statuses after deploy", rtBatchStatuses(d), []string{"deploying", "pending"})
			b0 := d.Batches[0]
			if b0.StartedAt == nil || *b0.StartedAt != deployedAt || b0.CompletedAt != nil || b0.SoakStartedAt != nil {
				t.Fatalf("batch 0 timestamps: %v %v %v", b0.StartedAt, b0.CompletedAt, b0.SoakStartedAt)
			}
			if d.UpdatedAt != deployedAt {
				t.Fatalf("updated_at %s, want %s", d.UpdatedAt, deployedAt)
			}
			if b0.ID != rid+"-b0" || d.Batches[1].ID != rid+"-b1" {
				t.Fatalf("batch ids %s %s", b0.ID, d.Batches[1].ID)
			}
			rtWantDesired(t, e.c, e.url, canary, rtRelPath(canary), tc.want, "5")
			for _, m := range cr.Batches[1].MachineIDs {
				rtWantDesired(t, e.c, e.url, m, "", "", "")
				if got := rtMachineHealth(t, d, m); got != "pending" {
					t.Fatalf("undeployed %s: %s", m, got)
				}
			}
			rtWantStrings(t, "events", rtEvents(t, d), []string{
				`status_change|apikey:deployer|{"from":"created","to":"running","strategy":"canary"}`,
				`batch_started|executor|{"batch_index":0,"machines":1,"skipped":0}`,
			})
			rtWantStrings(t, "audit", rtAudit(t, e.c, e.url, e.admin, "?actor=executor"), []string{
				fmt.Sprintf("batch.deploying|executor|%s-b0|Rollout %s batch 0 deploying 1 machines, 0 skipped", rid, rid),
			})
			rtWantStrings(t, "audit", rtAudit(t, e.c, e.url, e.admin, "?action=rollout.created"), []string{
				fmt.Sprintf("rollout.created|apikey:deployer|%s|strategy=canary machines=3 batches=2 skipped=0", rid),
			})

			e.advance(time.Second)
			if e.step(rid) {
				t.Fatal("an evaluation that waits must report no progress")
			}
			rtWantStrings(t, "statuses after evaluate", rtBatchStatuses(e.detail(rid)), []string{"waiting_health", "pending"})
			if e.step(rid) {
				t.Fatal("a step with nothing new must report no progress")
			}
			if got := len(e.detail(rid).Events); got != 2 {
				t.Fatalf("%d events after idle steps, want 2", got)
			}
		})
	}
}

// TestExecutorPollHintACC85 checks poll_hint (§6.7): 5 for machines of
// batches not yet finished (deployed or not) of a running rollout, null
// after a pause, a completion, and for machines outside the rollout; never 0.
func TestExecutorPollHintACC85(t *testing.T) {
	e := rtNewExecEnv(t)
	ms := []string{"web-01", "web-02"}
	e.register(append(ms, "web-03")...)
	for _, m := range []string{"web-01", "web-02", "web-03"} {
		rtNotify(t, e.c, e.url, e.dep, m, rtOldPath(m))
	}
	for _, m := range ms {
		rtWantDesired(t, e.c, e.url, m, rtOldPath(m), "null", "null")
	}
	rel := e.release(nil, ms...)
	body := rtHostsRollout(rel, "staged", ms...)
	body["batch_sizes"] = []string{"1", "100%"}
	cr := e.create(body)
	rid := cr.RolloutID
	first, second := cr.Batches[0].MachineIDs[0], cr.Batches[1].MachineIDs[0]

	// Running, nothing deployed yet: both are in unfinished batches.
	rtWantDesired(t, e.c, e.url, first, rtOldPath(first), "null", "5")
	rtWantDesired(t, e.c, e.url, second, rtOldPath(second), "null", "5")
	rtWantDesired(t, e.c, e.url, "web-03", rtOldPath("web-03"), "null", "null")

	e.advance(time.Second)
	e.pass()
	rtWantDesired(t, e.c, e.url, first, rtRelPath(first), "null", "5")
	rtWantDesired(t, e.c, e.url, second, rtOldPath(second), "null", "5") // batch 1 not yet deployed

	expect(t, e.action(rid, "pause", nil), 200, "")
	rtWantDesired(t, e.c, e.url, first, rtRelPath(first), "null", "null")
	rtWantDesired(t, e.c, e.url, second, rtOldPath(second), "null", "null")

	expect(t, e.action(rid, "resume", nil), 200, "")
	rtWantDesired(t, e.c, e.url, second, rtOldPath(second), "null", "5")

	e.advance(time.Second)
	e.pass()
	e.advance(time.Second)
	e.healthy(first)
	e.pass() // batch 0 succeeds, batch 1 deploys
	// The canary's batch has finished: no hint any more.
	rtWantDesired(t, e.c, e.url, first, rtRelPath(first), "null", "null")
	rtWantDesired(t, e.c, e.url, second, rtRelPath(second), "null", "5")
	e.advance(time.Second)
	e.healthy(second)
	e.pass()
	if got := e.detail(rid).Status; got != "completed" {
		t.Fatalf("rollout %s, want completed", got)
	}
	for _, m := range ms { // completed: pinned to the release, no hint
		rtWantDesired(t, e.c, e.url, m, rtRelPath(m), "null", "null")
	}
}

// TestExecutorFailurePausesACC88 checks a batch failure with on_failure
// pause (§9.7): fail fast with threshold "0", the events, audit rows and
// metrics of the transition, and that no desired generation changes.
func TestExecutorFailurePausesACC88(t *testing.T) {
	e := rtNewExecEnv(t)
	ms := []string{"web-01", "web-02"}
	e.register(ms...)
	rel := e.release(nil, ms...)
	rid := e.create(rtHostsRollout(rel, "all_at_once", ms...)).RolloutID
	pausedBefore := e.metric(`nixfleet_rollouts_total{status="paused"}`)
	e.advance(time.Second)
	e.pass()
	e.advance(time.Second)
	e.report(reportBody("web-01", rtOldPath("web-01"), false, "rolled back: switch failed"))
	failedAt := e.nowStr()
	e.pass()

	d := e.detail(rid)
	if d.Status != "paused" || d.Batches[0].Status != "failed" {
		t.Fatalf("rollout %s batch %s, want paused and failed", d.Status, d.Batches[0].Status)
	}
	if d.Batches[0].CompletedAt == nil || *d.Batches[0].CompletedAt != failedAt || d.UpdatedAt != failedAt {
		t.Fatalf("completed_at %v updated_at %s, want %s", d.Batches[0].CompletedAt, d.UpdatedAt, failedAt)
	}
	if got := rtMachineHealth(t, d, "web-01"); got != "unhealthy:reported failure: rolled back: switch failed" {
		t.Fatalf("web-01: %s", got)
	}
	if got := rtMachineHealth(t, d, "web-02"); got != "pending" { // fail fast: web-02 was not waited for
		t.Fatalf("web-02: %s", got)
	}
	evs := rtEvents(t, d)
	rtWantStrings(t, "events", evs, []string{
		`status_change|apikey:deployer|{"from":"created","to":"running","strategy":"all_at_once"}`,
		`batch_started|executor|{"batch_index":0,"machines":2,"skipped":0}`,
		`batch_failed|executor|{"batch_index":0,"unhealthy":1,"threshold":0}`,
		`status_change|executor|{"from":"running","to":"paused","reason":"batch failure"}`,
	})
	if !strings.Contains(d.Events[2].Detail, `"unhealthy":1`) {
		t.Fatal(`batch_failed detail lacks "unhealthy":1`)
	}
	rtWantStrings(t, "audit", rtAudit(t, e.c, e.url, e.admin, "?actor=executor"), []string{
		fmt.Sprintf("batch.deploying|executor|%s-b0|Rollout %s batch 0 deploying 2 machines, 0 skipped", rid, rid),
		fmt.Sprintf("batch.failed|executor|%s-b0|Batch 0 failed: 1 unhealthy > threshold 0", rid),
		fmt.Sprintf("rollout.paused|executor|%s|Batch failure triggered pause", rid),
	})
	if got := e.metric(`nixfleet_rollouts_total{status="paused"}`); got != pausedBefore+1 {
		t.Fatalf("rollouts_total paused %v, want %v", got, pausedBefore+1)
	}
	if got := e.metric("nixfleet_rollouts_active"); got != 1 {
		t.Fatalf("rollouts_active %v, want 1 (paused is active)", got)
	}
	for _, m := range ms {
		rtWantDesired(t, e.c, e.url, m, rtRelPath(m), "null", "null")
	}
	// A paused rollout is never advanced, whatever arrives.
	e.healthy("web-02")
	e.advance(time.Hour)
	e.pass()
	if e.step(rid) {
		t.Fatal("step advanced a paused rollout")
	}
	if d2 := e.detail(rid); len(d2.Events) != 4 || rtMachineHealth(t, d2, "web-02") != "pending" || d2.Status != "paused" {
		t.Fatalf("paused rollout changed: %s %v", d2.Status, rtEvents(t, d2))
	}
}

// TestExecutorHealthTimeoutACC90 checks the timeout (§9.6): a silent machine
// turns unhealthy exactly health_timeout seconds after S, the batch fails and
// the executor logs "Health timeout elapsed".
func TestExecutorHealthTimeoutACC90(t *testing.T) {
	e := rtNewExecEnv(t)
	e.register("web-01")
	rel := e.release(nil, "web-01")
	body := rtHostsRollout(rel, "all_at_once", "web-01")
	body["health_timeout"] = 5
	rid := e.create(body).RolloutID
	e.pass()
	e.advance(4999 * time.Millisecond)
	e.pass()
	if d := e.detail(rid); d.Status != "running" || d.Batches[0].Status != "waiting_health" {
		t.Fatalf("before the timeout: %s %s", d.Status, d.Batches[0].Status)
	}
	if strings.Contains(e.ts.logs.String(), "Health timeout elapsed") {
		t.Fatal("timeout logged early")
	}
	e.advance(time.Millisecond)
	e.pass()
	d := e.detail(rid)
	if d.Status != "paused" || d.Batches[0].Status != "failed" {
		t.Fatalf("after the timeout: %s %s", d.Status, d.Batches[0].Status)
	}
	if got := rtMachineHealth(t, d, "web-01"); got != "unhealthy:health timeout after 5s" {
		t.Fatalf("web-01: %s", got)
	}
	logs := e.ts.logs.String()
	line := ""
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, `msg="Health timeout elapsed"`) {
			line = l
		}
	}
	for _, want := range []string{"level=WARN", "rollout=" + rid, "batch=0", "pending=1"} {
		if !strings.Contains(line, want) {
			t.Fatalf("log line %q lacks %q", line, want)
		}
	}
}

// TestExecutorThresholdACC91 checks the threshold verdicts of §9.6 on 10
// machines with "30%" (t = 3).
func TestExecutorThresholdACC91(t *testing.T) {
	var ms []string
	for i := 1; i <= 10; i++ {
		ms = append(ms, fmt.Sprintf("web-%02d", i))
	}
	setup := func(t *testing.T) (*rtExecEnv, string) {
		e := rtNewExecEnv(t)
		e.register(ms...)
		rel := e.release(nil, ms...)
		body := rtHostsRollout(rel, "all_at_once", ms...)
		body["failure_threshold"] = "30%"
		rid := e.create(body).RolloutID
		e.pass()
		e.advance(time.Second)
		return e, rid
	}
	t.Run("4 unhealthy pause at once (fail fast)", func(t *testing.T) {
		e, rid := setup(t)
		for _, m := range ms[:3] {
			e.report(reportBody(m, rtOldPath(m), false, "rolled back: x"))
		}
		e.pass()
		if d := e.detail(rid); d.Status != "running" || d.Batches[0].Status != "waiting_health" {
			t.Fatalf("3 unhealthy, 7 pending: %s %s", d.Status, d.Batches[0].Status)
		}
		e.report(healthBody(ms[3], rtRelPath(ms[3]), "nginx.service"))
		e.pass()
		d := e.detail(rid)
		if d.Status != "paused" || d.Batches[0].Status != "failed" {
			t.Fatalf("4 unhealthy: %s %s", d.Status, d.Batches[0].Status)
		}
		evs := rtEvents(t, d)
		if evs[2] != `batch_failed|executor|{"batch_index":0,"unhealthy":4,"threshold":3}` {
			t.Fatalf("event %s", evs[2])
		}
	})
	t.Run("3 unhealthy and 7 healthy succeed", func(t *testing.T) {
		e, rid := setup(t)
		for _, m := range ms[:3] {
			e.report(reportBody(m, rtOldPath(m), false, "rolled back: x"))
		}
		for _, m := range ms[3:] {
			e.healthy(m)
		}
		e.pass()
		d := e.detail(rid)
		if d.Status != "completed" || d.Batches[0].Status != "succeeded" {
			t.Fatalf("%s %s", d.Status, d.Batches[0].Status)
		}
		evs := rtEvents(t, d)
		if evs[2] != `batch_completed|executor|{"batch_index":0,"healthy":7,"unhealthy":3}` {
			t.Fatalf("event %s", evs[2])
		}
		rtWantStrings(t, "audit", rtAudit(t, e.c, e.url, e.admin, "?action=batch.succeeded"), []string{
			fmt.Sprintf("batch.succeeded|executor|%s-b0|Batch 0 succeeded: 7 healthy, 3 unhealthy (threshold: 3)", rid),
		})
	})
}

// TestExecutorStagedCompletesACC92 runs staged ["2","2","2"] over 6 healthy
// machines to completion (§9.8): batches succeed in order, each event and
// audit row of each transition, and the rollout metrics (ACC-115).
func TestExecutorStagedCompletesACC92(t *testing.T) {
	e := rtNewExecEnv(t)
	ms := []string{"web-01", "web-02", "web-03", "web-04", "web-05", "web-06"}
	e.register(ms...)
	rel := e.release(nil, ms...)
	completedBefore := e.metric(`nixfleet_rollouts_total{status="completed"}`)
	body := rtHostsRollout(rel, "staged", ms...)
	body["batch_sizes"] = []string{"2", "2", "2"}
	cr := e.create(body)
	rid := cr.RolloutID
	if got := e.metric("nixfleet_rollouts_active"); got != 1 {
		t.Fatalf("rollouts_active %v after create, want 1", got)
	}
	for i := range 3 {
		e.advance(time.Second)
		e.pass()
		d := e.detail(rid)
		want := []string{"succeeded", "succeeded", "succeeded"}
		want[i] = "waiting_health"
		for j := i + 1; j < 3; j++ {
			want[j] = "pending"
		}
		rtWantStrings(t, fmt.Sprintf("statuses with batch %d deployed", i), rtBatchStatuses(d), want)
		for _, m := range cr.Batches[i].MachineIDs {
			rtWantDesired(t, e.c, e.url, m, rtRelPath(m), "null", "5")
		}
		for j := i + 1; j < 3; j++ {
			for _, m := range cr.Batches[j].MachineIDs {
				rtWantDesired(t, e.c, e.url, m, "", "", "")
			}
		}
		e.advance(time.Second)
		for _, m := range cr.Batches[i].MachineIDs {
			e.healthy(m)
		}
	}
	e.advance(time.Second)
	e.pass()
	d := e.detail(rid)
	if d.Status != "completed" {
		t.Fatalf("rollout %s, want completed", d.Status)
	}
	for i, b := range d.Batches {
		if b.Status != "succeeded" || b.StartedAt == nil || b.CompletedAt == nil {
			t.Fatalf("batch %d: %+v", i, b)
		}
		if i > 0 && *b.StartedAt < *d.Batches[i-1].CompletedAt {
			t.Fatalf("batch %d started at %s before batch %d completed at %s", i, *b.StartedAt, i-1, *d.Batches[i-1].CompletedAt)
		}
		for _, m := range b.MachineIDs {
			if got := rtHealthOf(t, b.MachineHealth[m]); got != "healthy" {
				t.Fatalf("%s: %s", m, got)
			}
		}
	}
	rtWantStrings(t, "events", rtEvents(t, d), []string{
		`status_change|apikey:deployer|{"from":"created","to":"running","strategy":"staged"}`,
		`batch_started|executor|{"batch_index":0,"machines":2,"skipped":0}`,
		`batch_completed|executor|{"batch_index":0,"healthy":2,"unhealthy":0}`,
		`batch_started|executor|{"batch_index":1,"machines":2,"skipped":0}`,
		`batch_completed|executor|{"batch_index":1,"healthy":2,"unhealthy":0}`,
		`batch_started|executor|{"batch_index":2,"machines":2,"skipped":0}`,
		`batch_completed|executor|{"batch_index":2,"healthy":2,"unhealthy":0}`,
		`status_change|executor|{"from":"running","to":"completed"}`,
	})
	var want []string
	for i := range 3 {
		want = append(want,
			fmt.Sprintf("batch.deploying|executor|%s-b%d|Rollout %s batch %d deploying 2 machines, 0 skipped", rid, i, rid, i),
			fmt.Sprintf("batch.succeeded|executor|%s-b%d|Batch %d succeeded: 2 healthy, 0 unhealthy (threshold: 0)", rid, i, i))
	}
	want = append(want, fmt.Sprintf("rollout.completed|executor|%s|All batches succeeded", rid))
	rtWantStrings(t, "audit", rtAudit(t, e.c, e.url, e.admin, "?actor=executor"), want)
	if got := e.metric(`nixfleet_rollouts_total{status="completed"}`); got != completedBefore+1 {
		t.Fatalf("rollouts_total completed %v, want %v", got, completedBefore+1)
	}
	if got := e.metric("nixfleet_rollouts_active"); got != 0 {
		t.Fatalf("rollouts_active %v, want 0", got)
	}
	for _, m := range ms { // the machines stay pinned to the release
		rtWantDesired(t, e.c, e.url, m, rtRelPath(m), "null", "null")
	}
	if e.step(rid) {
		t.Fatal("a completed rollout must not step")
	}
}

// TestExecutorSkipsMaintenanceACC93 checks that a machine put into
// maintenance before its batch deploys is skipped (§9.4): no release path,
// machine_health "skipped: lifecycle maintenance", the batch still succeeds.
func TestExecutorSkipsMaintenanceACC93(t *testing.T) {
	e := rtNewExecEnv(t)
	ms := []string{"web-01", "web-02", "web-03"}
	e.register(ms...)
	rel := e.release(nil, ms...)
	body := rtHostsRollout(rel, "staged", ms...)
	body["batch_sizes"] = []string{"1", "100%"}
	cr := e.create(body)
	rid := cr.RolloutID
	canary := cr.Batches[0].MachineIDs[0]
	skip, keep := cr.Batches[1].MachineIDs[0], cr.Batches[1].MachineIDs[1]
	e.pass()
	rtLifecycle(t, e.c, e.url, e.admin, skip, "maintenance")
	e.advance(time.Second)
	e.healthy(canary)
	e.pass()
	d := e.detail(rid)
	rtWantStrings(t, "statuses", rtBatchStatuses(d), []string{"succeeded", "waiting_health"})
	if got := rtMachineHealth(t, d, skip); got != "unhealthy:skipped: lifecycle maintenance" {
		t.Fatalf("%s: %s", skip, got)
	}
	rtWantDesired(t, e.c, e.url, skip, "", "", "")
	rtWantDesired(t, e.c, e.url, keep, rtRelPath(keep), "null", "5")
	captured, _ := e.prev(rid, skip)
	if captured {
		t.Fatal("a skipped machine's previous generation was captured")
	}
	e.advance(time.Second)
	e.healthy(keep)
	e.pass()
	d = e.detail(rid)
	if d.Status != "completed" {
		t.Fatalf("rollout %s", d.Status)
	}
	evs := rtEvents(t, d)
	rtWantStrings(t, "batch 1 events", evs[3:5], []string{
		`batch_started|executor|{"batch_index":1,"machines":1,"skipped":1}`,
		`batch_completed|executor|{"batch_index":1,"healthy":1,"unhealthy":0}`,
	})
	rtWantStrings(t, "batch 1 audit", rtAudit(t, e.c, e.url, e.admin, "?target="+rid+"-b1"), []string{
		fmt.Sprintf("batch.deploying|executor|%s-b1|Rollout %s batch 1 deploying 1 machines, 1 skipped", rid, rid),
		fmt.Sprintf("batch.succeeded|executor|%s-b1|Batch 1 succeeded: 1 healthy, 0 unhealthy (threshold: 0)", rid),
	})
	if got := rtMachineHealth(t, d, skip); got != "unhealthy:skipped: lifecycle maintenance" {
		t.Fatalf("terminal rollout: %s: %s", skip, got)
	}

	t.Run("a batch of only skipped machines succeeds at once", func(t *testing.T) {
		e := rtNewExecEnv(t)
		e.register("web-01")
		rel := e.release(nil, "web-01")
		rid := e.create(rtHostsRollout(rel, "all_at_once", "web-01")).RolloutID
		rtLifecycle(t, e.c, e.url, e.admin, "web-01", "maintenance")
		e.pass()
		d := e.detail(rid)
		if d.Status != "completed" {
			t.Fatalf("rollout %s", d.Status)
		}
		rtWantStrings(t, "events", rtEvents(t, d)[1:], []string{
			`batch_started|executor|{"batch_index":0,"machines":0,"skipped":1}`,
			`batch_completed|executor|{"batch_index":0,"healthy":0,"unhealthy":0}`,
			`status_change|executor|{"from":"running","to":"completed"}`,
		})
	})
}

// TestExecutorRevertACC94 checks on_failure revert (§9.7): A (previous
// desired G1, from notify-deploy) and B (none), staged ["1","1"]; the batch-0
// machine is healthy, the batch-1 machine fails: the rollout fails, A is
// restored to G1, B is cleared, with one machine.reverted row each.
func TestExecutorRevertACC94(t *testing.T) {
	e := rtNewExecEnv(t)
	const A, B = "web-a", "web-b"
	e.register(A, B)
	rtNotify(t, e.c, e.url, e.dep, A, rtOldPath(A))
	// The rollout's cache_url goes with the release path, and not with the
	// restored previous path (§9.7: cache_url null).
	rel := e.release(rtPtr("https://cache.example.org"), A, B)
	failedBefore := e.metric(`nixfleet_rollouts_total{status="failed"}`)
	body := rtHostsRollout(rel, "staged", A, B)
	body["batch_sizes"] = []string{"1", "1"}
	body["on_failure"] = "revert"
	cr := e.create(body)
	rid := cr.RolloutID
	first, second := cr.Batches[0].MachineIDs[0], cr.Batches[1].MachineIDs[0]
	e.pass()
	rtWantDesired(t, e.c, e.url, first, rtRelPath(first), `"https://cache.example.org"`, "5")
	e.advance(time.Second)
	e.healthy(first)
	e.pass()
	e.advance(time.Second)
	e.report(reportBody(second, rtRelPath(second), false, "rolled back: boom"))
	e.pass()

	d := e.detail(rid)
	rtWantStrings(t, "statuses", append([]string{d.Status}, rtBatchStatuses(d)...), []string{"failed", "succeeded", "failed"})
	rtWantDesired(t, e.c, e.url, A, rtOldPath(A), "null", "null")
	rtWantDesired(t, e.c, e.url, B, "", "", "")
	rtWantStrings(t, "reverted", rtAudit(t, e.c, e.url, e.admin, "?action=machine.reverted"), []string{
		fmt.Sprintf("machine.reverted|executor|%s|%s -> %s", A, rtRelPath(A), rtOldPath(A)),
		fmt.Sprintf("machine.reverted|executor|%s|%s -> (cleared)", B, rtRelPath(B)),
	})
	evs := rtEvents(t, d)
	rtWantStrings(t, "last events", evs[len(evs)-2:], []string{
		`batch_failed|executor|{"batch_index":1,"unhealthy":1,"threshold":0}`,
		`status_change|executor|{"from":"running","to":"failed","reason":"batch failure + revert","restored":1,"cleared":1}`,
	})
	rtWantStrings(t, "rollout audit", rtAudit(t, e.c, e.url, e.admin, "?target="+rid), []string{
		fmt.Sprintf("rollout.created|apikey:deployer|%s|strategy=staged machines=2 batches=2 skipped=0", rid),
		fmt.Sprintf("rollout.failed|executor|%s|Batch failure triggered revert", rid),
	})
	if got := e.metric(`nixfleet_rollouts_total{status="failed"}`); got != failedBefore+1 {
		t.Fatalf("rollouts_total failed %v, want %v", got, failedBefore+1)
	}
	if got := e.metric("nixfleet_rollouts_active"); got != 0 {
		t.Fatalf("rollouts_active %v", got)
	}
	// The same machines can join a new rollout at once.
	e.create(rtHostsRollout(rel, "all_at_once", A, B))
}

// TestExecutorResumeRedeployACC95 checks resume after an automatic pause
// (§9.9): the failed batch is redeployed, previous generations are not
// captured again (ACC-101), old evidence is ignored (ACC-96), and a later
// cancel with revert restores the values from before the rollout.
func TestExecutorResumeRedeployACC95(t *testing.T) {
	e := rtNewExecEnv(t)
	const A, B = "web-a", "web-b"
	e.register(A, B)
	rtNotify(t, e.c, e.url, e.dep, A, rtOldPath(A))
	rel := e.release(nil, A, B)
	rid := e.create(rtHostsRollout(rel, "all_at_once", A, B)).RolloutID
	e.pass()
	checkPrev := func(when string) {
		t.Helper()
		if c, h := e.prev(rid, A); !c || h == nil || *h != rtOldPath(A) {
			t.Fatalf("%s: A prev %v %v, want %s", when, c, h, rtOldPath(A))
		}
		if c, h := e.prev(rid, B); !c || h != nil {
			t.Fatalf("%s: B prev %v %v, want captured none", when, c, h)
		}
	}
	checkPrev("after the first deploy")
	e.advance(time.Second)
	e.healthy(B)
	e.report(reportBody(A, rtOldPath(A), false, "rolled back: boom"))
	e.pass()
	if d := e.detail(rid); d.Status != "paused" || d.Batches[0].Status != "failed" {
		t.Fatalf("%s %s", d.Status, d.Batches[0].Status)
	}

	e.advance(time.Second)
	expect(t, e.action(rid, "resume", nil), 200, "")
	d := e.detail(rid)
	b0 := d.Batches[0]
	if d.Status != "running" || b0.Status != "pending" || b0.StartedAt != nil || b0.CompletedAt != nil || b0.SoakStartedAt != nil {
		t.Fatalf("after resume: %s %+v", d.Status, b0)
	}
	for _, m := range []string{A, B} {
		if got := rtMachineHealth(t, d, m); got != "pending" {
			t.Fatalf("after resume %s: %s", m, got)
		}
	}
	if got := rtEvents(t, d)[4]; got != `status_change|apikey:deployer|{"from":"paused","to":"running"}` {
		t.Fatalf("resume event %s", got)
	}
	rtWantStrings(t, "resume audit", rtAudit(t, e.c, e.url, e.admin, "?action=rollout.resumed"), []string{
		fmt.Sprintf("rollout.resumed|apikey:deployer|%s|<nil>", rid),
	})

	e.advance(time.Second)
	e.pass() // redeploy
	checkPrev("after the redeploy")
	d = e.detail(rid)
	if d.Batches[0].Status != "waiting_health" || *d.Batches[0].StartedAt != e.nowStr() {
		t.Fatalf("redeploy: %+v", d.Batches[0])
	}
	if n := strings.Count(strings.Join(rtEvents(t, d), "\n"), "batch_started|"); n != 2 {
		t.Fatalf("%d batch_started events, want 2", n)
	}
	// ACC-96: the old failure and the old passing report are not fresh.
	for range 3 {
		e.advance(10 * time.Second)
		e.pass()
	}
	d = e.detail(rid)
	if d.Status != "running" || rtMachineHealth(t, d, A) != "pending" || rtMachineHealth(t, d, B) != "pending" {
		t.Fatalf("old evidence used: %s %s %s", d.Status, rtMachineHealth(t, d, A), rtMachineHealth(t, d, B))
	}

	cancelledBefore := e.metric(`nixfleet_rollouts_total{status="cancelled"}`)
	expect(t, e.action(rid, "cancel", map[string]any{"revert": true}), 200, "")
	rtWantDesired(t, e.c, e.url, A, rtOldPath(A), "null", "null")
	rtWantDesired(t, e.c, e.url, B, "", "", "")
	rtWantStrings(t, "reverted", rtAudit(t, e.c, e.url, e.admin, "?action=machine.reverted"), []string{
		fmt.Sprintf("machine.reverted|apikey:deployer|%s|%s -> %s", A, rtRelPath(A), rtOldPath(A)),
		fmt.Sprintf("machine.reverted|apikey:deployer|%s|%s -> (cleared)", B, rtRelPath(B)),
	})
	d = e.detail(rid)
	evs := rtEvents(t, d)
	if got := evs[len(evs)-1]; got != `status_change|apikey:deployer|{"from":"running","to":"cancelled","revert":true,"restored":1,"cleared":1}` {
		t.Fatalf("cancel event %s", got)
	}
	rtWantStrings(t, "cancel audit", rtAudit(t, e.c, e.url, e.admin, "?action=rollout.cancelled"), []string{
		fmt.Sprintf("rollout.cancelled|apikey:deployer|%s|revert: restored 1, cleared 1", rid),
	})
	if d.Batches[0].Status != "waiting_health" {
		t.Fatalf("cancel must freeze batches, got %s", d.Batches[0].Status)
	}
	if got := e.metric(`nixfleet_rollouts_total{status="cancelled"}`); got != cancelledBefore+1 {
		t.Fatalf("rollouts_total cancelled %v, want %v", got, cancelledBefore+1)
	}
}

// TestExecutorRevertSkipsACC101 checks the skip rules of the revert
// procedure (§9.7) through cancel with revert: machines that were never
// deployed, are decommissioned, or whose desired generation is no longer the
// rollout's path are left alone; every other machine gets one
// machine.reverted row.
func TestExecutorRevertSkipsACC101(t *testing.T) {
	e := rtNewExecEnv(t)
	ms := []string{"web-a", "web-b", "web-c", "web-d", "web-e"}
	e.register(ms...)
	for _, m := range ms {
		if m != "web-b" {
			rtNotify(t, e.c, e.url, e.dep, m, rtOldPath(m))
		}
	}
	rel := e.release(nil, ms...)
	body := rtHostsRollout(rel, "staged", ms...)
	body["batch_sizes"] = []string{"4", "100%"}
	cr := e.create(body)
	rid := cr.RolloutID
	undeployed := cr.Batches[1].MachineIDs[0]
	e.pass()

	// Give the four deployed machines roles: web-b (no previous generation)
	// is cleared if it was deployed; of the others, one is decommissioned,
	// one gets its desired generation changed, the rest are restored.
	var others []string
	for _, m := range cr.Batches[0].MachineIDs {
		if m != "web-b" {
			others = append(others, m)
		}
	}
	decommissioned, changed := others[0], others[1]
	rtLifecycle(t, e.c, e.url, e.admin, decommissioned, "decommissioned")
	err := e.ts.st.write(e.ctx, func(tx *txn) error { // what the API cannot do while the rollout runs
		_, err := tx.setDesired(tx.machine(changed), rtOtherPath(changed), nil, "test")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	expect(t, e.action(rid, "cancel", map[string]any{"revert": true}), 200, "")

	var want []string
	nRestored, nCleared := 0, 0
	for _, m := range ms {
		switch {
		case m == undeployed: // never deployed: not reverted
			if m == "web-b" {
				rtWantDesired(t, e.c, e.url, m, "", "", "")
			} else {
				rtWantDesired(t, e.c, e.url, m, rtOldPath(m), "null", "null")
			}
		case m == decommissioned:
			rtWantDesired(t, e.c, e.url, m, "", "", "")
		case m == changed:
			rtWantDesired(t, e.c, e.url, m, rtOtherPath(m), "null", "null")
		case m == "web-b":
			want = append(want, fmt.Sprintf("machine.reverted|apikey:deployer|%s|%s -> (cleared)", m, rtRelPath(m)))
			rtWantDesired(t, e.c, e.url, m, "", "", "")
			nCleared++
		default:
			want = append(want, fmt.Sprintf("machine.reverted|apikey:deployer|%s|%s -> %s", m, rtRelPath(m), rtOldPath(m)))
			rtWantDesired(t, e.c, e.url, m, rtOldPath(m), "null", "null")
			nRestored++
		}
	}
	rtWantStrings(t, "reverted", rtAudit(t, e.c, e.url, e.admin, "?action=machine.reverted"), want)
	d := e.detail(rid)
	evs := rtEvents(t, d)
	wantEv := fmt.Sprintf(`status_change|apikey:deployer|{"from":"running","to":"cancelled","revert":true,"restored":%d,"cleared":%d}`, nRestored, nCleared)
	if evs[len(evs)-1] != wantEv {
		t.Fatalf("cancel event %s, want %s", evs[len(evs)-1], wantEv)
	}
	if c, _ := e.prev(rid, undeployed); c {
		t.Fatal("an undeployed machine has a captured previous generation")
	}
}

// TestExecutorCancelWithoutRevertACC101 checks that cancel without a body
// changes no desired generation and freezes the batches.
func TestExecutorCancelWithoutRevertACC101(t *testing.T) {
	e := rtNewExecEnv(t)
	ms := []string{"web-01", "web-02"}
	e.register(ms...)
	rtNotify(t, e.c, e.url, e.dep, "web-01", rtOldPath("web-01"))
	rel := e.release(nil, ms...)
	rid := e.create(rtHostsRollout(rel, "all_at_once", ms...)).RolloutID
	e.pass()
	expect(t, e.action(rid, "cancel", nil), 200, "")
	for _, m := range ms {
		rtWantDesired(t, e.c, e.url, m, rtRelPath(m), "null", "null")
	}
	d := e.detail(rid)
	if d.Status != "cancelled" || d.Batches[0].Status != "waiting_health" {
		t.Fatalf("%s %s", d.Status, d.Batches[0].Status)
	}
	evs := rtEvents(t, d)
	if evs[len(evs)-1] != `status_change|apikey:deployer|{"from":"running","to":"cancelled"}` {
		t.Fatalf("cancel event %s", evs[len(evs)-1])
	}
	rtWantStrings(t, "audit", rtAudit(t, e.c, e.url, e.admin, "?action=rollout.cancelled"), []string{
		fmt.Sprintf("rollout.cancelled|apikey:deployer|%s|<nil>", rid),
	})
	if n := len(auditRows(t, e.c, e.url, e.admin, "?action=machine.reverted")); n != 0 {
		t.Fatalf("%d machine.reverted rows", n)
	}
	e.healthy("web-01")
	e.pass()
	if d2 := e.detail(rid); len(d2.Events) != len(d.Events) || d2.Status != "cancelled" {
		t.Fatal("a cancelled rollout was advanced")
	}
}

// TestExecutorSoakACC97 checks the soak (§9.6 step 4) on the fake clock.
func TestExecutorSoakACC97(t *testing.T) {
	setup := func(t *testing.T) (*rtExecEnv, string) {
		e := rtNewExecEnv(t)
		e.register("web-01")
		rel := e.release(nil, "web-01")
		body := rtHostsRollout(rel, "all_at_once", "web-01")
		body["soak_seconds"] = 10
		rid := e.create(body).RolloutID
		e.pass()
		e.advance(time.Second)
		e.healthy("web-01")
		e.pass()
		return e, rid
	}
	soakOf := func(t *testing.T, e *rtExecEnv, rid string) (string, *string) {
		d := e.detail(rid)
		if d.Status != "running" && d.Status != "completed" && d.Status != "paused" {
			t.Fatalf("rollout %s", d.Status)
		}
		return d.Batches[0].Status, d.Batches[0].SoakStartedAt
	}
	t.Run("stays waiting_health until soak_seconds pass", func(t *testing.T) {
		e, rid := setup(t)
		started := e.nowStr()
		st, soak := soakOf(t, e, rid)
		if st != "waiting_health" || soak == nil || *soak != started {
			t.Fatalf("soak start: %s %v, want waiting_health %s", st, soak, started)
		}
		if rtMachineHealth(t, e.detail(rid), "web-01") != "healthy" {
			t.Fatal("not healthy")
		}
		e.advance(9999 * time.Millisecond)
		e.pass()
		if st, soak := soakOf(t, e, rid); st != "waiting_health" || soak == nil || *soak != started {
			t.Fatalf("during soak: %s %v", st, soak)
		}
		e.advance(time.Millisecond)
		e.pass()
		d := e.detail(rid)
		if d.Status != "completed" || d.Batches[0].Status != "succeeded" {
			t.Fatalf("after soak: %s %s", d.Status, d.Batches[0].Status)
		}
	})
	t.Run("pending during the soak restarts it", func(t *testing.T) {
		e, rid := setup(t)
		e.advance(5 * time.Second)
		e.report(reportBody("web-01", rtOtherPath("web-01"), true, "up-to-date")) // last on another generation
		e.pass()
		if st, soak := soakOf(t, e, rid); st != "waiting_health" || soak != nil {
			t.Fatalf("pending during soak: %s %v, want waiting_health and null", st, soak)
		}
		e.advance(5 * time.Second)
		e.report(healthBody("web-01", rtRelPath("web-01")))
		restarted := e.nowStr()
		e.pass()
		if st, soak := soakOf(t, e, rid); st != "waiting_health" || soak == nil || *soak != restarted {
			t.Fatalf("soak restart: %s %v, want %s", st, soak, restarted)
		}
		e.advance(9 * time.Second) // 19 s after the first start: still soaking
		e.pass()
		if st, _ := soakOf(t, e, rid); st != "waiting_health" {
			t.Fatalf("restarted soak ended early: %s", st)
		}
		e.advance(time.Second)
		e.pass()
		if st, _ := soakOf(t, e, rid); st != "succeeded" {
			t.Fatalf("after the restarted soak: %s", st)
		}
	})
	t.Run("a batch of only skipped machines does not soak", func(t *testing.T) {
		e := rtNewExecEnv(t)
		e.register("web-01")
		rel := e.release(nil, "web-01")
		body := rtHostsRollout(rel, "all_at_once", "web-01")
		body["soak_seconds"] = 10
		rid := e.create(body).RolloutID
		rtLifecycle(t, e.c, e.url, e.admin, "web-01", "maintenance")
		e.pass()
		if d := e.detail(rid); d.Status != "completed" || d.Batches[0].SoakStartedAt != nil {
			t.Fatalf("%s %+v", d.Status, d.Batches[0])
		}
	})
	t.Run("a failure during the soak fails the batch", func(t *testing.T) {
		e, rid := setup(t)
		e.advance(3 * time.Second)
		e.report(healthBody("web-01", rtRelPath("web-01"), "nginx.service"))
		e.pass()
		d := e.detail(rid)
		if d.Status != "paused" || d.Batches[0].Status != "failed" {
			t.Fatalf("%s %s", d.Status, d.Batches[0].Status)
		}
		if got := rtMachineHealth(t, d, "web-01"); got != "unhealthy:health check failed: nginx.service" {
			t.Fatalf("web-01: %s", got)
		}
	})
}

// TestExecutorResumeRestartsWindowACC96 checks resume after a manual pause of
// a batch under evaluation (§9.9): started_at becomes now, soak_started_at is
// cleared, machines go back to pending, and evidence from before the resume
// is ignored.
func TestExecutorResumeRestartsWindowACC96(t *testing.T) {
	e := rtNewExecEnv(t)
	ms := []string{"web-01", "web-02"}
	e.register(ms...)
	rel := e.release(nil, ms...)
	body := rtHostsRollout(rel, "all_at_once", ms...)
	body["soak_seconds"] = 60
	rid := e.create(body).RolloutID
	e.pass()
	e.advance(time.Second)
	e.healthy("web-01")
	e.healthy("web-02")
	e.pass()
	d := e.detail(rid)
	if d.Batches[0].SoakStartedAt == nil {
		t.Fatal("soak did not start")
	}
	expect(t, e.action(rid, "pause", nil), 200, "")
	e.advance(time.Second)
	expect(t, e.action(rid, "resume", nil), 200, "")
	resumedAt := e.nowStr()
	d = e.detail(rid)
	b := d.Batches[0]
	if b.Status != "waiting_health" || b.StartedAt == nil || *b.StartedAt != resumedAt || b.SoakStartedAt != nil {
		t.Fatalf("after resume: %+v", b)
	}
	for _, m := range ms {
		if got := rtMachineHealth(t, d, m); got != "pending" {
			t.Fatalf("%s: %s", m, got)
		}
	}
	for range 3 {
		e.advance(30 * time.Second)
		e.pass()
	}
	d = e.detail(rid)
	if d.Status != "running" || d.Batches[0].Status != "waiting_health" || d.Batches[0].SoakStartedAt != nil {
		t.Fatalf("old evidence counted after resume: %s %+v", d.Status, d.Batches[0])
	}
	e.healthy("web-01")
	e.healthy("web-02")
	e.pass()
	if d := e.detail(rid); d.Batches[0].SoakStartedAt == nil || *d.Batches[0].SoakStartedAt != e.nowStr() {
		t.Fatalf("fresh evidence did not start the soak: %+v", d.Batches[0])
	}
}

// TestExecutorCompareAndSwap checks that every step is a compare-and-swap on
// what it read (§9.3): a pause (or a pause and resume) between the snapshot
// and the write makes the step a no-op, and paused or cancelled rollouts are
// never advanced.
func TestExecutorCompareAndSwap(t *testing.T) {
	setup := func(t *testing.T) (*rtExecEnv, string) {
		e := rtNewExecEnv(t)
		e.register("web-01")
		rel := e.release(nil, "web-01")
		return e, e.create(rtHostsRollout(rel, "all_at_once", "web-01")).RolloutID
	}
	snapshot := func(t *testing.T, e *rtExecEnv, rid string) (*rolloutRow, []batchRow) {
		d := dbq{e.ctx, e.ts.st.ro}
		r, err := d.rollout(rid)
		if err != nil || r == nil {
			t.Fatal(r, err)
		}
		bs, err := d.batches(rid)
		if err != nil {
			t.Fatal(err)
		}
		return r, bs
	}
	auditCount := func(e *rtExecEnv) int { return len(auditRows(e.t, e.c, e.url, e.admin, "?limit=1000")) }

	for _, between := range []string{"pause", "pause and resume"} {
		t.Run("deploy after "+between, func(t *testing.T) {
			e, rid := setup(t)
			r, bs := snapshot(t, e, rid)
			expect(t, e.action(rid, "pause", nil), 200, "")
			if between == "pause and resume" {
				expect(t, e.action(rid, "resume", nil), 200, "")
			}
			before, audits := e.detail(rid), auditCount(e)
			if err := e.ts.exec.deploy(e.ctx, r, bs[0]); !errors.Is(err, errStale) {
				t.Fatalf("stale deploy: %v, want errStale", err)
			}
			after := e.detail(rid)
			if after.Batches[0].Status != "pending" || len(after.Events) != len(before.Events) || auditCount(e) != audits {
				t.Fatalf("stale deploy changed something: %v", rtEvents(t, after))
			}
			rtWantDesired(t, e.c, e.url, "web-01", "", "", "")
			if c, _ := e.prev(rid, "web-01"); c {
				t.Fatal("stale deploy captured a previous generation")
			}
		})
	}
	t.Run("evaluate after pause", func(t *testing.T) {
		e, rid := setup(t)
		e.pass()
		e.advance(time.Second)
		e.report(reportBody("web-01", rtOldPath("web-01"), false, "rolled back: x"))
		r, bs := snapshot(t, e, rid)
		d := dbq{e.ctx, e.ts.st.ro}
		members, err := d.members(rid, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, sums, err := e.ts.exec.evidence.update(d, r, bs[0])
		if err != nil {
			t.Fatal(err)
		}
		snap := stepSnapshot{r: r, batches: bs, cur: 0, members: members, sums: sums}
		expect(t, e.action(rid, "pause", nil), 200, "")
		before, audits := e.detail(rid), auditCount(e)
		if _, err := e.ts.exec.evaluate(e.ctx, &snap, e.ts.clock.now().UnixMilli()); !errors.Is(err, errStale) {
			t.Fatalf("stale evaluate: %v, want errStale", err)
		}
		after := e.detail(rid)
		if after.Status != "paused" || after.Batches[0].Status != "waiting_health" || len(after.Events) != len(before.Events) ||
			auditCount(e) != audits || rtMachineHealth(t, after, "web-01") != "pending" {
			t.Fatalf("stale evaluate changed something: %s %v", after.Status, rtEvents(t, after))
		}
	})
	t.Run("complete after pause", func(t *testing.T) {
		e, rid := setup(t)
		e.step(rid) // deploy
		e.advance(time.Second)
		e.healthy("web-01")
		if !e.step(rid) { // the batch succeeds; the rollout is not completed yet
			t.Fatal("evaluate made no progress")
		}
		r, _ := snapshot(t, e, rid)
		if r.Status != "running" {
			t.Fatalf("rollout %s before the complete step", r.Status)
		}
		expect(t, e.action(rid, "pause", nil), 200, "")
		if err := e.ts.exec.complete(e.ctx, r); !errors.Is(err, errStale) {
			t.Fatalf("stale complete: %v, want errStale", err)
		}
		if d := e.detail(rid); d.Status != "paused" {
			t.Fatalf("rollout %s after a stale complete", d.Status)
		}
		e.pass()
		if d := e.detail(rid); d.Status != "paused" {
			t.Fatalf("a pass advanced a paused rollout to %s", d.Status)
		}
		expect(t, e.action(rid, "resume", nil), 200, "")
		e.pass()
		if d := e.detail(rid); d.Status != "completed" {
			t.Fatalf("rollout %s after resume, want completed", d.Status)
		}
	})
	t.Run("a pass skips a stale rollout without an error", func(t *testing.T) {
		e, rid := setup(t)
		expect(t, e.action(rid, "pause", nil), 200, "")
		for range 3 {
			e.advance(time.Hour)
			e.pass()
		}
		if e.step(rid) {
			t.Fatal("step advanced a paused rollout")
		}
		d := e.detail(rid)
		if d.Batches[0].Status != "pending" || len(d.Events) != 2 {
			t.Fatalf("paused rollout changed: %v", rtEvents(t, d))
		}
		expect(t, e.action(rid, "cancel", nil), 200, "")
		e.pass()
		if d := e.detail(rid); d.Batches[0].Status != "pending" {
			t.Fatal("a cancelled rollout was deployed")
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

// TestExecutorStepErrorSkipsRollout checks §9.3: a step that fails with an
// error is rolled back, logged ("executor step failed") and counted
// (nixfleet_executor_errors_total), and the other rollouts still advance in
// the same pass.
func TestExecutorStepErrorSkipsRollout(t *testing.T) {
	e := rtNewExecEnv(t)
	e.register("web-01", "web-02")
	rel := e.release(nil, "web-01", "web-02")
	broken := e.create(rtHostsRollout(rel, "all_at_once", "web-01")).RolloutID
	e.advance(time.Millisecond) // "oldest first": broken is older
	ok := e.create(rtHostsRollout(rel, "all_at_once", "web-02")).RolloutID
	if err := e.ts.st.write(e.ctx, func(tx *txn) error {
		_, err := tx.exec("UPDATE rollout SET batch_sizes = 'not json' WHERE id = ?", broken)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	e.wantErrors = 1
	e.pass()
	if got := e.metric("nixfleet_executor_errors_total"); got != 1 {
		t.Fatalf("executor_errors_total %v, want 1", got)
	}
	found := false
	for _, l := range strings.Split(e.ts.logs.String(), "\n") {
		if strings.Contains(l, `level=ERROR msg="executor step failed" rollout=`+broken) && strings.Contains(l, "err=") {
			found = true
		}
	}
	if !found {
		t.Fatalf("no executor step failed line for %s:\n%s", broken, e.ts.logs.String())
	}
	if d := e.detail(ok); d.Batches[0].Status != "waiting_health" {
		t.Fatalf("the healthy rollout did not advance: %s", d.Batches[0].Status)
	}
	rtWantDesired(t, e.c, e.url, "web-01", "", "", "")
}
