package main

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
)

// Rollouts, their batches, machines and events (§9, §12.2).

// rolloutRow is a rollout as stored.
type rolloutRow struct {
	ID, ReleaseID, Strategy string
	BatchSizes              []string
	FailureThreshold        string
	OnFailure               string
	HealthTimeout           int64
	SoakSeconds             int64
	CacheURL                *string
	TargetKind              string
	TargetValues            []string
	Status                  rolloutStatus
	CreatedAt, UpdatedAt    int64
	CreatedBy               string
	Version                 int64 // bumped by every write: the compare-and-swap token

	claimedIn *txn // the transaction that has claimed this version (claimRollout)
}

type batchRow struct {
	ID                                  string
	Index                               int
	Status                              batchStatus
	StartedAt, CompletedAt, SoakStarted *int64
}

// memberRow is one machine of a rollout.
type memberRow struct {
	MachineID    string
	BatchIndex   int
	StorePath    string
	PrevCaptured bool
	PrevHash     *string // nil with PrevCaptured: the machine had no desired generation
	Health       string
	Reason       string
}

const rolloutColumns = `id, release_id, strategy, batch_sizes, failure_threshold, on_failure, health_timeout,
	soak_seconds, cache_url, target_kind, target_values, status, created_at, updated_at, created_by, version`

func scanRollout(row scanner) (*rolloutRow, error) {
	var r rolloutRow
	var sizes, values, status string
	var cache sql.NullString
	if err := row.Scan(&r.ID, &r.ReleaseID, &r.Strategy, &sizes, &r.FailureThreshold, &r.OnFailure,
		&r.HealthTimeout, &r.SoakSeconds, &cache, &r.TargetKind, &values, &status, &r.CreatedAt,
		&r.UpdatedAt, &r.CreatedBy, &r.Version); err != nil {
		return nil, err
	}
	r.Status = rolloutStatus(status)
	r.CacheURL = nullStr(cache)
	if err := json.Unmarshal([]byte(sizes), &r.BatchSizes); err != nil {
		return nil, fmt.Errorf("decode batch_sizes of %s: %w", r.ID, err)
	}
	if err := json.Unmarshal([]byte(values), &r.TargetValues); err != nil {
		return nil, fmt.Errorf("decode target of %s: %w", r.ID, err)
	}
	return &r, nil
}

// rollout returns the rollout, or nil when there is none.
func (d dbq) rollout(id string) (*rolloutRow, error) {
	r, _, err := queryOne(d, "load rollout", scanRollout, "SELECT "+rolloutColumns+" FROM rollout WHERE id = ?", id)
	return r, err
}

// rollouts returns at most limit rollouts, newest first; with status, only
// those in it.
func (d dbq) rollouts(status *rolloutStatus, limit int) ([]*rolloutRow, error) {
	q := "SELECT " + rolloutColumns + " FROM rollout"
	var args []any
	if status != nil {
		q += " WHERE status = ?"
		args = append(args, string(*status))
	}
	args = append(args, limit)
	return queryAll(d, "list rollouts", scanRollout, q+" ORDER BY created_at DESC, rowid DESC LIMIT ?", args...)
}

// runningRollouts returns the ids of the running rollouts, oldest first.
func (d dbq) runningRollouts() ([]string, error) {
	return queryAll(d, "list running rollouts", scanString, "SELECT id FROM rollout WHERE status = 'running' ORDER BY created_at, rowid")
}

// batches returns the rollout's batches in index order.
func (d dbq) batches(rid string) ([]batchRow, error) {
	return queryAll(d, "load batches", func(row scanner) (batchRow, error) {
		var b batchRow
		var status string
		var started, completed, soak sql.NullInt64
		err := row.Scan(&b.ID, &b.Index, &status, &started, &completed, &soak)
		b.Status = batchStatus(status)
		b.StartedAt, b.CompletedAt, b.SoakStarted = nullInt(started), nullInt(completed), nullInt(soak)
		return b, err
	}, `SELECT id, batch_index, status, started_at, completed_at, soak_started_at
		FROM rollout_batch WHERE rollout_id = ? ORDER BY batch_index`, rid)
}

