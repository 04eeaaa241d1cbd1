package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"strconv"
	"time"
)

// errNoRows is returned by store lookups that find nothing.
var errNoRows = sql.ErrNoRows

// apiKey is a stored API key (never the token itself).
type apiKey struct {
	ID         int64
	Name       string
	Role       string
	CreatedAt  int64
	ExpiresAt  *int64
	LastUsedAt *int64
	RevokedAt  *int64
}

// active reports whether the key can authenticate at now (Unix ms).
func (k *apiKey) active(now int64) bool {
	return k.RevokedAt == nil && (k.ExpiresAt == nil || *k.ExpiresAt > now)
}

const keyColumns = "id, name, role, created_at, expires_at, last_used_at, revoked_at"

func scanKey(row interface{ Scan(...any) error }) (*apiKey, error) {
	var k apiKey
	var exp, used, rev sql.NullInt64
	if err := row.Scan(&k.ID, &k.Name, &k.Role, &k.CreatedAt, &exp, &used, &rev); err != nil {
		return nil, err
	}
	k.ExpiresAt, k.LastUsedAt, k.RevokedAt = nullInt(exp), nullInt(used), nullInt(rev)
	return &k, nil
}

// keyByHash returns the key with the given hash, or errNoRows.
func (s *store) keyByHash(ctx context.Context, hash string) (*apiKey, error) {
	k, err := scanKey(s.ro.QueryRowContext(ctx, "SELECT "+keyColumns+" FROM api_key WHERE key_hash = ?", hash))
	if err != nil && !errors.Is(err, errNoRows) {
		return nil, fmt.Errorf("look up API key: %w", err)
	}
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
	if isBusy(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := t.ExecContext(ctx, `UPDATE api_key SET last_used_at = ?
		WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)`, t.now, id, t.now-60_000); err != nil {
		t.rollback()
		return err
	}
	if err := t.commit(); err != nil && !isBusy(err) {
		return err
	}
	return nil
}

// countKeys returns the number of key rows, revoked and expired included.
func (s *store) countKeys(ctx context.Context) (int, error) {
	var n int
	err := s.ro.QueryRowContext(ctx, "SELECT count(*) FROM api_key").Scan(&n)
	return n, err
}

// keyCreated is the response that shows a key, exactly once (§5.8).
type keyCreated struct {
	ID        int64   `json:"id"`
	Key       string  `json:"key"`
	Name      string  `json:"name"`
	Role      string  `json:"role"`
	CreatedAt string  `json:"created_at"`
	ExpiresAt *string `json:"expires_at"`
}

// insertKey creates a key in tx. It returns a 409 *apiError if an unrevoked
// key already has the name.
func insertKey(tx *txn, name, role string, expiresAt *int64) (*keyCreated, error) {
	var one int
	err := tx.QueryRowContext(tx.ctx, "SELECT 1 FROM api_key WHERE name = ? AND revoked_at IS NULL", name).Scan(&one)
	if err == nil {
		return nil, conflict("key name already in use")
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("check key name: %w", err)
	}
	token := newKeyToken()
	res, err := tx.ExecContext(tx.ctx, `INSERT INTO api_key (key_hash, name, role, created_at, expires_at)
		VALUES (?, ?, ?, ?, ?)`, hashKey(token), name, role, tx.now, expiresAt)
	if err != nil {
		return nil, fmt.Errorf("insert key: %w", err)
	}
	id, err := res.LastInsertId()
	if err != nil {
		return nil, fmt.Errorf("insert key: %w", err)
	}
	return &keyCreated{ID: id, Key: token, Name: name, Role: role, CreatedAt: fmtTime(tx.now), ExpiresAt: fmtTimePtr(expiresAt)}, nil
}

// createKeyAudited inserts a key and its key.created audit row in tx.
func createKeyAudited(tx *txn, actor, name, role string, expiresAt *int64) (*keyCreated, error) {
	k, err := insertKey(tx, name, role, expiresAt)
	if err != nil {
		return nil, err
	}
	detail := fmt.Sprintf("name=%s role=%s", name, role)
	if expiresAt != nil {
		detail += " expires_at=" + fmtTime(*expiresAt)
	}
	return k, recordAudit(tx, actor, "key.created", strconv.FormatInt(k.ID, 10), &detail)
}

var roles = []string{"readonly", "deploy", "admin"}

// checkKeyName applies the key-name rule: 1–64 bytes of printable ASCII.
func checkKeyName(field, name string) error {
	if name == "" || len(name) > 64 {
		return badRequest("%s: must be 1 to 64 bytes", field)
	}
	for i := 0; i < len(name); i++ {
		if name[i] < 0x20 || name[i] > 0x7e {
			return badRequest("%s: must be printable ASCII", field)
		}
	}
	return nil
}

func checkRole(field, role string) error {
	for _, r := range roles {
		if r == role {
			return nil
		}
	}
	return badRequest("%s: must be readonly, deploy or admin", field)
}

// checkExpiry parses an expires_at value, which must be strictly in the future.
func checkExpiry(field, v string, now time.Time) (int64, error) {
	ms, err := parseTime(v)
	if err != nil {
		return 0, badRequest("%s: %v", field, err)
	}
	if ms <= now.UnixMilli() {
		return 0, badRequest("%s: must be in the future", field)
	}
	return ms, nil
}

// createKeyRequest is the body of POST /api/v1/keys.
type createKeyRequest struct {
	Name      *string `json:"name"`
	Role      *string `json:"role"`
	ExpiresAt *string `json:"expires_at"`
}

func (c *createKeyRequest) validate() error {
	if c.Name == nil {
		return badRequest("name: required")
	}
	if err := checkKeyName("name", *c.Name); err != nil {
		return err
	}
	if c.Role == nil {
		c.Role = str("readonly")
	}
	return checkRole("role", *c.Role)
}

// createKey handles POST /api/v1/keys.
func (s *server) createKey(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req createKeyRequest
	if err := decode(w, r, maxBody, false, &req); err != nil {
		return err
	}
	var expires *int64
	if req.ExpiresAt != nil {
		ms, err := checkExpiry("expires_at", *req.ExpiresAt, s.now())
		if err != nil {
			return err
		}
		expires = &ms
	}
	var created *keyCreated
	err := s.st.write(r.Context(), func(tx *txn) error {
		var err error
		created, err = createKeyAudited(tx, p.actor, *req.Name, *req.Role, expires)
		return err
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, created)
}

// keyInfo is one entry of GET /api/v1/keys: never the token or its hash.
type keyInfo struct {
	ID         int64   `json:"id"`
	Name       string  `json:"name"`
	Role       string  `json:"role"`
	CreatedAt  string  `json:"created_at"`
	ExpiresAt  *string `json:"expires_at"`
	LastUsedAt *string `json:"last_used_at"`
	RevokedAt  *string `json:"revoked_at"`
}

// listKeys handles GET /api/v1/keys: every key by id, revoked and expired included.
func (s *server) listKeys(w http.ResponseWriter, r *http.Request, _ *principal) error {
	rows, err := s.st.ro.QueryContext(r.Context(), "SELECT "+keyColumns+" FROM api_key ORDER BY id")
	if err != nil {
		return fmt.Errorf("list keys: %w", err)
	}
	defer rows.Close()
	out := []keyInfo{}
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return fmt.Errorf("list keys: %w", err)
		}
		out = append(out, keyInfo{ID: k.ID, Name: k.Name, Role: k.Role, CreatedAt: fmtTime(k.CreatedAt),
			ExpiresAt: fmtTimePtr(k.ExpiresAt), LastUsedAt: fmtTimePtr(k.LastUsedAt), RevokedAt: fmtTimePtr(k.RevokedAt)})
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list keys: %w", err)
	}
	return writeJSON(w, http.StatusOK, out)
}

