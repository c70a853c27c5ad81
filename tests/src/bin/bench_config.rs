//! `cairn-bench-config`: validating and applying a 1,000-line #cloud-config (users, keys,
//! files, services, update settings) into a scratch root, timed over several runs: the first
//! apply (everything written) and a repeat (nothing changes, as at every later boot).
//!
//! Then the boot step per datasource (`cairn_config::boot`: find, then apply a small config):
//! fw_cfg, a `config-2` FAT drive, a NoCloud ISO 9660 volume, and EC2 (IMDSv2), GCE and
//! OpenStack metadata services on loopback; then what a missing or silent metadata service
//! costs against its deadline. With `--vm`, also the figures a booting VM prints for fw_cfg and
//! a config drive.
//!
//! Usage: cargo run --release -p cairn-tests --bin cairn-bench-config [-- --runs N] [--vm]

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use cairn_config::apply::{Host, apply};
use cairn_config::boot::{Machine, configure, find};
use cairn_config::platform::Dmi;
use cairn_config::{Parsed, local, parse};
use cairn_release::config_status::Outcome;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn document() -> String {
    let mut doc = String::from("#cloud-config\nhostname: bench-1\nmanage_etc_hosts: localhost\n");
    doc.push_str("ssh_authorized_keys:\n  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH9Lk3ryv0PmxVxZHd0ch4u0 core@bench\n");
    doc.push_str("users:\n");
    for i in 0..20 {
        doc.push_str(&format!(
            "  - name: user{i}\n    groups: [wheel, docker]\n    ssh_authorized_keys:\n      - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH9{i:04} u{i}@bench\n"
        ));
    }
    doc.push_str("write_files:\n");
    for i in 0..175 {
        doc.push_str(&format!(
            "  - path: /etc/bench/file{i}.conf\n    permissions: \"0640\"\n    owner: user{}:wheel\n    content: |\n      key{i}=value{i}\n",
            i % 20
        ));
    }
    doc.push_str("cairn:\n  update: {strategy: off, interval: 1h}\n  services:\n");
    for i in 0..20 {
        doc.push_str(&format!(
            "    - name: svc{i}\n      command: [/bin/busybox, sleep, \"3600\"]\n      restart: always\n"
        ));
    }
    doc
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = match args.iter().position(|a| a == "--runs") {
        Some(i) => args.get(i + 1).context("--runs N")?.parse()?,
        None => 20,
    };
    let doc = document();
    let lines = doc.lines().count();
    let (mut parse_t, mut first_t, mut again_t) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (_root, host) = scratch_root()?;
        let started = Instant::now();
        let Parsed::Config(config, _) = parse(doc.as_bytes()) else { bail!("the benchmark's document is refused") };
        parse_t.push(started.elapsed());
        let started = Instant::now();
        let changed = apply(&config, &host)?;
        first_t.push(started.elapsed());
        let started = Instant::now();
        let again = apply(&config, &host)?;
        again_t.push(started.elapsed());
        anyhow::ensure!(changed.len() > 175 && again.is_empty(), "{} changes, then {}", changed.len(), again.len());
    }
    println!("== cloud-config: {lines} lines (20 users, 175 files, 20 services), median of {runs} runs");
    let (p, f, a) = (median_ms(&mut parse_t), median_ms(&mut first_t), median_ms(&mut again_t));
    println!("validate (parse + check):             {p:7.2} ms");
    println!("apply, first boot (writes, fsyncs):   {f:7.2} ms   validate + apply {:.2} ms (target < 50 ms)", p + f);
    println!("apply again (nothing changes):        {a:7.2} ms   validate + apply {:.2} ms", p + a);
    datasources(runs)?;
    if args.iter().any(|a| a == "--vm") {
        at_boot()?;
    }
    Ok(())
}

const SMALL: &str = "#cloud-config\nhostname: bench\nssh_authorized_keys:\n  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH9Lk3ryv0PmxVxZHd0ch4u0 core@bench\nwrite_files:\n  - {path: /etc/bench.conf, content: x}\n";

/// Serves `app` on 127.0.0.1 from a thread of its own; returns the base URL.
fn serve(app: Router) -> Result<String> {
    Ok(format!("http://127.0.0.1:{}", cairn_tests::http::serve_router(app)?))
}

fn header_is(h: &HeaderMap, name: &str, value: &str) -> bool {
    h.get(name).and_then(|v| v.to_str().ok()) == Some(value)
}

