package main

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"strings"
	"time"

	_ "modernc.org/sqlite"
)

// seedSpec describes the fleet written straight into a daemon's database,
// which is much faster than growing it through the API. The rows follow
// schema.sql at the repository root (migration 1): the daemon must have
// created the schema before, and must be stopped while seeding.
type seedSpec struct {
	prefix   string   // machine ids are prefix + a 6-digit number
	machines int      // active machines
	tags     []string // every machine's tags
	desired  bool     // pin every machine to its current generation
	reports  int      // reports in all, spread over the machines, 60 s apart
	now      time.Time
}

// seedMaxSchema is the newest schema version whose tables seedDB knows.
const seedMaxSchema = 4

func machineID(prefix string, i int) string { return fmt.Sprintf("%s%06d", prefix, i) }

// seedGeneration is the generation a seeded machine runs (and is pinned to).
func seedGeneration(id string) string { return storePath("25.05", id) }

// seedDB writes the machines of spec, their tags, desired generations and
// reports into the database at path. Every other report is a "health-check"
// with its health record, as the agent's periodic health report alternates
// with its "up-to-date" answer to a poll; all are recent enough that the
// daemon's retention keeps them.
func seedDB(ctx context.Context, path string, spec seedSpec) error {
	// The rollback journal instead of WAL while seeding, and no fsync: this
	// is a bulk load of a throw-away file. WAL is switched back on at the
	// end, which is how the daemon leaves its database.
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() +
		"?_pragma=journal_mode(DELETE)&_pragma=synchronous(OFF)&_pragma=cache_size(-262144)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)

	var version int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	// The tables written here are as migration 1 made them: migration 2
	// dropped an index, migration 3 added audit columns, migration 4 rebuilt
	// rollout_event (not seeded). A later migration
	// that changes them must update the seeder and this bound.
	if version < 1 || version > seedMaxSchema {
		return fmt.Errorf("database schema version %d: the seeder writes schema versions 1 to %d", version, seedMaxSchema)
	}

	now := spec.now.UnixMilli()
	rounds := 0
	if spec.reports > 0 {
		rounds = (spec.reports + spec.machines - 1) / spec.machines
	}
	// Report j of round r is received at lastRound - (rounds-1-r) minutes,
	// plus a per-machine offset within the minute.
	lastRound := now - 60_000
	offset := func(i int) int64 { return int64(i) * 60_000 / int64(spec.machines) }

	err = withTx(ctx, db, func(tx *sql.Tx) error {
		machines := newBulk(tx, "machine", "machine_id, lifecycle, registered_at, current_generation, last_success, "+
			"last_seen, last_report_agent_ts, agent_version, uptime_seconds", 9)
		tags := newBulk(tx, "machine_tag", "machine_id, tag", 2)
		desired := newBulk(tx, "desired_generation", "machine_id, hash, cache_url, set_at, set_by", 5)
		for i := range spec.machines {
			id := machineID(spec.prefix, i)
			gen := seedGeneration(id)
			var lastSeen, lastTS any // NULL before the first report
			if rounds > 0 {
				t := lastRound + offset(i) - 60_000
				lastSeen, lastTS = t, t
			}
			if err := machines.add(ctx, id, "active", now-30*24*3600_000, gen, 1, lastSeen, lastTS, "0.1.0", 86400); err != nil {
				return err
			}
			for _, tag := range spec.tags {
				if err := tags.add(ctx, id, tag); err != nil {
					return err
				}
			}
			if spec.desired {
				if err := desired.add(ctx, id, gen, nil, now-24*3600_000, "apikey:loadbench"); err != nil {
					return err
				}
			}
		}
		return flushAll(ctx, machines, tags, desired)
	})
	if err != nil {
		return fmt.Errorf("seed machines: %w", err)
	}

	// Reports in arrival order: round by round, machine by machine. One
	// transaction per round keeps the journal small.
	const results = `[{"status":"pass","check_name":"sshd.service","duration_ms":4},` +
		`{"status":"pass","check_name":"nginx.service","duration_ms":12}]`
	var reportID int64
	for r := range rounds {
		err := withTx(ctx, db, func(tx *sql.Tx) error {
			reports := newBulk(tx, "report", "id, machine_id, generation, success, message, agent_ts, received_at, "+
				"agent_version, uptime_seconds", 9)
			health := newBulk(tx, "health_report", "id, report_id, machine_id, generation, all_passed, results, "+
				"failed_checks, measured_at, received_at", 9)
			for i := range spec.machines {
				if int(reportID) >= spec.reports {
					break
				}
				reportID++
				id := machineID(spec.prefix, i)
				gen := seedGeneration(id)
				at := lastRound - int64(rounds-1-r)*60_000 + offset(i) - 60_000
				msg := "up-to-date"
				if (r+i)%2 == 0 {
					msg = "health-check"
					if err := health.add(ctx, reportID, reportID, id, gen, 1, results, "", at, at); err != nil {
						return err
					}
				}
				if err := reports.add(ctx, reportID, id, gen, 1, msg, at, at, "0.1.0", 86400); err != nil {
					return err
				}
			}
			// Reports first: health_report refers to them.
			return flushAll(ctx, reports, health)
		})
		if err != nil {
			return fmt.Errorf("seed reports: %w", err)
		}
	}
	if _, err := db.ExecContext(ctx, "PRAGMA journal_mode=WAL"); err != nil {
		return fmt.Errorf("switch to WAL: %w", err)
	}
	return nil
}

