package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
)

// Report ingestion: the group-commit queue and writer (§12.3), the report
// statements, and the queries of the retention job (§12.6).

// reportJob is one validated report waiting for the group-commit writer.
type reportJob struct {
	id   string
	req  *reportRequest
	done chan error // buffered: the writer never blocks on a waiter
}

// maxGroupCommit is the most reports committed in one transaction.
const maxGroupCommit = 256

// reportQueue hands reports from the handlers to the single writer goroutine.
type reportQueue struct {
	mu     sync.RWMutex
	closed bool
	ch     chan *reportJob
}

func newReportQueue() *reportQueue {
	return &reportQueue{ch: make(chan *reportJob, 4*maxGroupCommit)}
}

// submitReport queues the report and waits until it has been committed (nil)
// or refused. It returns errShuttingDown once the queue is closed.
func (s *store) submitReport(ctx context.Context, id string, req *reportRequest) error {
	job := &reportJob{id: id, req: req, done: make(chan error, 1)}
	q := s.reports
	q.mu.RLock()
	if q.closed {
		q.mu.RUnlock()
		return errShuttingDown
	}
	q.ch <- job
	q.mu.RUnlock()
	return <-job.done
}

// stopReports closes the queue; the writer commits what is queued and exits.
func (s *store) stopReports() {
	q := s.reports
	q.mu.Lock()
	if !q.closed {
		q.closed = true
		close(q.ch)
	}
	q.mu.Unlock()
}

// runReportWriter is the group-commit writer: it takes every queued report
// (up to maxGroupCommit), applies each under its own SAVEPOINT in one
// transaction, commits once (one fsync for the whole group) and only then
// answers the waiters. There is no artificial delay: a group closes as soon
// as the writer is free, so under low load every report commits alone.
// It returns once the queue is closed and drained.
func (s *store) runReportWriter(log *slog.Logger) {
	batch := make([]*reportJob, 0, maxGroupCommit)
	for job := range s.reports.ch {
		batch = append(batch[:0], job)
	fill:
		for len(batch) < maxGroupCommit {
			select {
			case j, ok := <-s.reports.ch:
				if !ok {
					break fill
				}
				batch = append(batch, j)
			default:
				break fill
			}
		}
		s.commitReports(batch, log)
	}
}

// commitReports commits one group in one transaction and answers its
// waiters. applyReport decides each report in memory and queues its rows;
// the rows of the whole group are then written by a constant number of
// multi-row statements just before COMMIT (see reportRows). A report that is
// refused (a decommissioned machine) writes nothing and does not affect the
// others. If the group transaction fails for any other reason, each report is
// retried in a transaction of its own, so one bad report cannot fail the
// reports committed beside it. A panic while applying a report fails the
// group (write has rolled it back) instead of stopping the writer, which
// would leave every later report unanswered.
func (s *store) commitReports(batch []*reportJob, log *slog.Logger) {
	results := make([]error, len(batch))
	if err := s.applyGroup(batch, results, log); err != nil {
		for i := range batch {
			if len(batch) == 1 {
				results[i] = err
			} else if err := s.applyGroup(batch[i:i+1], results[i:i+1], log); err != nil {
				results[i] = err
			}
		}
	}
	n := 0
	for i, j := range batch {
		if results[i] == nil {
			n++
		}
		j.done <- results[i]
	}
	if n > 0 {
		s.metrics.groupCommitSize.observe(float64(n))
	}
}

// applyGroup runs applyReport for every job in one transaction, setting
// results[i] to a refusal or nil; it returns an error (and commits nothing)
// if anything else failed.
func (s *store) applyGroup(batch []*reportJob, results []error, log *slog.Logger) (err error) {
	defer func() {
		if v := recover(); v != nil {
			log.Error("internal error", "method", "POST", "path", "/api/v1/machines/{id}/report", "err", fmt.Sprintf("panic: %v", v))
			err = fmt.Errorf("report writer panic: %v", v)
		}
	}()
	return s.write(context.Background(), func(t *txn) error {
		for i, j := range batch {
			results[i] = applyReport(t, j.id, j.req)
			if results[i] != nil && !errors.Is(results[i], errDecommissioned) {
				return results[i]
			}
		}
		return nil
	})
}

