//! The agent reading a TUF feed: what it installs, and that a refused feed writes nothing to
//! a slot or the ESP.

use super::*;
use crate::ports::EntriesDir;
use crate::slots;
use crate::source::DirTransport;
use crate::testkit::{World, checkin, esp_names, target, world, world_on};
use crate::update::{install_entry, write_usr};
use cairn_release::gpt::Slot;
use cairn_tuf::Expiry;
use std::fs::File;
use std::path::Path;

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn candidate(feed: &TufFeed, now: u64) -> Result<Candidate, SourceError> {
    match feed.offer(&checkin(), now)? {
        Offered::Release(offer) => feed.fetch(&offer, "cairn", now),
        Offered::Nothing(why) => Err(SourceError::Refused(why)),
    }
}

fn untouched(w: &World, before: &slots::UsrPartition) {
    let mut f = File::open(&w.disk).unwrap();
    assert_eq!(slots::find(&mut f, Slot::B).unwrap().uuid, before.uuid, "USR-B not bound");
    assert_eq!(esp_names(w), ["cairn-1.0.0.efi"], "ESP unchanged");
}

#[test]
fn a_release_from_a_tuf_feed_is_staged_into_the_other_slot() {
    let w = world("2.0.0");
    let feed = w.source("stable");
    let c = candidate(&feed, now()).unwrap();
    assert!(c.artifacts["usr.img.zst"].starts_with("targets/"), "{:?}", c.artifacts);
    let esp = EntriesDir(w.esp.clone());
    let (_, target) = target(&w, &esp);
    write_usr(&c, feed.transport(), &target).unwrap();
    install_entry(&c, feed.transport(), &target).unwrap();
    assert_eq!(esp_names(&w), ["cairn-1.0.0.efi", "cairn-2.0.0+3.efi"]);
}

#[test]
fn refused_feeds_write_nothing_and_say_why() {
    let w = world_on("2.0.0", "beta");
    let esp = EntriesDir(w.esp.clone());
    let (before, _) = target(&w, &esp);

    // Another channel: nothing offered; a fetch of it named by someone else is refused.
    let stable = w.source("stable");
    let e = candidate(&stable, now()).unwrap_err().to_string();
    assert!(e.contains("no release on channel stable"), "{e}");
    let offer = Offer { version: "2.0.0".into(), path: "2.0.0-release.json".into(), manifest_sha256: "00".into() };
    let e = stable.fetch(&offer, "cairn", now()).unwrap_err().to_string();
    assert!(e.contains("not on channel stable"), "{e}");

    // A frozen feed: the timestamp expired (two days on).
    let beta = w.source("beta");
    let e = candidate(&beta, now() + 2 * 86400).unwrap_err();
    assert!(matches!(e, SourceError::Refused(_)) && e.to_string().contains("freeze"), "{e}");

    // The usr artifact altered in the feed: refused while writing.
    let c = candidate(&beta, now()).unwrap();
    let size = std::fs::metadata(w.feed.join(&c.artifacts["usr.img.zst"])).unwrap().len();
    w.tamper_usr(size as i64 / 2);
    let (_, target) = target(&w, &esp);
    assert!(write_usr(&c, beta.transport(), &target).is_err());

    // Timestamp metadata signed by a stranger's key.
    let other = tempfile::tempdir().unwrap();
    cairn_tuf::init(other.path(), &other.path().join("keys"), now(), Expiry::default()).unwrap();
    replace(&other.path().join("metadata/timestamp.json"), &w.feed.join("metadata/timestamp.json"));
    let e = candidate(&beta, now()).unwrap_err().to_string();
    assert!(e.contains("signature"), "{e}");
    untouched(&w, &before);
}

fn replace(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
}

#[test]
fn an_unreachable_feed_is_retried_not_refused() {
    let w = world("2.0.0");
    let feed = TufFeed::new(
        Arc::new(DirTransport(w.feed.join("nowhere"))),
        w.shipped_root.clone(),
        w.tuf_state.clone(),
        "stable",
    );
    let e = candidate(&feed, now()).unwrap_err();
    assert!(e.is_transient(), "{e}");
}
