package main

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
)

// The rollout operations of the API (§9.1, §9.9): create, read, and the
// operator actions. Each action is one write transaction that changes
// statuses only through applyRollout (rollout.go).

// rolloutTarget is exactly one of tags or hosts (§5.5).
type rolloutTarget struct {
	Tags  []string `json:"tags"`
	Hosts []string `json:"hosts"`
}

// createRolloutRequest is the body of POST /api/v1/rollouts (§5.5).
type createRolloutRequest struct {
	ReleaseID        *string        `json:"release_id"`
	Strategy         *string        `json:"strategy"`
	Target           *rolloutTarget `json:"target"`
	BatchSizes       []string       `json:"batch_sizes"`
	FailureThreshold *string        `json:"failure_threshold"`
	OnFailure        *string        `json:"on_failure"`
	HealthTimeout    *int64         `json:"health_timeout"`
	CacheURL         *string        `json:"cache_url"`
	SoakSeconds      *int64         `json:"soak_seconds"`
}

func (q *createRolloutRequest) validate() error {
	switch {
	case q.ReleaseID == nil:
		return invalidf("release_id: required")
	case q.Strategy == nil:
		return invalidf("strategy: required")
	case q.Target == nil:
		return invalidf("target: required")
	}
	if !isIDChars(*q.ReleaseID) {
		return invalidf("release_id: invalid release id")
	}
	if !slices.Contains([]string{"canary", "staged", "all_at_once"}, *q.Strategy) {
		return invalidf("strategy: must be canary, staged or all_at_once")
	}
	t := q.Target
	switch {
	case t.Tags != nil && t.Hosts != nil:
		return invalidf("target: must have exactly one of tags and hosts")
	case t.Tags != nil:
		if len(t.Tags) == 0 {
			return invalidf("target.tags: must not be empty")
		}
		var err error
		if t.Tags, err = normalizeTags("target.tags", t.Tags); err != nil {
			return err
		}
	case t.Hosts != nil:
		if len(t.Hosts) == 0 {
			return invalidf("target.hosts: must not be empty")
		}
		seen := map[string]bool{}
		hosts := make([]string, 0, len(t.Hosts))
		for i, h := range t.Hosts {
			if err := checkMachineID(fmt.Sprintf("target.hosts[%d]", i), h); err != nil {
				return err
			}
			if !seen[h] {
				seen[h] = true
				hosts = append(hosts, h)
			}
		}
		t.Hosts = hosts
	default:
		return invalidf("target: must have exactly one of tags and hosts")
	}
	if q.BatchSizes != nil {
		if len(q.BatchSizes) > maxBatches {
			return invalidf("batch_sizes: at most %d entries", maxBatches)
		}
		for i, s := range q.BatchSizes {
			if err := checkBatchSize(fmt.Sprintf("batch_sizes[%d]", i), s); err != nil {
				return err
			}
		}
	}
	if q.FailureThreshold == nil {
		q.FailureThreshold = str("0")
	}
	if err := checkThreshold(*q.FailureThreshold); err != nil {
		return err
	}
	if q.OnFailure == nil {
		q.OnFailure = str("pause")
	}
	if *q.OnFailure != "pause" && *q.OnFailure != "revert" {
		return invalidf("on_failure: must be pause or revert")
	}
	if q.HealthTimeout == nil {
		q.HealthTimeout = new(int64)
		*q.HealthTimeout = 300
	}
	if *q.HealthTimeout < 1 || *q.HealthTimeout > 86400 {
		return invalidf("health_timeout: must be from 1 to 86400 seconds")
	}
	if q.SoakSeconds == nil {
		q.SoakSeconds = new(int64)
	}
	if *q.SoakSeconds < 0 || *q.SoakSeconds > 86400 {
		return invalidf("soak_seconds: must be from 0 to 86400 seconds")
	}
	if q.CacheURL != nil {
		return checkCacheURL("cache_url", *q.CacheURL)
	}
	return nil
}

