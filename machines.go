package main

import (
	"context"
	"slices"
)

// The machine registry (§4.7–§4.12, §7): lifecycle states and their
// transition table, and the operator actions on machines. Each action is one
// write transaction holding the change and its audit rows.

// lifecycle is a machine's lifecycle state (§7.1).
type lifecycle string

const (
	lcPending        lifecycle = "pending"
	lcProvisioning   lifecycle = "provisioning"
	lcActive         lifecycle = "active"
	lcMaintenance    lifecycle = "maintenance"
	lcDecommissioned lifecycle = "decommissioned"
)

// lifecycles lists the lifecycle states in their documented order.
var lifecycles = []lifecycle{lcPending, lcProvisioning, lcActive, lcMaintenance, lcDecommissioned}

func lifecycleIndex(l lifecycle) int { return slices.Index(lifecycles, l) }

// lifecycleTransitions is the lifecycle transition table (§7.2): from →
// allowed targets. Anything else, X → X included, is refused with 409.
var lifecycleTransitions = map[lifecycle][]lifecycle{
	lcPending:        {lcProvisioning, lcActive, lcDecommissioned},
	lcProvisioning:   {lcPending, lcActive},
	lcActive:         {lcMaintenance, lcDecommissioned},
	lcMaintenance:    {lcActive, lcDecommissioned},
	lcDecommissioned: {},
}

func transitionAllowed(from, to lifecycle) bool {
	return slices.Contains(lifecycleTransitions[from], to)
}

// parseLifecycle checks a lifecycle value from a request (case-sensitive).
func parseLifecycle(v string) (lifecycle, error) {
	if lifecycleIndex(lifecycle(v)) < 0 {
		return "", invalidf("invalid lifecycle state: %s", v)
	}
	return lifecycle(v), nil
}

// machineStatus is the wire type of a machine (§5.3).
type machineStatus struct {
	MachineID              string   `json:"machine_id"`
	CurrentGeneration      string   `json:"current_generation"`
	DesiredGeneration      *string  `json:"desired_generation"`
	AgentVersion           string   `json:"agent_version"`
	SystemState            string   `json:"system_state"`
	UptimeSeconds          int64    `json:"uptime_seconds"`
	LastReport             *string  `json:"last_report"`
	Lifecycle              string   `json:"lifecycle"`
	Tags                   []string `json:"tags"`
	SecondsSinceLastReport *int64   `json:"seconds_since_last_report"`
	RegisteredAt           string   `json:"registered_at"`
	Stale                  bool     `json:"stale"`     // extra: attention.go
	Drifted                bool     `json:"drifted"`   // extra: attention.go
	Attention              string   `json:"attention"` // extra: the most important reason, "" when none
}

// status renders the machine as of now (Unix ms) with its condition.
func (m *machineRec) status(now int64, c condition) machineStatus {
	ms := machineStatus{
		MachineID:         m.ID,
		CurrentGeneration: m.CurrentGen,
		AgentVersion:      m.AgentVersion,
		SystemState:       systemState(m.LastSuccess),
		UptimeSeconds:     m.Uptime,
		Lifecycle:         string(m.Lifecycle),
		Tags:              m.Tags,
		RegisteredAt:      fmtTime(m.RegisteredAt),
		Stale:             c.stale,
		Drifted:           c.drifted,
		Attention:         c.attention,
	}
	if m.Desired != nil {
		ms.DesiredGeneration = &m.Desired.Hash
	}
	if m.LastSeen > 0 {
		ms.LastReport = str(fmtTime(m.LastSeen))
		age := max(now-m.LastSeen, 0) / 1000
		ms.SecondsSinceLastReport = &age
	}
	return ms
}

// machineFilter selects machines for GET /api/v1/machines.
type machineFilter struct {
	tags       []string    // all of them (AND)
	lifecycles []lifecycle // any of them (OR); none means all
	after      string      // only ids greater than this
	limit      int         // 0: no limit
	stale      *bool       // nil: either
	drifted    *bool       // nil: either
}

// listMachines returns the matching machines sorted by id, from the
// in-memory index (no database work).
func (cp *controlPlane) listMachines(f machineFilter) []machineStatus {
	fl := cp.st.fleet
	now := cp.st.now().UnixMilli()
	cond := fl.conditions(now)
	ms := fl.list(func(m *machineRec) bool {
		if !m.hasTags(f.tags) || len(f.lifecycles) > 0 && !slices.Contains(f.lifecycles, m.Lifecycle) {
			return false
		}
		if f.stale == nil && f.drifted == nil {
			return true
		}
		c := cond(m)
		return (f.stale == nil || *f.stale == c.stale) && (f.drifted == nil || *f.drifted == c.drifted)
	}, f.after, f.limit)
	out := make([]machineStatus, len(ms))
	for i, m := range ms {
		out[i] = m.status(now, cond(m))
	}
	return out
}