/// A scratch machine: no fw_cfg, no block devices, metadata at `base`.
fn machine(dir: &Path, cmdline: &str, base: &str) -> Machine {
    Machine {
        cmdline: cmdline.to_string(),
        dmi: Dmi::default(),
        fw_cfg_dir: dir.join("fw_cfg"),
        sys_block: dir.join("sys"),
        dev: dir.join("dev"),
        metadata_base: base.to_string(),
        azure_media_mount: dir.join("azure-media"),
    }
}

/// A block device `name` (as /sys/class/block and /dev list it) holding `image`.
fn attach(dir: &Path, name: &str, image: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("sys").join(name))?;
    std::fs::create_dir_all(dir.join("dev"))?;
    std::fs::copy(image, dir.join("dev").join(name))?;
    Ok(())
}

/// A root with only `root` in its account files, for `apply` to write into.
fn scratch_root() -> Result<(tempfile::TempDir, Host)> {
    let root = tempfile::tempdir()?;
    std::fs::create_dir_all(root.path().join("etc"))?;
    std::fs::write(root.path().join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(root.path().join("etc/group"), "root:x:0:\n")?;
    let host = Host { root: root.path().to_path_buf(), chown: nix::unistd::geteuid().is_root() };
    Ok((root, host))
}

/// The boot step per datasource, in process: find (median) and apply (median, first boot).
fn datasources(runs: usize) -> Result<()> {
    let work = tempfile::tempdir()?;
    let user_data = work.path().join("user-data");
    std::fs::write(&user_data, SMALL)?;

    let fw_cfg = work.path().join("fw_cfg");
    let entry = fw_cfg.join("fw_cfg").join(local::FW_CFG_NAME);
    std::fs::create_dir_all(&entry)?;
    std::fs::write(entry.join("raw"), SMALL)?;

    let drive = work.path().join("config-2");
    let fat = work.path().join("config-2.img");
    cairn_image::configdrive::build(&user_data, &fat)?;
    // The host's own disk and its partitions are looked at first, as on a host.
    let esp = work.path().join("esp.img");
    std::fs::File::create(&esp)?.set_len(64 << 20)?;
    attach(&drive, "vda", &esp)?;
    attach(&drive, "vda1", &esp)?;
    attach(&drive, "vdb", &fat)?;

    let nocloud = work.path().join("nocloud");
    let seed = work.path().join("seed");
    std::fs::create_dir_all(&seed)?;
    std::fs::write(seed.join("user-data"), SMALL)?;
    std::fs::write(seed.join("meta-data"), "instance-id: bench\n")?;
    let iso = work.path().join("cidata.iso");
    let out = std::process::Command::new("genisoimage")
        .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-o"])
        .arg(&iso)
        .arg(&seed)
        .output()
        .context("genisoimage (./scripts/setup.sh installs it)")?;
    anyhow::ensure!(out.status.success(), "genisoimage: {}", String::from_utf8_lossy(&out.stderr));
    attach(&nocloud, "vda", &esp)?;
    attach(&nocloud, "vdb", &iso)?;

    let ec2 = serve(
        Router::new()
            .route(
                "/latest/api/token",
                put(|h: HeaderMap| async move {
                    if h.contains_key("x-aws-ec2-metadata-token-ttl-seconds") {
                        (StatusCode::OK, "token")
                    } else {
                        (StatusCode::BAD_REQUEST, "")
                    }
                }),
            )
            .route(
                "/latest/user-data",
                get(|h: HeaderMap| async move {
                    if header_is(&h, "x-aws-ec2-metadata-token", "token") {
                        (StatusCode::OK, SMALL)
                    } else {
                        (StatusCode::UNAUTHORIZED, "")
                    }
                }),
            ),
    )?;
    let gce = serve(Router::new().route(
        "/computeMetadata/v1/instance/attributes/user-data",
        get(|h: HeaderMap| async move {
            if header_is(&h, "metadata-flavor", "Google") {
                (StatusCode::OK, SMALL)
            } else {
                (StatusCode::FORBIDDEN, "")
            }
        }),
    ))?;
    let openstack = serve(Router::new().route("/openstack/latest/user_data", get(|| async { SMALL })))?;
    // Accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let silent_url = format!("http://{}", silent.local_addr()?);
    let refused = format!("http://127.0.0.1:{}", cairn_tests::server::free_port()?);

    let deadline = Duration::from_secs(2);
    let cases: Vec<(&str, Machine)> = vec![
        ("fw_cfg", machine(&fw_cfg, "cairn.platform=qemu", "")),
        ("config-2 (FAT, 3 disks scanned)", machine(&drive, "cairn.platform=qemu", "")),
        ("cidata (ISO 9660, 2 disks)", machine(&nocloud, "cairn.platform=qemu", "")),
        ("ec2 (IMDSv2, loopback)", machine(work.path(), "cairn.platform=ec2", &ec2)),
        ("gce (loopback)", machine(work.path(), "cairn.platform=gce", &gce)),
        ("openstack metadata (loopback)", machine(work.path(), "cairn.platform=openstack", &openstack)),
        ("nothing (qemu, no sources)", machine(work.path(), "cairn.platform=qemu", "")),
        ("ec2, nothing listening", machine(work.path(), "cairn.platform=ec2", &refused)),
    ];
    println!();
    println!("== boot step per datasource (find, then apply {} lines), median of {runs} runs", SMALL.lines().count());
    for (name, m) in &cases {
        let (mut find_t, mut apply_t) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let started = Instant::now();
            let (found, _) = find(m, deadline, &mut |_| Ok(()));
            find_t.push(started.elapsed());
            let expect_data = !name.starts_with("nothing") && !name.contains("nothing listening");
            anyhow::ensure!(found.is_some() == expect_data, "{name}: found {:?}", found.map(|f| f.source));
            let (_root, host) = scratch_root()?;
            let started = Instant::now();
            let report = configure(&host, found, 0);
            apply_t.push(started.elapsed());
            let want = if expect_data { Outcome::Applied } else { Outcome::None };
            anyhow::ensure!(report.status.outcome == want, "{name}: {:?}", report.lines);
        }
        let (f, a) = (median_ms(&mut find_t), median_ms(&mut apply_t));
        println!("{name:34} find {f:8.2} ms   apply {a:6.2} ms   total {:8.2} ms", f + a);
    }
    // A metadata service that never answers costs its deadline, not more (one run: it is slow).
    let m = machine(work.path(), "cairn.platform=ec2", &silent_url);
    let started = Instant::now();
    let (found, attempts) = find(&m, deadline, &mut |_| Ok(()));
    let took = started.elapsed();
    anyhow::ensure!(found.is_none(), "a silent service yielded user data");
    println!(
        "{:34} find {:8.2} ms   (deadline {} ms: {})",
        "ec2, accepts and never answers",
        took.as_secs_f64() * 1000.0,
        deadline.as_millis(),
        attempts.last().map_or("", |a| a.result.as_str())
    );
    drop(silent);
    Ok(())
}

