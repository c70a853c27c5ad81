//! The host's side against feeds made by `repo`: what it trusts, and each attack it refuses,
//! with the clock injected.

use super::*;
use crate::{Expiry, init, publish, refresh, rotate};

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

const DAY: u64 = 86400;

/// A feed on disk, as `DirTransport` serves it to an agent.
struct DirFetch(PathBuf);

impl Fetch for DirFetch {
    fn fetch(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>, FetchFailure> {
        match std::fs::read(self.0.join(path)) {
            Ok(data) if data.len() as u64 > limit => {
                Err(FetchFailure { message: format!("{path}: too large"), transient: false })
            }
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FetchFailure { message: format!("{path}: {e}"), transient: true }),
        }
    }
}

struct Fixture {
    t: tempfile::TempDir,
    feed: PathBuf,
    keys: PathBuf,
}

impl Fixture {
    /// A feed with release `2` on stable; the image ships its first root.
    fn new() -> Fixture {
        let t = tempfile::tempdir().unwrap();
        let (feed, keys) = (t.path().join("feed"), t.path().join("keys"));
        init(&feed, &keys, now(), Expiry::default()).unwrap();
        std::fs::copy(feed.join("metadata/1.root.json"), t.path().join("shipped-root.json")).unwrap();
        let f = Fixture { t, feed, keys };
        f.publish("2", "stable");
        f
    }

    fn publish(&self, version: &str, channel: &str) {
        self.publish_with(&self.feed, &self.keys, version, channel);
    }

    fn publish_with(&self, feed: &Path, keys: &Path, version: &str, channel: &str) {
        let dir = self.t.path().join(format!("release-{version}"));
        crate::releases::example_release(&dir, version, format!("usr of {version}").repeat(1000).as_bytes()).unwrap();
        publish(feed, keys, &dir, &[channel.to_string()], now(), Expiry::default()).unwrap();
    }

    fn client_of(&self, feed: &Path) -> Client {
        Client::new(Arc::new(DirFetch(feed.to_path_buf())), self.t.path().join("shipped-root.json"), self.state())
    }

    fn client(&self) -> Client {
        self.client_of(&self.feed)
    }

    fn state(&self) -> PathBuf {
        self.t.path().join("state")
    }

    fn metadata(&self, name: &str) -> PathBuf {
        self.feed.join("metadata").join(name)
    }

    /// A copy of the feed and its keys as they are now.
    fn copy(&self, name: &str) -> (PathBuf, PathBuf) {
        let to = self.t.path().join(name);
        std::fs::create_dir_all(&to).unwrap();
        for (from, dest) in [(&self.feed, to.join("feed")), (&self.keys, to.join("keys"))] {
            let status = std::process::Command::new("cp").arg("-a").arg(from).arg(&dest).status().unwrap();
            assert!(status.success());
        }
        (to.join("feed"), to.join("keys"))
    }
}

#[test]
fn the_newest_release_on_the_channel_is_found_and_read_verified() {
    let f = Fixture::new();
    f.publish("3", "beta");
    let v = f.client().check(now()).unwrap();
    assert_eq!(v.releases.newest("stable").unwrap().version, "2");
    assert_eq!(v.releases.newest("beta").unwrap().version, "3");
    assert_eq!(v.releases.newest("alpha"), None, "no release on that channel");
    let two = v.releases.newest("stable").unwrap();
    assert_eq!(two.manifest.name, "2-release.json");
    let manifest = std::fs::read(f.t.path().join("release-2/release.json")).unwrap();
    assert_eq!(v.read(&two.manifest.name).unwrap(), manifest);
    let usr = &two.files["usr.img.zst"];
    let on_disk = std::fs::read(f.feed.join(Verified::target_path(usr))).unwrap();
    let on_disk = zstd::decode_all(&on_disk[..]).unwrap();
    assert_eq!(on_disk, "usr of 2".repeat(1000).into_bytes(), "the target's path is under its hash");
}

#[test]
fn a_check_with_nothing_new_costs_the_root_probe_and_the_timestamp() {
    let f = Fixture::new();
    let first = f.client().check(now()).unwrap().cost;
    assert_eq!(first.requests, 4, "root probe, timestamp, snapshot, targets: {first:?}");
    let again = f.client().check(now()).unwrap().cost;
    let timestamp = std::fs::metadata(f.metadata("timestamp.json")).unwrap().len();
    assert_eq!(again, Cost { requests: 2, bytes: timestamp }, "kept snapshot and targets are not fetched again");
    f.publish("3", "stable");
    let v = f.client().check(now()).unwrap();
    assert_eq!(v.releases.newest("stable").unwrap().version, "3", "a new snapshot and targets are fetched");
}

