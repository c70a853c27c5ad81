//! Queries, one function per question or change, on either database (`$N` parameters and
//! `INSERT ... ON CONFLICT` are spelled the same by SQLite and PostgreSQL). Rows come back as
//! the types the API serves.

use crate::db::Db;
use crate::policy::RolloutCounts;
use anyhow::Result;
pub use cairn_release::admin::{Channel, EventRecord, Group, GroupPolicy, Instance};
use serde::Deserialize;
use sqlx::any::AnyRow;
use sqlx::{Any, Executor, Row};

pub mod hosts;
pub mod lock_groups;
pub mod lock_holders;

/// What a check-in needs to know of the host: its stored row and the grant it holds.
#[derive(Clone, Debug)]
pub struct StoredHost {
    pub instance: Instance,
    pub outstanding_grant: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct InstanceFilter {
    pub group: Option<String>,
    pub version: Option<String>,
    pub state: Option<String>,
    pub limit: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct EventFilter {
    pub instance: Option<String>,
    pub group: Option<String>,
    /// Unix milliseconds.
    pub since: Option<i64>,
    pub limit: Option<i64>,
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',').filter(|v| !v.is_empty()).map(str::to_string).collect()
}

const GROUP_COLUMNS: &str = "g.name, g.channel, c.version, g.updates_enabled, g.max_per_period, g.period_s, g.safe_mode, \
     g.halt_after, g.percentage, g.pinned_version, g.grant_timeout_s, g.halted, g.halted_reason";

fn group_from(row: &AnyRow) -> Result<Group> {
    Ok(Group {
        name: row.try_get(0)?,
        channel: row.try_get(1)?,
        channel_version: row.try_get(2)?,
        policy: GroupPolicy {
            updates_enabled: row.try_get::<i64, _>(3)? != 0,
            max_per_period: row.try_get::<i64, _>(4)? as u32,
            period_s: row.try_get::<i64, _>(5)? as u64,
            safe_mode: row.try_get::<i64, _>(6)? != 0,
            halt_after: row.try_get::<i64, _>(7)? as u32,
            percentage: row.try_get::<i64, _>(8)? as u8,
            pinned_version: row.try_get(9)?,
            grant_timeout_s: row.try_get::<i64, _>(10)? as u64,
        },
        halted: row.try_get::<i64, _>(11)? != 0,
        halted_reason: row.try_get(12)?,
    })
}

const INSTANCE_COLUMNS: &str = "i.id, i.group_name, i.os_id, i.version, i.slot, i.state, i.rolled_back, i.last_error, i.first_seen, i.last_checkin";

fn instance_from(row: &AnyRow) -> Result<Instance> {
    Ok(Instance {
        id: row.try_get(0)?,
        group: row.try_get(1)?,
        os_id: row.try_get(2)?,
        version: row.try_get(3)?,
        slot: row.try_get(4)?,
        state: row.try_get(5)?,
        rolled_back: split_list(&row.try_get::<String, _>(6)?),
        last_error: row.try_get(7)?,
        first_seen: row.try_get(8)?,
        last_checkin: row.try_get(9)?,
    })
}

// ---- channels ----

pub async fn channels(db: &Db) -> Result<Vec<Channel>> {
    let rows = sqlx::query("SELECT name, version, updated_at FROM channels ORDER BY name").fetch_all(&db.read).await?;
    rows.iter()
        .map(|r| Ok(Channel { name: r.try_get(0)?, version: r.try_get(1)?, updated_at: r.try_get(2)? }))
        .collect()
}

pub async fn channel_exists(db: &Db, name: &str) -> Result<bool> {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM channels WHERE name = $1").bind(name).fetch_one(&db.write).await?;
    Ok(n > 0)
}

/// `false` when the channel exists already.
pub async fn create_channel(db: &Db, name: &str, version: Option<&str>, now: i64) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO channels (name, version, updated_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(version)
    .bind(now)
    .execute(&db.write)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// `false` when there is no such channel.
pub async fn set_channel_version(db: &Db, name: &str, version: &str, now: i64) -> Result<bool> {
    let done = sqlx::query("UPDATE channels SET version = $2, updated_at = $3 WHERE name = $1")
        .bind(name)
        .bind(version)
        .bind(now)
        .execute(&db.write)
        .await?;
    Ok(done.rows_affected() == 1)
}

// ---- groups ----

pub async fn groups(db: &Db) -> Result<Vec<Group>> {
    let rows = sqlx::query(&format!(
        "SELECT {GROUP_COLUMNS} FROM host_groups g JOIN channels c ON c.name = g.channel ORDER BY g.name"
    ))
    .fetch_all(&db.read)
    .await?;
    rows.iter().map(group_from).collect()
}

pub async fn group(db: &Db, name: &str) -> Result<Option<Group>> {
    let row = sqlx::query(&format!(
        "SELECT {GROUP_COLUMNS} FROM host_groups g JOIN channels c ON c.name = g.channel WHERE g.name = $1"
    ))
    .bind(name)
    .fetch_optional(&db.read)
    .await?;
    row.as_ref().map(group_from).transpose()
}

/// Inserts or replaces the group's settings (`create` refuses an existing name).
pub async fn save_group(db: &Db, g: &Group, create: bool, now: i64) -> Result<bool> {
    let p = &g.policy;
    let conflict = if create {
        "DO NOTHING"
    } else {
        "DO UPDATE SET channel = excluded.channel, updates_enabled = excluded.updates_enabled, \
         max_per_period = excluded.max_per_period, period_s = excluded.period_s, safe_mode = excluded.safe_mode, \
         halt_after = excluded.halt_after, percentage = excluded.percentage, pinned_version = excluded.pinned_version, \
         grant_timeout_s = excluded.grant_timeout_s, halted = excluded.halted, halted_reason = excluded.halted_reason, \
         updated_at = excluded.updated_at"
    };
    let done = sqlx::query(&format!(
        "INSERT INTO host_groups (name, channel, updates_enabled, max_per_period, period_s, safe_mode, halt_after, \
         percentage, pinned_version, grant_timeout_s, halted, halted_reason, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (name) {conflict}"
    ))
    .bind(&g.name)
    .bind(&g.channel)
    .bind(flag(p.updates_enabled))
    .bind(i64::from(p.max_per_period))
    .bind(p.period_s as i64)
    .bind(flag(p.safe_mode))
    .bind(i64::from(p.halt_after))
    .bind(i64::from(p.percentage))
    .bind(&p.pinned_version)
    .bind(p.grant_timeout_s as i64)
    .bind(flag(g.halted))
    .bind(&g.halted_reason)
    .bind(now)
    .execute(&db.write)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Halts the group unless it is halted already; `true` when this call halted it.
pub async fn halt_group<'e, E: Executor<'e, Database = Any>>(e: E, name: &str, reason: &str, now: i64) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE host_groups SET halted = 1, halted_reason = $2, updated_at = $3 WHERE name = $1 AND halted = 0",
    )
    .bind(name)
    .bind(reason)
    .bind(now)
    .execute(e)
    .await?;
    Ok(done.rows_affected() == 1)
}

// ---- instances ----

/// The host's row and the grant it holds (pending and not timed out at `grant_cutoff`).
pub async fn stored_host(db: &Db, id: &str, grant_cutoff: i64) -> Result<Option<StoredHost>> {
    let row = sqlx::query(&format!(
        "SELECT {INSTANCE_COLUMNS}, (SELECT g.version FROM grants g WHERE g.instance_id = i.id AND g.outcome = 'pending' \
         AND g.granted_at > $2 ORDER BY g.id DESC LIMIT 1) FROM instances i WHERE i.id = $1"
    ))
    .bind(id)
    .bind(grant_cutoff)
    .fetch_optional(&db.read)
    .await?;
    row.map(|r| Ok(StoredHost { instance: instance_from(&r)?, outstanding_grant: r.try_get(10)? })).transpose()
}

/// A host's credential (hash and group) with its row and outstanding grant, in one query: how a
/// check-in is authenticated at no extra cost. `None`: the instance is not enrolled.
pub async fn enrolled_host(
    db: &Db,
    id: &str,
    grant_cutoff: i64,
) -> Result<Option<(hosts::Credential, Option<StoredHost>)>> {
    let row = sqlx::query(&format!(
        "SELECT {INSTANCE_COLUMNS}, (SELECT g.version FROM grants g WHERE g.instance_id = i.id AND g.outcome = 'pending' \
         AND g.granted_at > $2 ORDER BY g.id DESC LIMIT 1), c.sha256, c.group_name \
         FROM host_credentials c LEFT JOIN instances i ON i.id = c.instance_id WHERE c.instance_id = $1"
    ))
    .bind(id)
    .bind(grant_cutoff)
    .fetch_optional(&db.read)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let credential = hosts::Credential { sha256: r.try_get(11)?, group: r.try_get(12)? };
    let has_row = r.try_get::<Option<String>, _>(0)?.is_some();
    let stored = match has_row {
        true => Some(StoredHost { instance: instance_from(&r)?, outstanding_grant: r.try_get(10)? }),
        false => None,
    };
    Ok(Some((credential, stored)))
}

/// Writes the host's row unless a newer check-in was written already (heartbeats are written
/// late, in batches, and must not overwrite what came after them).
pub async fn upsert_instance<'e, E: Executor<'e, Database = Any>>(e: E, i: &Instance) -> Result<()> {
    sqlx::query(
        "INSERT INTO instances (id, group_name, os_id, version, slot, state, rolled_back, last_error, first_seen, last_checkin) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO UPDATE SET group_name = excluded.group_name, \
         os_id = excluded.os_id, version = excluded.version, slot = excluded.slot, state = excluded.state, \
         rolled_back = excluded.rolled_back, last_checkin = excluded.last_checkin \
         WHERE instances.last_checkin <= excluded.last_checkin",
    )
    .bind(&i.id)
    .bind(&i.group)
    .bind(&i.os_id)
    .bind(&i.version)
    .bind(&i.slot)
    .bind(&i.state)
    .bind(i.rolled_back.join(","))
    .bind(&i.last_error)
    .bind(i.first_seen)
    .bind(i.last_checkin)
    .execute(e)
    .await?;
    Ok(())
}

/// Records a check-in that changed nothing but the time.
pub async fn touch_instance<'e, E: Executor<'e, Database = Any>>(e: E, id: &str, at: i64) -> Result<()> {
    sqlx::query("UPDATE instances SET last_checkin = $2 WHERE id = $1 AND last_checkin < $2")
        .bind(id)
        .bind(at)
        .execute(e)
        .await?;
    Ok(())
}

pub async fn instances(db: &Db, f: &InstanceFilter) -> Result<Vec<Instance>> {
    let rows = sqlx::query(&format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances i WHERE ($1 IS NULL OR i.group_name = $1) \
         AND ($2 IS NULL OR i.version = $2) AND ($3 IS NULL OR i.state = $3) ORDER BY i.id LIMIT $4"
    ))
    .bind(&f.group)
    .bind(&f.version)
    .bind(&f.state)
    .bind(f.limit.unwrap_or(1000).clamp(1, 100_000))
    .fetch_all(&db.read)
    .await?;
    rows.iter().map(instance_from).collect()
}

