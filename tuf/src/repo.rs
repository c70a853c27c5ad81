//! A feed's life as a TUF repository: `init` writes the first root (three root keys, two must
//! sign) and empty targets, snapshot and timestamp; `publish` adds a release's files as targets
//! (`VERSION-FILE`, with the version in their custom metadata) and signs new targets, snapshot and
//! timestamp; `refresh` signs a new timestamp only, with the timestamp key, for a cron job.
//! Consistent snapshots are on: metadata other than the timestamp is written under versioned
//! names and targets under their sha256, so a feed is never seen half-updated.

use crate::keys::{self, ROOT_THRESHOLD};
use crate::releases::{Custom, Releases, target_name};
use crate::{Error, Result, io, schema};
use cairn_release::manifest::{MANIFEST, Release};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use tough::editor::RepositoryEditor;
use tough::editor::signed::SignedRole;
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root, Target, Timestamp};
use tough::{FilesystemTransport, Repository, RepositoryLoader};

const SPEC_VERSION: &str = "1.0.0";

/// How long each role's metadata is valid, in seconds.
#[derive(Clone, Copy, Debug)]
pub struct Expiry {
    pub root: u64,
    pub targets: u64,
    pub snapshot: u64,
    pub timestamp: u64,
}

impl Default for Expiry {
    /// A year for the root, three months for targets, a week for the snapshot and a day for the
    /// timestamp: a host that cannot reach fresh metadata for a day stops trusting what it has.
    fn default() -> Expiry {
        Expiry { root: 365 * 86400, targets: 90 * 86400, snapshot: 7 * 86400, timestamp: 86400 }
    }
}

fn at(now: u64, seconds: u64) -> Result<jiff::Timestamp> {
    jiff::Timestamp::from_second((now + seconds) as i64).map_err(|e| Error::Feed(format!("a time: {e}")))
}

fn version(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).expect("versions start at 1")
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().build().map_err(|e| Error::Feed(format!("a runtime: {e}")))
}

fn metadata_dir(feed: &Path) -> PathBuf {
    feed.join("metadata")
}

/// The newest `N.root.json` in the feed.
pub fn latest_root(feed: &Path) -> Result<(u64, PathBuf)> {
    let dir = metadata_dir(feed);
    let mut newest = None;
    for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let name = entry.map_err(io(&dir))?.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_suffix(".root.json").and_then(|n| n.parse::<u64>().ok())
            && newest.as_ref().is_none_or(|(m, _)| n > *m)
        {
            newest = Some((n, dir.join(name)));
        }
    }
    newest.ok_or_else(|| Error::Feed(format!("{}: no root metadata (run `cairn release init`)", dir.display())))
}

fn url(path: &Path) -> Result<url::Url> {
    let path = path.canonicalize().map_err(io(path))?;
    url::Url::from_directory_path(&path).map_err(|()| Error::Feed(format!("{}: not a usable path", path.display())))
}

/// The feed as a TUF client sees it, trusting its first root (so the chain of roots is checked).
/// Expired metadata is loaded all the same: the publisher re-signs it, and `refresh` exists for
/// a timestamp that has run out.
async fn load(feed: &Path) -> Result<Repository> {
    let first = metadata_dir(feed).join("1.root.json");
    let root = tokio::fs::read(&first).await.map_err(io(&first))?;
    let targets = feed.join("targets");
    tokio::fs::create_dir_all(&targets).await.map_err(io(&targets))?;
    Ok(RepositoryLoader::new(&root, url(&metadata_dir(feed))?, url(&targets)?)
        .transport(FilesystemTransport)
        .expiration_enforcement(tough::ExpirationEnforcement::Unsafe)
        .load()
        .await?)
}

