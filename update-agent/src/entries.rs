//! Boot entries on the ESP (`/EFI/Linux`), one per slot, named for systemd-boot's automatic
//! boot assessment: `ID-VERSION+LEFT[-DONE].efi` while being judged, `ID-VERSION.efi` once good.
//! A new entry is written as a temporary file, fsynced, renamed into place, and the directory
//! fsynced; a crash leaves either no new entry or a complete one.

use std::path::{Path, PathBuf};

pub const DEFAULT_TRIES: u32 = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub os_id: String,
    pub version: String,
    /// `None`: no counter (blessed). `Some((left, done))`.
    pub counter: Option<(u32, u32)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assessment {
    Good,
    /// Still being judged: tries left.
    Pending(u32),
    /// Out of tries: systemd-boot sorts it last and boots the other slot.
    Bad,
}

impl Entry {
    /// Parses `cairn-1.2.3+2-1.efi`; other files are not entries of `os_id`.
    pub fn parse(os_id: &str, file_name: &str) -> Option<Entry> {
        let stem = file_name.strip_suffix(".efi")?.strip_prefix(os_id)?.strip_prefix('-')?;
        let (version, counter) = match stem.rsplit_once('+') {
            None => (stem, None),
            Some((v, c)) => {
                let (left, done) = match c.split_once('-') {
                    Some((l, d)) => (l.parse().ok()?, d.parse().ok()?),
                    None => (c.parse().ok()?, 0),
                };
                (v, Some((left, done)))
            }
        };
        if version.is_empty() || version.starts_with('.') {
            return None;
        }
        Some(Entry { os_id: os_id.to_string(), version: version.to_string(), counter })
    }

    pub fn file_name(&self) -> String {
        match self.counter {
            None => format!("{}-{}.efi", self.os_id, self.version),
            Some((left, 0)) => format!("{}-{}+{left}.efi", self.os_id, self.version),
            Some((left, done)) => format!("{}-{}+{left}-{done}.efi", self.os_id, self.version),
        }
    }

    pub fn assessment(&self) -> Assessment {
        match self.counter {
            None => Assessment::Good,
            Some((0, _)) => Assessment::Bad,
            Some((left, _)) => Assessment::Pending(left),
        }
    }
}

/// Entries of `os_id` in `dir` (the ESP's `EFI/Linux`), sorted by file name.
pub fn list(dir: &Path, os_id: &str) -> std::io::Result<Vec<Entry>> {
    let mut out: Vec<Entry> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| Entry::parse(os_id, &e.file_name().to_string_lossy()))
        .collect();
    out.sort_by_key(|e| e.file_name());
    Ok(out)
}

/// Renames `from` to `to` in `dir` so that it survives a power cut. On FAT (the ESP) a rename
/// writes the new directory entry with no clusters and size 0; the file's real entry is written
/// only when the file itself is synced, so the file is synced after the rename, then the
/// directory. A crash in between leaves an empty entry, which the loader skips.
fn rename_durably(dir: &Path, from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    std::fs::File::open(to)?.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

/// Installs the UKI file `uki` (verified already) as a counted entry for `version` and removes every other entry but `keep`
/// (the running release's), so the ESP holds exactly one entry per slot. Returns its path.
pub fn install(dir: &Path, os_id: &str, version: &str, uki: &Path, keep: &str) -> std::io::Result<PathBuf> {
    let entry = Entry { os_id: os_id.into(), version: version.into(), counter: Some((DEFAULT_TRIES, 0)) };
    // Any earlier attempt at this version goes first: a counted copy beside another copy of the
    // same entry confuses counting.
    for e in list(dir, os_id)? {
        if e.version != keep {
            std::fs::remove_file(dir.join(e.file_name()))?;
        }
    }
    // Leftovers of an attempt that crashed before its rename (never booted: not `.efi`).
    for e in std::fs::read_dir(dir)?.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".tmp") {
            std::fs::remove_file(e.path())?;
        }
    }
    let tmp = dir.join(format!(".{}.tmp", entry.file_name()));
    let mut f = std::fs::File::create(&tmp)?;
    std::io::copy(&mut std::fs::File::open(uki)?, &mut f)?;
    f.sync_all()?;
    drop(f);
    crate::failpoint::hit("before-uki-rename");
    let dest = dir.join(entry.file_name());
    rename_durably(dir, &tmp, &dest)?;
    crate::failpoint::hit("after-uki-rename");
    Ok(dest)
}

