//! Reboot semaphores (FleetLock): per group, a slot count an operator can change at any time,
//! and the holders. Owned and recursive, as FleetLock wants: taking a slot you hold succeeds,
//! releasing one you do not hold succeeds.
//!
//! Groups are registered in the server's database (`lock_groups`: slots, optional token). The
//! holders live in the database too (the default store) or in etcd v3 (airlock's layout), where
//! the key's `total_slots` counts once it exists. Every lock and unlock is an event.

pub mod etcd;

use crate::db::Db;
use crate::store::{lock_groups, lock_holders};
use anyhow::Result;
pub use cairn_release::admin::{Holder, LockGroup};
use etcd::EtcdSemaphores;
use std::collections::BTreeMap;

pub use crate::store::lock_groups::Registration;
pub use crate::store::lock_holders::Lock;

/// Slot count of a group created on first use.
pub const FIRST_USE_SLOTS: i64 = 1;

pub enum Store {
    Database,
    Etcd(Box<EtcdSemaphores>),
}

pub struct Locks {
    pub store: Store,
    /// Create a group the first time a host asks for its lock (with `FIRST_USE_SLOTS`),
    /// instead of answering `unknown_group`.
    pub create_on_first_use: bool,
}

impl Default for Locks {
    fn default() -> Locks {
        Locks { store: Store::Database, create_on_first_use: false }
    }
}

async fn event(db: &Db, now: i64, id: &str, group: &str, kind: &str) -> Result<()> {
    crate::store::insert_event(&db.write, now, id, Some(group), kind, "", None).await
}

impl Locks {
    /// Who may use a group's lock: its token hash and whether it is open to anyone; `None`
    /// for an unknown group (unless groups are created on first use: then it is created here,
    /// closed). A group only etcd knows (airlock's) is closed and has no token: hosts
    /// authenticate with their own credentials.
    pub async fn access_of(&self, db: &Db, group: &str, now: i64) -> Result<Option<Registration>> {
        if let Some(registration) = lock_groups::registered(db, group).await? {
            return Ok(Some(registration));
        }
        if let Store::Etcd(etcd) = &self.store
            && let Some(semaphore) = etcd.semaphore(group).await?
        {
            return Ok(Some(Registration { slots: semaphore.total_slots as i64, token: None, anonymous: false }));
        }
        if self.create_on_first_use {
            lock_groups::register(db, group, FIRST_USE_SLOTS, now).await?;
            tracing::info!(group, slots = FIRST_USE_SLOTS, "lock group created on first use");
            return Ok(Some(Registration { slots: FIRST_USE_SLOTS, token: None, anonymous: false }));
        }
        Ok(None)
    }

    /// `pre-reboot`: takes a slot for `id` if one is free.
    pub async fn lock(&self, db: &Db, group: &str, id: &str, now: i64) -> Result<Lock> {
        match &self.store {
            Store::Database => lock_holders::lock(db, group, id, now).await,
            Store::Etcd(etcd) => {
                // The registry is read only for a group whose key does not exist yet (its first
                // lock), not on every request.
                let mut lock = etcd.lock(group, id, now, None).await?;
                if lock == Lock::UnknownGroup
                    && let Some(registration) = lock_groups::registered(db, group).await?
                {
                    lock = etcd.lock(group, id, now, Some(registration.slots)).await?;
                }
                if lock == (Lock::Held { already: false }) {
                    event(db, now, id, group, "pre-reboot").await?;
                }
                Ok(lock)
            }
        }
    }

    /// `steady-state` (`kind`), or an operator's release (`lock-released`): frees `id`'s slot.
    /// `None` for an unknown group, else whether it held one.
    pub async fn unlock(&self, db: &Db, group: &str, id: &str, now: i64, kind: &str) -> Result<Option<bool>> {
        match &self.store {
            Store::Database => lock_holders::unlock(db, group, id, now, kind).await,
            Store::Etcd(etcd) => {
                let released = etcd.unlock(group, id).await?;
                if released == Some(true) {
                    event(db, now, id, group, kind).await?;
                }
                if released.is_none() && lock_groups::registered(db, group).await?.is_some() {
                    // Registered, but no host has locked it yet: nothing to release.
                    return Ok(Some(false));
                }
                Ok(released)
            }
        }
    }

    /// Sets the group's slot count, creating the group if needed. Fewer slots than holders is
    /// allowed: nobody is evicted, and no new slot is granted until enough are released.
    pub async fn set_slots(&self, db: &Db, group: &str, slots: i64, now: i64) -> Result<()> {
        lock_groups::set_slots(db, group, slots, now).await?;
        if let Store::Etcd(etcd) = &self.store {
            etcd.set_slots(group, slots).await?;
        }
        Ok(())
    }

    /// Sets (or with `None`, removes) the token the group's lock requests need. `false`: no group.
    pub async fn set_token(&self, db: &Db, group: &str, token_sha256: Option<&str>, now: i64) -> Result<bool> {
        if let Store::Etcd(etcd) = &self.store
            && let Some(semaphore) = etcd.semaphore(group).await?
        {
            // A group only airlock knew: register it to hold the token.
            lock_groups::register(db, group, semaphore.total_slots as i64, now).await?;
        }
        lock_groups::set_token(db, group, token_sha256, now).await
    }

    /// Opens the group to clients that cannot authenticate, or closes it. `false`: no group.
    pub async fn set_anonymous(&self, db: &Db, group: &str, anonymous: bool, now: i64) -> Result<bool> {
        if let Store::Etcd(etcd) = &self.store
            && let Some(semaphore) = etcd.semaphore(group).await?
        {
            lock_groups::register(db, group, semaphore.total_slots as i64, now).await?;
        }
        lock_groups::set_anonymous(db, group, anonymous, now).await
    }

    /// Every group (or one), with its slots and holders.
    pub async fn status(&self, db: &Db, group: Option<&str>) -> Result<Vec<LockGroup>> {
        let etcd = match &self.store {
            Store::Database => {
                let mut groups = lock_groups::all(db, group).await?;
                for g in &mut groups {
                    g.holders = lock_holders::holders_of(db, &g.group).await?;
                }
                return Ok(groups);
            }
            Store::Etcd(etcd) => etcd,
        };
        let mut groups: BTreeMap<String, LockGroup> =
            lock_groups::all(db, group).await?.into_iter().map(|g| (g.group.clone(), g)).collect();
        let semaphores = match group {
            Some(g) => etcd.semaphore(g).await?.map(|s| (g.to_string(), s)).into_iter().collect(),
            None => etcd.all().await?,
        };
        for (name, semaphore) in semaphores {
            let entry = groups.entry(name.clone()).or_insert_with(|| LockGroup {
                group: name,
                slots: 0,
                holders: vec![],
                token_required: false,
                anonymous: false,
            });
            entry.slots = semaphore.total_slots as i64;
            entry.holders = semaphore.holders();
        }
        Ok(groups.into_values().collect())
    }
}
