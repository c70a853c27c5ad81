//! Who an agent request comes from. A host enrolls once with its group's enrollment token and
//! gets a credential of its own (32 random bytes, kept here only as a sha256); every check-in,
//! event and lock request after carries it. An instance id is bound to its credential and its
//! group: a request that names another host or group is refused, so one host cannot speak for
//! another, spend another group's grants, or forge another host's events.

use crate::error::{ApiError, ApiResult};
use crate::ratelimit::RateLimiter;
use crate::rollout::Server;
use crate::store::hosts::{self, Enrolled, Pruned};
use crate::store::{self, StoredHost};
use crate::tokens;
use cairn_release::checkin::{CheckIn, EnrollReply, EnrollRequest, FORMAT};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a credential looked up is trusted without asking the database again. A host
/// forgotten through this server is dropped at once; through another replica, within this.
const CACHE_TTL: Duration = Duration::from_secs(60);
const CACHE_MAX: usize = 200_000;

/// The rate limits of the agent and FleetLock endpoints.
pub struct Limits {
    /// Enrollments per second, server-wide (a stolen enrollment token cannot mint hosts fast).
    pub enroll: RateLimiter,
    /// Requests per second per client: a host by its credential, anyone else by address.
    pub per_client: RateLimiter,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { enroll: RateLimiter::new(10.0, 100), per_client: RateLimiter::new(20.0, 40) }
    }
}

impl Limits {
    pub fn unlimited() -> Limits {
        Limits { enroll: RateLimiter::unlimited(), per_client: RateLimiter::unlimited() }
    }

    pub fn client(&self, key: &str) -> ApiResult<()> {
        match self.per_client.allow(key, Instant::now()) {
            true => Ok(()),
            false => Err(ApiError::TooMany(format!("too many requests from {key}: slow down"))),
        }
    }
}

/// Credentials recently seen: hash -> (when looked up, owner).
#[derive(Default)]
pub struct Cache(Mutex<HashMap<String, (Instant, Enrolled)>>);

impl Cache {
    fn get(&self, hash: &str) -> Option<Enrolled> {
        let cache = self.0.lock().expect("credential cache lock");
        cache.get(hash).filter(|(at, _)| at.elapsed() < CACHE_TTL).map(|(_, e)| e.clone())
    }

    fn put(&self, hash: String, enrolled: Enrolled) {
        let mut cache = self.0.lock().expect("credential cache lock");
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(hash, (Instant::now(), enrolled));
    }

    fn remove(&self, hash: &str) {
        self.0.lock().expect("credential cache lock").remove(hash);
    }

    fn forget(&self, instance_id: &str) {
        self.0.lock().expect("credential cache lock").retain(|_, (_, e)| e.instance_id != instance_id);
    }
}

/// Whether an enrollment may go ahead: the group takes enrollments, the token is its token,
/// and an instance enrolled already presents its own current credential.
pub fn may_enroll(
    group: &str,
    group_token: Option<Option<String>>,
    token_hash: &str,
    instance_id: &str,
    existing: Option<&str>,
    current_hash: Option<&str>,
) -> ApiResult<()> {
    let Some(group_token) = group_token else { return Err(ApiError::NotFound(format!("unknown group {group:?}"))) };
    let Some(group_token) = group_token else {
        return Err(ApiError::Forbidden(format!(
            "group {group:?} takes no enrollments: an admin gives it a token (`updatectl group enrollment-token {group}`)"
        )));
    };
    if group_token != token_hash {
        return Err(ApiError::Unauthorized(format!("not group {group:?}'s enrollment token")));
    }
    if let Some(existing) = existing
        && current_hash != Some(existing)
    {
        return Err(ApiError::Conflict(format!(
            "instance {instance_id:?} is enrolled already: only its own credential enrolls it again \
             (a host that lost it is let in after `updatectl instance forget {instance_id}`)"
        )));
    }
    Ok(())
}

/// Whether a request that says it is `instance_id` (in `group`, when it says) may be made
/// with the credential of `enrolled`.
pub fn check_claim(enrolled: &Enrolled, instance_id: &str, group: Option<&str>) -> ApiResult<()> {
    if enrolled.instance_id != instance_id {
        return Err(ApiError::Forbidden(format!(
            "this credential is instance {:?}'s, not {instance_id:?}'s",
            enrolled.instance_id
        )));
    }
    if let Some(group) = group
        && group != enrolled.group
    {
        return Err(ApiError::Forbidden(format!(
            "instance {instance_id:?} is enrolled in group {:?}: enroll again with group {group:?}'s token",
            enrolled.group
        )));
    }
    Ok(())
}

pub(crate) fn credential_required() -> ApiError {
    ApiError::Unauthorized(
        "a host credential is required (Authorization: Bearer CREDENTIAL, from POST /v1/enroll)".into(),
    )
}

/// How long hosts and events are kept.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// A host not seen for this long is forgotten (it enrolls again when it returns).
    pub hosts: Duration,
    pub events: Duration,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention { hosts: Duration::from_secs(90 * 86400), events: Duration::from_secs(90 * 86400) }
    }
}

impl Server {
    pub async fn enroll(&self, req: &EnrollRequest) -> ApiResult<EnrollReply> {
        if !self.limits.enroll.allow("", Instant::now()) {
            return Err(ApiError::TooMany("too many enrollments: try again later".into()));
        }
        req.validate()?;
        let group_token = hosts::enrollment_token(&self.db, &req.group).await?;
        let existing = hosts::credential_of(&self.db, &req.instance_id).await?;
        let current = req.current.as_deref().map(tokens::hash);
        may_enroll(
            &req.group,
            group_token,
            &tokens::hash(&req.token),
            &req.instance_id,
            existing.as_ref().map(|(hash, _)| hash.as_str()),
            current.as_deref(),
        )?;
        let credential = tokens::generate()?;
        hosts::enroll(&self.db, &req.instance_id, &req.group, &tokens::hash(&credential), self.now_ms()).await?;
        // The credential it replaces, if any, stops working here at once (no scan of the cache).
        if let Some((old, _)) = &existing {
            self.credentials.remove(old);
        }
        tracing::info!(instance = req.instance_id, group = req.group, "host enrolled");
        Ok(EnrollReply { format: FORMAT, credential })
    }

