package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"time"
)

// API keys (§3): creation (bootstrap, the API, `keys create`), listing and
// revocation. Authentication itself is in auth.go.

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

// newKeyToken returns a fresh API key: "nfk-" and 64 lowercase hex digits.
func newKeyToken() string {
	var b [32]byte
	rand.Read(b[:]) // never fails (crypto/rand panics if the OS source breaks)
	return "nfk-" + hex.EncodeToString(b[:])
}

// hashKey is how tokens are stored and looked up: lowercase hex SHA-256 of
// the whole token, prefix included.
func hashKey(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
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

// createKeyTx creates a key in tx with its audit row: bootstrap for the
// first admin key, key.created otherwise. It returns a 409 *clientError if
// an unrevoked key already has the name.
func createKeyTx(tx *txn, actor, name, role string, expiresAt *int64) (*keyCreated, error) {
	if inUse, err := tx.keyNameInUse(name); err != nil {
		return nil, err
	} else if inUse {
		return nil, conflictf("key name already in use")
	}
	token := newKeyToken()
	id, err := tx.insertKey(hashKey(token), name, role, expiresAt)
	if err != nil {
		return nil, err
	}
	if actor == actorBootstrap {
		err = recordAudit(tx, actor, "bootstrap", name, str("first admin key created"))
	} else {
		detail := fmt.Sprintf("name=%s role=%s", name, role)
		if expiresAt != nil {
			detail += " expires_at=" + fmtTime(*expiresAt)
		}
		err = recordAudit(tx, actor, "key.created", strconv.FormatInt(id, 10), &detail)
	}
	return &keyCreated{ID: id, Key: token, Name: name, Role: role, CreatedAt: fmtTime(tx.now), ExpiresAt: fmtTimePtr(expiresAt)}, err
}

const actorBootstrap = "system:bootstrap"

// bootstrap creates the first admin key while the key table has no rows at
// all (§3.3). The check and the insert share one BEGIN IMMEDIATE
// transaction, so concurrent calls create exactly one key; the others get a
// 409 *clientError.
func (cp *controlPlane) bootstrap(ctx context.Context, name string) (*keyCreated, error) {
	var created *keyCreated
	err := cp.st.write(ctx, func(tx *txn) error {
		n, err := tx.countKeys()
		if err != nil {
			return err
		}
		if n > 0 {
			return conflictf("API keys already exist. Use an admin key to create more.")
		}
		created, err = createKeyTx(tx, actorBootstrap, name, "admin", nil)
		return err
	})
	return created, err
}

// bootstrapRequest is the optional body of POST /api/v1/keys/bootstrap.
type bootstrapRequest struct {
	Name *string `json:"name"`
}

func (b *bootstrapRequest) validate() error {
	if b.Name == nil || *b.Name == "" {
		b.Name = str("admin")
	}
	return checkKeyName("name", *b.Name)
}

var roles = []string{"readonly", "deploy", "admin"}

// checkKeyName applies the key-name rule: 1–64 bytes of printable ASCII.
func checkKeyName(field, name string) error {
	if name == "" || len(name) > 64 {
		return invalidf("%s: must be 1 to 64 bytes", field)
	}
	for i := 0; i < len(name); i++ {
		if name[i] < 0x20 || name[i] > 0x7e {
			return invalidf("%s: must be printable ASCII", field)
		}
	}
	return nil
}

func checkRole(field, role string) error {
	if !slices.Contains(roles, role) {
		return invalidf("%s: must be readonly, deploy or admin", field)
	}
	return nil
}

// checkExpiry parses an expires_at value, which must be strictly in the future.
func checkExpiry(field, v string, now time.Time) (int64, error) {
	ms, err := parseTime(v)
	if err != nil {
		return 0, invalidf("%s: %v", field, err)
	}
	if ms <= now.UnixMilli() {
		return 0, invalidf("%s: must be in the future", field)
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
		return invalidf("name: required")
	}
	if err := checkKeyName("name", *c.Name); err != nil {
		return err
	}
	if c.Role == nil {
		c.Role = str("readonly")
	}
	return checkRole("role", *c.Role)
}

// createKey creates a key (§4.27, and `keys create` with actor system:cli).
// The expiry must be in the future (400); a name in use gives a 409.
func (cp *controlPlane) createKey(ctx context.Context, actor string, req createKeyRequest) (*keyCreated, error) {
	var expires *int64
	if req.ExpiresAt != nil {
		ms, err := checkExpiry("expires_at", *req.ExpiresAt, cp.st.now())
		if err != nil {
			return nil, err
		}
		expires = &ms
	}
	var created *keyCreated
	err := cp.st.write(ctx, func(tx *txn) error {
		var err error
		created, err = createKeyTx(tx, actor, *req.Name, *req.Role, expires)
		return err
	})
	return created, err
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

// listKeys returns every key by id, revoked and expired included.
func (cp *controlPlane) listKeys(ctx context.Context) ([]keyInfo, error) {
	keys, err := readValue(ctx, cp.st, dbq.keys)
	out := make([]keyInfo, len(keys))
	for i, k := range keys {
		out[i] = keyInfo{ID: k.ID, Name: k.Name, Role: k.Role, CreatedAt: fmtTime(k.CreatedAt),
			ExpiresAt: fmtTimePtr(k.ExpiresAt), LastUsedAt: fmtTimePtr(k.LastUsedAt), RevokedAt: fmtTimePtr(k.RevokedAt)}
	}
	return out, err
}

// parseKeyID applies the key-id rule: a decimal integer from 1 to 2^63-1.
func parseKeyID(v string) (int64, error) {
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil || id < 1 || !isDigits(v) {
		return 0, invalidf("invalid key id")
	}
	return id, nil
}

// revokeKey revokes a key (§4.29). Revoking a revoked key changes nothing
// and writes no audit row. It returns a 404 for an unknown key and a 409
// when the key is the last admin key without an expiry: an admin key that
// will expire does not count, so the fleet can never lock itself out by
// waiting.
func (cp *controlPlane) revokeKey(ctx context.Context, actor string, id int64) error {
	return cp.st.write(ctx, func(tx *txn) error {
		k, err := tx.keyByID(id)
		if err != nil {
			return err
		}
		if k == nil {
			return notFoundf("key %d not found", id)
		}
		if k.RevokedAt != nil {
			return nil
		}
		if k.Role == "admin" && k.ExpiresAt == nil {
			others, err := tx.otherLastingAdmins(id)
			if err != nil {
				return err
			}
			if others == 0 {
				return conflictf("cannot revoke the last non-expiring admin key")
			}
		}
		if err := tx.revokeKey(id); err != nil {
			return err
		}
		return recordAudit(tx, actor, "key.revoked", strconv.FormatInt(id, 10), str(fmt.Sprintf("name=%s role=%s", k.Name, k.Role)))
	})
}
