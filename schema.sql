-- Migration 1: the complete schema of nixfleet-control-plane.
--
-- Every timestamp is an INTEGER of Unix milliseconds (UTC). Tables are STRICT so
-- that a value of the wrong type is an error instead of being stored silently.
-- Boolean columns hold 0 or 1.

-- A machine of the fleet. Its id is the hostname the agent uses in its URLs.
CREATE TABLE machine (
    machine_id           TEXT    PRIMARY KEY,
    lifecycle            TEXT    NOT NULL CHECK (lifecycle IN ('pending', 'provisioning', 'active', 'maintenance', 'decommissioned')),
    registered_at        INTEGER NOT NULL,
    current_generation   TEXT    NOT NULL DEFAULT '',   -- from the latest accepted report; '' before the first
    last_success         INTEGER CHECK (last_success IN (0, 1)), -- NULL before the first report (system_state "unknown")
    last_seen            INTEGER,                       -- server receive time of the latest report; NULL before the first
    last_report_agent_ts INTEGER,                       -- the agent's own timestamp of that report, for reference only
    agent_version        TEXT    NOT NULL DEFAULT '',
    uptime_seconds       INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX machine_lifecycle ON machine (lifecycle);

CREATE TABLE machine_tag (
    machine_id TEXT NOT NULL REFERENCES machine (machine_id),
    tag        TEXT NOT NULL,
    PRIMARY KEY (machine_id, tag)
) STRICT, WITHOUT ROWID;
CREATE INDEX machine_tag_tag ON machine_tag (tag);

-- The generation a machine should run. At most one per machine; no row means
-- "nothing to do" (the agent gets 404).
CREATE TABLE desired_generation (
    machine_id TEXT    PRIMARY KEY REFERENCES machine (machine_id),
    hash       TEXT    NOT NULL,   -- a Nix store path
    cache_url  TEXT,
    set_at     INTEGER NOT NULL,
    set_by     TEXT    NOT NULL    -- the actor that wrote it
) STRICT;

-- One row per accepted agent report. The id gives arrival order, which is the
-- only order the rollout executor trusts (the agent's clock is not used).
CREATE TABLE report (
    id             INTEGER PRIMARY KEY,
    machine_id     TEXT    NOT NULL REFERENCES machine (machine_id),
    generation     TEXT    NOT NULL,
    success        INTEGER NOT NULL CHECK (success IN (0, 1)),
    message        TEXT    NOT NULL,
    agent_ts       INTEGER NOT NULL,
    received_at    INTEGER NOT NULL,
    agent_version  TEXT    NOT NULL,
    uptime_seconds INTEGER NOT NULL
) STRICT;
CREATE INDEX report_machine_received ON report (machine_id, received_at);

-- The health object carried by a "health-check" report, linked to its report
-- and deleted with it.
CREATE TABLE health_report (
    id            INTEGER PRIMARY KEY,
    report_id     INTEGER NOT NULL UNIQUE REFERENCES report (id) ON DELETE CASCADE,
    machine_id    TEXT    NOT NULL,
    generation    TEXT    NOT NULL,   -- the generation the checks measured
    all_passed    INTEGER NOT NULL CHECK (all_passed IN (0, 1)),
    results       TEXT    NOT NULL,   -- JSON array of the check results as received
    failed_checks TEXT    NOT NULL,   -- names of failed checks joined by ", " (for rollout health reasons)
    measured_at   INTEGER NOT NULL,   -- health.timestamp, the agent's clock
    received_at   INTEGER NOT NULL
) STRICT;
CREATE INDEX health_report_machine_received ON health_report (machine_id, received_at);

CREATE TABLE api_key (
    id           INTEGER PRIMARY KEY,
    key_hash     TEXT    NOT NULL UNIQUE,   -- lowercase hex SHA-256 of the whole token; the token is never stored
    name         TEXT    NOT NULL,
    role         TEXT    NOT NULL CHECK (role IN ('readonly', 'deploy', 'admin')),
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    last_used_at INTEGER,
    revoked_at   INTEGER
) STRICT;
-- Names are unique among keys that are not revoked.
CREATE UNIQUE INDEX api_key_active_name ON api_key (name) WHERE revoked_at IS NULL;

-- The append-only audit log. AUTOINCREMENT guarantees ids only ever grow, so
-- "before=<id>" pages never overlap.
CREATE TABLE audit_event (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp INTEGER NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    target    TEXT    NOT NULL,
    detail    TEXT
) STRICT;
CREATE INDEX audit_event_timestamp ON audit_event (timestamp);
CREATE INDEX audit_event_actor ON audit_event (actor);
CREATE INDEX audit_event_action ON audit_event (action);
CREATE INDEX audit_event_target ON audit_event (target);
CREATE TRIGGER audit_event_no_update BEFORE UPDATE ON audit_event
BEGIN
    SELECT RAISE(ABORT, 'audit_event is append-only');
END;
CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON audit_event
BEGIN
    SELECT RAISE(ABORT, 'audit_event is append-only');
END;
-- REPLACE (INSERT OR REPLACE) deletes a conflicting row without firing
-- DELETE triggers (recursive_triggers is off), so an insert may not reuse an id.
CREATE TRIGGER audit_event_no_replace BEFORE INSERT ON audit_event
WHEN EXISTS (SELECT 1 FROM audit_event WHERE id = NEW.id)
BEGIN
    SELECT RAISE(ABORT, 'audit_event is append-only');
END;

-- An immutable release: which store path each host should run.
CREATE TABLE release (
    id         TEXT    PRIMARY KEY,
    flake_ref  TEXT,
    flake_rev  TEXT,
    cache_url  TEXT,
    host_count INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT    NOT NULL
) STRICT;
CREATE INDEX release_created ON release (created_at);

CREATE TABLE release_entry (
    release_id TEXT NOT NULL REFERENCES release (id) ON DELETE CASCADE,
    hostname   TEXT NOT NULL,
    store_path TEXT NOT NULL,
    platform   TEXT NOT NULL,
    tags       TEXT NOT NULL,   -- JSON array of strings, sorted and deduplicated
    PRIMARY KEY (release_id, hostname)
) STRICT, WITHOUT ROWID;
CREATE INDEX release_entry_hostname ON release_entry (hostname);

CREATE TABLE rollout (
    id                TEXT    PRIMARY KEY,
    release_id        TEXT    NOT NULL REFERENCES release (id),   -- no cascade: a referenced release cannot be deleted
    strategy          TEXT    NOT NULL CHECK (strategy IN ('canary', 'staged', 'all_at_once')),
    batch_sizes       TEXT    NOT NULL,   -- JSON array of the effective batch size specs
    failure_threshold TEXT    NOT NULL,   -- "N" or "P%", exactly as given
    on_failure        TEXT    NOT NULL CHECK (on_failure IN ('pause', 'revert')),
    health_timeout    INTEGER NOT NULL,   -- seconds
    soak_seconds      INTEGER NOT NULL,
    cache_url         TEXT,               -- effective: the request's, else the release's
    target_kind       TEXT    NOT NULL CHECK (target_kind IN ('tags', 'hosts')),
    target_values     TEXT    NOT NULL,   -- JSON array
    status            TEXT    NOT NULL CHECK (status IN ('created', 'running', 'paused', 'completed', 'failed', 'cancelled')),
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,   -- bumped on every status change
    created_by        TEXT    NOT NULL,
    version           INTEGER NOT NULL DEFAULT 0   -- bumped by every write; the executor's compare-and-swap token
) STRICT;
CREATE INDEX rollout_status ON rollout (status);
CREATE INDEX rollout_release ON rollout (release_id);

CREATE TABLE rollout_batch (
    id              TEXT    PRIMARY KEY,   -- <rollout id>-b<index>
    rollout_id      TEXT    NOT NULL REFERENCES rollout (id) ON DELETE CASCADE,
    batch_index     INTEGER NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'deploying', 'waiting_health', 'succeeded', 'failed')),
    started_at      INTEGER,   -- start of the current evaluation window; reports before it are ignored
    completed_at    INTEGER,
    soak_started_at INTEGER,
    UNIQUE (rollout_id, batch_index)
) STRICT;

