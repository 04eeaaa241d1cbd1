package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Rollouts (§9): statuses, pure planning, and the executor.
//
// Rollout: (create) → running → completed | paused | failed | cancelled;
// paused → running (resume); created|running|paused → cancelled.
// Batch:   pending → deploying → waiting_health → succeeded | failed;
// failed → pending (resume).

// activeStatuses are the rollout statuses that hold their machines.
var activeStatuses = []string{"created", "running", "paused"}

// unfinishedBatch reports whether a batch status still has work to do.
func unfinishedBatch(status string) bool {
	return status == "pending" || status == "deploying" || status == "waiting_health"
}

// parseSize parses "N" (1–9 digits) or "P%" (an integer then %), returning the
// number and whether it is a percentage. Range checks are the caller's.
func parseSize(s string) (n int, pct bool, ok bool) {
	digits, pct := strings.CutSuffix(s, "%")
	maxLen := 9
	if pct {
		maxLen = 3
	}
	if !isDigits(digits) || len(digits) > maxLen {
		return 0, false, false
	}
	n, err := strconv.Atoi(digits)
	return n, pct, err == nil
}

// checkThreshold validates a failure_threshold: "N" (N ≥ 0) or "P%" (0–100).
func checkThreshold(s string) error {
	n, pct, ok := parseSize(s)
	if !ok || pct && n > 100 {
		return badRequest("failure_threshold: must be \"N\" or \"P%%\" with P from 0 to 100")
	}
	return nil
}

// checkBatchSize validates one batch size: "N" (N ≥ 1) or "P%" (1–100).
func checkBatchSize(field, s string) error {
	n, pct, ok := parseSize(s)
	if !ok || n < 1 || pct && n > 100 {
		return badRequest("%s: must be \"N\" (N >= 1) or \"P%%\" with P from 1 to 100", field)
	}
	return nil
}

// thresholdFor is the number of unhealthy machines a batch of n tolerates:
// "N" → N, "P%" → ceil(n × P / 100).
func thresholdFor(spec string, n int) int {
	v, pct, _ := parseSize(spec)
	if !pct {
		return v
	}
	return (n*v + 99) / 100
}

// effectiveBatchSizes returns the batch size specs a strategy uses (§9.2).
func effectiveBatchSizes(strategy string, sizes []string) []string {
	switch strategy {
	case "canary":
		return []string{"1", "100%"}
	case "staged":
		if len(sizes) > 0 {
			return sizes
		}
	}
	return []string{"100%"}
}

// planBatches splits machines into batches (§9.2): shuffle uniformly, then
// take each spec in turn from what remains; the last spec takes the rest.
// Empty batches are never created; ids within a batch are sorted.
func planBatches(machines []string, specs []string, rng *rand.Rand) [][]string {
	ids := slices.Clone(machines)
	rng.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	var batches [][]string
	for i, spec := range specs {
		remaining := len(ids)
		if remaining == 0 {
			break
		}
		take := remaining
		if i < len(specs)-1 {
			v, pct, _ := parseSize(spec)
			if pct {
				take = min(max(1, (remaining*v+99)/100), remaining)
			} else {
				take = min(v, remaining)
			}
		}
		b := slices.Clone(ids[:take])
		slices.Sort(b)
		batches = append(batches, b)
		ids = ids[take:]
	}
	return batches
}

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

// classify evaluates one machine from its fresh reports in arrival order:
// desired is the release store path.
func classify(desired string, reports []evidence) (health, reason string) {
	var s evidenceSummary
	for _, r := range reports {
		s.add(desired, r)
	}
	return s.classify(desired)
}

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
	Status                  string
	CreatedAt, UpdatedAt    int64
	CreatedBy               string
	Version                 int64
}

type batchRow struct {
	ID                                  string
	Index                               int
	Status                              string
	StartedAt, CompletedAt, SoakStarted *int64
}

type memberRow struct {
	MachineID    string
	BatchIndex   int
	StorePath    string
	PrevCaptured bool
	PrevHash     *string
	Health       string
	Reason       string
}

const rolloutColumns = `id, release_id, strategy, batch_sizes, failure_threshold, on_failure, health_timeout,
	soak_seconds, cache_url, target_kind, target_values, status, created_at, updated_at, created_by, version`

