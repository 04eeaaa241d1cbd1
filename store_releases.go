package main

import (
	"database/sql"
	"encoding/json"
	"fmt"
)

// Releases (§8): immutable host → store-path manifests.

const releaseColumns = "id, flake_ref, flake_rev, cache_url, host_count, created_at, created_by"

func scanRelease(row scanner) (*release, error) {
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

// insertRelease stores a release and its entries.
func (t *txn) insertRelease(rel *release, entries []releaseEntry) error {
	if _, err := t.exec(`INSERT INTO release (id, flake_ref, flake_rev, cache_url, host_count,
		created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		rel.ID, rel.FlakeRef, rel.FlakeRev, rel.CacheURL, len(entries), t.now, rel.CreatedBy); err != nil {
		return fmt.Errorf("insert release: %w", err)
	}
	stmt, err := t.conn.PrepareContext(t.ctx, `INSERT INTO release_entry (release_id, hostname, store_path, platform, tags)
		VALUES (?, ?, ?, ?, ?)`)
	if err != nil {
		return fmt.Errorf("prepare release entry: %w", err)
	}
	defer stmt.Close()
	for _, e := range entries {
		tags, err := json.Marshal(e.Tags)
		if err != nil {
			return fmt.Errorf("encode tags: %w", err)
		}
		if _, err := stmt.ExecContext(t.ctx, rel.ID, e.Hostname, e.StorePath, e.Platform, string(tags)); err != nil {
			return fmt.Errorf("insert release entry: %w", err)
		}
	}
	return nil
}

// releaseHeader returns the release without its entries, or nil when there
// is none.
func (d dbq) releaseHeader(id string) (*release, error) {
	rel, _, err := queryOne(d, "load release", scanRelease, "SELECT "+releaseColumns+" FROM release WHERE id = ?", id)
	return rel, err
}

// releaseHeaders returns at most limit releases without their entries,
// newest first with ties broken by creation order (later first); with host,
// only the releases that have an entry for it.
func (d dbq) releaseHeaders(limit int, host *string) ([]*release, error) {
	q := "SELECT " + releaseColumns + " FROM release"
	args := []any{}
	if host != nil {
		q += " WHERE id IN (SELECT release_id FROM release_entry WHERE hostname = ?)"
		args = append(args, *host)
	}
	args = append(args, limit)
	return queryAll(d, "list releases", scanRelease, q+" ORDER BY created_at DESC, rowid DESC LIMIT ?", args...)
}

// releaseEntries loads a release's entries, sorted by hostname (the primary
// key order, which is byte order).
func (d dbq) releaseEntries(id string) ([]releaseEntry, error) {
	out, err := queryAll(d, "load release entries", func(row scanner) (releaseEntry, error) {
		var e releaseEntry
		var tags string
		if err := row.Scan(&e.Hostname, &e.StorePath, &e.Platform, &tags); err != nil {
			return e, err
		}
		return e, json.Unmarshal([]byte(tags), &e.Tags)
	}, `SELECT hostname, store_path, platform, tags FROM release_entry
		WHERE release_id = ? ORDER BY hostname`, id)
	if out == nil {
		out = []releaseEntry{}
	}
	return out, err
}

// releaseReferenced reports whether any rollout, in any status, references
// the release.
func (d dbq) releaseReferenced(id string) (bool, error) {
	_, found, err := queryOne(d, "check rollouts of release", scanInt64, "SELECT 1 FROM rollout WHERE release_id = ? LIMIT 1", id)
	return found, err
}

// deleteRelease deletes the release and its entries.
func (t *txn) deleteRelease(id string) error {
	if _, err := t.exec("DELETE FROM release WHERE id = ?", id); err != nil {
		return fmt.Errorf("delete release: %w", err)
	}
	return nil
}
