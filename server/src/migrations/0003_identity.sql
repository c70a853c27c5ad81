-- Host identity and tokens that end (issue 16). A group's enrollment token is kept as its
-- hash; a host that presents it gets a credential of its own, kept as its hash and bound to the
-- host's instance id and group. Admin tokens can expire and be revoked. A FleetLock group can
-- be opened to clients that cannot authenticate (Zincati without a token).

ALTER TABLE host_groups ADD COLUMN enroll_sha256 TEXT;

CREATE TABLE host_credentials (
    instance_id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    group_name TEXT NOT NULL,
    enrolled_at BIGINT NOT NULL
);

ALTER TABLE tokens ADD COLUMN expires_at BIGINT;
ALTER TABLE tokens ADD COLUMN revoked_at BIGINT;

ALTER TABLE lock_groups ADD COLUMN anonymous BIGINT NOT NULL DEFAULT 0;
