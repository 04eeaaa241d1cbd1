package main

import (
	"context"
	"crypto/rand"
	"fmt"
)

// Releases (§8): immutable host → store-path manifests. No route modifies a
// release; one can only be deleted, and only while no rollout references it.

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
		return invalidf("entries: required")
	}
	if len(q.Entries) == 0 {
		return invalidf("entries must not be empty")
	}
	if len(q.Entries) > maxReleaseEntries {
		return invalidf("entries: at most %d entries", maxReleaseEntries)
	}
	seen := make(map[string]struct{}, len(q.Entries))
	for i := range q.Entries {
		e := &q.Entries[i]
		field := fmt.Sprintf("entries[%d]", i)
		switch {
		case e.Hostname == nil:
			return invalidf("%s.hostname: required", field)
		case e.StorePath == nil:
			return invalidf("%s.store_path: required", field)
		case e.Platform == nil:
			return invalidf("%s.platform: required", field)
		}
		if err := checkMachineID(field+".hostname", *e.Hostname); err != nil {
			return err
		}
		if _, dup := seen[*e.Hostname]; dup {
			return invalidf("%s.hostname: duplicate hostname %s", field, *e.Hostname)
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

// createRelease stores the release, its entries and the audit row in one
// transaction and returns the new release id.
func (cp *controlPlane) createRelease(ctx context.Context, actor string, req createReleaseRequest) (string, error) {
	rel := &release{ID: "rel-" + newUUID(), FlakeRef: req.FlakeRef, FlakeRev: req.FlakeRev, CacheURL: req.CacheURL, CreatedBy: actor}
	entries := make([]releaseEntry, len(req.Entries))
	for i, e := range req.Entries {
		entries[i] = releaseEntry{Hostname: *e.Hostname, StorePath: *e.StorePath, Platform: *e.Platform, Tags: e.Tags}
	}
	err := cp.st.write(ctx, func(tx *txn) error {
		if err := tx.insertRelease(rel, entries); err != nil {
			return err
		}
		return recordAudit(tx, actor, "create_release", rel.ID, str(fmt.Sprintf("%d hosts", len(entries))))
	})
	return rel.ID, err
}

// loadRelease returns the release with its entries, or a 404 *clientError.
func loadRelease(d dbq, id string) (*release, error) {
	rel, err := d.releaseHeader(id)
	if err != nil {
		return nil, err
	}
	if rel == nil {
		return nil, notFoundf("release %s not found", id)
	}
	rel.Entries, err = d.releaseEntries(id)
	return rel, err
}

// getRelease returns one release with its entries, or a 404.
func (cp *controlPlane) getRelease(ctx context.Context, id string) (*release, error) {
	return readValue(ctx, cp.st, func(d dbq) (*release, error) { return loadRelease(d, id) })
}

// listReleases calls emit for at most limit releases, newest first, each
// with its entries (§4.14); with host, only those with an entry for it.
// Releases are read one at a time, each in its own short read, and emitted
// before the next is read: memory holds one release, and no database
// connection is held while emit writes to a client. A release deleted in
// between is skipped.
func (cp *controlPlane) listReleases(ctx context.Context, limit int, host *string, emit func(*release) error) error {
	headers, err := readValue(ctx, cp.st, func(d dbq) ([]*release, error) { return d.releaseHeaders(limit, host) })
	if err != nil {
		return err
	}
	for _, h := range headers {
		if h.Entries, err = readValue(ctx, cp.st, func(d dbq) ([]releaseEntry, error) { return d.releaseEntries(h.ID) }); err != nil {
			return err
		}
		if err := emit(h); err != nil {
			return err
		}
		h.Entries = nil
	}
	return nil
}

// deleteRelease deletes an unreferenced release (§8.4): a 404 when it does
// not exist, a 409 while any rollout references it.
func (cp *controlPlane) deleteRelease(ctx context.Context, actor, id string) error {
	return cp.st.write(ctx, func(tx *txn) error {
		rel, err := tx.releaseHeader(id)
		if err != nil {
			return err
		}
		if rel == nil {
			return notFoundf("release %s not found", id)
		}
		if ref, err := tx.releaseReferenced(id); err != nil {
			return err
		} else if ref {
			return conflictf("release %s is referenced by a rollout", id)
		}
		if err := tx.deleteRelease(id); err != nil {
			return err
		}
		return recordAudit(tx, actor, "delete_release", id, nil)
	})
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

// diffReleases compares release a with release b (§8.5); the first of them
// that does not exist gives a 404.
func (cp *controlPlane) diffReleases(ctx context.Context, a, b string) (releaseDiff, error) {
	var d releaseDiff
	err := cp.st.read(ctx, func(q dbq) error {
		ra, err := loadRelease(q, a)
		if err != nil {
			return err
		}
		rb, err := loadRelease(q, b)
		if err != nil {
			return err
		}
		d = diffEntries(ra.Entries, rb.Entries)
		return nil
	})
	return d, err
}

func checkReleaseID(id string) error {
	if !isIDChars(id) {
		return invalidf("invalid release id")
	}
	return nil
}