// writerStmts are the statements prepared once on the writer connection
// (the multi-row statements of the report path are in store.rowStmts).
type writerStmts struct {
	insertMachine *sql.Stmt
	auditHead     *sql.Stmt
	insertAudit   *sql.Stmt
}

func (w *writerStmts) all() []*sql.Stmt {
	return []*sql.Stmt{w.insertMachine, w.auditHead, w.insertAudit}
}

func (s *store) prepare(ctx context.Context) error {
	var err error
	prep := func(q string) *sql.Stmt {
		if err != nil {
			return nil
		}
		var st *sql.Stmt
		st, err = s.conn.PrepareContext(ctx, q)
		return st
	}
	s.stmts = writerStmts{
		insertMachine: prep("INSERT INTO machine (machine_id, lifecycle, registered_at) VALUES (?, ?, ?)"),
		auditHead:     prep(auditHeadQuery),
		insertAudit:   prep(auditInsertQuery),
	}
	if err != nil {
		return fmt.Errorf("prepare statements: %w", err)
	}
	if s.lastReportID, err = (dbq{ctx, s.conn}).maxReportID(); err != nil {
		return err
	}
	return nil
}

// reportRows are the rows a group commit appends: reports, health reports
// and the machines' latest values (the last report of a machine in the
// group wins). They are written just before COMMIT with one statement per
// table and per chunk of rows, instead of four statements per report.
type reportRows struct {
	reports []reportRow
	latest  map[string]int // machine id -> index in reports of its latest report
}

type reportRow struct {
	id      int64
	machine string
	req     *reportRequest
}

// insertReport queues one report and, if it carries one, its health report.
// Report ids are assigned here, in arrival order: the store is the only
// writer of the table and keeps the highest id in memory.
func (t *txn) insertReport(id string, req *reportRequest) {
	rows := t.reportRows
	if rows == nil {
		rows = &reportRows{latest: map[string]int{}}
		t.reportRows = rows
		t.beforeCommit("reports", func() error { return t.writeReportRows(rows) })
	}
	rid := t.s.lastReportID + int64(len(rows.reports)) + 1
	rows.latest[id] = len(rows.reports)
	rows.reports = append(rows.reports, reportRow{id: rid, machine: id, req: req})
}

// writeReportRows writes the queued rows with multi-row statements.
func (t *txn) writeReportRows(rows *reportRows) error {
	var health, machines []reportRow
	for i, r := range rows.reports {
		if r.req.Health != nil {
			health = append(health, r)
		}
		if rows.latest[r.machine] == i {
			machines = append(machines, r)
		}
	}
	if err := t.execRows(reportInsert, rows.reports); err != nil {
		return fmt.Errorf("insert reports: %w", err)
	}
	if err := t.execRows(healthInsert, health); err != nil {
		return fmt.Errorf("insert health reports: %w", err)
	}
	if err := t.execRows(machineUpdate, machines); err != nil {
		return fmt.Errorf("update machines: %w", err)
	}
	last := rows.reports[len(rows.reports)-1].id
	t.afterCommit(func() { t.s.lastReportID = last })
	return nil
}

// A rowStatement is a statement over a VALUES list of rows of the same shape.
type rowStatement struct {
	head, tail string // before and after the VALUES list
	width      int    // values per row
	values     func(t *txn, r reportRow, args []any) []any
}

