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
	"syscall"
	"time"

	"modernc.org/sqlite"
)

// The store owns the SQLite database: opening and checking it, migrations,
// write transactions and read snapshots. All SQL lives in store*.go; the
// domain layer calls the methods defined there on *txn (inside a write
// transaction) and on dbq (any read).

//go:embed schema.sql
var schemaSQL string

//go:embed migration_3_audit_chain.sql
var auditChainSQL string

// migrations are applied in order; migrations[i] brings the schema from
// user_version i to i+1. The schema is released: every change is a new entry
// here, never an edit.
//
//  1. schema.sql: the whole schema of the first release.
//  2. Drop health_report_machine_received: each health report insert touched
//     a random leaf of it; retention finds a machine's newest health report
//     through the report index instead.
//  3. migration_3_audit_chain.sql: prev_hash and hash on audit_event.
//  4. migration_4_rollout_event_ids.sql: rollout_event ids never reused
//     (AUTOINCREMENT), so an event stream can resume after any id.
var migrations = []string{schemaSQL, `DROP INDEX health_report_machine_received;`, auditChainSQL, migrationRolloutEventIDs}

// store owns the database. Writes go through one connection and are
// serialised by mu, which is held from BEGIN IMMEDIATE until the derived
// in-memory state (the fleet index, metrics) has been updated after the
// commit, so that state always reflects exactly the committed transactions in
// commit order. Reads use separate pools and never wait for the writer (WAL).
type store struct {
	path    string
	db      *sql.DB   // the writer pool: the writer and the checkpointer connections
	conn    *sql.Conn // the single writer connection; transactions are explicit
	ckpt    *sql.Conn // the checkpointer's connection
	ro      *sql.DB   // read pool
	keys    *sql.DB   // API-key lookups only, so they never queue behind long reads
	mu      sync.Mutex
	now     func() time.Time
	metrics *metrics
	fleet   *fleet
	reports *reportQueue
	events  *eventHub // the event stream's fan-out, fed after each commit
	stmts   writerStmts
	// lastReportID is the highest report id; the writer assigns the next ones.
	lastReportID int64
	rowStmts     map[rowStmtKey]*sql.Stmt // multi-row statements by shape and row count

	// wakeExecutor is called after a commit that gives the rollout executor
	// work: a report from a watched machine, a rollout created or resumed.
	wakeExecutor func()

	// log receives the progress lines of rollouts (rollout.go), written
	// after their commit. It discards them until newApp sets the process
	// logger (`keys create` never sets it).
	log *slog.Logger
}

// lockDatabase takes an exclusive lock on a file beside the database (path
// + ".lock"), held until unlock is called or the process ends. A second
// control plane on the same database fails here, before it opens anything;
// `keys create` and sqlite3 do not take the lock (SQLite's own locking covers
// them).
func lockDatabase(path string) (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create database directory for %s: %w", path, err)
	}
	f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock database %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("database %s is in use by another control plane process", path)
		}
		return nil, fmt.Errorf("lock database %s: %w", path, err)
	}
	return func() { f.Close() }, nil
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
	s := &store{path: path, now: now, metrics: m, fleet: newFleet(), reports: newReportQueue(),
		log: slog.New(slog.DiscardHandler), events: newEventHub(m)}
	fail := func(err error) (*store, error) {
		s.closePools()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	if s.db, err = sql.Open("sqlite", base+"?"+pragmas+"&_txlock=immediate"); err != nil {
		return fail(err)
	}
	s.db.SetMaxOpenConns(2) // the writer and the checkpointer
	s.db.SetMaxIdleConns(2)
	s.db.SetConnMaxLifetime(0)
	var mode string
	if err := s.db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fail(err)
	}
	if mode != "wal" {
		return fail(fmt.Errorf("journal_mode is %q, want wal", mode))
	}
	// The writer runs BEGIN IMMEDIATE/COMMIT/ROLLBACK itself on one dedicated
	// connection, so that after a failed COMMIT (a full disk, a read-only
	// file) it can always roll back and leave the connection usable.
	if s.conn, err = s.db.Conn(ctx); err != nil {
		return fail(err)
	}
	// runCheckpointer copies the WAL into the database file from its own
	// connection, on the other core, so the writer's own automatic checkpoint
	// (needed to start the WAL over: a checkpoint beside a busy writer never
	// catches up with it) has little left to copy inside a commit that
	// reports are waiting for. A larger page cache keeps the indexes of a big
	// fleet in memory.
	if s.ckpt, err = s.db.Conn(ctx); err != nil {
		return fail(err)
	}
	for _, p := range []string{
		"PRAGMA wal_autocheckpoint = 4000",     // pages: about 16 MiB
		"PRAGMA cache_size = -65536",           // KiB
		"PRAGMA journal_size_limit = 67108864", // truncate a reset WAL to 64 MiB
	} {
		if _, err := s.conn.ExecContext(ctx, p); err != nil {
			return fail(err)
		}
	}
	if s.ro, err = sql.Open("sqlite", base+"?"+pragmas+"&_query_only=1"); err != nil {
		return fail(err)
	}
	s.ro.SetMaxOpenConns(8)
	s.ro.SetMaxIdleConns(8)
	// Every authenticated request looks its key up here (§3.1: no cache may
	// hide a new or revoked key). A pool of its own means that slow readers
	// (exports, large listings) can never make authentication wait.
	if s.keys, err = sql.Open("sqlite", base+"?"+pragmas+"&_query_only=1"); err != nil {
		return fail(err)
	}
	s.keys.SetMaxOpenConns(2)
	s.keys.SetMaxIdleConns(2)

	if err := s.migrate(ctx); err != nil {
		s.closePools()
		return nil, err
	}
	if err := s.prepare(ctx); err != nil {
		s.closePools()
		return nil, err
	}
	if err := s.loadFleet(ctx); err != nil {
		s.closePools()
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
			if _, err := tx.exec(migrations[i]); err != nil {
				return err
			}
			_, err := tx.exec(fmt.Sprintf("PRAGMA user_version = %d", i+1))
			return err
		})
		if err != nil {
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
	}
	return nil
}

