-- FleetLock reboot semaphores (docs/fleetlock.md): a slot count per group and who holds a slot
-- since when. token_sha256: when set, the group's lock requests need that bearer token.

CREATE TABLE lock_groups (
    name TEXT PRIMARY KEY,
    slots BIGINT NOT NULL,
    token_sha256 TEXT,
    updated_at BIGINT NOT NULL
);

CREATE TABLE lock_holders (
    group_name TEXT NOT NULL REFERENCES lock_groups(name),
    id TEXT NOT NULL,
    since BIGINT NOT NULL,
    PRIMARY KEY (group_name, id)
);

INSERT INTO lock_groups (name, slots, token_sha256, updated_at) VALUES ('default', 1, NULL, 0);
