//! Writing a feed's metadata while it is being served. tough's own `write` truncates each file
//! and writes it in place, so a server (or a host reading a plain file server) can read an empty
//! or torn `timestamp.json`; and two writers (the server refreshing its timestamp, an operator
//! publishing) could each sign a version from the same old state. Here every file replaces the
//! old one whole, in an order that never lets a file name one not yet there, and writers take
//! the feed's lock first.

use crate::{Error, Result, io};
use cairn_release::durable::write_atomic;
use std::fs::File;
use std::path::{Path, PathBuf};
use tough::editor::signed::{SignedRepository, SignedRole};
use tough::schema::Role;

/// The feed's writer lock, `FEED/.lock`, held until the returned file is dropped: one signer at
/// a time, so each signs from the state the previous one left.
pub(super) fn lock(feed: &Path) -> Result<File> {
    let path = feed.join(".lock");
    let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
    file.lock().map_err(io(&path))?;
    Ok(file)
}

/// One signed role into `metadata`, replacing the old file whole. Consistent snapshots are on:
/// the root's name carries its version.
pub(super) fn role<T: Role + serde::Serialize>(metadata: &Path, signed: &SignedRole<T>) -> Result<()> {
    std::fs::create_dir_all(metadata).map_err(io(metadata))?;
    let path = metadata.join(signed.signed().signed.filename(true));
    write_atomic(&path, signed.buffer(), 0o644).map_err(io(&path))
}

/// A signed repository into `metadata`: tough writes it to a staging directory beside it, and
/// the files move into place root first and the timestamp last, each whole.
pub(super) async fn repository(metadata: &Path, signed: &SignedRepository) -> Result<()> {
    std::fs::create_dir_all(metadata).map_err(io(metadata))?;
    let feed = metadata.parent().unwrap_or(metadata);
    let staging = tempfile::Builder::new().prefix(".staging-").tempdir_in(feed).map_err(io(feed))?;
    signed.write(staging.path()).await?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(staging.path()).map_err(io(staging.path()))? {
        files.push(entry.map_err(io(staging.path()))?.path());
    }
    files.sort_by_key(|f| publication_rank(f));
    for file in &files {
        File::open(file).and_then(|f| f.sync_all()).map_err(io(file))?;
        let name = file.file_name().ok_or_else(|| Error::Feed(format!("{}: no file name", file.display())))?;
        let dest: PathBuf = metadata.join(name);
        std::fs::rename(file, &dest).map_err(io(&dest))?;
    }
    File::open(metadata).and_then(|d| d.sync_all()).map_err(io(metadata))
}

/// Where a metadata file comes in the order of publication: each role names the next one's
/// version (timestamp -> snapshot -> targets), so the named file must already be in place.
fn publication_rank(file: &Path) -> u8 {
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    match name.rsplit('.').nth(1) {
        Some("root") => 0,
        Some("targets") => 1,
        Some("snapshot") => 2,
        _ => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timestamp_is_published_last_and_the_root_first() {
        let mut names: Vec<PathBuf> =
            ["timestamp.json", "3.snapshot.json", "2.root.json", "4.targets.json"].iter().map(PathBuf::from).collect();
        names.sort_by_key(|f| publication_rank(f));
        assert_eq!(names, ["2.root.json", "4.targets.json", "3.snapshot.json", "timestamp.json"].map(PathBuf::from));
    }
}