fn median_ms(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

/// Boots the dev image with the config on fw_cfg, then on a config drive, and prints what the
/// host's boot step says it spent (`cairn: cloud-config: platform=... find_ms=N apply_ms=M`).
fn at_boot() -> Result<()> {
    let img = cairn_tests::dev_image()?;
    let work = tempfile::tempdir()?;
    let user_data = work.path().join("user-data");
    std::fs::write(&user_data, SMALL)?;
    let drive = work.path().join("config-2.img");
    cairn_image::configdrive::build(&user_data, &drive)?;
    println!();
    println!("== at boot (dev image under {})", cairn_qemu::accel::detect().qemu_name());
    let configs: Vec<(&str, cairn_qemu::VmConfig)> = vec![
        ("fw_cfg", {
            let mut c = cairn_qemu::VmConfig::uefi(img.raw());
            c.fw_cfg.push((local::FW_CFG_NAME.to_string(), PathBuf::from(&user_data)));
            c
        }),
        ("config-2", {
            let mut c = cairn_qemu::VmConfig::uefi(img.raw());
            c.extra_disks.push(drive.clone());
            c
        }),
        ("none", cairn_qemu::VmConfig::uefi(img.raw())),
    ];
    for (name, cfg) in configs {
        let mut vm = cairn_qemu::Vm::start(&cfg)?;
        let line = vm.wait_for_line("cairn: cloud-config: platform=", 0, Duration::from_secs(300))?;
        let fields = line.split("platform=").nth(1).unwrap_or("").trim();
        println!("{name:10} {fields}");
        let _ = vm.quit();
    }
    Ok(())
}
