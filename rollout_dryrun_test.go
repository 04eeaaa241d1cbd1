package main

// Tests for the rollout dry-run (rollout_dryrun.go): POST /api/v1/rollouts?dry_run=true answers what create would
// do, with the same validation and errors, and stores nothing (no rollout, no audit row, no metric), over real HTTP
// and a real SQLite file.

import (
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// drMetrics is the /metrics output without the HTTP families, which count every request, dry-runs included.
func drMetrics(t *testing.T, e *testEnv) string {
	t.Helper()
	body := metNormalise(metScrape(t, e.url))
	return regexp.MustCompile(`(?m)^(# (HELP|TYPE) )?nixfleet_http_.*\n`).ReplaceAllString(body, "")
}

// drPost posts a rollout create body, as a dry-run when query is "?dry_run=true".
func drPost(t *testing.T, e *testEnv, key, query string, body any) response {
	t.Helper()
	return do(t, e.c, "POST", e.url+"/api/v1/rollouts"+query, key, body)
}

// drUnchanged fails the test if the database or the metrics differ from before.
func drUnchanged(t *testing.T, e *testEnv, what, fpBefore, metBefore string) {
	t.Helper()
	if fp := e.fingerprint(t); fp != fpBefore {
		t.Fatalf("%s changed the database:\n%s\nwas\n%s", what, fp, fpBefore)
	}
	if m := drMetrics(t, e); m != metBefore {
		a, b := strings.Split(metBefore, "\n"), strings.Split(m, "\n")
		for i := range min(len(a), len(b)) {
			if a[i] != b[i] {
				t.Fatalf("%s changed the metrics: %q became %q", what, a[i], b[i])
			}
		}
		t.Fatalf("%s changed the metrics", what)
	}
}

func drSizes(bs []dryRunBatch) (sizes []int, all []string) {
	for _, b := range bs {
		sizes = append(sizes, b.Size)
		all = append(all, b.MachineIDs...)
	}
	slices.Sort(all)
	return sizes, all
}

// TestRolloutDryRunPlan: a tag target with machines in every situation. The dry-run answers the effective settings,
// the batches, every exclusion with its reason and the stale machine as a warning inside its batch; it stores
// nothing; the real create with the same body then includes the same machines (the stale one too) in batches of the
// same sizes, and skips the same ones.
func TestRolloutDryRunPlan(t *testing.T) {
	e := newTestEnv(t)
	for _, id := range []string{"web-01", "web-02", "web-03", "web-04", "web-05", "web-06", "web-07"} {
		expect(t, e.register(t, id, map[string]any{"tags": []string{"web"}}), 201, "")
	}
	registeredAt := fmtTime(e.ts.clock.now().UnixMilli())
	expect(t, e.patch(t, "web-05", "maintenance"), 200, "")
	expect(t, e.patch(t, "web-06", "decommissioned"), 200, "")
	rel := relCreate(t, e, e.D, map[string]any{"entries": []any{relEntry("web-01", 'a'), relEntry("web-02", 'a'),
		relEntry("web-03", 'a'), relEntry("web-04", 'a'), relEntry("web-05", 'a'), relEntry("web-06", 'a')}})
	e.ts.clock.advance(5 * time.Minute)
	for _, id := range []string{"web-01", "web-02", "web-04"} { // web-03 never reports: stale
		expect(t, e.report(t, id, reportBody(id, storePath('0', "old"), true, "up-to-date")), 200, "")
	}
	body := map[string]any{"release_id": rel, "strategy": "canary", "target": map[string]any{"tags": []string{"web"}},
		"failure_threshold": "1", "health_timeout": 120, "soak_seconds": 60}

	// Any authenticated request records its key's last use at most once a minute, in a commit of its own: use
	// the deploy key now, so that the dry-run's request does not.
	listMachinesT(t, e.c, e.url, e.D, "")
	fp, met := e.fingerprint(t), drMetrics(t, e)
	r := drPost(t, e, e.D, "?dry_run=true", body)
	expect(t, r, 200, "")
	var plan dryRunResponse
	r.json(t, &plan)
	drUnchanged(t, e, "the dry-run", fp, met)
	if rs := do(t, e.c, "GET", e.url+"/api/v1/rollouts", e.R, nil); strings.TrimSpace(string(rs.body)) != "[]" {
		t.Fatalf("rollouts after a dry-run: %s", rs.body)
	}

	if !plan.DryRun || plan.ReleaseID != rel || plan.Strategy != "canary" || !slices.Equal(plan.BatchSizes, []string{"1", "100%"}) ||
		plan.FailureThreshold != "1" || plan.OnFailure != "pause" || plan.HealthTimeout != 120 || plan.SoakSeconds != 60 ||
		plan.CacheURL != nil || !slices.Equal(plan.Target["tags"], []string{"web"}) || plan.TotalMachines != 4 || !plan.RandomAssignment {
		t.Fatalf("plan settings: %s", r.body)
	}
	sizes, all := drSizes(plan.Batches)
	if !slices.Equal(sizes, []int{1, 3}) || !slices.Equal(all, []string{"web-01", "web-02", "web-03", "web-04"}) {
		t.Fatalf("plan batches: %s", r.body)
	}
	for i, b := range plan.Batches {
		wantStale := []string{}
		if slices.Contains(b.MachineIDs, "web-03") {
			wantStale = []string{"web-03"}
		}
		if b.BatchIndex != i || !slices.Equal(b.StaleMachineIDs, wantStale) || b.ToleratedUnhealthy != 1 {
			t.Fatalf("batch %d: %+v", i, b)
		}
	}
	wantExcluded := []skippedMachine{{"web-05", "lifecycle maintenance"}, {"web-06", "lifecycle decommissioned"}, {"web-07", "not in release"}}
	if !slices.Equal(plan.Excluded, wantExcluded) {
		t.Fatalf("excluded %+v, want %+v", plan.Excluded, wantExcluded)
	}
	wantWarnings := []machineWarning{{"web-03", "stale: no report since registration at " + registeredAt}}
	if !slices.Equal(plan.Warnings, wantWarnings) {
		t.Fatalf("warnings %+v, want %+v", plan.Warnings, wantWarnings)
	}

	// The real create: same machines, same sizes, the stale machine included, the same skips (create leaves a
	// tag target's decommissioned machines out silently, §9.1).
	r = drPost(t, e, e.D, "", body)
	expect(t, r, 201, "")
	var created createRolloutResponse
	r.json(t, &created)
	var cs []dryRunBatch
	for _, b := range created.Batches {
		cs = append(cs, dryRunBatch{Size: len(b.MachineIDs), MachineIDs: b.MachineIDs})
	}
	cSizes, cAll := drSizes(cs)
	if created.TotalMachines != plan.TotalMachines || !slices.Equal(cSizes, sizes) || !slices.Equal(cAll, all) {
		t.Fatalf("create %s differs from the dry-run's plan", r.body)
	}
	if !slices.Equal(created.Skipped, []skippedMachine{wantExcluded[0], wantExcluded[2]}) {
		t.Fatalf("create skipped %+v", created.Skipped)
	}
	var d rolloutDetail
	dr := do(t, e.c, "GET", e.url+"/api/v1/rollouts/"+created.RolloutID, e.R, nil)
	expect(t, dr, 200, "")
	dr.json(t, &d)
	if d.FailureThreshold != plan.FailureThreshold || d.HealthTimeout != plan.HealthTimeout || d.SoakSeconds != plan.SoakSeconds ||
		!slices.Equal(d.BatchSizes, plan.BatchSizes) || d.OnFailure != plan.OnFailure {
		t.Fatalf("stored rollout %s differs from the plan %+v", dr.body, plan)
	}
}

// TestRolloutDryRunThenCreate: with one batch nothing is random, so a dry-run followed by a real create with the
// same body yields exactly the same batches; a host target's unregistered and decommissioned hosts are excluded
// with the reasons create gives them.
func TestRolloutDryRunThenCreate(t *testing.T) {
	e := newTestEnv(t)
	relRegister(t, e, "db-01", "web-01", "web-02", "web-03")
	expect(t, e.patch(t, "web-03", "decommissioned"), 200, "")
	rel := relCreate(t, e, e.D, map[string]any{"entries": []any{relEntry("db-01", 'a'), relEntry("web-01", 'a'),
		relEntry("web-02", 'a'), relEntry("web-03", 'a')}})
	body := map[string]any{"release_id": rel, "strategy": "all_at_once",
		"target": map[string]any{"hosts": []string{"web-02", "web-01", "db-01", "web-03", "web-09"}}}

	r := drPost(t, e, e.D, "?dry_run=true", body)
	expect(t, r, 200, "")
	var plan dryRunResponse
	r.json(t, &plan)
	r = drPost(t, e, e.D, "?dry_run=false", body)
	expect(t, r, 201, "")
	var created createRolloutResponse
	r.json(t, &created)

	if len(plan.Batches) != 1 || len(created.Batches) != 1 || plan.RandomAssignment ||
		!slices.Equal(plan.Batches[0].MachineIDs, created.Batches[0].MachineIDs) ||
		!slices.Equal(plan.Batches[0].MachineIDs, []string{"db-01", "web-01", "web-02"}) {
		t.Fatalf("dry-run %+v, create %+v", plan.Batches, created.Batches)
	}
	if !slices.Equal(plan.Excluded, created.Skipped) ||
		!slices.Equal(plan.Excluded, []skippedMachine{{"web-03", "lifecycle decommissioned"}, {"web-09", "not registered"}}) {
		t.Fatalf("excluded %+v, create skipped %+v", plan.Excluded, created.Skipped)
	}
	if !slices.Equal(plan.Target["hosts"], []string{"web-02", "web-01", "db-01", "web-03", "web-09"}) {
		t.Fatalf("target %+v", plan.Target)
	}
	if len(plan.Warnings) != 0 {
		t.Fatalf("warnings %+v for fresh machines", plan.Warnings)
	}
}

// TestRolloutDryRunErrors: every refusal of create is the dry-run's too, with the same status and message, and a
// refused dry-run stores nothing either. A dry_run value other than true or false is a 400 naming dry_run.
func TestRolloutDryRunErrors(t *testing.T) {
	e := newTestEnv(t)
	relRegister(t, e, "web-01", "web-02", "busy-01")
	expect(t, e.patch(t, "web-02", "maintenance"), 200, "")
	rel := relCreate(t, e, e.D, map[string]any{"entries": []any{relEntry("web-01", 'a'), relEntry("busy-01", 'a')}})
	other := relCreate(t, e, e.D, map[string]any{"entries": []any{relEntry("db-01", 'a')}})
	relRollout(t, e, rel, nil, "busy-01")
	hosts := func(rel string, hs ...string) map[string]any {
		return map[string]any{"release_id": rel, "strategy": "all_at_once", "target": map[string]any{"hosts": hs}}
	}
	for _, tc := range []struct {
		name   string
		key    string
		body   any
		status int
	}{
		{"unknown release", e.D, hosts("rel-nope", "web-01"), 404},
		{"missing strategy", e.D, map[string]any{"release_id": rel, "target": map[string]any{"hosts": []string{"web-01"}}}, 400},
		{"bad strategy", e.D, map[string]any{"release_id": rel, "strategy": "all-at-once", "target": map[string]any{"hosts": []string{"web-01"}}}, 400},
		{"bad threshold", e.D, map[string]any{"release_id": rel, "strategy": "all_at_once", "failure_threshold": "101%", "target": map[string]any{"hosts": []string{"web-01"}}}, 400},
		{"no active machine", e.D, hosts(rel, "web-02"), 400},
		{"not in release", e.D, hosts(other, "web-01"), 400},
		{"in an active rollout", e.D, hosts(rel, "web-01", "busy-01"), 409},
		{"not JSON", e.D, "{", 400},
		{"readonly key", e.R, hosts(rel, "web-01"), 403},
		{"no key", "", hosts(rel, "web-01"), 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fp, met := e.fingerprint(t), drMetrics(t, e)
			dry := drPost(t, e, tc.key, "?dry_run=true", tc.body)
			expect(t, dry, tc.status, "")
			if tc.status != 401 && tc.status != 403 { // refused before the handler: the auth metric counts them
				drUnchanged(t, e, "a refused dry-run", fp, met)
			}
			real := drPost(t, e, tc.key, "", tc.body)
			expect(t, real, tc.status, dry.errMsg(t))
		})
	}
	for _, v := range []string{"yes", "", "1", "TRUE"} {
		fp := e.fingerprint(t)
		expect(t, drPost(t, e, e.D, "?dry_run="+v, hosts(rel, "web-01")), 400, "dry_run: must be true or false")
		if e.fingerprint(t) != fp {
			t.Fatalf("dry_run=%s stored something", v)
		}
	}
}
