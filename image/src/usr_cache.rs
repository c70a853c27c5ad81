//! The cache of sealed /usr images, `CACHE/usr/<key>/`: the erofs image with its dm-verity hash
//! tree appended (`usr.img`), its verity parameters and merge figures (`verity.json`) and, once a
//! release was made from it, its compressed copy (`usr.img.zst`).
//!
//! An entry is 150 to 400 MB and every change to Cairn's binaries keys a new one, so the cache
//! keeps only the entries used most recently, up to [`BUDGET_BYTES`]. (Unbounded, it filled a
//! CI machine's disk in a day.) An entry used in the last [`MIN_IDLE`] is never evicted, so a
//! build running beside this one keeps what it is using.

use crate::rootfs::MergeStats;
use anyhow::Result;
use cairn_release::verity::{self, BLOCK_SIZE, VerityParams};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// What the cache may hold before the least recently used entries go.
pub const BUDGET_BYTES: u64 = 8 << 30;
/// How long an entry must have gone unused before it may be evicted.
pub const MIN_IDLE: Duration = Duration::from_secs(3600);

const IMAGE: &str = "usr.img";
const META: &str = "verity.json";
/// Evicted entries are renamed under this prefix first, so a build never sees half of one.
const EVICTING: &str = ".evicting-";

/// The sealed /usr image.
pub(crate) struct UsrImage {
    pub params: VerityParams,
    pub img: PathBuf,
    pub stats: MergeStats,
}

/// What the cache keeps beside the image.
#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    stats: MergeStats,
    root_hash: String,
    data_blocks: u64,
    hash_offset: u64,
}

/// Where a new image for the entry `dir` is written before [`store`] seals it in.
pub(crate) fn staging_path(dir: &Path) -> PathBuf {
    dir.join("usr.img.tmp")
}

/// The entry in `dir`, marked as just used; `None` if there is none or it cannot be read (an
/// older builder's, a damaged one, or one being evicted): the image is then built again.
pub(crate) fn load(dir: &Path) -> Result<Option<UsrImage>> {
    match read_entry(dir) {
        Ok(Some(usr)) => {
            touch(dir)?;
            upkeep(dir);
            Ok(Some(usr))
        }
        Ok(None) => Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading the cached /usr in {}", dir.display()))),
    }
}

fn read_entry(dir: &Path) -> std::io::Result<Option<UsrImage>> {
    use std::io::{Read, Seek, SeekFrom};
    let img = dir.join(IMAGE);
    let Ok(Meta { stats, root_hash: root_hex, data_blocks, hash_offset }) =
        serde_json::from_str(&std::fs::read_to_string(dir.join(META))?)
    else {
        return Ok(None);
    };
    // Parameters come back from the superblock the image itself carries.
    let mut sb = vec![0u8; BLOCK_SIZE];
    let mut f = std::fs::File::open(&img)?;
    f.seek(SeekFrom::Start(hash_offset))?;
    f.read_exact(&mut sb)?;
    let Ok(sb) = verity::Superblock::parse(&sb) else { return Ok(None) };
    let mut root_hash = [0u8; 32];
    if hex::decode_to_slice(&root_hex, &mut root_hash).is_err() || sb.data_blocks != data_blocks {
        return Ok(None);
    }
    Ok(Some(UsrImage { params: VerityParams { root_hash, salt: sb.salt, data_blocks, hash_offset }, img, stats }))
}

/// Seals the image at [`staging_path`]`(dir)`, sealed with `params`, in as the entry `dir`.
pub(crate) fn store(dir: &Path, params: VerityParams, stats: MergeStats) -> Result<UsrImage> {
    let meta = Meta {
        stats,
        root_hash: hex::encode(params.root_hash),
        data_blocks: params.data_blocks,
        hash_offset: params.hash_offset,
    };
    std::fs::write(dir.join(META), serde_json::to_string(&meta)?)?;
    // The image goes in last: an entry without it is a miss.
    std::fs::rename(staging_path(dir), dir.join(IMAGE))?;
    touch(dir)?;
    upkeep(dir);
    Ok(UsrImage { params, img: dir.join(IMAGE), stats })
}

/// Keeps the cache that holds `entry` to its budget, on every use: a cache that grew under an
/// older builder shrinks at the next build, whether it hits or not.
fn upkeep(entry: &Path) {
    let Some(root) = entry.parent() else { return };
    match prune(root, BUDGET_BYTES, MIN_IDLE) {
        Ok(p) if p.entries > 0 => {
            eprintln!("cairn: the /usr cache: evicted {} entries ({} MB), unused the longest", p.entries, p.bytes >> 20)
        }
        Ok(_) => {}
        Err(e) => eprintln!("cairn: the /usr cache {}: not pruned: {e:#}", root.display()),
    }
}

/// Marks an entry as used now: its directory's modification time is its last use.
fn touch(dir: &Path) -> Result<()> {
    let now = nix::sys::time::TimeSpec::UTIME_NOW;
    nix::sys::stat::utimensat(None, dir, &now, &now, nix::sys::stat::UtimensatFlags::NoFollowSymlink)
        .map_err(|e| anyhow::anyhow!("marking {} as used: {e}", dir.display()))
}

/// An entry as [`evictions`] weighs it.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryUse {
    pub name: String,
    pub bytes: u64,
    pub last_used: SystemTime,
}

/// The entries to evict: those past `budget` once the most recently used are kept, except those
/// used within `min_idle` of `now`.
pub fn evictions(entries: &[EntryUse], budget: u64, min_idle: Duration, now: SystemTime) -> Vec<&EntryUse> {
    let mut by_use: Vec<&EntryUse> = entries.iter().collect();
    by_use.sort_by(|a, b| b.last_used.cmp(&a.last_used).then_with(|| a.name.cmp(&b.name)));
    let mut kept = 0u64;
    let mut out = Vec::new();
    for e in by_use {
        let idle = now.duration_since(e.last_used).unwrap_or_default();
        if kept.saturating_add(e.bytes) <= budget || idle < min_idle {
            kept = kept.saturating_add(e.bytes);
        } else {
            out.push(e);
        }
    }
    out
}