type skippedMachine struct {
	MachineID string `json:"machine_id"`
	Reason    string `json:"reason"`
}

type plannedBatch struct {
	BatchIndex int      `json:"batch_index"`
	MachineIDs []string `json:"machine_ids"`
	Status     string   `json:"status"`
}

// createRolloutResponse is the 201 body of POST /api/v1/rollouts (§5.5),
// with one extra key (§0.3 allows extras): batch_sizes, the effective sizes
// of §9.2, so that a staged rollout sent without batch_sizes shows the
// ["100%"] it got.
type createRolloutResponse struct {
	RolloutID     string           `json:"rollout_id"`
	BatchSizes    []string         `json:"batch_sizes"`
	Batches       []plannedBatch   `json:"batches"`
	TotalMachines int              `json:"total_machines"`
	Skipped       []skippedMachine `json:"skipped"`
}

// createRollout creates and starts a rollout (§9.1). Target resolution, the
// conflict check and every insert run in one BEGIN IMMEDIATE transaction,
// so two concurrent creates can never put a machine into two active
// rollouts. It returns a 404 for an unknown release, a *validationError
// when no machine is left to deploy, and a 409 for a machine already in an
// active rollout.
func (cp *controlPlane) createRollout(ctx context.Context, actor string, req createRolloutRequest) (createRolloutResponse, error) {
	var resp createRolloutResponse
	err := cp.st.write(ctx, func(tx *txn) error {
		var err error
		resp, err = createRolloutTx(tx, req, actor)
		return err
	})
	return resp, err
}

func createRolloutTx(tx *txn, req createRolloutRequest, actor string) (createRolloutResponse, error) {
	var resp createRolloutResponse
	p, err := planRollout(tx.dbq, tx.s.fleet, tx.machine, req, actor)
	if err != nil {
		return resp, err
	}
	r := p.r
	r.ID = "r-" + newUUID()
	if err := tx.insertRollout(r, p.batches, p.paths); err != nil {
		return resp, err
	}
	detail := fmt.Sprintf("strategy=%s machines=%d batches=%d skipped=%d", r.Strategy, len(p.machines), len(p.batches), len(p.skipped))
	if err := applyRollout(tx, r, onStart, actor, &detail, "strategy", r.Strategy); err != nil {
		return resp, err
	}
	resp = createRolloutResponse{RolloutID: r.ID, BatchSizes: r.BatchSizes, Batches: make([]plannedBatch, len(p.batches)), TotalMachines: len(p.machines), Skipped: p.skipped}
	for i, ids := range p.batches {
		resp.Batches[i] = plannedBatch{BatchIndex: i, MachineIDs: ids, Status: string(batchPending)}
	}
	return resp, nil
}

// rolloutPlan is everything create decides before its first insert.
type rolloutPlan struct {
	r              *rolloutRow // without its ID
	machines       []string    // sorted
	batches        [][]string
	paths          map[string]string // the release's store path per hostname
	skipped        []skippedMachine  // sorted by machine id, as create answers them
	decommissioned []string          // a tag target's decommissioned matches (not in skipped, §9.1)
}

