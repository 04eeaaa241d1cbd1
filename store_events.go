package main

import (
	"context"
	_ "embed"
	"fmt"
)

// The reads behind the event stream (events.go): audit rows and rollout
// events after a cursor, oldest first, and the newest id of each.

// migrationRolloutEventIDs is migration 4: rollout_event ids become
// AUTOINCREMENT. The event stream resumes after the last id a client saw;
// without AUTOINCREMENT, deleting the newest rollout (its events go with it)
// would hand the same ids out again and a resuming client would skip them.
//
//go:embed migration_4_rollout_event_ids.sql
var migrationRolloutEventIDs string

// eventHeads returns the highest audit id and rollout event id ever used.
func (d dbq) eventHeads() (eventCursor, error) {
	var c eventCursor
	err := d.queryRow(`SELECT (SELECT coalesce(max(id), 0) FROM audit_event),
		(SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'rollout_event')`).Scan(&c.audit, &c.rollout)
	if err != nil {
		return c, fmt.Errorf("read event heads: %w", err)
	}
	return c, nil
}

// auditAfter returns at most limit audit rows with after < id <= upTo,
// oldest first; with rollout, only those whose target is the rollout or
// one of its batches.
func (d dbq) auditAfter(after, upTo int64, rollout string, limit int) ([]auditEvent, error) {
	q := "SELECT " + auditColumns + " FROM audit_event WHERE id > ? AND id <= ?"
	args := []any{after, upTo}
	if rollout != "" {
		// Batch ids are "<rollout id>-b<index>": a range of the target index.
		q += " AND (target = ? OR (target >= ? AND target < ?))"
		args = append(args, rollout, rollout+"-b", rollout+"-c")
	}
	args = append(args, limit)
	return queryAll(d, "query audit", scanAuditEvent, q+" ORDER BY id LIMIT ?", args...)
}

// rolloutEventsAfter returns at most limit rollout events with after < id
// <= upTo, oldest first; with rollout, only that rollout's.
func (d dbq) rolloutEventsAfter(after, upTo int64, rollout string, limit int) ([]eventDetail, error) {
	q := "SELECT id, rollout_id, event_type, detail, actor, created_at FROM rollout_event WHERE id > ? AND id <= ?"
	args := []any{after, upTo}
	if rollout != "" {
		q += " AND rollout_id = ?"
		args = append(args, rollout)
	}
	args = append(args, limit)
	return queryAll(d, "load rollout events", func(row scanner) (eventDetail, error) {
		var ev eventDetail
		var at int64
		err := row.Scan(&ev.ID, &ev.RolloutID, &ev.EventType, &ev.Detail, &ev.Actor, &at)
		ev.CreatedAt = fmtTime(at)
		return ev, err
	}, q+" ORDER BY id LIMIT ?", args...)
}

// publishEvents hands the rows committed since the hub's position to the
// event hub, reading only the kinds the transaction wrote. It runs from
// txn.commit, after COMMIT and under s.mu, so rows are published exactly
// once and in commit order; it reads through the writer connection, which
// is idle between transactions. Rows another process committed (keys
// create) go out with the next commit of this one. With no open
// stream it reads nothing: the hub forgets its position, and the next
// subscriber finds it again (subscribeEvents).
func (s *store) publishEvents(wroteAudit, wroteRollout bool) {
	h := s.events
	from, ok := h.position()
	if !ok {
		return
	}
	d := dbq{context.Background(), s.conn}
	var audits []auditEvent
	var rolls []eventDetail
	var err error
	if wroteAudit {
		audits, err = d.auditAfter(from.audit, maxEventID, "", maxEventRead)
	}
	if wroteRollout && err == nil {
		rolls, err = d.rolloutEventsAfter(from.rollout, maxEventID, "", maxEventRead)
	}
	h.publish(mergeEvents(rolls, audits), err)
}

// subscribeEvents registers a subscriber with the event hub. When the hub
// does not know its position (no stream was open at the last commit), it
// reads the newest ids under the writer lock, so that no commit can fall
// between that read and the subscription (a read transaction begun while
// no write is in progress sees every commit).
func (s *store) subscribeEvents(ctx context.Context, f eventFilter) (*subscription, eventCursor, error) {
	if sub, pos, err := s.events.subscribe(f, nil); err != errEventPosition {
		return sub, pos, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	heads, err := readValue(ctx, s, dbq.eventHeads)
	if err != nil {
		return nil, eventCursor{}, err
	}
	return s.events.subscribe(f, &heads)
}
