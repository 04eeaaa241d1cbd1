package main

import (
	"bytes"
	"context"
	"database/sql"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"modernc.org/sqlite"
)

//go:embed schema.sql
var schemaSQL string

// migrations are applied in order; migrations[i] brings the schema from
// user_version i to i+1. The first release ships one: the whole schema.
var migrations = []string{schemaSQL}

// store owns the SQLite database. Writes go through one connection and are
// serialised by mu, which is held from BEGIN IMMEDIATE until the derived
// in-memory state (the fleet index, metrics) has been updated after the
// commit, so that state always reflects exactly the committed transactions in
// commit order. Reads use a separate pool and never wait for the writer (WAL).
type store struct {
	path    string
	db      *sql.DB   // the writer pool: one connection, held by conn
	conn    *sql.Conn // the single writer connection; transactions are explicit
	ckpt    *sql.Conn // the checkpointer's connection
	ro      *sql.DB   // read pool
	mu      sync.Mutex
	now     func() time.Time
	metrics *metrics
	fleet   *fleet
	reports *reportQueue
	stmts   writerStmts

	// onWatchedReport is called after the commit of a report from a machine
	// whose batch is being evaluated: it wakes the rollout executor.
	onWatchedReport func()
}

// sqliteHeader is the first 16 bytes of every SQLite 3 database file.
var sqliteHeader = []byte("SQLite format 3\x00")

// openStore opens (creating if needed) the database at path, runs the startup
// checks and the migrations, and rebuilds the derived in-memory state. A file
// it refuses (not SQLite, a newer or unknown schema) is left byte-for-byte
// unchanged: nothing is written before those checks pass.
func openStore(ctx context.Context, path string, now func() time.Time, m *metrics) (*store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create database directory for %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	head := make([]byte, len(sqliteHeader))
	n, err := io.ReadFull(f, head)
	f.Close()
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, fmt.Errorf("read database %s: %w", path, err)
	}
	if n > 0 && !bytes.Equal(head[:n], sqliteHeader) || n > 0 && n < len(sqliteHeader) {
		return nil, fmt.Errorf("%s is not a SQLite database", path)
	}
	if n > 0 {
		if err := probeSchema(ctx, path); err != nil {
			return nil, err
		}
	}

	// Every connection gets the same pragmas. WAL lets readers run beside the
	// writer; synchronous=FULL makes every commit durable before we answer;
	// busy_timeout makes us wait (up to 5 s) for another process, such as
	// `keys create` or sqlite3, instead of failing at once; _txlock=immediate
	// makes every write transaction BEGIN IMMEDIATE so it takes the write lock
	// up front and never fails half-way with SQLITE_BUSY on lock upgrade.
	base := "file:" + (&url.URL{Path: path}).EscapedPath()
	pragmas := "_busy_timeout=5000&_foreign_keys=1&_journal_mode=WAL&_synchronous=FULL"
	db, err := sql.Open("sqlite", base+"?"+pragmas+"&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	db.SetMaxOpenConns(2) // the writer and the checkpointer
	db.SetMaxIdleConns(2)
	db.SetConnMaxLifetime(0)
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		db.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	if mode != "wal" {
		db.Close()
		return nil, fmt.Errorf("open database %s: journal_mode is %q, want wal", path, mode)
	}
	// The writer runs BEGIN IMMEDIATE/COMMIT/ROLLBACK itself on one dedicated
	// connection, so that after a failed COMMIT (a full disk, a read-only
	// file) it can always roll back and leave the connection usable.
	conn, err := db.Conn(ctx)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	// runCheckpointer copies the WAL into the database file from its own
	// connection, on the other core, so the writer's own automatic checkpoint
	// (needed to start the WAL over: a checkpoint beside a busy writer never
	// catches up with it) has little left to copy inside a commit that
	// reports are waiting for. A larger page cache keeps the indexes of a big
	// fleet in memory.
	ckpt, err := db.Conn(ctx)
	if err == nil {
		_, err = conn.ExecContext(ctx, "PRAGMA wal_autocheckpoint = 4000") // pages: about 16 MiB
	}
	if err == nil {
		_, err = conn.ExecContext(ctx, "PRAGMA cache_size = -65536") // KiB
	}
	if err == nil {
		_, err = conn.ExecContext(ctx, "PRAGMA journal_size_limit = 67108864") // truncate a reset WAL to 64 MiB
	}
	if err != nil {
		conn.Close()
		db.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	ro, err := sql.Open("sqlite", base+"?"+pragmas+"&_query_only=1")
	if err != nil {
		ckpt.Close()
		conn.Close()
		db.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	ro.SetMaxOpenConns(8)
	ro.SetMaxIdleConns(8)

	s := &store{path: path, db: db, conn: conn, ckpt: ckpt, ro: ro, now: now, metrics: m, fleet: newFleet()}
	s.reports = newReportQueue()
	if err := s.migrate(ctx); err != nil {
		s.close()
		return nil, err
	}
	if err := s.prepare(ctx); err != nil {
		s.close()
		return nil, err
	}
	if err := s.loadFleet(ctx); err != nil {
		s.close()
		return nil, fmt.Errorf("load machines: %w", err)
	}
	return s, nil
}

// probeSchema reads the schema version of an existing database through a
// read-only connection with no pragmas, so that a database we refuse is not
// modified (not even converted to WAL).
func probeSchema(ctx context.Context, path string) error {
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() + "?mode=ro&_busy_timeout=5000"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return fmt.Errorf("open database %s: %w", path, err)
	}
	defer db.Close()
	var v, tables int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("read database %s: %w", path, err)
	}
	if err := db.QueryRowContext(ctx,
		"SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'").Scan(&tables); err != nil {
		return fmt.Errorf("read database %s: %w", path, err)
	}
	if v > len(migrations) {
		return fmt.Errorf("database schema version %d is newer than this binary supports (%d)", v, len(migrations))
	}
	if v == 0 && tables > 0 {
		return errors.New("database has an unknown schema; refusing to modify it")
	}
	return nil
}