// parseKeyID applies the key-id rule: a decimal integer from 1 to 2^63-1.
func parseKeyID(v string) (int64, error) {
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil || id < 1 || !isDigits(v) {
		return 0, badRequest("invalid key id")
	}
	return id, nil
}

// revokeKey handles DELETE /api/v1/keys/{id}.
func (s *server) revokeKey(w http.ResponseWriter, r *http.Request, p *principal) error {
	id, err := parseKeyID(r.PathValue("id"))
	if err != nil {
		return err
	}
	err = s.st.write(r.Context(), func(tx *txn) error {
		k, err := scanKey(tx.QueryRowContext(tx.ctx, "SELECT "+keyColumns+" FROM api_key WHERE id = ?", id))
		if errors.Is(err, sql.ErrNoRows) {
			return notFound("key %d not found", id)
		}
		if err != nil {
			return fmt.Errorf("load key: %w", err)
		}
		if k.RevokedAt != nil {
			return nil // already revoked: no change, no audit row
		}
		if k.Role == "admin" && k.active(tx.now) {
			var others int
			if err := tx.QueryRowContext(tx.ctx, `SELECT count(*) FROM api_key WHERE role = 'admin' AND id <> ?
				AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)`, id, tx.now).Scan(&others); err != nil {
				return fmt.Errorf("count admin keys: %w", err)
			}
			if others == 0 {
				return conflict("cannot revoke the last active admin key")
			}
		}
		if _, err := tx.ExecContext(tx.ctx, "UPDATE api_key SET revoked_at = ? WHERE id = ?", tx.now, id); err != nil {
			return fmt.Errorf("revoke key: %w", err)
		}
		return recordAudit(tx, p.actor, "key.revoked", strconv.FormatInt(id, 10), str(fmt.Sprintf("name=%s role=%s", k.Name, k.Role)))
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// keysCreate is the `keys create` subcommand: an offline emergency key,
// written straight into the database (the server may be running).
func keysCreate(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var name, role, expiresAt, dbPath string
	_, err := parseEnvFlags("keys create", args, getenv, []envFlag{
		{"name", "", "", &name},
		{"role", "", "readonly", &role},
		{"expires-at", "", "", &expiresAt},
		{"db-path", "NIXFLEET_CP_DB_PATH", defaultDBPath, &dbPath},
	})
	if err != nil {
		return err
	}
	if name == "" {
		return usagef("--name is required")
	}
	if err := checkKeyName("--name", name); err != nil {
		return usagef("%v", err)
	}
	if err := checkRole("--role", role); err != nil {
		return usagef("%v", err)
	}
	var expires *int64
	if expiresAt != "" {
		ms, err := checkExpiry("--expires-at", expiresAt, time.Now())
		if err != nil {
			return usagef("%v", err)
		}
		expires = &ms
	}
	if _, err := os.Stat(dbPath); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("database %s does not exist", dbPath)
	} else if err != nil {
		return fmt.Errorf("open database %s: %w", dbPath, err)
	}
	st, err := openStore(ctx, dbPath, time.Now, newMetrics())
	if err != nil {
		return err
	}
	defer st.close()
	var created *keyCreated
	err = st.write(ctx, func(tx *txn) error {
		var err error
		created, err = createKeyAudited(tx, "system:cli", name, role, expires)
		return err
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, created.Key)
	fmt.Fprintf(stderr, "created key id=%d name=%s role=%s\n", created.ID, created.Name, created.Role)
	return nil
}
