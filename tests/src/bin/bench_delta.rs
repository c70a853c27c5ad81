//! `cairn-bench-delta`: what a host downloads to update by chunks (issue 19), next to what
//! `casync make` with its default chunk sizes would make it download, on the same images in the
//! same run.
//!
//! Images: the default image as 1.0.0; the same as 1.0.1 (a version bump: os-release, the UKI
//! and nothing else of note); and 1.0.0 again with one binary rebuilt (`cairn-agent` with one
//! string changed). For each update from 1.0.0, the host's seeds are what the agent reads: the
//! running image's data area (through its verity device) and the hash tree after it on the
//! partition; casync gets the same two seeds. Figures: the bytes downloaded (the missing
//! chunks as stored, zstd, plus the index) as a share of the full compressed image; and how
//! much of the new image is unchanged at the same offset (4 KiB blocks), which is what the
//! erofs layout keeps stable.
//!
//! Usage: cargo run --release -p cairn-tests --bin cairn-bench-delta [-- --quick]
//! (`--quick`: the one-binary change only.)

use anyhow::{Context, Result, bail};
use cairn_chunks::index::Index;
use cairn_chunks::{ChunkId, store};
use cairn_release::manifest::{ArtifactKind, Release};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn main() {
    if let Err(e) = run() {
        eprintln!("cairn-bench-delta: error: {e:#}");
        std::process::exit(1);
    }
}

/// An image as the bench reads it: its `/usr` image, data area length, compressed size.
struct Usr {
    image: PathBuf,
    data_len: u64,
    compressed: u64,
}

fn usr_of(out: &Path) -> Result<Usr> {
    let release: Release = serde_json::from_slice(&std::fs::read(out.join("release/release.json"))?)?;
    let usr = release.artifact(ArtifactKind::Usr);
    let verity = usr.verity.as_ref().context("the release has no verity parameters")?;
    Ok(Usr { image: out.join("usr.img"), data_len: verity.hash_offset, compressed: usr.size })
}

fn run() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let work = tempfile::Builder::new().prefix("cairn-bench-delta-").tempdir_in("/var/tmp")?;
    let base = cairn_tests::tuf_image("delta-1.0.0", "images/default.toml", "1.0.0")?;
    let from = usr_of(&base.dir)?;
    let mut cases = vec![("one binary changed", one_binary_changed(work.path())?)];
    if !quick {
        let bump = cairn_tests::tuf_image("delta-1.0.1", "images/default.toml", "1.0.1")?;
        cases.push(("version bump", bump.dir));
    }
    println!(
        "from 1.0.0: /usr {:.1} MB ({:.1} MB data read through verity), {:.1} MB compressed",
        file_len(&from.image)? as f64 / 1e6,
        from.data_len as f64 / 1e6,
        from.compressed as f64 / 1e6
    );
    // What the agent reads, as one stream: the data through verity, and the hash tree after it
    // on the partition.
    let seed = work.path().join("running-data");
    copy_prefix(&from.image, &seed, from.data_len)?;
    let seeds = [(seed.as_path(), 0), (from.image.as_path(), from.data_len)];
    let tree = work.path().join("running-tree");
    copy_range(&from.image, &tree, from.data_len)?;
    for (name, out) in cases {
        let to = usr_of(&out)?;
        let unchanged = unchanged_blocks(&from.image, &to.image)?;
        let t = Instant::now();
        let cairn = cairn_download(&seeds, &to, &work.path().join(format!("cairn-{}", slug(name))))?;
        let cairn_s = t.elapsed().as_secs_f64();
        let casync = casync_download(&[&seed, &tree], &to, &work.path().join(format!("casync-{}", slug(name))))?;
        let share = |b: u64| b as f64 * 100.0 / to.compressed as f64;
        println!("{name}: {:.2}% of the new image's 4 KiB blocks unchanged in place", unchanged * 100.0);
        println!(
            "  cairn:  {:>8.2} MB downloaded ({:.2}% of the {:.1} MB compressed image; {} of {} chunks fetched; seed, plan and sizes in {cairn_s:.1} s)",
            cairn.bytes as f64 / 1e6,
            share(cairn.bytes),
            to.compressed as f64 / 1e6,
            cairn.fetched,
            cairn.total,
        );
        println!(
            "  casync: {:>8.2} MB downloaded ({:.2}%; {} of {} chunks), `casync make` defaults",
            casync.bytes as f64 / 1e6,
            share(casync.bytes),
            casync.fetched,
            casync.total,
        );
    }
    Ok(())
}

fn slug(name: &str) -> String {
    name.replace(' ', "-")
}

fn file_len(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p).with_context(|| p.display().to_string())?.len())
}

/// The first `len` bytes of `src` in `dest`.
fn copy_prefix(src: &Path, dest: &Path, len: u64) -> Result<()> {
    use std::io::Read;
    let mut out = std::fs::File::create(dest)?;
    std::io::copy(&mut std::fs::File::open(src)?.take(len), &mut out)?;
    Ok(())
}

/// `src` from byte `from` on, in `dest`.
fn copy_range(src: &Path, dest: &Path, from: u64) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut input = std::fs::File::open(src)?;
    input.seek(SeekFrom::Start(from))?;
    std::io::copy(&mut input, &mut std::fs::File::create(dest)?)?;
    Ok(())
}