var (
	reportInsert = &rowStatement{
		head: `INSERT INTO report (id, machine_id, generation, success, message, agent_ts, received_at,
			agent_version, uptime_seconds) VALUES `,
		width: 9,
		values: func(t *txn, r reportRow, a []any) []any {
			q := r.req
			return append(a, r.id, r.machine, *q.CurrentGeneration, *q.Success, *q.Message, q.agentTS, t.now,
				*q.AgentVersion, *q.UptimeSeconds)
		},
	}
	healthInsert = &rowStatement{
		head: `INSERT INTO health_report (report_id, machine_id, generation, all_passed, results,
			failed_checks, measured_at, received_at) VALUES `,
		width: 8,
		values: func(t *txn, r reportRow, a []any) []any {
			h := r.req.Health
			return append(a, r.id, r.machine, *r.req.CurrentGeneration, *h.AllPassed, h.resultsJSON,
				h.failedChecks, h.measuredAt, t.now)
		},
	}
	// UPDATE ... FROM (VALUES ...) names the columns column1, column2...
	machineUpdate = &rowStatement{
		head: `UPDATE machine SET current_generation = v.column2, last_success = v.column3, last_seen = v.column4,
			last_report_agent_ts = v.column5, agent_version = v.column6, uptime_seconds = v.column7 FROM (VALUES `,
		tail:  `) AS v WHERE machine.machine_id = v.column1`,
		width: 7,
		values: func(t *txn, r reportRow, a []any) []any {
			q := r.req
			return append(a, r.machine, *q.CurrentGeneration, *q.Success, t.now, q.agentTS, *q.AgentVersion, *q.UptimeSeconds)
		},
	}
)

// execRows runs st over rows, in chunks of at most rowChunk rows. The
// statement for each chunk size is prepared once on the writer connection.
func (t *txn) execRows(st *rowStatement, rows []reportRow) error {
	args := make([]any, 0, min(len(rows), rowChunk)*st.width)
	for len(rows) > 0 {
		n := min(len(rows), rowChunk)
		stmt, err := t.s.rowStmt(t.ctx, st, n)
		if err != nil {
			return err
		}
		args = args[:0]
		for _, r := range rows[:n] {
			args = st.values(t, r, args)
		}
		if _, err := stmt.ExecContext(t.ctx, args...); err != nil {
			return err
		}
		rows = rows[n:]
	}
	return nil
}

// rowChunk is the most rows in one statement; with 9 values per row it stays
// far below SQLite's limit on bound parameters (32766).
const rowChunk = 128

// rowStmt returns the statement st for n rows, preparing it on first use.
func (s *store) rowStmt(ctx context.Context, st *rowStatement, n int) (*sql.Stmt, error) {
	key := rowStmtKey{st, n}
	if stmt := s.rowStmts[key]; stmt != nil {
		return stmt, nil
	}
	row := "(" + strings.Repeat("?, ", st.width-1) + "?)"
	q := st.head + strings.Repeat(row+", ", n-1) + row + st.tail
	stmt, err := s.conn.PrepareContext(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("prepare: %w", err)
	}
	if s.rowStmts == nil {
		s.rowStmts = map[rowStmtKey]*sql.Stmt{}
	}
	s.rowStmts[key] = stmt
	return stmt, nil
}

type rowStmtKey struct {
	st *rowStatement
	n  int
}

// Retention queries (§12.6). Candidates are found on the read pool, through
// the rowid and the report (machine_id, received_at) index that the executor
// needs anyway, so that retention adds no index to the report hot path and
// never holds the writer while it searches.

// healthRow is a health report as retention sees it.
type healthRow struct {
	id, receivedAt int64
	machine        string
}

// Retention queries, named so that TestRetentionQueryPlans can check that
// each reads through the rowid or an index.
const (
	// healthAfterQuery pages through the health reports in id (arrival) order.
	healthAfterQuery = `SELECT id, machine_id, received_at FROM health_report WHERE id > ? ORDER BY id LIMIT ?`
	// newestHealthQuery finds a machine's newest health report through the
	// report index, newest report first.
	newestHealthQuery = `SELECT h.id FROM report r JOIN health_report h ON h.report_id = r.id
		WHERE r.machine_id = ? ORDER BY r.received_at DESC, r.id DESC LIMIT 1`
	expiredReportsQuery = `SELECT id FROM report
		WHERE machine_id = ?1 AND received_at < ?2
		AND (received_at, id) < (SELECT received_at, id FROM report WHERE machine_id = ?1
			ORDER BY received_at DESC, id DESC LIMIT 1 OFFSET ?3)`
)

