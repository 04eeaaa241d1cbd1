package main

import (
	"bytes"
	"context"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
)

// Rollouts (§9): typed statuses, the one transition table for rollouts and
// batches, the one function per kind that applies a transition, and pure
// batch planning. The executor (executor.go) and the operator actions
// (rollout_actions.go) change statuses only through applyRollout and
// applyBatch.

// rolloutStatus is a rollout's status (§9.10).
type rolloutStatus string

const (
	rolloutCreated   rolloutStatus = "created"
	rolloutRunning   rolloutStatus = "running"
	rolloutPaused    rolloutStatus = "paused"
	rolloutCompleted rolloutStatus = "completed"
	rolloutFailed    rolloutStatus = "failed"
	rolloutCancelled rolloutStatus = "cancelled"

	// rolloutDeleted is not stored: the rollout row is gone.
	rolloutDeleted rolloutStatus = "(deleted)"
)

// rolloutStatuses lists every stored rollout status.
var rolloutStatuses = []rolloutStatus{rolloutCreated, rolloutRunning, rolloutPaused, rolloutCompleted, rolloutFailed, rolloutCancelled}

// batchStatus is a batch's status (§9.10).
type batchStatus string

const (
	batchPending   batchStatus = "pending"
	batchDeploying batchStatus = "deploying"
	batchWaiting   batchStatus = "waiting_health"
	batchSucceeded batchStatus = "succeeded"
	batchFailed    batchStatus = "failed"
)

// unfinished reports whether the batch still has work to do.
func (s batchStatus) unfinished() bool {
	return s == batchPending || s == batchDeploying || s == batchWaiting
}

// trigger is what moves a rollout or a batch from one status to another.
type trigger string

const (
	onStart      trigger = "start"       // rollout: inside the create transaction
	onComplete   trigger = "complete"    // rollout: every batch succeeded (§9.8)
	onFailPause  trigger = "fail+pause"  // rollout: a batch failed, on_failure=pause (§9.7)
	onFailRevert trigger = "fail+revert" // rollout: a batch failed, on_failure=revert (§9.7)
	onPause      trigger = "pause"       // rollout: operator (§9.9)
	onResume     trigger = "resume"      // rollout: operator
	onCancel     trigger = "cancel"      // rollout: operator
	onDelete     trigger = "delete"      // rollout: operator

	onDeploy  trigger = "deploy"  // batch: the Deploy step (§9.4)
	onWait    trigger = "wait"    // batch: pending machines, or soaking (§9.6)
	onSucceed trigger = "succeed" // batch: verdict
	onFail    trigger = "fail"    // batch: verdict
	onRetry   trigger = "retry"   // batch: resume after a failure (§9.9)
	onRestart trigger = "restart" // batch: resume after a manual pause restarts the evaluation window
)

// transition is one row of the transition table: from any status in from,
// trigger on leads to to, writing a rollout event of type event (if any) and
// an audit row with action audit (if any), and once committed the progress
// log line msg (if any; see logTransition). refuse is the 409 message for an
// operator action attempted from another status (fmt arguments: the current
// status, the rollout id).
type transition struct {
	from   []string
	on     trigger
	to     string
	event  string
	audit  string
	msg    string
	refuse string
}

