//! `cairn-bench`: figures for the image issue, measured in one run on this machine.
//!
//! - warm-cache build time split by step, and a rebuild after one of Cairn's binaries changed;
//! - sizes of disk.raw, disk.qcow2, the UKI and /usr;
//! - boot time (kernel start to ready, QEMU start to ready) next to the floor: the same kernel
//!   through the same firmware and loader with a busybox-only initramfs that powers off at once.
//!
//! Usage: cargo run --release -p cairn-tests --bin cairn-bench [-- --boots N] [--quick]

use anyhow::{Context, Result, bail};
use cairn_image::build::{BuildOptions, BuildReport, build};
use cairn_image::disk::{self, MIB, PartitionSpec};
use cairn_image::{esp, initramfs::Initramfs, uki};
use cairn_qemu::{Vm, VmConfig};
use cairn_release::gpt::{self, Guid};
use std::path::{Path, PathBuf};
use std::time::Duration;

const EPOCH: u64 = 1_700_000_000;
/// vCPUs of every benchmark VM (the floor's too). CI machines have 2 cores.
const CPUS: u32 = 2;

fn main() {
    if let Err(e) = run() {
        eprintln!("cairn-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // Quick (CI): one boot of each, no host section; the figures only show it still runs.
    let quick = args.iter().any(|a| a == "--quick");
    let boots: usize = match args.iter().position(|a| a == "--boots") {
        Some(i) => args.get(i + 1).context("--boots N")?.parse()?,
        None if quick => 1,
        None => 3,
    };
    let work = cairn_tests::images_dir().join("bench");
    std::fs::create_dir_all(&work)?;
    let cache = cairn_image::default_cache_dir();
    let opts = |binaries: cairn_image::binaries::Source| BuildOptions {
        binaries,
        cache: cache.clone(),
        formats: Some(vec![cairn_image::formats::Format::Raw, cairn_image::formats::Format::Qcow2]),
        ..cairn_tests::build_options("images/default.toml", "1.0.0", work.join("default"))
    };

    println!("== build (default image)");
    build(&opts(cairn_image::binaries::Source::default_cargo())).context("warm-up build")?;
    let warm = build(&opts(cairn_image::binaries::Source::default_cargo()))?;
    print_steps("warm cache, nothing changed", &warm);

    // A changed binary: every binary the spec takes as built, but cairn-init with one extra byte
    // appended (still a valid ELF).
    let bins = work.join("changed-bins");
    let _ = std::fs::remove_dir_all(&bins);
    std::fs::create_dir_all(&bins)?;
    let built = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cairn_tests::workspace().join("target"))
        .join(cairn_image::binaries::TARGET)
        .join("release");
    let spec = cairn_image::spec::Spec::load(&cairn_tests::workspace().join("images/default.toml"))?;
    for name in &spec.cairn.binaries {
        std::fs::copy(built.join(name), bins.join(name)).with_context(|| format!("copying {name}"))?;
    }
    let init_path = bins.join("cairn-init");
    let mut init = std::fs::read(&init_path).with_context(|| format!("reading {}", init_path.display()))?;
    init.push(0);
    std::fs::write(&init_path, &init)?;
    let changed = build(&opts(cairn_image::binaries::Source::Dir(bins)))?;
    print_steps("after changing cairn-init", &changed);
    // Leave the real image in place for the boots below.
    let report = build(&opts(cairn_image::binaries::Source::default_cargo()))?;

    println!("\n== sizes");
    let out = work.join("default");
    let raw = out.join("disk.raw");
    let allocated = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&raw)?.blocks() * 512
    };
    println!("disk.raw      {:>8.1} MB apparent, {:>6.1} MB allocated", mb(file_size(&raw)?), mb(allocated));
    println!("disk.qcow2    {:>8.1} MB (compressed; target < 150 MB)", mb(file_size(&out.join("disk.qcow2"))?));
    println!("UKI           {:>8.1} MB", mb(file_size(&out.join(&report.uki))?));
    println!(
        "/usr          {:>8.1} MB erofs + verity ({:.1} MB of files)",
        mb(file_size(&out.join("usr.img"))?),
        mb(report.usr.bytes)
    );

    println!("\n== boot ({boots} boots each, accel {})", cairn_qemu::accel::detect().qemu_name());
    let floor_disk = floor_image(&work, &cache, &report)?;
    let (mut cairn_kernel, mut cairn_qemu, mut floor_kernel, mut floor_qemu) = (vec![], vec![], vec![], vec![]);
    for i in 0..boots {
        // Alternate, so drift in machine load hits both alike.
        let (k, q) = boot_floor(&floor_disk)?;
        floor_kernel.push(k);
        floor_qemu.push(q);
        let (k, q) = boot_cairn(&raw)?;
        cairn_kernel.push(k);
        cairn_qemu.push(q);
        eprintln!(
            "  boot {}: floor {k_f} ms / {q_f} ms, cairn {k} ms / {q} ms",
            i + 1,
            k_f = floor_kernel[i],
            q_f = floor_qemu[i]
        );
    }
    let (fk, fq, ck, cq) = (median(&floor_kernel), median(&floor_qemu), median(&cairn_kernel), median(&cairn_qemu));
    println!("(default image, {} vCPU)", CPUS);
    println!("                       kernel start -> ready    QEMU start -> ready");
    println!("floor (busybox init)   {fk:>10} ms            {fq:>10} ms");
    println!("cairn                  {ck:>10} ms            {cq:>10} ms");
    println!(
        "ratio                  {:>10.2}x (target <= 1.5x)  {:>9.2}x",
        ck as f64 / fk as f64,
        cq as f64 / fq as f64
    );

    if !quick {
        host_boot(&floor_disk, boots, fk)?;
    }
    Ok(())
}

