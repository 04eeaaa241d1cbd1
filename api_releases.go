package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// Releases (§8): immutable host → store-path manifests.

type releaseEntryRequest struct {
	Hostname  *string  `json:"hostname"`
	StorePath *string  `json:"store_path"`
	Platform  *string  `json:"platform"`
	Tags      []string `json:"tags"`
}

// createReleaseRequest is the body of POST /api/v1/releases (§5.4).
type createReleaseRequest struct {
	Entries  []releaseEntryRequest `json:"entries"`
	FlakeRef *string               `json:"flake_ref"`
	FlakeRev *string               `json:"flake_rev"`
	CacheURL *string               `json:"cache_url"`
}

const maxReleaseEntries = 100_000

func (q *createReleaseRequest) validate() error {
	if q.Entries == nil {
		return badRequest("entries: required")
	}
	if len(q.Entries) == 0 {
		return badRequest("entries must not be empty")
	}
	if len(q.Entries) > maxReleaseEntries {
		return badRequest("entries: at most %d entries", maxReleaseEntries)
	}
	seen := make(map[string]struct{}, len(q.Entries))
	for i := range q.Entries {
		e := &q.Entries[i]
		field := fmt.Sprintf("entries[%d]", i)
		switch {
		case e.Hostname == nil:
			return badRequest("%s.hostname: required", field)
		case e.StorePath == nil:
			return badRequest("%s.store_path: required", field)
		case e.Platform == nil:
			return badRequest("%s.platform: required", field)
		}
		if err := checkMachineID(field+".hostname", *e.Hostname); err != nil {
			return err
		}
		if _, dup := seen[*e.Hostname]; dup {
			return badRequest("%s.hostname: duplicate hostname %s", field, *e.Hostname)
		}
		seen[*e.Hostname] = struct{}{}
		if err := checkStorePath(field+".store_path", *e.StorePath); err != nil {
			return err
		}
		if err := checkPlatform(field+".platform", *e.Platform); err != nil {
			return err
		}
		var err error
		if e.Tags, err = normalizeTags(field+".tags", e.Tags); err != nil {
			return err
		}
	}
	if q.FlakeRef != nil {
		if err := checkText("flake_ref", *q.FlakeRef, 1024, true); err != nil {
			return err
		}
	}
	if q.FlakeRev != nil {
		if err := checkText("flake_rev", *q.FlakeRev, 128, true); err != nil {
			return err
		}
	}
	if q.CacheURL != nil {
		return checkCacheURL("cache_url", *q.CacheURL)
	}
	return nil
}