func scanRollout(row interface{ Scan(...any) error }) (*rolloutRow, error) {
	var r rolloutRow
	var sizes, values string
	var cache sql.NullString
	if err := row.Scan(&r.ID, &r.ReleaseID, &r.Strategy, &sizes, &r.FailureThreshold, &r.OnFailure,
		&r.HealthTimeout, &r.SoakSeconds, &cache, &r.TargetKind, &values, &r.Status, &r.CreatedAt,
		&r.UpdatedAt, &r.CreatedBy, &r.Version); err != nil {
		return nil, err
	}
	r.CacheURL = nullStr(cache)
	if err := json.Unmarshal([]byte(sizes), &r.BatchSizes); err != nil {
		return nil, fmt.Errorf("decode batch_sizes of %s: %w", r.ID, err)
	}
	if err := json.Unmarshal([]byte(values), &r.TargetValues); err != nil {
		return nil, fmt.Errorf("decode target of %s: %w", r.ID, err)
	}
	return &r, nil
}

// loadRollout returns the rollout, or a 404 *apiError.
func loadRollout(ctx context.Context, q queryer, id string) (*rolloutRow, error) {
	r, err := scanRollout(q.QueryRowContext(ctx, "SELECT "+rolloutColumns+" FROM rollout WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound("rollout %s not found", id)
	}
	if err != nil {
		return nil, fmt.Errorf("load rollout: %w", err)
	}
	return r, nil
}

func loadBatches(ctx context.Context, q queryer, rid string) ([]batchRow, error) {
	rows, err := q.QueryContext(ctx, `SELECT id, batch_index, status, started_at, completed_at, soak_started_at
		FROM rollout_batch WHERE rollout_id = ? ORDER BY batch_index`, rid)
	if err != nil {
		return nil, fmt.Errorf("load batches: %w", err)
	}
	defer rows.Close()
	var out []batchRow
	for rows.Next() {
		var b batchRow
		var started, completed, soak sql.NullInt64
		if err := rows.Scan(&b.ID, &b.Index, &b.Status, &started, &completed, &soak); err != nil {
			return nil, fmt.Errorf("load batches: %w", err)
		}
		b.StartedAt, b.CompletedAt, b.SoakStarted = nullInt(started), nullInt(completed), nullInt(soak)
		out = append(out, b)
	}
	return out, rows.Err()
}

// loadMembers returns the rollout's machines (of one batch when batch >= 0),
// sorted by machine id.
func loadMembers(ctx context.Context, q queryer, rid string, batch int) ([]memberRow, error) {
	query := `SELECT machine_id, batch_index, store_path, prev_captured, prev_hash, health, health_reason
		FROM rollout_machine WHERE rollout_id = ?`
	args := []any{rid}
	if batch >= 0 {
		query += " AND batch_index = ?"
		args = append(args, batch)
	}
	rows, err := q.QueryContext(ctx, query+" ORDER BY machine_id", args...)
	if err != nil {
		return nil, fmt.Errorf("load rollout machines: %w", err)
	}
	defer rows.Close()
	var out []memberRow
	for rows.Next() {
		var m memberRow
		var prev sql.NullString
		if err := rows.Scan(&m.MachineID, &m.BatchIndex, &m.StorePath, &m.PrevCaptured, &prev, &m.Health, &m.Reason); err != nil {
			return nil, fmt.Errorf("load rollout machines: %w", err)
		}
		m.PrevHash = nullStr(prev)
		out = append(out, m)
	}
	return out, rows.Err()
}

// currentBatch returns the index in bs of the unfinished batch with the lowest
// batch_index, or -1.
func currentBatch(bs []batchRow) int {
	for i, b := range bs {
		if unfinishedBatch(b.Status) {
			return i
		}
	}
	return -1
}

// countActiveRollouts counts rollouts in created, running or paused status.
func (s *store) countActiveRollouts(ctx context.Context, q queryer) (int64, error) {
	var n int64
	err := q.QueryRowContext(ctx, "SELECT count(*) FROM rollout WHERE status IN ('created', 'running', 'paused')").Scan(&n)
	return n, err
}

// membership computes the derived sets of running rollouts (all of them when
// rid is ""): machines of unfinished batches (poll hint) and of batches being
// evaluated (executor wake-up).
func membership(ctx context.Context, q queryer, rid string) (hint, watching map[string]map[string]struct{}, err error) {
	query := `SELECT rm.rollout_id, rm.machine_id, b.status FROM rollout r
		JOIN rollout_batch b ON b.rollout_id = r.id AND b.status IN ('pending', 'deploying', 'waiting_health')
		JOIN rollout_machine rm ON rm.rollout_id = r.id AND rm.batch_index = b.batch_index
		WHERE r.status = 'running'`
	var args []any
	if rid != "" {
		query += " AND r.id = ?"
		args = append(args, rid)
	}
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, nil, fmt.Errorf("load rollout membership: %w", err)
	}
	defer rows.Close()
	hint, watching = map[string]map[string]struct{}{}, map[string]map[string]struct{}{}
	add := func(sets map[string]map[string]struct{}, r, m string) {
		if sets[r] == nil {
			sets[r] = map[string]struct{}{}
		}
		sets[r][m] = struct{}{}
	}
	for rows.Next() {
		var r, m, status string
		if err := rows.Scan(&r, &m, &status); err != nil {
			return nil, nil, fmt.Errorf("load rollout membership: %w", err)
		}
		add(hint, r, m)
		if status != "pending" {
			add(watching, r, m)
		}
	}
	return hint, watching, rows.Err()
}

