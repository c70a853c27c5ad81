//! VM tests of the update agent: a host built as release 1, trusting the root of the test TUF
//! repository, updates itself from a TUF feed served on the test machine's loopback (10.0.2.2
//! inside QEMU), blesses a good release (a container's named volume keeping its content across
//! it), rolls back a bad one by itself, refuses tampered feeds, a freeze and a revoked key, and
//! survives being killed at each crash-critical point.

use anyhow::{Context, Result};
use cairn_qemu::{Vm, VmConfig};
use cairn_tests::http::{Fault, FileServer};
use cairn_tests::rolling::{from_lock, most_overlapping, most_rebooting_at_once, roll, rollout_server};
use cairn_tests::updates::{
    agent_log, configure_agent, configure_agent_for_fleetlock, configure_agent_for_server, wait_for_status,
};
use cairn_tests::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const READY: Duration = Duration::from_secs(300);
const CMD: Duration = Duration::from_secs(120);

fn v1() -> Result<Image> {
    tuf_image("update-1", "images/dev.toml", "1")
}
fn v2() -> Result<Image> {
    tuf_image("update-2", "images/dev.toml", "2")
}
/// A second good update, after 2 (3 is the bad one).
fn v4() -> Result<Image> {
    tuf_image("update-4", "images/dev.toml", "4")
}
fn v3_never_ready() -> Result<Image> {
    tuf_image("update-3", "images/test-bad-update.toml", "3")
}

/// Every image these tests boot, built before any of their VMs starts: a build beside a VM
/// under TCG takes the two cores from it, and its console deadlines pass (CI saw both a guest's
/// TCP connect and a crash-point step time out while another test built its images).
fn all_images() -> Result<()> {
    for image in [v1, v2, v3_never_ready, v4] {
        image()?;
    }
    Ok(())
}

/// `updatectl check` (strategy off, so it returns): its exit status and output.
fn check(vm: &mut Vm) -> Result<(i32, String)> {
    let out = vm.run("updatectl check --timeout 200", Duration::from_secs(240))?;
    Ok((out.status, out.output))
}

fn esp_entries(img: &Image, raw: &Path) -> Result<Vec<String>> {
    let (off, size) = img.partition("EFI-SYSTEM")?;
    esp_listing(raw, off, size, "EFI/Linux")
}

/// `cfg` with a cloud-config (fw_cfg, read at every boot) running container "keeper": an OCI
/// archive served by a file server on the test machine (returned, to keep it up), which notes
/// each of its starts in its named volume `notes`.
fn with_a_volume_keeper(mut cfg: VmConfig, dir: &Path) -> Result<(VmConfig, FileServer)> {
    let archives = dir.join("archives");
    std::fs::create_dir_all(&archives)?;
    let archive = oci_archive(&archives, "cairn.test/keeper:1")?;
    let sha256 = cairn_image::apt::sha256_file(&archive)?;
    let name = archive.file_name().context("the archive's name")?.to_string_lossy().into_owned();
    let server = FileServer::start(&archives)?;
    let user_data = format!(
        "#cloud-config\ncairn:\n  containers:\n    - name: keeper\n      image: http://10.0.2.2:{port}/{name}\n      \
         sha256: {sha256}\n      network: host\n      volumes: [\"notes:/notes\"]\n      \
         command: [/bin/busybox, sh, -c, \"echo start >> /notes/starts && exec /bin/busybox sleep 1000000\"]\n",
        port = server.port
    );
    let config = dir.join("user-data");
    std::fs::write(&config, user_data)?;
    cfg.fw_cfg.push((cairn_config::local::FW_CFG_NAME.to_string(), config));
    Ok((cfg, server))
}

