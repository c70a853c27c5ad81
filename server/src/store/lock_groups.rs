//! The registry of FleetLock groups (`lock_groups`): slot counts and token hashes. Who holds a
//! slot lives in the lock store (`crate::locks`: the database or etcd).

use crate::db::Db;
use anyhow::Result;
use cairn_release::admin::LockGroup;
use sqlx::Row;

/// A registered group's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub slots: i64,
    /// The hash of the group's token, when it has one.
    pub token: Option<String>,
    /// Open to clients that cannot authenticate (Zincati without a token).
    pub anonymous: bool,
}

pub async fn registered(db: &Db, group: &str) -> Result<Option<Registration>> {
    let row = sqlx::query("SELECT slots, token_sha256, anonymous FROM lock_groups WHERE name = $1")
        .bind(group)
        .fetch_optional(&db.read)
        .await?;
    row.map(|r| {
        let anonymous: i64 = r.try_get(2)?;
        Ok(Registration { slots: r.try_get(0)?, token: r.try_get(1)?, anonymous: anonymous != 0 })
    })
    .transpose()
}

/// Opens a group to clients that cannot authenticate, or closes it; `false` for an unknown group.
pub async fn set_anonymous(db: &Db, group: &str, anonymous: bool, now: i64) -> Result<bool> {
    let done = sqlx::query("UPDATE lock_groups SET anonymous = $2, updated_at = $3 WHERE name = $1")
        .bind(group)
        .bind(anonymous as i64)
        .bind(now)
        .execute(&db.write)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Registered groups (one, or all), by name, without holders.
pub async fn all(db: &Db, group: Option<&str>) -> Result<Vec<LockGroup>> {
    let rows = sqlx::query(
        "SELECT name, slots, token_sha256, anonymous FROM lock_groups WHERE ($1 IS NULL OR name = $1) ORDER BY name",
    )
    .bind(group)
    .fetch_all(&db.read)
    .await?;
    rows.iter()
        .map(|r| {
            let token: Option<String> = r.try_get(2)?;
            let anonymous: i64 = r.try_get(3)?;
            Ok(LockGroup {
                group: r.try_get(0)?,
                slots: r.try_get(1)?,
                holders: Vec::new(),
                token_required: token.is_some(),
                anonymous: anonymous != 0,
            })
        })
        .collect()
}

pub async fn register(db: &Db, group: &str, slots: i64, now: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO lock_groups (name, slots, token_sha256, updated_at) VALUES ($1, $2, NULL, $3) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(group)
    .bind(slots)
    .bind(now)
    .execute(&db.write)
    .await?;
    Ok(())
}

/// Sets a group's slot count, creating the group if needed.
pub async fn set_slots(db: &Db, group: &str, slots: i64, now: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO lock_groups (name, slots, token_sha256, updated_at) VALUES ($1, $2, NULL, $3) \
         ON CONFLICT (name) DO UPDATE SET slots = excluded.slots, updated_at = excluded.updated_at",
    )
    .bind(group)
    .bind(slots)
    .bind(now)
    .execute(&db.write)
    .await?;
    Ok(())
}

/// Sets (or with `None` removes) a group's token hash; `false` for an unknown group.
pub async fn set_token(db: &Db, group: &str, token_sha256: Option<&str>, now: i64) -> Result<bool> {
    let done = sqlx::query("UPDATE lock_groups SET token_sha256 = $2, updated_at = $3 WHERE name = $1")
        .bind(group)
        .bind(token_sha256)
        .bind(now)
        .execute(&db.write)
        .await?;
    Ok(done.rows_affected() > 0)
}