/// `(group, version, state, hosts)` for every combination present.
pub async fn instance_counts(db: &Db) -> Result<Vec<(String, String, String, i64)>> {
    let rows = sqlx::query(
        "SELECT group_name, version, state, COUNT(*) FROM instances GROUP BY group_name, version, state \
         ORDER BY group_name, version, state",
    )
    .fetch_all(&db.read)
    .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))).collect()
}

// ---- grants ----

/// The rollout of `version` in `group` at `now`, counted as [`RolloutCounts`] defines it.
pub async fn rollout_counts<'e, E: Executor<'e, Database = Any>>(
    e: E,
    group: &str,
    version: &str,
    policy: &GroupPolicy,
    now: i64,
) -> Result<RolloutCounts> {
    let period_start = now - policy.period_s as i64 * 1000;
    let timed_out = now - policy.grant_timeout_s as i64 * 1000;
    let row = sqlx::query(
        "SELECT COUNT(*) FILTER (WHERE granted_at > $3), \
                COUNT(*) FILTER (WHERE outcome = 'pending' AND granted_at > $4), \
                COUNT(*) FILTER (WHERE outcome = 'succeeded'), \
                COUNT(*) FILTER (WHERE outcome = 'failed' OR (outcome = 'pending' AND granted_at <= $4)) \
         FROM grants WHERE group_name = $1 AND version = $2",
    )
    .bind(group)
    .bind(version)
    .bind(period_start)
    .bind(timed_out)
    .fetch_one(e)
    .await?;
    Ok(RolloutCounts {
        granted_in_period: row.try_get::<i64, _>(0)? as u32,
        outstanding: row.try_get::<i64, _>(1)? as u32,
        succeeded: row.try_get::<i64, _>(2)? as u32,
        failed: row.try_get::<i64, _>(3)? as u32,
    })
}

