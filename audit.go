package main

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"io"
	"strings"
)

// auditActions is every audit action the control plane writes (§10.2).
var auditActions = []string{
	"report", "register", "update_lifecycle", "tags.update", "clear_desired", "notify_deploy",
	"bootstrap", "key.created", "key.revoked", "create_release", "delete_release",
	"rollout.created", "rollout.paused", "rollout.resumed", "rollout.cancelled", "rollout.deleted",
	"rollout.completed", "rollout.failed", "batch.deploying", "batch.succeeded", "batch.failed",
	"machine.reverted",
}

// recordAudit appends one audit row inside the mutation's transaction, so the
// change and its record commit together or not at all. detail may be nil.
func recordAudit(tx *txn, actor, action, target string, detail *string) error {
	if _, err := tx.ExecContext(tx.ctx,
		"INSERT INTO audit_event (timestamp, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
		tx.now, actor, action, target, detail); err != nil {
		return fmt.Errorf("record audit %s: %w", action, err)
	}
	tx.audits = append(tx.audits, action)
	return nil
}

// str returns a pointer to s, for nullable values.
func str(s string) *string { return &s }

// auditEvent is the wire type of an audit row (§5.6).
type auditEvent struct {
	ID        int64   `json:"id"`
	Timestamp string  `json:"timestamp"`
	Actor     string  `json:"actor"`
	Action    string  `json:"action"`
	Target    string  `json:"target"`
	Detail    *string `json:"detail"`
}

// auditFilter selects audit rows; zero values mean "any".
type auditFilter struct {
	actor, action, target string
	since, until          int64 // Unix ms; since inclusive, until exclusive; 0 = unbounded
	hasSince, hasUntil    bool
	before                int64 // only ids below it; 0 = unbounded
	limit                 int   // 0 = no limit
}

// query builds the SELECT for f, newest first.
func (f auditFilter) query() (string, []any) {
	var where []string
	var args []any
	add := func(cond string, v any) {
		where = append(where, cond)
		args = append(args, v)
	}
	if f.actor != "" {
		add("actor = ?", f.actor)
	}
	if f.action != "" {
		add("action = ?", f.action)
	}
	if f.target != "" {
		add("target = ?", f.target)
	}
	if f.hasSince {
		add("timestamp >= ?", f.since)
	}
	if f.hasUntil {
		add("timestamp < ?", f.until)
	}
	if f.before > 0 {
		add("id < ?", f.before)
	}
	q := "SELECT id, timestamp, actor, action, target, detail FROM audit_event"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY id DESC"
	if f.limit > 0 {
		q += " LIMIT ?"
		args = append(args, f.limit)
	}
	return q, args
}

// eachAudit calls fn for every row that matches f, newest first, streaming
// the rows from one read transaction. started, if not nil, is called once the
// query has succeeded and before the first row, so that a caller can commit
// to a response only when the query is known to work.
func (s *store) eachAudit(ctx context.Context, f auditFilter, started func(), fn func(auditEvent) error) error {
	q, args := f.query()
	rows, err := s.ro.QueryContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("query audit: %w", err)
	}
	defer rows.Close()
	if started != nil {
		started()
	}
	for rows.Next() {
		var ev auditEvent
		var ts int64
		var detail sql.NullString
		if err := rows.Scan(&ev.ID, &ts, &ev.Actor, &ev.Action, &ev.Target, &detail); err != nil {
			return fmt.Errorf("scan audit: %w", err)
		}
		ev.Timestamp = fmtTime(ts)
		ev.Detail = nullStr(detail)
		if err := fn(ev); err != nil {
			return err
		}
	}
	return rows.Err()
}

// csvField escapes one CSV field (§10.4): a leading =, +, -, @, TAB or CR gets
// a single quote so spreadsheets do not evaluate it as a formula; then a field
// holding a comma, quote, LF or CR is quoted with inner quotes doubled.
func csvField(v string) string {
	if v != "" && strings.ContainsRune("=+-@\t\r", rune(v[0])) {
		v = "'" + v
	}
	if strings.ContainsAny(v, ",\"\n\r") {
		v = `"` + strings.ReplaceAll(v, `"`, `""`) + `"`
	}
	return v
}

// writeCSVRow writes one audit row as a CSV line ending in LF.
func writeCSVRow(w *bufio.Writer, ev auditEvent) error {
	detail := ""
	if ev.Detail != nil {
		detail = *ev.Detail
	}
	for i, f := range []string{ev.Timestamp, ev.Actor, ev.Action, ev.Target, detail} {
		if i > 0 {
			w.WriteByte(',')
		}
		w.WriteString(csvField(f))
	}
	return w.WriteByte('\n')
}

const csvHeader = "timestamp,actor,action,target,detail\n"

// exportAuditCSV streams every matching row as CSV to w, in constant memory.
// started is called once the query has succeeded, before anything is written.
func (s *store) exportAuditCSV(ctx context.Context, f auditFilter, w io.Writer, started func()) error {
	bw := bufio.NewWriterSize(w, 32<<10)
	err := s.eachAudit(ctx, f, func() {
		started()
		bw.WriteString(csvHeader)
	}, func(ev auditEvent) error { return writeCSVRow(bw, ev) })
	if err != nil {
		return err
	}
	return bw.Flush()
}