// transitions is THE table of §9.10. Nothing else decides which status
// changes exist; TestTransitionTable walks it.
var transitions = []transition{
	// Rollouts. "created" is never observable: create and start are one transaction.
	{from: []string{"created"}, on: onStart, to: "running", event: "status_change", audit: "rollout.created", msg: "rollout created"},
	{from: []string{"running"}, on: onComplete, to: "completed", event: "status_change", audit: "rollout.completed", msg: "rollout completed"},
	{from: []string{"running"}, on: onFailPause, to: "paused", event: "status_change", audit: "rollout.paused", msg: "rollout paused"},
	{from: []string{"running"}, on: onFailRevert, to: "failed", event: "status_change", audit: "rollout.failed", msg: "rollout reverted"},
	{from: []string{"running"}, on: onPause, to: "paused", event: "status_change", audit: "rollout.paused", msg: "rollout paused",
		refuse: "rollout is %[1]s, not running"},
	{from: []string{"paused"}, on: onResume, to: "running", event: "status_change", audit: "rollout.resumed", msg: "rollout resumed",
		refuse: "rollout is %[1]s, not paused"},
	{from: []string{"created", "running", "paused"}, on: onCancel, to: "cancelled", event: "status_change", audit: "rollout.cancelled",
		msg: "rollout cancelled", refuse: "rollout is %[1]s, cannot cancel"},
	{from: []string{"completed", "failed", "cancelled"}, on: onDelete, to: string(rolloutDeleted), audit: "rollout.deleted",
		msg:    "rollout deleted",
		refuse: "rollout %[2]s cannot be deleted: status is %[1]s (must be completed, cancelled, or failed)"},

	// Batches. Cancel freezes every batch as it is. A batch that starts to
	// wait or soak is not logged: the next line is its verdict.
	{from: []string{"pending"}, on: onDeploy, to: "deploying", event: "batch_started", audit: "batch.deploying", msg: "batch deploying"},
	{from: []string{"deploying", "waiting_health"}, on: onWait, to: "waiting_health"},
	{from: []string{"deploying", "waiting_health"}, on: onSucceed, to: "succeeded", event: "batch_completed", audit: "batch.succeeded", msg: "batch healthy"},
	{from: []string{"deploying", "waiting_health"}, on: onFail, to: "failed", event: "batch_failed", audit: "batch.failed", msg: "batch failed"},
	{from: []string{"failed"}, on: onRetry, to: "pending", msg: "batch retrying"},
	{from: []string{"deploying"}, on: onRestart, to: "deploying", msg: "batch restarted"},
	{from: []string{"waiting_health"}, on: onRestart, to: "waiting_health", msg: "batch restarted"},
}

// lookupTransition returns the row for (from, on), or nil.
func lookupTransition(from string, on trigger) *transition {
	for i := range transitions {
		if t := &transitions[i]; t.on == on && slices.Contains(t.from, from) {
			return t
		}
	}
	return nil
}

// refusal is the error for a trigger that has no row from the current
// status: the operator's 409, or errStale for the executor, whose snapshot
// must have been overtaken.
func refusal(from string, on trigger, rid string) error {
	for _, t := range transitions {
		if t.on == on && t.refuse != "" {
			return conflictf(t.refuse, from, rid)
		}
	}
	return errStale
}

// claimRollout makes tx the owner of this version of r: a compare-and-swap
// on the version and status that r was read at, bumping the version. It
// returns errStale when someone else changed the rollout since r was read.
// Every write to a rollout or its batches claims it first (once per
// transaction), so a step computed from an old snapshot can never commit.
func claimRollout(tx *txn, r *rolloutRow) error {
	if r.claimedIn == tx {
		return nil
	}
	if err := tx.bumpRolloutVersion(r.ID, r.Version, r.Status); err != nil {
		return err
	}
	r.Version++
	r.claimedIn = tx
	return nil
}

// applyRollout moves rollout r by on inside tx: the table row (or a 409 /
// errStale), the claim, the status change and updated_at, the status_change
// event {"from","to", then extra key/value pairs}, the audit row (with
// auditDetail), and after the commit the derived state: membership sets, the
// active-rollouts gauge, nixfleet_rollouts_total and the executor wake-up.
func applyRollout(tx *txn, r *rolloutRow, on trigger, actor string, auditDetail *string, extra ...any) error {
	t := lookupTransition(string(r.Status), on)
	if t == nil {
		return refusal(string(r.Status), on, r.ID)
	}
	if err := claimRollout(tx, r); err != nil {
		return err
	}
	rolloutChanged(tx, r.ID)
	from, to := r.Status, rolloutStatus(t.to)
	if to == rolloutDeleted {
		if err := tx.deleteRollout(r.ID); err != nil {
			return err
		}
	} else {
		if err := tx.setRolloutStatus(r.ID, from, to); err != nil {
			return err
		}
		kv := append([]any{"from", from, "to", to}, extra...)
		if err := tx.insertRolloutEvent(r.ID, t.event, actor, jsonObject(kv...)); err != nil {
			return err
		}
	}
	if err := recordAudit(tx, actor, t.audit, r.ID, auditDetail); err != nil {
		return err
	}
	r.Status = to
	attrs := append([]any{"rollout", r.ID, "status", to, "from", from, "actor", actor}, extra...)
	if auditDetail != nil {
		attrs = append(attrs, "detail", *auditDetail)
	}
	logTransition(tx, t, attrs)
	tx.afterCommit(func() {
		if slices.Contains(rolloutCountedStatuses, string(to)) {
			tx.s.metrics.rolloutsTotal.inc(string(to))
		}
		if to == rolloutRunning && tx.s.wakeExecutor != nil {
			tx.s.wakeExecutor()
		}
	})
	return nil
}

