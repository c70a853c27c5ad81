-- Cairn rollout server, schema 1. Times are Unix milliseconds; flags are 0 or 1 (BIGINT, the
-- same on SQLite and PostgreSQL).

CREATE TABLE channels (
    name TEXT PRIMARY KEY,
    version TEXT,
    updated_at BIGINT NOT NULL
);

CREATE TABLE packages (
    version TEXT PRIMARY KEY,
    os_id TEXT NOT NULL,
    manifest TEXT NOT NULL,
    signature TEXT NOT NULL,
    manifest_sha256 TEXT NOT NULL,
    signed_by TEXT NOT NULL,
    -- Artifacts served from here (NULL: stored by the server under its data directory).
    base_url TEXT,
    -- 1 when every artifact is stored (or referenced): only then can it be offered.
    complete BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE host_groups (
    name TEXT PRIMARY KEY,
    channel TEXT NOT NULL REFERENCES channels(name),
    updates_enabled BIGINT NOT NULL,
    max_per_period BIGINT NOT NULL,
    period_s BIGINT NOT NULL,
    safe_mode BIGINT NOT NULL,
    halt_after BIGINT NOT NULL,
    percentage BIGINT NOT NULL,
    pinned_version TEXT,
    grant_timeout_s BIGINT NOT NULL,
    halted BIGINT NOT NULL,
    halted_reason TEXT,
    updated_at BIGINT NOT NULL
);

CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    group_name TEXT NOT NULL,
    os_id TEXT NOT NULL,
    version TEXT NOT NULL,
    slot TEXT NOT NULL,
    state TEXT NOT NULL,
    -- Comma-separated versions that failed to boot on the host.
    rolled_back TEXT NOT NULL,
    last_error TEXT,
    first_seen BIGINT NOT NULL,
    last_checkin BIGINT NOT NULL
);
CREATE INDEX instances_by_group ON instances (group_name, version);

-- A grant: the server offered `version` to a host as part of the group's rollout.
-- outcome: pending | succeeded | failed | dismissed (failures forgiven when a halted rollout resumes).
CREATE TABLE grants (
    id {serial_key},
    group_name TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    version TEXT NOT NULL,
    granted_at BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    reported_at BIGINT
);
CREATE INDEX grants_by_rollout ON grants (group_name, version, granted_at);
CREATE INDEX grants_by_instance ON grants (instance_id, outcome);

CREATE TABLE events (
    id {serial_key},
    at BIGINT NOT NULL,
    instance_id TEXT NOT NULL,
    group_name TEXT,
    kind TEXT NOT NULL,
    version TEXT NOT NULL,
    error TEXT
);
CREATE INDEX events_by_instance ON events (instance_id, id);
CREATE INDEX events_by_time ON events (at);

-- Admin tokens, by the sha256 of the token (the token itself is shown once and never stored).
CREATE TABLE tokens (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

INSERT INTO channels (name, version, updated_at) VALUES ('stable', NULL, 0);
INSERT INTO host_groups (name, channel, updates_enabled, max_per_period, period_s, safe_mode, halt_after,
                         percentage, pinned_version, grant_timeout_s, halted, halted_reason, updated_at)
    VALUES ('default', 'stable', 1, 10, 3600, 0, 3, 100, NULL, 3600, 0, NULL, 0);
