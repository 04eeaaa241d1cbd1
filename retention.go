package main

import (
	"context"
	"log/slog"
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

// retention is the retention job.
type retention struct {
	st     *store
	log    *slog.Logger
	period time.Duration // --report-retention
}

// run prunes once now and then every interval until ctx ends.
func (r *retention) run(ctx context.Context, interval time.Duration) {
	for {
		health, reports, err := r.prune(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			r.log.Error("retention failed", "err", err, "health_reports", health, "reports", reports)
		case health > 0 || reports > 0:
			r.log.Info("retention", "health_reports", health, "reports", reports)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

// prune runs one retention pass and returns how many rows it deleted: health
// reports received more than 24 h ago (except each machine's newest), then
// reports older than the retention period (except the newest 100 of each
// machine), whose health reports go with them. A candidate stays deletable
// whatever is ingested meanwhile: newer rows only push old ones further from
// "newest".
func (r *retention) prune(ctx context.Context) (health, reports int64, err error) {
	var ids []string
	r.st.fleet.each(func(m *machineRec) { ids = append(ids, m.ID) })
	slices.Sort(ids)
	now := r.st.now()
	healthCutoff := now.Add(-healthRetention).UnixMilli()
	health, err = pruneChunks(ctx, ids, func(m string) ([]int64, error) {
		return r.st.expiredHealthIDs(ctx, m, healthCutoff)
	}, r.st.deleteHealthReports)
	if err != nil {
		return health, 0, err
	}
	reportCutoff := now.Add(-r.period).UnixMilli()
	reports, err = pruneChunks(ctx, ids, func(m string) ([]int64, error) {
		return r.st.expiredReportIDs(ctx, m, reportCutoff, keepReports)
	}, r.st.deleteReports)
	return health, reports, err
}

// pruneChunks collects, machine by machine, the ids that expired finds and
// deletes them with del in transactions of at most retentionChunk rows.
func pruneChunks(ctx context.Context, machines []string, expired func(string) ([]int64, error),
	del func(context.Context, []int64) error) (int64, error) {
	var total int64
	chunk := make([]int64, 0, retentionChunk)
	flush := func() error {
		if len(chunk) == 0 {
			return nil
		}
		if err := del(ctx, chunk); err != nil {
			return err
		}
		total += int64(len(chunk))
		chunk = chunk[:0]
		return nil
	}
	for _, m := range machines {
		ids, err := expired(m)
		if err != nil {
			return total, err
		}
		for _, id := range ids {
			chunk = append(chunk, id)
			if len(chunk) == retentionChunk {
				if err := flush(); err != nil {
					return total, err
				}
			}
		}
	}
	return total, flush()
}
