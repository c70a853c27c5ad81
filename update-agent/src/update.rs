//! One update, from a verified candidate to a staged boot entry, in two steps the core asks for
//! one after the other (saving its phase in between): `write_usr` streams the `/usr` image into
//! the inactive partition and verifies it; `install_entry` binds the partition to the release
//! and installs the verified UKI as a counted entry. A crash anywhere leaves the running slot
//! and its entry untouched, and the next attempt starts over cleanly.

use crate::apply::{self, ApplyError};
use crate::delta::{self, DeltaError};
use crate::entries;
use crate::http::ResumingReader;
use crate::partition::Partition;
use crate::ports::{Candidate, Esp, EspError, SourceError, Transport, UsrChunks};
use crate::slots::{self, SlotError};
use cairn_release::checkin::Transfer;
use cairn_release::gpt::Slot;
use cairn_release::manifest::{ArtifactKind, Compression};
use sha2::{Digest, Sha256};

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("writing /usr: {0}")]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Slot(#[from] SlotError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("writing the boot entry: {0}")]
    Esp(#[from] EspError),
    #[error("finding the inactive slot: {0}")]
    Host(#[from] crate::ports::HostError),
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> UpdateError {
    move |source| UpdateError::Io { what, source }
}

/// Where the update goes on this host.
pub struct Target<'a> {
    /// The whole disk (for the GPT).
    pub disk: &'a Path,
    /// The inactive `/usr` partition's device (or the disk itself, with `partition_offset`).
    pub partition: &'a Path,
    pub partition_offset: u64,
    pub partition_size: u64,
    pub slot: Slot,
    pub running_slot: Slot,
    pub running_version: &'a str,
    /// The ESP, reached only for the short boot-entry step.
    pub esp: &'a dyn Esp,
    /// Called with the bytes of `/usr` downloaded so far and the total.
    pub progress: &'a (dyn Fn(u64, u64) + Sync),
    /// Where downloads wait to be verified before they go anywhere else (on ROOT).
    pub staging_dir: &'a Path,
    /// Sleeps between download retries (a parameter so tests do not sleep).
    pub wait: &'a (dyn Fn(std::time::Duration) + Sync),
    /// The running `/usr` (its verity device: the image's data, verified as read) and its
    /// partition (where the hash tree follows the data), whose chunks a delta install reuses.
    pub running_usr: Option<&'a Path>,
    pub running_partition: Option<&'a Path>,
}

/// Downloads `path` into `dest` (bounded by the artifact's size), checking size and sha256.
fn stage_file(
    transport: &dyn Transport,
    path: &str,
    artifact: &cairn_release::manifest::Artifact,
    dest: &Path,
    wait: &(dyn Fn(std::time::Duration) + Sync),
) -> Result<(), UpdateError> {
    let what = || format!("staging {} in {}", artifact.name, dest.display());
    std::fs::create_dir_all(dest.parent().unwrap_or(Path::new("/"))).map_err(io(what()))?;
    let stream = ResumingReader::new(transport, path, DOWNLOAD_RETRIES, wait).take(artifact.size + 1);
    let mut stream = apply::HashingReader::new(stream);
    let mut f = File::create(dest).map_err(io(what()))?;
    std::io::copy(&mut stream, &mut f).map_err(|e| UpdateError::Apply(ApplyError::Read(e)))?;
    let (sha, count) = stream.finish();
    if count != artifact.size || sha != artifact.sha256 {
        let _ = std::fs::remove_file(dest);
        return Err(UpdateError::Apply(ApplyError::Mismatch {
            what: "UKI sha256",
            expected: format!("{} ({} bytes)", artifact.sha256, artifact.size),
            actual: format!("{sha} ({count} bytes)"),
        }));
    }
    Ok(())
}

/// Broken downloads are resumed this many times before the attempt fails.
const DOWNLOAD_RETRIES: u32 = 6;

/// The download stream, counted for progress; stops at the `mid-download` failpoint halfway.
struct Progress<'a, R> {
    inner: R,
    done: u64,
    total: u64,
    report: &'a (dyn Fn(u64, u64) + Sync),
}

impl<R: Read> Read for Progress<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let before = self.done;
        self.done += n as u64;
        if before < self.total / 2 && self.done >= self.total / 2 {
            crate::failpoint::hit("mid-download");
        }
        (self.report)(self.done, self.total);
        Ok(n)
    }
}