pub async fn insert_grant<'e, E: Executor<'e, Database = Any>>(
    e: E,
    group: &str,
    instance: &str,
    version: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO grants (group_name, instance_id, version, granted_at, outcome) VALUES ($1, $2, $3, $4, 'pending')",
    )
    .bind(group)
    .bind(instance)
    .bind(version)
    .bind(now)
    .execute(e)
    .await?;
    Ok(())
}

/// Records the outcome of the host's pending grant of `version`; `false` if it held none.
pub async fn finish_grant<'e, E: Executor<'e, Database = Any>>(
    e: E,
    instance: &str,
    version: &str,
    outcome: &str,
    now: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE grants SET outcome = $3, reported_at = $4 WHERE instance_id = $1 AND version = $2 AND outcome = 'pending'",
    )
    .bind(instance)
    .bind(version)
    .bind(outcome)
    .bind(now)
    .execute(e)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Marks the group's failed (and timed-out) grants `dismissed`: they no longer count.
pub async fn dismiss_failures(db: &Db, group: &str, policy: &GroupPolicy, now: i64) -> Result<u64> {
    let timed_out = now - policy.grant_timeout_s as i64 * 1000;
    let done = sqlx::query(
        "UPDATE grants SET outcome = 'dismissed', reported_at = $3 WHERE group_name = $1 \
         AND (outcome = 'failed' OR (outcome = 'pending' AND granted_at <= $2))",
    )
    .bind(group)
    .bind(timed_out)
    .bind(now)
    .execute(&db.write)
    .await?;
    Ok(done.rows_affected())
}

