package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// The rollout executor (§9.3): a thin loop around step, which advances every
// running rollout as far as it can go without waiting. Each advance reads a
// snapshot, decides with pure functions (evaluateSummaries), and writes its
// decision in one transaction that claims the rollout by compare-and-swap
// on the version it read, so a concurrent operator action always wins.

// executor drives running rollouts. Tests call step with a fake clock.
type executor struct {
	st     *store
	m      *metrics
	log    *slog.Logger
	now    func() time.Time
	wakeCh chan struct{}
	stepMu sync.Mutex // one pass at a time

	evidence evidenceCache
}

func newExecutor(st *store, m *metrics, log *slog.Logger, now func() time.Time) *executor {
	return &executor{st: st, m: m, log: log, now: now, wakeCh: make(chan struct{}, 1)}
}

// wake asks for a pass as soon as possible. Wake-ups coalesce.
func (e *executor) wake() {
	select {
	case e.wakeCh <- struct{}{}:
	default:
	}
}

// run makes a pass at once, then on every tick and every wake-up, until ctx
// ends. A pass in progress finishes its current step first.
func (e *executor) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		e.step(ctx, e.now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-e.wakeCh:
		}
	}
}

// maxBatches bounds the batches of a rollout (100 batch size specs).
const maxBatches = 100

// step is one pass (§9.3): it advances every running rollout, oldest first,
// until each has to wait, at most 2 × batches + 1 steps per rollout. An
// advance that fails is logged and counted, and its rollout is skipped for
// the rest of the pass.
func (e *executor) step(ctx context.Context, now time.Time) {
	e.stepMu.Lock()
	defer e.stepMu.Unlock()
	e.m.executorTicks.Add(1)
	ids, err := readValue(ctx, e.st, dbq.runningRollouts)
	if err != nil {
		if ctx.Err() == nil {
			e.log.Error("executor step failed", "rollout", "", "err", err)
			e.m.executorErrors.Add(1)
		}
		return
	}
	e.evidence.retain(ids)
	for _, id := range ids {
		for range 2*maxBatches + 1 {
			if ctx.Err() != nil {
				return
			}
			progressed, err := e.advance(ctx, id, now.UnixMilli())
			if err != nil {
				if !errors.Is(err, errStale) && ctx.Err() == nil {
					e.log.Error("executor step failed", "rollout", id, "err", err)
					e.m.executorErrors.Add(1)
				}
				break
			}
			if !progressed {
				break
			}
		}
	}
}

// stepSnapshot is what an advance reads before deciding: one consistent view.
type stepSnapshot struct {
	r       *rolloutRow
	batches []batchRow
	cur     int // index into batches, -1 when none is unfinished
	members []memberRow
	sums    map[string]*evidenceSummary // by machine: the batch attempt's fresh reports
}

// advance applies the next step of one rollout: deploy the current batch,
// evaluate it, or complete the rollout. It reports whether the rollout moved
// on (so the caller may advance it again). It returns errStale when the
// rollout changed between the snapshot and the write.
func (e *executor) advance(ctx context.Context, rid string, now int64) (bool, error) {
	// A step is never interrupted (§1.5): shutdown cancels ctx, and the pass
	// stops between steps, but a step that has begun runs to its end.
	ctx = context.WithoutCancel(ctx)
	var snap stepSnapshot
	err := e.st.read(ctx, func(d dbq) error {
		var err error
		if snap.r, err = d.rollout(rid); err != nil || snap.r == nil || snap.r.Status != rolloutRunning {
			return err
		}
		if snap.batches, err = d.batches(rid); err != nil {
			return err
		}
		snap.cur = currentBatch(snap.batches)
		if snap.cur < 0 || snap.batches[snap.cur].Status == batchPending {
			return nil
		}
		snap.members, snap.sums, err = e.evidence.update(d, snap.r, snap.batches[snap.cur])
		return err
	})
	if err != nil || snap.r == nil || snap.r.Status != rolloutRunning {
		return false, err // a rollout deleted or stopped meanwhile has nothing to do
	}
	if snap.cur < 0 {
		for _, b := range snap.batches {
			if b.Status != batchSucceeded {
				return false, nil
			}
		}
		return true, e.complete(ctx, snap.r)
	}
	if snap.batches[snap.cur].Status == batchPending {
		return true, e.deploy(ctx, snap.r, snap.batches[snap.cur])
	}
	return e.evaluate(ctx, &snap, now)
}

// currentBatch returns the index in bs of the unfinished batch with the lowest
// batch_index, or -1.
func currentBatch(bs []batchRow) int {
	for i, b := range bs {
		if b.Status.unfinished() {
			return i
		}
	}
	return -1
}