#[test]
fn an_expired_timestamp_is_refused_as_a_freeze_and_a_refresh_ends_it() {
    let f = Fixture::new();
    let later = now() + 2 * DAY;
    let e = f.client().check(later).expect_err("a timestamp of a day, two days on");
    assert!(matches!(e, TrustError::Expired { role: "timestamp", .. }), "{e}");
    assert!(e.to_string().contains("freeze"), "{e}");
    // Whoever serves the feed refreshes the timestamp: trusted again (two days on).
    refresh(&f.feed, &f.keys, later - 3600, DAY).unwrap();
    f.client().check(later).unwrap();
    // Targets expire too, whatever the timestamp says.
    let e = f.client().check(now() + 100 * DAY).unwrap_err();
    assert!(matches!(e, TrustError::Expired { .. }), "{e}");
}

#[test]
fn an_older_timestamp_replayed_after_a_newer_one_is_refused() {
    let f = Fixture::new();
    let old = std::fs::read(f.metadata("timestamp.json")).unwrap();
    f.publish("3", "stable");
    f.client().check(now()).unwrap();
    std::fs::write(f.metadata("timestamp.json"), &old).unwrap();
    let e = f.client().check(now()).expect_err("a replayed timestamp");
    assert!(matches!(e, TrustError::Rollback(_)), "{e}");
}

#[test]
fn targets_that_do_not_match_the_snapshot_are_refused() {
    let f = Fixture::new();
    // The snapshot names targets version 2; an attacker serves version 1 (validly signed) there.
    let old = std::fs::read(f.metadata("1.targets.json")).unwrap();
    std::fs::write(f.metadata("2.targets.json"), old).unwrap();
    let e = f.client().check(now()).expect_err("mix-and-match");
    assert!(matches!(e, TrustError::Inconsistent(_)), "{e}");
}

#[test]
fn a_target_whose_bytes_were_altered_is_refused() {
    let f = Fixture::new();
    let v = f.client().check(now()).unwrap();
    let manifest = v.releases.newest("stable").unwrap().manifest.clone();
    std::fs::write(f.feed.join(Verified::target_path(&manifest)), b"{\"version\": \"99\"}").unwrap();
    let e = v.read(&manifest.name).expect_err("altered bytes");
    assert!(matches!(e, TrustError::Inconsistent(_) | TrustError::Refused(_)), "{e}");
}

#[test]
fn a_rotated_targets_key_is_followed_and_a_release_signed_by_the_retired_key_is_refused() {
    let f = Fixture::new();
    f.client().check(now()).unwrap();
    let (old_feed, old_keys) = f.copy("before-rotation");
    assert_eq!(rotate(&f.feed, &f.keys, RoleType::Targets, now(), Expiry::default()).unwrap(), 2);
    f.publish("3", "stable");
    let v = f.client().check(now()).unwrap();
    assert_eq!((v.root_version(), v.releases.newest("stable").unwrap().version.as_str()), (2, "3"));
    assert_eq!(f.client().trusted_root_version().unwrap(), 2, "the newest root is kept");
    // Whoever kept the old targets key signs releases 4 to 6 (so every version is past the
    // host's) and serves them: refused.
    for version in ["4", "5", "6"] {
        f.publish_with(&old_feed, &old_keys, version, "stable");
    }
    let e = f.client_of(&old_feed).check(now()).expect_err("signed by a retired key");
    assert!(matches!(e, TrustError::Signature(_)), "{e}");
    // A host with only the image's root 1 (its state lost) follows the chain again.
    std::fs::remove_dir_all(f.state()).unwrap();
    assert_eq!(f.client().trusted_root_version().unwrap(), 1);
    assert_eq!(f.client().check(now()).unwrap().root_version(), 2);
}

#[test]
fn metadata_signed_by_an_unknown_key_is_refused() {
    let f = Fixture::new();
    let other = Fixture::new();
    // Another feed's timestamp (another key) served in place of this one's.
    std::fs::copy(other.metadata("timestamp.json"), f.metadata("timestamp.json")).unwrap();
    let e = f.client().check(now()).expect_err("a stranger's timestamp");
    assert!(matches!(e, TrustError::Signature(_)), "{e}");
}

#[test]
fn an_unreachable_feed_is_transient_and_a_missing_shipped_root_is_local() {
    let f = Fixture::new();
    let e = f.client_of(&f.t.path().join("nowhere")).check(now()).unwrap_err();
    assert!(!matches!(e, TrustError::Signature(_) | TrustError::Rollback(_)), "{e}");
    std::fs::remove_file(f.t.path().join("shipped-root.json")).unwrap();
    let e = f.client().check(now()).unwrap_err();
    assert!(matches!(e, TrustError::Local(_)), "{e}");
}

#[test]
fn freshness_names_the_first_expired_role() {
    let at = |s: i64| jiff::Timestamp::from_second(s).unwrap();
    let expiries = [(RoleType::Root, at(1000)), (RoleType::Timestamp, at(100)), (RoleType::Targets, at(500))];
    check_fresh(&expiries, 99).unwrap();
    let e = check_fresh(&expiries, 100).unwrap_err();
    assert!(matches!(e, TrustError::Expired { role: "timestamp", .. }), "{e}");
    let e = check_fresh(&[expiries[0], expiries[2]], 600).unwrap_err();
    assert!(matches!(e, TrustError::Expired { role: "targets", .. }), "{e}");
}
