//! Reboot semaphores in etcd v3, in airlock's layout so either server can read (and take over)
//! the other's state: one key per group, `com.coreos.airlock/groups/<group>/v1/semaphore`,
//! holding `{"total_slots": N, "holders": ["id", ...]}`. A key is created with
//! `If(Version(key) = 0) Then Put` and changed with `If(Version(key) = observed) Then Put`,
//! so two servers (or a server and airlock) never both fill the last slot.
//!
//! Cairn adds `cairn_since` (holder -> Unix ms) to show how long a slot has been held; airlock
//! ignores the field and drops it when it writes, which only loses those times.

use super::{Holder, Lock};
use anyhow::{Context, Result, bail};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

const KEY_PREFIX: &str = "com.coreos.airlock/groups/";
const KEY_SUFFIX: &str = "/v1/semaphore";

/// Compare-and-swap rounds before giving up: each lost round means another request changed
/// the semaphore, so the semaphore is making progress while this one retries.
const MAX_ROUNDS: usize = 64;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Semaphore {
    pub total_slots: u64,
    pub holders: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cairn_since: BTreeMap<String, i64>,
}

impl Semaphore {
    fn new(slots: i64) -> Semaphore {
        Semaphore { total_slots: slots.max(0) as u64, ..Semaphore::default() }
    }

    pub fn holders(&self) -> Vec<Holder> {
        let mut out: Vec<Holder> = self
            .holders
            .iter()
            .map(|id| Holder { id: id.clone(), since: self.cairn_since.get(id).copied().unwrap_or(0) })
            .collect();
        out.sort_by(|a, b| (a.since, &a.id).cmp(&(b.since, &b.id)));
        out
    }
}

pub fn key(group: &str) -> String {
    format!("{KEY_PREFIX}{group}{KEY_SUFFIX}")
}

fn group_of(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key).ok()?.strip_prefix(KEY_PREFIX)?.strip_suffix(KEY_SUFFIX)
}

/// What a compare-and-swap round decided.
enum Round<T> {
    Done(T),
    Write(Semaphore, T),
}

pub struct EtcdSemaphores {
    client: Client,
    endpoints: String,
}

impl EtcdSemaphores {
    /// Connects and reads once, so a wrong endpoint fails at start-up rather than on the first
    /// host's reboot.
    pub async fn connect(endpoints: &[String]) -> Result<EtcdSemaphores> {
        let options =
            ConnectOptions::new().with_connect_timeout(Duration::from_secs(5)).with_timeout(Duration::from_secs(10));
        let client = Client::connect(endpoints, Some(options))
            .await
            .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
        let semaphores = EtcdSemaphores { client, endpoints: endpoints.join(",") };
        semaphores.all().await?;
        Ok(semaphores)
    }

    async fn get(&self, group: &str) -> Result<Option<(Semaphore, i64)>> {
        let key = key(group);
        let reply = self.client.kv_client().get(key.clone(), None).await.with_context(|| self.context(&key))?;
        let Some(kv) = reply.kvs().first() else { return Ok(None) };
        let semaphore = serde_json::from_slice(kv.value())
            .with_context(|| format!("etcd key {key}: not a semaphore ({{\"total_slots\", \"holders\"}})"))?;
        Ok(Some((semaphore, kv.version())))
    }

    /// Writes `semaphore` if the key is still at `version` (0: absent). `false`: it changed.
    async fn swap(&self, group: &str, version: i64, semaphore: &Semaphore) -> Result<bool> {
        let key = key(group);
        let txn = Txn::new().when([Compare::version(key.clone(), CompareOp::Equal, version)]).and_then([TxnOp::put(
            key.clone(),
            serde_json::to_vec(semaphore)?,
            None,
        )]);
        let reply = self.client.kv_client().txn(txn).await.with_context(|| self.context(&key))?;
        Ok(reply.succeeded())
    }

    fn context(&self, key: &str) -> String {
        format!("etcd at {}: key {key}", self.endpoints)
    }