// conditionOf evaluates one machine's attention rules now; pollHint is
// whether it is in an unfinished batch of a running rollout.
func (cp *controlPlane) conditionOf(m *machineRec) condition {
	fl := cp.st.fleet
	return fl.policy.condition(m, cp.st.now().UnixMilli(), fl.pollHint(m.ID))
}

// getMachine returns the status of one machine, whatever its lifecycle, from
// the in-memory fleet index, or a 404 naming it.
func (cp *controlPlane) getMachine(id string) (machineStatus, error) {
	m := cp.st.fleet.get(id)
	if m == nil {
		return machineStatus{}, notFoundf("machine %s not found", id)
	}
	return m.status(cp.st.now().UnixMilli(), cp.conditionOf(m)), nil
}

// changeLifecycle moves the machine to a new lifecycle with the effects of
// §7.3: decommissioning clears the desired generation, audited with actor.
// The caller checks the transition and writes its own audit row for it.
func changeLifecycle(tx *txn, m *machineRec, to lifecycle, actor string) (*machineRec, error) {
	m, err := tx.setLifecycle(m, to)
	if err != nil {
		return nil, err
	}
	if to == lcDecommissioned && m.Desired != nil {
		path := m.Desired.Hash
		if m, err = tx.clearDesired(m); err != nil {
			return nil, err
		}
		if err := recordAudit(tx, actor, "clear_desired", m.ID, &path); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// replaceTags sets the machine's tags if they differ, with audit tags.update.
func replaceTags(tx *txn, m *machineRec, tags []string, actor string) (*machineRec, error) {
	if slices.Equal(m.Tags, tags) {
		return m, nil
	}
	old := m.Tags
	m, err := tx.setTags(m, tags)
	if err != nil {
		return nil, err
	}
	return m, recordAudit(tx, actor, "tags.update", m.ID, str(tagsChange(old, tags)))
}

// registerRequest is the optional body of POST …/register (§4.8).
type registerRequest struct {
	Lifecycle *string  `json:"lifecycle"`
	Tags      []string `json:"tags"`

	lifecycle lifecycle // "" when absent
}

func (q *registerRequest) validate() error {
	if q.Lifecycle != nil {
		var err error
		if q.lifecycle, err = parseLifecycle(*q.Lifecycle); err != nil {
			return err
		}
	}
	var err error
	q.Tags, err = normalizeTags("tags", q.Tags)
	return err
}

// register creates the machine or updates an existing one (§4.8) and returns
// the resulting lifecycle. It returns a 409 *clientError for a transition
// that §7.2 does not allow.
func (cp *controlPlane) register(ctx context.Context, actor, id string, req registerRequest) (lifecycle, error) {
	var result lifecycle
	err := cp.st.write(ctx, func(tx *txn) error {
		m := tx.machine(id)
		change := m != nil && req.lifecycle != "" && req.lifecycle != m.Lifecycle
		var detail string
		switch {
		case m == nil:
			lc := lcActive
			if req.lifecycle != "" {
				lc = req.lifecycle
			}
			var err error
			if m, err = tx.insertMachine(id, lc); err != nil {
				return err
			}
			detail = string(lc)
		case change:
			if !transitionAllowed(m.Lifecycle, req.lifecycle) {
				return conflictf("invalid transition: %s -> %s", m.Lifecycle, req.lifecycle)
			}
			detail = string(m.Lifecycle) + " -> " + string(req.lifecycle)
		default:
			detail = string(m.Lifecycle)
		}
		if err := recordAudit(tx, actor, "register", id, &detail); err != nil {
			return err
		}
		if change {
			var err error
			if m, err = changeLifecycle(tx, m, req.lifecycle, actor); err != nil {
				return err
			}
		}
		if len(req.Tags) > 0 {
			var err error
			if m, err = replaceTags(tx, m, req.Tags, actor); err != nil {
				return err
			}
		}
		result = m.Lifecycle
		return nil
	})
	return result, err
}

// lifecycleRequest is the body of PATCH …/lifecycle (§4.9).
type lifecycleRequest struct {
	Lifecycle *string `json:"lifecycle"`

	lifecycle lifecycle
}

func (q *lifecycleRequest) validate() error {
	if q.Lifecycle == nil {
		return invalidf("lifecycle: required")
	}
	var err error
	q.lifecycle, err = parseLifecycle(*q.Lifecycle)
	return err
}

// setLifecycle changes a machine's lifecycle (§4.9). It returns a 404 for an
// unknown machine and a 409 for a transition §7.2 does not allow.
func (cp *controlPlane) setLifecycle(ctx context.Context, actor, id string, to lifecycle) error {
	return cp.st.write(ctx, func(tx *txn) error {
		m := tx.machine(id)
		if m == nil {
			return notFoundf("machine %s not found", id)
		}
		from := m.Lifecycle
		if !transitionAllowed(from, to) {
			return conflictf("invalid transition: %s -> %s", from, to)
		}
		if err := recordAudit(tx, actor, "update_lifecycle", id, str(string(from)+" -> "+string(to))); err != nil {
			return err
		}
		_, err := changeLifecycle(tx, m, to, actor)
		return err
	})
}

// tagsRequest is the body of PUT …/tags (§4.10).
type tagsRequest struct {
	Tags []string `json:"tags"`
}

func (q *tagsRequest) validate() error {
	if q.Tags == nil {
		return invalidf("tags: required")
	}
	var err error
	q.Tags, err = normalizeTags("tags", q.Tags)
	return err
}

// putTags replaces a machine's tags (§4.10) and returns the machine after
// the change, or a 404.
func (cp *controlPlane) putTags(ctx context.Context, actor, id string, tags []string) (machineStatus, error) {
	var result *machineRec
	err := cp.st.write(ctx, func(tx *txn) error {
		m := tx.machine(id)
		if m == nil {
			return notFoundf("machine %s not found", id)
		}
		var err error
		result, err = replaceTags(tx, m, tags, actor)
		return err
	})
	if err != nil {
		return machineStatus{}, err
	}
	return result.status(cp.st.now().UnixMilli(), cp.conditionOf(result)), nil
}

// refuseInActiveRollout returns a 409 while the machine is in an active
// rollout: operators must not change a desired generation under it.
func refuseInActiveRollout(tx *txn, id string) error {
	rid, err := tx.activeRolloutOf(id)
	if err != nil {
		return err
	}
	if rid != "" {
		return conflictf("machine %s is in active rollout %s", id, rid)
	}
	return nil
}

// clearDesired removes a machine's desired generation (§4.11); idempotent.
// It returns a 404 for an unknown machine and a 409 during a rollout.
func (cp *controlPlane) clearDesired(ctx context.Context, actor, id string) error {
	return cp.st.write(ctx, func(tx *txn) error {
		m := tx.machine(id)
		if m == nil {
			return notFoundf("machine %s not found", id)
		}
		if err := refuseInActiveRollout(tx, id); err != nil {
			return err
		}
		if m.Desired == nil {
			return nil
		}
		path := m.Desired.Hash
		if _, err := tx.clearDesired(m); err != nil {
			return err
		}
		return recordAudit(tx, actor, "clear_desired", id, &path)
	})
}

// notifyDeployRequest is the body of POST …/notify-deploy (§4.12).
type notifyDeployRequest struct {
	StorePath *string `json:"store_path"`
}

func (q *notifyDeployRequest) validate() error {
	if q.StorePath == nil {
		return invalidf("store_path: required")
	}
	return checkStorePath("store_path", *q.StorePath)
}

// notifyDeploy pins a machine to a store path outside any rollout (§4.12),
// registering an unknown machine first. It returns a 409 for a
// decommissioned machine or one in an active rollout.
func (cp *controlPlane) notifyDeploy(ctx context.Context, actor, id, storePath string) error {
	return cp.st.write(ctx, func(tx *txn) error {
		m := tx.machine(id)
		if m == nil {
			var err error
			if m, err = tx.insertMachine(id, lcActive); err != nil {
				return err
			}
			if err := recordAudit(tx, actor, "register", id, str(string(lcActive))); err != nil {
				return err
			}
		}
		if m.Lifecycle == lcDecommissioned {
			return conflictf("machine %s is decommissioned", id)
		}
		if err := refuseInActiveRollout(tx, id); err != nil {
			return err
		}
		if _, err := tx.setDesired(m, storePath, nil, actor); err != nil {
			return err
		}
		return recordAudit(tx, actor, "notify_deploy", id, &storePath)
	})
}
