//! The admin API's service: what operators can do to channels, groups, the fleet's records and
//! reboot locks, with the rules that go with it (a channel names only releases of the TUF repository, a
//! resumed rollout forgives the failures that halted it, ...). Handlers (`crate::api`) parse
//! and answer; queries live in `crate::store`.

use crate::error::{ApiError, ApiResult};
use crate::policy::{self, GroupPolicy};
use crate::rollout::Server;
use crate::store::{self, EventFilter, InstanceFilter};
use crate::tokens;
use cairn_release::admin::{Channel, ChannelVersion, EventRecord, Group, GroupChange, Instance, LockGroup};
use cairn_release::admin::{NewChannel, Package, RolloutStatus};
use cairn_release::checkin::validate_name;

fn unknown_group(name: &str) -> ApiError {
    ApiError::NotFound(format!("unknown group {name:?}"))
}

fn unknown_lock_group(group: &str) -> ApiError {
    ApiError::NotFound(format!("unknown lock group {group:?}"))
}

impl Server {
    /// Whether `token` (from `Authorization: Bearer`) is an admin token; only hashes are kept.
    pub async fn admin_token_valid(&self, token: &str) -> ApiResult<bool> {
        Ok(store::valid_token_name(&self.db, &tokens::hash(token), self.now_ms()).await?.is_some())
    }

    /// Hosts per group, version and state (for `/metrics`).
    pub async fn fleet_counts(&self) -> ApiResult<Vec<(String, String, String, i64)>> {
        Ok(store::instance_counts(&self.db).await?)
    }

    // ---- channels and packages ----

    pub async fn channels(&self) -> ApiResult<Vec<Channel>> {
        Ok(store::channels(&self.db).await?)
    }

    /// The releases of the TUF repository, read again (an operator may just have published).
    pub async fn packages(&self) -> ApiResult<Vec<Package>> {
        let Some(tuf) = self.reread_tuf().await? else { return Ok(Vec::new()) };
        Ok(tuf.packages())
    }