/// Streams the candidate's `/usr` into the target partition, checking it as it streams:
/// assembled from chunks when the source has an index of them, else (or if that fails
/// short of the disk itself) the whole image.
pub fn write_usr(candidate: &Candidate, transport: &dyn Transport, target: &Target) -> Result<Transfer, UpdateError> {
    if let Some(chunks) = &candidate.usr_chunks {
        match write_usr_from_chunks(candidate, chunks, transport, target) {
            Ok((report, transfer)) => {
                eprintln!("cairn-agent: {report}");
                return Ok(transfer);
            }
            // The disk failed: the whole image would fail the same way.
            Err(e @ UpdateError::Apply(ApplyError::Write(_))) => return Err(e),
            Err(e) => eprintln!("cairn-agent: assembling /usr from chunks failed ({e}); downloading the whole image"),
        }
    }
    let usr = candidate.release.artifact(ArtifactKind::Usr);
    let mut window = open_window(target)?;
    let path = candidate.location(usr).to_string();
    let stream = ResumingReader::new(transport, &path, DOWNLOAD_RETRIES, target.wait);
    let stream = Progress { inner: stream, done: 0, total: usr.size, report: target.progress };
    apply::write_usr(stream, usr, &mut window, target.partition_size)?;
    Ok(Transfer { image: usr.uncompressed_size, downloaded: usr.size, reused: 0 })
}

/// The size of a block device (or a file): where it ends.
fn device_size(path: &Path) -> std::io::Result<u64> {
    File::open(path)?.seek(SeekFrom::End(0))
}

fn open_window(target: &Target) -> Result<Partition, UpdateError> {
    Partition::open(target.partition, target.partition_offset, target.partition_size)
        .map_err(io(format!("opening {}", target.partition.display())))
}

/// A delta install (`delta.rs`): the signed index, the seeds cut into chunks, the plan, then
/// the assembled image written and checked as a whole download is. Says what it saved.
fn write_usr_from_chunks(
    candidate: &Candidate,
    chunks: &UsrChunks,
    transport: &dyn Transport,
    target: &Target,
) -> Result<(String, Transfer), UpdateError> {
    let usr = candidate.release.artifact(ArtifactKind::Usr);
    let delta_error = |e: DeltaError| UpdateError::Apply(ApplyError::Read(std::io::Error::other(e)));
    let index_bytes = transport.read_all(&chunks.index, chunks.index_size)?;
    let sha = hex::encode(Sha256::digest(&index_bytes));
    if index_bytes.len() as u64 != chunks.index_size || sha != chunks.index_sha256 {
        return Err(delta_error(DeltaError::Index("it does not match its signed size and sha256".into())));
    }
    let index = delta::parse_index(&index_bytes, usr.uncompressed_size).map_err(delta_error)?;

    // The running /usr image first, then the inactive partition's old content; past the new
    // image's end it holds nothing the image can use.
    let mut seeds = Vec::new();
    if let Some(path) = target.running_usr {
        // The data, verified as read, then the hash area, which is not in the verity device:
        // it follows the data on the partition, a 128th of the data's size and a little more.
        // Read raw, it is as safe as the rest: each chunk of it must hash to its id.
        let mut parts = vec![delta::Part { path, offset: 0, len: u64::MAX, verified: true }];
        if let (Some(partition), Ok(data_len)) = (target.running_partition, device_size(path)) {
            let len = data_len / 64 + (1 << 20);
            parts.push(delta::Part { path: partition, offset: data_len, len, verified: false });
        }
        seeds.push(delta::Seed { name: "the running /usr", parts, overwritten: false });
    }
    let len = target.partition_size.min(usr.uncompressed_size + u64::from(cairn_chunks::chunker::MAX));
    let inactive = delta::Part { path: target.partition, offset: target.partition_offset, len, verified: false };
    seeds.push(delta::Seed { name: "the inactive partition", parts: vec![inactive], overwritten: true });
    let (usable, chunks_of): (Vec<delta::OpenSeed>, Vec<_>) = delta::cut(seeds, index.digest).into_iter().unzip();
    let cut: Vec<_> = usable.iter().map(|seed| seed.seed.overwritten).zip(chunks_of).collect();
    let plan = delta::plan(&index, &cut);
    plan.worth_it(usr.uncompressed_size).map_err(delta_error)?;

    // The assembled image is the uncompressed one, checked by its verity tree as it is written.
    let mut plain = usr.clone();
    plain.compression = Compression::None;
    plain.size = usr.uncompressed_size;
    let mut window = open_window(target)?;
    let fetcher = delta::Fetcher::new(transport, (&chunks.store, index.digest), &plan.fetches, target.wait);
    let reuse = std::thread::scope(|s| -> Result<delta::Reuse, UpdateError> {
        for _ in 0..delta::FETCHERS.min(plan.fetches.len()) {
            s.spawn(|| fetcher.run());
        }
        let result = (|| {
            let mut assembly = delta::Assembly::new(&plan, &usable, index.digest, &fetcher);
            let stream = Progress { inner: &mut assembly, done: 0, total: plain.size, report: target.progress };
            apply::write_usr(stream, &plain, &mut window, target.partition_size)?;
            Ok(assembly.reuse)
        })();
        fetcher.stop();
        result
    })?;
    let downloaded = fetcher.downloaded.load(std::sync::atomic::Ordering::Relaxed) + chunks.index_size;
    let mb = |b: u64| b as f64 / 1e6;
    let seeded: Vec<String> =
        usable.iter().zip(&reuse.seeded).map(|(s, b)| format!("{:.1} MB from {}", mb(*b), s.seed.name)).collect();
    let transfer = Transfer { image: usr.uncompressed_size, downloaded, reused: reuse.seeded.iter().sum() };
    let report = format!(
        "/usr {} assembled from chunks: {}, {:.1} MB fetched in {} chunks; {:.1} MB downloaded with the index \
         ({:.1}% of the {:.1} MB compressed image)",
        candidate.release.version,
        seeded.join(", "),
        mb(reuse.fetched),
        plan.fetches.len(),
        mb(downloaded),
        downloaded as f64 * 100.0 / usr.size.max(1) as f64,
        mb(usr.size),
    );
    Ok((report, transfer))
}

