-- Migration 4: rollout_event ids are never reused. The event stream
-- (GET /api/v1/events) resumes after the last id a client has seen; without
-- AUTOINCREMENT, deleting the newest rollout (its events cascade) would hand
-- its ids out again, and a resuming client would skip the new events. The
-- table is rebuilt because SQLite cannot add AUTOINCREMENT in place; copying
-- the rows with their ids seeds sqlite_sequence with the highest one.
CREATE TABLE rollout_event_new (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id TEXT    NOT NULL REFERENCES rollout (id) ON DELETE CASCADE,
    event_type TEXT    NOT NULL CHECK (event_type IN ('status_change', 'batch_started', 'batch_completed', 'batch_failed')),
    detail     TEXT    NOT NULL,   -- compact JSON text
    actor      TEXT    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
INSERT INTO rollout_event_new (id, rollout_id, event_type, detail, actor, created_at)
    SELECT id, rollout_id, event_type, detail, actor, created_at FROM rollout_event ORDER BY id;
DROP TABLE rollout_event;
ALTER TABLE rollout_event_new RENAME TO rollout_event;
CREATE INDEX rollout_event_rollout ON rollout_event (rollout_id, id);
