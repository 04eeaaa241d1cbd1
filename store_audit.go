package main

import (
	"database/sql"
	"fmt"
	"strings"
)

// The audit log (§10). Rows are append-only: triggers in schema.sql refuse
// every UPDATE, DELETE and REPLACE, even from sqlite3.

// insertAudit appends one audit row in the mutation's transaction.
func (t *txn) insertAudit(actor, action, target string, detail *string) error {
	if _, err := t.exec("INSERT INTO audit_event (timestamp, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
		t.now, actor, action, target, detail); err != nil {
		return fmt.Errorf("record audit %s: %w", action, err)
	}
	return nil
}

// auditPage returns at most limit rows matching f with ids below before (0:
// no bound), newest first. Pages never overlap or skip rows: ids are unique
// and only grow, and rows are never deleted.
func (d dbq) auditPage(f auditFilter, before int64, limit int) ([]auditEvent, error) {
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
	if f.since != nil {
		add("timestamp >= ?", *f.since)
	}
	if f.until != nil {
		add("timestamp < ?", *f.until)
	}
	if before > 0 {
		add("id < ?", before)
	}
	q := "SELECT id, timestamp, actor, action, target, detail FROM audit_event"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY id DESC LIMIT ?"
	args = append(args, limit)
	return queryAll(d, "query audit", func(row scanner) (auditEvent, error) {
		var ev auditEvent
		var ts int64
		var detail sql.NullString
		err := row.Scan(&ev.ID, &ts, &ev.Actor, &ev.Action, &ev.Target, &detail)
		ev.Timestamp, ev.Detail = fmtTime(ts), nullStr(detail)
		return ev, err
	}, q, args...)
}