/// After `write_usr`: binds the partition to the release (stage 1 then finds it by the root
/// hash) and installs the release's UKI, verified on ROOT first, as a counted boot entry.
pub fn install_entry(candidate: &Candidate, transport: &dyn Transport, target: &Target) -> Result<(), UpdateError> {
    let r = &candidate.release;
    let root_hash: [u8; 32] = (r.artifact(ArtifactKind::Usr).verity.as_ref())
        .and_then(|v| hex::decode(&v.root_hash).ok())
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| ApplyError::Verity("the release names no 32-byte verity root hash".into()))?;
    let mut disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(target.disk)
        .map_err(io(format!("opening {}", target.disk.display())))?;
    slots::bind(&mut disk, target.slot, target.running_slot, &root_hash)?;
    // The new GPT sits in the block device's page cache until synced; the entry written next
    // must never reach the disk before it does.
    disk.sync_all().map_err(io(format!("syncing the GPT of {}", target.disk.display())))?;
    crate::failpoint::hit("after-usr");

    let uki = r.artifact(ArtifactKind::Uki);
    let staged = target.staging_dir.join("uki.efi.partial");
    stage_file(transport, candidate.location(uki), uki, &staged, target.wait)?;
    let installed = target.esp.with_entries(&mut |dir| {
        entries::install(dir, &r.os_id, &r.version, &staged, target.running_version).map(drop)
    });
    let _ = std::fs::remove_file(&staged);
    Ok(installed?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{EntriesDir, Offered, ReleaseSource};
    use crate::testkit::{World, checkin, esp_names, target, world};

    /// The release the feed of `w` offers, verified.
    fn candidate(w: &World) -> (Candidate, crate::tuf_feed::TufFeed) {
        let feed = w.source("stable");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let c = match feed.offer(&checkin(), now).unwrap() {
            Offered::Release(offer) => feed.fetch(&offer, "cairn", now).unwrap(),
            Offered::Nothing(why) => panic!("nothing offered: {why}"),
        };
        (c, feed)
    }

    fn install(c: &Candidate, transport: &dyn Transport, t: &Target) -> Result<(), UpdateError> {
        write_usr(c, transport, t)?;
        install_entry(c, transport, t)
    }

    #[test]
    fn a_verified_release_is_staged_into_the_other_slot() {
        let w = world("2.0.0");
        let (c, feed) = candidate(&w);
        let esp = EntriesDir(w.esp.clone());
        let (_, t) = target(&w, &esp);
        install(&c, feed.transport(), &t).unwrap();
        // USR-B now carries the release's identity; USR-A and the running entry are untouched.
        let root = c.release.artifact(ArtifactKind::Usr).verity.as_ref().unwrap().root_hash.clone();
        let mut f = File::open(&w.disk).unwrap();
        assert_eq!(slots::find(&mut f, Slot::B).unwrap().uuid.to_string().replace('-', ""), root[..32]);
        assert_eq!(slots::find(&mut f, Slot::A).unwrap().uuid, cairn_release::gpt::Guid::from_gpt_bytes([2; 16]));
        assert_eq!(esp_names(&w), ["cairn-1.0.0.efi", "cairn-2.0.0+3.efi"]);
    }

    #[test]
    fn with_a_chunk_index_the_image_is_assembled_and_a_bad_store_falls_back_to_the_whole_image() {
        // The running /usr holds the new image's content: nothing needs fetching.
        let w = world("2.0.0");
        let (c, feed) = candidate(&w);
        assert!(c.usr_chunks.is_some(), "the feed's release has a chunk index");
        let running = w.feed.parent().unwrap().join("running-usr");
        let image = zstd::decode_all(&std::fs::read(w.published("usr.img.zst")).unwrap()[..]).unwrap();
        std::fs::write(&running, &image).unwrap();
        let esp = EntriesDir(w.esp.clone());
        let (_, mut t) = target(&w, &esp);
        t.running_usr = Some(&running);
        let (report, transfer) =
            write_usr_from_chunks(&c, c.usr_chunks.as_ref().unwrap(), feed.transport(), &t).unwrap();
        assert!(report.contains("0.0 MB fetched in 0 chunks"), "{report}");
        assert_eq!(transfer.reused, image.len() as u64);
        assert_eq!(transfer.downloaded, c.usr_chunks.as_ref().unwrap().index_size, "only the index");
        install_entry(&c, feed.transport(), &t).unwrap();
        assert_eq!(esp_names(&w), ["cairn-1.0.0.efi", "cairn-2.0.0+3.efi"]);

        // Every chunk in the store is another's bytes, and the running /usr lacks the image's
        // end: the chunks fetched for it are refused by their ids, and the whole image is
        // installed instead.
        let w = world("2.0.0");
        for chunk in w.chunks() {
            std::fs::write(chunk, zstd::bulk::compress(b"tampered", 3).unwrap()).unwrap();
        }
        let (c, feed) = candidate(&w);
        let mut older = image.clone();
        let end = older.len();
        older[end - 4096..].fill(0xaa);
        std::fs::write(&running, &older).unwrap();
        let esp = EntriesDir(w.esp.clone());
        let (_, mut t) = target(&w, &esp);
        t.running_usr = Some(&running);
        let e = write_usr_from_chunks(&c, c.usr_chunks.as_ref().unwrap(), feed.transport(), &t).unwrap_err();
        assert!(e.to_string().contains("hashes to"), "{e}");
        install(&c, feed.transport(), &t).unwrap();
        assert_eq!(esp_names(&w), ["cairn-1.0.0.efi", "cairn-2.0.0+3.efi"]);
    }

    #[test]
    fn tampered_artifacts_never_reach_the_esp() {
        // A tampered /usr artifact: refused while writing; no entry, no new UUID.
        let w = world("2.0.0");
        let size = std::fs::metadata(w.published("usr.img.zst")).unwrap().len();
        w.tamper_usr(size as i64 / 2);
        let (c, feed) = candidate(&w);
        let esp = EntriesDir(w.esp.clone());
        let (before, t) = target(&w, &esp);
        assert!(matches!(write_usr(&c, feed.transport(), &t), Err(UpdateError::Apply(_))));
        let mut f = File::open(&w.disk).unwrap();
        assert_eq!(slots::find(&mut f, Slot::B).unwrap().uuid, before.uuid, "USR-B not bound");
        assert_eq!(esp_names(&w), ["cairn-1.0.0.efi"], "ESP unchanged");

        // A tampered UKI: refused before the ESP is written.
        let w = world("2.0.0");
        std::fs::write(w.published("cairn-2.0.0.efi"), b"evil uki!!").unwrap();
        let (c, feed) = candidate(&w);
        let esp = EntriesDir(w.esp.clone());
        let (_, t) = target(&w, &esp);
        let e = install(&c, feed.transport(), &t).unwrap_err().to_string();
        assert!(e.contains("UKI"), "{e}");
        assert_eq!(esp_names(&w), ["cairn-1.0.0.efi"], "ESP unchanged");
    }
}
