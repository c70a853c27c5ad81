//! What the server does for agents: answer check-ins by the group's rollout policy and record
//! reported events. Grants and events are committed before the answer; a check-in that only
//! says "still here, nothing changed" is written late, batched with others ([`Server::flush_heartbeats`]),
//! which is what lets one SQLite file serve thousands of check-ins a second.

use crate::clock::Clock;
use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::locks::Locks;
use crate::metrics::Metrics;
use crate::policy::{Decision, GroupPolicy, HostView, RolloutCounts, decide, should_halt, target_version};
use crate::store::{self, Group, Instance};
use cairn_release::checkin::{CheckIn, CheckInReply, Event, EventKind, FORMAT, Offer};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a group's settings are reused before they are read again. Changes made through this
/// server apply at once; changes made through another replica within this time.
const GROUP_CACHE_TTL: Duration = Duration::from_secs(1);

/// How long (by the server's clock) a rollout's counts are reused to answer check-ins. They only
/// decide whether a grant is worth trying: a grant itself counts again under the group's lock.
const COUNTS_CACHE_MS: i64 = 250;

/// A group as check-ins need it: settings and the release it installs.
#[derive(Debug)]
pub struct GroupView {
    pub group: Group,
    /// The target version's offer, if the TUF repository has that release; else why not.
    pub target: Result<Offer, String>,
}

pub struct Server {
    pub db: Db,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    /// Reboot semaphores (FleetLock).
    pub locks: Locks,
    /// Rate limits of the agent and FleetLock endpoints.
    pub limits: crate::identity::Limits,
    /// Host credentials recently looked up.
    pub(crate) credentials: crate::identity::Cache,
    /// The hash of the token `/metrics` needs, if it needs one.
    pub metrics_token: Option<String>,
    /// Whether check-ins and events need a host credential (always, but for a benchmark's
    /// baseline on loopback: `--insecure-no-agent-auth`).
    pub agent_auth: bool,
    /// The TUF repository releases are offered from, when the server has one.
    pub tuf: Option<Arc<crate::tuf::TufRepository>>,
    groups: Mutex<HashMap<String, (Instant, Arc<GroupView>)>>,
    /// Hosts whose check-in changed nothing but the time: id -> time, written in batches.
    heartbeats: Mutex<HashMap<String, i64>>,
    /// `(group, version)` -> (counted at, counts).
    counts: Mutex<HashMap<(String, String), (i64, RolloutCounts)>>,
}