// batchChange is what a batch transition writes besides the status: the
// key/value pairs of its rollout event after batch_index, its audit detail,
// and for onWait the new soak_started_at.
type batchChange struct {
	event []any
	audit string
	soak  *int64
}

// applyBatch moves batch b of rollout r by on inside tx: the table row (or
// errStale), the claim of the rollout, the status with its timestamps
// (compare-and-swap on the status read), the rollout's updated_at, the
// event and audit row when the table names them, and the machine health
// resets of a resume. b is updated in place.
func applyBatch(tx *txn, r *rolloutRow, b *batchRow, on trigger, c batchChange) error {
	t := lookupTransition(string(b.Status), on)
	if t == nil {
		return errStale
	}
	if err := claimRollout(tx, r); err != nil {
		return err
	}
	rolloutChanged(tx, r.ID)
	now := tx.now
	nb := *b
	nb.Status = batchStatus(t.to)
	switch on {
	case onDeploy, onRestart:
		nb.StartedAt, nb.CompletedAt, nb.SoakStarted = &now, nil, nil
	case onWait:
		nb.SoakStarted = c.soak
	case onSucceed, onFail:
		nb.CompletedAt = &now
	case onRetry:
		nb.StartedAt, nb.CompletedAt, nb.SoakStarted = nil, nil, nil
	}
	if err := tx.updateBatch(r.ID, b.Status, nb); err != nil {
		return err
	}
	if on == onRetry || on == onRestart { // a new attempt: machines back to pending (skipped ones stay, on restart)
		if err := tx.resetMemberHealth(r.ID, b.Index, on == onRestart); err != nil {
			return err
		}
	}
	if t.event != "" {
		kv := append([]any{"batch_index", b.Index}, c.event...)
		if err := tx.insertRolloutEvent(r.ID, t.event, actorExecutor, jsonObject(kv...)); err != nil {
			return err
		}
	}
	if t.audit != "" {
		if err := recordAudit(tx, actorExecutor, t.audit, b.ID, &c.audit); err != nil {
			return err
		}
	}
	logTransition(tx, t, append([]any{"rollout", r.ID, "batch", b.Index, "status", nb.Status, "from", b.Status}, c.event...))
	*b = nb
	return nil
}

const actorExecutor = "executor"

// logTransition writes the progress line of transition t (§1.6 style: msg
// and key/value attributes), once tx has committed: a transition that rolls
// back logs nothing. Failures (a batch failing, a rollout paused or reverted
// by one) are warnings; rows without msg are not logged.
func logTransition(tx *txn, t *transition, attrs []any) {
	if t.msg == "" {
		return
	}
	level := slog.LevelInfo
	if t.on == onFail || t.on == onFailPause || t.on == onFailRevert {
		level = slog.LevelWarn
	}
	tx.afterCommit(func() { tx.s.log.Log(context.Background(), level, t.msg, attrs...) })
}

// logUnhealthy writes, once tx has committed, the line of a machine that
// failed the health gate of batch b of rollout rid, with the reason.
func logUnhealthy(tx *txn, rid string, batch int, machine, reason string) {
	tx.afterCommit(func() {
		tx.s.log.Warn("machine failed health gate", "rollout", rid, "batch", batch, "machine", machine, "reason", reason)
	})
}

// rolloutChanged schedules, once per rollout and transaction, the refresh of
// the rollout's derived state: computed just before the commit (so it sees
// every change of the transaction) and published after it. That state
// depends only on rollout and batch statuses, so applyRollout and applyBatch
// call it; a write of machine health alone does not.
func rolloutChanged(tx *txn, rid string) {
	tx.beforeCommit("rollout "+rid, func() error {
		hint, watching, err := tx.membership(rid)
		if err != nil {
			return err
		}
		byStatus, err := tx.countRolloutsByStatus()
		if err != nil {
			return err
		}
		var active int64 // nixfleet_rollouts_active: created, running or paused
		for i, st := range rolloutStatuses {
			if st == rolloutCreated || st == rolloutRunning || st == rolloutPaused {
				active += byStatus[i]
			}
		}
		tx.afterCommit(func() {
			tx.s.fleet.setMembership(rid, hint[rid], watching[rid])
			tx.s.metrics.rolloutsActive.Store(active)
			tx.s.metrics.storeRolloutsByStatus(byStatus)
		})
		return nil
	})
}