// migrate applies the missing migrations, each in its own transaction with
// its user_version update. Running it again changes nothing.
func (s *store) migrate(ctx context.Context) error {
	var v int
	if err := s.conn.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("database schema version %d is newer than this binary supports (%d)", v, len(migrations))
	}
	for i := v; i < len(migrations); i++ {
		err := s.write(ctx, func(tx *txn) error {
			if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", i+1))
			return err
		})
		if err != nil {
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
	}
	return nil
}

// close checkpoints the WAL into the main file and closes both pools.
func (s *store) close() error {
	for _, st := range s.stmts.all() {
		if st != nil {
			st.Close()
		}
	}
	var err error
	if _, cerr := s.conn.ExecContext(context.Background(), "PRAGMA wal_checkpoint(TRUNCATE)"); cerr != nil {
		err = fmt.Errorf("checkpoint database: %w", cerr)
	}
	s.ro.Close()
	s.ckpt.Close()
	s.conn.Close()
	if cerr := s.db.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("close database: %w", cerr)
	}
	return err
}

// checkpointInterval is how often runCheckpointer copies the WAL into the
// database file.
const checkpointInterval = 500 * time.Millisecond

// runCheckpointer runs a PASSIVE checkpoint every interval until ctx ends.
// A passive checkpoint never waits for the writer or for readers; it copies
// what it can. close runs the final, truncating checkpoint.
func (s *store) runCheckpointer(ctx context.Context, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := s.ckpt.ExecContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)"); err != nil && ctx.Err() == nil {
			log.Warn("wal checkpoint failed", "err", err)
		}
	}
}

// isBusy reports whether err is SQLITE_BUSY (another process holds the write
// lock for longer than the busy timeout).
func isBusy(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == 5
}

// txn is one write transaction. Besides the SQL transaction it carries the
// transaction's single "now", an overlay of machine records changed by it (so
// that later statements in the same transaction see them), and the updates of
// derived state that must run only once the commit has succeeded.
type txn struct {
	*sql.Conn // the writer connection, inside BEGIN IMMEDIATE
	ctx       context.Context
	s         *store
	now       int64 // Unix milliseconds, one value per transaction
	machines  map[string]*machineRec
	undo      []undoEntry
	after     []func()
	audits    []string // actions of the audit rows written, for the metric
}

type undoEntry struct {
	id  string
	old *machineRec // nil: the id was not in the overlay
}

// write runs fn in one BEGIN IMMEDIATE transaction and commits it. If fn
// returns an error, everything is rolled back and the error returned as is
// (an *apiError keeps its status). Derived state is updated only after a
// successful commit, before the next write transaction can start.
func (s *store) write(ctx context.Context, fn func(tx *txn) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s.begin(ctx)
	if err != nil {
		return err
	}
	if err := fn(t); err != nil {
		t.rollback()
		return err
	}
	return t.commit()
}

// begin starts a write transaction; the caller holds s.mu.
func (s *store) begin(ctx context.Context) (*txn, error) {
	if _, err := s.conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		// The driver reports a context that ends during the call as an error
		// even when BEGIN itself succeeded. Roll back (a no-op otherwise) so
		// that the writer is never left inside a transaction, which would fail
		// every later write with "cannot start a transaction within a transaction".
		s.conn.ExecContext(context.Background(), "ROLLBACK")
		return nil, fmt.Errorf("begin transaction: %w", err)
	}
	return &txn{Conn: s.conn, ctx: ctx, s: s, now: s.now().UnixMilli(), machines: map[string]*machineRec{}}, nil
}