/// The running host (dev image: the default one plus a console shell to ask questions): boot
/// split on a first boot and on a normal boot, next to the floor, and PID 1's memory.
fn host_boot(floor_disk: &Path, boots: usize, floor_ms: u64) -> Result<()> {
    println!("\n== host (dev image, {CPUS} vCPU, {boots} runs; first boot grows ROOT on a 4 GiB disk)");
    let img = cairn_tests::dev_image()?;
    let mut first = Vec::new();
    let mut normal = Vec::new();
    let mut rss = Vec::new();
    let mut floors = Vec::new();
    for _ in 0..boots {
        floors.push(boot_floor(floor_disk)?.0);
        let mut cfg = VmConfig::uefi(img.raw());
        cfg.cpus = CPUS;
        cfg.disk_size = Some(4 << 30);
        let mut vm = Vm::start(&cfg)?;
        let ready = vm.wait_for_line("cairn: ready", 0, Duration::from_secs(300))?;
        first.push(split(&vm.console().text(), &ready)?);
        let mark = vm.console().mark();
        vm.send(b"reboot\n")?;
        let ready = vm.wait_for_line("cairn: ready", mark, Duration::from_secs(300))?;
        normal.push(split(&vm.console().text_from(mark), &ready)?);
        let status = vm.run_ok("grep -E '^VmRSS' /proc/1/status", Duration::from_secs(60))?;
        let kb: u64 = status.split_whitespace().nth(1).context("VmRSS")?.parse()?;
        rss.push(kb);
        vm.shutdown(Duration::from_secs(60))?;
    }
    let floor = median(&floors);
    println!("floor (busybox init, kernel start -> init): {floor} ms (earlier in this run: {floor_ms} ms)");
    println!(
        "{:<13} {:>8} {:>8} {:>10} {:>9} {:>9} {:>8} {:>7}",
        "", "kernel", "stage1", "first-boot", "services", "ready", "network", "ratio"
    );
    for (name, runs) in [("first boot", &first), ("normal boot", &normal)] {
        let m = |f: fn(&Split) -> u64| median(&runs.iter().map(f).collect::<Vec<_>>());
        let ready = m(|s| s.ready);
        println!(
            "{name:<13} {:>8} {:>8} {:>10} {:>9} {:>9} {:>8} {:>6.2}x",
            m(|s| s.kernel),
            m(|s| s.stage1),
            m(|s| s.first_boot),
            m(|s| s.services),
            ready,
            m(|s| s.network),
            ready as f64 / floor as f64
        );
    }
    println!("(ms since kernel start; ratio = ready / floor, target < 2x on a normal boot)");
    println!("PID 1 resident memory after boot: {} KB (target < 8192 KB)", median(&rss));
    Ok(())
}

#[derive(Debug)]
struct Split {
    kernel: u64,
    stage1: u64,
    first_boot: u64,
    services: u64,
    network: u64,
    ready: u64,
}

