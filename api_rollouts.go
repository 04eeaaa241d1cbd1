package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
)

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
		return badRequest("release_id: required")
	case q.Strategy == nil:
		return badRequest("strategy: required")
	case q.Target == nil:
		return badRequest("target: required")
	}
	if !isIDChars(*q.ReleaseID) {
		return badRequest("release_id: invalid release id")
	}
	if !slices.Contains([]string{"canary", "staged", "all_at_once"}, *q.Strategy) {
		return badRequest("strategy: must be canary, staged or all_at_once")
	}
	t := q.Target
	switch {
	case t.Tags != nil && t.Hosts != nil:
		return badRequest("target: must have exactly one of tags and hosts")
	case t.Tags != nil:
		if len(t.Tags) == 0 {
			return badRequest("target.tags: must not be empty")
		}
		var err error
		if t.Tags, err = normalizeTags("target.tags", t.Tags); err != nil {
			return err
		}
	case t.Hosts != nil:
		if len(t.Hosts) == 0 {
			return badRequest("target.hosts: must not be empty")
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
		return badRequest("target: must have exactly one of tags and hosts")
	}
	if q.BatchSizes != nil {
		if len(q.BatchSizes) > maxBatches {
			return badRequest("batch_sizes: at most %d entries", maxBatches)
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
		return badRequest("on_failure: must be pause or revert")
	}
	if q.HealthTimeout == nil {
		q.HealthTimeout = new(int64)
		*q.HealthTimeout = 300
	}
	if *q.HealthTimeout < 1 || *q.HealthTimeout > 86400 {
		return badRequest("health_timeout: must be from 1 to 86400 seconds")
	}
	if q.SoakSeconds == nil {
		q.SoakSeconds = new(int64)
	}
	if *q.SoakSeconds < 0 || *q.SoakSeconds > 86400 {
		return badRequest("soak_seconds: must be from 0 to 86400 seconds")
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

// createRolloutResponse is the 201 body of POST /api/v1/rollouts (§5.5).
type createRolloutResponse struct {
	RolloutID     string           `json:"rollout_id"`
	Batches       []plannedBatch   `json:"batches"`
	TotalMachines int              `json:"total_machines"`
	Skipped       []skippedMachine `json:"skipped"`
}

// createRollout handles POST /api/v1/rollouts (§9.1). Target resolution, the
// conflict check and every insert run in one BEGIN IMMEDIATE transaction, so
// two concurrent creates can never put a machine into two active rollouts.
func (s *server) createRollout(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req createRolloutRequest
	if err := decode(w, r, maxBody, false, &req); err != nil {
		return err
	}
	var resp createRolloutResponse
	err := s.st.write(r.Context(), func(tx *txn) error {
		var err error
		resp, err = createRolloutTx(tx, &req, p.actor)
		return err
	})
	if err != nil {
		return err
	}
	s.exec.wake()
	return writeJSON(w, http.StatusCreated, resp)
}

func createRolloutTx(tx *txn, req *createRolloutRequest, actor string) (createRolloutResponse, error) {
	var resp createRolloutResponse
	rel, err := scanRelease(tx.QueryRowContext(tx.ctx, "SELECT "+releaseColumns+" FROM release WHERE id = ?", *req.ReleaseID))
	if err == sql.ErrNoRows {
		return resp, notFound("release %s not found", *req.ReleaseID)
	}
	if err != nil {
		return resp, fmt.Errorf("load release: %w", err)
	}

	skipped := []skippedMachine{}
	var selected []string
	if tags := req.Target.Tags; tags != nil {
		tx.s.fleet.each(func(m *machineRec) {
			if !m.hasTags(tags) {
				return
			}
			switch m.Lifecycle {
			case "active":
				selected = append(selected, m.ID)
			case "decommissioned":
			default:
				skipped = append(skipped, skippedMachine{m.ID, "lifecycle " + m.Lifecycle})
			}
		})
	} else {
		for _, h := range req.Target.Hosts {
			switch m := tx.machine(h); {
			case m == nil:
				skipped = append(skipped, skippedMachine{h, "not registered"})
			case m.Lifecycle != "active":
				skipped = append(skipped, skippedMachine{h, "lifecycle " + m.Lifecycle})
			default:
				selected = append(selected, h)
			}
		}
	}
	if len(selected) == 0 {
		return resp, badRequest("no active machines match the target")
	}
	slices.Sort(selected)

	paths := map[string]string{}
	rows, err := tx.QueryContext(tx.ctx, "SELECT hostname, store_path FROM release_entry WHERE release_id = ?", rel.ID)
	if err != nil {
		return resp, fmt.Errorf("load release entries: %w", err)
	}
	for rows.Next() {
		var h, p string
		if err := rows.Scan(&h, &p); err != nil {
			rows.Close()
			return resp, fmt.Errorf("load release entries: %w", err)
		}
		paths[h] = p
	}
	if err := rows.Close(); err != nil {
		return resp, err
	}
	machines := selected[:0:0]
	for _, id := range selected {
		if _, ok := paths[id]; ok {
			machines = append(machines, id)
		} else {
			skipped = append(skipped, skippedMachine{id, "not in release"})
		}
	}
	if len(machines) == 0 {
		return resp, badRequest("no machines match both the target and release %s", rel.ID)
	}

	// Conflict: the members of active rollouts are few compared to the fleet,
	// so read them all and intersect.
	busy := map[string]string{}
	rows, err = tx.QueryContext(tx.ctx, `SELECT rm.machine_id, rm.rollout_id FROM rollout r
		JOIN rollout_machine rm ON rm.rollout_id = r.id WHERE r.status IN ('created', 'running', 'paused')`)
	if err != nil {
		return resp, fmt.Errorf("load active rollouts: %w", err)
	}
	for rows.Next() {
		var m, rid string
		if err := rows.Scan(&m, &rid); err != nil {
			rows.Close()
			return resp, fmt.Errorf("load active rollouts: %w", err)
		}
		busy[m] = rid
	}
	if err := rows.Close(); err != nil {
		return resp, err
	}
	for _, id := range machines { // sorted: the first conflict is the smallest id
		if rid, ok := busy[id]; ok {
			return resp, conflict("machine %s is in active rollout %s", id, rid)
		}
	}

	cacheURL := req.CacheURL
	if cacheURL == nil {
		cacheURL = rel.CacheURL
	}
	sizes := effectiveBatchSizes(*req.Strategy, req.BatchSizes)
	batches := planBatches(machines, sizes, rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())))
	rid := "r-" + newUUID()
	targetKind, targetValues := "tags", req.Target.Tags
	if targetValues == nil {
		targetKind, targetValues = "hosts", req.Target.Hosts
	}
	sizesJSON, _ := json.Marshal(sizes)
	valuesJSON, _ := json.Marshal(targetValues)
	if _, err := tx.ExecContext(tx.ctx, `INSERT INTO rollout (id, release_id, strategy, batch_sizes, failure_threshold,
		on_failure, health_timeout, soak_seconds, cache_url, target_kind, target_values, status, created_at,
		updated_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)`,
		rid, rel.ID, *req.Strategy, string(sizesJSON), *req.FailureThreshold, *req.OnFailure, *req.HealthTimeout,
		*req.SoakSeconds, cacheURL, targetKind, string(valuesJSON), tx.now, tx.now, actor); err != nil {
		return resp, fmt.Errorf("insert rollout: %w", err)
	}
	member, err := tx.PrepareContext(tx.ctx, `INSERT INTO rollout_machine (rollout_id, machine_id, batch_index, store_path)
		VALUES (?, ?, ?, ?)`)
	if err != nil {
		return resp, fmt.Errorf("prepare rollout machine: %w", err)
	}
	defer member.Close()
	resp.Batches = make([]plannedBatch, len(batches))
	for i, ids := range batches {
		if _, err := tx.ExecContext(tx.ctx, `INSERT INTO rollout_batch (id, rollout_id, batch_index, status)
			VALUES (?, ?, ?, 'pending')`, fmt.Sprintf("%s-b%d", rid, i), rid, i); err != nil {
			return resp, fmt.Errorf("insert batch: %w", err)
		}
		for _, id := range ids {
			if _, err := member.ExecContext(tx.ctx, rid, id, i, paths[id]); err != nil {
				return resp, fmt.Errorf("insert rollout machine: %w", err)
			}
		}
		resp.Batches[i] = plannedBatch{BatchIndex: i, MachineIDs: ids, Status: "pending"}
	}
	if err := recordEvent(tx, rid, "status_change", actor,
		jsonObject("from", "created", "to", "running", "strategy", *req.Strategy)); err != nil {
		return resp, err
	}
	slices.SortFunc(skipped, func(a, b skippedMachine) int { return strings.Compare(a.MachineID, b.MachineID) })
	detail := fmt.Sprintf("strategy=%s machines=%d batches=%d skipped=%d", *req.Strategy, len(machines), len(batches), len(skipped))
	if err := recordAudit(tx, actor, "rollout.created", rid, &detail); err != nil {
		return resp, err
	}
	if err := rolloutChanged(tx, rid, "running"); err != nil {
		return resp, err
	}
	resp.RolloutID, resp.TotalMachines, resp.Skipped = rid, len(machines), skipped
	return resp, nil
}

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

// rolloutDetailOf assembles a rollout's detail from q; events only when withEvents.
func rolloutDetailOf(ctx context.Context, q queryer, r *rolloutRow, withEvents bool) (*rolloutDetail, error) {
	d := &rolloutDetail{
		ID: r.ID, Status: r.Status, Strategy: r.Strategy, ReleaseID: r.ReleaseID, OnFailure: r.OnFailure,
		FailureThreshold: r.FailureThreshold, HealthTimeout: r.HealthTimeout, SoakSeconds: r.SoakSeconds,
		CacheURL: r.CacheURL, BatchSizes: r.BatchSizes, Target: map[string][]string{r.TargetKind: r.TargetValues},
		CreatedAt: fmtTime(r.CreatedAt), UpdatedAt: fmtTime(r.UpdatedAt), CreatedBy: r.CreatedBy,
		Batches: []batchDetail{}, Events: []eventDetail{},
	}
	batches, err := loadBatches(ctx, q, r.ID)
	if err != nil {
		return nil, err
	}
	members, err := loadMembers(ctx, q, r.ID, -1)
	if err != nil {
		return nil, err
	}
	for _, b := range batches {
		d.Batches = append(d.Batches, batchDetail{
			ID: b.ID, BatchIndex: b.Index, MachineIDs: []string{}, Status: b.Status, MachineHealth: map[string]any{},
			StartedAt: fmtTimePtr(b.StartedAt), CompletedAt: fmtTimePtr(b.CompletedAt), SoakStartedAt: fmtTimePtr(b.SoakStarted),
		})
	}
	for _, m := range members { // sorted by machine id, so machine_ids come out sorted
		if m.BatchIndex < 0 || m.BatchIndex >= len(d.Batches) {
			continue
		}
		bd := &d.Batches[m.BatchIndex]
		bd.MachineIDs = append(bd.MachineIDs, m.MachineID)
		bd.MachineHealth[m.MachineID] = machineHealthValue(m.Health, m.Reason)
	}
	if !withEvents {
		return d, nil
	}
	rows, err := q.QueryContext(ctx, `SELECT id, event_type, detail, actor, created_at FROM rollout_event
		WHERE rollout_id = ? ORDER BY id`, r.ID)
	if err != nil {
		return nil, fmt.Errorf("load rollout events: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		ev := eventDetail{RolloutID: r.ID}
		var at int64
		if err := rows.Scan(&ev.ID, &ev.EventType, &ev.Detail, &ev.Actor, &at); err != nil {
			return nil, fmt.Errorf("load rollout events: %w", err)
		}
		ev.CreatedAt = fmtTime(at)
		d.Events = append(d.Events, ev)
	}
	return d, rows.Err()
}

// listRollouts handles GET /api/v1/rollouts: newest first, without events.
func (s *server) listRollouts(w http.ResponseWriter, r *http.Request, _ *principal) error {
	q := queryValues(r)
	limit, err := queryLimit(q, 100, 1000)
	if err != nil {
		return err
	}
	query := "SELECT " + rolloutColumns + " FROM rollout"
	var args []any
	if st, ok := q["status"]; ok {
		query += " WHERE status = ?"
		args = append(args, st[0])
	}
	query += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
	args = append(args, limit)
	out := []*rolloutDetail{}
	err = s.st.readTx(r.Context(), func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(r.Context(), query, args...)
		if err != nil {
			return fmt.Errorf("list rollouts: %w", err)
		}
		var rs []*rolloutRow
		for rows.Next() {
			ro, err := scanRollout(rows)
			if err != nil {
				rows.Close()
				return fmt.Errorf("list rollouts: %w", err)
			}
			rs = append(rs, ro)
		}
		if err := rows.Close(); err != nil {
			return err
		}
		for _, ro := range rs {
			d, err := rolloutDetailOf(r.Context(), tx, ro, false)
			if err != nil {
				return err
			}
			out = append(out, d)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, out)
}

func checkRolloutID(id string) error {
	if !isIDChars(id) {
		return badRequest("invalid rollout id")
	}
	return nil
}

// getRollout handles GET /api/v1/rollouts/{id}.
func (s *server) getRollout(w http.ResponseWriter, r *http.Request, _ *principal) error {
	id := r.PathValue("id")
	if err := checkRolloutID(id); err != nil {
		return err
	}
	var d *rolloutDetail
	err := s.st.readTx(r.Context(), func(tx *sql.Tx) error {
		ro, err := loadRollout(r.Context(), tx, id)
		if err != nil {
			return err
		}
		d, err = rolloutDetailOf(r.Context(), tx, ro, true)
		return err
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, d)
}

// rolloutAction runs an operator action on a rollout (§9.9) in one write
// transaction: it loads the rollout (404), lets fn check the status and make
// the change, and answers with an empty 200 (or 204 for delete).
func (s *server) rolloutAction(w http.ResponseWriter, r *http.Request, status int,
	fn func(tx *txn, ro *rolloutRow) error) error {
	id := r.PathValue("id")
	if err := checkRolloutID(id); err != nil {
		return err
	}
	err := s.st.write(r.Context(), func(tx *txn) error {
		ro, err := loadRollout(tx.ctx, tx, id)
		if err != nil {
			return err
		}
		return fn(tx, ro)
	})
	if err != nil {
		return err
	}
	w.WriteHeader(status)
	return nil
}

// setRolloutStatus changes the status with compare-and-swap on the status read.
func setRolloutStatus(tx *txn, ro *rolloutRow, to string) error {
	if err := casRollout(tx, ro, to, true); err != nil {
		return fmt.Errorf("set rollout status: %w", err) // cannot happen under the write lock
	}
	return nil
}

// pauseRollout handles POST /api/v1/rollouts/{id}/pause.
func (s *server) pauseRollout(w http.ResponseWriter, r *http.Request, p *principal) error {
	return s.rolloutAction(w, r, http.StatusOK, func(tx *txn, ro *rolloutRow) error {
		if ro.Status != "running" {
			return conflict("rollout is %s, not running", ro.Status)
		}
		if err := setRolloutStatus(tx, ro, "paused"); err != nil {
			return err
		}
		if err := recordEvent(tx, ro.ID, "status_change", p.actor, jsonObject("from", "running", "to", "paused", "reason", "manual")); err != nil {
			return err
		}
		if err := recordAudit(tx, p.actor, "rollout.paused", ro.ID, str("Paused by operator")); err != nil {
			return err
		}
		return rolloutChanged(tx, ro.ID, "paused")
	})
}

// resumeRollout handles POST /api/v1/rollouts/{id}/resume: failed batches go
// back to pending, and a batch under evaluation restarts its window, so that
// evidence from before the resume is ignored.
func (s *server) resumeRollout(w http.ResponseWriter, r *http.Request, p *principal) error {
	err := s.rolloutAction(w, r, http.StatusOK, func(tx *txn, ro *rolloutRow) error {
		if ro.Status != "paused" {
			return conflict("rollout is %s, not paused", ro.Status)
		}
		if err := setRolloutStatus(tx, ro, "running"); err != nil {
			return err
		}
		batches, err := loadBatches(tx.ctx, tx, ro.ID)
		if err != nil {
			return err
		}
		for _, b := range batches {
			switch b.Status {
			case "failed":
				if _, err := tx.ExecContext(tx.ctx, `UPDATE rollout_batch SET status = 'pending', started_at = NULL,
					completed_at = NULL, soak_started_at = NULL WHERE id = ?`, b.ID); err != nil {
					return fmt.Errorf("reset batch: %w", err)
				}
				if _, err := tx.ExecContext(tx.ctx, `UPDATE rollout_machine SET health = 'pending', health_reason = ''
					WHERE rollout_id = ? AND batch_index = ?`, ro.ID, b.Index); err != nil {
					return fmt.Errorf("reset machine health: %w", err)
				}
			case "deploying", "waiting_health":
				if _, err := tx.ExecContext(tx.ctx, `UPDATE rollout_batch SET started_at = ?, soak_started_at = NULL
					WHERE id = ?`, tx.now, b.ID); err != nil {
					return fmt.Errorf("restart batch: %w", err)
				}
				if _, err := tx.ExecContext(tx.ctx, `UPDATE rollout_machine SET health = 'pending', health_reason = ''
					WHERE rollout_id = ? AND batch_index = ? AND health <> 'skipped'`, ro.ID, b.Index); err != nil {
					return fmt.Errorf("reset machine health: %w", err)
				}
			}
		}
		if err := recordEvent(tx, ro.ID, "status_change", p.actor, jsonObject("from", "paused", "to", "running")); err != nil {
			return err
		}
		if err := recordAudit(tx, p.actor, "rollout.resumed", ro.ID, nil); err != nil {
			return err
		}
		return rolloutChanged(tx, ro.ID, "running")
	})
	if err == nil {
		s.exec.wake()
	}
	return err
}

// cancelRequest is the optional body of POST …/cancel.
type cancelRequest struct {
	Revert *bool `json:"revert"`
}

func (c *cancelRequest) validate() error { return nil }

// cancelRollout handles POST /api/v1/rollouts/{id}/cancel: batches freeze as
// they are; with {"revert":true} the revert procedure runs in the same
// transaction.
func (s *server) cancelRollout(w http.ResponseWriter, r *http.Request, p *principal) error {
	if err := checkRolloutID(r.PathValue("id")); err != nil {
		return err
	}
	var req cancelRequest
	if err := decode(w, r, maxBody, true, &req); err != nil {
		return err
	}
	doRevert := req.Revert != nil && *req.Revert
	return s.rolloutAction(w, r, http.StatusOK, func(tx *txn, ro *rolloutRow) error {
		if !slices.Contains(activeStatuses, ro.Status) {
			return conflict("rollout is %s, cannot cancel", ro.Status)
		}
		from := ro.Status
		if err := setRolloutStatus(tx, ro, "cancelled"); err != nil {
			return err
		}
		event := jsonObject("from", from, "to", "cancelled")
		var detail *string
		if doRevert {
			restored, cleared, err := revert(tx, ro.ID, p.actor)
			if err != nil {
				return err
			}
			event = jsonObject("from", from, "to", "cancelled", "revert", true, "restored", restored, "cleared", cleared)
			detail = str(fmt.Sprintf("revert: restored %d, cleared %d", restored, cleared))
		}
		if err := recordEvent(tx, ro.ID, "status_change", p.actor, event); err != nil {
			return err
		}
		if err := recordAudit(tx, p.actor, "rollout.cancelled", ro.ID, detail); err != nil {
			return err
		}
		return rolloutChanged(tx, ro.ID, "cancelled")
	})
}

// deleteRollout handles DELETE /api/v1/rollouts/{id}: only terminal rollouts;
// their batches, machines and events go with them, their audit rows stay.
func (s *server) deleteRollout(w http.ResponseWriter, r *http.Request, p *principal) error {
	return s.rolloutAction(w, r, http.StatusNoContent, func(tx *txn, ro *rolloutRow) error {
		if slices.Contains(activeStatuses, ro.Status) {
			return conflict("rollout %s cannot be deleted: status is %s (must be completed, cancelled, or failed)", ro.ID, ro.Status)
		}
		if _, err := tx.ExecContext(tx.ctx, "DELETE FROM rollout WHERE id = ?", ro.ID); err != nil {
			return fmt.Errorf("delete rollout: %w", err)
		}
		if err := recordAudit(tx, p.actor, "rollout.deleted", ro.ID, nil); err != nil {
			return err
		}
		return rolloutChanged(tx, ro.ID, "")
	})
}