// jsonObject renders key/value pairs as a compact JSON object, keys in the
// order given (the event formats of §9.11 fix the order).
func jsonObject(kv ...any) string {
	var b strings.Builder
	b.WriteByte('{')
	for i := 0; i+1 < len(kv); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := marshalJSON(kv[i])
		v, _ := marshalJSON(kv[i+1])
		b.Write(bytes.TrimSuffix(k, []byte("\n")))
		b.WriteByte(':')
		b.Write(bytes.TrimSuffix(v, []byte("\n")))
	}
	b.WriteByte('}')
	return b.String()
}

// parseSize parses "N" (1–9 digits) or "P%" (1–3 digits then %), returning
// the number and whether it is a percentage. Range checks are the caller's.
func parseSize(s string) (n int, pct bool, ok bool) {
	digits, pct := strings.CutSuffix(s, "%")
	maxLen := 9
	if pct {
		maxLen = 3
	}
	if !isDigits(digits) || len(digits) > maxLen {
		return 0, false, false
	}
	n, err := strconv.Atoi(digits)
	return n, pct, err == nil
}

// checkThreshold validates a failure_threshold: "N" (N ≥ 0) or "P%" (0–100).
func checkThreshold(s string) error {
	n, pct, ok := parseSize(s)
	if !ok || pct && n > 100 {
		return invalidf("failure_threshold: must be \"N\" or \"P%%\" with P from 0 to 100")
	}
	return nil
}

// checkBatchSize validates one batch size: "N" (N ≥ 1) or "P%" (1–100).
func checkBatchSize(field, s string) error {
	n, pct, ok := parseSize(s)
	if !ok || n < 1 || pct && n > 100 {
		return invalidf("%s: must be \"N\" (N >= 1) or \"P%%\" with P from 1 to 100", field)
	}
	return nil
}

// thresholdFor is the number of unhealthy machines a batch of n tolerates:
// "N" → N, "P%" → ceil(n × P / 100).
func thresholdFor(spec string, n int) int {
	v, pct, _ := parseSize(spec)
	if !pct {
		return v
	}
	return (n*v + 99) / 100
}

// effectiveBatchSizes returns the batch size specs a strategy uses (§9.2).
func effectiveBatchSizes(strategy string, sizes []string) []string {
	switch strategy {
	case "canary":
		return []string{"1", "100%"}
	case "staged":
		if len(sizes) > 0 {
			return sizes
		}
	}
	return []string{"100%"}
}

// planBatches splits machines into batches (§9.2): shuffle uniformly, then
// take each spec in turn from what remains; the last spec takes the rest.
// Empty batches are never created; ids within a batch are sorted.
func planBatches(machines []string, specs []string, rng *rand.Rand) [][]string {
	ids := slices.Clone(machines)
	rng.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	var batches [][]string
	for i, spec := range specs {
		remaining := len(ids)
		if remaining == 0 {
			break
		}
		take := remaining
		if i < len(specs)-1 {
			v, pct, _ := parseSize(spec)
			if pct {
				take = min(max(1, (remaining*v+99)/100), remaining)
			} else {
				take = min(v, remaining)
			}
		}
		b := slices.Clone(ids[:take])
		slices.Sort(b)
		batches = append(batches, b)
		ids = ids[take:]
	}
	return batches
}

// revert restores, for every machine this rollout deployed (in machine-id
// order), the desired generation it had before the rollout (§9.7). Machines
// that are decommissioned, or whose desired generation is no longer this
// rollout's path, are left alone.
func revert(tx *txn, rid, actor string) (restored, cleared int, err error) {
	members, err := tx.members(rid, -1)
	if err != nil {
		return 0, 0, err
	}
	for _, mem := range members {
		if !mem.PrevCaptured {
			continue
		}
		m := tx.machine(mem.MachineID)
		if m == nil || m.Lifecycle == lcDecommissioned || m.Desired == nil || m.Desired.Hash != mem.StorePath {
			continue
		}
		var detail string
		if mem.PrevHash != nil {
			_, err = tx.setDesired(m, *mem.PrevHash, nil, actor)
			detail = mem.StorePath + " -> " + *mem.PrevHash
			restored++
		} else {
			_, err = tx.clearDesired(m)
			detail = mem.StorePath + " -> (cleared)"
			cleared++
		}
		if err != nil {
			return 0, 0, err
		}
		if err := recordAudit(tx, actor, "machine.reverted", mem.MachineID, &detail); err != nil {
			return 0, 0, err
		}
	}
	return restored, cleared, nil
}