// ---- events ----

pub async fn insert_event<'e, E: Executor<'e, Database = Any>>(
    e: E,
    at: i64,
    instance: &str,
    group: Option<&str>,
    kind: &str,
    version: &str,
    error: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (at, instance_id, group_name, kind, version, error) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(at)
    .bind(instance)
    .bind(group)
    .bind(kind)
    .bind(version)
    .bind(error)
    .execute(e)
    .await?;
    Ok(())
}

pub async fn events(db: &Db, f: &EventFilter) -> Result<Vec<EventRecord>> {
    let rows = sqlx::query(
        "SELECT id, at, instance_id, group_name, kind, version, error FROM events \
         WHERE ($1 IS NULL OR instance_id = $1) AND ($2 IS NULL OR group_name = $2) AND at >= $3 \
         ORDER BY id DESC LIMIT $4",
    )
    .bind(&f.instance)
    .bind(&f.group)
    .bind(f.since.unwrap_or(0))
    .bind(f.limit.unwrap_or(100).clamp(1, 100_000))
    .fetch_all(&db.read)
    .await?;
    let mut out = rows
        .iter()
        .map(|r| {
            Ok(EventRecord {
                id: r.try_get(0)?,
                at: r.try_get(1)?,
                instance_id: r.try_get(2)?,
                group: r.try_get(3)?,
                kind: r.try_get(4)?,
                version: r.try_get(5)?,
                error: r.try_get(6)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    out.reverse();
    Ok(out)
}

// ---- tokens ----

pub async fn insert_token(db: &Db, sha256: &str, name: &str, now: i64, expires_at: Option<i64>) -> Result<()> {
    sqlx::query("INSERT INTO tokens (sha256, name, created_at, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(sha256)
        .bind(name)
        .bind(now)
        .bind(expires_at)
        .execute(&db.write)
        .await?;
    Ok(())
}

/// The token's name, if the hash is a token that is neither expired nor revoked at `now`.
pub async fn valid_token_name(db: &Db, sha256: &str, now: i64) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT name FROM tokens WHERE sha256 = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)",
    )
    .bind(sha256)
    .bind(now)
    .fetch_optional(&db.read)
    .await?)
}

/// Every admin token, oldest first (hashes shortened to an id; never the tokens).
pub async fn tokens(db: &Db) -> Result<Vec<cairn_release::admin::AdminToken>> {
    let rows =
        sqlx::query("SELECT name, sha256, created_at, expires_at, revoked_at FROM tokens ORDER BY created_at, name")
            .fetch_all(&db.read)
            .await?;
    rows.iter()
        .map(|r| {
            let sha: String = r.try_get(1)?;
            Ok(cairn_release::admin::AdminToken {
                name: r.try_get(0)?,
                id: sha[..12].to_string(),
                created_at: r.try_get(2)?,
                expires_at: r.try_get(3)?,
                revoked_at: r.try_get(4)?,
            })
        })
        .collect()
}

/// Revokes the tokens named `name_or_id` (a name, or the id `tokens` shows); how many.
pub async fn revoke_tokens(db: &Db, name_or_id: &str, now: i64) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE tokens SET revoked_at = $2 WHERE revoked_at IS NULL AND (name = $1 OR substr(sha256, 1, 12) = $1)",
    )
    .bind(name_or_id)
    .bind(now)
    .execute(&db.write)
    .await?;
    Ok(done.rows_affected())
}