// members returns the rollout's machines (of one batch when batch >= 0),
// sorted by machine id.
func (d dbq) members(rid string, batch int) ([]memberRow, error) {
	q := `SELECT machine_id, batch_index, store_path, prev_captured, prev_hash, health, health_reason
		FROM rollout_machine WHERE rollout_id = ?`
	args := []any{rid}
	if batch >= 0 {
		q += " AND batch_index = ?"
		args = append(args, batch)
	}
	return queryAll(d, "load rollout machines", func(row scanner) (memberRow, error) {
		var m memberRow
		var prev sql.NullString
		err := row.Scan(&m.MachineID, &m.BatchIndex, &m.StorePath, &m.PrevCaptured, &prev, &m.Health, &m.Reason)
		m.PrevHash = nullStr(prev)
		return m, err
	}, q+" ORDER BY machine_id", args...)
}

// rolloutEvents returns the rollout's events in ascending id order.
func (d dbq) rolloutEvents(rid string) ([]eventDetail, error) {
	return queryAll(d, "load rollout events", func(row scanner) (eventDetail, error) {
		ev := eventDetail{RolloutID: rid}
		var at int64
		err := row.Scan(&ev.ID, &ev.EventType, &ev.Detail, &ev.Actor, &at)
		ev.CreatedAt = fmtTime(at)
		return ev, err
	}, `SELECT id, event_type, detail, actor, created_at FROM rollout_event
		WHERE rollout_id = ? ORDER BY id`, rid)
}

// countActiveRollouts counts rollouts in created, running or paused status.
func (d dbq) countActiveRollouts() (int64, error) {
	var n int64
	if err := d.queryRow("SELECT count(*) FROM rollout WHERE status IN ('created', 'running', 'paused')").Scan(&n); err != nil {
		return 0, fmt.Errorf("count active rollouts: %w", err)
	}
	return n, nil
}

// countRolloutsByStatus counts the stored rollouts per status, in the order
// of rolloutStatuses.
func (d dbq) countRolloutsByStatus() ([6]int64, error) {
	var counts [6]int64
	_, err := queryAll(d, "count rollouts by status", func(row scanner) (struct{}, error) {
		var status string
		var n int64
		err := row.Scan(&status, &n)
		if i := slices.Index(rolloutStatuses, rolloutStatus(status)); err == nil && i >= 0 {
			counts[i] = n
		}
		return struct{}{}, err
	}, "SELECT status, count(*) FROM rollout GROUP BY status")
	return counts, err
}

// activeMembers returns, for every machine of an active rollout, that
// rollout's id. Members of active rollouts are few compared to the fleet.
func (d dbq) activeMembers() (map[string]string, error) {
	busy := map[string]string{}
	_, err := queryAll(d, "load active rollouts", func(row scanner) (struct{}, error) {
		var m, rid string
		err := row.Scan(&m, &rid)
		busy[m] = rid
		return struct{}{}, err
	}, `SELECT rm.machine_id, rm.rollout_id FROM rollout r
		JOIN rollout_machine rm ON rm.rollout_id = r.id WHERE r.status IN ('created', 'running', 'paused')`)
	return busy, err
}

// membership computes the derived sets of running rollouts (all of them when
// rid is ""): machines of unfinished batches (poll hint) and of batches being
// evaluated (executor wake-up).
func (d dbq) membership(rid string) (hint, watching map[string]map[string]struct{}, err error) {
	q := `SELECT rm.rollout_id, rm.machine_id, b.status FROM rollout r
		JOIN rollout_batch b ON b.rollout_id = r.id AND b.status IN ('pending', 'deploying', 'waiting_health')
		JOIN rollout_machine rm ON rm.rollout_id = r.id AND rm.batch_index = b.batch_index
		WHERE r.status = 'running'`
	var args []any
	if rid != "" {
		q += " AND r.id = ?"
		args = append(args, rid)
	}
	hint, watching = map[string]map[string]struct{}{}, map[string]map[string]struct{}{}
	add := func(sets map[string]map[string]struct{}, r, m string) {
		if sets[r] == nil {
			sets[r] = map[string]struct{}{}
		}
		sets[r][m] = struct{}{}
	}
	_, err = queryAll(d, "load rollout membership", func(row scanner) (struct{}, error) {
		var r, m, status string
		if err := row.Scan(&r, &m, &status); err != nil {
			return struct{}{}, err
		}
		add(hint, r, m)
		if status != string(batchPending) {
			add(watching, r, m)
		}
		return struct{}{}, nil
	}, q, args...)
	return hint, watching, err
}