/// Creates the feed's repository: the role keys in `keys_dir` (made where missing) and the first
/// root, targets, snapshot and timestamp. Refuses a feed that has a root already.
pub fn init(feed: &Path, keys_dir: &Path, now: u64, expiry: Expiry) -> Result<()> {
    let metadata = metadata_dir(feed);
    std::fs::create_dir_all(&metadata).map_err(io(&metadata))?;
    let _lock = write::lock(feed)?;
    let first = metadata.join("1.root.json");
    if first.exists() {
        return Err(Error::Feed(format!("{} exists: the feed has a root already", first.display())));
    }
    keys::generate(keys_dir)?;
    let mut root = Root {
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: true,
        version: version(1),
        expires: at(now, expiry.root)?,
        keys: HashMap::new(),
        roles: HashMap::new(),
        _extra: HashMap::new(),
    };
    for role in keys::ROLES {
        let threshold = if role == RoleType::Root { ROOT_THRESHOLD } else { 1 };
        let mut keyids = Vec::new();
        for file in keys::files(keys_dir, role)? {
            let key = keys::public(&file)?;
            let id = key.key_id().map_err(schema(&file))?;
            root.keys.insert(id.clone(), key);
            keyids.push(id);
        }
        root.roles.insert(role, RoleKeys { keyids, threshold: version(threshold), _extra: HashMap::new() });
    }
    let root_keys = keys::sources(&keys::files(keys_dir, RoleType::Root)?);
    let rt = runtime()?;
    rt.block_on(async {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signed = SignedRole::new(root.clone(), &KeyHolder::Root(root), &root_keys, &rng).await?;
        write::role(&metadata_dir(feed), &signed)?;
        let mut editor = RepositoryEditor::new(&first).await?;
        stamp(&mut editor, [version(1); 3], now, expiry)?;
        let signed = editor.sign(&online_and_targets_keys(keys_dir)?).await?;
        write::repository(&metadata_dir(feed), &signed).await?;
        Ok(())
    })
}

/// The versions the next signing gives targets, snapshot and timestamp: one past `repo`'s.
fn next_versions(repo: &Repository) -> [NonZeroU64; 3] {
    let next = |v: NonZeroU64| version(v.get() + 1);
    [next(repo.targets().signed.version), next(repo.snapshot().signed.version), next(repo.timestamp().signed.version)]
}

/// Sets the versions and expiries of targets, snapshot and timestamp on `editor`.
fn stamp(
    editor: &mut RepositoryEditor,
    [targets, snapshot, timestamp]: [NonZeroU64; 3],
    now: u64,
    expiry: Expiry,
) -> Result<()> {
    editor
        .targets_version(targets)?
        .targets_expires(at(now, expiry.targets)?)?
        .snapshot_version(snapshot)
        .snapshot_expires(at(now, expiry.snapshot)?)
        .timestamp_version(timestamp)
        .timestamp_expires(at(now, expiry.timestamp)?);
    Ok(())
}

fn online_and_targets_keys(keys_dir: &Path) -> Result<Vec<Box<dyn tough::key_source::KeySource>>> {
    let mut files = Vec::new();
    for role in [RoleType::Targets, RoleType::Snapshot, RoleType::Timestamp] {
        files.extend(keys::files(keys_dir, role)?);
    }
    Ok(keys::sources(&files))
}

/// Adds the files of the release directory `release` (its `release.json` says what they are)
/// as targets on `channels` (`releases.rs` has their names and custom metadata), copies them
/// under their digests into `FEED/targets/`, and signs new targets, snapshot and timestamp
/// metadata. The targets' names are returned.
pub fn publish(
    feed: &Path,
    keys_dir: &Path,
    release: &Path,
    channels: &[String],
    now: u64,
    expiry: Expiry,
) -> Result<Vec<String>> {
    if channels.is_empty() {
        return Err(Error::Feed("a release is published on at least one channel".into()));
    }
    let (doc, mut files) = release_files(release)?;
    // The /usr image as chunks in the feed's store, and its index as a signed target.
    let scratch = tempfile::tempdir().map_err(io(feed))?;
    files.push(chunk_usr(release, &doc, feed, scratch.path())?);
    let _lock = write::lock(feed)?;
    let (_, root_path) = latest_root(feed)?;
    let rt = runtime()?;
    rt.block_on(async {
        let repo = load(feed).await?;
        let versions = next_versions(&repo);
        let mut editor = RepositoryEditor::from_repo(&root_path, repo).await?;
        let mut names = Vec::new();
        for file in &files {
            let file_name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            let mut target = Target::from_path(file).await.map_err(schema(file))?;
            let custom = serde_json::to_value(Custom::of(&doc, &file_name, channels)).expect("serializable");
            target.custom = serde_json::from_value(custom).expect("an object");
            let name = target_name(&doc.version, &file_name);
            let digest = hex::encode(&target.hashes.sha256);
            let dest = feed.join("targets").join(format!("{digest}.{name}"));
            if !dest.exists() {
                let tmp = dest.with_extension("partial");
                tokio::fs::copy(file, &tmp).await.map_err(io(&tmp))?;
                tokio::fs::rename(&tmp, &dest).await.map_err(io(&dest))?;
            }
            editor.add_target(name.as_str(), target)?;
            names.push(name);
        }
        stamp(&mut editor, versions, now, expiry)?;
        let signed = editor.sign(&online_and_targets_keys(keys_dir)?).await?;
        write::repository(&metadata_dir(feed), &signed).await?;
        Ok(names)
    })
}

