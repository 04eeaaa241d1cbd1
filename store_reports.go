package main

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
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

// commitReports commits one group and answers its waiters. A panic while
// applying a report fails the group (write has rolled it back) instead of
// stopping the writer, which would leave every later report unanswered.
func (s *store) commitReports(batch []*reportJob, log *slog.Logger) {
	results := make([]error, len(batch))
	err := func() (err error) {
		defer func() {
			if v := recover(); v != nil {
				log.Error("internal error", "method", "POST", "path", "/api/v1/machines/{id}/report", "err", fmt.Sprintf("panic: %v", v))
				err = fmt.Errorf("report writer panic: %v", v)
			}
		}()
		return s.write(context.Background(), func(t *txn) error {
			for i, j := range batch {
				results[i] = t.savepoint(func() error { return applyReport(t, j.id, j.req) })
			}
			return nil
		})
	}()
	n := 0
	for i, j := range batch {
		if err != nil {
			results[i] = err
		}
		if results[i] == nil {
			n++
		}
		j.done <- results[i]
	}
	if n > 0 {
		s.metrics.groupCommitSize.observe(float64(n))
	}
}

// writerStmts are the statements of the report hot path, prepared once on
// the writer connection.
type writerStmts struct {
	insertMachine *sql.Stmt
	insertReport  *sql.Stmt
	insertHealth  *sql.Stmt
	updateMachine *sql.Stmt
	savepoint     *sql.Stmt
	release       *sql.Stmt
	rollbackTo    *sql.Stmt
}

func (w *writerStmts) all() []*sql.Stmt {
	return []*sql.Stmt{w.insertMachine, w.insertReport, w.insertHealth, w.updateMachine, w.savepoint, w.release, w.rollbackTo}
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
		insertReport: prep(`INSERT INTO report (machine_id, generation, success, message, agent_ts, received_at,
			agent_version, uptime_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`),
		insertHealth: prep(`INSERT INTO health_report (report_id, machine_id, generation, all_passed, results,
			failed_checks, measured_at, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`),
		updateMachine: prep(`UPDATE machine SET current_generation = ?, last_success = ?, last_seen = ?,
			last_report_agent_ts = ?, agent_version = ?, uptime_seconds = ? WHERE machine_id = ?`),
		savepoint:  prep("SAVEPOINT sp"),
		release:    prep("RELEASE sp"),
		rollbackTo: prep("ROLLBACK TO sp"),
	}
	if err != nil {
		return fmt.Errorf("prepare statements: %w", err)
	}
	return nil
}

// insertReport stores one report and, if it carries one, its health report.
func (t *txn) insertReport(id string, req *reportRequest) error {
	res, err := t.s.stmts.insertReport.ExecContext(t.ctx, id, *req.CurrentGeneration,
		*req.Success, *req.Message, req.agentTS, t.now, *req.AgentVersion, *req.UptimeSeconds)
	if err != nil {
		return fmt.Errorf("insert report: %w", err)
	}
	h := req.Health
	if h == nil {
		return nil
	}
	reportID, err := res.LastInsertId()
	if err != nil {
		return fmt.Errorf("insert report: %w", err)
	}
	if _, err := t.s.stmts.insertHealth.ExecContext(t.ctx, reportID, id,
		*req.CurrentGeneration, *h.AllPassed, h.resultsJSON, h.failedChecks, h.measuredAt, t.now); err != nil {
		return fmt.Errorf("insert health report: %w", err)
	}
	return nil
}

// updateMachineReport records the report's values as the machine's latest.
func (t *txn) updateMachineReport(id string, req *reportRequest) error {
	if _, err := t.s.stmts.updateMachine.ExecContext(t.ctx, *req.CurrentGeneration,
		*req.Success, t.now, req.agentTS, *req.AgentVersion, *req.UptimeSeconds, id); err != nil {
		return fmt.Errorf("update machine: %w", err)
	}
	return nil
}

// Retention queries (§12.6). Candidates are found machine by machine on the
// read pool, through the (machine_id, received_at) indexes that ingestion
// needs anyway, so that retention adds no index to the report hot path and
// never holds the writer while it searches.

// expiredHealthIDs returns the ids of the machine's health reports received
// before cutoff, except its newest one.
func (s *store) expiredHealthIDs(ctx context.Context, machine string, cutoff int64) ([]int64, error) {
	return queryAll(dbq{ctx, s.ro}, "select expired health reports", scanInt64, `SELECT id FROM health_report
		WHERE machine_id = ?1 AND received_at < ?2
		AND id <> (SELECT id FROM health_report WHERE machine_id = ?1 ORDER BY received_at DESC, id DESC LIMIT 1)`, machine, cutoff)
}

// expiredReportIDs returns the ids of the machine's reports received before
// cutoff, except its newest keep reports.
func (s *store) expiredReportIDs(ctx context.Context, machine string, cutoff int64, keep int) ([]int64, error) {
	return queryAll(dbq{ctx, s.ro}, "select expired reports", scanInt64, `SELECT id FROM report
		WHERE machine_id = ?1 AND received_at < ?2
		AND (received_at, id) < (SELECT received_at, id FROM report WHERE machine_id = ?1
			ORDER BY received_at DESC, id DESC LIMIT 1 OFFSET ?3)`, machine, cutoff, keep-1)
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
