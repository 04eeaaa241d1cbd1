package main

import (
	"fmt"
	"time"
)

// Machines that need attention: stale (silent for longer than --stale-after)
// and drifted (running another generation than their desired one, outside
// any rollout that is still deploying them, for longer than --drift-grace).
// Both are derived from the in-memory fleet index at the time asked, never
// stored: a machine stops being stale with its next report, and nothing has
// to expire.

// Defaults of --stale-after and --drift-grace. Agents poll every 60 s by
// default (§6.1) and every poll with a desired generation reports, plus a
// health report every 60 s: a machine that missed three polls and the
// retries is silent for longer than 3 × 60 s; the extra minute is slack for
// a slow closure fetch or a control plane restart. Drift gets ten minutes:
// longer than an agent needs to fetch and switch to a new generation after
// notify-deploy, short enough to be noticed the same hour.
const (
	defaultStaleAfter = 4 * time.Minute
	defaultDriftGrace = 10 * time.Minute
)

// attentionPolicy holds the two thresholds, in milliseconds.
type attentionPolicy struct {
	staleAfter int64
	driftGrace int64
}

func newAttentionPolicy(staleAfter, driftGrace time.Duration) attentionPolicy {
	if staleAfter <= 0 {
		staleAfter = defaultStaleAfter
	}
	if driftGrace <= 0 {
		driftGrace = defaultDriftGrace
	}
	return attentionPolicy{staleAfter: staleAfter.Milliseconds(), driftGrace: driftGrace.Milliseconds()}
}

// mismatchSince derives m.MismatchSince when m replaces old in the fleet
// index (old is nil at startup). A mismatch that goes on (same desired
// generation, still not reported) keeps its start. A new one starts at the
// later of the desired generation's set_at and the report that showed it
// (the record's last_seen), which is when this process learnt of it.
//
// At startup nothing tells when a stored mismatch began, so it is dated
// from the desired generation's set_at: a machine that was drifted before a
// restart is drifted at once after it, and one whose mismatch began less
// than the grace period before the restart may be flagged up to that much
// early. The alternative (restart the grace period) would hide every known
// drift for the grace period after each restart.
func mismatchSince(old, m *machineRec) int64 {
	if m.Desired == nil || m.LastSeen == 0 || m.CurrentGen == m.Desired.Hash {
		return 0
	}
	if old == nil {
		return m.Desired.SetAt
	}
	if old.MismatchSince > 0 && old.Desired != nil && old.Desired.Hash == m.Desired.Hash {
		return old.MismatchSince
	}
	return max(m.Desired.SetAt, m.LastSeen)
}

// condition is what the attention rules say about one machine at one time.
type condition struct {
	stale, drifted bool
	attention      string // the most important reason, "" when nothing is wrong
}

// silence returns "no report since <time>" when the machine is stale at
// now (Unix ms), else "". Decommissioned and pending machines are never
// stale. A machine that has never reported is stale once its registration
// is older than the threshold: an agent that was registered but never came
// up is as silent as one that stopped.
func (p attentionPolicy) silence(m *machineRec, now int64) string {
	if m.Lifecycle == lcDecommissioned || m.Lifecycle == lcPending {
		return ""
	}
	if m.LastSeen == 0 {
		if now-m.RegisteredAt > p.staleAfter {
			return "no report since registration at " + fmtTime(m.RegisteredAt)
		}
		return ""
	}
	if now-m.LastSeen > p.staleAfter {
		return "no report since " + fmtTime(m.LastSeen)
	}
	return ""
}

// condition evaluates the machine at now (Unix ms); inRollout is whether it
// is in an unfinished batch of a running rollout. The attention reason is
// the first that applies of: stale ("no report since …": nothing else about
// the machine is current), the latest report failed ("last report failed:
// …"), drifted ("running … but desired … since …").
func (p attentionPolicy) condition(m *machineRec, now int64, inRollout bool) condition {
	var c condition
	silent := p.silence(m, now)
	c.stale = silent != ""
	c.drifted = !inRollout && m.Lifecycle != lcDecommissioned && m.MismatchSince > 0 &&
		now-m.MismatchSince > p.driftGrace
	switch {
	case c.stale:
		c.attention = silent
	case m.LastSuccess == 0 && m.Lifecycle != lcDecommissioned:
		c.attention = "last report failed: " + m.LastFailure
	case c.drifted:
		current := m.CurrentGen
		if current == "" {
			current = "(none)"
		}
		c.attention = fmt.Sprintf("running %s but desired %s since %s", current, m.Desired.Hash, fmtTime(m.MismatchSince))
	}
	return c
}

// conditions returns an evaluator of the attention rules at now for many
// machines, reading the rollout membership once (conditionOf does one).
func (f *fleet) conditions(now int64) func(*machineRec) condition {
	busy := f.rolloutMembers()
	return func(m *machineRec) condition {
		_, in := busy[m.ID]
		return f.policy.condition(m, now, in)
	}
}

// failureMessage is what a machine record keeps of a report: the message,
// cut to 200 bytes, when the report failed.
func failureMessage(success bool, message string) string {
	if success {
		return ""
	}
	return truncateUTF8(message, 200)
}