// refreshRolloutMembership rebuilds the membership sets from q (all running
// rollouts when rid is ""); used at startup.
func (s *store) refreshRolloutMembership(ctx context.Context, q queryer, rid string) error {
	hint, watching, err := membership(ctx, q, rid)
	if err != nil {
		return err
	}
	for r := range hint {
		s.fleet.setMembership(r, hint[r], watching[r])
	}
	return nil
}

// rolloutChanged schedules, after the commit, the derived-state updates that
// follow a change of a rollout's status or of its batches' statuses: the
// membership sets of the rollout, the active-rollouts gauge and, for counted
// statuses, nixfleet_rollouts_total.
func rolloutChanged(tx *txn, rid, newStatus string) error {
	hint, watching, err := membership(tx.ctx, tx, rid)
	if err != nil {
		return err
	}
	active, err := tx.s.countActiveRollouts(tx.ctx, tx)
	if err != nil {
		return fmt.Errorf("count active rollouts: %w", err)
	}
	tx.afterCommit(func() {
		tx.s.fleet.setMembership(rid, hint[rid], watching[rid])
		tx.s.metrics.rolloutsActive.Store(active)
		if slices.Contains(rolloutCountedStatuses, newStatus) {
			tx.s.metrics.rolloutsTotal.inc(newStatus)
		}
	})
	return nil
}