    /// The host a bearer credential belongs to.
    pub async fn authenticate_host(&self, bearer: Option<&str>) -> ApiResult<Enrolled> {
        self.enrolled_by_hash(&tokens::hash(bearer.ok_or_else(credential_required)?)).await
    }

    async fn enrolled_by_hash(&self, hash: &str) -> ApiResult<Enrolled> {
        if let Some(enrolled) = self.credentials.get(hash) {
            return Ok(enrolled);
        }
        match hosts::enrolled(&self.db, hash).await? {
            Some(enrolled) => {
                self.credentials.put(hash.to_string(), enrolled.clone());
                Ok(enrolled)
            }
            None => Err(ApiError::Unauthorized("the host credential is not valid: enroll again".into())),
        }
    }

    /// A check-in's host, read with its credential in one query (a fleet checking in hourly
    /// would miss any cache): the credential hash must be the instance's own, in its group.
    /// A refusal then looks up whose credential it is, to say so.
    pub(crate) async fn authenticate_check_in(
        &self,
        c: &CheckIn,
        hash: &str,
        grant_cutoff: i64,
    ) -> ApiResult<Option<StoredHost>> {
        match store::enrolled_host(&self.db, &c.instance_id, grant_cutoff).await? {
            Some((credential, stored)) if credential.sha256 == hash => {
                let owner = Enrolled { instance_id: c.instance_id.clone(), group: credential.group };
                check_claim(&owner, &c.instance_id, Some(&c.group))?;
                self.limits.client(&format!("host {}", c.instance_id))?;
                Ok(stored)
            }
            _ => {
                let owner = self.enrolled_by_hash(hash).await?;
                check_claim(&owner, &c.instance_id, Some(&c.group))?;
                Err(ApiError::Unauthorized("the host credential is not valid: enroll again".into()))
            }
        }
    }

    /// Forgets a host: its credential and its record.
    pub async fn forget_instance(&self, id: &str) -> ApiResult<()> {
        if !hosts::forget(&self.db, id).await? {
            return Err(ApiError::NotFound(format!("no instance {id:?}")));
        }
        self.credentials.forget(id);
        tracing::info!(instance = id, "instance forgotten");
        Ok(())
    }

    /// A new enrollment token for `group` (only its hash is kept); the token itself.
    pub async fn new_enrollment_token(&self, group: &str) -> ApiResult<String> {
        let token = tokens::generate()?;
        if !hosts::set_enrollment_token(&self.db, group, Some(&tokens::hash(&token)), self.now_ms()).await? {
            return Err(ApiError::NotFound(format!("unknown group {group:?}")));
        }
        tracing::info!(group, "enrollment token set");
        Ok(token)
    }

    pub async fn remove_enrollment_token(&self, group: &str) -> ApiResult<()> {
        if !hosts::set_enrollment_token(&self.db, group, None, self.now_ms()).await? {
            return Err(ApiError::NotFound(format!("unknown group {group:?}")));
        }
        tracing::info!(group, "enrollment token removed");
        Ok(())
    }

    /// Forgets hosts and events older than the retention.
    pub async fn prune(&self, keep: Retention) -> ApiResult<Pruned> {
        let now = self.now_ms();
        let ms = |d: Duration| now - d.as_millis() as i64;
        let pruned = hosts::prune(&self.db, ms(keep.hosts), ms(keep.events)).await?;
        if pruned != Pruned::default() {
            self.credentials.0.lock().expect("credential cache lock").clear();
            tracing::info!(instances = pruned.instances, events = pruned.events, "pruned");
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enrolled() -> Enrolled {
        Enrolled { instance_id: "h1".into(), group: "edge".into() }
    }

    #[test]
    fn a_credential_speaks_only_for_its_own_host_and_group() {
        assert!(check_claim(&enrolled(), "h1", Some("edge")).is_ok());
        assert!(check_claim(&enrolled(), "h1", None).is_ok());
        assert!(matches!(check_claim(&enrolled(), "h2", Some("edge")), Err(ApiError::Forbidden(_))));
        assert!(matches!(check_claim(&enrolled(), "h1", Some("prod")), Err(ApiError::Forbidden(_))));
    }

    #[test]
    fn enrollment_needs_the_groups_token_and_an_enrolled_host_its_own_credential() {
        let token = Some(Some("t".to_string()));
        assert!(may_enroll("g", token.clone(), "t", "h1", None, None).is_ok());
        assert!(matches!(may_enroll("g", None, "t", "h1", None, None), Err(ApiError::NotFound(_))));
        assert!(matches!(may_enroll("g", Some(None), "t", "h1", None, None), Err(ApiError::Forbidden(_))));
        assert!(matches!(may_enroll("g", token.clone(), "x", "h1", None, None), Err(ApiError::Unauthorized(_))));
        let taken = may_enroll("g", token.clone(), "t", "h1", Some("c"), None);
        assert!(matches!(taken, Err(ApiError::Conflict(_))), "another host claiming h1");
        assert!(matches!(may_enroll("g", token.clone(), "t", "h1", Some("c"), Some("d")), Err(ApiError::Conflict(_))));
        assert!(may_enroll("g", token, "t", "h1", Some("c"), Some("c")).is_ok(), "h1 itself, moving");
    }
}