    /// The TUF repository as it is on disk now, if the server has one.
    async fn reread_tuf(&self) -> ApiResult<Option<std::sync::Arc<crate::tuf::TufRepository>>> {
        let Some(tuf) = self.tuf.clone() else { return Ok(None) };
        let reader = tuf.clone();
        tokio::task::spawn_blocking(move || reader.reread())
            .await
            .map_err(|e| ApiError::Internal(e.into()))?
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("reading the TUF repository: {e}")))?;
        Ok(Some(tuf))
    }

    /// A channel or pin may only name a release that can be offered: one in the TUF repository
    /// (read again first, so a release published a moment ago can be named at once).
    async fn require_release(&self, version: &str) -> ApiResult<()> {
        match self.reread_tuf().await? {
            None => Err(ApiError::BadRequest(format!(
                "no release {version:?}: this server has no TUF repository (--tuf-repo)"
            ))),
            Some(tuf) if tuf.release(version).is_none() => {
                Err(ApiError::BadRequest(format!("no release {version:?} in the TUF repository")))
            }
            Some(_) => Ok(()),
        }
    }

    pub async fn create_channel(&self, c: NewChannel) -> ApiResult<Channel> {
        validate_name("channel", &c.name, 64)?;
        if let Some(v) = &c.version {
            self.require_release(v).await?;
        }
        let now = self.now_ms();
        if !store::create_channel(&self.db, &c.name, c.version.as_deref(), now).await? {
            return Err(ApiError::Conflict(format!("channel {:?} exists", c.name)));
        }
        tracing::info!(channel = c.name, version = c.version, "channel created");
        Ok(Channel { name: c.name, version: c.version, updated_at: now })
    }

    pub async fn set_channel(&self, name: String, c: ChannelVersion) -> ApiResult<Channel> {
        self.require_release(&c.version).await?;
        let now = self.now_ms();
        if !store::set_channel_version(&self.db, &name, &c.version, now).await? {
            return Err(ApiError::NotFound(format!("unknown channel {name:?}")));
        }
        self.invalidate_groups();
        tracing::info!(channel = name, version = c.version, "channel version set");
        Ok(Channel { name, version: Some(c.version), updated_at: now })
    }

    // ---- groups ----

    pub async fn groups(&self) -> ApiResult<Vec<Group>> {
        Ok(store::groups(&self.db).await?)
    }

    pub async fn group(&self, name: &str) -> ApiResult<Group> {
        store::group(&self.db, name).await?.ok_or_else(|| unknown_group(name))
    }

    async fn check_group_refs(&self, g: &Group) -> ApiResult<()> {
        if !store::channel_exists(&self.db, &g.channel).await? {
            return Err(ApiError::BadRequest(format!("unknown channel {:?}", g.channel)));
        }
        if let Some(v) = &g.policy.pinned_version {
            self.require_release(v).await?;
        }
        Ok(())
    }

    pub async fn create_group(&self, change: GroupChange) -> ApiResult<Group> {
        let name = change.name.clone().ok_or_else(|| ApiError::BadRequest("group: name is required".into()))?;
        validate_name("group", &name, 64)?;
        let mut g = Group {
            name: name.clone(),
            channel: "stable".into(),
            channel_version: None,
            policy: GroupPolicy::default(),
            halted: false,
            halted_reason: None,
        };
        apply_change(&change, &mut g)?;
        self.check_group_refs(&g).await?;
        if !store::save_group(&self.db, &g, true, self.now_ms()).await? {
            return Err(ApiError::Conflict(format!("group {name:?} exists")));
        }
        tracing::info!(group = name, "group created");
        self.group(&name).await
    }

    pub async fn update_group(&self, name: &str, change: GroupChange) -> ApiResult<Group> {
        if change.name.as_ref().is_some_and(|n| n != name) {
            return Err(ApiError::BadRequest("name: a group cannot be renamed".into()));
        }
        let mut g = self.group(name).await?;
        let was_halted = g.halted;
        apply_change(&change, &mut g)?;
        self.check_group_refs(&g).await?;
        let now = self.now_ms();
        store::save_group(&self.db, &g, false, now).await?;
        if was_halted && !g.halted {
            // Resuming forgives the failures that halted it; otherwise the next check-in would
            // count them again and halt at once.
            let dismissed = store::dismiss_failures(&self.db, name, &g.policy, now).await?;
            tracing::info!(group = name, dismissed, "rollout resumed");
        }
        self.invalidate_groups();
        tracing::info!(group = name, change = format!("{change:?}"), "group updated");
        self.group(name).await
    }

    // ---- the fleet ----

    pub async fn instances(&self, f: &InstanceFilter) -> ApiResult<Vec<Instance>> {
        Ok(store::instances(&self.db, f).await?)
    }

    pub async fn events(&self, f: &EventFilter) -> ApiResult<Vec<EventRecord>> {
        Ok(store::events(&self.db, f).await?)
    }

    /// Every group's rollout (or one group's): hosts per version and state, and the progress
    /// of the target version.
    pub async fn rollout_status(&self, group: Option<&str>) -> ApiResult<Vec<RolloutStatus>> {
        let groups = store::groups(&self.db).await?;
        if let Some(name) = group
            && !groups.iter().any(|g| g.name == name)
        {
            return Err(unknown_group(name));
        }
        let fleet = store::instance_counts(&self.db).await?;
        let now = self.now_ms();
        let mut out = Vec::new();
        for g in groups.into_iter().filter(|g| group.is_none_or(|n| n == g.name)) {
            let target = policy::target_version(&g.policy, g.channel_version.as_deref()).map(str::to_string);
            let counts = match &target {
                Some(v) => store::rollout_counts(&self.db.read, &g.name, v, &g.policy, now).await?,
                None => Default::default(),
            };
            let mut versions: Vec<(String, i64)> = Vec::new();
            let mut states: Vec<(String, i64)> = Vec::new();
            for (_, version, state, n) in fleet.iter().filter(|(name, ..)| *name == g.name) {
                add(&mut versions, version, *n);
                add(&mut states, state, *n);
            }
            out.push(RolloutStatus {
                hosts: versions.iter().map(|v| v.1).sum(),
                group: g.name,
                channel: g.channel,
                target_version: target,
                paused: !g.policy.updates_enabled,
                halted: g.halted,
                halted_reason: g.halted_reason,
                versions,
                states,
                granted_in_period: counts.granted_in_period,
                in_progress: counts.outstanding,
                succeeded: counts.succeeded,
                failed: counts.failed,
            });
        }
        Ok(out)
    }

    // ---- reboot locks ----

    pub async fn lock_status(&self, group: Option<&str>) -> ApiResult<Vec<LockGroup>> {
        let groups = self.locks.status(&self.db, group).await?;
        if let Some(g) = group
            && groups.is_empty()
        {
            return Err(unknown_lock_group(g));
        }
        Ok(groups)
    }

    pub async fn set_lock_slots(&self, group: &str, slots: i64) -> ApiResult<Vec<LockGroup>> {
        if !crate::fleetlock::valid_group(group) {
            return Err(ApiError::BadRequest(format!("group {group:?}: must match ^[a-zA-Z0-9.-]+$")));
        }
        if !(0..=10_000).contains(&slots) {
            return Err(ApiError::BadRequest(format!("slots {slots}: 0 to 10000")));
        }
        self.locks.set_slots(&self.db, group, slots, self.now_ms()).await?;
        tracing::info!(group, slots, "reboot slots set");
        Ok(self.locks.status(&self.db, Some(group)).await?)
    }

    /// An operator frees `id`'s slot (a host that will never come back).
    pub async fn release_lock(&self, group: &str, id: &str) -> ApiResult<()> {
        match self.locks.unlock(&self.db, group, id, self.now_ms(), "lock-released").await? {
            None => Err(unknown_lock_group(group)),
            Some(false) => Err(ApiError::NotFound(format!("{id:?} holds no reboot slot in {group:?}"))),
            Some(true) => {
                tracing::warn!(group, id, "reboot slot released by an operator");
                Ok(())
            }
        }
    }

    /// Opens the group's lock to clients that cannot authenticate, or closes it.
    pub async fn set_lock_anonymous(&self, group: &str, anonymous: bool) -> ApiResult<Vec<LockGroup>> {
        if !self.locks.set_anonymous(&self.db, group, anonymous, self.now_ms()).await? {
            return Err(ApiError::NotFound(format!("unknown lock group {group:?}")));
        }
        tracing::info!(group, anonymous, "lock group access changed");
        self.lock_status(Some(group)).await
    }

    /// A new token for the group's lock requests (only its hash is kept); the token itself.
    pub async fn new_lock_token(&self, group: &str) -> ApiResult<String> {
        let token = tokens::generate()?;
        if !self.locks.set_token(&self.db, group, Some(&tokens::hash(&token)), self.now_ms()).await? {
            return Err(unknown_lock_group(group));
        }
        tracing::info!(group, "lock token set");
        Ok(token)
    }

    pub async fn remove_lock_token(&self, group: &str) -> ApiResult<()> {
        if !self.locks.set_token(&self.db, group, None, self.now_ms()).await? {
            return Err(unknown_lock_group(group));
        }
        tracing::info!(group, "lock token removed");
        Ok(())
    }
}

