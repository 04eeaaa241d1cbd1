package main

import (
	"context"
	"database/sql"
	"fmt"
)

// Machines, their tags and desired generations. Every setter changes one
// row set and stages the machine's new in-memory record in the transaction,
// which publishes it to the fleet index after the commit.

// machine returns the machine as this transaction sees it, or nil if it does
// not exist. The record must not be modified; use the txn setters.
func (t *txn) machine(id string) *machineRec {
	if m, ok := t.machines[id]; ok {
		return m
	}
	return t.s.fleet.get(id)
}

// stage records rec as the transaction's new version of the machine.
func (t *txn) stage(rec *machineRec) {
	t.machines[rec.ID] = rec
}

// insertMachine creates a machine with the given lifecycle and no tags.
func (t *txn) insertMachine(id string, lc lifecycle) (*machineRec, error) {
	if _, err := t.s.stmts.insertMachine.ExecContext(t.ctx, id, string(lc), t.now); err != nil {
		return nil, fmt.Errorf("insert machine: %w", err)
	}
	rec := &machineRec{ID: id, Lifecycle: lc, RegisteredAt: t.now, LastSuccess: -1, Tags: []string{}}
	t.stage(rec)
	return rec, nil
}

// setTags replaces the machine's tag set (tags must be sorted and unique).
func (t *txn) setTags(m *machineRec, tags []string) (*machineRec, error) {
	if _, err := t.exec("DELETE FROM machine_tag WHERE machine_id = ?", m.ID); err != nil {
		return nil, fmt.Errorf("delete tags: %w", err)
	}
	for _, tag := range tags {
		if _, err := t.exec("INSERT INTO machine_tag (machine_id, tag) VALUES (?, ?)", m.ID, tag); err != nil {
			return nil, fmt.Errorf("insert tag: %w", err)
		}
	}
	rec := m.clone()
	rec.Tags = tags
	t.stage(rec)
	return rec, nil
}

// setLifecycle changes the lifecycle column; callers check the transition.
func (t *txn) setLifecycle(m *machineRec, to lifecycle) (*machineRec, error) {
	if _, err := t.exec("UPDATE machine SET lifecycle = ? WHERE machine_id = ?", string(to), m.ID); err != nil {
		return nil, fmt.Errorf("update lifecycle: %w", err)
	}
	rec := m.clone()
	rec.Lifecycle = to
	t.stage(rec)
	return rec, nil
}

// setDesired sets the machine's desired generation.
func (t *txn) setDesired(m *machineRec, hash string, cacheURL *string, actor string) (*machineRec, error) {
	if _, err := t.exec(`INSERT INTO desired_generation (machine_id, hash, cache_url, set_at, set_by)
		VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (machine_id) DO UPDATE SET hash = excluded.hash, cache_url = excluded.cache_url,
			set_at = excluded.set_at, set_by = excluded.set_by`,
		m.ID, hash, cacheURL, t.now, actor); err != nil {
		return nil, fmt.Errorf("set desired generation: %w", err)
	}
	rec := m.clone()
	rec.Desired = &desiredGen{Hash: hash, CacheURL: cacheURL, SetAt: t.now, SetBy: actor}
	t.stage(rec)
	return rec, nil
}

// clearDesired removes the machine's desired generation, if any.
func (t *txn) clearDesired(m *machineRec) (*machineRec, error) {
	if _, err := t.exec("DELETE FROM desired_generation WHERE machine_id = ?", m.ID); err != nil {
		return nil, fmt.Errorf("clear desired generation: %w", err)
	}
	rec := m.clone()
	rec.Desired = nil
	t.stage(rec)
	return rec, nil
}

// activeRolloutOf returns the active rollout the machine belongs to, or "".
func (d dbq) activeRolloutOf(machineID string) (string, error) {
	rid, _, err := queryOne(d, "find active rollout", scanString, `SELECT rm.rollout_id FROM rollout_machine rm
		JOIN rollout r ON r.id = rm.rollout_id
		WHERE rm.machine_id = ? AND r.status IN ('created', 'running', 'paused')
		ORDER BY rm.rollout_id LIMIT 1`, machineID)
	return rid, err
}

