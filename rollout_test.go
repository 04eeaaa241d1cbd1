package main

// Rollout tests (rollout.go): the pure planning functions (§9.2, §9.6, §2.7)
// and the transition table (§9.10). The revert procedure is in
// rollout_revert_test.go, the operator actions in rollout_actions_test.go and
// the executor in executor_test.go.

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

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

// TestTransitionTable walks the transition table of §9.10 (transitions in
// rollout.go), in two parts.
//
// "lookup" checks the table itself: no (status, trigger) pair has two rows,
// lookupTransition returns exactly the row of every pair in the table and
// nothing for every other pair of a rollout or batch status and a trigger,
// each row's statuses, trigger and audit action are known ones, exactly the
// operator triggers have a refusal message, and refusal gives that message
// as a 409 (and errStale for the executor's triggers).
//
// "applied" applies the rows for real, through the API and the executor
// stepped on the fake clock, one single-machine rollout at a time. Rollouts
// are driven into every observable status by the rows that lead there:
// running (start); paused by the operator with the batch deploying or
// waiting_health (deploy, wait, pause); paused by a failed batch (fail from
// deploying, fail+pause); completed (succeed from deploying, complete);
// completed after a soak (wait from deploying and from waiting_health,
// succeed from waiting_health); failed (fail from waiting_health,
// fail+revert); and cancelled (cancel). Every step must write exactly the
// rollout events and audit actions its rows name, in order, by the operator
// for operator triggers and by the executor otherwise, and leave the
// statuses the rows lead to. From each of these statuses every operator
// action is then tried over HTTP: pause, resume (which also retries a failed
// batch or restarts one under evaluation), cancel, cancel with revert and
// delete. An action succeeds (200, or 204 for delete) exactly when the table
// has a row for it, and writes exactly what the row names; otherwise it gets
// 409 with the table's refusal message and changes nothing. "created" is
// never observable (create and start are one transaction), so the cancel
// row's "created" is checked by "lookup" only.
func TestTransitionTable(t *testing.T) {
	rolloutTriggers := []trigger{onStart, onComplete, onFailPause, onFailRevert, onPause, onResume, onCancel, onDelete}
	batchTriggers := []trigger{onDeploy, onWait, onSucceed, onFail, onRetry, onRestart}
	operator := map[trigger]bool{onStart: true, onPause: true, onResume: true, onCancel: true, onDelete: true}
	var rolloutSts []string
	for _, s := range append(slices.Clone(rolloutStatuses), rolloutDeleted) {
		rolloutSts = append(rolloutSts, string(s))
	}
	var batchSts []string
	for _, s := range []batchStatus{batchPending, batchDeploying, batchWaiting, batchSucceeded, batchFailed} {
		batchSts = append(batchSts, string(s))
	}
	// refuseOf is the refusal message of a trigger ("" for none).
	refuseOf := func(on trigger) string {
		for _, row := range transitions {
			if row.on == on && row.refuse != "" {
				return row.refuse
			}
		}
		return ""
	}

	t.Run("lookup", func(t *testing.T) {
		inTable := map[[2]string]int{}
		for i, row := range transitions {
			kind, statuses := "rollout", rolloutSts
			switch {
			case slices.Contains(batchTriggers, row.on):
				kind, statuses = "batch", batchSts
			case !slices.Contains(rolloutTriggers, row.on):
				t.Errorf("row %d: trigger %q is not walked by this test", i, row.on)
				continue
			}
			for _, from := range row.from {
				if !slices.Contains(statuses, from) {
					t.Errorf("row %d: from %q is not a %s status", i, from, kind)
				}
				k := [2]string{from, string(row.on)}
				if j, dup := inTable[k]; dup {
					t.Errorf("rows %d and %d both have (%s, %s)", j, i, from, row.on)
				}
				inTable[k] = i
				if got := lookupTransition(from, row.on); got != &transitions[i] {
					t.Errorf("lookupTransition(%q, %q) = %+v, want row %d", from, row.on, got, i)
				}
			}
			if !slices.Contains(statuses, row.to) {
				t.Errorf("row %d: to %q is not a %s status", i, row.to, kind)
			}
			if row.audit != "" && !slices.Contains(auditActions, row.audit) {
				t.Errorf("row %d: audit action %q is not in auditActions", i, row.audit)
			}
			if wantRefuse := operator[row.on] && row.on != onStart; (row.refuse != "") != wantRefuse {
				t.Errorf("row %d (%s): refusal message %q, want one only for operator actions", i, row.on, row.refuse)
			}
		}
		for _, from := range slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(rolloutSts), batchSts...)))) {
			for _, on := range append(slices.Clone(rolloutTriggers), batchTriggers...) {
				if _, ok := inTable[[2]string{from, string(on)}]; !ok {
					if got := lookupTransition(from, on); got != nil {
						t.Errorf("lookupTransition(%q, %q) = %+v, want none", from, on, *got)
					}
				}
				err := refusal(from, on, "r-x")
				if refuse := refuseOf(on); refuse != "" {
					if status, msg := errorStatus(err); status != 409 || msg != fmt.Sprintf(refuse, from, "r-x") {
						t.Errorf("refusal(%q, %q) = %d %q, want 409 %q", from, on, status, msg, fmt.Sprintf(refuse, from, "r-x"))
					}
				} else if !errors.Is(err, errStale) {
					t.Errorf("refusal(%q, %q) = %v, want errStale", from, on, err)
				}
			}
		}
	})

	// applied is one row applied: the status it applied from, and its trigger.
	type applied struct {
		from string
		on   trigger
	}
	type setup struct {
		name  string
		body  map[string]any                                  // extra rollout fields
		drive func(t *testing.T, e *rtExecEnv, rid, m string) // from running, checking every step
	}
	// mark is the highest rollout event and audit ids written so far.
	type mark struct{ event, audit int64 }
	markNow := func(t *testing.T, e *rtExecEnv) mark {
		t.Helper()
		var m mark
		mustScan(t, e.ts.st.ro.QueryRow("SELECT coalesce(max(id), 0) FROM rollout_event"), &m.event)
		mustScan(t, e.ts.st.ro.QueryRow("SELECT coalesce(max(id), 0) FROM audit_event"), &m.audit)
		return m
	}
	// pairs returns the two-column rows of q as "a|b".
	pairs := func(t *testing.T, e *rtExecEnv, q string, args ...any) []string {
		t.Helper()
		rows, err := e.ts.st.ro.Query(q, args...)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		out := []string{}
		for rows.Next() {
			var a, b string
			mustScan(t, rows, &a, &b)
			out = append(out, a+"|"+b)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	// check fails unless what was written about rollout rid since m is
	// exactly what the rows of steps name, and the rollout and its batch have
	// the statuses the rows lead to. what names the change in failures.
	check := func(t *testing.T, e *rtExecEnv, what, rid string, since mark, operatorActor string, steps ...applied) {
		t.Helper()
		events, audits := []string{}, []string{}
		rolloutTo, batchTo := "", ""
		for _, s := range steps {
			row := lookupTransition(s.from, s.on)
			if row == nil {
				t.Fatalf("%s: the table has no row for (%s, %s)", what, s.from, s.on)
			}
			actor := actorExecutor
			if operator[s.on] {
				actor = operatorActor
			}
			if row.event != "" {
				events = append(events, row.event+"|"+actor)
			}
			if row.audit != "" {
				audits = append(audits, row.audit+"|"+actor)
			}
			if slices.Contains(batchTriggers, s.on) {
				batchTo = row.to
			} else {
				rolloutTo = row.to
			}
		}
		rtWantStrings(t, what+": rollout events", pairs(t, e, `SELECT event_type, actor FROM rollout_event
			WHERE rollout_id = ? AND id > ? ORDER BY id`, rid, since.event), events)
		rtWantStrings(t, what+": audit rows", pairs(t, e, `SELECT action, actor FROM audit_event
			WHERE (target = ? OR target LIKE ? || '-b%') AND id > ? ORDER BY id`, rid, rid, since.audit), audits)
		if rolloutTo == string(rolloutDeleted) {
			expect(t, do(t, e.c, "GET", e.url+"/api/v1/rollouts/"+rid, e.admin, nil), 404, "rollout "+rid+" not found")
			if n := countRows(t, e.ts, "SELECT count(*) FROM rollout_event WHERE rollout_id = ?", rid); n != 0 {
				t.Fatalf("%s: %d events left", what, n)
			}
			return
		}
		d := e.detail(rid)
		if rolloutTo != "" && d.Status != rolloutTo {
			t.Fatalf("%s: rollout %s, want %s", what, d.Status, rolloutTo)
		}
		if batchTo != "" && d.Batches[0].Status != batchTo {
			t.Fatalf("%s: batch %s, want %s", what, d.Batches[0].Status, batchTo)
		}
	}
	// stepped runs one executor step of rid, which must apply exactly steps.
	stepped := func(t *testing.T, e *rtExecEnv, what, rid string, steps ...applied) {
		t.Helper()
		since := markNow(t, e)
		e.step(rid)
		check(t, e, what, rid, since, "", steps...)
	}
	// acted posts an operator action from a setup, which must apply exactly steps.
	acted := func(t *testing.T, e *rtExecEnv, what, rid string, steps ...applied) {
		t.Helper()
		since := markNow(t, e)
		expect(t, e.action(rid, what, nil), 200, "")
		check(t, e, what, rid, since, "apikey:deployer", steps...)
	}
	deploy := func(t *testing.T, e *rtExecEnv, rid string) {
		t.Helper()
		stepped(t, e, "deploy", rid, applied{"pending", onDeploy})
		e.advance(time.Second)
	}
	failure := func(e *rtExecEnv, m string) {
		e.report(reportBody(m, rtOldPath(m), false, "rolled back: switch failed"))
	}
	setups := []setup{
		{name: "running", drive: func(t *testing.T, e *rtExecEnv, rid, m string) {}},
		{name: "paused by the operator, batch deploying", drive: func(t *testing.T, e *rtExecEnv, rid, m string) {
			deploy(t, e, rid)
			acted(t, e, "pause", rid, applied{"running", onPause})
		}},
		{name: "paused by the operator, batch waiting_health", drive: func(t *testing.T, e *rtExecEnv, rid, m string) {
			deploy(t, e, rid)
			stepped(t, e, "wait", rid, applied{"deploying", onWait})
			acted(t, e, "pause", rid, applied{"running", onPause})
		}},
		{name: "paused by a failed batch", drive: func(t *testing.T, e *rtExecEnv, rid, m string) {
			deploy(t, e, rid)
			failure(e, m)
			stepped(t, e, "fail", rid, applied{"deploying", onFail}, applied{"running", onFailPause})
		}},
		{name: "completed", drive: func(t *testing.T, e *rtExecEnv, rid, m string) {
			deploy(t, e, rid)
			e.healthy(m)
			stepped(t, e, "succeed", rid, applied{"deploying", onSucceed})
			stepped(t, e, "complete", rid, applied{"running", onComplete})
		}},
		{name: "completed after a soak", body: map[string]any{"soak_seconds": 10}, drive: func(t *testing.T, e *rtExecEnv, rid, m string) {
			deploy(t, e, rid)
			stepped(t, e, "wait", rid, applied{"deploying", onWait})
			e.healthy(m)
			stepped(t, e, "start the soak", rid, applied{"waiting_health", onWait})
			e.advance(10 * time.Second)
			stepped(t, e, "succeed", rid, applied{"waiting_health", onSucceed})
			stepped(t, e, "complete", rid, applied{"running", onComplete})
		}},
		{name: "failed", body: map[string]any{"on_failure": "revert"}, drive: func(t *testing.T, e *rtExecEnv, rid, m string) {
			deploy(t, e, rid)
			stepped(t, e, "wait", rid, applied{"deploying", onWait})
			failure(e, m)
			stepped(t, e, "fail", rid, applied{"waiting_health", onFail}, applied{"running", onFailRevert})
		}},
		{name: "cancelled", drive: func(t *testing.T, e *rtExecEnv, rid, m string) {
			acted(t, e, "cancel", rid, applied{"running", onCancel})
		}},
	}
	actions := []struct {
		name   string
		on     trigger
		method string
		path   string // after /api/v1/rollouts/{id}
		body   any
		actor  string
		ok     int
	}{
		{"pause", onPause, "POST", "/pause", nil, "apikey:deployer", 200},
		{"resume", onResume, "POST", "/resume", nil, "apikey:deployer", 200},
		{"cancel", onCancel, "POST", "/cancel", nil, "apikey:deployer", 200},
		{"cancel with revert", onCancel, "POST", "/cancel", map[string]any{"revert": true}, "apikey:deployer", 200},
		{"delete", onDelete, "DELETE", "", nil, "apikey:first-admin", 204},
	}
	t.Run("applied", func(t *testing.T) {
		for _, s := range setups {
			t.Run(s.name, func(t *testing.T) {
				t.Parallel()
				e := rtNewExecEnv(t)
				var ms []string
				for i := range actions {
					ms = append(ms, fmt.Sprintf("web-%02d", i))
				}
				e.register(ms...)
				rel := e.release(nil, ms...)
				for i, act := range actions {
					m := ms[i]
					body := rtHostsRollout(rel, "all_at_once", m)
					maps.Copy(body, s.body)
					since := markNow(t, e)
					rid := e.create(body).RolloutID
					check(t, e, "create", rid, since, "apikey:deployer", applied{"created", onStart})
					s.drive(t, e, rid, m)

					before := e.detail(rid)
					key := e.dep
					if act.method == "DELETE" {
						key = e.admin
					}
					since = markNow(t, e)
					r := do(t, e.c, act.method, e.url+"/api/v1/rollouts/"+rid+act.path, key, act.body)
					what := fmt.Sprintf("%s from %s", act.name, before.Status)
					if lookupTransition(before.Status, act.on) == nil {
						expect(t, r, 409, fmt.Sprintf(refuseOf(act.on), before.Status, rid))
						check(t, e, what+" (refused)", rid, since, act.actor)
						if d := e.detail(rid); d.Status != before.Status || d.Batches[0].Status != before.Batches[0].Status {
							t.Fatalf("%s: refused, but the rollout is now %s, batch %s", what, d.Status, d.Batches[0].Status)
						}
						continue
					}
					expect(t, r, act.ok, "")
					steps := []applied{{before.Status, act.on}}
					if act.on == onResume {
						switch b := before.Batches[0].Status; b {
						case string(batchFailed):
							steps = append(steps, applied{b, onRetry})
						case string(batchDeploying), string(batchWaiting):
							steps = append(steps, applied{b, onRestart})
						}
					}
					check(t, e, what, rid, since, act.actor, steps...)
				}
			})
		}
	})
}

// TestProgressLog runs a staged rollout through every logged transition and
// checks the server log: one line per rollout and batch transition, with the
// rollout, batch, status and counts, and one line per machine failing its
// health gate with the reason. A transition whose transaction rolls back
// logs nothing.
func TestProgressLog(t *testing.T) {
	e := rtNewExecEnv(t)
	ids := []string{"m1", "m2", "m3"}
	e.register(ids...)
	rel := e.release(nil, ids...)
	body := rtHostsRollout(rel, "staged", ids...)
	body["batch_sizes"] = []string{"1", "100%"}
	cr := e.create(body)
	rid := cr.RolloutID
	first, rest := cr.Batches[0].MachineIDs[0], cr.Batches[1].MachineIDs

	e.pass() // batch 0 deploying
	e.healthy(first)
	e.pass() // batch 0 healthy, batch 1 deploying
	e.healthy(rest[0])
	e.report(reportBody(rest[1], rtRelPath(rest[1]), true, "deployed"))
	e.report(healthBody(rest[1], rtRelPath(rest[1]), "nginx.service"))
	e.pass() // batch 1 failed, rollout paused
	expect(t, e.action(rid, "resume", nil), 200, "")
	expect(t, e.action(rid, "cancel", nil), 200, "")

	// A transition that rolls back logs nothing.
	before := e.ts.logs.String()
	err := e.ts.st.write(e.ctx, func(tx *txn) error {
		r, err := tx.rollout(rid)
		if err != nil {
			return err
		}
		if err := applyRollout(tx, r, onDelete, "apikey:deployer", nil); err != nil {
			return err
		}
		return errors.New("roll back")
	})
	if err == nil || err.Error() != "roll back" {
		t.Fatalf("write: %v", err)
	}
	if after := e.ts.logs.String(); after != before {
		t.Errorf("a rolled-back transition logged:\n%s", strings.TrimPrefix(after, before))
	}

	// Every line in order, from msg on (the time and level come first).
	want := []string{
		fmt.Sprintf(`msg="rollout created" rollout=%s status=running from=created actor=apikey:deployer strategy=staged detail="strategy=staged machines=3 batches=2 skipped=0"`, rid),
		fmt.Sprintf(`msg="batch deploying" rollout=%s batch=0 status=deploying from=pending machines=1 skipped=0`, rid),
		fmt.Sprintf(`msg="batch healthy" rollout=%s batch=0 status=succeeded from=waiting_health healthy=1 unhealthy=0`, rid),
		fmt.Sprintf(`msg="batch deploying" rollout=%s batch=1 status=deploying from=pending machines=2 skipped=0`, rid),
		fmt.Sprintf(`msg="machine failed health gate" rollout=%s batch=1 machine=%s reason="health check failed: nginx.service"`, rid, rest[1]),
		fmt.Sprintf(`msg="batch failed" rollout=%s batch=1 status=failed from=waiting_health unhealthy=1 threshold=0`, rid),
		fmt.Sprintf(`msg="rollout paused" rollout=%s status=paused from=running actor=executor reason="batch failure" detail="Batch failure triggered pause"`, rid),
		fmt.Sprintf(`msg="rollout resumed" rollout=%s status=running from=paused actor=apikey:deployer`, rid),
		fmt.Sprintf(`msg="batch retrying" rollout=%s batch=1 status=pending from=failed`, rid),
		fmt.Sprintf(`msg="rollout cancelled" rollout=%s status=cancelled from=running actor=apikey:deployer`, rid),
	}
	var got []string
	for line := range strings.Lines(e.ts.logs.String()) {
		if !strings.Contains(line, "rollout="+rid) || strings.Contains(line, `msg=request`) {
			continue
		}
		_, rest, _ := strings.Cut(strings.TrimSpace(line), " level=")
		_, rest, _ = strings.Cut(rest, " ")
		got = append(got, rest)
	}
	rtWantStrings(t, "progress log lines", got, want)
	// An operator pause says so; a failure with on_failure=revert logs the revert.
	e.advance(time.Minute) // the reports above are older than the next batch
	body = rtHostsRollout(rel, "all_at_once", "m1")
	body["on_failure"] = "revert"
	rid2 := e.create(body).RolloutID
	expect(t, e.action(rid2, "pause", nil), 200, "")
	expect(t, e.action(rid2, "resume", nil), 200, "")
	e.pass() // deploying
	e.advance(time.Second)
	e.report(healthBody("m1", rtRelPath("m1"), "nginx.service"))
	e.pass() // failed, reverted
	for _, want := range []string{
		fmt.Sprintf(`level=INFO msg="rollout paused" rollout=%s status=paused from=running actor=apikey:deployer reason=manual detail="Paused by operator"`, rid2),
		fmt.Sprintf(`level=WARN msg="rollout reverted" rollout=%s status=failed from=running actor=executor reason="batch failure + revert" restored=1 cleared=0 detail="Batch failure triggered revert"`, rid2),
	} {
		if !strings.Contains(e.ts.logs.String(), want) {
			t.Errorf("log lacks %s\nlog:\n%s", want, e.ts.logs.String())
		}
	}

	for line := range strings.Lines(e.ts.logs.String()) {
		failure := strings.Contains(line, `msg="batch failed"`) || strings.Contains(line, `reason="batch failure`) ||
			strings.Contains(line, `msg="machine failed health gate"`)
		if failure && !strings.Contains(line, "level=WARN") || strings.Contains(line, `msg="rollout created"`) && !strings.Contains(line, "level=INFO") {
			t.Errorf("wrong level: %s", line)
		}
	}
}