// casRollout bumps the rollout's version if it is still at version, and
// optionally changes its status and updated_at. It returns errStale when
// someone else changed the rollout first.
func casRollout(tx *txn, r *rolloutRow, newStatus string, bumpUpdated bool) error {
	q := "UPDATE rollout SET version = version + 1"
	var args []any
	if newStatus != "" {
		q += ", status = ?"
		args = append(args, newStatus)
	}
	if bumpUpdated || newStatus != "" {
		q += ", updated_at = ?"
		args = append(args, tx.now)
	}
	q += " WHERE id = ? AND version = ? AND status = ?"
	args = append(args, r.ID, r.Version, r.Status)
	res, err := tx.ExecContext(tx.ctx, q, args...)
	if err != nil {
		return fmt.Errorf("update rollout: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return errStale
	}
	return nil
}

// errStale aborts an executor step whose snapshot is out of date; the
// rollout is re-read on the next pass.
var errStale = errors.New("rollout changed concurrently")

// recordEvent appends a rollout event; detail is encoded as compact JSON.
func recordEvent(tx *txn, rid, eventType, actor string, detail string) error {
	_, err := tx.ExecContext(tx.ctx, `INSERT INTO rollout_event (rollout_id, event_type, detail, actor, created_at)
		VALUES (?, ?, ?, ?, ?)`, rid, eventType, detail, actor, tx.now)
	if err != nil {
		return fmt.Errorf("record rollout event: %w", err)
	}
	return nil
}

// jsonObject renders key/value pairs as a compact JSON object, keys in the
// order given (the event formats of §9.11 fix the order).
func jsonObject(kv ...any) string {
	var b strings.Builder
	b.WriteByte('{')
	for i := 0; i+1 < len(kv); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(kv[i])
		v, _ := json.Marshal(kv[i+1])
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.String()
}

// setMemberHealth stores a machine's classification in the rollout.
func setMemberHealth(tx *txn, rid, machine, health, reason string) error {
	_, err := tx.ExecContext(tx.ctx, `UPDATE rollout_machine SET health = ?, health_reason = ?
		WHERE rollout_id = ? AND machine_id = ?`, health, reason, rid, machine)
	if err != nil {
		return fmt.Errorf("update machine health: %w", err)
	}
	return nil
}

// revert restores, for every machine this rollout deployed (in machine-id
// order), the desired generation it had before the rollout (§9.7). Machines
// that are decommissioned, or whose desired generation is no longer this
// rollout's path, are left alone.
func revert(tx *txn, rid, actor string) (restored, cleared int, err error) {
	members, err := loadMembers(tx.ctx, tx, rid, -1)
	if err != nil {
		return 0, 0, err
	}
	for _, mem := range members {
		if !mem.PrevCaptured {
			continue
		}
		m := tx.machine(mem.MachineID)
		if m == nil || m.Lifecycle == "decommissioned" || m.Desired == nil || m.Desired.Hash != mem.StorePath {
			continue
		}
		var detail string
		if mem.PrevHash != nil {
			_, err = tx.setDesired(m, *mem.PrevHash, nil, actor)
			detail = mem.StorePath + " -> " + *mem.PrevHash
			restored++
		} else {
			_, err = tx.clearDesired(m)
			detail = mem.StorePath + " -> (cleared)"
			cleared++
		}
		if err != nil {
			return 0, 0, err
		}
		if err := recordAudit(tx, actor, "machine.reverted", mem.MachineID, &detail); err != nil {
			return 0, 0, err
		}
	}
	return restored, cleared, nil
}

// executor drives running rollouts (§9.3). Its loop is a thin timer around
// pass; tests call pass or step directly with an injected clock.
type executor struct {
	st     *store
	m      *metrics
	log    *slog.Logger
	now    func() time.Time
	wakeCh chan struct{}
	passMu sync.Mutex // one pass at a time

	evidence evidenceCache
}

func newExecutor(st *store, m *metrics, log *slog.Logger, now func() time.Time) *executor {
	return &executor{st: st, m: m, log: log, now: now, wakeCh: make(chan struct{}, 1)}
}

// wake asks for a pass as soon as possible. Wake-ups coalesce.
func (e *executor) wake() {
	select {
	case e.wakeCh <- struct{}{}:
	default:
	}
}

// run makes a pass at once, then on every tick and every wake-up, until ctx
// ends. A pass in progress finishes its current step first.
func (e *executor) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		e.pass(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-e.wakeCh:
		}
	}
}

// pass advances every running rollout, oldest first, as far as it can go
// without waiting.
func (e *executor) pass(ctx context.Context) {
	e.passMu.Lock()
	defer e.passMu.Unlock()
	e.m.executorTicks.Add(1)
	rows, err := e.st.ro.QueryContext(ctx, "SELECT id FROM rollout WHERE status = 'running' ORDER BY created_at, rowid")
	if err != nil {
		if ctx.Err() == nil {
			e.log.Error("executor step failed", "rollout", "", "err", err)
			e.m.executorErrors.Add(1)
		}
		return
	}
	var ids []string
	for rows.Next() {
		var id string
		if rows.Scan(&id) == nil {
			ids = append(ids, id)
		}
	}
	rows.Close()
	e.evidence.retain(ids)
	for _, id := range ids {
		if ctx.Err() != nil {
			return
		}
		for range 2*maxBatches + 1 {
			if ctx.Err() != nil {
				return
			}
			progressed, err := e.step(ctx, id)
			if err != nil {
				if !errors.Is(err, errStale) && ctx.Err() == nil {
					e.log.Error("executor step failed", "rollout", id, "err", err)
					e.m.executorErrors.Add(1)
				}
				break
			}
			if !progressed {
				break
			}
		}
	}
}

// maxBatches bounds the batches of a rollout (100 batch size specs).
const maxBatches = 100

// stepSnapshot is what a step reads before deciding: one consistent view.
type stepSnapshot struct {
	r       *rolloutRow
	batches []batchRow
	cur     int // index into batches, -1 when none is unfinished
	members []memberRow
	sums    map[string]*evidenceSummary // by machine: the batch attempt's fresh reports
}