/// How many starts the keeper's volume notes, once it notes `at_least` (a container is not
/// a required service: `ready` does not wait for it).
fn volume_starts(vm: &mut Vm, at_least: usize) -> Result<usize> {
    let deadline = std::time::Instant::now() + READY;
    loop {
        let notes = vm.run("cat /var/lib/cairn/volumes/notes/starts", CMD)?.output;
        let starts = notes.lines().filter(|l| l.trim() == "start").count();
        if starts >= at_least {
            return Ok(starts);
        }
        if std::time::Instant::now() >= deadline {
            let log = vm.run("cairnctl log container-keeper -n 30", CMD)?.output;
            anyhow::bail!("the keeper's volume notes {starts} start(s), not {at_least}:\n{notes}\n{log}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The VM's disk as a raw file, after it powered off.
fn disk_after(vm: &mut Vm) -> Result<PathBuf> {
    let mark = vm.console().mark();
    vm.send(b"poweroff\n")?;
    vm.wait_for_line("cairn: powering off", mark, CMD)?;
    vm.wait_exit(Duration::from_secs(60))?;
    let raw = vm.work_dir().join("after.raw");
    overlay_to_raw(vm.overlay().context("overlay")?, &raw)?;
    Ok(raw)
}

#[test]
fn healthy_update_is_blessed_and_a_bad_one_rolls_back_by_itself() -> Result<()> {
    all_images()?;
    let (img1, img2, img3) = (v1()?, v2()?, v3_never_ready()?);
    let work = tempfile::tempdir()?;
    let repo = TufCopy::new(work.path())?;
    repo.publish_image(&img2)?;
    let server = FileServer::start(&repo.feed)?;
    let (cfg, _archives) = with_a_volume_keeper(VmConfig::uefi(img1.raw()), work.path())?;

    let mut vm = Vm::start(&cfg)?;
    vm.wait_for_line("cairn: ready version=1 slot=a", 0, READY)?;
    assert_eq!(volume_starts(&mut vm, 1)?, 1, "the keeper started once on 1");
    configure_agent(&mut vm, &server, "immediate")?;

    // Version 2: found, written to slot B, booted, blessed.
    let mark = vm.console().mark();
    vm.send(b"updatectl check\n")?;
    vm.wait_for_line("cairn: ready version=2 slot=b", mark, READY)
        .with_context(|| format!("agent did not boot 2: {}", vm.console().text_from(mark)))?;
    wait_for_status(&mut vm, |s| s.contains("State:           blessed"), Duration::from_secs(120))?;
    let status = vm.run_ok("updatectl status", CMD)?;
    assert!(status.contains("Current version: 2 (slot b)"), "{status}");
    // /var is not the update's: the container's named volume kept what 1 wrote, and the
    // container runs again on 2.
    assert_eq!(volume_starts(&mut vm, 2)?, 2, "the named volume kept its content across the OS update");
    // Assembled from the chunks: 2 differs from 1 by its version, so the running /usr gave
    // nearly all of it.
    let assembled = vm.run_ok("grep -h 'assembled from chunks' /var/log/cairn/cairn-agent.log*", CMD)?;
    println!("v1 -> v2: {}", assembled.trim());
    let share: f64 = assembled
        .split(" of the ")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|s| s.trim_end_matches('%').parse().ok())
        .with_context(|| format!("no download share in {assembled:?}"))?;
    assert!(share < 10.0, "a version bump downloaded {share}% of the image: {assembled}");

    // The D-Bus API as any D-Bus client sees it.
    let intro =
        vm.run_ok("gdbus introspect --system --dest org.cairn.Update1 --object-path /org/cairn/Update1 | cat", CMD)?;
    for member in ["Check()", "Apply()", "Reboot()", "StateChanged(", "readonly s State", "readonly d Progress"] {
        assert!(intro.contains(member), "introspection lacks {member}:\n{intro}");
    }
    let state = vm.run_ok(
        "gdbus call --system --dest org.cairn.Update1 --object-path /org/cairn/Update1 \
         --method org.freedesktop.DBus.Properties.Get org.cairn.Update1 CurrentVersion",
        CMD,
    )?;
    assert!(state.contains("'2'"), "{state}");

    // Version 3 never becomes ready: three tries, then the loader boots 2 again by itself.
    repo.publish_image(&img3)?;
    let mark = vm.console().mark();
    vm.send(b"updatectl check\n")?;
    vm.wait_for_line("cairn: ready version=2 slot=b", mark, Duration::from_secs(600))
        .with_context(|| format!("no fallback to 2: {}", vm.console().text_from(mark)))?;
    let console = vm.console().text_from(mark);
    let tries = console.matches("cairn: boot failed: not ready").count();
    assert_eq!(tries, 3, "tries of 3 that failed:\n{console}");
    wait_for_status(&mut vm, |s| s.contains("Rolled back:     3"), Duration::from_secs(60))?;

    // And it is never installed again.
    let out = vm.run_ok("updatectl check --timeout 200", Duration::from_secs(240))?;
    assert!(out.contains("3 was rolled back on this host"), "{out}");
    let raw = disk_after(&mut vm)?;
    assert_eq!(esp_entries(&img1, &raw)?, ["cairn-2.efi", "cairn-3+0-3.efi"]);
    Ok(())
}

#[test]
fn the_agent_killed_at_each_crash_point_leaves_a_bootable_host_and_retries() -> Result<()> {
    all_images()?;
    let (img1, img2) = (v1()?, v2()?);
    let work = tempfile::tempdir()?;
    let repo = TufCopy::new(&work.path().join("repo"))?;
    repo.publish_image(&img2)?;
    let server = FileServer::start(&repo.feed)?;
    let disk = work.path().join("disk.raw");
    copy_image(&img1.raw(), &disk)?;
    let cfg = VmConfig { persistent: true, ..VmConfig::uefi(&disk) };

    let mut vm = Vm::start(&cfg)?;
    vm.wait_for_line("cairn: ready version=1 slot=a", 0, READY)?;
    configure_agent(&mut vm, &server, "immediate")?;
    // Each point in order; after each kill the next attempt must get past it to the next one.
    for (point, boots) in [
        ("mid-download", "version=1 slot=a"),
        ("after-usr", "version=1 slot=a"),
        ("before-uki-rename", "version=1 slot=a"),
        ("after-uki-rename", "version=2 slot=b"),
    ] {
        vm.run_ok(&format!("echo {point} > /run/cairn/failpoints"), CMD)?;
        let mark = vm.console().mark();
        vm.send(b"updatectl check &\n")?;
        vm.wait_for_line(&format!("cairn-agent: failpoint {point} reached"), mark, READY)
            .with_context(|| format!("failpoint {point}: {}", agent_log(&mut vm)))?;
        vm.kill();
        drop(vm);
        vm = Vm::start(&cfg)?;
        vm.wait_for_line(&format!("cairn: ready {boots}"), 0, READY)
            .with_context(|| format!("after a kill at {point}"))?;
    }
    // Killed right after the entry's rename: the loader booted 2, and the agent takes it from
    // there like any update.
    wait_for_status(&mut vm, |s| s.contains("State:           blessed"), Duration::from_secs(120))?;
    let mark = vm.console().mark();
    vm.send(b"poweroff\n")?;
    vm.wait_for_line("cairn: powering off", mark, CMD)?;
    vm.wait_exit(Duration::from_secs(60))?;
    assert_eq!(esp_entries(&img1, &disk)?, ["cairn-1.efi", "cairn-2.efi"]);
    Ok(())
}

const DAY: u64 = 86_400;

/// Issue 15's VM tests, on one host built as 1 trusting root 1 of the test TUF repository: a
/// frozen feed (its timestamp expired) is refused and says so; release 2 installs once the
/// timestamp is refreshed; the targets key is rotated (root 2) and release 4, signed with the
/// old key by whoever kept it, is refused; release 4 signed with the new key installs with no
/// change to the host. Also reports what a check with nothing new costs.
#[test]
fn a_host_trusting_a_tuf_root_refuses_a_freeze_and_follows_a_key_rotation() -> Result<()> {
    all_images()?;
    let (img1, img2, img4) = (v1()?, v2()?, v4()?);
    let work = tempfile::tempdir()?;
    let repo = TufCopy::new(&work.path().join("live"))?;
    let served = work.path().join("served");
    let now = unix_now();
    let publish = |feed: &Path, keys: &Path, img: &Image| -> Result<()> {
        cairn_tuf::publish(feed, keys, &img.dir.join("release"), &["stable".into()], now, Default::default())?;
        Ok(())
    };
    repo.publish_image(&img2)?;
    // A freeze: the feed's timestamp expired a day ago.
    cairn_tuf::refresh(&repo.feed, &repo.keys, now - 2 * DAY, DAY)?;
    copy_dir(&repo.feed, &served)?;
    let server = FileServer::start(&served)?;

    let mut vm = Vm::start(&VmConfig::uefi(img1.raw()))?;
    vm.wait_for_line("cairn: ready version=1 slot=a", 0, READY)?;
    configure_agent(&mut vm, &server, "immediate")?;
    let log = agent_log(&mut vm);
    assert!(log.contains("source TUF feed http://10.0.2.2"), "{log}");
    let (code, out) = check(&mut vm)?;
    assert!(code != 0 && out.contains("timestamp metadata expired") && out.contains("freeze"), "{code}: {out}");
    wait_for_status(&mut vm, |s| s.contains("Last error:") && s.contains("freeze"), Duration::from_secs(60))?;

    // Refreshed: 2 is found, installed, booted, blessed.
    cairn_tuf::refresh(&repo.feed, &repo.keys, now, DAY)?;
    copy_dir(&repo.feed, &served)?;
    let mark = vm.console().mark();
    vm.send(b"updatectl check\n")?;
    vm.wait_for_line("cairn: ready version=2 slot=b", mark, READY)
        .with_context(|| format!("agent did not boot 2: {}", vm.console().text_from(mark)))?;
    wait_for_status(&mut vm, |s| s.contains("State:           blessed"), Duration::from_secs(120))?;

    // The operator rotates the targets key (root 2); the host learns it at its next check.
    let (old_feed, old_keys) = (work.path().join("before-rotation/feed"), work.path().join("before-rotation/keys"));
    copy_dir(&repo.feed, &old_feed)?;
    copy_dir(&repo.keys, &old_keys)?;
    let targets = cairn_tuf::keys::RoleType::Targets;
    assert_eq!(cairn_tuf::rotate(&repo.feed, &repo.keys, targets, now, Default::default())?, 2);
    copy_dir(&repo.feed, &served)?;
    let (code, out) = check(&mut vm)?;
    assert_eq!(code, 0, "{out}");
    let kept = vm.run_ok("grep -o '\"version\":[0-9]*' /var/lib/cairn/agent/tuf/root.json | head -n 1", CMD)?;
    assert_eq!(kept.trim(), "\"version\":2", "the host keeps root 2");

    // Whoever kept the old targets key signs 4 (publishing until every version is past the
    // feed's, timestamp and snapshot signed with the feed's keys) and serves it: refused.
    for _ in 0..3 {
        publish(&old_feed, &old_keys, &img4)?;
    }
    copy_dir(&old_feed, &served)?;
    let (code, out) = check(&mut vm)?;
    assert!(code != 0 && out.contains("signature"), "{code}: {out}");
    let status = vm.run_ok("updatectl status", CMD)?;
    assert!(status.contains("Current version: 2 (slot b)") && status.contains("targets"), "{status}");

    // 4 signed with the new key (the live feed's versions move on past the old copy's, as a
    // refreshed feed's do): installed, with nothing changed on the host.
    for _ in 0..3 {
        publish(&repo.feed, &repo.keys, &img4)?;
    }
    copy_dir(&repo.feed, &served)?;
    let mark = vm.console().mark();
    vm.send(b"updatectl check\n")?;
    vm.wait_for_line("cairn: ready version=4 slot=a", mark, READY)
        .with_context(|| format!("agent did not boot 4: {}", vm.console().text_from(mark)))?;
    wait_for_status(&mut vm, |s| s.contains("State:           blessed"), Duration::from_secs(120))?;

    // A check with nothing new: the root probe and the timestamp.
    let (code, out) = check(&mut vm)?;
    assert_eq!(code, 0, "{out}");
    let log = vm.run_ok("grep 'feed verified' /var/log/cairn/cairn-agent.log | tail -n 1", CMD)?;
    assert!(log.contains("(root 2): 2 request(s)"), "{log}");
    println!("a check with nothing new: {}", log.trim());
    let memory = vm.run_ok("grep -E 'VmRSS|VmHWM' /proc/$(pidof cairn-agent)/status", CMD)?;
    println!("cairn-agent after TUF checks and two updates (target < 10 MB idle): {}", memory.replace('\n', " "));
    Ok(())
}

/// A copy of `img`'s release directory in `to` with its release.json edited: what a targets
/// key holder might sign by mistake (TUF vouches for the bytes, not their sense).
fn edited_release(img: &Image, to: &Path, edit: fn(&mut serde_json::Value)) -> Result<PathBuf> {
    copy_dir(&img.dir.join("release"), to)?;
    edit_json(&to.join("release.json"), edit)?;
    Ok(to.to_path_buf())
}

/// Edits the JSON file at `path` in place.
fn edit_json(path: &Path, edit: impl Fn(&mut serde_json::Value)) -> Result<()> {
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
    edit(&mut doc);
    Ok(std::fs::write(path, serde_json::to_vec(&doc)?)?)
}

/// The feed's copy of the target whose name ends with `suffix` (`targets/SHA256.NAME`).
fn target_file(feed: &Path, suffix: &str) -> Result<PathBuf> {
    for entry in std::fs::read_dir(feed.join("targets"))? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(suffix) {
            return Ok(path);
        }
    }
    anyhow::bail!("no target {suffix} in {}", feed.display())
}

/// The largest `N` of the feed's `N.KIND.json` files.
fn newest_versioned(feed: &Path, kind: &str) -> Result<u64> {
    let mut newest = 0;
    for entry in std::fs::read_dir(feed.join("metadata"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_suffix(&format!(".{kind}.json")).and_then(|n| n.parse().ok()) {
            newest = newest.max(n);
        }
    }
    Ok(newest)
}

/// One host and one feed whose history only moves forward (as a host's TUF state expects):
/// before each case the live feed gets a new timestamp and is served as is; the case then
/// tampers with what is served, or publishes something wrong into the live feed. Every case is
/// refused with its own message and nothing reaches the ESP; then 2 as built installs.
#[test]
fn tampered_feeds_and_broken_servers_are_refused_and_the_esp_is_untouched() -> Result<()> {
    all_images()?;
    let (img1, img2) = (v1()?, v2()?);
    let work = tempfile::tempdir()?;
    let live = TufCopy::new(&work.path().join("live"))?;
    live.publish_image(&img2)?;
    let earlier = work.path().join("earlier");
    copy_dir(&live.feed, &earlier)?;
    let served = work.path().join("served");
    copy_dir(&live.feed, &served)?;
    let server = FileServer::start(&served)?;
    let now = unix_now();
    let stranger = work.path().join("stranger");
    cairn_tuf::init(&stranger.join("feed"), &stranger.join("keys"), now, Default::default())?;

    let mut vm = Vm::start(&VmConfig::uefi(img1.raw()))?;
    vm.wait_for_line("cairn: ready version=1 slot=a", 0, READY)?;
    // strategy off: even a wrongly accepted release would only be staged, never booted.
    configure_agent(&mut vm, &server, "off")?;

    type Tamper<'a> = Box<dyn Fn() -> Result<()> + 'a>;
    let (served, server, live, work, img2_ref) = (&served, &server, &live, work.path(), &img2);
    let fault = |f: Fault| -> Tamper {
        Box::new(move || {
            server.set_fault(Some(f));
            Ok(())
        })
    };
    let publish_edited = |name: &'static str, edit: fn(&mut serde_json::Value)| -> Tamper {
        Box::new(move || {
            live.publish(&edited_release(img2_ref, &work.join(name), edit)?, &["stable"])?;
            copy_dir(&live.feed, served)
        })
    };
    let usr = || target_file(served, ".2-usr.img.zst");
    let cases: Vec<(&str, Tamper, &str)> = vec![
        (
            "timestamp altered after signing",
            Box::new(|| {
                edit_json(&served.join("metadata/timestamp.json"), |t| {
                    t["signed"]["expires"] = "2099-01-01T00:00:00Z".into()
                })
            }),
            "signature refused",
        ),
        (
            "timestamp signed by a key the root does not name",
            Box::new(|| {
                std::fs::copy(stranger.join("feed/metadata/timestamp.json"), served.join("metadata/timestamp.json"))?;
                Ok(())
            }),
            "signature refused",
        ),
        (
            "expired timestamp (a freeze)",
            Box::new(|| {
                cairn_tuf::refresh(&live.feed, &live.keys, now - 2 * DAY, DAY)?;
                copy_dir(&live.feed, served)
            }),
            "freeze",
        ),
        ("older metadata than the host saw (a rollback)", Box::new(|| copy_dir(&earlier, served)), "rollback refused"),
        (
            "targets that are not the ones the snapshot names (mix-and-match)",
            Box::new(|| {
                let n = newest_versioned(served, "targets")?;
                let older = served.join(format!("metadata/{}.targets.json", n - 1));
                std::fs::copy(older, served.join(format!("metadata/{n}.targets.json")))?;
                Ok(())
            }),
            "inconsistent feed refused",
        ),
        // Without the chunk store (the agent falls back to the whole image, and meets these).
        (
            "truncated image",
            Box::new(|| {
                std::fs::remove_dir_all(served.join("chunks"))?;
                let usr = usr()?;
                let len = std::fs::metadata(&usr)?.len();
                Ok(std::fs::OpenOptions::new().write(true).open(&usr)?.set_len(len / 2)?)
            }),
            "installing 2",
        ),
        (
            "altered image",
            Box::new(|| {
                std::fs::remove_dir_all(served.join("chunks"))?;
                flip_byte(&usr()?, std::fs::metadata(usr()?)?.len() / 3)
            }),
            "installing 2",
        ),
        ("server answers 503", fault(Fault::Status(503)), "HTTP 503"),
        ("server resets", fault(Fault::Reset), "fetching metadata/timestamp.json"),
        ("server sends garbage", fault(Fault::Garbage), "parse"),
        ("server hangs", fault(Fault::Hang), "fetching metadata/timestamp.json"),
        (
            "wrong verity root hash, signed",
            publish_edited("verity", |m| {
                for a in m["artifacts"].as_array_mut().into_iter().flatten() {
                    if !a["verity"].is_null() {
                        a["verity"]["root_hash"] = "ab".repeat(32).into();
                    }
                }
            }),
            "verity root hash",
        ),
        (
            "image larger than the partition (a full disk), signed",
            publish_edited("oversized", |m| {
                for a in m["artifacts"].as_array_mut().into_iter().flatten() {
                    if !a["verity"].is_null() {
                        a["uncompressed_size"] = (64u64 << 30).into();
                    }
                }
            }),
            "does not fit",
        ),
    ];
    for (name, tamper, expected) in &cases {
        server.set_fault(None);
        cairn_tuf::refresh(&live.feed, &live.keys, now, DAY)?;
        copy_dir(&live.feed, served)?;
        tamper()?;
        let (status, out) = check(&mut vm)?;
        assert_eq!(status, 1, "{name}: updatectl check exits 1 on an error:\n{out}");
        assert!(out.contains("State:           error"), "{name}: not an error:\n{out}");
        let error = out.lines().find(|l| l.starts_with("Last error:")).unwrap_or_default().to_string();
        assert!(error.contains(expected), "{name}: expected {expected:?} in the error, got:\n{out}");
        let log = agent_log(&mut vm);
        assert!(log.contains(error.trim_start_matches("Last error:").trim()), "{name}: the log has the error:\n{log}");
    }
    server.set_fault(None);
    // Nothing staged: a reboot request is refused by the API.
    let out = vm.run("updatectl reboot", CMD)?;
    assert!(out.status != 0 && out.output.contains("nothing is staged"), "{out:?}");
    // Nothing reached the ESP (mounted read-only to look).
    let esp = vm.run_ok("mount -o ro -t vfat /dev/vda1 /mnt && ls /mnt/EFI/Linux; umount /mnt", CMD)?;
    assert_eq!(esp.split_whitespace().collect::<Vec<_>>(), ["cairn-1.efi"], "{esp}");

    // After all that, 2 published as built, but every chunk in the store holds other bytes:
    // those the host lacks are refused by their ids, and the whole image is downloaded instead;
    // the same host stages it and, strategy off, waits for `updatectl reboot`. (The attempts
    // above wrote 2 into slot B: emptied, so that the host lacks some chunks of it.)
    live.publish_image(&img2)?;
    copy_dir(&live.feed, served)?;
    for chunk in files_under(&served.join("chunks"))? {
        std::fs::write(&chunk, zstd::bulk::compress(b"not this chunk", 3)?)?;
    }
    vm.run_ok("dd if=/dev/zero of=/dev/vda3 bs=1M count=256 conv=fsync 2>/dev/null", CMD)?;
    let (status, out) = check(&mut vm)?;
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("Staged version:  2"), "{out}");
    let log = agent_log(&mut vm);
    assert!(
        log.contains("assembling /usr from chunks failed") && log.contains("hashes to"),
        "the bad chunk was not refused by its id:\n{log}"
    );
    wait_for_status(&mut vm, |s| s.contains("State:           waiting-to-reboot"), Duration::from_secs(60))?;
    let mark = vm.console().mark();
    vm.send(b"updatectl reboot\n")?;
    vm.wait_for_line("cairn: ready version=2 slot=b", mark, READY)?;
    wait_for_status(&mut vm, |s| s.contains("State:           blessed"), Duration::from_secs(120))?;
    let raw = disk_after(&mut vm)?;
    assert_eq!(esp_entries(&img1, &raw)?, ["cairn-1.efi", "cairn-2.efi"]);
    Ok(())
}

/// The files one level below `dir` (a chunk store's chunks).
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for sub in std::fs::read_dir(dir)? {
        for f in std::fs::read_dir(sub?.path())? {
            files.push(f?.path());
        }
    }
    anyhow::ensure!(!files.is_empty(), "no file under {}", dir.display());
    Ok(files)
}

