package main

// Tests of the event stream's storage (store_events.go): migration 4 and
// rollout event ids that only grow.

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRolloutEventIDsNeverReused: deleting the newest rollout (its events
// go with it) does not hand its event ids out again, so a stream resuming
// after one of them misses nothing.
func TestRolloutEventIDsNeverReused(t *testing.T) {
	e := rtNewExecEnv(t)
	e.register("web-01")
	rel := e.release(nil, "web-01")
	r1 := e.create(rtHostsRollout(rel, "all_at_once", "web-01")).RolloutID
	expect(t, e.action(r1, "cancel", nil), 200, "")
	old := e.detail(r1).Events
	expect(t, do(t, e.c, "DELETE", e.url+"/api/v1/rollouts/"+r1, e.admin, nil), 204, "")
	r2 := e.create(rtHostsRollout(rel, "all_at_once", "web-01")).RolloutID
	if got, last := e.detail(r2).Events[0].ID, old[len(old)-1].ID; got <= last {
		t.Errorf("first event of the new rollout has id %d, not above the deleted rollout's %d", got, last)
	}
}

// TestMigrationRolloutEventIDs upgrades a database of schema version 1
// with events in it: the events keep their ids and the sequence continues
// after the highest.
func TestMigrationRolloutEventIDs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	makeDB(t, path, schemaSQL, "PRAGMA user_version = 1",
		`INSERT INTO release (id, host_count, created_at, created_by) VALUES ('rel-1', 0, 0, 'test')`,
		`INSERT INTO rollout (id, release_id, strategy, batch_sizes, failure_threshold, on_failure, health_timeout,
			soak_seconds, target_kind, target_values, status, created_at, updated_at, created_by)
			VALUES ('r-1', 'rel-1', 'all_at_once', '[]', '0', 'pause', 300, 0, 'hosts', '[]', 'cancelled', 0, 0, 'test')`,
		`INSERT INTO rollout_event (id, rollout_id, event_type, detail, actor, created_at)
			VALUES (3, 'r-1', 'status_change', '{}', 'test', 0), (7, 'r-1', 'status_change', '{}', 'test', 1)`)
	ctx := context.Background()
	st, err := openStore(ctx, path, func() time.Time { return time.UnixMilli(5000) }, newMetrics())
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	evs, err := readValue(ctx, st, func(d dbq) ([]eventDetail, error) { return d.rolloutEvents("r-1") })
	if err != nil || len(evs) != 2 || evs[0].ID != 3 || evs[1].ID != 7 {
		t.Fatalf("events after the migration: %+v, %v", evs, err)
	}
	var ddl string
	mustScan(t, st.ro.QueryRow("SELECT sql FROM sqlite_schema WHERE name = 'rollout_event'"), &ddl)
	if !strings.Contains(ddl, "AUTOINCREMENT") {
		t.Errorf("rollout_event: %s", ddl)
	}
	heads, err := readValue(ctx, st, dbq.eventHeads)
	if err != nil || heads != (eventCursor{0, 7}) {
		t.Errorf("event heads %v, %v; want 0-7", heads, err)
	}
	if err := st.write(ctx, func(tx *txn) error { return tx.insertRolloutEvent("r-1", "status_change", "test", "{}") }); err != nil {
		t.Fatal(err)
	}
	if evs, _ := readValue(ctx, st, func(d dbq) ([]eventDetail, error) { return d.rolloutEvents("r-1") }); evs[2].ID != 8 {
		t.Errorf("next event id %d, want 8", evs[2].ID)
	}
}