-- One row per machine of a rollout: its batch, the path it gets, the
-- generation to restore on revert and its latest health classification.
CREATE TABLE rollout_machine (
    rollout_id    TEXT    NOT NULL REFERENCES rollout (id) ON DELETE CASCADE,
    machine_id    TEXT    NOT NULL REFERENCES machine (machine_id),
    batch_index   INTEGER NOT NULL,
    store_path    TEXT    NOT NULL,
    prev_captured INTEGER NOT NULL DEFAULT 0 CHECK (prev_captured IN (0, 1)), -- set once, at the first deploy
    prev_hash     TEXT,                                                      -- NULL with prev_captured=1 means "none"
    health        TEXT    NOT NULL DEFAULT 'pending' CHECK (health IN ('pending', 'healthy', 'unhealthy', 'skipped')),
    health_reason TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (rollout_id, machine_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX rollout_machine_machine ON rollout_machine (machine_id);
CREATE INDEX rollout_machine_batch ON rollout_machine (rollout_id, batch_index);

CREATE TABLE rollout_event (
    id         INTEGER PRIMARY KEY,
    rollout_id TEXT    NOT NULL REFERENCES rollout (id) ON DELETE CASCADE,
    event_type TEXT    NOT NULL CHECK (event_type IN ('status_change', 'batch_started', 'batch_completed', 'batch_failed')),
    detail     TEXT    NOT NULL,   -- compact JSON text
    actor      TEXT    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX rollout_event_rollout ON rollout_event (rollout_id, id);
