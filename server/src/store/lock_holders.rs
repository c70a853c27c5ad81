//! Reboot semaphores in the server's database (the default store): the holders live in
//! `lock_holders` beside their group's row in `lock_groups`. Every change runs in one write
//! transaction that locks the group's row, so the holders never outnumber the slots, across
//! replicas too.

use crate::db::Db;
use anyhow::Result;
use cairn_release::admin::Holder;
use sqlx::Row;

/// What a request for a reboot slot came to (in either lock store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lock {
    /// The caller holds a slot (`already`: it held it before this request).
    Held {
        already: bool,
    },
    /// Every slot is taken.
    Full {
        slots: i64,
        holders: Vec<String>,
    },
    UnknownGroup,
}

/// The group's slot count and token hash, with its row locked for the transaction.
async fn group_row(tx: &mut sqlx::AnyConnection, db: &Db, group: &str) -> Result<Option<(i64, Option<String>)>> {
    let row =
        sqlx::query(&format!("SELECT slots, token_sha256 FROM lock_groups WHERE name = $1{}", db.dialect.lock_row()))
            .bind(group)
            .fetch_optional(&mut *tx)
            .await?;
    row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
}

async fn holders(tx: &mut sqlx::AnyConnection, group: &str) -> Result<Vec<Holder>> {
    let rows = sqlx::query("SELECT id, since FROM lock_holders WHERE group_name = $1 ORDER BY since, id")
        .bind(group)
        .fetch_all(&mut *tx)
        .await?;
    rows.iter().map(|r| Ok(Holder { id: r.try_get(0)?, since: r.try_get(1)? })).collect()
}

async fn event(tx: &mut sqlx::AnyConnection, now: i64, id: &str, group: &str, kind: &str) -> Result<()> {
    crate::store::insert_event(&mut *tx, now, id, Some(group), kind, "", None).await
}

/// `pre-reboot`: takes a slot for `id` if one is free.
pub async fn lock(db: &Db, group: &str, id: &str, now: i64) -> Result<Lock> {
    // Clients retry a full semaphore often; answering those from a plain read keeps them out of
    // the writer's way, so the holder's release is not queued behind them. Only a request that
    // may succeed takes the group's lock and decides again.
    {
        let mut conn = db.read.acquire().await?;
        let slots: Option<i64> = sqlx::query_scalar("SELECT slots FROM lock_groups WHERE name = $1")
            .bind(group)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(slots) = slots else { return Ok(Lock::UnknownGroup) };
        let current = holders(&mut conn, group).await?;
        if current.iter().any(|h| h.id == id) {
            return Ok(Lock::Held { already: true });
        }
        if current.len() as i64 >= slots {
            return Ok(Lock::Full { slots, holders: current.into_iter().map(|h| h.id).collect() });
        }
    }
    let mut tx = db.write.begin_with(db.dialect.begin_write()).await?;
    let Some((slots, _)) = group_row(&mut tx, db, group).await? else { return Ok(Lock::UnknownGroup) };
    let current = holders(&mut tx, group).await?;
    if current.iter().any(|h| h.id == id) {
        return Ok(Lock::Held { already: true });
    }
    if current.len() as i64 >= slots {
        return Ok(Lock::Full { slots, holders: current.into_iter().map(|h| h.id).collect() });
    }
    sqlx::query("INSERT INTO lock_holders (group_name, id, since) VALUES ($1, $2, $3)")
        .bind(group)
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    event(&mut tx, now, id, group, "pre-reboot").await?;
    tx.commit().await?;
    Ok(Lock::Held { already: false })
}

/// `steady-state` (or an operator's release): frees `id`'s slot. `None` for an unknown group,
/// else whether it held one.
pub async fn unlock(db: &Db, group: &str, id: &str, now: i64, kind: &str) -> Result<Option<bool>> {
    let mut tx = db.write.begin_with(db.dialect.begin_write()).await?;
    if group_row(&mut tx, db, group).await?.is_none() {
        return Ok(None);
    }
    let done = sqlx::query("DELETE FROM lock_holders WHERE group_name = $1 AND id = $2")
        .bind(group)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let released = done.rows_affected() > 0;
    if released {
        event(&mut tx, now, id, group, kind).await?;
    }
    tx.commit().await?;
    Ok(Some(released))
}

/// The holders of `group`, oldest first.
pub async fn holders_of(db: &Db, group: &str) -> Result<Vec<Holder>> {
    holders(&mut *db.read.acquire().await?, group).await
}