// write runs one step's transaction for rollout r and keeps the evidence
// cache in step with it: changed are the machines whose health the step
// wrote (nil: unknown, the cached machines are reloaded).
func (e *executor) write(ctx context.Context, r *rolloutRow, changed []memberRow, fn func(tx *txn) error) error {
	version := r.Version
	err := e.st.write(ctx, fn)
	if err != nil || changed == nil {
		e.evidence.forget(r.ID)
		return err
	}
	e.evidence.wrote(r.ID, version, changed)
	return nil
}

// deploy is the Deploy step (§9.4): pending → deploying.
func (e *executor) deploy(ctx context.Context, r *rolloutRow, b batchRow) error {
	return e.write(ctx, r, nil, func(tx *txn) error {
		if err := claimRollout(tx, r); err != nil {
			return err
		}
		members, err := tx.members(r.ID, b.Index)
		if err != nil {
			return err
		}
		written, skipped := 0, 0
		for _, mem := range members {
			m := tx.machine(mem.MachineID)
			if m == nil || m.Lifecycle != lcActive {
				state := lifecycle("unknown")
				if m != nil {
					state = m.Lifecycle
				}
				if err := tx.setMemberHealth(r.ID, mem.MachineID, healthSkipped, "skipped: lifecycle "+string(state)); err != nil {
					return err
				}
				skipped++
				continue
			}
			if !mem.PrevCaptured {
				var prev *string
				if m.Desired != nil {
					prev = &m.Desired.Hash
				}
				if err := tx.capturePrevious(r.ID, mem.MachineID, prev); err != nil {
					return err
				}
			}
			if _, err := tx.setDesired(m, mem.StorePath, r.CacheURL, actorExecutor); err != nil {
				return err
			}
			if err := tx.setMemberHealth(r.ID, mem.MachineID, healthPending, ""); err != nil {
				return err
			}
			written++
		}
		return applyBatch(tx, r, &b, onDeploy, batchChange{
			event: []any{"machines", written, "skipped", skipped},
			audit: fmt.Sprintf("Rollout %s batch %d deploying %d machines, %d skipped", r.ID, b.Index, written, skipped),
		})
	})
}

// verdict is the outcome of evaluating a batch (§9.6).
type verdict struct {
	health      map[string][2]string // machine → {health, reason}
	n, h, u, p  int
	threshold   int
	timedOut    int // pending machines converted by the timeout
	outcome     string
	soakStart   *int64      // the batch's soak_started_at after this step
	statusAfter batchStatus // the batch status after this step
}

// Evaluation outcomes.
const (
	outcomeWait    = "wait"
	outcomeSucceed = "succeed"
	outcomeFail    = "fail"
)

// evaluateSummaries classifies every machine of batch b from the summaries of
// its fresh reports and decides the batch's fate (§9.5, §9.6); it is a pure
// function of the snapshot and now (Unix ms). silence names a stale machine
// ("no report since …", attention.go; nil: none is): the health timeout's
// reason says so. Staleness changes only that reason, never a
// classification: a stale machine stays pending until the timeout, as
// before, so a batch passes or fails exactly when it did without it.
func evaluateSummaries(r *rolloutRow, b batchRow, members []memberRow, sums map[string]*evidenceSummary,
	lifecycleOf func(string) lifecycle, silence func(string) string, now int64) verdict {
	v := verdict{health: map[string][2]string{}}
	timedOut := now-*b.StartedAt >= r.HealthTimeout*1000
	for _, mem := range members {
		var health, reason string
		switch state := lifecycleOf(mem.MachineID); {
		case mem.Health == healthSkipped:
			health, reason = healthSkipped, mem.Reason
		case state == lcDecommissioned:
			health, reason = healthSkipped, "skipped: lifecycle decommissioned"
		default:
			health, reason = healthPending, ""
			if sum := sums[mem.MachineID]; sum != nil {
				health, reason = sum.classify(mem.StorePath)
			}
			if health == healthPending && timedOut {
				health, reason = healthUnhealthy, fmt.Sprintf("health timeout after %ds", r.HealthTimeout)
				if silence != nil {
					if s := silence(mem.MachineID); s != "" {
						reason += ": " + s
					}
				}
				v.timedOut++
			}
		}
		v.health[mem.MachineID] = [2]string{health, reason}
		switch health {
		case healthHealthy:
			v.h++
		case healthUnhealthy:
			v.u++
		case healthPending:
			v.p++
		}
	}
	v.n = v.h + v.u + v.p
	v.threshold = thresholdFor(r.FailureThreshold, v.n)
	v.soakStart = b.SoakStarted
	v.statusAfter = b.Status
	switch {
	case v.u > v.threshold:
		v.outcome, v.statusAfter = outcomeFail, batchFailed
	case v.p > 0:
		v.outcome, v.statusAfter, v.soakStart = outcomeWait, batchWaiting, nil
	case r.SoakSeconds == 0 || v.n == 0:
		v.outcome, v.statusAfter = outcomeSucceed, batchSucceeded
	case b.SoakStarted == nil:
		v.outcome, v.statusAfter, v.soakStart = outcomeWait, batchWaiting, &now
	case now-*b.SoakStarted >= r.SoakSeconds*1000:
		v.outcome, v.statusAfter = outcomeSucceed, batchSucceeded
	default:
		v.outcome, v.statusAfter = outcomeWait, batchWaiting
	}
	return v
}

