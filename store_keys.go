package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// API keys (§3.1). The token itself is never stored: only its hash.

const keyColumns = "id, name, role, created_at, expires_at, last_used_at, revoked_at"

func scanKey(row scanner) (*apiKey, error) {
	var k apiKey
	var exp, used, rev sql.NullInt64
	if err := row.Scan(&k.ID, &k.Name, &k.Role, &k.CreatedAt, &exp, &used, &rev); err != nil {
		return nil, err
	}
	k.ExpiresAt, k.LastUsedAt, k.RevokedAt = nullInt(exp), nullInt(used), nullInt(rev)
	return &k, nil
}

// keyByHash returns the key with the given hash, or a nil key when there is
// none. It reads through the key pool, which nothing else uses.
func (s *store) keyByHash(ctx context.Context, hash string) (*apiKey, error) {
	k, _, err := queryOne(dbq{ctx, s.keys}, "look up API key", scanKey, "SELECT "+keyColumns+" FROM api_key WHERE key_hash = ?", hash)
	return k, err
}

// touchKey records that the key was used now, at most once a minute. It is
// best effort and must never make a request wait: if the writer is busy (a
// group commit, or another process holding the database write lock) it skips
// the update, which the key's next request will retry.
func (s *store) touchKey(ctx context.Context, id int64) error {
	if !s.mu.TryLock() {
		return nil
	}
	defer s.mu.Unlock()
	// Fail at once instead of waiting out the busy timeout for another
	// process's lock, then restore the timeout for the real writes.
	if _, err := s.conn.ExecContext(ctx, "PRAGMA busy_timeout = 0"); err != nil {
		return err
	}
	defer s.conn.ExecContext(context.Background(), "PRAGMA busy_timeout = 5000")
	t, err := s.begin(ctx)
	if errors.Is(busyErr(err), errBusy) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := t.exec(`UPDATE api_key SET last_used_at = ?
		WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)`, t.now, id, t.now-60_000); err != nil {
		t.rollback()
		return err
	}
	if err := t.commit(); err != nil && !errors.Is(busyErr(err), errBusy) {
		return err
	}
	return nil
}

// countKeys returns the number of key rows, revoked and expired included.
func (d dbq) countKeys() (int, error) {
	var n int
	if err := d.queryRow("SELECT count(*) FROM api_key").Scan(&n); err != nil {
		return 0, fmt.Errorf("count keys: %w", err)
	}
	return n, nil
}

// keyNameInUse reports whether an unrevoked key has the name.
func (d dbq) keyNameInUse(name string) (bool, error) {
	_, found, err := queryOne(d, "check key name", scanInt64, "SELECT 1 FROM api_key WHERE name = ? AND revoked_at IS NULL", name)
	return found, err
}

// insertKey stores a key by its hash and returns its id.
func (t *txn) insertKey(hash, name, role string, expiresAt *int64) (int64, error) {
	res, err := t.exec(`INSERT INTO api_key (key_hash, name, role, created_at, expires_at)
		VALUES (?, ?, ?, ?, ?)`, hash, name, role, t.now, expiresAt)
	if err != nil {
		return 0, fmt.Errorf("insert key: %w", err)
	}
	id, err := res.LastInsertId()
	if err != nil {
		return 0, fmt.Errorf("insert key: %w", err)
	}
	return id, nil
}

// keyByID returns the key, or a nil key when there is none.
func (d dbq) keyByID(id int64) (*apiKey, error) {
	k, _, err := queryOne(d, "load key", scanKey, "SELECT "+keyColumns+" FROM api_key WHERE id = ?", id)
	return k, err
}

// otherLastingAdmins counts the unrevoked admin keys other than id that
// never expire.
func (d dbq) otherLastingAdmins(id int64) (int, error) {
	var n int
	if err := d.queryRow(`SELECT count(*) FROM api_key WHERE role = 'admin' AND id <> ?
		AND revoked_at IS NULL AND expires_at IS NULL`, id).Scan(&n); err != nil {
		return 0, fmt.Errorf("count admin keys: %w", err)
	}
	return n, nil
}

// revokeKey sets the key's revoked_at to now.
func (t *txn) revokeKey(id int64) error {
	if _, err := t.exec("UPDATE api_key SET revoked_at = ? WHERE id = ?", t.now, id); err != nil {
		return fmt.Errorf("revoke key: %w", err)
	}
	return nil
}

// keys returns every key by id, revoked and expired included.
func (d dbq) keys() ([]*apiKey, error) {
	return queryAll(d, "list keys", scanKey, "SELECT "+keyColumns+" FROM api_key ORDER BY id")
}
