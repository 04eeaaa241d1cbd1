package main

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"strings"
)

// The audit log (§10). Rows are append-only: triggers in schema.sql refuse
// every UPDATE, DELETE and REPLACE, even from sqlite3. Since migration 3
// every row is hash-chained to the one before it (audit_chain.go).

// insertAudit appends one audit row in the mutation's transaction, chained
// to the newest chained row. It is the only statement that writes the audit
// log.
//
// The previous hash and the next id are read inside the transaction rather
// than kept in memory: a rolled-back transaction then never
// leaves a stale head behind, and rows written by another process (`keys
// create` while the server runs) are chained correctly. The id is chosen
// here, as AUTOINCREMENT would (above both the largest id and the largest id
// ever used), because it is part of the hashed encoding.
func (t *txn) insertAudit(actor, action, target string, detail *string) error {
	if t.chain == nil {
		var maxID, maxSeq sql.NullInt64
		var prev sql.NullString
		if err := t.s.stmts.auditHead.QueryRowContext(t.ctx).Scan(&maxID, &maxSeq, &prev); err != nil {
			return fmt.Errorf("record audit %s: read chain head: %w", action, err)
		}
		t.chain = &chainHead{id: max(maxID.Int64, maxSeq.Int64), hash: auditGenesis}
		if prev.Valid {
			t.chain.hash = prev.String
		}
	}
	r := chainRow{id: t.chain.id + 1, timestamp: t.now, actor: actor, action: action, target: target, detail: detail}
	hash := auditHash(t.chain.hash, r)
	if _, err := t.s.stmts.insertAudit.ExecContext(t.ctx, r.id, r.timestamp, actor, action, target, detail, t.chain.hash, hash); err != nil {
		return fmt.Errorf("record audit %s: %w", action, err)
	}
	t.chain.id, t.chain.hash = r.id, hash
	return nil
}

// chainHead is the newest audit row a transaction has seen or written: the
// head is read once per transaction (nothing else writes while it holds the
// write lock) and then follows the rows it inserts.
type chainHead struct {
	id   int64
	hash string
}

// The statements of insertAudit, prepared once on the writer connection.
const (
	auditHeadQuery = `SELECT (SELECT max(id) FROM audit_event),
		(SELECT seq FROM sqlite_sequence WHERE name = 'audit_event'),
		(SELECT hash FROM audit_event WHERE hash IS NOT NULL ORDER BY id DESC LIMIT 1)`
	auditInsertQuery = `INSERT INTO audit_event (id, timestamp, actor, action, target, detail, prev_hash, hash)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`
)

// auditHead returns the newest chained row, or seq 0 with the genesis hash
// when no row is chained yet.
func (d dbq) auditHead() (auditHeadInfo, error) {
	h, found, err := queryOne(d, "read audit head", func(row scanner) (auditHeadInfo, error) {
		var h auditHeadInfo
		err := row.Scan(&h.Seq, &h.Hash)
		return h, err
	}, "SELECT id, hash FROM audit_event WHERE hash IS NOT NULL ORDER BY id DESC LIMIT 1")
	if !found && err == nil {
		h = auditHeadInfo{Seq: 0, Hash: auditGenesis}
	}
	return h, err
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
	q := "SELECT " + auditColumns + " FROM audit_event"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY id DESC LIMIT ?"
	args = append(args, limit)
	return queryAll(d, "query audit", scanAuditEvent, q, args...)
}

// auditColumns are the columns scanAuditEvent reads, in its order.
const auditColumns = "id, timestamp, actor, action, target, detail, prev_hash, hash"

// scanAuditEvent reads one row of auditColumns.
func scanAuditEvent(row scanner) (auditEvent, error) {
	var ev auditEvent
	var ts int64
	var detail, prev, hash sql.NullString
	err := row.Scan(&ev.ID, &ts, &ev.Actor, &ev.Action, &ev.Target, &detail, &prev, &hash)
	ev.Timestamp, ev.Detail, ev.PrevHash, ev.Hash = fmtTime(ts), nullStr(detail), nullStr(prev), nullStr(hash)
	return ev, err
}

