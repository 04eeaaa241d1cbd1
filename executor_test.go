package main

// The executor (executor.go, §9.3, §9.4, §9.8) driven step by step with the
// fake clock: deploy, poll_hint, completion, skipped machines, the
// compare-and-swap of every step and failing steps (ACC-84, ACC-85, ACC-92,
// ACC-93); and, through run with its real timer, the wake-up (ACC-86) and a
// restart mid-rollout (ACC-98).
// Health evaluation and its verdicts are in executor_health_test.go.

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

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

// TestRolloutWakeUpACC86 checks that, with --executor-interval 1m, a passing
// health report after "deployed" makes the batch succeed through the
// executor's wake-up (§9.3), long before the timer could fire.
func TestRolloutWakeUpACC86(t *testing.T) {
	a := rtNewAPI(t, "--executor-interval", "1m")
	rtRegister(t, a.c, a.url, a.A, "web-01", "web-02")
	rel := rtRelease(t, a.c, a.url, a.D, nil, rtRelPath, "web-01", "web-02")
	body := rtHostsRollout(rel, "staged", "web-01", "web-02")
	body["batch_sizes"] = []string{"1", "100%"}
	start := time.Now()
	cr := rtCreate(t, a.c, a.url, a.D, body)
	rid := cr.RolloutID
	for i, b := range cr.Batches {
		m := b.MachineIDs[0]
		// The creation (or the previous batch's success) woke the executor.
		waitFor(t, 5*time.Second, m+" to get its desired generation", func() bool {
			status, _ := rtDesired(t, a.c, a.url, m)
			return status == 200
		})
		rtReport(t, a.c, a.url, reportBody(m, rtRelPath(m), true, "deployed"))
		if d := rtDetail(t, a.c, a.url, a.A, rid); d.Batches[i].Status == "succeeded" {
			t.Fatal("a deployed report alone made the batch succeed")
		}
		rtReport(t, a.c, a.url, healthBody(m, rtRelPath(m)))
		a.waitBatch(t, rid, i, "succeeded")
	}
	a.waitStatus(t, rid, "completed")
	if elapsed := time.Since(start); elapsed >= 50*time.Second {
		t.Fatalf("the rollout took %v: the 1m timer, not the wake-up, drove it", elapsed)
	}
}

// TestRolloutSurvivesRestartACC98 stops the server mid-rollout and starts a
// new one on the same database: the same rollout completes (§9.3 crash
// safety, §12.1: nothing is cached between passes).
func TestRolloutSurvivesRestartACC98(t *testing.T) {
	db := filepath.Join(t.TempDir(), "state.db")
	a := rtNewAPI(t, "--db-path", db)
	ms := []string{"web-01", "web-02", "web-03"}
	rtRegister(t, a.c, a.url, a.A, ms...)
	rel := rtRelease(t, a.c, a.url, a.D, nil, rtRelPath, ms...)
	body := rtHostsRollout(rel, "staged", ms...)
	body["batch_sizes"] = []string{"1", "100%"}
	cr := rtCreate(t, a.c, a.url, a.D, body)
	rid := cr.RolloutID
	canary := cr.Batches[0].MachineIDs[0]
	a.waitBatch(t, rid, 0, "waiting_health")
	rtReport(t, a.c, a.url, healthBody(canary, rtRelPath(canary)))
	a.waitBatch(t, rid, 1, "waiting_health")
	if err := a.rs.stop(t); err != nil {
		t.Fatal(err)
	}

	rs2 := startRun(t, nil, "--db-path", db, "--executor-interval", "100ms")
	a.rs, a.url = rs2, rs2.url
	d := rtDetail(t, a.c, a.url, a.A, rid)
	if d.Status != "running" || d.Batches[0].Status != "succeeded" || d.Batches[1].Status != "waiting_health" {
		t.Fatalf("after restart: %s %v", d.Status, rtBatchStatuses(d))
	}
	if got := metricValue(t, a.c, a.url, "nixfleet_rollouts_active"); got != 1 {
		t.Fatalf("rollouts_active %v after restart", got)
	}
	for _, m := range cr.Batches[1].MachineIDs { // the poll-hint set was rebuilt
		rtWantDesired(t, a.c, a.url, m, rtRelPath(m), "null", "5")
	}
	for _, m := range cr.Batches[1].MachineIDs {
		rtReport(t, a.c, a.url, healthBody(m, rtRelPath(m)))
	}
	d = a.waitStatus(t, rid, "completed")
	if n := strings.Count(strings.Join(rtEvents(t, d), "\n"), "batch_started|"); n != 2 {
		t.Fatalf("%d batch_started events, want 2", n)
	}
}