/// A host checks in with cairn-server on the test machine's loopback, is granted 2 by its
/// group's policy, installs it, boots it, reports it blessed, and the server's rollout status
/// shows it there.
#[test]
fn a_host_is_granted_an_update_by_the_rollout_server() -> Result<()> {
    all_images()?;
    use cairn_tests::server::{Api, workspace_binary};
    let (img1, img2) = (v1()?, v2()?);
    let tmp = tempfile::tempdir()?;
    let (server, token, port) = rollout_server(tmp.path(), &[&img2])?;

    let updatectl = workspace_binary("updatectl", "updatectl")?;
    let fleet = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new(&updatectl)
            .args(args)
            .env("CAIRN_SERVER", &server.url)
            .env("CAIRN_TOKEN", &token)
            .output()?;
        anyhow::ensure!(out.status.success(), "updatectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?)
    };
    assert!(fleet(&["package", "list"])?.contains("stable"), "2 is in the server's repository");
    fleet(&["channel", "set-version", "stable", "2"])?;
    fleet(&["group", "create", "vms", "--max-per-period", "1", "--period", "1h", "--safe-mode"])?;
    let enroll = fleet(&["group", "enrollment-token", "vms"])?.trim().to_string();

    let mut vm = Vm::start(&VmConfig::uefi(img1.raw()))?;
    vm.wait_for_line("cairn: ready version=1 slot=a", 0, READY)?;
    configure_agent_for_server(&mut vm, port, "vms", "immediate", &enroll)?;
    let mark = vm.console().mark();
    vm.send(b"updatectl check\n")?;
    vm.wait_for_line("cairn: ready version=2 slot=b", mark, READY)
        .with_context(|| format!("the granted update did not boot: {}", vm.console().text_from(mark)))?;
    wait_for_status(&mut vm, |s| s.contains("State:           blessed"), Duration::from_secs(120))?;

    // The blessed report reaches the server (right away, or queued to the next check-in).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        let status: serde_json::Value =
            serde_json::from_str(&fleet(&["--json", "rollout", "status", "--group", "vms"])?)?;
        if status[0]["succeeded"] == 1 && status[0]["versions"] == serde_json::json!([["2", 1]]) {
            break status;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "the server never saw the host on 2: {status}");
        vm.run("updatectl check --timeout 60", CMD)?;
    };
    assert_eq!(status[0]["failed"], 0, "{status}");
    let human = fleet(&["rollout", "status", "--group", "vms"])?;
    assert!(human.contains("hosts: 1 (by version: 2 1;"), "{human}");
    let events = fleet(&["events", "--group", "vms"])?;
    for kind in ["granted", "staged", "blessed"] {
        assert!(events.contains(kind), "no {kind} event:\n{events}");
    }
    let admin = Api::new(&server.url, Some(&token));
    let hosts = admin.ok("GET", "/v1/admin/instances?group=vms", &serde_json::Value::Null)?;
    assert_eq!((hosts[0]["version"].as_str(), hosts[0]["slot"].as_str()), (Some("2"), Some("b")), "{hosts}");
    Ok(())
}