// planRollout is the one planning function of create and of its dry-run
// (§9.1 steps 2–6): release, target, release entries, the conflict check,
// the effective settings and the batches. It reads through d and looks
// machines up with machine (the transaction's view in create). It returns
// a 404 for an unknown release, a *validationError when no machine is left
// to deploy, and a 409 for a machine already in an active rollout.
func planRollout(d dbq, fl *fleet, machine func(string) *machineRec, req createRolloutRequest, actor string) (*rolloutPlan, error) {
	rel, err := d.releaseHeader(*req.ReleaseID)
	if err != nil {
		return nil, err
	}
	if rel == nil {
		return nil, notFoundf("release %s not found", *req.ReleaseID)
	}
	p := &rolloutPlan{}
	var selected []string
	selected, p.skipped, p.decommissioned = resolveTarget(fl, machine, req.Target)
	if len(selected) == 0 {
		return nil, invalidf("no active machines match the target")
	}
	if p.paths, err = d.releasePaths(rel.ID); err != nil {
		return nil, err
	}
	for _, id := range selected {
		if _, ok := p.paths[id]; ok {
			p.machines = append(p.machines, id)
		} else {
			p.skipped = append(p.skipped, skippedMachine{id, "not in release"})
		}
	}
	if len(p.machines) == 0 {
		return nil, invalidf("no machines match both the target and release %s", rel.ID)
	}
	busy, err := d.activeMembers()
	if err != nil {
		return nil, err
	}
	for _, id := range p.machines { // sorted: the first conflict is the smallest id
		if rid, ok := busy[id]; ok {
			return nil, conflictf("machine %s is in active rollout %s", id, rid)
		}
	}
	r := &rolloutRow{
		ReleaseID: rel.ID, Strategy: *req.Strategy,
		BatchSizes:       effectiveBatchSizes(*req.Strategy, req.BatchSizes),
		FailureThreshold: *req.FailureThreshold, OnFailure: *req.OnFailure,
		HealthTimeout: *req.HealthTimeout, SoakSeconds: *req.SoakSeconds, CacheURL: req.CacheURL,
		TargetKind: "tags", TargetValues: req.Target.Tags, Status: rolloutCreated, CreatedBy: actor,
	}
	if r.CacheURL == nil {
		r.CacheURL = rel.CacheURL
	}
	if r.TargetValues == nil {
		r.TargetKind, r.TargetValues = "hosts", req.Target.Hosts
	}
	p.r = r
	p.batches = planBatches(p.machines, r.BatchSizes, rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())))
	slices.SortFunc(p.skipped, func(a, b skippedMachine) int { return strings.Compare(a.MachineID, b.MachineID) })
	return p, nil
}

// resolveTarget selects the target's active machines, sorted, and lists the
// others it names as skipped (§9.1 step 4). A tag target's decommissioned
// matches are not skipped but returned apart, sorted, for the dry-run.
func resolveTarget(fl *fleet, machine func(string) *machineRec, t *rolloutTarget) (selected []string, skipped []skippedMachine, decommissioned []string) {
	skipped = []skippedMachine{}
	if t.Tags != nil {
		fl.each(func(m *machineRec) {
			if !m.hasTags(t.Tags) {
				return
			}
			switch m.Lifecycle {
			case lcActive:
				selected = append(selected, m.ID)
			case lcDecommissioned:
				decommissioned = append(decommissioned, m.ID)
			default:
				skipped = append(skipped, skippedMachine{m.ID, "lifecycle " + string(m.Lifecycle)})
			}
		})
	} else {
		for _, h := range t.Hosts {
			switch m := machine(h); {
			case m == nil:
				skipped = append(skipped, skippedMachine{h, "not registered"})
			case m.Lifecycle != lcActive:
				skipped = append(skipped, skippedMachine{h, "lifecycle " + string(m.Lifecycle)})
			default:
				selected = append(selected, h)
			}
		}
	}
	slices.Sort(selected)
	slices.Sort(decommissioned)
	return selected, skipped, decommissioned
}

func batchID(rid string, index int) string { return fmt.Sprintf("%s-b%d", rid, index) }

// rolloutDetail is the wire type of a rollout (§5.5): the v0.1 keys and the extras.
type rolloutDetail struct {
	ID               string              `json:"id"`
	Status           string              `json:"status"`
	Strategy         string              `json:"strategy"`
	ReleaseID        string              `json:"release_id"`
	OnFailure        string              `json:"on_failure"`
	FailureThreshold string              `json:"failure_threshold"`
	HealthTimeout    int64               `json:"health_timeout"`
	SoakSeconds      int64               `json:"soak_seconds"`
	CacheURL         *string             `json:"cache_url"`
	BatchSizes       []string            `json:"batch_sizes"`
	Target           map[string][]string `json:"target"`
	Batches          []batchDetail       `json:"batches"`
	CreatedAt        string              `json:"created_at"`
	UpdatedAt        string              `json:"updated_at"`
	CreatedBy        string              `json:"created_by"`
	Events           []eventDetail       `json:"events"`
}