/// Signs targets (the same targets), snapshot and timestamp again with new versions and
/// expiries: what an operator runs, with the targets key, when no release has been published
/// for a while and the targets or snapshot metadata would expire.
pub fn resign(feed: &Path, keys_dir: &Path, now: u64, expiry: Expiry) -> Result<()> {
    let _lock = write::lock(feed)?;
    let (_, root_path) = latest_root(feed)?;
    runtime()?.block_on(async {
        let repo = load(feed).await?;
        let versions = next_versions(&repo);
        let mut editor = RepositoryEditor::from_repo(&root_path, repo).await?;
        stamp(&mut editor, versions, now, expiry)?;
        let signed = editor.sign(&online_and_targets_keys(keys_dir)?).await?;
        write::repository(&metadata_dir(feed), &signed).await?;
        Ok(())
    })
}

/// The release in directory `dir` and the files to publish: release.json and the artifacts it
/// names, each checked against its size and sha256 there (nothing else in the directory), so a
/// broken or altered release is never signed.
/// Chunks the release's `/usr` image (decompressed: what is written to the disk) into the
/// feed's chunk store, each chunk stored once however many releases hold it; returns its
/// index, written in `scratch` under the name `releases::usr_index_name` gives it.
fn chunk_usr(release: &Path, doc: &Release, feed: &Path, scratch: &Path) -> Result<PathBuf> {
    use cairn_release::manifest::{ArtifactKind, Compression};
    let usr = doc.artifact(ArtifactKind::Usr);
    let path = release.join(&usr.name);
    let file = std::fs::File::open(&path).map_err(io(&path))?;
    let reader: Box<dyn std::io::Read> = match usr.compression {
        Compression::None => Box::new(file),
        Compression::Zstd => Box::new(zstd::stream::Decoder::new(file).map_err(io(&path))?),
    };
    let store = cairn_chunks::store::Store::new(&feed.join(crate::releases::CHUNK_STORE));
    let index = cairn_chunks::store::store_image(reader, &store).map_err(io(&path))?;
    // The index records what the image is; whether release.json tells the truth about it is
    // the host's check (sizes, hashes, the verity root), which a tampered feed must meet.
    let out = scratch.join(crate::releases::usr_index_name(&usr.name));
    std::fs::write(&out, index.to_bytes()).map_err(io(&out))?;
    Ok(out)
}

fn release_files(dir: &Path) -> Result<(Release, Vec<PathBuf>)> {
    let manifest = dir.join(MANIFEST);
    let doc = Release::parse_trusted(&std::fs::read(&manifest).map_err(io(&manifest))?)
        .map_err(|e| Error::Feed(format!("{}: {e}", manifest.display())))?;
    let mut files = vec![manifest];
    for artifact in &doc.artifacts {
        let path = dir.join(&artifact.name);
        let mut file = std::fs::File::open(&path).map_err(io(&path))?;
        let mut hasher = Sha256::new();
        let size = std::io::copy(&mut file, &mut hasher).map_err(io(&path))?;
        let sha256 = hex::encode(hasher.finalize());
        if size != artifact.size || sha256 != artifact.sha256 {
            return Err(Error::Feed(format!(
                "{}: {size} bytes with sha256 {sha256}, but release.json says {} bytes with sha256 {}",
                path.display(),
                artifact.size,
                artifact.sha256
            )));
        }
        files.push(path);
    }
    Ok((doc, files))
}

/// Signs a new timestamp (the same snapshot, a new version and expiry) with the timestamp key
/// alone: what whoever serves a feed runs before the last one expires. Its version is returned.
pub fn refresh(feed: &Path, keys_dir: &Path, now: u64, timestamp_expiry: u64) -> Result<u64> {
    let _lock = write::lock(feed)?;
    let rt = runtime()?;
    rt.block_on(async {
        let repo = load(feed).await?;
        let old = &repo.timestamp().signed;
        let mut timestamp =
            Timestamp::new(SPEC_VERSION.into(), version(old.version.get() + 1), at(now, timestamp_expiry)?);
        timestamp.meta = old.meta.clone();
        let root = repo.root().signed.clone();
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let key_files = keys::files(keys_dir, RoleType::Timestamp)?;
        let signed = SignedRole::new(timestamp, &KeyHolder::Root(root), &keys::sources(&key_files), &rng).await?;
        write::role(&metadata_dir(feed), &signed)?;
        Ok(signed.signed().signed.version.get())
    })
}

