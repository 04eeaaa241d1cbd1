package main

import (
	"context"
	"slices"
	"strings"
)

// The rollout dry-run: POST /api/v1/rollouts?dry_run=true. It runs create's
// own planning (planRollout) on a read snapshot and answers what create
// would store, and stores nothing: no rollout, no audit row, no event, no
// metric.

// dryRunBatch is one planned batch.
type dryRunBatch struct {
	BatchIndex int      `json:"batch_index"`
	Size       int      `json:"size"`
	MachineIDs []string `json:"machine_ids"`
	// StaleMachineIDs are the batch's machines that are stale now: create
	// includes them, and unless they report they will time out.
	StaleMachineIDs []string `json:"stale_machine_ids"`
	// ToleratedUnhealthy is the failure threshold applied to this batch
	// (§9.6), assuming none of its machines is skipped at deploy time.
	ToleratedUnhealthy int `json:"tolerated_unhealthy"`
}

// machineWarning is a planned machine that will probably hold its batch up.
type machineWarning struct {
	MachineID string `json:"machine_id"`
	Warning   string `json:"warning"`
}

// dryRunResponse is the 200 body of a dry-run: the effective settings create
// would store, the batches, and every machine the target names that create
// would leave out, with the reason.
type dryRunResponse struct {
	DryRun           bool                `json:"dry_run"` // always true
	ReleaseID        string              `json:"release_id"`
	Strategy         string              `json:"strategy"`
	BatchSizes       []string            `json:"batch_sizes"`
	FailureThreshold string              `json:"failure_threshold"`
	OnFailure        string              `json:"on_failure"`
	HealthTimeout    int64               `json:"health_timeout"`
	SoakSeconds      int64               `json:"soak_seconds"`
	CacheURL         *string             `json:"cache_url"`
	Target           map[string][]string `json:"target"`
	TotalMachines    int                 `json:"total_machines"`
	Batches          []dryRunBatch       `json:"batches"`
	// RandomAssignment is true when there is more than one batch: §9.2
	// shuffles the machines at random, so create keeps these sizes and
	// machines but may split them differently between the batches.
	RandomAssignment bool `json:"random_assignment"`
	// Excluded is create's `skipped` list plus the decommissioned machines a
	// tag target matches (which create leaves out silently), sorted by id.
	Excluded []skippedMachine `json:"excluded"`
	Warnings []machineWarning `json:"warnings"`
}

// dryRunRollout plans a rollout exactly as createRollout would (same
// validation, same errors: 404, 400, 409) without storing anything.
func (cp *controlPlane) dryRunRollout(ctx context.Context, actor string, req createRolloutRequest) (dryRunResponse, error) {
	fl := cp.st.fleet
	var p *rolloutPlan
	err := cp.st.read(ctx, func(d dbq) error {
		var err error
		p, err = planRollout(d, fl, fl.get, req, actor)
		return err
	})
	if err != nil {
		return dryRunResponse{}, err
	}
	r := p.r
	resp := dryRunResponse{
		DryRun: true, ReleaseID: r.ReleaseID, Strategy: r.Strategy, BatchSizes: r.BatchSizes,
		FailureThreshold: r.FailureThreshold, OnFailure: r.OnFailure, HealthTimeout: r.HealthTimeout,
		SoakSeconds: r.SoakSeconds, CacheURL: r.CacheURL, Target: map[string][]string{r.TargetKind: r.TargetValues}, TotalMachines: len(p.machines),
		Batches: make([]dryRunBatch, len(p.batches)), RandomAssignment: len(p.batches) > 1,
		Excluded: slices.Clone(p.skipped), Warnings: []machineWarning{},
	}
	for _, id := range p.decommissioned {
		resp.Excluded = append(resp.Excluded, skippedMachine{id, "lifecycle decommissioned"})
	}
	slices.SortFunc(resp.Excluded, func(a, b skippedMachine) int { return strings.Compare(a.MachineID, b.MachineID) })
	now := cp.st.now().UnixMilli()
	for i, ids := range p.batches {
		b := dryRunBatch{BatchIndex: i, Size: len(ids), MachineIDs: ids, StaleMachineIDs: []string{},
			ToleratedUnhealthy: thresholdFor(r.FailureThreshold, len(ids))}
		for _, id := range ids {
			if m := fl.get(id); m != nil {
				if s := fl.policy.silence(m, now); s != "" {
					b.StaleMachineIDs = append(b.StaleMachineIDs, id)
					resp.Warnings = append(resp.Warnings, machineWarning{id, "stale: " + s})
				}
			}
		}
		resp.Batches[i] = b
	}
	slices.SortFunc(resp.Warnings, func(a, b machineWarning) int { return strings.Compare(a.MachineID, b.MachineID) })
	return resp, nil
}