// step applies the next step of one rollout (§9.3): deploy the current batch,
// evaluate it, or complete the rollout. It reports whether the rollout moved
// on (so the caller may step again). Every change is one write transaction
// that checks, by compare-and-swap on the rollout's version, that nothing
// changed since the snapshot was read.
func (e *executor) step(ctx context.Context, rid string) (bool, error) {
	// A step is never interrupted (§1.5): shutdown cancels ctx, and the pass
	// stops between steps, but a step that has begun runs to its end.
	ctx = context.WithoutCancel(ctx)
	now := e.now().UnixMilli()
	var snap stepSnapshot
	err := e.st.readTx(ctx, func(tx *sql.Tx) error {
		var err error
		if snap.r, err = loadRollout(ctx, tx, rid); err != nil {
			return err
		}
		if snap.r.Status != "running" {
			return nil
		}
		if snap.batches, err = loadBatches(ctx, tx, rid); err != nil {
			return err
		}
		snap.cur = currentBatch(snap.batches)
		if snap.cur < 0 || snap.batches[snap.cur].Status == "pending" {
			return nil
		}
		snap.members, snap.sums, err = e.evidence.update(ctx, tx, snap.r, snap.batches[snap.cur])
		return err
	})
	var ae *apiError
	if errors.As(err, &ae) && ae.status == 404 {
		return false, nil // deleted meanwhile
	}
	if err != nil {
		return false, err
	}
	if snap.r.Status != "running" {
		return false, nil
	}
	if snap.cur < 0 {
		for _, b := range snap.batches {
			if b.Status != "succeeded" {
				return false, nil
			}
		}
		return true, e.complete(ctx, snap.r)
	}
	if snap.batches[snap.cur].Status == "pending" {
		return true, e.deploy(ctx, snap.r, snap.batches[snap.cur])
	}
	return e.evaluate(ctx, &snap, now)
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
// up to date, reading through q (the step's read transaction), and returns
// them; the caller must not modify them.
func (c *evidenceCache) update(ctx context.Context, q queryer, r *rolloutRow, b batchRow) ([]memberRow, map[string]*evidenceSummary, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.batches == nil {
		c.batches = map[string]*batchEvidence{}
	}
	rid := r.ID
	be := c.batches[rid]
	fresh := be == nil || be.batchID != b.ID || be.startedAt != *b.StartedAt
	if fresh {
		be = &batchEvidence{batchID: b.ID, startedAt: *b.StartedAt, sums: map[string]*evidenceSummary{}, version: -1}
		c.batches[rid] = be
	}
	if be.version != r.Version {
		members, err := loadMembers(ctx, q, rid, b.Index)
		if err != nil {
			return nil, nil, err
		}
		be.members, be.version = members, r.Version
	}
	desired := make(map[string]string, len(be.members))
	for _, m := range be.members {
		desired[m.MachineID] = m.StorePath
	}
	var rows *sql.Rows
	var err error
	if fresh {
		// A new batch attempt: read every fresh report of its machines
		// (indexed by machine and receive time), and remember the highest
		// report id of the snapshot. Ids are assigned by the single writer in
		// commit order, so any report not visible now will have a higher id.
		if err := q.QueryRowContext(ctx, "SELECT coalesce(max(id), 0) FROM report").Scan(&be.hwm); err != nil {
			delete(c.batches, rid)
			return nil, nil, fmt.Errorf("load fresh reports: %w", err)
		}
		rows, err = q.QueryContext(ctx, `SELECT r.machine_id, r.id, r.generation, r.success, r.message,
				h.all_passed IS NOT NULL, coalesce(h.all_passed, 0), coalesce(h.failed_checks, '')
			FROM rollout_machine rm
			JOIN report r ON r.machine_id = rm.machine_id AND r.received_at >= ?
			LEFT JOIN health_report h ON h.report_id = r.id
			WHERE rm.rollout_id = ? AND rm.batch_index = ? AND r.id <= ?
			ORDER BY r.id`, *b.StartedAt, rid, b.Index, be.hwm)
	} else {
		// The same attempt: only the reports that arrived since (a range of
		// the report table's primary key), restricted to the batch's machines.
		rows, err = q.QueryContext(ctx, `SELECT r.machine_id, r.id, r.generation, r.success, r.message,
				h.all_passed IS NOT NULL, coalesce(h.all_passed, 0), coalesce(h.failed_checks, '')
			FROM report r
			JOIN rollout_machine rm ON rm.rollout_id = ? AND rm.machine_id = r.machine_id AND rm.batch_index = ?
			LEFT JOIN health_report h ON h.report_id = r.id
			WHERE r.id > ? AND r.received_at >= ?
			ORDER BY r.id`, rid, b.Index, be.hwm, *b.StartedAt)
	}
	if err != nil {
		delete(c.batches, rid)
		return nil, nil, fmt.Errorf("load fresh reports: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var ev evidence
		if err := rows.Scan(&id, &ev.id, &ev.generation, &ev.success, &ev.message, &ev.hasHealth, &ev.allPassed, &ev.failedChecks); err != nil {
			delete(c.batches, rid) // some reports may be folded in and others not
			return nil, nil, fmt.Errorf("load fresh reports: %w", err)
		}
		sum := be.sums[id]
		if sum == nil {
			sum = &evidenceSummary{}
			be.sums[id] = sum
		}
		sum.add(desired[id], ev)
		be.hwm = max(be.hwm, ev.id)
	}
	if err := rows.Err(); err != nil {
		delete(c.batches, rid)
		return nil, nil, fmt.Errorf("load fresh reports: %w", err)
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

// deploy is the Deploy step (§9.4): pending → deploying.
func (e *executor) deploy(ctx context.Context, r *rolloutRow, b batchRow) error {
	return e.st.write(ctx, func(tx *txn) error {
		if err := casRollout(tx, r, "", true); err != nil {
			return err
		}
		members, err := loadMembers(tx.ctx, tx, r.ID, b.Index)
		if err != nil {
			return err
		}
		written, skipped := 0, 0
		for _, mem := range members {
			m := tx.machine(mem.MachineID)
			if m == nil || m.Lifecycle != "active" {
				state := "unknown"
				if m != nil {
					state = m.Lifecycle
				}
				if err := setMemberHealth(tx, r.ID, mem.MachineID, healthSkipped, "skipped: lifecycle "+state); err != nil {
					return err
				}
				skipped++
				continue
			}
			if !mem.PrevCaptured {
				var prev *string
				if m.Desired != nil {
					prev = &m.Desired.Hash
				}
				if _, err := tx.ExecContext(tx.ctx, `UPDATE rollout_machine SET prev_captured = 1, prev_hash = ?
					WHERE rollout_id = ? AND machine_id = ?`, prev, r.ID, mem.MachineID); err != nil {
					return fmt.Errorf("capture previous generation: %w", err)
				}
			}
			if _, err := tx.setDesired(m, mem.StorePath, r.CacheURL, "executor"); err != nil {
				return err
			}
			if err := setMemberHealth(tx, r.ID, mem.MachineID, healthPending, ""); err != nil {
				return err
			}
			written++
		}
		if _, err := tx.ExecContext(tx.ctx, `UPDATE rollout_batch SET status = 'deploying', started_at = ?,
			completed_at = NULL, soak_started_at = NULL WHERE id = ?`, tx.now, b.ID); err != nil {
			return fmt.Errorf("start batch: %w", err)
		}
		if err := recordEvent(tx, r.ID, "batch_started", "executor",
			jsonObject("batch_index", b.Index, "machines", written, "skipped", skipped)); err != nil {
			return err
		}
		if err := recordAudit(tx, "executor", "batch.deploying", b.ID,
			str(fmt.Sprintf("Rollout %s batch %d deploying %d machines, %d skipped", r.ID, b.Index, written, skipped))); err != nil {
			return err
		}
		return rolloutChanged(tx, r.ID, "running")
	})
}

// verdict is the outcome of evaluating a batch (§9.6).
type verdict struct {
	health      map[string][2]string // machine → {health, reason}
	n, h, u, p  int
	threshold   int
	timedOut    int // pending machines converted by the timeout
	outcome     string
	soakStart   *int64 // the batch's soak_started_at after this step
	statusAfter string // the batch status after this step
}

// Evaluation outcomes.
const (
	outcomeWait    = "wait"
	outcomeSucceed = "succeed"
	outcomeFail    = "fail"
)

// evaluateBatch classifies every machine from its fresh reports and decides
// the batch's fate; it is a pure function of the snapshot and now (Unix ms).
func evaluateBatch(r *rolloutRow, b batchRow, members []memberRow, reports map[string][]evidence,
	lifecycle func(string) string, now int64) verdict {
	sums := map[string]*evidenceSummary{}
	for _, mem := range members {
		s := &evidenceSummary{}
		for _, ev := range reports[mem.MachineID] {
			s.add(mem.StorePath, ev)
		}
		sums[mem.MachineID] = s
	}
	return evaluateSummaries(r, b, members, sums, lifecycle, now)
}

// evaluateSummaries is evaluateBatch over the summaries of the fresh reports.
func evaluateSummaries(r *rolloutRow, b batchRow, members []memberRow, sums map[string]*evidenceSummary,
	lifecycle func(string) string, now int64) verdict {
	v := verdict{health: map[string][2]string{}}
	timedOut := now-*b.StartedAt >= r.HealthTimeout*1000
	for _, mem := range members {
		var health, reason string
		switch state := lifecycle(mem.MachineID); {
		case mem.Health == healthSkipped:
			health, reason = healthSkipped, mem.Reason
		case state == "decommissioned":
			health, reason = healthSkipped, "skipped: lifecycle decommissioned"
		default:
			health, reason = healthPending, ""
			if sum := sums[mem.MachineID]; sum != nil {
				health, reason = sum.classify(mem.StorePath)
			}
			if health == healthPending && timedOut {
				health, reason = healthUnhealthy, fmt.Sprintf("health timeout after %ds", r.HealthTimeout)
				v.timedOut++
			}
		}
		v.health[mem.MachineID] = [2]string{health, reason}
		switch health {
		case healthHealthy:
			v.h++
		case healthUnhealthy:
			v.u++
		case healthPending:
			v.p++
		}
	}
	v.n = v.h + v.u + v.p
	v.threshold = thresholdFor(r.FailureThreshold, v.n)
	v.soakStart = b.SoakStarted
	v.statusAfter = b.Status
	switch {
	case v.u > v.threshold:
		v.outcome, v.statusAfter = outcomeFail, "failed"
	case v.p > 0:
		v.outcome, v.statusAfter, v.soakStart = outcomeWait, "waiting_health", nil
	case r.SoakSeconds == 0 || v.n == 0:
		v.outcome, v.statusAfter = outcomeSucceed, "succeeded"
	case b.SoakStarted == nil:
		v.outcome, v.statusAfter, v.soakStart = outcomeWait, "waiting_health", &now
	case now-*b.SoakStarted >= r.SoakSeconds*1000:
		v.outcome, v.statusAfter = outcomeSucceed, "succeeded"
	default:
		v.outcome, v.statusAfter = outcomeWait, "waiting_health"
	}
	return v
}

// evaluate is the Evaluate step (§9.5–§9.7). It writes only what changed; a
// batch that keeps waiting with nothing new costs no write transaction.
func (e *executor) evaluate(ctx context.Context, snap *stepSnapshot, now int64) (bool, error) {
	r, b := snap.r, snap.batches[snap.cur]
	lifecycle := func(id string) string {
		if m := e.st.fleet.get(id); m != nil {
			return m.Lifecycle
		}
		return ""
	}
	v := evaluateSummaries(r, b, snap.members, snap.sums, lifecycle, now)
	var changed []memberRow
	for _, mem := range snap.members {
		hr := v.health[mem.MachineID]
		if mem.Health != hr[0] || mem.Reason != hr[1] {
			changed = append(changed, memberRow{MachineID: mem.MachineID, Health: hr[0], Reason: hr[1]})
		}
	}
	batchChanged := v.statusAfter != b.Status || !equalPtr(v.soakStart, b.SoakStarted)
	if len(changed) == 0 && !batchChanged {
		return false, nil
	}
	if v.timedOut > 0 {
		e.log.Warn("Health timeout elapsed", "rollout", r.ID, "batch", b.Index, "pending", v.timedOut)
	}
	err := e.st.write(ctx, func(tx *txn) error {
		newStatus := ""
		if v.outcome == outcomeFail {
			newStatus = "paused"
			if r.OnFailure == "revert" {
				newStatus = "failed"
			}
		}
		if err := casRollout(tx, r, newStatus, v.statusAfter != b.Status); err != nil {
			return err
		}
		for _, c := range changed {
			if err := setMemberHealth(tx, r.ID, c.MachineID, c.Health, c.Reason); err != nil {
				return err
			}
		}
		switch v.outcome {
		case outcomeWait:
			if !batchChanged {
				return nil
			}
			if _, err := tx.ExecContext(tx.ctx, "UPDATE rollout_batch SET status = ?, soak_started_at = ? WHERE id = ?",
				v.statusAfter, v.soakStart, b.ID); err != nil {
				return fmt.Errorf("update batch: %w", err)
			}
			if v.statusAfter != b.Status {
				return rolloutChanged(tx, r.ID, "running")
			}
			return nil
		case outcomeSucceed:
			return e.succeedBatch(tx, r, b, v)
		default:
			return e.failBatch(tx, r, b, v, newStatus)
		}
	})
	if err != nil {
		e.evidence.forget(r.ID)
		return false, err
	}
	e.evidence.wrote(r.ID, r.Version, changed)
	return v.outcome != outcomeWait, nil
}

func equalPtr(a, b *int64) bool {
	return a == nil && b == nil || a != nil && b != nil && *a == *b
}

// finishBatch sets a batch's final status.
func finishBatch(tx *txn, b batchRow, status string) error {
	if _, err := tx.ExecContext(tx.ctx, "UPDATE rollout_batch SET status = ?, completed_at = ? WHERE id = ?",
		status, tx.now, b.ID); err != nil {
		return fmt.Errorf("finish batch: %w", err)
	}
	return nil
}

func (e *executor) succeedBatch(tx *txn, r *rolloutRow, b batchRow, v verdict) error {
	if err := finishBatch(tx, b, "succeeded"); err != nil {
		return err
	}
	if err := recordEvent(tx, r.ID, "batch_completed", "executor",
		jsonObject("batch_index", b.Index, "healthy", v.h, "unhealthy", v.u)); err != nil {
		return err
	}
	if err := recordAudit(tx, "executor", "batch.succeeded", b.ID,
		str(fmt.Sprintf("Batch %d succeeded: %d healthy, %d unhealthy (threshold: %d)", b.Index, v.h, v.u, v.threshold))); err != nil {
		return err
	}
	return rolloutChanged(tx, r.ID, "running")
}

// failBatch fails the batch and pauses or reverts the rollout (§9.7), in the
// same transaction.
func (e *executor) failBatch(tx *txn, r *rolloutRow, b batchRow, v verdict, newStatus string) error {
	if err := finishBatch(tx, b, "failed"); err != nil {
		return err
	}
	if err := recordEvent(tx, r.ID, "batch_failed", "executor",
		jsonObject("batch_index", b.Index, "unhealthy", v.u, "threshold", v.threshold)); err != nil {
		return err
	}
	if err := recordAudit(tx, "executor", "batch.failed", b.ID,
		str(fmt.Sprintf("Batch %d failed: %d unhealthy > threshold %d", b.Index, v.u, v.threshold))); err != nil {
		return err
	}
	if newStatus == "paused" {
		if err := recordEvent(tx, r.ID, "status_change", "executor",
			jsonObject("from", "running", "to", "paused", "reason", "batch failure")); err != nil {
			return err
		}
		if err := recordAudit(tx, "executor", "rollout.paused", r.ID, str("Batch failure triggered pause")); err != nil {
			return err
		}
		return rolloutChanged(tx, r.ID, "paused")
	}
	restored, cleared, err := revert(tx, r.ID, "executor")
	if err != nil {
		return err
	}
	if err := recordEvent(tx, r.ID, "status_change", "executor", jsonObject("from", "running", "to", "failed",
		"reason", "batch failure + revert", "restored", restored, "cleared", cleared)); err != nil {
		return err
	}
	if err := recordAudit(tx, "executor", "rollout.failed", r.ID, str("Batch failure triggered revert")); err != nil {
		return err
	}
	return rolloutChanged(tx, r.ID, "failed")
}

// complete is the Complete step (§9.8).
func (e *executor) complete(ctx context.Context, r *rolloutRow) error {
	return e.st.write(ctx, func(tx *txn) error {
		if err := casRollout(tx, r, "completed", true); err != nil {
			return err
		}
		if err := recordEvent(tx, r.ID, "status_change", "executor", jsonObject("from", "running", "to", "completed")); err != nil {
			return err
		}
		if err := recordAudit(tx, "executor", "rollout.completed", r.ID, str("All batches succeeded")); err != nil {
			return err
		}
		return rolloutChanged(tx, r.ID, "completed")
	})
}
