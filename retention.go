package main

import (
	"context"
	"fmt"
	"time"
)

// Retention (§12.6): old health reports and reports are pruned at startup and
// then hourly, in chunks of at most retentionChunk rows per transaction so the
// writer is never held for long. Audit rows, rollout events, releases,
// rollouts, machines and desired generations are never pruned.

const (
	healthRetention = 24 * time.Hour
	keepReports     = 100 // the newest reports of each machine always stay
	retentionChunk  = 1000
)

// runRetention prunes once now and then every interval until ctx ends.
func (s *server) runRetention(ctx context.Context, interval time.Duration) {
	for {
		health, reports, err := s.retain(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.Error("retention failed", "err", err, "health_reports", health, "reports", reports)
		case health > 0 || reports > 0:
			s.log.Info("retention", "health_reports", health, "reports", reports)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

// retain runs one retention pass and returns how many rows it deleted: health
// reports received more than 24 h ago (except each machine's newest), then
// reports older than the retention period (except the newest 100 of each
// machine), whose health reports go with them.
func (s *server) retain(ctx context.Context) (health, reports int64, err error) {
	now := s.now()
	// Candidates are walked in (received_at, id) order with a cursor, so the
	// rows that are kept are read once per pass, not once per chunk.
	health, err = s.pruneChunks(ctx, now.Add(-healthRetention).UnixMilli(), `SELECT h.id, h.received_at FROM health_report h
		WHERE h.received_at < ?1 AND (h.received_at, h.id) > (?2, ?3)
		AND h.id <> (SELECT h2.id FROM health_report h2 WHERE h2.machine_id = h.machine_id
			ORDER BY h2.received_at DESC, h2.id DESC LIMIT 1)
		ORDER BY h.received_at, h.id LIMIT ?4`, "DELETE FROM health_report WHERE id = ?")
	if err != nil {
		return health, 0, err
	}
	reports, err = s.pruneChunks(ctx, now.Add(-s.retention).UnixMilli(), fmt.Sprintf(`SELECT r.id, r.received_at FROM report r
		WHERE r.received_at < ?1 AND (r.received_at, r.id) > (?2, ?3)
		AND (r.received_at, r.id) < (SELECT r2.received_at, r2.id FROM report r2 WHERE r2.machine_id = r.machine_id
			ORDER BY r2.received_at DESC, r2.id DESC LIMIT 1 OFFSET %d)
		ORDER BY r.received_at, r.id LIMIT ?4`, keepReports-1), "DELETE FROM report WHERE id = ?")
	return health, reports, err
}

// pruneChunks deletes, chunk by chunk, the rows that selectQ finds; selectQ
// takes the cutoff, the cursor (received_at, id) and the chunk size.
func (s *server) pruneChunks(ctx context.Context, cutoff int64, selectQ, deleteQ string) (int64, error) {
	var total int64
	var curAt, curID int64 = -1 << 62, 0
	for ctx.Err() == nil {
		var n int
		err := s.st.write(ctx, func(tx *txn) error {
			rows, err := tx.QueryContext(tx.ctx, selectQ, cutoff, curAt, curID, retentionChunk)
			if err != nil {
				return fmt.Errorf("select expired rows: %w", err)
			}
			var ids []int64
			for rows.Next() {
				var id, at int64
				if err := rows.Scan(&id, &at); err != nil {
					rows.Close()
					return fmt.Errorf("select expired rows: %w", err)
				}
				ids = append(ids, id)
				curAt, curID = at, id
			}
			if err := rows.Close(); err != nil {
				return fmt.Errorf("select expired rows: %w", err)
			}
			for _, id := range ids {
				if _, err := tx.ExecContext(tx.ctx, deleteQ, id); err != nil {
					return fmt.Errorf("delete expired row: %w", err)
				}
			}
			n = len(ids)
			return nil
		})
		if err != nil {
			return total, err
		}
		total += int64(n)
		if n < retentionChunk {
			break
		}
	}
	return total, ctx.Err()
}
