//! VM tests of the running host (cairn-init stage 2): first boot, services, containers,
//! shutdown. They drive the development image's console shell.

use anyhow::{Context, Result};
use cairn_qemu::{Vm, VmConfig};
use cairn_tests::*;
use std::process::Command;
use std::time::Duration;

const READY: Duration = Duration::from_secs(300);
const CMD: Duration = Duration::from_secs(120);

fn start(cfg: VmConfig) -> Result<Vm> {
    let mut vm = Vm::start(&cfg)?;
    vm.wait_for_line("cairn: ready", 0, READY)?;
    Ok(vm)
}

/// Status of one service from `cairnctl status --json`.
fn service(vm: &mut Vm, name: &str) -> Result<serde_json::Value> {
    let out = vm.run_ok("cairnctl status --json", CMD)?;
    let all: serde_json::Value = serde_json::from_str(out.trim()).with_context(|| format!("status: {out}"))?;
    all.as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name).cloned())
        .with_context(|| format!("no service {name} in {out}"))
}

#[test]
fn first_boot_grows_root_and_state_survives_reboot_and_poweroff() -> Result<()> {
    let img = dev_image()?;
    let mut cfg = VmConfig::uefi(img.raw());
    cfg.disk_size = Some(4 << 30);
    let mut vm = start(cfg)?;

    // ROOT filled the 4 GiB disk (the image's ROOT is 64 MiB).
    let df = vm.run_ok("df -k / | tail -1", CMD)?;
    let size_kb: u64 = df.split_whitespace().nth(1).context("df size")?.parse()?;
    assert!(size_kb > 2_500_000, "ROOT is {size_kb} KiB after first boot:\n{}", vm.console().text());
    let machine_id = vm.run_ok("cat /etc/machine-id", CMD)?;

    // A file and a broken service file, then a reboot through init.
    vm.run_ok("echo persisted-across-reboot > /var/marker && sync", CMD)?;
    vm.run_ok(
        "mkdir -p /etc/cairn/services && printf 'command = [\"/bin/true\"]\\nbogus_field = 1\\n' > /etc/cairn/services/broken.toml",
        CMD,
    )?;
    let mark = vm.console().mark();
    vm.send(b"reboot\n")?;
    vm.wait_for_line("cairn: ready", mark, READY)?;
    let console = vm.console().text_from(mark);
    assert!(
        console.contains("/etc/cairn/services/broken.toml") && console.contains("bogus_field"),
        "the console names the bad file and field:\n{console}"
    );
    assert_eq!(vm.run_ok("cat /var/marker", CMD)?.trim(), "persisted-across-reboot");
    assert_eq!(vm.run_ok("cat /etc/machine-id", CMD)?, machine_id, "machine-id is kept");
    let broken = service(&mut vm, "broken")?;
    assert_eq!(broken["state"], "failed");
    assert!(broken["error"].as_str().unwrap_or("").contains("bogus_field"), "{broken}");

    // poweroff from the console: QEMU ends and ROOT was unmounted cleanly.
    let mark = vm.console().mark();
    vm.send(b"poweroff\n")?;
    vm.wait_for_line("cairn: powering off", mark, Duration::from_secs(120))?;
    vm.wait_exit(Duration::from_secs(60))?;
    let raw = vm.work_dir().join("after.raw");
    overlay_to_raw(vm.overlay().context("overlay")?, &raw)?;
    let (root_off, _) = img.partition("ROOT")?;
    let root = vm.work_dir().join("root.img");
    let out = Command::new("dd")
        .arg(format!("if={}", raw.display()))
        .arg(format!("of={}", root.display()))
        .args(["bs=1M", "conv=sparse", "status=none"])
        .arg(format!("skip={}", root_off >> 20))
        .status()?;
    assert!(out.success());
    let dump = Command::new("dumpe2fs").arg("-h").arg(&root).output()?;
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(text.contains("Filesystem state:         clean"), "{text}");
    let features = text.lines().find(|l| l.starts_with("Filesystem features:")).unwrap_or("");
    assert!(!features.contains("needs_recovery"), "journal needs replay: {features}");
    Ok(())
}

#[test]
fn init_supervises_containerd_and_runs_a_container() -> Result<()> {
    let img = dev_image()?;
    let dir = tempfile::tempdir()?;
    let archive = oci_archive(dir.path(), "docker.io/library/cairn-test:1")?;
    let mut cfg = VmConfig::uefi(img.raw());
    cfg.extra_disks.push(archive);
    let mut vm = start(cfg)?;

    assert_eq!(vm.run_ok("cat /proc/1/comm", CMD)?.trim(), "cairn-init");
    for name in ["containerd", "sshd"] {
        let s = service(&mut vm, name)?;
        assert_eq!(s["state"], "running", "{s}");
    }
    let table = vm.run_ok("cairnctl status", CMD)?;
    assert!(table.contains("containerd") && table.contains("running"), "{table}");

    // Kill containerd: init starts it again, and status shows the restart.
    let before = service(&mut vm, "containerd")?;
    vm.run_ok(&format!("kill -9 {}", before["pid"]), CMD)?;
    let mut after = before.clone();
    for _ in 0..600 {
        after = service(&mut vm, "containerd")?;
        if after["state"] == "running" && after["pid"] != before["pid"] {
            break;
        }
    }
    assert_eq!(after["state"], "running", "{after}");
    assert_ne!(after["pid"], before["pid"]);
    assert!(after["restarts"].as_u64() > before["restarts"].as_u64(), "{after}");
    assert!(after["last_exit"].as_str().unwrap_or("").contains("SIGKILL"), "{after}");

    // A container from an OCI archive the test made, handed over as /dev/vdb.
    vm.run_ok("ctr images import /dev/vdb", Duration::from_secs(300))?;
    let out = vm.run_ok(
        "ctr run --rm docker.io/library/cairn-test:1 marker /bin/busybox echo CAIRN-CONTAINER-MARKER",
        Duration::from_secs(300),
    )?;
    assert!(out.contains("CAIRN-CONTAINER-MARKER"), "{out}");
    // containerd's own output and init's notes about it land in its log.
    let log = vm.run_ok("cairnctl log containerd -n 400", CMD)?;
    assert!(log.contains("started /usr/bin/containerd") && log.contains("starting containerd"), "{log}");
    assert!(log.contains("exited: killed by SIGKILL"), "{log}");
    Ok(())
}

#[test]
fn a_boot_that_is_not_ready_by_the_deadline_reboots() -> Result<()> {
    let img = image("deadline", "images/test-deadline.toml", "1.0.0")?;
    let mut cfg = VmConfig::uefi(img.raw());
    cfg.no_reboot = true;
    let mut vm = Vm::start(&cfg)?;
    let (which, line) = vm.wait_for_any(&["cairn: boot failed", "cairn: ready"], 0, READY)?;
    assert_eq!(which, 0, "reached ready with a service that is never ready: {line}");
    assert!(line.contains("not ready within 90 s") && line.contains("never-ready"), "{line}");
    // Everything else did come up: only the culprit is named.
    assert!(!line.contains("containerd"), "{line}");
    vm.wait_for_line("cairn: rebooting", 0, Duration::from_secs(120))?;
    vm.wait_exit(Duration::from_secs(60))?;
    Ok(())
}
