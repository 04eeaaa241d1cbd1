package main

import (
	"strings"
)

// Helpers that only tests use: they state the rules of the production code
// in their simplest form, so tests can compare the two.

// classify evaluates one machine from its fresh reports in arrival order:
// desired is the release store path.
func classify(desired string, reports []evidence) (health, reason string) {
	var s evidenceSummary
	for _, r := range reports {
		s.add(desired, r)
	}
	return s.classify(desired)
}

// get returns the current value of one series (0 if absent); for tests.
func (c *counterVec) get(values ...string) float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.series[strings.Join(values, "\xff")]; s != nil {
		return s.v
	}
	return 0
}

// evaluateBatch classifies every machine from its fresh reports and decides
// the batch's fate; it is a pure function of the snapshot and now (Unix ms).
func evaluateBatch(r *rolloutRow, b batchRow, members []memberRow, reports map[string][]evidence,
	lifecycleOf func(string) lifecycle, now int64) verdict {
	sums := map[string]*evidenceSummary{}
	for _, mem := range members {
		s := &evidenceSummary{}
		for _, ev := range reports[mem.MachineID] {
			s.add(mem.StorePath, ev)
		}
		sums[mem.MachineID] = s
	}
	return evaluateSummaries(r, b, members, sums, lifecycleOf, nil, now)
}