// newUUID returns a random (version 4) UUID in lowercase hyphenated form.
func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// createRelease handles POST /api/v1/releases. The release, its entries and
// the audit row commit in one transaction.
func (s *server) createRelease(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req createReleaseRequest
	if err := decode(w, r, maxReleaseBody, false, &req); err != nil {
		return err
	}
	id := "rel-" + newUUID()
	err := s.st.write(r.Context(), func(tx *txn) error {
		if _, err := tx.ExecContext(tx.ctx, `INSERT INTO release (id, flake_ref, flake_rev, cache_url, host_count,
			created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?)`,
			id, req.FlakeRef, req.FlakeRev, req.CacheURL, len(req.Entries), tx.now, p.actor); err != nil {
			return fmt.Errorf("insert release: %w", err)
		}
		stmt, err := tx.PrepareContext(tx.ctx, `INSERT INTO release_entry (release_id, hostname, store_path, platform, tags)
			VALUES (?, ?, ?, ?, ?)`)
		if err != nil {
			return fmt.Errorf("prepare release entry: %w", err)
		}
		defer stmt.Close()
		for _, e := range req.Entries {
			tags, _ := json.Marshal(e.Tags)
			if _, err := stmt.ExecContext(tx.ctx, id, *e.Hostname, *e.StorePath, *e.Platform, string(tags)); err != nil {
				return fmt.Errorf("insert release entry: %w", err)
			}
		}
		return recordAudit(tx, p.actor, "create_release", id, str(fmt.Sprintf("%d hosts", len(req.Entries))))
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, struct {
		ID        string `json:"id"`
		HostCount int    `json:"host_count"`
	}{id, len(req.Entries)})
}

// release is the wire type of a release (§5.4).
type release struct {
	ID        string         `json:"id"`
	FlakeRef  *string        `json:"flake_ref"`
	FlakeRev  *string        `json:"flake_rev"`
	CacheURL  *string        `json:"cache_url"`
	HostCount int            `json:"host_count"`
	Entries   []releaseEntry `json:"entries"`
	CreatedAt string         `json:"created_at"`
	CreatedBy string         `json:"created_by"`
}

type releaseEntry struct {
	Hostname  string   `json:"hostname"`
	StorePath string   `json:"store_path"`
	Platform  string   `json:"platform"`
	Tags      []string `json:"tags"`
}

const releaseColumns = "id, flake_ref, flake_rev, cache_url, host_count, created_at, created_by"

func scanRelease(row interface{ Scan(...any) error }) (*release, error) {
	var rel release
	var ref, rev, cache sql.NullString
	var created int64
	if err := row.Scan(&rel.ID, &ref, &rev, &cache, &rel.HostCount, &created, &rel.CreatedBy); err != nil {
		return nil, err
	}
	rel.FlakeRef, rel.FlakeRev, rel.CacheURL = nullStr(ref), nullStr(rev), nullStr(cache)
	rel.CreatedAt = fmtTime(created)
	return &rel, nil
}

// releaseEntries loads a release's entries, sorted by hostname (the primary
// key order, which is byte order).
func releaseEntries(ctx context.Context, q queryer, id string) ([]releaseEntry, error) {
	rows, err := q.QueryContext(ctx, `SELECT hostname, store_path, platform, tags FROM release_entry
		WHERE release_id = ? ORDER BY hostname`, id)
	if err != nil {
		return nil, fmt.Errorf("load release entries: %w", err)
	}
	defer rows.Close()
	out := []releaseEntry{}
	for rows.Next() {
		var e releaseEntry
		var tags string
		if err := rows.Scan(&e.Hostname, &e.StorePath, &e.Platform, &tags); err != nil {
			return nil, fmt.Errorf("load release entries: %w", err)
		}
		if err := json.Unmarshal([]byte(tags), &e.Tags); err != nil {
			return nil, fmt.Errorf("decode tags of %s in release %s: %w", e.Hostname, id, err)
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// loadRelease returns the release with its entries, or a 404 *apiError.
func loadRelease(ctx context.Context, q queryer, id string) (*release, error) {
	rel, err := scanRelease(q.QueryRowContext(ctx, "SELECT "+releaseColumns+" FROM release WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound("release %s not found", id)
	}
	if err != nil {
		return nil, fmt.Errorf("load release: %w", err)
	}
	if rel.Entries, err = releaseEntries(ctx, q, id); err != nil {
		return nil, err
	}
	return rel, nil
}

// readTx runs fn in one read transaction, so that it sees one consistent snapshot.
func (s *store) readTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.ro.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin read: %w", err)
	}
	defer tx.Rollback()
	return fn(tx)
}

// listReleases handles GET /api/v1/releases: newest first, ties broken by
// creation order (later first).
func (s *server) listReleases(w http.ResponseWriter, r *http.Request, _ *principal) error {
	q := queryValues(r)
	limit, err := queryLimit(q, 20, 500)
	if err != nil {
		return err
	}
	query := "SELECT " + releaseColumns + " FROM release"
	args := []any{}
	if host, ok := q["host"]; ok {
		query += " WHERE id IN (SELECT release_id FROM release_entry WHERE hostname = ?)"
		args = append(args, host[0])
	}
	query += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
	args = append(args, limit)
	out := []*release{}
	err = s.st.readTx(r.Context(), func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(r.Context(), query, args...)
		if err != nil {
			return fmt.Errorf("list releases: %w", err)
		}
		for rows.Next() {
			rel, err := scanRelease(rows)
			if err != nil {
				rows.Close()
				return fmt.Errorf("list releases: %w", err)
			}
			out = append(out, rel)
		}
		if err := rows.Close(); err != nil {
			return err
		}
		for _, rel := range out {
			if rel.Entries, err = releaseEntries(r.Context(), tx, rel.ID); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, out)
}

func checkReleaseID(id string) error {
	if !isIDChars(id) {
		return badRequest("invalid release id")
	}
	return nil
}

// getRelease handles GET /api/v1/releases/{id}.
func (s *server) getRelease(w http.ResponseWriter, r *http.Request, _ *principal) error {
	id := r.PathValue("id")
	if err := checkReleaseID(id); err != nil {
		return err
	}
	var rel *release
	err := s.st.readTx(r.Context(), func(tx *sql.Tx) error {
		var err error
		rel, err = loadRelease(r.Context(), tx, id)
		return err
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, rel)
}

// deleteRelease handles DELETE /api/v1/releases/{id}: refused while any
// rollout, in any status, references the release.
func (s *server) deleteRelease(w http.ResponseWriter, r *http.Request, p *principal) error {
	id := r.PathValue("id")
	if err := checkReleaseID(id); err != nil {
		return err
	}
	err := s.st.write(r.Context(), func(tx *txn) error {
		var one int
		err := tx.QueryRowContext(tx.ctx, "SELECT 1 FROM release WHERE id = ?", id).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return notFound("release %s not found", id)
		}
		if err != nil {
			return fmt.Errorf("load release: %w", err)
		}
		err = tx.QueryRowContext(tx.ctx, "SELECT 1 FROM rollout WHERE release_id = ? LIMIT 1", id).Scan(&one)
		if err == nil {
			return conflict("release %s is referenced by a rollout", id)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("check rollouts of release: %w", err)
		}
		if _, err := tx.ExecContext(tx.ctx, "DELETE FROM release WHERE id = ?", id); err != nil {
			return fmt.Errorf("delete release: %w", err)
		}
		return recordAudit(tx, p.actor, "delete_release", id, nil)
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// releaseDiff is the wire type of a release comparison (§8.5).
type releaseDiff struct {
	Added     []string      `json:"added"`
	Removed   []string      `json:"removed"`
	Changed   []diffChanged `json:"changed"`
	Unchanged []string      `json:"unchanged"`
}

type diffChanged struct {
	Hostname     string `json:"hostname"`
	OldStorePath string `json:"old_store_path"`
	NewStorePath string `json:"new_store_path"`
}

// diffEntries compares two entry lists, both sorted by hostname, in one
// merge pass; every output list is sorted by hostname.
func diffEntries(a, b []releaseEntry) releaseDiff {
	d := releaseDiff{Added: []string{}, Removed: []string{}, Changed: []diffChanged{}, Unchanged: []string{}}
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || i < len(a) && a[i].Hostname < b[j].Hostname:
			d.Removed = append(d.Removed, a[i].Hostname)
			i++
		case i == len(a) || b[j].Hostname < a[i].Hostname:
			d.Added = append(d.Added, b[j].Hostname)
			j++
		default:
			if a[i].StorePath == b[j].StorePath {
				d.Unchanged = append(d.Unchanged, a[i].Hostname)
			} else {
				d.Changed = append(d.Changed, diffChanged{a[i].Hostname, a[i].StorePath, b[j].StorePath})
			}
			i++
			j++
		}
	}
	return d
}

// diffReleases handles GET /api/v1/releases/{id}/diff/{other_id}.
func (s *server) diffReleases(w http.ResponseWriter, r *http.Request, _ *principal) error {
	a, b := r.PathValue("id"), r.PathValue("other_id")
	if err := checkReleaseID(a); err != nil {
		return err
	}
	if err := checkReleaseID(b); err != nil {
		return err
	}
	var d releaseDiff
	err := s.st.readTx(r.Context(), func(tx *sql.Tx) error {
		ra, err := loadRelease(r.Context(), tx, a)
		if err != nil {
			return err
		}
		rb, err := loadRelease(r.Context(), tx, b)
		if err != nil {
			return err
		}
		d = diffEntries(ra.Entries, rb.Entries)
		return nil
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, d)
}