/// The share of `new`'s 4 KiB blocks equal to `old`'s at the same offset.
fn unchanged_blocks(old: &Path, new: &Path) -> Result<f64> {
    let (a, b) = (std::fs::read(old)?, std::fs::read(new)?);
    let blocks = b.len().div_ceil(4096);
    let same =
        b.chunks(4096).enumerate().filter(|(i, block)| a.get(i * 4096..i * 4096 + block.len()) == Some(*block)).count();
    Ok(same as f64 / blocks.max(1) as f64)
}

struct Download {
    bytes: u64,
    fetched: usize,
    total: usize,
}

/// What the agent downloads: the new image chunked into a store as `cairn release publish`
/// does, the seed (parts of files, one stream) cut as the agent cuts it, the plan's fetches
/// as stored, plus the index.
fn cairn_download(parts: &[(&Path, u64)], to: &Usr, dir: &Path) -> Result<Download> {
    let store = store::Store::new(&dir.join("chunks"));
    let index = store::store_image(std::io::BufReader::new(std::fs::File::open(&to.image)?), &store)?;
    use cairn_agent::delta::{OpenSeed, Part, Seed};
    let parts = parts.iter().map(|(path, offset)| Part { path, offset: *offset, len: u64::MAX, verified: false });
    let seed = Seed { name: "seed", parts: parts.collect(), overwritten: false };
    let cut = [(false, OpenSeed::open(seed)?.chunks(index.digest)?)];
    let plan = cairn_agent::delta::plan(&index, &cut);
    let mut bytes = index.to_bytes().len() as u64;
    for (id, _) in &plan.fetches {
        bytes += file_len(&store.dir.join(store::chunk_path(id)))?;
    }
    Ok(Download { bytes, fetched: plan.fetches.len(), total: index.chunks.len() })
}

/// The same figure for casync: `casync make` (default chunk sizes) of the seeds and of the new
/// image; the new index's chunks the seeds lack, as casync stored them, plus the index.
fn casync_download(seeds: &[&Path], to: &Usr, dir: &Path) -> Result<Download> {
    std::fs::create_dir_all(dir)?;
    let make = |index: &Path, store: &Path, input: &Path| -> Result<Index> {
        let out = Command::new("casync")
            .arg("make")
            .arg(format!("--store={}", store.display()))
            .arg(index)
            .arg(input)
            .output()
            .context("running casync (Debian package casync; ./scripts/setup.sh installs it)")?;
        if !out.status.success() {
            bail!("casync make {}: {}", input.display(), String::from_utf8_lossy(&out.stderr));
        }
        Index::parse(&std::fs::read(index)?).map_err(|e| anyhow::anyhow!("casync's index: {e}"))
    };
    let mut have: HashSet<ChunkId> = HashSet::new();
    for (i, seed) in seeds.iter().enumerate() {
        let index = make(&dir.join(format!("seed{i}.caibx")), &dir.join("seed.castr"), seed)?;
        have.extend(index.chunks.iter().map(|(_, id)| *id));
    }
    let new_store = dir.join("new.castr");
    let new = make(&dir.join("new.caibx"), &new_store, &to.image)?;
    let mut bytes = file_len(&dir.join("new.caibx"))?;
    let mut fetched = HashSet::new();
    for (_, id) in &new.chunks {
        if !have.contains(id) && fetched.insert(*id) {
            bytes += file_len(&new_store.join(store::chunk_path(id)))?;
        }
    }
    Ok(Download { bytes, fetched: fetched.len(), total: new.chunks.len() })
}

/// The default image as 1.0.0 with one binary rebuilt: the workspace's release binaries with
/// one string of `cairn-agent` changed by one letter.
fn one_binary_changed(work: &Path) -> Result<PathBuf> {
    let cairn_image::binaries::Source::Cargo { target_dir, .. } = cairn_image::binaries::Source::default_cargo() else {
        bail!("the workspace's binaries are not built by cargo here");
    };
    let built = target_dir.join(cairn_image::binaries::TARGET).join("release");
    let bins = work.join("binaries");
    std::fs::create_dir_all(&bins)?;
    for name in ["cairn-init", "cairn-agent", "updatectl", "cairn-cloud-config"] {
        std::fs::copy(built.join(name), bins.join(name)).with_context(|| format!("copying {name}"))?;
    }
    let agent = bins.join("cairn-agent");
    let mut bytes = std::fs::read(&agent)?;
    let needle = b"feed verified (root ";
    let at = bytes.windows(needle.len()).position(|w| w == needle).context("the string to change in cairn-agent")?;
    bytes[at] = b'F';
    std::fs::write(&agent, bytes)?;

    let out = cairn_tests::images_dir().join("delta-1.0.0-patched");
    let (feed, _) = cairn_tests::test_tuf_repository()?;
    let opts = cairn_image::build::BuildOptions {
        binaries: cairn_image::binaries::Source::Dir(bins),
        trust_root: Some(feed.join("metadata/1.root.json")),
        ..cairn_tests::build_options("images/default.toml", "1.0.0", out.clone())
    };
    cairn_image::build::build(&opts).context("building the image with the changed binary")?;
    Ok(out)
}
