package main

import (
	"context"
	"fmt"
	"slices"
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
//
// Candidates are found machine by machine on the read pool, through the
// (machine_id, received_at) indexes that ingestion needs anyway, so that
// retention adds no index to the report hot path and never holds the writer
// while it searches. A candidate stays deletable whatever is ingested
// meanwhile: newer rows only push old ones further from "newest".
func (s *server) retain(ctx context.Context) (health, reports int64, err error) {
	var ids []string
	s.fleet.each(func(m *machineRec) { ids = append(ids, m.ID) })
	slices.Sort(ids)
	now := s.now()
	health, err = s.prune(ctx, ids, now.Add(-healthRetention).UnixMilli(), `SELECT id FROM health_report
		WHERE machine_id = ?1 AND received_at < ?2
		AND id <> (SELECT id FROM health_report WHERE machine_id = ?1 ORDER BY received_at DESC, id DESC LIMIT 1)`,
		"DELETE FROM health_report WHERE id = ?")
	if err != nil {
		return health, 0, err
	}
	reports, err = s.prune(ctx, ids, now.Add(-s.retention).UnixMilli(), fmt.Sprintf(`SELECT id FROM report
		WHERE machine_id = ?1 AND received_at < ?2
		AND (received_at, id) < (SELECT received_at, id FROM report WHERE machine_id = ?1
			ORDER BY received_at DESC, id DESC LIMIT 1 OFFSET %d)`, keepReports-1),
		"DELETE FROM report WHERE id = ?")
	return health, reports, err
}

// prune collects, machine by machine, the ids that selectQ (parameters:
// machine id, cutoff) finds and deletes them with deleteQ in transactions of
// at most retentionChunk rows.
func (s *server) prune(ctx context.Context, machines []string, cutoff int64, selectQ, deleteQ string) (int64, error) {
	var total int64
	chunk := make([]int64, 0, retentionChunk)
	flush := func() error {
		if len(chunk) == 0 {
			return nil
		}
		err := s.st.write(ctx, func(tx *txn) error {
			for _, id := range chunk {
				if _, err := tx.ExecContext(tx.ctx, deleteQ, id); err != nil {
					return fmt.Errorf("delete expired row: %w", err)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		total += int64(len(chunk))
		chunk = chunk[:0]
		return nil
	}
	for _, m := range machines {
		rows, err := s.st.ro.QueryContext(ctx, selectQ, m, cutoff)
		if err != nil {
			return total, fmt.Errorf("select expired rows: %w", err)
		}
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return total, fmt.Errorf("select expired rows: %w", err)
			}
			chunk = append(chunk, id)
			if len(chunk) == retentionChunk {
				if err := flush(); err != nil {
					rows.Close()
					return total, err
				}
			}
		}
		if err := rows.Close(); err != nil {
			return total, fmt.Errorf("select expired rows: %w", err)
		}
	}
	return total, flush()
}