// closePools closes whatever openStore has opened so far.
func (s *store) closePools() {
	for _, st := range s.stmts.all() {
		if st != nil {
			st.Close()
		}
	}
	for _, st := range s.rowStmts {
		st.Close()
	}
	for _, c := range []*sql.Conn{s.ckpt, s.conn} {
		if c != nil {
			c.Close()
		}
	}
	for _, db := range []*sql.DB{s.keys, s.ro, s.db} {
		if db != nil {
			db.Close()
		}
	}
}

// close checkpoints the WAL into the main file and closes every pool.
func (s *store) close() error {
	var err error
	if _, cerr := s.conn.ExecContext(context.Background(), "PRAGMA wal_checkpoint(TRUNCATE)"); cerr != nil {
		err = fmt.Errorf("checkpoint database: %w", cerr)
	}
	s.closePools()
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

// busyErr wraps SQLITE_BUSY (another process holds the write lock for longer
// than the busy timeout) as errBusy; other errors pass through unchanged.
func busyErr(err error) error {
	var se *sqlite.Error
	if errors.As(err, &se) && se.Code()&0xff == 5 {
		return fmt.Errorf("%w: %v", errBusy, err)
	}
	return err
}

// busyErr wraps SQLITE_BUSY as the function busyErr does, and counts each
// refusal in nixfleet_db_busy_total (the NixfleetDatabaseBusy alert).
func (s *store) busyErr(err error) error {
	err = busyErr(err)
	if errors.Is(err, errBusy) {
		s.metrics.dbBusy.Add(1)
	}
	return err
}

// queryer is what *sql.DB, *sql.Tx and *sql.Conn offer for reads.
type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// dbq binds the read queries of store*.go to one connection or transaction
// and one context. Write transactions embed it, so a write reads its own
// uncommitted state.
type dbq struct {
	ctx context.Context
	q   queryer
}

func (d dbq) query(query string, args ...any) (*sql.Rows, error) {
	return d.q.QueryContext(d.ctx, query, args...)
}

func (d dbq) queryRow(query string, args ...any) *sql.Row {
	return d.q.QueryRowContext(d.ctx, query, args...)
}

// read runs fn in one read transaction, so that it sees one consistent
// snapshot. It holds a read connection only while fn runs: fn must not wait
// for a client.
func (s *store) read(ctx context.Context, fn func(d dbq) error) error {
	tx, err := s.ro.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin read: %w", err)
	}
	defer tx.Rollback()
	return fn(dbq{ctx, tx})
}

// readValue is read for a function that returns one value.
func readValue[T any](ctx context.Context, s *store, fn func(d dbq) (T, error)) (T, error) {
	var v T
	err := s.read(ctx, func(d dbq) error {
		var err error
		v, err = fn(d)
		return err
	})
	return v, err
}