/// From `cairn: boot timing (ms): kernel->init=.. stage1=.. first_boot=.. services=.. (..) network=..`
fn split(console: &str, ready_line: &str) -> Result<Split> {
    let line = console.lines().rfind(|l| l.contains("cairn: boot timing")).context("no boot timing line")?;
    let field = |k: &str| -> u64 {
        line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{k}="))).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    let (_, _, ready) = cairn_tests::parse_ready(ready_line)?;
    Ok(Split {
        kernel: field("kernel->init"),
        stage1: field("stage1"),
        first_boot: field("first_boot"),
        services: field("services"),
        network: field("network"),
        ready,
    })
}

fn print_steps(title: &str, r: &BuildReport) {
    println!("-- {title}: {:.2} s total", r.total_ms as f64 / 1000.0);
    for s in &r.steps {
        println!("   {:<22} {:>7.2} s{}", s.name, s.ms as f64 / 1000.0, if s.cached { "  (cached)" } else { "" });
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn file_size(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p).with_context(|| format!("{}", p.display()))?.len())
}

fn median(v: &[u64]) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s[s.len() / 2]
}

/// The same kernel and command line, through the same OVMF and systemd-boot, with an
/// initramfs of busybox that prints the uptime and powers off.
fn floor_image(work: &Path, cache: &Path, report: &BuildReport) -> Result<PathBuf> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox missing; install with: sudo apt-get install -y busybox-static");
    }
    let dir = work.join("floor");
    std::fs::create_dir_all(&dir)?;
    let mut initrd = Initramfs::new(EPOCH);
    initrd.file("bin/busybox", std::fs::read(busybox)?, 0o755);
    initrd.file(
        "init",
        b"#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\nread up idle < /proc/uptime\necho \"floor: init uptime=$up\"\n/bin/busybox poweroff -f\n".to_vec(),
        0o755,
    );
    let cpio = dir.join("initrd.cpio");
    std::fs::write(&cpio, initrd.to_cpio()?)?;
    let kernel = cache
        .join("unpacked")
        .join(report.kernel.sha256.as_deref().context("the kernel came from no package")?)
        .join("boot")
        .join(format!("vmlinuz-{}", report.kernel.release));
    let spec = cairn_image::spec::Spec::load(&cairn_tests::workspace().join("images/default.toml"))?;
    let uki_path = dir.join("floor.efi");
    uki::build(
        &uki::UkiInputs {
            stub: Path::new(uki::STUB),
            kernel: &kernel,
            initrd: &cpio,
            cmdline: &spec.kernel.cmdline,
            os_release: "ID=floor\nVERSION_ID=1\n",
            uname: &report.kernel.release,
            epoch: EPOCH,
        },
        &dir.join("uki"),
        &uki_path,
    )?;
    let conf = dir.join("loader.conf");
    std::fs::write(&conf, esp::LOADER_CONF)?;
    let sd_boot = Path::new(cairn_image::tools::BUILD_FILES[0].0);
    let esp_img = dir.join("esp.img");
    esp::build(
        &esp_img,
        64 * MIB,
        1,
        EPOCH,
        &[
            esp::EspFile { path: "EFI/BOOT/BOOTX64.EFI", source: sd_boot },
            esp::EspFile { path: "loader/loader.conf", source: &conf },
            esp::EspFile { path: "EFI/Linux/floor-1.efi", source: &uki_path },
        ],
    )?;
    let mut parts = vec![PartitionSpec {
        number: 1,
        label: gpt::LABEL_ESP.into(),
        type_guid: gpt::TYPE_ESP,
        uuid: Guid([1; 16]),
        size_bytes: 64 * MIB,
        offset_bytes: 0,
        content: Some(esp_img),
    }];
    let size = disk::layout(&mut parts)?;
    let raw = dir.join("floor.raw");
    disk::write(&raw, Guid([2; 16]), size, &parts)?;
    Ok(raw)
}

fn boot_floor(raw: &Path) -> Result<(u64, u64)> {
    let mut cfg = VmConfig::uefi(raw);
    cfg.cpus = CPUS;
    let mut vm = Vm::start(&cfg)?;
    let line = vm.wait_for_line("floor: init uptime=", 0, Duration::from_secs(300))?;
    let qemu_ms = vm.uptime().as_millis() as u64;
    let secs: f64 = line.split("uptime=").nth(1).context("uptime")?.trim().parse()?;
    vm.wait_exit(Duration::from_secs(60))?;
    Ok(((secs * 1000.0) as u64, qemu_ms))
}

fn boot_cairn(raw: &Path) -> Result<(u64, u64)> {
    let mut cfg = VmConfig::uefi(raw);
    cfg.cpus = CPUS;
    let mut vm = Vm::start(&cfg)?;
    let line = vm.wait_for_line("cairn: ready", 0, Duration::from_secs(300))?;
    let qemu_ms = vm.uptime().as_millis() as u64;
    let (_, _, boot_ms) = cairn_tests::parse_ready(&line)?;
    vm.shutdown(Duration::from_secs(60))?;
    Ok((boot_ms, qemu_ms))
}
