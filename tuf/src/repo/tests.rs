//! The repository as tough's own client reads it: targets verified and downloaded, versions
//! that move forward, a root that needs two of its three keys.

use super::*;

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// The /usr image of the example release: 100,000 bytes that do not compress away.
fn usr_image() -> Vec<u8> {
    crate::releases::incompressible(100_000, 0x9e3779b97f4a7c15)
}

/// A release directory: release.json (version 2) and its artifacts.
fn release(dir: &Path) -> PathBuf {
    let r = dir.join("release");
    crate::releases::example_release(&r, "2", &usr_image()).unwrap();
    r
}

/// A target holding the zstd-compressed /usr image, decompressed.
fn read_usr(feed: &Path, name: &str) -> Result<Vec<u8>> {
    Ok(zstd::decode_all(&read_target(feed, name)?[..]).expect("zstd"))
}

fn stable() -> Vec<String> {
    vec!["stable".into()]
}

fn read_target(feed: &Path, name: &str) -> Result<Vec<u8>> {
    runtime()?.block_on(async {
        let repo = load(feed).await?;
        let name = tough::TargetName::new(name)?;
        let mut stream = repo.read_target(&name).await?.ok_or_else(|| Error::Feed(format!("no target {name:?}")))?;
        let mut out = Vec::new();
        use futures_util::StreamExt;
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    })
}