// txn is one write transaction. Besides the SQL transaction it carries the
// transaction's single "now", an overlay of machine records changed by it (so
// that later statements in the same transaction see them), and the updates of
// derived state that must run only once the commit has succeeded.
type txn struct {
	dbq
	conn     *sql.Conn // the writer connection, inside BEGIN IMMEDIATE
	s        *store
	now      int64 // Unix milliseconds, one value per transaction
	machines map[string]*machineRec
	// reportRows are the report rows queued for the multi-row statements.
	reportRows *reportRows
	chain      *chainHead  // the audit chain's head, once read (insertAudit)
	before     []keyedHook // run last, before COMMIT
	after      []func()
	audits     []string // actions of the audit rows written, for the metric

	wroteRolloutEvents bool // for the event stream: read the new rows after the commit
}

type keyedHook struct {
	key string
	f   func() error
}

func (t *txn) exec(query string, args ...any) (sql.Result, error) {
	return t.conn.ExecContext(t.ctx, query, args...)
}

// write runs fn in one BEGIN IMMEDIATE transaction and commits it. If fn
// returns an error, everything is rolled back and the error returned as is.
// If fn panics, the transaction is rolled back and the writer released
// before the panic goes on, so one bug cannot wedge every later write.
// Derived state is updated only after a successful commit, before the next
// write transaction can start. SQLITE_BUSY comes back wrapped as errBusy.
func (s *store) write(ctx context.Context, fn func(tx *txn) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s.begin(ctx)
	if err != nil {
		return s.busyErr(err)
	}
	returned := false
	defer func() {
		if !returned {
			t.rollback()
		}
	}()
	err = fn(t)
	returned = true
	if err != nil {
		t.rollback()
		return s.busyErr(err)
	}
	return s.busyErr(t.commit())
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
	return &txn{dbq: dbq{ctx, s.conn}, conn: s.conn, s: s, now: s.now().UnixMilli(), machines: map[string]*machineRec{}}, nil
}

// rollback abandons the transaction. It does not use the request's context:
// a cancelled request must still release the write lock.
func (t *txn) rollback() {
	t.conn.ExecContext(context.Background(), "ROLLBACK")
}

// commit commits and then applies the derived-state updates; the caller
// holds s.mu. A failed COMMIT is rolled back, so the connection is usable for
// the next transaction. The commit does not use the request's context: once
// every statement has run, a client going away does not undo the change.
func (t *txn) commit() error {
	for i := 0; i < len(t.before); i++ {
		if err := t.before[i].f(); err != nil {
			t.rollback()
			return err
		}
	}
	start := time.Now() // a duration for the metric, not a timestamp
	if _, err := t.conn.ExecContext(context.Background(), "COMMIT"); err != nil {
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
	if len(t.audits) > 0 || t.wroteRolloutEvents {
		t.s.publishEvents(len(t.audits) > 0, t.wroteRolloutEvents)
	}
	return nil
}

// afterCommit registers f to run once the transaction has committed.
func (t *txn) afterCommit(f func()) { t.after = append(t.after, f) }

// beforeCommit registers f to run after everything else the transaction
// does and just before COMMIT; an error rolls the transaction back. f runs
// once per key, however often it is registered.
func (t *txn) beforeCommit(key string, f func() error) {
	for _, h := range t.before {
		if h.key == key {
			return
		}
	}
	t.before = append(t.before, keyedHook{key, f})
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

// scanner is a *sql.Row or *sql.Rows.
type scanner interface{ Scan(...any) error }

func scanInt64(row scanner) (int64, error) {
	var v int64
	err := row.Scan(&v)
	return v, err
}

func scanString(row scanner) (string, error) {
	var v string
	err := row.Scan(&v)
	return v, err
}

// queryOne runs query through d and scans its first row with scan; found is
// false when there is no row.
func queryOne[T any](d dbq, what string, scan func(scanner) (T, error), query string, args ...any) (v T, found bool, err error) {
	v, err = scan(d.queryRow(query, args...))
	if errors.Is(err, sql.ErrNoRows) {
		return v, false, nil
	}
	if err != nil {
		return v, false, fmt.Errorf("%s: %w", what, err)
	}
	return v, true, nil
}

// queryAll runs query through d and scans every row with scan; what names
// the query in errors.
func queryAll[T any](d dbq, what string, scan func(scanner) (T, error), query string, args ...any) ([]T, error) {
	rows, err := d.query(query, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}