type batchDetail struct {
	ID            string         `json:"id"`
	BatchIndex    int            `json:"batch_index"`
	MachineIDs    []string       `json:"machine_ids"`
	Status        string         `json:"status"`
	MachineHealth map[string]any `json:"machine_health"`
	StartedAt     *string        `json:"started_at"`
	CompletedAt   *string        `json:"completed_at"`
	SoakStartedAt *string        `json:"soak_started_at"`
}

type eventDetail struct {
	ID        int64  `json:"id"`
	RolloutID string `json:"rollout_id"`
	EventType string `json:"event_type"`
	Detail    string `json:"detail"`
	Actor     string `json:"actor"`
	CreatedAt string `json:"created_at"`
}

// machineHealthValue renders a stored classification (§9.12).
func machineHealthValue(health, reason string) any {
	switch health {
	case healthHealthy:
		return "healthy"
	case healthUnhealthy, healthSkipped:
		return map[string]string{"unhealthy": reason}
	}
	return "pending"
}

// rolloutDetailOf assembles a rollout's detail from d; events only when withEvents.
func rolloutDetailOf(d dbq, r *rolloutRow, withEvents bool) (*rolloutDetail, error) {
	out := &rolloutDetail{
		ID: r.ID, Status: string(r.Status), Strategy: r.Strategy, ReleaseID: r.ReleaseID, OnFailure: r.OnFailure,
		FailureThreshold: r.FailureThreshold, HealthTimeout: r.HealthTimeout, SoakSeconds: r.SoakSeconds,
		CacheURL: r.CacheURL, BatchSizes: r.BatchSizes, Target: map[string][]string{r.TargetKind: r.TargetValues},
		CreatedAt: fmtTime(r.CreatedAt), UpdatedAt: fmtTime(r.UpdatedAt), CreatedBy: r.CreatedBy,
		Batches: []batchDetail{}, Events: []eventDetail{},
	}
	batches, err := d.batches(r.ID)
	if err != nil {
		return nil, err
	}
	members, err := d.members(r.ID, -1)
	if err != nil {
		return nil, err
	}
	for _, b := range batches {
		out.Batches = append(out.Batches, batchDetail{
			ID: b.ID, BatchIndex: b.Index, MachineIDs: []string{}, Status: string(b.Status), MachineHealth: map[string]any{},
			StartedAt: fmtTimePtr(b.StartedAt), CompletedAt: fmtTimePtr(b.CompletedAt), SoakStartedAt: fmtTimePtr(b.SoakStarted),
		})
	}
	for _, m := range members { // sorted by machine id, so machine_ids come out sorted
		if m.BatchIndex < 0 || m.BatchIndex >= len(out.Batches) {
			continue
		}
		bd := &out.Batches[m.BatchIndex]
		bd.MachineIDs = append(bd.MachineIDs, m.MachineID)
		bd.MachineHealth[m.MachineID] = machineHealthValue(m.Health, m.Reason)
	}
	if withEvents {
		events, err := d.rolloutEvents(r.ID)
		if err != nil {
			return nil, err
		}
		out.Events = append(out.Events, events...)
	}
	return out, nil
}

// parseRolloutStatus checks a status filter value.
func parseRolloutStatus(v string) (rolloutStatus, error) {
	if !slices.Contains(rolloutStatuses, rolloutStatus(v)) {
		return "", invalidf("status: must be one of created, running, paused, completed, failed, cancelled")
	}
	return rolloutStatus(v), nil
}

// listRollouts returns at most limit rollouts (only those in status, when
// given), newest first, without events.
func (cp *controlPlane) listRollouts(ctx context.Context, status *rolloutStatus, limit int) ([]*rolloutDetail, error) {
	out := []*rolloutDetail{}
	err := cp.st.read(ctx, func(d dbq) error {
		rs, err := d.rollouts(status, limit)
		if err != nil {
			return err
		}
		for _, r := range rs {
			detail, err := rolloutDetailOf(d, r, false)
			if err != nil {
				return err
			}
			out = append(out, detail)
		}
		return nil
	})
	return out, err
}