/// What [`prune`] did.
#[derive(Debug, Default, PartialEq)]
pub struct Pruned {
    pub entries: usize,
    pub bytes: u64,
}

/// Evicts entries of the cache `root` (`CACHE/usr`) by [`evictions`], and what an interrupted
/// eviction left. An entry that cannot be removed is left for the next build: the cache's
/// upkeep never fails a build.
pub fn prune(root: &Path, budget: u64, min_idle: Duration) -> Result<Pruned> {
    let mut entries = Vec::new();
    let mut pruned = Pruned::default();
    for dirent in std::fs::read_dir(root)? {
        let dirent = dirent?;
        let name = dirent.file_name().to_string_lossy().into_owned();
        if name.starts_with(EVICTING) {
            remove_logged(&dirent.path());
            continue;
        }
        let meta = dirent.metadata()?;
        if !meta.is_dir() {
            continue;
        }
        entries.push(EntryUse { bytes: dir_bytes(&dirent.path())?, last_used: meta.modified()?, name });
    }
    for e in evictions(&entries, budget, min_idle, SystemTime::now()) {
        // Renamed first: a build that looks the entry up now finds nothing rather than half.
        let doomed = root.join(format!("{EVICTING}{}", e.name));
        match std::fs::rename(root.join(&e.name), &doomed) {
            Ok(()) => {
                remove_logged(&doomed);
                pruned.entries += 1;
                pruned.bytes += e.bytes;
            }
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(err) => eprintln!("cairn: the /usr cache: evicting {}: {err}", e.name),
        }
    }
    Ok(pruned)
}

fn remove_logged(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != ErrorKind::NotFound
    {
        eprintln!("cairn: the /usr cache: removing {}: {e}", dir.display());
    }
}

/// The bytes the files of an entry take on disk (entries hold only files).
fn dir_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for f in std::fs::read_dir(dir)? {
        total += f?.metadata()?.blocks() * 512;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1 << 30;

    fn entry(name: &str, bytes: u64, hours_ago: u64, now: SystemTime) -> EntryUse {
        EntryUse { name: name.into(), bytes, last_used: now - Duration::from_secs(hours_ago * 3600) }
    }

    fn names(v: Vec<&EntryUse>) -> Vec<&str> {
        v.into_iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn the_least_recently_used_go_once_over_budget() {
        let now = SystemTime::now();
        let entries = [
            entry("old", GB, 30, now),
            entry("new", GB, 2, now),
            entry("mid", GB, 10, now),
            entry("oldest", GB, 40, now),
        ];
        assert_eq!(names(evictions(&entries, 2 * GB, MIN_IDLE, now)), ["old", "oldest"]);
        assert!(evictions(&entries, 4 * GB, MIN_IDLE, now).is_empty());
    }

    #[test]
    fn entries_used_within_the_idle_time_stay_whatever_the_budget() {
        let now = SystemTime::now();
        let entries = [entry("a", 3 * GB, 0, now), entry("b", 3 * GB, 0, now), entry("c", GB, 5, now)];
        // Both recent ones stay though they are over budget together; the idle one goes.
        assert_eq!(names(evictions(&entries, 4 * GB, MIN_IDLE, now)), ["c"]);
    }

    #[test]
    fn an_entry_too_big_for_what_is_left_goes_but_smaller_older_ones_may_stay() {
        let now = SystemTime::now();
        let entries = [entry("recent", 3 * GB, 2, now), entry("big", 2 * GB, 3, now), entry("small", GB, 4, now)];
        assert_eq!(names(evictions(&entries, 4 * GB, MIN_IDLE, now)), ["big"]);
    }

    #[test]
    fn prune_evicts_from_disk_and_keeps_the_recent() -> Result<()> {
        let root = tempfile::tempdir()?;
        for name in ["a", "b"] {
            let dir = root.path().join(name);
            std::fs::create_dir(&dir)?;
            std::fs::write(dir.join(IMAGE), vec![1u8; 64 << 10])?;
        }
        // `a` was last used two hours ago; `b` now.
        let two_hours_ago = nix::sys::time::TimeSpec::from(
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)? - Duration::from_secs(7200),
        );
        nix::sys::stat::utimensat(
            None,
            &root.path().join("a"),
            &two_hours_ago,
            &two_hours_ago,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )?;
        // What an interrupted eviction left is cleared too.
        std::fs::create_dir(root.path().join(format!("{EVICTING}c")))?;
        let pruned = prune(root.path(), 64 << 10, MIN_IDLE)?;
        assert_eq!(pruned.entries, 1);
        assert!(pruned.bytes >= 64 << 10);
        let mut left: Vec<_> = std::fs::read_dir(root.path())?
            .map(|e| e.map(|e| e.file_name().into_string().unwrap()))
            .collect::<Result<_, _>>()?;
        left.sort();
        assert_eq!(left, ["b"]);
        Ok(())
    }

    #[test]
    fn a_missing_or_foreign_entry_is_a_miss() -> Result<()> {
        let root = tempfile::tempdir()?;
        assert!(load(&root.path().join("absent"))?.is_none());
        let dir = root.path().join("foreign");
        std::fs::create_dir(&dir)?;
        std::fs::write(dir.join(META), "{\"from\": \"an older builder\"}")?;
        std::fs::write(dir.join(IMAGE), b"")?;
        assert!(load(&dir)?.is_none());
        Ok(())
    }
}