func withTx(ctx context.Context, db *sql.DB, fn func(tx *sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// bulk inserts rows into one table with multi-row INSERT statements, which
// is several times faster than a statement per row. Rows are buffered and
// written by flush, so a table's rows are written in the order they were added.
type bulk struct {
	tx    *sql.Tx
	table string
	cols  string
	ncols int
	rows  [][]any
}

// bulkRows is how many rows one INSERT carries; 9 columns × 100 rows stays
// well under SQLite's limit on bound parameters.
const bulkRows = 100

func newBulk(tx *sql.Tx, table, cols string, ncols int) *bulk {
	return &bulk{tx: tx, table: table, cols: cols, ncols: ncols}
}

func (b *bulk) add(ctx context.Context, vals ...any) error {
	if len(vals) != b.ncols {
		return fmt.Errorf("insert into %s: %d values for %d columns", b.table, len(vals), b.ncols)
	}
	b.rows = append(b.rows, vals)
	return nil
}

// flush writes the buffered rows.
func (b *bulk) flush(ctx context.Context) error {
	placeholder := "(" + strings.TrimSuffix(strings.Repeat("?,", b.ncols), ",") + ")"
	var full *sql.Stmt
	defer func() {
		if full != nil {
			full.Close()
		}
	}()
	for len(b.rows) > 0 {
		n := min(len(b.rows), bulkRows)
		args := make([]any, 0, n*b.ncols)
		for _, r := range b.rows[:n] {
			args = append(args, r...)
		}
		q := "INSERT INTO " + b.table + " (" + b.cols + ") VALUES " +
			strings.TrimSuffix(strings.Repeat(placeholder+",", n), ",")
		var err error
		if n == bulkRows {
			if full == nil {
				if full, err = b.tx.PrepareContext(ctx, q); err != nil {
					return fmt.Errorf("insert into %s: %w", b.table, err)
				}
			}
			_, err = full.ExecContext(ctx, args...)
		} else {
			_, err = b.tx.ExecContext(ctx, q, args...)
		}
		if err != nil {
			return fmt.Errorf("insert into %s: %w", b.table, err)
		}
		b.rows = b.rows[n:]
	}
	return nil
}

func flushAll(ctx context.Context, bs ...*bulk) error {
	for _, b := range bs {
		if err := b.flush(ctx); err != nil {
			return err
		}
	}
	return nil
}
