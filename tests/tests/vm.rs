//! VM tests: boot built images in QEMU (OVMF, systemd-boot, the UKI, the Debian kernel) and
//! watch the serial console. Each VM boot costs seconds under TCG, so images are shared.

use anyhow::{Context, Result};
use cairn_qemu::{Vm, VmConfig};
use cairn_tests::*;
use std::time::Duration;

/// Generous: TCG on a loaded 2-core CI machine.
const READY_DEADLINE: Duration = Duration::from_secs(300);

fn boot(image: &std::path::Path) -> Result<Vm> {
    let mut cfg = VmConfig::uefi(image);
    cfg.no_reboot = true;
    Vm::start(&cfg)
}

#[test]
fn default_image_boots_to_ready_and_powers_off_cleanly() -> Result<()> {
    let img = default_image()?;
    let mut vm = boot(&img.raw())?;
    let line = vm.wait_for_line("cairn: ready", 0, READY_DEADLINE)?;
    let (version, slot, boot_ms) = parse_ready(&line)?;
    assert_eq!(version, img.version);
    assert_eq!(slot, "a", "a fresh image boots slot A");
    // The guest counts from kernel start; it cannot have been booting longer than QEMU ran.
    let qemu_ms = vm.uptime().as_millis() as u64;
    assert!(boot_ms > 0 && boot_ms <= qemu_ms, "boot_ms={boot_ms} with QEMU up {qemu_ms} ms");
    let console = vm.console().text();
    assert!(!console.contains("boot failed"), "{console}");

    let mark = vm.console().mark();
    vm.powerdown()?;
    vm.wait_for_line("cairn: powering off", mark, Duration::from_secs(60))?;
    let status = vm.wait_exit(Duration::from_secs(60))?;
    assert!(status.success(), "QEMU exited with {status} after the guest powered off");
    Ok(())
}

#[test]
fn esp_entry_keeps_its_blessed_name_after_a_boot() -> Result<()> {
    let img = default_image()?;
    let expected = format!("cairn-{}.efi", img.version);
    let (esp_off, esp_size) = img.partition("EFI-SYSTEM")?;
    assert_eq!(esp_listing(&img.raw(), esp_off, esp_size, "EFI/Linux")?, vec![expected.clone()]);

    let mut vm = boot(&img.raw())?;
    vm.wait_for_line("cairn: ready", 0, READY_DEADLINE)?;
    assert!(vm.shutdown(Duration::from_secs(60))?, "guest did not power off");
    let raw = vm.work_dir().join("after.raw");
    overlay_to_raw(vm.overlay().context("overlay")?, &raw)?;
    // The factory entry has no boot counter, so systemd-boot leaves its name alone.
    assert_eq!(esp_listing(&raw, esp_off, esp_size, "EFI/Linux")?, vec![expected]);
    Ok(())
}

#[test]
fn counted_entry_is_renamed_by_the_loader_on_boot() -> Result<()> {
    let img = image("counted", "images/test-counted.toml", "1.0.0")?;
    let (esp_off, esp_size) = img.partition("EFI-SYSTEM")?;
    assert_eq!(esp_listing(&img.raw(), esp_off, esp_size, "EFI/Linux")?, vec!["cairn-1.0.0+3.efi".to_string()]);

    let mut vm = boot(&img.raw())?;
    vm.wait_for_line("cairn: ready", 0, READY_DEADLINE)?;
    assert!(vm.shutdown(Duration::from_secs(60))?, "guest did not power off");
    let raw = vm.work_dir().join("after.raw");
    overlay_to_raw(vm.overlay().context("overlay")?, &raw)?;
    // One try used, none judged yet: +2-1 (systemd-boot's automatic boot assessment).
    assert_eq!(esp_listing(&raw, esp_off, esp_size, "EFI/Linux")?, vec!["cairn-1.0.0+2-1.efi".to_string()]);
    Ok(())
}

fn assert_tampered_boot_fails(offset_in_usr: u64, what: &str) -> Result<()> {
    let img = default_image()?;
    let (usr_off, _) = img.partition("USR-A")?;
    let erofs_bytes = img.report["usr"]["erofs_bytes"].as_u64().context("erofs_bytes")?;
    assert!(offset_in_usr < erofs_bytes, "{what}: offset {offset_in_usr} is outside the filesystem");
    let dir = tempfile::tempdir()?;
    let tampered = dir.path().join("tampered.raw");
    copy_image(&img.raw(), &tampered)?;
    flip_byte(&tampered, usr_off + offset_in_usr)?;

    let mut vm = boot(&tampered)?;
    let (which, line) = vm.wait_for_any(&["cairn: boot failed", "cairn: ready"], 0, READY_DEADLINE)?;
    let console = vm.console().text();
    assert_eq!(which, 0, "{what}: a tampered /usr reached ready: {line}\n{console}");
    assert!(
        console.contains("verity") && console.contains("corrupted"),
        "{what}: no verity error on the console:\n{console}"
    );
    // After the message the host reboots (a boot try is spent); -no-reboot turns that into an exit.
    vm.wait_exit(Duration::from_secs(60))?;
    Ok(())
}

#[test]
fn tampered_usr_superblock_is_refused() -> Result<()> {
    // The erofs superblock lives at byte 1024 of the file system.
    assert_tampered_boot_fails(1024 + 16, "erofs superblock")
}

#[test]
fn tampered_init_binary_in_usr_is_refused() -> Result<()> {
    let img = default_image()?;
    let offset = erofs_file_offset(&img.dir.join("usr.img"), "/sbin/cairn-init")?;
    assert_tampered_boot_fails(offset + 100, "cairn-init's first block")
}