// getRollout returns one rollout with its events, or a 404.
func (cp *controlPlane) getRollout(ctx context.Context, id string) (*rolloutDetail, error) {
	return readValue(ctx, cp.st, func(d dbq) (*rolloutDetail, error) {
		r, err := d.rollout(id)
		if err != nil || r == nil {
			return nil, cmp.Or(err, notFoundf("rollout %s not found", id))
		}
		return rolloutDetailOf(d, r, true)
	})
}

func checkRolloutID(id string) error {
	if !isIDChars(id) {
		return invalidf("invalid rollout id")
	}
	return nil
}

// rolloutAction runs an operator action (§9.9) on rollout id in one write
// transaction: it loads the rollout (404) and lets fn change it, through
// applyRollout, which refuses (409) a status the table does not allow.
func (cp *controlPlane) rolloutAction(ctx context.Context, id string, fn func(tx *txn, r *rolloutRow) error) error {
	return cp.st.write(ctx, func(tx *txn) error {
		r, err := tx.rollout(id)
		if err != nil {
			return err
		}
		if r == nil {
			return notFoundf("rollout %s not found", id)
		}
		return fn(tx, r)
	})
}

// pauseRollout pauses a running rollout; the current batch keeps its status.
func (cp *controlPlane) pauseRollout(ctx context.Context, actor, id string) error {
	return cp.rolloutAction(ctx, id, func(tx *txn, r *rolloutRow) error {
		return applyRollout(tx, r, onPause, actor, str("Paused by operator"), "reason", "manual")
	})
}

// resumeRollout resumes a paused rollout: failed batches go back to pending,
// and a batch under evaluation restarts its window, so that evidence from
// before the resume is ignored.
func (cp *controlPlane) resumeRollout(ctx context.Context, actor, id string) error {
	return cp.rolloutAction(ctx, id, func(tx *txn, r *rolloutRow) error {
		if err := applyRollout(tx, r, onResume, actor, nil); err != nil {
			return err
		}
		batches, err := tx.batches(r.ID)
		if err != nil {
			return err
		}
		for _, b := range batches {
			var err error
			switch b.Status {
			case batchFailed:
				err = applyBatch(tx, r, &b, onRetry, batchChange{})
			case batchDeploying, batchWaiting:
				err = applyBatch(tx, r, &b, onRestart, batchChange{})
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// cancelRequest is the optional body of POST …/cancel.
type cancelRequest struct {
	Revert *bool `json:"revert"`
}

func (c *cancelRequest) validate() error { return nil }

// cancelRollout cancels an active rollout: batches freeze as they are; with
// revert, the revert procedure runs in the same transaction.
func (cp *controlPlane) cancelRollout(ctx context.Context, actor, id string, doRevert bool) error {
	return cp.rolloutAction(ctx, id, func(tx *txn, r *rolloutRow) error {
		if !doRevert {
			return applyRollout(tx, r, onCancel, actor, nil)
		}
		if lookupTransition(string(r.Status), onCancel) == nil {
			return refusal(string(r.Status), onCancel, r.ID) // before reverting anything
		}
		restored, cleared, err := revert(tx, r.ID, actor)
		if err != nil {
			return err
		}
		return applyRollout(tx, r, onCancel, actor, str(fmt.Sprintf("revert: restored %d, cleared %d", restored, cleared)),
			"revert", true, "restored", restored, "cleared", cleared)
	})
}

// deleteRollout deletes a terminal rollout with its batches, machines and
// events; its audit rows stay.
func (cp *controlPlane) deleteRollout(ctx context.Context, actor, id string) error {
	return cp.rolloutAction(ctx, id, func(tx *txn, r *rolloutRow) error {
		return applyRollout(tx, r, onDelete, actor, nil)
	})
}