// rollback abandons the transaction. It does not use the request's context:
// a cancelled request must still release the write lock.
func (t *txn) rollback() {
	t.Conn.ExecContext(context.Background(), "ROLLBACK")
}

// commit commits and then applies the derived-state updates; the caller
// holds s.mu. A failed COMMIT is rolled back, so the connection is usable for
// the next transaction. The commit does not use the request's context: once
// every statement has run, a client going away does not undo the change.
func (t *txn) commit() error {
	start := time.Now() // a duration for the metric, not a timestamp
	if _, err := t.Conn.ExecContext(context.Background(), "COMMIT"); err != nil {
		t.rollback()
		return fmt.Errorf("commit: %w", err)
	}
	t.s.metrics.commitDuration.observe(time.Since(start).Seconds())
	for _, rec := range t.machines {
		t.s.fleet.put(rec)
	}
	for _, a := range t.audits {
		t.s.metrics.auditEvents.inc(a)
	}
	for _, f := range t.after {
		f()
	}
	return nil
}

// afterCommit registers f to run once the transaction has committed.
func (t *txn) afterCommit(f func()) { t.after = append(t.after, f) }

// savepoint runs fn under its own SAVEPOINT. If fn fails, its statements and
// its changes to the transaction's overlay and hooks are undone, the rest of
// the transaction is kept, and fn's error is returned.
func (t *txn) savepoint(fn func() error) error {
	undo, after, audits := len(t.undo), len(t.after), len(t.audits)
	if _, err := t.s.stmts.savepoint.ExecContext(t.ctx); err != nil {
		return fmt.Errorf("savepoint: %w", err)
	}
	if err := fn(); err != nil {
		if _, rerr := t.s.stmts.rollbackTo.ExecContext(context.Background()); rerr != nil {
			return fmt.Errorf("rollback to savepoint: %w (after %v)", rerr, err)
		}
		if _, rerr := t.s.stmts.release.ExecContext(context.Background()); rerr != nil {
			return fmt.Errorf("release savepoint: %w (after %v)", rerr, err)
		}
		for i := len(t.undo) - 1; i >= undo; i-- {
			u := t.undo[i]
			if u.old == nil {
				delete(t.machines, u.id)
			} else {
				t.machines[u.id] = u.old
			}
		}
		t.undo, t.after, t.audits = t.undo[:undo], t.after[:after], t.audits[:audits]
		return err
	}
	if _, err := t.s.stmts.release.ExecContext(t.ctx); err != nil {
		return fmt.Errorf("release savepoint: %w", err)
	}
	return nil
}

// machine returns the machine as this transaction sees it, or nil if it does
// not exist. The record must not be modified; use the txn setters.
func (t *txn) machine(id string) *machineRec {
	if m, ok := t.machines[id]; ok {
		return m
	}
	return t.s.fleet.get(id)
}

// stage records rec as the transaction's new version of the machine.
func (t *txn) stage(rec *machineRec) {
	t.undo = append(t.undo, undoEntry{id: rec.ID, old: t.machines[rec.ID]})
	t.machines[rec.ID] = rec
}

// insertMachine creates a machine with the given lifecycle and tags.
func (t *txn) insertMachine(id, lifecycle string, tags []string) (*machineRec, error) {
	if _, err := t.s.stmts.insertMachine.ExecContext(t.ctx, id, lifecycle, t.now); err != nil {
		return nil, fmt.Errorf("insert machine: %w", err)
	}
	rec := &machineRec{ID: id, Lifecycle: lifecycle, RegisteredAt: t.now, LastSuccess: -1, Tags: []string{}}
	t.stage(rec)
	if len(tags) > 0 {
		return t.setTags(rec, tags)
	}
	return rec, nil
}

// setTags replaces the machine's tag set (tags must be sorted and unique).
func (t *txn) setTags(m *machineRec, tags []string) (*machineRec, error) {
	if _, err := t.ExecContext(t.ctx, "DELETE FROM machine_tag WHERE machine_id = ?", m.ID); err != nil {
		return nil, fmt.Errorf("delete tags: %w", err)
	}
	for _, tag := range tags {
		if _, err := t.ExecContext(t.ctx, "INSERT INTO machine_tag (machine_id, tag) VALUES (?, ?)", m.ID, tag); err != nil {
			return nil, fmt.Errorf("insert tag: %w", err)
		}
	}
	rec := m.clone()
	rec.Tags = tags
	t.stage(rec)
	return rec, nil
}

