//! `cairn-bench-apply`: the update agent's apply throughput, measured in one run next to its
//! floor. Apply = download the signed release's /usr over HTTP from loopback, zstd-decompress,
//! write to a partition-sized file while another thread builds the verity tree of what was
//! written (which checks every byte).
//! The floor = `dd` of the same (uncompressed) bytes to the same kind of file, with fsync.
//! The delta path alike: the agent's `update::write_usr` assembling the same image from its
//! chunk index, seeded from a running /usr that holds all of it (its data read as the verity
//! device is, its hash area raw from the partition) and the partition being written.
//!
//! Then the agent's resident memory on a VM: idle, and at its peak while it applies an update
//! from a feed on the test machine's loopback (VmRSS, VmHWM of /proc/PID/status).
//!
//! Usage: cargo run --release -p cairn-tests --bin cairn-bench-apply [-- --runs N] [--no-vm]

use anyhow::{Context, Result, bail};
use cairn_agent::apply::write_usr;
use cairn_agent::http::{HttpTransport, ResumingReader};
use cairn_agent::partition::Partition;
use cairn_agent::ports::Transport;
use cairn_release::manifest::{ArtifactKind, Release};
use std::time::{Duration, Instant};

fn main() {
    if let Err(e) = run() {
        eprintln!("cairn-bench-apply: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, release, target] = &args[..]
        && flag == "--apply-memory"
    {
        return apply_memory(release.as_ref(), target.as_ref());
    }
    let runs: usize = match args.iter().position(|a| a == "--runs") {
        Some(i) => args.get(i + 1).context("--runs N")?.parse()?,
        None => 3,
    };
    let work = tempfile::Builder::new().prefix("cairn-bench-apply-").tempdir_in("/var/tmp")?;
    // An image trusting a root writes its release directory, which is what is applied here.
    let out = cairn_tests::tuf_image("bench-apply", "images/default.toml", "2.0.0")?.dir;
    let manifest = std::fs::read(out.join("release/release.json"))?;
    let release: Release = serde_json::from_slice(&manifest)?;
    let usr = release.artifact(ArtifactKind::Usr).clone();
    let server = cairn_tests::http::FileServer::start(&out.join("release"))?;
    let transport = HttpTransport::insecure(&server.url(), Duration::from_secs(30))?;
    let partition_size = 512u64 << 20;
    let target = work.path().join("partition.img");
    let plain = out.join("usr.img");
    let mb = usr.uncompressed_size as f64 / 1e6;
    println!(
        "/usr: {:.1} MB written ({:.1} MB downloaded, zstd), target: a {} MiB file in /var/tmp",
        mb,
        usr.size as f64 / 1e6,
        partition_size >> 20
    );

    let (mut apply, mut local, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        // Floor: dd of the same bytes, with fsync.
        fresh(&target, partition_size)?;
        drop_caches_hint();
        let t = Instant::now();
        let st = std::process::Command::new("dd")
            .arg(format!("if={}", plain.display()))
            .arg(format!("of={}", target.display()))
            .args(["bs=1M", "conv=fsync,notrunc", "status=none"])
            .status()?;
        if !st.success() {
            bail!("dd failed");
        }
        floor.push(t.elapsed());

        // Apply: HTTP download + zstd + hashes + write + verity tree, as the agent does it. The
        // same start as the floor: a fresh file, caches dropped, the same bytes to the same kind
        // of file, synced at the end.
        fresh(&target, partition_size)?;
        drop_caches_hint();
        let t = Instant::now();
        let wait = |_: Duration| {};
        let stream = ResumingReader::new(&transport as &dyn Transport, &usr.name, 3, &wait);
        // The agent's own writer, which syncs at the end (`write_usr` flushes it).
        let mut partition = Partition::open(&target, 0, partition_size)?;
        let written = write_usr(stream, &usr, &mut partition, partition_size)?;
        apply.push(t.elapsed());
        assert_eq!(written.bytes, usr.uncompressed_size);

        // The same pipeline reading the compressed image from a local file, as dd reads its
        // input: what the agent itself costs, without a server on the same two cores.
        fresh(&target, partition_size)?;
        drop_caches_hint();
        let t = Instant::now();
        let stream = std::fs::File::open(out.join("release").join(&usr.name))?;
        // The agent's own writer, which syncs at the end (`write_usr` flushes it).
        let mut partition = Partition::open(&target, 0, partition_size)?;
        let written = write_usr(stream, &usr, &mut partition, partition_size)?;
        local.push(t.elapsed());
        assert_eq!(written.bytes, usr.uncompressed_size);
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (a, l, f) = (med(&mut apply), med(&mut local), med(&mut floor));
    let line =
        |what: &str, d: Duration| println!("{what:<90} {:>7.1} MB/s ({:.2} s)", mb / d.as_secs_f64(), d.as_secs_f64());
    line("floor (dd of the uncompressed image, fsync):", f);
    line("apply from a local file (zstd + write + verity tree of the written bytes, fsync):", l);
    println!("ratio: {:.2}x of the floor (target >= 0.8x)", f.as_secs_f64() / l.as_secs_f64());
    line("apply over loopback HTTP (the server on the same cores):", a);
    println!("ratio: {:.2}x of the floor", f.as_secs_f64() / a.as_secs_f64());

    // The whole-image path's memory, in a process of its own (the VM below measures the path
    // its feed offers: chunks).
    let child = std::process::Command::new(std::env::current_exe()?)
        .arg("--apply-memory")
        .arg(out.join("release"))
        .arg(&target)
        .output()?;
    if !child.status.success() {
        bail!("--apply-memory: {}", String::from_utf8_lossy(&child.stderr));
    }
    print!("{}", String::from_utf8_lossy(&child.stdout));

    // The delta path, alike: the same image, fresh file, caches dropped, synced, assembled by
    // the agent's own `write_usr` from the release's chunk index, its seeds a running /usr that
    // holds all of it (a version bump: nothing to fetch but the index), cut into chunks first.
    let feed = work.path().join("feed");
    let (candidate, running) = delta_feed(&out, &release, &feed)?;
    let feed_server = cairn_tests::http::FileServer::start(&feed)?;
    let feed_transport = HttpTransport::insecure(&feed_server.url(), Duration::from_secs(30))?;
    let esp = cairn_agent::ports::EntriesDir(work.path().join("esp"));
    let staging = work.path().join("staging");
    let image = out.join("usr.img");
    let mut delta = Vec::new();
    for _ in 0..runs {
        fresh(&target, partition_size)?;
        drop_caches_hint();
        let t = Instant::now();
        let into = cairn_agent::update::Target {
            disk: &target,
            partition: &target,
            partition_offset: 0,
            partition_size,
            slot: cairn_release::gpt::Slot::B,
            running_slot: cairn_release::gpt::Slot::A,
            running_version: "1.0.0",
            esp: &esp,
            progress: &|_, _| {},
            staging_dir: &staging,
            wait: &|_| {},
            running_usr: Some(&running),
            running_partition: Some(&image),
        };
        let moved = cairn_agent::update::write_usr(&candidate, &feed_transport, &into)?;
        delta.push(t.elapsed());
        if moved.reused == 0 {
            bail!("the delta path reused nothing: {moved:?}");
        }
    }
    let d = med(&mut delta);
    line("delta (seeds cut into chunks, read back (raw ones hashed), write + verity tree, fsync):", d);
    println!("ratio: {:.2}x of the floor", f.as_secs_f64() / d.as_secs_f64());
    if !args.iter().any(|a| a == "--no-vm") {
        agent_memory(false)?;
        agent_memory(true)?;
        tuf_check_cost()?;
    }
    Ok(())
}

/// Applies the whole image of the release in `release` to `target` and prints this process's
/// resident memory before and at its peak.
fn apply_memory(release: &std::path::Path, target: &std::path::Path) -> Result<()> {
    let manifest: Release = serde_json::from_slice(&std::fs::read(release.join("release.json"))?)?;
    let usr = manifest.artifact(ArtifactKind::Usr);
    let status = || -> Result<(f64, f64)> {
        let text = std::fs::read_to_string("/proc/self/status")?;
        let kb = |key: &str| -> Result<f64> {
            let line = text.lines().find(|l| l.starts_with(key)).with_context(|| format!("{key} in status"))?;
            Ok(line.split_whitespace().nth(1).context("kB")?.parse::<f64>()? / 1024.0)
        };
        Ok((kb("VmRSS:")?, kb("VmHWM:")?))
    };
    let (before, _) = status()?;
    let size = std::fs::metadata(target)?.len();
    let mut partition = Partition::open(target, 0, size)?;
    write_usr(std::fs::File::open(release.join(&usr.name))?, usr, &mut partition, size)?;
    let (_, peak) = status()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "whole-image apply in a process of its own, on {cores} cores: resident {before:.1} MB before, \
         {peak:.1} MB at the peak (the agent's target < 20)"
    );
    Ok(())
}

/// The agent's memory on a VM running release 1 while it stages release 2 (strategy off): from
/// the feed's chunks, or with `whole`, the whole image (the feed's chunk store removed).
fn agent_memory(whole: bool) -> Result<()> {
    let img1 = cairn_tests::tuf_image("update-1", "images/dev.toml", "1")?;
    let img2 = cairn_tests::tuf_image("update-2", "images/dev.toml", "2")?;
    let work = tempfile::tempdir()?;
    let repo = cairn_tests::TufCopy::new(work.path())?;
    repo.publish_image(&img2)?;
    if whole {
        // The index too: the agent learns at once that it has no chunks, and cuts no seeds.
        std::fs::remove_dir_all(repo.feed.join("chunks"))?;
        let found = std::process::Command::new("find")
            .arg(&repo.feed)
            .args(["-name", "*.caibx", "-print", "-delete"])
            .output()?;
        if !found.status.success() || found.stdout.is_empty() {
            bail!("no chunk index to remove in {}", repo.feed.display());
        }
    }
    let server = cairn_tests::http::FileServer::start(&repo.feed)?;
    // Two CPUs for the whole image: the agent decodes its frames on two threads.
    let cpus = if whole { 2 } else { 1 };
    let mut vm = cairn_qemu::Vm::start(&cairn_qemu::VmConfig { cpus, ..cairn_qemu::VmConfig::uefi(img1.raw()) })?;
    let long = Duration::from_secs(300);
    vm.wait_for_line("cairn: ready", 0, long)?;
    cairn_tests::updates::configure_agent(&mut vm, &server, "off")?;
    let status = |vm: &mut cairn_qemu::Vm| vm.run_ok("grep -E 'VmRSS|VmHWM' /proc/$(pidof cairn-agent)/status", long);
    let idle = status(&mut vm)?;
    let out = vm.run_ok("updatectl check", long)?;
    if !out.contains("Staged version:  2") {
        bail!("the update was not staged:\n{out}");
    }
    let applied = status(&mut vm)?;
    let how = vm.run_ok(
        "grep -h -E 'assembled from chunks|downloading the whole' /var/log/cairn/cairn-agent.log* || true",
        long,
    )?;
    println!("on the VM ({cpus} CPU): {}", how.trim());
    let kb = |text: &str, key: &str| -> Result<u64> {
        let line = text.lines().find(|l| l.starts_with(key)).with_context(|| format!("{key} in {text}"))?;
        Ok(line.split_whitespace().nth(1).context("kB")?.parse()?)
    };
    println!(
        "cairn-agent resident memory: idle {:.1} MB (target < 10), peak while applying {:.1} MB (target < 20)",
        kb(&idle, "VmRSS:")? as f64 / 1024.0,
        kb(&applied, "VmHWM:")? as f64 / 1024.0
    );
    Ok(())
}

/// An agent reading a TUF feed (issue 15): what a check with nothing new costs (requests and
/// bytes, from the agent's log), and its resident memory after such checks.
fn tuf_check_cost() -> Result<()> {
    let img = cairn_tests::tuf_image("update-1", "images/dev.toml", "1")?;
    let work = tempfile::tempdir()?;
    let repo = cairn_tests::TufCopy::new(work.path())?;
    let server = cairn_tests::http::FileServer::start(&repo.feed)?;
    let mut vm = cairn_qemu::Vm::start(&cairn_qemu::VmConfig::uefi(img.raw()))?;
    let long = Duration::from_secs(300);
    vm.wait_for_line("cairn: ready", 0, long)?;
    cairn_tests::updates::configure_agent(&mut vm, &server, "off")?;
    for _ in 0..3 {
        vm.run_ok("updatectl check", long)?;
    }
    let log = vm.run_ok("grep 'feed verified' /var/log/cairn/cairn-agent.log", long)?;
    let memory = vm.run_ok("grep -E 'VmRSS|VmHWM' /proc/$(pidof cairn-agent)/status", long)?;
    println!("cairn-agent on a TUF feed, each check:\n{}", log.trim());
    println!("cairn-agent resident memory after TUF checks (target < 10 MB idle):\n{}", memory.trim());
    Ok(())
}

/// A feed in `dir` for the delta path: the release's compressed `/usr`, its image cut into a
/// chunk store with the index, and a "running /usr" (the image's data area, as its verity
/// device shows it). The candidate and the running /usr's path.
fn delta_feed(
    out: &std::path::Path,
    release: &Release,
    dir: &std::path::Path,
) -> Result<(cairn_agent::ports::Candidate, std::path::PathBuf)> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    std::fs::create_dir_all(dir)?;
    let usr = release.artifact(ArtifactKind::Usr);
    std::fs::copy(out.join("release").join(&usr.name), dir.join(&usr.name))?;
    let store = cairn_chunks::store::Store::new(&dir.join("chunks"));
    let image = std::io::BufReader::new(std::fs::File::open(out.join("usr.img"))?);
    let index = cairn_chunks::store::store_image(image, &store)?.to_bytes();
    let index_name = cairn_tuf::releases::usr_index_name(&usr.name);
    std::fs::write(dir.join(&index_name), &index)?;
    let mut candidate = cairn_agent::ports::Candidate::beside(release.clone(), ".");
    for path in candidate.artifacts.values_mut() {
        *path = path.trim_start_matches("./").to_string();
    }
    candidate.usr_chunks = Some(cairn_agent::ports::UsrChunks {
        index: index_name,
        index_sha256: hex::encode(Sha256::digest(&index)),
        index_size: index.len() as u64,
        store: cairn_tuf::releases::CHUNK_STORE.to_string(),
    });
    let data_len = usr.verity.as_ref().context("no verity parameters")?.hash_offset;
    let running = dir.with_file_name("running-usr");
    let mut input = std::fs::File::open(out.join("usr.img"))?.take(data_len);
    std::io::copy(&mut input, &mut std::fs::File::create(&running)?)?;
    Ok((candidate, running))
}

fn fresh(path: &std::path::Path, size: u64) -> Result<()> {
    let _ = std::fs::remove_file(path);
    std::fs::File::create(path)?.set_len(size)?;
    Ok(())
}

/// Before each side: written dirty pages out, then the page cache dropped, so both read their
/// input from the disk. Without root the drop does nothing and both read warm caches alike.
fn drop_caches_hint() {
    nix::unistd::sync();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}