    /// Reads, decides and swaps until the swap lands. `initial` is the slot count of a group
    /// whose key does not exist yet (`None`: the group is unknown, and `unknown` is returned).
    async fn update<T>(
        &self,
        group: &str,
        initial: Option<i64>,
        unknown: T,
        decide: impl Fn(&mut Semaphore) -> Round<T>,
    ) -> Result<T> {
        let mut unknown = Some(unknown);
        for _ in 0..MAX_ROUNDS {
            let (mut semaphore, version) = match (self.get(group).await?, initial) {
                (Some(found), _) => found,
                (None, Some(slots)) => (Semaphore::new(slots), 0),
                (None, None) => return Ok(unknown.take().expect("returned once")),
            };
            match decide(&mut semaphore) {
                Round::Done(answer) => return Ok(answer),
                Round::Write(changed, answer) => {
                    if self.swap(group, version, &changed).await? {
                        return Ok(answer);
                    }
                }
            }
        }
        bail!("etcd key {}: still contended after {MAX_ROUNDS} compare-and-swap rounds", key(group))
    }

    /// `pre-reboot`. `initial`: the slot count to create the group's key with if it is missing.
    pub async fn lock(&self, group: &str, id: &str, now: i64, initial: Option<i64>) -> Result<Lock> {
        self.update(group, initial, Lock::UnknownGroup, |s| {
            if s.holders.iter().any(|h| h == id) {
                return Round::Done(Lock::Held { already: true });
            }
            if s.holders.len() as u64 >= s.total_slots {
                return Round::Done(Lock::Full { slots: s.total_slots as i64, holders: s.holders.clone() });
            }
            let mut changed = s.clone();
            changed.holders.push(id.to_string());
            changed.cairn_since.insert(id.to_string(), now);
            Round::Write(changed, Lock::Held { already: false })
        })
        .await
    }

    /// `steady-state`: `None` for an unknown group, else whether `id` held a slot.
    pub async fn unlock(&self, group: &str, id: &str) -> Result<Option<bool>> {
        self.update(group, None, None, |s| {
            if !s.holders.iter().any(|h| h == id) {
                return Round::Done(Some(false));
            }
            let mut changed = s.clone();
            changed.holders.retain(|h| h != id);
            changed.cairn_since.remove(id);
            Round::Write(changed, Some(true))
        })
        .await
    }

    pub async fn set_slots(&self, group: &str, slots: i64) -> Result<()> {
        self.update(group, Some(slots), (), |s| {
            let mut changed = s.clone();
            changed.total_slots = slots.max(0) as u64;
            Round::Write(changed, ())
        })
        .await
    }

    pub async fn semaphore(&self, group: &str) -> Result<Option<Semaphore>> {
        Ok(self.get(group).await?.map(|(s, _)| s))
    }

    /// Every group's semaphore in etcd, by group name (including groups only airlock knows).
    pub async fn all(&self) -> Result<BTreeMap<String, Semaphore>> {
        let reply = self
            .client
            .kv_client()
            .get(KEY_PREFIX, Some(GetOptions::new().with_prefix()))
            .await
            .with_context(|| self.context(KEY_PREFIX))?;
        let mut out = BTreeMap::new();
        for kv in reply.kvs() {
            let Some(group) = group_of(kv.key()) else { continue };
            let semaphore = serde_json::from_slice(kv.value())
                .with_context(|| format!("etcd key {}: not a semaphore", String::from_utf8_lossy(kv.key())))?;
            out.insert(group.to_string(), semaphore);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_airlocks_layout() {
        assert_eq!(key("workers"), "com.coreos.airlock/groups/workers/v1/semaphore");
        assert_eq!(group_of(key("a.b-c").as_bytes()), Some("a.b-c"));
        assert_eq!(group_of(b"com.coreos.airlock/groups/x/v2/other"), None);
        // What airlock writes.
        let s: Semaphore = serde_json::from_str(r#"{"total_slots":2,"holders":["b","a"]}"#).unwrap();
        assert_eq!(s.total_slots, 2);
        assert_eq!(s.holders().iter().map(|h| (h.id.as_str(), h.since)).collect::<Vec<_>>(), [("a", 0), ("b", 0)]);
        // What Cairn writes still has airlock's two fields.
        let mut s = Semaphore::new(1);
        s.holders.push("a".into());
        s.cairn_since.insert("a".into(), 5);
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["total_slots"], 1);
        assert_eq!(v["holders"], serde_json::json!(["a"]));
        assert_eq!(serde_json::to_string(&Semaphore::new(3)).unwrap(), r#"{"total_slots":3,"holders":[]}"#);
    }
}
