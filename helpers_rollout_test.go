package main

// Helpers of the rollout test files (rollout_test.go, rollout_revert_test.go,
// rollout_actions_test.go, executor_test.go, executor_health_test.go,
// evidence_test.go, crash_rollout_test.go, bench_test.go): store paths,
// requests and renderings of rollout details, the executor driven by hand
// with the fake clock (rtExecEnv), and a server started through run with the
// executor loop on its real timer (rtAPI).

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

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
	return postCreated[struct{ ID string }](t, c, base+"/api/v1/releases", key, map[string]any{"entries": entries, "cache_url": cacheURL}).ID
}

// rtCreate creates a rollout and expects 201.
func rtCreate(t testing.TB, c *http.Client, base, key string, body map[string]any) createRolloutResponse {
	t.Helper()
	return postCreated[createRolloutResponse](t, c, base+"/api/v1/rollouts", key, body)
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

// rtParseTime parses an output timestamp (RFC 3339, milliseconds).
func rtParseTime(tb testing.TB, s *string) time.Time {
	tb.Helper()
	if s == nil {
		tb.Fatal("missing timestamp")
	}
	t, err := time.Parse(time.RFC3339Nano, *s)
	if err != nil {
		tb.Fatal(err)
	}
	return t
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
		if !outputTimeRE.MatchString(ev.CreatedAt) {
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

func rtPtr[T any](v T) *T { return &v }

func rtHostsRollout(rel, strategy string, hosts ...string) map[string]any {
	return map[string]any{"release_id": rel, "strategy": strategy, "target": map[string]any{"hosts": hosts}}
}

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

func (e *rtExecEnv) advance(d time.Duration) { e.ts.clock.advance(d) }

func (e *rtExecEnv) pass() { e.ts.pass(e.ctx) }

func (e *rtExecEnv) nowStr() string { return fmtTime(e.ts.clock.now().UnixMilli()) }

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

// rtAPI is a server started through run with keys A (admin), D (deploy,
// named "deployer") and R (readonly). Its executor loop runs on its real
// timer: tests wait for states by polling with a deadline (waitBatch,
// waitStatus) and never assert durations.
type rtAPI struct {
	rs  *runServer
	url string
	c   *http.Client
	A   string
	D   string
	R   string
}

func rtNewAPI(t *testing.T, args ...string) *rtAPI {
	t.Helper()
	if !slices.Contains(args, "--executor-interval") {
		args = append(args, "--executor-interval", "100ms")
	}
	rs := startRun(t, nil, args...)
	c := &http.Client{Timeout: 30 * time.Second}
	a := &rtAPI{rs: rs, url: rs.url, c: c}
	a.A = bootstrapKey(t, c, rs.url)
	a.D = createTestKey(t, c, rs.url, a.A, "deployer", "deploy")
	a.R = createTestKey(t, c, rs.url, a.A, "viewer", "readonly")
	return a
}

// post sends a JSON body to a rollout route with key.
func (a *rtAPI) post(t testing.TB, path, key string, body any) response {
	t.Helper()
	return do(t, a.c, "POST", a.url+path, key, body)
}

// waitBatch waits until batch i of the rollout has one of the statuses.
func (a *rtAPI) waitBatch(t testing.TB, rid string, i int, statuses ...string) rolloutDetail {
	t.Helper()
	var d rolloutDetail
	waitFor(t, 10*time.Second, fmt.Sprintf("batch %d of %s to be %v", i, rid, statuses), func() bool {
		d = rtDetail(t, a.c, a.url, a.A, rid)
		return slices.Contains(statuses, d.Batches[i].Status)
	})
	return d
}

// waitStatus waits until the rollout has the status.
func (a *rtAPI) waitStatus(t testing.TB, rid, status string) rolloutDetail {
	t.Helper()
	var d rolloutDetail
	waitFor(t, 10*time.Second, fmt.Sprintf("%s to be %s", rid, status), func() bool {
		d = rtDetail(t, a.c, a.url, a.A, rid)
		return d.Status == status
	})
	return d
}