// evaluate is the Evaluate step (§9.5–§9.7). It writes only what changed; a
// batch that keeps waiting with nothing new costs no write transaction.
func (e *executor) evaluate(ctx context.Context, snap *stepSnapshot, now int64) (bool, error) {
	r, b := snap.r, snap.batches[snap.cur]
	lifecycleOf := func(id string) lifecycle {
		if m := e.st.fleet.get(id); m != nil {
			return m.Lifecycle
		}
		return ""
	}
	silence := func(id string) string {
		if m := e.st.fleet.get(id); m != nil {
			return e.st.fleet.policy.silence(m, now)
		}
		return ""
	}
	v := evaluateSummaries(r, b, snap.members, snap.sums, lifecycleOf, silence, now)
	changed := []memberRow{}
	for _, mem := range snap.members {
		hr := v.health[mem.MachineID]
		if mem.Health != hr[0] || mem.Reason != hr[1] {
			changed = append(changed, memberRow{MachineID: mem.MachineID, Health: hr[0], Reason: hr[1]})
		}
	}
	batchChanged := v.statusAfter != b.Status || !equalPtr(v.soakStart, b.SoakStarted)
	if len(changed) == 0 && !batchChanged {
		return false, nil
	}
	if v.timedOut > 0 {
		e.log.Warn("Health timeout elapsed", "rollout", r.ID, "batch", b.Index, "pending", v.timedOut)
	}
	err := e.write(ctx, r, changed, func(tx *txn) error {
		if err := claimRollout(tx, r); err != nil {
			return err
		}
		for _, c := range changed {
			if err := tx.setMemberHealth(r.ID, c.MachineID, c.Health, c.Reason); err != nil {
				return err
			}
			if c.Health == healthUnhealthy {
				logUnhealthy(tx, r.ID, b.Index, c.MachineID, c.Reason)
			}
		}
		switch {
		case v.outcome == outcomeWait && batchChanged:
			return applyBatch(tx, r, &b, onWait, batchChange{soak: v.soakStart})
		case v.outcome == outcomeSucceed:
			return applyBatch(tx, r, &b, onSucceed, batchChange{
				event: []any{"healthy", v.h, "unhealthy", v.u},
				audit: fmt.Sprintf("Batch %d succeeded: %d healthy, %d unhealthy (threshold: %d)", b.Index, v.h, v.u, v.threshold),
			})
		case v.outcome == outcomeFail:
			return failBatch(tx, r, &b, v)
		}
		return nil
	})
	return v.outcome != outcomeWait, err
}

func equalPtr(a, b *int64) bool {
	return a == nil && b == nil || a != nil && b != nil && *a == *b
}

// failBatch fails the batch and pauses or reverts the rollout (§9.7), in the
// same transaction.
func failBatch(tx *txn, r *rolloutRow, b *batchRow, v verdict) error {
	if err := applyBatch(tx, r, b, onFail, batchChange{
		event: []any{"unhealthy", v.u, "threshold", v.threshold},
		audit: fmt.Sprintf("Batch %d failed: %d unhealthy > threshold %d", b.Index, v.u, v.threshold),
	}); err != nil {
		return err
	}
	if r.OnFailure != "revert" {
		return applyRollout(tx, r, onFailPause, actorExecutor, str("Batch failure triggered pause"), "reason", "batch failure")
	}
	restored, cleared, err := revert(tx, r.ID, actorExecutor)
	if err != nil {
		return err
	}
	return applyRollout(tx, r, onFailRevert, actorExecutor, str("Batch failure triggered revert"),
		"reason", "batch failure + revert", "restored", restored, "cleared", cleared)
}

// complete is the Complete step (§9.8).
func (e *executor) complete(ctx context.Context, r *rolloutRow) error {
	return e.write(ctx, r, nil, func(tx *txn) error {
		return applyRollout(tx, r, onComplete, actorExecutor, str("All batches succeeded"))
	})
}