impl Server {
    pub fn new(db: Db, clock: Arc<dyn Clock>) -> Server {
        Server {
            db,
            clock,
            metrics: Metrics::new(),
            locks: Locks::default(),
            limits: crate::identity::Limits::default(),
            credentials: crate::identity::Cache::default(),
            metrics_token: None,
            agent_auth: true,
            tuf: None,
            groups: Mutex::new(HashMap::new()),
            heartbeats: Mutex::new(HashMap::new()),
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Where the reboot semaphores live, and whether lock groups are created on first use.
    pub fn with_locks(self, locks: Locks) -> Server {
        Server { locks, ..self }
    }

    pub fn with_limits(self, limits: crate::identity::Limits) -> Server {
        Server { limits, ..self }
    }

    /// Check-ins and events without credentials: only for measuring what authentication costs.
    pub fn without_agent_auth(self) -> Server {
        Server { agent_auth: false, ..self }
    }

    /// Offers releases of this TUF repository (without one, a server coordinates reboots only).
    pub fn with_tuf(self, tuf: Option<Arc<crate::tuf::TufRepository>>) -> Server {
        Server { tuf, ..self }
    }

    /// `/metrics` then needs `token` as a bearer token.
    pub fn with_metrics_token(self, token: Option<&str>) -> Server {
        Server { metrics_token: token.map(crate::tokens::hash), ..self }
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Forgets cached group settings and rollout counts after a change.
    pub fn invalidate_groups(&self) {
        self.groups.lock().expect("groups lock").clear();
        self.invalidate_counts();
    }

    fn invalidate_counts(&self) {
        self.counts.lock().expect("counts lock").clear();
    }

    /// The rollout's counts, recent enough to decide whether to try a grant.
    async fn recent_counts(
        &self,
        group: &str,
        version: &str,
        policy: &GroupPolicy,
        now: i64,
    ) -> ApiResult<RolloutCounts> {
        let key = (group.to_string(), version.to_string());
        if let Some((at, counts)) = self.counts.lock().expect("counts lock").get(&key)
            && (0..COUNTS_CACHE_MS).contains(&(now - at))
        {
            return Ok(*counts);
        }
        let counts = store::rollout_counts(&self.db.read, group, version, policy, now).await?;
        self.counts.lock().expect("counts lock").insert(key, (now, counts));
        Ok(counts)
    }

    pub async fn group_view(&self, name: &str) -> ApiResult<Arc<GroupView>> {
        if let Some((at, view)) = self.groups.lock().expect("groups lock").get(name)
            && at.elapsed() < GROUP_CACHE_TTL
        {
            return Ok(view.clone());
        }
        let group =
            store::group(&self.db, name).await?.ok_or_else(|| ApiError::NotFound(format!("unknown group {name:?}")))?;
        let target = match target_version(&group.policy, group.channel_version.as_deref()) {
            None => Err(format!("channel {:?} has no version yet", group.channel)),
            Some(version) => match &self.tuf {
                None => Err("this server has no TUF repository".into()),
                Some(tuf) => tuf.offer(version).ok_or_else(|| format!("the TUF repository has no release {version}")),
            },
        };
        let view = Arc::new(GroupView { group, target });
        self.groups.lock().expect("groups lock").insert(name.to_string(), (Instant::now(), view.clone()));
        Ok(view)
    }

    /// Answers a check-in; `credential` is the hash of the bearer credential it came with
    /// (`None` only without agent authentication), checked against the instance's own in the
    /// same query that reads the host.
    pub async fn check_in(&self, c: &CheckIn, credential: Option<&str>) -> ApiResult<CheckInReply> {
        c.validate()?;
        let now = self.now_ms();
        let view = self.group_view(&c.group).await;
        let grant_cutoff = view.as_ref().map_or(now, |v| now - v.group.policy.grant_timeout_s as i64 * 1000);
        let stored = match credential {
            Some(hash) => self.authenticate_check_in(c, hash, grant_cutoff).await?,
            None => store::stored_host(&self.db, &c.instance_id, grant_cutoff).await?,
        };
        let view = view?;
        let policy = &view.group.policy;
        let instance = Instance {
            id: c.instance_id.clone(),
            group: c.group.clone(),
            os_id: c.os_id.clone(),
            version: c.version.clone(),
            slot: c.slot.clone(),
            state: c.state.clone(),
            rolled_back: c.rolled_back.clone(),
            last_error: stored.as_ref().and_then(|s| s.instance.last_error.clone()),
            first_seen: stored.as_ref().map_or(now, |s| s.instance.first_seen),
            last_checkin: now,
        };
        let changed = stored.as_ref().is_none_or(|s| !same_report(&s.instance, &instance));
        let outstanding = stored.as_ref().and_then(|s| s.outstanding_grant.clone());
        let host = HostView {
            instance_id: &c.instance_id,
            version: &c.version,
            outstanding_grant: outstanding.as_deref(),
            rolled_back: &c.rolled_back,
            state: &c.state,
        };

        let (target, offer) = match &view.target {
            Ok(offer) => (Some(offer.version.as_str()), Some(offer)),
            Err(_) => (None, None),
        };
        // Counting the rollout costs a query; hosts that are up to date (most of them, most of
        // the time) do not need it.
        let behind = target.is_some_and(|t| cairn_release::version::compare(&c.version, t) == Ordering::Less);
        let mut halted = view.group.halted;
        let mut decision = if behind {
            let counts = self.recent_counts(&view.group.name, target.unwrap_or_default(), policy, now).await?;
            if !halted && should_halt(policy, &counts) {
                self.halt(&view.group.name, &format!("{} failures of {}", counts.failed, target.unwrap_or_default()))
                    .await?;
                halted = true;
            }
            decide(policy, halted, target, &counts, &host)
        } else {
            match &view.target {
                Err(why) => Decision::NoUpdate(why.clone()),
                Ok(_) => Decision::NoUpdate("up to date".into()),
            }
        };

        if let Decision::Offer { new_grant: true, .. } = decision {
            decision = self.grant(&view, &instance, now).await?;
        } else if changed {
            if stored.is_none() {
                tracing::info!(instance = instance.id, group = instance.group, version = instance.version, "new host");
            }
            self.heartbeats.lock().expect("heartbeats lock").remove(&instance.id);
            store::upsert_instance(&self.db.write, &instance).await?;
        } else {
            self.heartbeats.lock().expect("heartbeats lock").insert(instance.id, now);
        }

        let reply = match decision {
            Decision::Offer { .. } => {
                self.metrics.checkin("offer");
                CheckInReply { format: FORMAT, update: offer.cloned(), reason: None }
            }
            Decision::NoUpdate(reason) => {
                self.metrics.checkin("none");
                CheckInReply { format: FORMAT, update: None, reason: Some(reason) }
            }
        };
        Ok(reply)
    }

    /// Grants the group's target to the host, deciding again under the group's write lock so
    /// that concurrent check-ins (and replicas) never grant more than the policy allows.
    async fn grant(&self, view: &GroupView, instance: &Instance, now: i64) -> ApiResult<Decision> {
        let g = &view.group;
        let target = view.target.as_ref().map(|o| o.version.as_str()).ok();
        let mut tx = self.db.write.begin_with(self.db.dialect.begin_write()).await?;
        let halted = store::group_halted_locked(&mut *tx, self.db.dialect, &g.name).await?;
        let counts = store::rollout_counts(&mut *tx, &g.name, target.unwrap_or_default(), &g.policy, now).await?;
        let host = HostView {
            instance_id: &instance.id,
            version: &instance.version,
            outstanding_grant: None,
            rolled_back: &instance.rolled_back,
            state: &instance.state,
        };
        let decision = decide(&g.policy, halted, target, &counts, &host);
        if let Decision::Offer { version, new_grant: true } = &decision {
            store::insert_grant(&mut *tx, &g.name, &instance.id, version, now).await?;
            store::insert_event(&mut *tx, now, &instance.id, Some(&g.name), "granted", version, None).await?;
        }
        self.heartbeats.lock().expect("heartbeats lock").remove(&instance.id);
        store::upsert_instance(&mut *tx, instance).await?;
        tx.commit().await?;
        self.invalidate_counts();
        if let Decision::Offer { version, new_grant: true } = &decision {
            self.metrics.grants.inc();
            tracing::info!(group = g.name, instance = instance.id, version, "granted");
        }
        Ok(decision)
    }

    async fn halt(&self, group: &str, reason: &str) -> ApiResult<()> {
        if store::halt_group(&self.db.write, group, reason, self.now_ms()).await? {
            self.on_halted(group, reason);
        }
        Ok(())
    }

    fn on_halted(&self, group: &str, reason: &str) {
        self.invalidate_groups();
        self.metrics.halts.inc();
        tracing::warn!(group, reason, "rollout halted");
    }

    pub async fn report(&self, e: &Event) -> ApiResult<()> {
        e.validate()?;
        let now = self.now_ms();
        let kind = match e.kind {
            EventKind::Staged => "staged",
            EventKind::Blessed => "blessed",
            EventKind::RolledBack => "rolled-back",
            EventKind::Failed => "failed",
        };
        let failure = matches!(e.kind, EventKind::RolledBack | EventKind::Failed);
        let mut tx = self.db.write.begin_with(self.db.dialect.begin_write()).await?;
        let group = store::instance_group(&mut *tx, &e.instance_id).await?;
        let Some(group) = group else {
            return Err(ApiError::NotFound(format!("unknown instance {:?}: it must check in first", e.instance_id)));
        };
        store::insert_event(&mut *tx, now, &e.instance_id, Some(&group), kind, &e.version, e.error.as_deref()).await?;
        let mut halted_now = None;
        match e.kind {
            EventKind::Staged => {}
            EventKind::Blessed => {
                store::finish_grant(&mut *tx, &e.instance_id, &e.version, "succeeded", now).await?;
                // The host runs the version now (an update always boots the other slot); its
                // next check-in confirms it, possibly minutes later.
                store::mark_blessed(&mut *tx, &e.instance_id, &e.version).await?;
            }
            EventKind::RolledBack | EventKind::Failed => {
                store::finish_grant(&mut *tx, &e.instance_id, &e.version, "failed", now).await?;
                let message = format!("{kind} {}: {}", e.version, e.error.as_deref().unwrap_or("no detail"));
                store::set_last_error(&mut *tx, &e.instance_id, &message).await?;
                let view = self.group_view(&group).await?;
                let counts = store::rollout_counts(&mut *tx, &group, &e.version, &view.group.policy, now).await?;
                if should_halt(&view.group.policy, &counts) {
                    let reason = format!("{} failures of {}", counts.failed, e.version);
                    if store::halt_group(&mut *tx, &group, &reason, now).await? {
                        halted_now = Some(reason);
                    }
                }
            }
        }
        tx.commit().await?;
        self.invalidate_counts();
        self.metrics.event(kind);
        if let Some(t) = &e.transfer {
            self.metrics.transfer(t);
        }
        if failure {
            tracing::warn!(
                group,
                instance = e.instance_id,
                version = e.version,
                kind,
                error = e.error,
                "host reported"
            );
        } else {
            tracing::info!(group, instance = e.instance_id, version = e.version, kind, "host reported");
        }
        if let Some(reason) = halted_now {
            self.on_halted(&group, &reason);
        }
        Ok(())
    }

    /// Writes the check-ins that changed nothing but the time, in one transaction. Runs every
    /// second and at shutdown.
    pub async fn flush_heartbeats(&self) -> anyhow::Result<usize> {
        let batch = std::mem::take(&mut *self.heartbeats.lock().expect("heartbeats lock"));
        if batch.is_empty() {
            return Ok(0);
        }
        let mut tx = self.db.write.begin_with(self.db.dialect.begin_write()).await?;
        for (id, at) in &batch {
            store::touch_instance(&mut *tx, id, *at).await?;
        }
        tx.commit().await?;
        Ok(batch.len())
    }
}

/// Whether a check-in reports what the database holds already (all but the time).
fn same_report(stored: &Instance, now: &Instance) -> bool {
    stored.group == now.group
        && stored.os_id == now.os_id
        && stored.version == now.version
        && stored.slot == now.slot
        && stored.state == now.state
        && stored.rolled_back == now.rolled_back
}