// setLifecycle changes the lifecycle column; callers check the transition.
func (t *txn) setLifecycle(m *machineRec, to string) (*machineRec, error) {
	if _, err := t.ExecContext(t.ctx, "UPDATE machine SET lifecycle = ? WHERE machine_id = ?", to, m.ID); err != nil {
		return nil, fmt.Errorf("update lifecycle: %w", err)
	}
	rec := m.clone()
	rec.Lifecycle = to
	t.stage(rec)
	return rec, nil
}

// setDesired sets the machine's desired generation.
func (t *txn) setDesired(m *machineRec, hash string, cacheURL *string, actor string) (*machineRec, error) {
	if _, err := t.ExecContext(t.ctx, `INSERT INTO desired_generation (machine_id, hash, cache_url, set_at, set_by)
		VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (machine_id) DO UPDATE SET hash = excluded.hash, cache_url = excluded.cache_url,
			set_at = excluded.set_at, set_by = excluded.set_by`,
		m.ID, hash, cacheURL, t.now, actor); err != nil {
		return nil, fmt.Errorf("set desired generation: %w", err)
	}
	rec := m.clone()
	rec.Desired = &desiredGen{Hash: hash, CacheURL: cacheURL, SetAt: t.now, SetBy: actor}
	t.stage(rec)
	return rec, nil
}

// clearDesired removes the machine's desired generation, if any.
func (t *txn) clearDesired(m *machineRec) (*machineRec, error) {
	if _, err := t.ExecContext(t.ctx, "DELETE FROM desired_generation WHERE machine_id = ?", m.ID); err != nil {
		return nil, fmt.Errorf("clear desired generation: %w", err)
	}
	rec := m.clone()
	rec.Desired = nil
	t.stage(rec)
	return rec, nil
}

// loadFleet rebuilds the machine index from the database at startup.
func (s *store) loadFleet(ctx context.Context) error {
	ms := map[string]*machineRec{}
	rows, err := s.ro.QueryContext(ctx, `SELECT machine_id, lifecycle, registered_at, current_generation,
		last_success, last_seen, last_report_agent_ts, agent_version, uptime_seconds FROM machine`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var m machineRec
		var success, seen, agentTS sql.NullInt64
		if err := rows.Scan(&m.ID, &m.Lifecycle, &m.RegisteredAt, &m.CurrentGen, &success, &seen, &agentTS,
			&m.AgentVersion, &m.Uptime); err != nil {
			rows.Close()
			return err
		}
		m.LastSuccess = -1
		if success.Valid {
			m.LastSuccess = int8(success.Int64)
		}
		m.LastSeen, m.AgentTS = seen.Int64, agentTS.Int64
		m.Tags = []string{}
		ms[m.ID] = &m
	}
	if err := rows.Close(); err != nil {
		return err
	}
	rows, err = s.ro.QueryContext(ctx, "SELECT machine_id, tag FROM machine_tag ORDER BY machine_id, tag")
	if err != nil {
		return err
	}
	for rows.Next() {
		var id, tag string
		if err := rows.Scan(&id, &tag); err != nil {
			rows.Close()
			return err
		}
		if m := ms[id]; m != nil {
			m.Tags = append(m.Tags, tag)
		}
	}
	if err := rows.Close(); err != nil {
		return err
	}
	rows, err = s.ro.QueryContext(ctx, "SELECT machine_id, hash, cache_url, set_at, set_by FROM desired_generation")
	if err != nil {
		return err
	}
	for rows.Next() {
		var id string
		var d desiredGen
		var cache sql.NullString
		if err := rows.Scan(&id, &d.Hash, &cache, &d.SetAt, &d.SetBy); err != nil {
			rows.Close()
			return err
		}
		if cache.Valid {
			d.CacheURL = &cache.String
		}
		if m := ms[id]; m != nil {
			m.Desired = &d
		}
	}
	if err := rows.Close(); err != nil {
		return err
	}
	s.fleet.reset(ms)
	return s.refreshRolloutMembership(ctx, s.ro, "")
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

// queryer is what *sql.DB, *sql.Tx and the write transaction offer for reads.
type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// nullStr converts a nullable column to *string.
func nullStr(ns sql.NullString) *string {
	if !ns.Valid {
		return nil
	}
	s := ns.String
	return &s
}

// nullInt converts a nullable column to *int64.
func nullInt(n sql.NullInt64) *int64 {
	if !n.Valid {
		return nil
	}
	v := n.Int64
	return &v
}
