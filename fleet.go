package main

import (
	"slices"
	"strings"
	"sync"
)

// machineRec is the in-memory copy of one machine: its row, its tags and its
// desired generation. Records are immutable once published in the fleet
// index; a change publishes a new record (see txn.stage).
type machineRec struct {
	ID           string
	Lifecycle    lifecycle
	RegisteredAt int64 // Unix ms
	CurrentGen   string
	LastSuccess  int8  // -1 before the first report, else 0 or 1
	LastSeen     int64 // Unix ms of the latest accepted report; 0 before the first
	AgentTS      int64
	AgentVersion string
	Uptime       int64
	Tags         []string // sorted, unique, never nil
	Desired      *desiredGen
	LastFailure  string // the message of the latest report when it failed (cut to 200 bytes), else ""

	// MismatchSince is when the fleet index first saw this machine report a
	// generation other than its desired one, in Unix ms; 0 while they match,
	// without a desired generation or before the first report. Derived in
	// fleet.put, in memory only (see attention.go).
	MismatchSince int64

	// The flood bound of the audit rows its agent writes (reports.go).
	ReportAudit, TagsAudit auditWindow
}

type desiredGen struct {
	Hash     string
	CacheURL *string
	SetAt    int64
	SetBy    string
}

func (m *machineRec) clone() *machineRec {
	c := *m
	return &c
}

// hasTags reports whether the machine carries every tag in want.
func (m *machineRec) hasTags(want []string) bool {
	for _, t := range want {
		if _, ok := slices.BinarySearch(m.Tags, t); !ok {
			return false
		}
	}
	return true
}

// fleet is the machine index and the rollout membership sets, derived from
// SQLite: rebuilt at startup and updated only after each commit (under the
// store's write lock, so in commit order). Desired-generation polls and the
// machine list are served from it without touching the database.
type fleet struct {
	mu          sync.RWMutex
	machines    map[string]*machineRec
	byLifecycle [5]int
	// Membership of running rollouts, per rollout: machines of batches that are
	// not finished (poll hint) and machines of batches being evaluated (a
	// report from one of them wakes the executor).
	hint     map[string]map[string]struct{}
	watching map[string]map[string]struct{}

	// policy decides which machines are stale or drifted (attention.go). Set
	// once by newApp before anything reads the index.
	policy attentionPolicy
}

func newFleet() *fleet {
	return &fleet{
		machines: map[string]*machineRec{},
		hint:     map[string]map[string]struct{}{},
		watching: map[string]map[string]struct{}{},
		policy:   newAttentionPolicy(0, 0),
	}
}

func (f *fleet) reset(ms map[string]*machineRec) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.machines = ms
	f.byLifecycle = [5]int{}
	for _, m := range ms {
		f.byLifecycle[lifecycleIndex(m.Lifecycle)]++
		m.MismatchSince = mismatchSince(nil, m)
	}
}

func (f *fleet) get(id string) *machineRec {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.machines[id]
}

func (f *fleet) put(m *machineRec) {
	f.mu.Lock()
	defer f.mu.Unlock()
	old := f.machines[m.ID]
	if old != nil {
		f.byLifecycle[lifecycleIndex(old.Lifecycle)]--
	}
	f.byLifecycle[lifecycleIndex(m.Lifecycle)]++
	m.MismatchSince = mismatchSince(old, m) // m is not published yet: no reader sees this write
	f.machines[m.ID] = m
}

// counts returns the fleet size and the count per lifecycle (in the order of
// lifecycles).
func (f *fleet) counts() (int, [5]int) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return len(f.machines), f.byLifecycle
}

// list returns the machines that match filter, sorted by id, with ids greater
// than after, at most limit of them (limit 0: no limit).
func (f *fleet) list(filter func(*machineRec) bool, after string, limit int) []*machineRec {
	f.mu.RLock()
	out := make([]*machineRec, 0, 64)
	for id, m := range f.machines {
		if id > after && filter(m) {
			out = append(out, m)
		}
	}
	f.mu.RUnlock()
	slices.SortFunc(out, func(a, b *machineRec) int { return strings.Compare(a.ID, b.ID) })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
}

// each calls fn for every machine, in no particular order, under the read lock.
func (f *fleet) each(fn func(*machineRec)) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, m := range f.machines {
		fn(m)
	}
}

// setMembership replaces the membership sets of one rollout; nil sets remove it.
func (f *fleet) setMembership(rollout string, hint, watching map[string]struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(hint) == 0 {
		delete(f.hint, rollout)
	} else {
		f.hint[rollout] = hint
	}
	if len(watching) == 0 {
		delete(f.watching, rollout)
	} else {
		f.watching[rollout] = watching
	}
}

// pollHint reports whether the machine is in an unfinished batch of a running
// rollout (§6.7). The number of running rollouts is small, so this is a few
// map lookups per poll.
func (f *fleet) pollHint(id string) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, set := range f.hint {
		if _, ok := set[id]; ok {
			return true
		}
	}
	return false
}

// rolloutMembers returns the machines in an unfinished batch of a running
// rollout (the union of the poll-hint sets), as a set of its own.
func (f *fleet) rolloutMembers() map[string]struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := map[string]struct{}{}
	for _, set := range f.hint {
		for id := range set {
			out[id] = struct{}{}
		}
	}
	return out
}

// watched reports whether a report from the machine can move a rollout on:
// it is in a deploying or waiting_health batch of a running rollout.
func (f *fleet) watched(id string) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, set := range f.watching {
		if _, ok := set[id]; ok {
			return true
		}
	}
	return false
}