/// Whether `group` is halted, its row locked for the rest of the transaction (so concurrent
/// grants in the group wait for this one).
pub async fn group_halted_locked<'e, E: Executor<'e, Database = Any>>(
    e: E,
    dialect: crate::db::Dialect,
    group: &str,
) -> Result<bool> {
    let sql = format!("SELECT halted FROM host_groups WHERE name = $1{}", dialect.lock_row());
    let halted: i64 = sqlx::query_scalar(&sql).bind(group).fetch_one(e).await?;
    Ok(halted != 0)
}

/// The group a host checked in with; `None` for a host never seen.
pub async fn instance_group<'e, E: Executor<'e, Database = Any>>(e: E, id: &str) -> Result<Option<String>> {
    Ok(sqlx::query_scalar("SELECT group_name FROM instances WHERE id = $1").bind(id).fetch_optional(e).await?)
}

/// A host blessed `version`: it runs it now (an update always boots the other slot), without
/// an error; its next check-in confirms it.
pub async fn mark_blessed<'e, E: Executor<'e, Database = Any>>(e: E, id: &str, version: &str) -> Result<()> {
    sqlx::query(
        "UPDATE instances SET last_error = NULL, state = 'blessed', version = $2, \
         slot = CASE WHEN version = $2 THEN slot WHEN slot = 'a' THEN 'b' ELSE 'a' END WHERE id = $1",
    )
    .bind(id)
    .bind(version)
    .execute(e)
    .await?;
    Ok(())
}

pub async fn set_last_error<'e, E: Executor<'e, Database = Any>>(e: E, id: &str, message: &str) -> Result<()> {
    sqlx::query("UPDATE instances SET last_error = $2 WHERE id = $1").bind(id).bind(message).execute(e).await?;
    Ok(())
}
