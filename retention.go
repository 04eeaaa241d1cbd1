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
	clockSlack      = time.Hour
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
	health, err = r.pruneHealth(ctx, healthCutoff)
	if err != nil {
		return health, 0, err
	}
	reportCutoff := now.Add(-r.period).UnixMilli()
	reports, err = pruneChunks(ctx, ids, func(m string) ([]int64, error) {
		return r.st.expiredReportIDs(ctx, m, reportCutoff, keepReports)
	}, r.st.deleteReports)
	return health, reports, err
}

// pruneHealth deletes the health reports received before cutoff, except each
// machine's newest. It pages through the health reports in arrival (id)
// order up to the first one received clockSlack after cutoff (arrival order
// and receive times agree unless the clock steps back; a row received
// earlier than one before it is then pruned by a later pass), so its cost follows
// the rows it looks at (the expired ones, and one kept row per machine that
// has gone quiet), not the size of the table; a machine's newest health
// report is looked up once per pass. A row found deletable stays so whatever
// is ingested meanwhile.
func (r *retention) pruneHealth(ctx context.Context, cutoff int64) (int64, error) {
	newest := map[string]int64{}
	var total, after int64
	for {
		page, err := r.st.healthAfter(ctx, after, retentionChunk)
		if err != nil {
			return total, err
		}
		var ids []int64
		done := len(page) < retentionChunk
		for _, h := range page {
			if h.receivedAt >= cutoff+clockSlack.Milliseconds() {
				done = true
				break
			}
			if h.receivedAt >= cutoff {
				after = h.id
				continue
			}
			n, ok := newest[h.machine]
			if !ok {
				if n, err = r.st.newestHealthID(ctx, h.machine); err != nil {
					return total, err
				}
				newest[h.machine] = n
			}
			if h.id != n {
				ids = append(ids, h.id)
			}
			after = h.id
		}
		if len(ids) > 0 {
			if err := r.st.deleteHealthReports(ctx, ids); err != nil {
				return total, err
			}
			total += int64(len(ids))
		}
		if done {
			return total, nil
		}
	}
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