/// Marks the entry of `version` good: drops its counter (a rename, then a directory sync).
pub fn bless(dir: &Path, os_id: &str, version: &str) -> std::io::Result<bool> {
    let Some(e) = list(dir, os_id)?.into_iter().find(|e| e.version == version) else {
        return Ok(false);
    };
    if e.counter.is_none() {
        return Ok(true);
    }
    let good = Entry { counter: None, ..e.clone() };
    rename_durably(dir, &dir.join(e.file_name()), &dir.join(good.file_name()))?;
    Ok(true)
}

/// How the loader judged the entry of `version`, if there is one.
pub fn assessment(dir: &Path, os_id: &str, version: &str) -> std::io::Result<Option<Assessment>> {
    Ok(list(dir, os_id)?.into_iter().find(|e| e.version == version).map(|e| e.assessment()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (name, counter) in [
            ("cairn-1.0.0.efi", None),
            ("cairn-1.0.0+3.efi", Some((3, 0))),
            ("cairn-2.0~rc1+2-1.efi", Some((2, 1))),
            ("cairn-2.0+0-3.efi", Some((0, 3))),
        ] {
            let e = Entry::parse("cairn", name).unwrap();
            assert_eq!(e.counter, counter, "{name}");
            assert_eq!(e.file_name(), name);
        }
        assert_eq!(Entry::parse("cairn", "cairn-2.0+0-3.efi").unwrap().assessment(), Assessment::Bad);
        assert_eq!(Entry::parse("cairn", "cairn-2.0+1-2.efi").unwrap().assessment(), Assessment::Pending(1));
        assert!(Entry::parse("cairn", "other-1.0.efi").is_none());
        assert!(Entry::parse("cairn", "cairn-1.0+x.efi").is_none());
    }

    #[test]
    fn install_keeps_one_entry_per_slot_and_bless_drops_the_counter() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::write(d.join("cairn-1.0.0.efi"), b"running").unwrap();
        std::fs::write(d.join("cairn-1.5.0+0-3.efi"), b"an old failed attempt").unwrap();
        std::fs::write(d.join(".cairn-1.6.0+3.efi.tmp"), b"a crashed attempt").unwrap();
        let uki = t.path().join("staged.efi");
        std::fs::write(&uki, b"new uki").unwrap();
        install(d, "cairn", "2.0.0", &uki, "1.0.0").unwrap();
        let names: Vec<String> = list(d, "cairn").unwrap().iter().map(Entry::file_name).collect();
        assert_eq!(names, vec!["cairn-1.0.0.efi", "cairn-2.0.0+3.efi"]);
        assert_eq!(std::fs::read(d.join("cairn-2.0.0+3.efi")).unwrap(), b"new uki");
        assert!(!d.join(".cairn-1.6.0+3.efi.tmp").exists(), "a crashed attempt's temp file is removed");
        assert_eq!(assessment(d, "cairn", "2.0.0").unwrap(), Some(Assessment::Pending(3)));
        // Installing again (a retry) replaces, never duplicates.
        install(d, "cairn", "2.0.0", &uki, "1.0.0").unwrap();
        assert_eq!(list(d, "cairn").unwrap().len(), 2);
        assert!(bless(d, "cairn", "2.0.0").unwrap());
        assert!(d.join("cairn-2.0.0.efi").exists());
        assert_eq!(assessment(d, "cairn", "2.0.0").unwrap(), Some(Assessment::Good));
        assert!(!bless(d, "cairn", "9.9").unwrap());
    }
}