// walkAuditDB opens the database at path read-only and calls fn for every
// audit row in ascending id order, from one read snapshot, with find (a
// lookup of the id of the row holding a given hash, for explaining breaks).
// It works beside a running server: it takes no lock file and writes
// nothing. A database older than migration 3 has no hash columns: every
// row comes back unchained. It returns fs.ErrNotExist (wrapped) when path
// is missing.
//
// While a server (or a crashed one) has the database open, its -wal and
// -shm files exist, and mode=ro reads through them like any reader. When
// there is no -wal, mode=ro would create -wal and -shm files, owned by
// whoever runs the verifier, so the file is opened immutable instead (the
// main file alone, no companions, no locks); if a server started meanwhile
// (a -wal appeared, or the file changed), the walk is repeated with mode=ro.
func walkAuditDB(ctx context.Context, path string, fn func(r chainRow, find func(string) (int64, bool, error)) error) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("open database %s: %w", path, err)
	}
	if _, err := os.Stat(path + "-wal"); err == nil {
		return walkAuditDSN(ctx, path, "mode=ro", fn)
	}
	var seen []chainRow
	err = walkAuditDSN(ctx, path, "mode=ro&immutable=1", func(r chainRow, find func(string) (int64, bool, error)) error {
		seen = append(seen, r)
		return nil
	})
	if err != nil {
		return err
	}
	after, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("open database %s: %w", path, err)
	}
	if _, werr := os.Stat(path + "-wal"); werr == nil || !after.ModTime().Equal(st.ModTime()) || after.Size() != st.Size() {
		return walkAuditDSN(ctx, path, "mode=ro", fn)
	}
	byHash := map[string]int64{}
	for _, r := range seen {
		if r.hash != nil {
			if _, dup := byHash[*r.hash]; !dup {
				byHash[*r.hash] = r.id
			}
		}
	}
	find := func(h string) (int64, bool, error) { id, ok := byHash[h]; return id, ok, nil }
	for _, r := range seen {
		if err := fn(r, find); err != nil {
			return err
		}
	}
	return nil
}

// walkAuditDSN is walkAuditDB through one connection opened with the given
// URI parameters.
func walkAuditDSN(ctx context.Context, path, params string, fn func(r chainRow, find func(string) (int64, bool, error)) error) error {
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + params + "&_busy_timeout=5000"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return fmt.Errorf("open database %s: %w", path, err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("open database %s: %w", path, err)
	}
	defer tx.Rollback()
	d := dbq{ctx, tx}
	var version, hashCols int
	if err := d.queryRow("PRAGMA user_version").Scan(&version); err != nil {
		return fmt.Errorf("read database %s: %w", path, err)
	}
	if version == 0 {
		return fmt.Errorf("%s is not a control plane database (schema version 0)", path)
	}
	if err := d.queryRow("SELECT count(*) FROM pragma_table_info('audit_event') WHERE name IN ('prev_hash', 'hash')").Scan(&hashCols); err != nil {
		return fmt.Errorf("read database %s: %w", path, err)
	}
	cols := "NULL, NULL"
	if hashCols == 2 {
		cols = "prev_hash, hash"
	}
	// Each page is read whole before fn (and so find) runs another query on
	// the same connection.
	find := func(h string) (int64, bool, error) {
		if hashCols != 2 {
			return 0, false, nil
		}
		return queryOne(d, "find audit hash", scanInt64, "SELECT id FROM audit_event WHERE hash = ? ORDER BY id LIMIT 1", h)
	}
	const page = 5000
	after := int64(-1 << 63)
	for {
		rows, err := queryAll(d, "read audit rows", scanChainRow,
			"SELECT id, timestamp, actor, action, target, detail, "+cols+" FROM audit_event WHERE id > ? ORDER BY id LIMIT ?", after, page)
		if err != nil {
			return err
		}
		for _, r := range rows {
			if err := fn(r, find); err != nil {
				return err
			}
		}
		if len(rows) < page {
			return nil
		}
		after = rows[len(rows)-1].id
	}
}

func scanChainRow(row scanner) (chainRow, error) {
	var r chainRow
	var detail, prev, hash sql.NullString
	err := row.Scan(&r.id, &r.timestamp, &r.actor, &r.action, &r.target, &detail, &prev, &hash)
	r.detail, r.prevHash, r.hash = nullStr(detail), nullStr(prev), nullStr(hash)
	return r, err
}
