package main

// The executor's health verdicts (executor.go, §9.6, §9.7, §9.9): the pure
// batch evaluation, fail fast and pause, the health timeout, thresholds, the
// soak, and a resume that restarts the evaluation window and ignores older
// evidence (ACC-88, ACC-90, ACC-91, ACC-96, ACC-97).

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

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

// TestRolloutResumeIgnoresOldEvidenceACC96 checks that after a resume with no
// new reports the rollout is still running several executor passes later.
func TestRolloutResumeIgnoresOldEvidenceACC96(t *testing.T) {
	a := rtNewAPI(t)
	rtRegister(t, a.c, a.url, a.A, "web-01")
	rel := rtRelease(t, a.c, a.url, a.D, nil, rtRelPath, "web-01")
	rid := rtCreate(t, a.c, a.url, a.D, rtHostsRollout(rel, "all_at_once", "web-01")).RolloutID
	a.waitBatch(t, rid, 0, "waiting_health")
	rtReport(t, a.c, a.url, reportBody("web-01", rtOldPath("web-01"), false, "rolled back: boom"))
	d := a.waitStatus(t, rid, "paused")
	if got := rtMachineHealth(t, d, "web-01"); got != "unhealthy:reported failure: rolled back: boom" {
		t.Fatalf("web-01 %s", got)
	}
	// The resume must come at a later millisecond than the report: wait until
	// the clock has passed the millisecond of the pause, which followed it.
	paused := rtParseTime(t, &d.UpdatedAt).UnixMilli()
	waitFor(t, 5*time.Second, "the millisecond after the pause", func() bool { return time.Now().UnixMilli() > paused })
	expect(t, a.post(t, "/api/v1/rollouts/"+rid+"/resume", a.D, nil), 200, "")
	ticks := metricValue(t, a.c, a.url, "nixfleet_executor_ticks_total")
	waitFor(t, 10*time.Second, "three more executor passes", func() bool {
		return metricValue(t, a.c, a.url, "nixfleet_executor_ticks_total") >= ticks+3
	})
	d = rtDetail(t, a.c, a.url, a.A, rid)
	if d.Status != "running" || d.Batches[0].Status != "waiting_health" || rtMachineHealth(t, d, "web-01") != "pending" {
		t.Fatalf("after resume: %s %s %s", d.Status, d.Batches[0].Status, rtMachineHealth(t, d, "web-01"))
	}
	rtReport(t, a.c, a.url, healthBody("web-01", rtRelPath("web-01")))
	a.waitStatus(t, rid, "completed")
}