// releasePaths returns the release's store path per hostname.
func (d dbq) releasePaths(releaseID string) (map[string]string, error) {
	paths := map[string]string{}
	_, err := queryAll(d, "load release entries", func(row scanner) (struct{}, error) {
		var h, p string
		err := row.Scan(&h, &p)
		paths[h] = p
		return struct{}{}, err
	}, "SELECT hostname, store_path FROM release_entry WHERE release_id = ?", releaseID)
	return paths, err
}

// insertRollout stores a new rollout (status created), its pending batches
// and one membership row per machine, with the release store path of each.
func (t *txn) insertRollout(r *rolloutRow, batches [][]string, paths map[string]string) error {
	sizes, err := json.Marshal(r.BatchSizes)
	if err != nil {
		return err
	}
	values, err := json.Marshal(r.TargetValues)
	if err != nil {
		return err
	}
	if _, err := t.exec(`INSERT INTO rollout (id, release_id, strategy, batch_sizes, failure_threshold,
		on_failure, health_timeout, soak_seconds, cache_url, target_kind, target_values, status, created_at,
		updated_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.ID, r.ReleaseID, r.Strategy, string(sizes), r.FailureThreshold, r.OnFailure, r.HealthTimeout,
		r.SoakSeconds, r.CacheURL, r.TargetKind, string(values), string(r.Status), t.now, t.now, r.CreatedBy); err != nil {
		return fmt.Errorf("insert rollout: %w", err)
	}
	member, err := t.conn.PrepareContext(t.ctx, `INSERT INTO rollout_machine (rollout_id, machine_id, batch_index, store_path)
		VALUES (?, ?, ?, ?)`)
	if err != nil {
		return fmt.Errorf("prepare rollout machine: %w", err)
	}
	defer member.Close()
	for i, ids := range batches {
		if _, err := t.exec(`INSERT INTO rollout_batch (id, rollout_id, batch_index, status)
			VALUES (?, ?, ?, 'pending')`, batchID(r.ID, i), r.ID, i); err != nil {
			return fmt.Errorf("insert batch: %w", err)
		}
		for _, id := range ids {
			if _, err := member.ExecContext(t.ctx, r.ID, id, i, paths[id]); err != nil {
				return fmt.Errorf("insert rollout machine: %w", err)
			}
		}
	}
	return nil
}

// bumpRolloutVersion is the compare-and-swap of claimRollout: it bumps the
// version if the rollout is still at version and status, else errStale.
func (t *txn) bumpRolloutVersion(id string, version int64, status rolloutStatus) error {
	res, err := t.exec("UPDATE rollout SET version = version + 1 WHERE id = ? AND version = ? AND status = ?",
		id, version, string(status))
	if err != nil {
		return fmt.Errorf("update rollout: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return errStale
	}
	return nil
}

// setRolloutStatus changes the status (compare-and-swap on from) and bumps
// updated_at.
func (t *txn) setRolloutStatus(id string, from, to rolloutStatus) error {
	res, err := t.exec("UPDATE rollout SET status = ?, updated_at = ? WHERE id = ? AND status = ?",
		string(to), t.now, id, string(from))
	if err != nil {
		return fmt.Errorf("set rollout status: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return errStale
	}
	return nil
}

// deleteRollout removes the rollout; its batches, machines and events go
// with it (ON DELETE CASCADE).
func (t *txn) deleteRollout(id string) error {
	if _, err := t.exec("DELETE FROM rollout WHERE id = ?", id); err != nil {
		return fmt.Errorf("delete rollout: %w", err)
	}
	return nil
}

// insertRolloutEvent appends a rollout event; detail is compact JSON text.
func (t *txn) insertRolloutEvent(rid, eventType, actor, detail string) error {
	if _, err := t.exec(`INSERT INTO rollout_event (rollout_id, event_type, detail, actor, created_at)
		VALUES (?, ?, ?, ?, ?)`, rid, eventType, detail, actor, t.now); err != nil {
		return fmt.Errorf("record rollout event: %w", err)
	}
	t.wroteRolloutEvents = true
	return nil
}

// updateBatch writes b's status and timestamps (compare-and-swap on the
// status from) and, when the status changes, bumps the rollout's updated_at.
func (t *txn) updateBatch(rid string, from batchStatus, b batchRow) error {
	res, err := t.exec(`UPDATE rollout_batch SET status = ?, started_at = ?, completed_at = ?, soak_started_at = ?
		WHERE id = ? AND status = ?`, string(b.Status), b.StartedAt, b.CompletedAt, b.SoakStarted, b.ID, string(from))
	if err != nil {
		return fmt.Errorf("update batch: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return errStale
	}
	if from == b.Status {
		return nil
	}
	if _, err := t.exec("UPDATE rollout SET updated_at = ? WHERE id = ?", t.now, rid); err != nil {
		return fmt.Errorf("update rollout: %w", err)
	}
	return nil
}

// resetMemberHealth sets the health of the batch's machines back to pending;
// with keepSkipped, machines skipped at deploy time stay skipped.
func (t *txn) resetMemberHealth(rid string, batch int, keepSkipped bool) error {
	q := "UPDATE rollout_machine SET health = 'pending', health_reason = '' WHERE rollout_id = ? AND batch_index = ?"
	if keepSkipped {
		q += " AND health <> 'skipped'"
	}
	if _, err := t.exec(q, rid, batch); err != nil {
		return fmt.Errorf("reset machine health: %w", err)
	}
	return nil
}

// setMemberHealth stores a machine's classification in the rollout.
func (t *txn) setMemberHealth(rid, machine, health, reason string) error {
	if _, err := t.exec(`UPDATE rollout_machine SET health = ?, health_reason = ?
		WHERE rollout_id = ? AND machine_id = ?`, health, reason, rid, machine); err != nil {
		return fmt.Errorf("update machine health: %w", err)
	}
	return nil
}

// capturePrevious records the machine's desired generation from before the
// rollout (nil: none). Callers capture once per machine and rollout.
func (t *txn) capturePrevious(rid, machine string, prev *string) error {
	if _, err := t.exec(`UPDATE rollout_machine SET prev_captured = 1, prev_hash = ?
		WHERE rollout_id = ? AND machine_id = ?`, prev, rid, machine); err != nil {
		return fmt.Errorf("capture previous generation: %w", err)
	}
	return nil
}

// maxReportID returns the highest report id.
func (d dbq) maxReportID() (int64, error) {
	var id int64
	if err := d.queryRow("SELECT coalesce(max(id), 0) FROM report").Scan(&id); err != nil {
		return 0, fmt.Errorf("load fresh reports: %w", err)
	}
	return id, nil
}

// The executor's report queries (named for TestReportQueryPlans): what
// arrived since the last read (ids above the last one read), and a new batch
// attempt's reports; both read the batch's machines through the
// (machine_id, received_at) index.
const (
	batchReportsQuery = `SELECT r.machine_id, r.id, r.generation, r.success, r.message,
			h.all_passed IS NOT NULL, coalesce(h.all_passed, 0), coalesce(h.failed_checks, '')
		FROM report r
		JOIN rollout_machine rm ON rm.rollout_id = ? AND rm.machine_id = r.machine_id AND rm.batch_index = ?
		LEFT JOIN health_report h ON h.report_id = r.id
		WHERE r.id > ? AND r.received_at >= ?
		ORDER BY r.id`
	batchReportsInitialQuery = `SELECT r.machine_id, r.id, r.generation, r.success, r.message,
			h.all_passed IS NOT NULL, coalesce(h.all_passed, 0), coalesce(h.failed_checks, '')
		FROM rollout_machine rm
		JOIN report r ON r.machine_id = rm.machine_id AND r.received_at >= ?
		LEFT JOIN health_report h ON h.report_id = r.id
		WHERE rm.rollout_id = ? AND rm.batch_index = ? AND r.id <= ?
		ORDER BY r.id`
)

// batchReports calls fn, in arrival (id) order, for every report of the
// machines of batch index of rollout rid received at or after since. With
// initial (a new batch attempt) it reads the reports with ids up to upToID;
// otherwise those with ids above afterID (what arrived since the last read).
func (d dbq) batchReports(rid string, index int, since int64, initial bool, afterID, upToID int64, fn func(machine string, ev evidence)) error {
	q, args := batchReportsQuery, []any{rid, index, afterID, since}
	if initial {
		q, args = batchReportsInitialQuery, []any{since, rid, index, upToID}
	}
	_, err := queryAll(d, "load fresh reports", func(row scanner) (struct{}, error) {
		var id string
		var ev evidence
		if err := row.Scan(&id, &ev.id, &ev.generation, &ev.success, &ev.message, &ev.hasHealth, &ev.allPassed, &ev.failedChecks); err != nil {
			return struct{}{}, err
		}
		fn(id, ev)
		return struct{}{}, nil
	}, q, args...)
	return err
}