// healthAfter returns up to limit health reports with ids above after, in
// id order.
func (s *store) healthAfter(ctx context.Context, after int64, limit int) ([]healthRow, error) {
	return queryAll(dbq{ctx, s.ro}, "select health reports", func(row scanner) (healthRow, error) {
		var h healthRow
		err := row.Scan(&h.id, &h.machine, &h.receivedAt)
		return h, err
	}, healthAfterQuery, after, limit)
}

// newestHealthID returns the id of the machine's newest health report (0:
// none).
func (s *store) newestHealthID(ctx context.Context, machine string) (int64, error) {
	id, _, err := queryOne(dbq{ctx, s.ro}, "select newest health report", scanInt64, newestHealthQuery, machine)
	return id, err
}

// expiredReportIDs returns the ids of the machine's reports received before
// cutoff, except its newest keep reports.
func (s *store) expiredReportIDs(ctx context.Context, machine string, cutoff int64, keep int) ([]int64, error) {
	return queryAll(dbq{ctx, s.ro}, "select expired reports", scanInt64, expiredReportsQuery, machine, cutoff, keep-1)
}

// deleteHealthReports and deleteReports delete rows by id in one
// transaction; a report's health report goes with it (ON DELETE CASCADE).
func (s *store) deleteHealthReports(ctx context.Context, ids []int64) error {
	return s.deleteByID(ctx, "DELETE FROM health_report WHERE id = ?", ids)
}

func (s *store) deleteReports(ctx context.Context, ids []int64) error {
	return s.deleteByID(ctx, "DELETE FROM report WHERE id = ?", ids)
}

func (s *store) deleteByID(ctx context.Context, q string, ids []int64) error {
	return s.write(ctx, func(tx *txn) error {
		for _, id := range ids {
			if _, err := tx.exec(q, id); err != nil {
				return fmt.Errorf("delete expired row: %w", err)
			}
		}
		return nil
	})
}

// reportRecord is one stored report with its health report, if any, as the
// report history of a machine returns it.
type reportRecord struct {
	Generation    string
	Success       bool
	Message       string
	AgentTS       int64 // Unix ms, the agent's clock
	ReceivedAt    int64 // Unix ms, the server's clock
	AgentVersion  string
	UptimeSeconds int64
	Health        *healthRecord
}

// healthRecord is the health object a report carried.
type healthRecord struct {
	Generation   string
	AllPassed    bool
	Results      string // the JSON array of check results as received
	FailedChecks string
	MeasuredAt   int64
}

// reportHistory returns the machine's stored reports in arrival order, each
// with its health report (nil when it carried none, or retention removed
// it). It is the one reader of the whole report history: a migration that
// restructures the report tables keeps its contract (the upgrade test
// checks the history of an old database through it).
func (d dbq) reportHistory(machine string) ([]reportRecord, error) {
	return queryAll(d, "read report history", func(row scanner) (reportRecord, error) {
		var r reportRecord
		var hGen, hResults, hFailed sql.NullString
		var hPassed sql.NullBool
		var hMeasured sql.NullInt64
		err := row.Scan(&r.Generation, &r.Success, &r.Message, &r.AgentTS, &r.ReceivedAt, &r.AgentVersion, &r.UptimeSeconds,
			&hGen, &hPassed, &hResults, &hFailed, &hMeasured)
		if hGen.Valid {
			r.Health = &healthRecord{Generation: hGen.String, AllPassed: hPassed.Bool, Results: hResults.String,
				FailedChecks: hFailed.String, MeasuredAt: hMeasured.Int64}
		}
		return r, err
	}, `SELECT r.generation, r.success, r.message, r.agent_ts, r.received_at, r.agent_version, r.uptime_seconds,
		h.generation, h.all_passed, h.results, h.failed_checks, h.measured_at
		FROM report r LEFT JOIN health_report h ON h.report_id = r.id
		WHERE r.machine_id = ? ORDER BY r.id`, machine)
}
