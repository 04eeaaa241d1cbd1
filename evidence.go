package main

import (
	"slices"
	"sync"
)

// Health evidence (§9.5): what a batch machine's fresh reports say, folded
// in arrival order into a summary, and the executor's cache of summaries.

// evidence is one fresh report of a batch machine, as the evaluation needs it.
type evidence struct {
	id           int64
	generation   string
	success      bool
	message      string
	hasHealth    bool
	allPassed    bool
	failedChecks string
}

// Machine health classifications (§9.5), as stored in rollout_machine.health.
const (
	healthPending   = "pending"
	healthHealthy   = "healthy"
	healthUnhealthy = "unhealthy"
	healthSkipped   = "skipped"
)

// evidenceSummary is what classification needs of a machine's fresh
// reports: the latest negative, the latest positive and the latest report.
// Reports are folded in arrival order, so a summary can be kept up to date
// with only the reports that arrived since it was last updated.
type evidenceSummary struct {
	neg, pos, last *evidence
}

// add folds the next report (in arrival order) into the summary; desired is
// the machine's release store path, D.
func (s *evidenceSummary) add(desired string, r evidence) {
	s.last = &r
	if !r.success || r.hasHealth && r.generation == desired && !r.allPassed {
		s.neg = &r
	}
	if r.generation == desired && r.success && r.hasHealth && r.allPassed {
		s.pos = &r
	}
}

// classify evaluates one machine of a batch attempt (§9.5, rows 2–4) from the
// summary of its fresh reports. Row 1 (skipped) and row 5 (timeout) are the
// caller's.
func (s *evidenceSummary) classify(desired string) (health, reason string) {
	neg, pos, last := s.neg, s.pos, s.last
	switch {
	case neg != nil && (pos == nil || pos.id < neg.id):
		switch {
		case neg.hasHealth && neg.failedChecks != "":
			return healthUnhealthy, "health check failed: " + neg.failedChecks
		case neg.hasHealth && !neg.allPassed:
			return healthUnhealthy, "health check failed"
		default:
			return healthUnhealthy, "reported failure: " + truncateUTF8(neg.message, 200)
		}
	case pos != nil && last.generation == desired && last.success:
		return healthHealthy, ""
	}
	return healthPending, ""
}

// evidenceCache keeps, per rollout, what evaluating the batch under
// evaluation needs: its machines with their stored health (valid for one
// version of the rollout), and the summaries of their fresh reports with the
// highest report id folded into them. Each pass then reads only the reports
// that arrived since the previous one, and the machines only when someone
// else changed the rollout, so a pass over a large batch costs O(new
// reports) reads plus an O(batch) loop in memory. It holds facts (reports
// are append-only) and rows checked against the version that every write
// bumps; statuses are re-read by every step, and an empty cache (after a
// restart) is rebuilt from the database.
type evidenceCache struct {
	mu      sync.Mutex
	batches map[string]*batchEvidence // by rollout id
}

type batchEvidence struct {
	batchID   string
	startedAt int64 // the batch attempt; a resume starts a new one
	hwm       int64 // every report with a higher id is still to be folded in
	sums      map[string]*evidenceSummary
	version   int64 // the rollout version members is valid for; -1: reload
	members   []memberRow
}

// update brings the cached machines and summaries of batch b of rollout r
// up to date, reading through d (the step's read snapshot), and returns
// them; the caller must not modify them.
func (c *evidenceCache) update(d dbq, r *rolloutRow, b batchRow) ([]memberRow, map[string]*evidenceSummary, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.batches == nil {
		c.batches = map[string]*batchEvidence{}
	}
	rid := r.ID
	be := c.batches[rid]
	initial := be == nil || be.batchID != b.ID || be.startedAt != *b.StartedAt
	if initial {
		be = &batchEvidence{batchID: b.ID, startedAt: *b.StartedAt, sums: map[string]*evidenceSummary{}, version: -1}
		c.batches[rid] = be
	}
	if be.version != r.Version {
		members, err := d.members(rid, b.Index)
		if err != nil {
			return nil, nil, err
		}
		be.members, be.version = members, r.Version
	}
	desired := make(map[string]string, len(be.members))
	for _, m := range be.members {
		desired[m.MachineID] = m.StorePath
	}
	after := be.hwm
	if initial {
		// A new batch attempt: read every fresh report of its machines, up to
		// the highest report id of the snapshot. Ids are assigned by the
		// single writer in commit order, so any report not visible now will
		// have a higher id and be read by a later update.
		var err error
		if be.hwm, err = d.maxReportID(); err != nil {
			delete(c.batches, rid)
			return nil, nil, err
		}
	}
	err := d.batchReports(rid, b.Index, *b.StartedAt, initial, after, be.hwm, func(id string, ev evidence) {
		sum := be.sums[id]
		if sum == nil {
			sum = &evidenceSummary{}
			be.sums[id] = sum
		}
		sum.add(desired[id], ev)
		be.hwm = max(be.hwm, ev.id)
	})
	if err != nil {
		delete(c.batches, rid) // some reports may be folded in and others not
		return nil, nil, err
	}
	return be.members, be.sums, nil
}

// wrote records that the executor's own write moved rollout rid from
// version to version+1 and changed these machines' health, so the cached
// machines stay valid without a reload. Anything else invalidates them.
func (c *evidenceCache) wrote(rid string, version int64, changed []memberRow) {
	c.mu.Lock()
	defer c.mu.Unlock()
	be := c.batches[rid]
	if be == nil || be.version != version {
		return
	}
	byID := make(map[string]memberRow, len(changed))
	for _, m := range changed {
		byID[m.MachineID] = m
	}
	members := slices.Clone(be.members) // the previous slice may still be in use
	for i, m := range members {
		if ch, ok := byID[m.MachineID]; ok {
			members[i].Health, members[i].Reason = ch.Health, ch.Reason
		}
	}
	be.members, be.version = members, version+1
}

// forget drops the cached machines of rollout rid (its summaries stay valid).
func (c *evidenceCache) forget(rid string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if be := c.batches[rid]; be != nil {
		be.version = -1
	}
}

// retain forgets the rollouts that are not in running.
func (c *evidenceCache) retain(running []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for rid := range c.batches {
		if !slices.Contains(running, rid) {
			delete(c.batches, rid)
		}
	}
}
