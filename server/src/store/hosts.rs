//! Host identity in the database: groups' enrollment tokens and hosts' credentials (both as
//! sha256 hashes only), and pruning what hosts leave behind.

use crate::db::Db;
use anyhow::Result;
use sqlx::{Any, Executor, Row};

/// A credential's owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrolled {
    pub instance_id: String,
    pub group: String,
}

/// The credential an instance holds: its hash and the group it was enrolled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub sha256: String,
    pub group: String,
}

/// The group's enrollment token hash: `None` for an unknown group, `Some(None)` for a group
/// that takes no enrollments.
pub async fn enrollment_token(db: &Db, group: &str) -> Result<Option<Option<String>>> {
    let row = sqlx::query("SELECT enroll_sha256 FROM host_groups WHERE name = $1")
        .bind(group)
        .fetch_optional(&db.read)
        .await?;
    row.map(|r| Ok(r.try_get(0)?)).transpose()
}

/// Sets (or, `None`, removes) the group's enrollment token; false for an unknown group.
pub async fn set_enrollment_token(db: &Db, group: &str, sha256: Option<&str>, now: i64) -> Result<bool> {
    let done = sqlx::query("UPDATE host_groups SET enroll_sha256 = $2, updated_at = $3 WHERE name = $1")
        .bind(group)
        .bind(sha256)
        .bind(now)
        .execute(&db.write)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The credential hash an instance holds, and its group.
pub async fn credential_of(db: &Db, instance_id: &str) -> Result<Option<(String, String)>> {
    let row = sqlx::query("SELECT sha256, group_name FROM host_credentials WHERE instance_id = $1")
        .bind(instance_id)
        .fetch_optional(&db.write)
        .await?;
    row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
}

/// Who holds the credential with this hash.
pub async fn enrolled(db: &Db, sha256: &str) -> Result<Option<Enrolled>> {
    let row = sqlx::query("SELECT instance_id, group_name FROM host_credentials WHERE sha256 = $1")
        .bind(sha256)
        .fetch_optional(&db.read)
        .await?;
    row.map(|r| Ok(Enrolled { instance_id: r.try_get(0)?, group: r.try_get(1)? })).transpose()
}

/// Binds `instance_id` to a new credential in `group`, replacing any it had.
pub async fn enroll(db: &Db, instance_id: &str, group: &str, sha256: &str, now: i64) -> Result<()> {
    let mut tx = db.write.begin_with(db.dialect.begin_write()).await?;
    sqlx::query("DELETE FROM host_credentials WHERE instance_id = $1").bind(instance_id).execute(&mut *tx).await?;
    insert_credential(&mut *tx, instance_id, group, sha256, now).await?;
    tx.commit().await?;
    Ok(())
}

/// Records a credential of an instance that has none (inside the caller's transaction).
pub async fn insert_credential<'e, E: Executor<'e, Database = Any>>(
    e: E,
    instance_id: &str,
    group: &str,
    sha256: &str,
    now: i64,
) -> Result<()> {
    sqlx::query("INSERT INTO host_credentials (instance_id, sha256, group_name, enrolled_at) VALUES ($1, $2, $3, $4)")
        .bind(instance_id)
        .bind(sha256)
        .bind(group)
        .bind(now)
        .execute(e)
        .await?;
    Ok(())
}

/// Forgets a host: its credential and its instance row (its events stay, as history). False
/// when there was nothing to forget.
pub async fn forget(db: &Db, instance_id: &str) -> Result<bool> {
    let mut tx = db.write.begin_with(db.dialect.begin_write()).await?;
    let a =
        sqlx::query("DELETE FROM host_credentials WHERE instance_id = $1").bind(instance_id).execute(&mut *tx).await?;
    let b = sqlx::query("DELETE FROM instances WHERE id = $1").bind(instance_id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(a.rows_affected() + b.rows_affected() > 0)
}

/// What a prune removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub instances: u64,
    pub events: u64,
}

/// Forgets hosts not seen since `seen_before` (enrolled ones that never checked in count from
/// their enrollment) and events older than `events_before`; settled grants go with the events.
pub async fn prune(db: &Db, seen_before: i64, events_before: i64) -> Result<Pruned> {
    let mut tx = db.write.begin_with(db.dialect.begin_write()).await?;
    sqlx::query(
        "DELETE FROM host_credentials WHERE instance_id IN (SELECT id FROM instances WHERE last_checkin < $1) \
         OR (enrolled_at < $1 AND instance_id NOT IN (SELECT id FROM instances))",
    )
    .bind(seen_before)
    .execute(&mut *tx)
    .await?;
    let instances =
        sqlx::query("DELETE FROM instances WHERE last_checkin < $1").bind(seen_before).execute(&mut *tx).await?;
    let events = sqlx::query("DELETE FROM events WHERE at < $1").bind(events_before).execute(&mut *tx).await?;
    sqlx::query("DELETE FROM grants WHERE outcome <> 'pending' AND granted_at < $1")
        .bind(events_before)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Pruned { instances: instances.rows_affected(), events: events.rows_affected() })
}