// loadFleet rebuilds the machine index and the rollout membership sets from
// the database at startup.
func (s *store) loadFleet(ctx context.Context) error {
	d := dbq{ctx, s.ro}
	ms := map[string]*machineRec{}
	_, err := queryAll(d, "load machines", func(row scanner) (struct{}, error) {
		var m machineRec
		var lc string
		var success, seen, agentTS sql.NullInt64
		if err := row.Scan(&m.ID, &lc, &m.RegisteredAt, &m.CurrentGen, &success, &seen, &agentTS,
			&m.AgentVersion, &m.Uptime); err != nil {
			return struct{}{}, err
		}
		m.Lifecycle = lifecycle(lc)
		m.LastSuccess = -1
		if success.Valid {
			m.LastSuccess = int8(success.Int64)
		}
		m.LastSeen, m.AgentTS = seen.Int64, agentTS.Int64
		m.Tags = []string{}
		ms[m.ID] = &m
		return struct{}{}, nil
	}, `SELECT machine_id, lifecycle, registered_at, current_generation,
		last_success, last_seen, last_report_agent_ts, agent_version, uptime_seconds FROM machine`)
	if err != nil {
		return err
	}
	_, err = queryAll(d, "load tags", func(row scanner) (struct{}, error) {
		var id, tag string
		err := row.Scan(&id, &tag)
		if m := ms[id]; err == nil && m != nil {
			m.Tags = append(m.Tags, tag)
		}
		return struct{}{}, err
	}, "SELECT machine_id, tag FROM machine_tag ORDER BY machine_id, tag")
	if err != nil {
		return err
	}
	_, err = queryAll(d, "load desired generations", func(row scanner) (struct{}, error) {
		var id string
		var g desiredGen
		var cache sql.NullString
		err := row.Scan(&id, &g.Hash, &cache, &g.SetAt, &g.SetBy)
		g.CacheURL = nullStr(cache)
		if m := ms[id]; err == nil && m != nil {
			m.Desired = &g
		}
		return struct{}{}, err
	}, "SELECT machine_id, hash, cache_url, set_at, set_by FROM desired_generation")
	if err != nil {
		return err
	}
	// The attention reason of a machine whose latest report failed quotes it
	// (attention.go); one indexed lookup per such machine.
	_, err = queryAll(d, "load latest failures", func(row scanner) (struct{}, error) {
		var id, msg string
		err := row.Scan(&id, &msg)
		if m := ms[id]; err == nil && m != nil {
			m.LastFailure = failureMessage(false, msg)
		}
		return struct{}{}, err
	}, `SELECT m.machine_id, r.message FROM machine m JOIN report r ON r.id = (SELECT id FROM report
		WHERE machine_id = m.machine_id ORDER BY received_at DESC, id DESC LIMIT 1)
		WHERE m.last_success = 0`)
	if err != nil {
		return err
	}
	// The audit flood bound looks back one window: rebuild it from the rows
	// the agents wrote in the last minute (§6.5).
	_, err = queryAll(d, "load recent agent audit rows", func(row scanner) (struct{}, error) {
		var id, action string
		var at int64
		err := row.Scan(&id, &action, &at)
		if m := ms[id]; err == nil && m != nil {
			w := &m.ReportAudit
			if action == "tags.update" {
				w = &m.TagsAudit
			}
			w.note(at)
		}
		return struct{}{}, err
	}, `SELECT target, action, timestamp FROM audit_event
		WHERE timestamp > ? AND action IN ('report', 'tags.update') AND actor = 'machine:' || target
		ORDER BY id`, s.now().UnixMilli()-auditWindowMs)
	if err != nil {
		return err
	}
	s.fleet.reset(ms)
	hint, watching, err := d.membership("")
	if err != nil {
		return err
	}
	for r := range hint {
		s.fleet.setMembership(r, hint[r], watching[r])
	}
	return nil
}