fn add(counts: &mut Vec<(String, i64)>, key: &str, n: i64) {
    match counts.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 += n,
        None => counts.push((key.to_string(), n)),
    }
}

/// Applies a change to a group's settings; absent fields keep their value (or the default, on
/// create).
fn apply_change(change: &GroupChange, g: &mut Group) -> ApiResult<()> {
    {
        let p = &mut g.policy;
        if let Some(c) = &change.channel {
            g.channel = c.clone();
        }
        if let Some(v) = change.updates_enabled {
            p.updates_enabled = v;
        }
        if let Some(v) = change.max_per_period {
            p.max_per_period = v;
        }
        if let Some(v) = change.period_s {
            if v == 0 {
                return Err(ApiError::BadRequest("period_s: must be at least 1".into()));
            }
            p.period_s = v;
        }
        if let Some(v) = change.safe_mode {
            p.safe_mode = v;
        }
        if let Some(v) = change.halt_after {
            p.halt_after = v;
        }
        if let Some(v) = change.percentage {
            if v > 100 {
                return Err(ApiError::BadRequest(format!("percentage {v}: at most 100")));
            }
            p.percentage = v;
        }
        if let Some(v) = &change.pinned_version {
            p.pinned_version = (!v.is_empty()).then(|| v.clone());
        }
        if let Some(v) = change.grant_timeout_s {
            if v == 0 {
                return Err(ApiError::BadRequest("grant_timeout_s: must be at least 1".into()));
            }
            p.grant_timeout_s = v;
        }
        match change.halted {
            Some(true) => return Err(ApiError::BadRequest("halted: only false (resume) can be set".into())),
            Some(false) => {
                g.halted = false;
                g.halted_reason = None;
            }
            None => {}
        }
        Ok(())
    }
}