#[test]
fn a_published_release_is_read_back_verified() {
    let t = tempfile::tempdir().unwrap();
    let (feed, keys_dir) = (t.path().join("feed"), t.path().join("keys"));
    init(&feed, &keys_dir, now(), Expiry::default()).unwrap();
    assert!(init(&feed, &keys_dir, now(), Expiry::default()).unwrap_err().to_string().contains("has a root already"));
    let names = publish(&feed, &keys_dir, &release(t.path()), &stable(), now(), Expiry::default()).unwrap();
    assert_eq!(names, ["2-release.json", "2-uki.efi", "2-usr.img.zst", "2-usr.img.caibx"]);
    let usr = read_usr(&feed, "2-usr.img.zst").unwrap();
    assert_eq!(usr, usr_image());
    // The /usr image's chunk index is a signed target, and its chunks are in the feed's store.
    let index = cairn_chunks::index::Index::parse(&read_target(&feed, "2-usr.img.caibx").unwrap()).unwrap();
    assert_eq!(index.size(), 100_000);
    let store = cairn_chunks::store::Store::new(&feed.join(crate::releases::CHUNK_STORE));
    let rebuilt: Vec<u8> = index.chunks.iter().flat_map(|(_, id)| store.get(id, index.digest).unwrap()).collect();
    assert_eq!(rebuilt, usr);
    let repo = runtime().unwrap().block_on(load(&feed)).unwrap();
    assert_eq!(repo.targets().signed.version.get(), 2);
    let target = repo.targets().signed.targets.get(&tough::TargetName::new("2-usr.img.zst").unwrap()).unwrap();
    assert_eq!(target.custom["version"], "2");
    // A tampered target is refused.
    let stored = std::fs::read_dir(feed.join("targets"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with("usr.img.zst"))
        .unwrap();
    let mut bytes = std::fs::read(stored.path()).unwrap();
    bytes[500] ^= 1;
    std::fs::write(stored.path(), bytes).unwrap();
    assert!(read_target(&feed, "2-usr.img.zst").is_err(), "a tampered target was read");
}

#[test]
fn resign_renews_every_online_role_and_keeps_the_targets() {
    let t = tempfile::tempdir().unwrap();
    let (feed, keys_dir) = (t.path().join("feed"), t.path().join("keys"));
    let long_ago = now() - 100 * 86400;
    init(&feed, &keys_dir, long_ago, Expiry::default()).unwrap();
    publish(&feed, &keys_dir, &release(t.path()), &stable(), long_ago, Expiry::default()).unwrap();
    // Published 100 days ago: targets (90 days) and snapshot (7) have run out; tough refuses.
    assert!(runtime().unwrap().block_on(tough_loads(&feed)).is_err());
    resign(&feed, &keys_dir, now(), Expiry::default()).unwrap();
    runtime().unwrap().block_on(tough_loads(&feed)).unwrap();
    let repo = runtime().unwrap().block_on(load(&feed)).unwrap();
    assert_eq!(repo.targets().signed.version.get(), 3);
    assert_eq!(read_usr(&feed, "2-usr.img.zst").unwrap(), usr_image());
}

/// The feed as tough's client loads it with expiry enforced (the publisher's own `load` does
/// not enforce it).
async fn tough_loads(feed: &Path) -> Result<()> {
    let root = std::fs::read(feed.join("metadata/1.root.json")).map_err(io(feed))?;
    let base = |dir: &str| url::Url::from_directory_path(feed.join(dir)).unwrap();
    RepositoryLoader::new(&root, base("metadata"), base("targets")).load().await?;
    Ok(())
}

#[test]
fn refresh_moves_only_the_timestamp_with_its_key_alone() {
    let t = tempfile::tempdir().unwrap();
    let (feed, keys_dir) = (t.path().join("feed"), t.path().join("keys"));
    init(&feed, &keys_dir, now(), Expiry::default()).unwrap();
    // Only the timestamp key: the others are offline.
    let online = t.path().join("online");
    std::fs::create_dir_all(&online).unwrap();
    let key = keys::path(&keys_dir, RoleType::Timestamp, 1);
    std::fs::copy(&key, keys::path(&online, RoleType::Timestamp, 1)).unwrap();
    assert_eq!(refresh(&feed, &online, now(), 3600).unwrap(), 2);
    let repo = runtime().unwrap().block_on(load(&feed)).unwrap();
    assert_eq!((repo.timestamp().signed.version.get(), repo.snapshot().signed.version.get()), (2, 1));
    // A timestamp that has run out is refreshed all the same (that is when it is needed).
    refresh(&feed, &online, now() - 2 * 86400, 86400).unwrap();
    assert_eq!(refresh(&feed, &online, now(), 3600).unwrap(), 4);
    // A key the root does not name cannot sign one.
    let stranger = t.path().join("stranger");
    keys::generate(&stranger).unwrap();
    assert!(refresh(&feed, &stranger, now(), 3600).is_err());
    // An altered timestamp (a later expiry, the signature kept) is refused by a client.
    let path = feed.join("metadata/timestamp.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["signed"]["expires"] = "2099-01-01T00:00:00Z".into();
    std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    assert!(runtime().unwrap().block_on(load(&feed)).is_err(), "an altered timestamp was trusted");
}

#[test]
fn a_root_needs_two_of_its_three_keys() {
    let t = tempfile::tempdir().unwrap();
    let (feed, keys_dir) = (t.path().join("feed"), t.path().join("keys"));
    init(&feed, &keys_dir, now(), Expiry::default()).unwrap();
    let first: tough::schema::Signed<Root> =
        serde_json::from_slice(&std::fs::read(feed.join("metadata/1.root.json")).unwrap()).unwrap();
    assert_eq!(first.signed.roles[&RoleType::Root].threshold.get(), 2);
    assert_eq!(first.signatures.len(), 3);
    // Root 2, signed by one key only: a client refuses the chain.
    let mut next = first.signed.clone();
    next.version = version(2);
    let one = keys::sources(&[keys::path(&keys_dir, RoleType::Root, 1)]);
    let rt = runtime().unwrap();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let signed = rt.block_on(SignedRole::new(next.clone(), &KeyHolder::Root(next.clone()), &one, &rng)).unwrap();
    signed.write(metadata_dir(&feed), true).await_blocking(&rt);
    assert!(rt.block_on(load(&feed)).is_err(), "a root signed by one of three keys was trusted");
    // Signed by two: trusted.
    let two = keys::sources(&keys::files(&keys_dir, RoleType::Root).unwrap()[..2]);
    let signed = rt.block_on(SignedRole::new(next.clone(), &KeyHolder::Root(next), &two, &rng)).unwrap();
    signed.write(metadata_dir(&feed), true).await_blocking(&rt);
    assert_eq!(rt.block_on(load(&feed)).unwrap().root().signed.version.get(), 2);
}

trait AwaitBlocking {
    fn await_blocking(self, rt: &tokio::runtime::Runtime);
}

impl<F: std::future::Future<Output = tough::error::Result<()>>> AwaitBlocking for F {
    fn await_blocking(self, rt: &tokio::runtime::Runtime) {
        rt.block_on(self).unwrap()
    }
}

/// The targets key is replaced (root 2 names the new one): a release signed with the new key is
/// trusted through the chain of roots from root 1; one signed with the retired key is refused.
#[test]
fn a_rotated_targets_key_takes_over_and_the_old_one_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (feed, keys_dir) = (t.path().join("feed"), t.path().join("keys"));
    init(&feed, &keys_dir, now(), Expiry::default()).unwrap();
    publish(&feed, &keys_dir, &release(t.path()), &stable(), now(), Expiry::default()).unwrap();
    assert_eq!(rotate(&feed, &keys_dir, RoleType::Targets, now(), Expiry::default()).unwrap(), 2);
    assert!(keys_dir.join("retired/targets-1.pk8").exists() && keys_dir.join("targets-2.pk8").exists());
    let repo = runtime().unwrap().block_on(load(&feed)).unwrap();
    assert_eq!(repo.root().signed.version.get(), 2, "the client followed the chain from root 1");
    assert_eq!(read_usr(&feed, "2-usr.img.zst").unwrap(), usr_image(), "re-signed under the new key");
    // Someone with the retired key signs a release: refused.
    let rogue = t.path().join("rogue");
    std::fs::create_dir_all(&rogue).unwrap();
    std::fs::copy(keys_dir.join("retired/targets-1.pk8"), keys::path(&rogue, RoleType::Targets, 1)).unwrap();
    for role in [RoleType::Snapshot, RoleType::Timestamp] {
        std::fs::copy(keys::path(&keys_dir, role, 1), keys::path(&rogue, role, 1)).unwrap();
    }
    assert!(
        publish(&feed, &rogue, &release(t.path()), &stable(), now(), Expiry::default()).is_err(),
        "signed with a retired key"
    );
    assert!(rotate(&feed, &keys_dir, RoleType::Root, now(), Expiry::default()).is_err());
}

#[test]
fn the_state_names_releases_and_the_timestamp_and_signers_are_checked() {
    let t = tempfile::tempdir().unwrap();
    let (feed, keys_dir) = (t.path().join("feed"), t.path().join("keys"));
    init(&feed, &keys_dir, now(), Expiry::default()).unwrap();
    publish(&feed, &keys_dir, &release(t.path()), &stable(), now(), Expiry::default()).unwrap();
    let state = state(&feed).unwrap();
    assert_eq!(state.releases.newest("stable").unwrap().version, "2");
    assert_eq!(state.timestamp_version, 2);
    assert!(state.timestamp_expires > now() && state.timestamp_expires <= now() + 86400);
    can_sign(&feed, &keys_dir, RoleType::Timestamp).unwrap();
    let empty = t.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = can_sign(&feed, &empty, RoleType::Timestamp).unwrap_err().to_string();
    assert!(e.contains("holds no timestamp key"), "{e}");
    let stranger = t.path().join("stranger");
    keys::generate(&stranger).unwrap();
    assert!(can_sign(&feed, &stranger, RoleType::Timestamp).is_err());
}

/// A server serves the feed's files while its own `refresh` (or an operator's `publish`) writes
/// them: a reader must only ever find whole metadata, never a truncated or empty file.
#[test]
fn readers_never_see_a_metadata_file_half_written() {
    let t = tempfile::tempdir().unwrap();
    let (feed, keys_dir) = (t.path().join("feed"), t.path().join("keys"));
    init(&feed, &keys_dir, now(), Expiry::default()).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = std::thread::spawn({
        let (timestamp, stop) = (metadata_dir(&feed).join("timestamp.json"), stop.clone());
        move || {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let bytes = std::fs::read(&timestamp).expect("timestamp.json is always there");
                if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                    panic!("read {} bytes of timestamp.json that do not parse: {e}", bytes.len());
                }
                reads += 1;
            }
            reads
        }
    });
    for i in 1..=100 {
        refresh(&feed, &keys_dir, now() + i, 86400).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().expect("the reader found only whole files");
    assert!(reads > 100, "the reader ran alongside ({reads} reads)");
    assert_eq!(state(&feed).unwrap().timestamp_version, 101);
}

/// Two signers at once (the server's refresh, an operator's `refresh` by hand) take turns: each
/// signs from the state the other left, so no version is signed twice and none is lost.
#[test]
fn signers_take_turns() {
    let t = tempfile::tempdir().unwrap();
    let (feed, keys_dir) = (t.path().join("feed"), t.path().join("keys"));
    init(&feed, &keys_dir, now(), Expiry::default()).unwrap();
    let signers: Vec<_> = (0..2)
        .map(|_| {
            let (feed, keys_dir) = (feed.clone(), keys_dir.clone());
            std::thread::spawn(move || {
                (0..20).map(|_| refresh(&feed, &keys_dir, now(), 86400).unwrap()).collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut versions: Vec<u64> = signers.into_iter().flat_map(|s| s.join().unwrap()).collect();
    versions.sort_unstable();
    assert_eq!(versions, (2..=41).collect::<Vec<u64>>(), "every version signed once");
    assert_eq!(state(&feed).unwrap().timestamp_version, 41);
}
