package main

// The revert procedure (revert in rollout.go, §9.7, ACC-94, ACC-95, ACC-101):
// on a failed batch with on_failure revert, and on cancel with or without
// revert, with the executor driven step by step on the fake clock.

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

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