/// Three hosts on 1, given 2 by the rollout server at once, reboot one at a time under the
/// FleetLock semaphore of the same server (slots=1); all end on 2. The hosts' own consoles show
/// at most one of them down for a reboot at any time (from "stopping services" to "ready"), and
/// the server's timeline at most one between pre-reboot and steady-state. Then, with slots=2,
/// the same hosts are given 4: at most two reboot at once (and two held slots at once).
#[test]
fn three_hosts_reboot_n_at_a_time_under_the_fleetlock() -> Result<()> {
    all_images()?;
    use cairn_tests::server::Api;
    let (img1, img2, img4) = (v1()?, v2()?, v4()?);
    let tmp = tempfile::tempdir()?;
    let (server, token, port) = rollout_server(tmp.path(), &[&img2, &img4])?;
    let admin = Api::new(&server.url, Some(&token));
    let enroll = Api::agent(&server.url, &token).enrollment_token("default")?.context("the default group")?;

    let mut vms = Vec::new();
    for _ in 0..3 {
        vms.push(Vm::start(&VmConfig::uefi(img1.raw()))?);
    }
    for vm in &mut vms {
        vm.wait_for_line("cairn: ready version=1 slot=a", 0, READY)?;
        configure_agent_for_fleetlock(vm, port, "2s", &enroll)?;
    }
    // All three are granted 2 at once (the default group grants 10 an hour).
    let started = std::time::Instant::now();
    let rolled = roll(&mut vms.iter_mut().collect::<Vec<_>>(), &admin, "2", Some("b"), 3)?;
    let (most, locks) = most_rebooting_at_once(&rolled.events);
    let events = &rolled.events;
    eprintln!("slots=1: three hosts updated in {:.0} s ({locks} slots taken)", started.elapsed().as_secs_f64());
    assert_eq!(rolled.windows.len(), 3, "each host rebooted once: {:?}", rolled.windows);
    assert_eq!(most_overlapping(&rolled.windows), 1, "two hosts were down at once: {:?}", rolled.windows);
    assert_eq!(locks, 3, "{events}");
    assert_eq!(most, 1, "two hosts held a slot at once: {events}");
    let status = admin.ok("GET", "/v1/admin/rollout?group=default", &serde_json::Value::Null)?;
    assert_eq!(status[0]["versions"], serde_json::json!([["2", 3]]), "{status}");

    admin.ok("PUT", "/v1/admin/locks/default", &serde_json::json!({"slots": 2}))?;
    let started = std::time::Instant::now();
    let rolled = roll(&mut vms.iter_mut().collect::<Vec<_>>(), &admin, "4", Some("a"), 6)?;
    let events = from_lock(&rolled.events, 3);
    let (most, locks) = most_rebooting_at_once(&events);
    eprintln!("slots=2: three hosts updated in {:.0} s ({locks} slots taken)", started.elapsed().as_secs_f64());
    assert_eq!(rolled.windows.len(), 3, "each host rebooted once: {:?}", rolled.windows);
    assert!(most_overlapping(&rolled.windows) <= 2, "three hosts were down at once: {:?}", rolled.windows);
    assert_eq!(locks, 3, "{events}");
    assert_eq!(most, 2, "slots=2: at most two slots held at once, and two were: {events}");
    let status = admin.ok("GET", "/v1/admin/rollout?group=default", &serde_json::Value::Null)?;
    assert_eq!(status[0]["versions"], serde_json::json!([["4", 3]]), "{status}");
    let locks = admin.ok("GET", "/v1/admin/locks?group=default", &serde_json::Value::Null)?;
    assert_eq!(locks[0]["holders"], serde_json::json!([]), "{locks}");
    Ok(())
}
