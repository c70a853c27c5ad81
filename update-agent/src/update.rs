//! One update, from a verified candidate to a staged boot entry: the `/usr` image streamed into
//! the inactive partition and verified, the partition bound to the release, the UKI verified and
//! installed as a counted entry. State is saved at each step; a crash anywhere leaves the
//! running slot and its entry untouched, and the next attempt starts over cleanly.

use crate::apply::{self, ApplyError};
use crate::entries;
use crate::http::ResumingReader;
use crate::slots::{self, SlotError};
use crate::source::{Candidate, SourceError, Transport};
use crate::state::{AgentState, Phase, StateError};
use cairn_release::gpt::Slot;
use cairn_release::manifest::ArtifactKind;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("writing /usr: {0}")]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Slot(#[from] SlotError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Io(String),
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
}

/// Downloads `path` into `dest` (bounded by the artifact's size), checking size and sha256.
fn stage_file(
    transport: &dyn Transport,
    path: &str,
    artifact: &cairn_release::manifest::Artifact,
    dest: &Path,
    wait: &(dyn Fn(std::time::Duration) + Sync),
) -> Result<(), UpdateError> {
    let io = |e: std::io::Error| UpdateError::Io(format!("staging {} in {}: {e}", artifact.name, dest.display()));
    std::fs::create_dir_all(dest.parent().unwrap_or(Path::new("/"))).map_err(io)?;
    let stream = ResumingReader::new(transport, path, DOWNLOAD_RETRIES, wait).take(artifact.size + 1);
    let mut stream = apply::HashingReader::new(stream);
    let mut f = File::create(dest).map_err(io)?;
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

/// The ESP's `EFI/Linux` directory, made available for `f` (a host mounts the ESP around it).
pub trait Esp {
    fn with_entries(&self, f: &mut dyn FnMut(&Path) -> std::io::Result<()>) -> Result<(), String>;
}

/// An ESP that is a directory already (tests, or an ESP mounted by the administrator).
pub struct EntriesDir(pub std::path::PathBuf);

impl Esp for EntriesDir {
    fn with_entries(&self, f: &mut dyn FnMut(&Path) -> std::io::Result<()>) -> Result<(), String> {
        f(&self.0).map_err(|e| format!("{}: {e}", self.0.display()))
    }
}

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

/// A window of a file: the partition as seen inside a disk image (tests) or a device.
struct Window {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Write for Window {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.len.saturating_sub(self.pos) as usize);
        if n == 0 && !buf.is_empty() {
            return Err(std::io::Error::other("write past the end of the partition"));
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.write(&buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

impl Seek for Window {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.pos = match pos {
            SeekFrom::Start(p) => p,
            SeekFrom::End(o) => (self.len as i64 + o) as u64,
            SeekFrom::Current(o) => (self.pos as i64 + o) as u64,
        };
        Ok(self.pos)
    }
}

/// Installs `candidate` into `target`, saving `state` to `state_path` at each step. Ends in
/// `Staged`; rebooting is the caller's (strategy's) decision.
pub fn install(
    candidate: &Candidate,
    transport: &dyn Transport,
    target: &Target,
    state: &mut AgentState,
    state_path: &Path,
) -> Result<(), UpdateError> {
    let r = &candidate.release;
    let version = r.version.clone();
    let save = |s: &AgentState| s.save(state_path).map_err(UpdateError::Io);
    state.transition(Phase::Downloading { version: version.clone() })?;
    save(state)?;

    // /usr into the inactive partition, checked as it streams and re-read afterwards.
    let usr = r.artifact(ArtifactKind::Usr);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(target.partition)
        .map_err(|e| UpdateError::Io(format!("opening {}: {e}", target.partition.display())))?;
    let mut window = Window { file, start: target.partition_offset, len: target.partition_size, pos: 0 };
    let stream =
        ResumingReader::new(transport, &format!("{}/{}", candidate.path, usr.name), DOWNLOAD_RETRIES, target.wait);
    let stream = Progress { inner: stream, done: 0, total: usr.size, report: target.progress };
    let written = apply::write_usr(stream, usr, &mut window, target.partition_size)?;
    state.transition(Phase::Verifying { version: version.clone() })?;
    save(state)?;

    // Bind the partition to the release: now stage 1 can find it by the root hash.
    let mut disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(target.disk)
        .map_err(|e| UpdateError::Io(format!("opening {}: {e}", target.disk.display())))?;
    slots::bind(&mut disk, target.slot, target.running_slot, &written.root_hash)?;
    // The new GPT sits in the block device's page cache until synced; the entry written next
    // must never reach the disk before it does.
    disk.sync_all().map_err(|e| UpdateError::Io(format!("syncing the GPT of {}: {e}", target.disk.display())))?;
    crate::failpoint::hit("after-usr");

    // The UKI: small, fetched whole, verified before it touches the ESP.
    // The UKI: staged on ROOT and verified before anything touches the ESP, then copied there.
    let uki = r.artifact(ArtifactKind::Uki);
    let staged = target.staging_dir.join("uki.efi.partial");
    stage_file(transport, &format!("{}/{}", candidate.path, uki.name), uki, &staged, target.wait)?;
    let installed = target
        .esp
        .with_entries(&mut |dir| entries::install(dir, &r.os_id, &version, &staged, target.running_version).map(drop))
        .map_err(|e| UpdateError::Io(format!("writing the boot entry: {e}")));
    let _ = std::fs::remove_file(&staged);
    installed?;
    state.transition(Phase::Staged { version })?;
    save(state)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{DirTransport, check};
    use crate::testkit::{World, esp_names, world};
    use cairn_release::keys::SecretKey;

    fn target<'a>(w: &'a World, esp: &'a EntriesDir) -> (slots::UsrPartition, Target<'a>) {
        let mut f = File::open(&w.disk).unwrap();
        let b = slots::find(&mut f, Slot::B).unwrap();
        let t = Target {
            disk: &w.disk,
            partition: &w.disk,
            partition_offset: b.offset,
            partition_size: b.size,
            slot: Slot::B,
            running_slot: Slot::A,
            running_version: "1.0.0",
            esp,
            progress: &|_, _| {},
            staging_dir: &w.staging,
            wait: &|_| {},
        };
        (b, t)
    }

    /// The feed of `w` checked by a host running 1.0.0: the candidate, in the checking state.
    fn checked(w: &World) -> (DirTransport, AgentState, crate::source::Candidate) {
        let transport = DirTransport(w.feed.clone());
        let mut state = AgentState::default();
        state.transition(Phase::Checking).unwrap();
        let c = check(&transport, &[w.key.public()], 500, "cairn", "1.0.0", &state).unwrap().unwrap();
        (transport, state, c)
    }

    #[test]
    fn a_verified_release_is_staged_into_the_other_slot() {
        let w = world("2.0.0");
        let (transport, mut state, c) = checked(&w);
        let esp = EntriesDir(w.esp.clone());
        let (_, t) = target(&w, &esp);
        install(&c, &transport, &t, &mut state, &w.state).unwrap();
        assert_eq!(state.phase, Phase::Staged { version: "2.0.0".into() });
        assert_eq!(AgentState::load(&w.state).unwrap().phase, state.phase, "persisted");
        // USR-B now carries the release's identity; USR-A and the running entry are untouched.
        let root = c.release.artifact(ArtifactKind::Usr).verity.as_ref().unwrap().root_hash.clone();
        let mut f = File::open(&w.disk).unwrap();
        assert_eq!(slots::find(&mut f, Slot::B).unwrap().uuid.to_string().replace('-', ""), root[..32]);
        assert_eq!(slots::find(&mut f, Slot::A).unwrap().uuid, cairn_release::gpt::Guid::from_gpt_bytes([2; 16]));
        assert_eq!(esp_names(&w), ["cairn-1.0.0.efi", "cairn-2.0.0+3.efi"]);
    }

    #[test]
    fn nothing_newer_or_a_rolled_back_version_installs_nothing() {
        let w = world("1.0.0");
        let transport = DirTransport(w.feed.clone());
        let state = AgentState::default();
        let why = check(&transport, &[w.key.public()], 500, "cairn", "1.0.0", &state).unwrap().unwrap_err();
        assert!(why.contains("not newer"), "{why}");
        let w = world("3.0.0");
        let transport = DirTransport(w.feed.clone());
        let mut state = AgentState::default();
        state.rolled_back.push("3.0.0".into());
        let why = check(&transport, &[w.key.public()], 500, "cairn", "1.0.0", &state).unwrap().unwrap_err();
        assert!(why.contains("rolled back"), "{why}");
    }

    #[test]
    fn tampered_feeds_never_reach_the_esp() {
        // A tampered /usr artifact: refused while writing; no entry, no new UUID.
        let w = world("2.0.0");
        let usr = w.feed.join("releases/2.0.0/usr.img.zst");
        let mut bytes = std::fs::read(&usr).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&usr, bytes).unwrap();
        let (transport, mut state, c) = checked(&w);
        let esp = EntriesDir(w.esp.clone());
        let (before, t) = target(&w, &esp);
        assert!(install(&c, &transport, &t, &mut state, &w.state).is_err());
        let mut f = File::open(&w.disk).unwrap();
        assert_eq!(slots::find(&mut f, Slot::B).unwrap().uuid, before.uuid, "USR-B not bound");
        assert_eq!(esp_names(&w), ["cairn-1.0.0.efi"], "ESP unchanged");

        // A tampered UKI: refused before the ESP is written.
        let w = world("2.0.0");
        std::fs::write(w.feed.join("releases/2.0.0/cairn-2.0.0.efi"), b"evil uki!!").unwrap();
        let (transport, mut state, c) = checked(&w);
        let esp = EntriesDir(w.esp.clone());
        let (_, t) = target(&w, &esp);
        let e = install(&c, &transport, &t, &mut state, &w.state).unwrap_err().to_string();
        assert!(e.contains("UKI"), "{e}");
        assert_eq!(esp_names(&w), ["cairn-1.0.0.efi"], "ESP unchanged");

        // An index signed by another key, and an expired one: refused at the first step.
        let w = world("2.0.0");
        let transport = DirTransport(w.feed.clone());
        let other = SecretKey::from_seed([8; 32]);
        assert!(check(&transport, &[other.public()], 500, "cairn", "1.0.0", &AgentState::default()).is_err());
        let e = check(&transport, &[w.key.public()], 20_000, "cairn", "1.0.0", &AgentState::default()).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
    }
}