/// Replaces the key of `role` (targets, snapshot or timestamp): a new key is made, the old one
/// moves to `KEYS/retired/`, root version N+1 names the new key instead (signed by the root
/// keys, at least the threshold of both roots), and targets, snapshot and timestamp are signed
/// again with the keys now in force. Hosts follow the chain of roots: nothing changes on them.
/// The new root's version is returned.
pub fn rotate(feed: &Path, keys_dir: &Path, role: RoleType, now: u64, expiry: Expiry) -> Result<u64> {
    if matches!(role, RoleType::Root | RoleType::DelegatedTargets) {
        return Err(Error::Feed("rotate replaces the targets, snapshot or timestamp key".into()));
    }
    let _lock = write::lock(feed)?;
    let rt = runtime()?;
    let repo = rt.block_on(load(feed))?;
    let mut root = repo.root().signed.clone();
    let old_files = keys::files(keys_dir, role)?;
    let retired = keys_dir.join("retired");
    std::fs::create_dir_all(&retired).map_err(io(&retired))?;
    let n = old_files.len() + std::fs::read_dir(&retired).map_err(io(&retired))?.count() + 1;
    let new_file = keys::path(keys_dir, role, n);
    let new_key = {
        let made = keys::generate_one(&new_file)?;
        debug_assert!(made);
        keys::public(&new_file)?
    };
    let new_id = new_key.key_id().map_err(schema(&new_file))?;
    let role_keys = root.roles.get_mut(&role).ok_or_else(|| Error::Feed(format!("the root has no {role:?} role")))?;
    let old_ids = std::mem::take(&mut role_keys.keyids);
    role_keys.keyids.push(new_id.clone());
    let still_used = |id: &_| root.roles.values().any(|r| r.keyids.contains(id));
    for id in old_ids {
        if !still_used(&id) {
            root.keys.remove(&id);
        }
    }
    root.keys.insert(new_id, new_key);
    root.version = version(root.version.get() + 1);
    root.expires = at(now, expiry.root)?;
    for old in &old_files {
        let to = retired.join(old.file_name().expect("a key file"));
        std::fs::rename(old, &to).map_err(io(old))?;
    }
    let root_keys = keys::sources(&keys::files(keys_dir, RoleType::Root)?);
    let new_version = root.version.get();
    rt.block_on(async {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signed = SignedRole::new(root.clone(), &KeyHolder::Root(root), &root_keys, &rng).await?;
        write::role(&metadata_dir(feed), &signed)?;
        // Everything the rotated role signs, signed again under the new root.
        let (_, new_root) = latest_root(feed)?;
        let mut editor = RepositoryEditor::new(&new_root).await?;
        editor.targets(repo.targets().clone())?;
        stamp(&mut editor, next_versions(&repo), now, expiry)?;
        let signed = editor.sign(&online_and_targets_keys(keys_dir)?).await?;
        write::repository(&metadata_dir(feed), &signed).await?;
        Ok::<_, Error>(())
    })?;
    Ok(new_version)
}

/// What whoever serves a feed needs to know of it: its releases and its timestamp.
#[derive(Clone, Debug)]
pub struct FeedState {
    pub releases: Releases,
    pub timestamp_version: u64,
    /// Unix seconds.
    pub timestamp_expires: u64,
}

/// The feed's releases and timestamp, its signatures checked from its first root.
pub fn state(feed: &Path) -> Result<FeedState> {
    let repo = runtime()?.block_on(load(feed))?;
    let releases = crate::releases::from_targets(repo.targets().signed.targets.iter().map(|(n, t)| (n.raw(), t)))
        .map_err(Error::Feed)?;
    let timestamp = &repo.timestamp().signed;
    Ok(FeedState {
        releases,
        timestamp_version: timestamp.version.get(),
        timestamp_expires: u64::try_from(timestamp.expires.as_second()).unwrap_or(0),
    })
}

/// Checks that `keys_dir` holds a key that the feed's newest root names for `role`, so that
/// whoever holds the directory can sign that role (a server refreshing timestamps).
pub fn can_sign(feed: &Path, keys_dir: &Path, role: RoleType) -> Result<()> {
    let repo = runtime()?.block_on(load(feed))?;
    let root = &repo.root().signed;
    let named = root.roles.get(&role).map(|r| r.keyids.clone()).unwrap_or_default();
    for file in keys::files(keys_dir, role)? {
        let id = keys::public(&file)?.key_id().map_err(schema(&file))?;
        if named.contains(&id) {
            return Ok(());
        }
    }
    Err(Error::Feed(format!(
        "{} holds no {} key that root {} of {} names",
        keys_dir.display(),
        keys::role_name(role),
        root.version,
        feed.display()
    )))
}

#[cfg(test)]
mod tests;
mod write;
