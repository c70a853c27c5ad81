//! Boots the dev image (2 vCPUs) with one container, `web`, pulled from a registry on loopback
//! and published on port 8080; prints how long it took from `ready` to answering, reboots and
//! prints it again (image cached), then runs the commands given as arguments on the console (a
//! debugging aid for the start path's time: `cairn-cloud-config`'s runner, containerd, CNI).
use anyhow::{Context, Result};
use cairn_qemu::{Forward, Vm, VmConfig};
use std::time::{Duration, Instant};

const READY: Duration = Duration::from_secs(300);
/// Every process's /proc stat line and the CPUs' counters, into /tmp/p{n} and /tmp/s{n}.
const SNAPSHOT: &str = "head -1 /proc/stat > /tmp/s{n}; cat /proc/[0-9]*/stat > /tmp/p{n} 2>/dev/null; true";
/// Ticks (1/100 s) each process and its reaped children used between the snapshots, busiest
/// first, and the CPUs' busy and idle ticks.
const CPU_USE: &str = "awk 'FNR==NR {a[$1\" \"$2]=$14+$15+$16+$17; next} {k=$1\" \"$2; d=$14+$15+$16+$17-a[k]; if (d>0) print d, k}' /tmp/p0 /tmp/p1 | sort -rn | head -12; \
     paste /tmp/s0 /tmp/s1 | awk '{print \"busy\", ($13+$14+$15+$18+$19)-($2+$3+$4+$7+$8), \"idle\", ($16+$17)-($5+$6)}'";

/// The image's containerd service, logging at debug level: a cloud-config `write_files` entry
/// that puts it in /etc, where it replaces the image's.
fn containerd_debug() -> Result<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../images/overlay/container-host/usr/lib/cairn/services/containerd.toml");
    let service = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut found = false;
    let lines: Vec<String> = service
        .lines()
        .map(|l| match l.strip_prefix("command = [").and_then(|rest| rest.strip_suffix(']')) {
            Some(args) => {
                found = true;
                format!("command = [{args}, \"--log-level\", \"debug\"]")
            }
            None => l.to_string(),
        })
        .collect();
    anyhow::ensure!(found, "{}: no one-line `command = [...]` to add --log-level to", path.display());
    let content: String = lines.iter().map(|l| format!("      {l}\n")).collect();
    Ok(format!("write_files:\n  - path: /etc/cairn/services/containerd.toml\n    content: |\n{content}"))
}

fn main() -> Result<()> {
    let img = cairn_tests::dev_image()?;
    let work = tempfile::tempdir()?;
    let registry = cairn_tests::registry::Registry::start(None)?;
    let archive = cairn_tests::oci_archive(work.path(), "cairn.test/web:1")?;
    registry.push(&archive, "web", "1")?;
    let user_data = format!(
        "#cloud-config\ncairn:\n  registries:\n    \"10.0.2.2:{p}\": {{insecure: true}}\n  containers:\n    \
         - name: web\n      image: 10.0.2.2:{p}/web:1\n      ports: [\"8080:80\"]\n      command: [/bin/busybox, sh, -c, \
         \"mkdir -p /www && echo hi > /www/index.html && exec /bin/busybox httpd -f -p 80 -h /www\"]\n",
        p = registry.port
    );
    // DEBUG=1: containerd logs at debug level (its service file replaced from /etc), for a
    // timeline of the task's creation in `cairnctl log containerd`.
    let user_data = if std::env::var_os("DEBUG").is_some() {
        user_data.replacen("#cloud-config\n", &format!("#cloud-config\n{}", containerd_debug()?), 1)
    } else {
        user_data
    };
    let config = work.path().join("user-data");
    std::fs::write(&config, user_data)?;
    let disk = cairn_tests::disk_over(&img.raw(), work.path(), None)?;
    let port = cairn_tests::free_port()?;
    let mut cfg = VmConfig { persistent: true, cpus: 2, ..VmConfig::uefi(&disk) };
    cfg.forwards.push(Forward::tcp(port, 8080));
    cfg.fw_cfg.push((cairn_config::local::FW_CFG_NAME.to_string(), config));
    // PROFILE=1: the CPU time each process (with its reaped children) used from ready to
    // answering, and how busy the vCPUs were.
    let profile = std::env::var_os("PROFILE").is_some();
    let boots: usize = std::env::var("BOOTS").ok().and_then(|b| b.parse().ok()).unwrap_or(2);
    let mut vm = Vm::start(&cfg)?;
    for boot in 0..boots {
        if boot > 0 {
            let mark = vm.console().mark();
            vm.send(b"poweroff\n")?;
            vm.wait_for_line("cairn: powering off", mark, READY)?;
            vm.wait_exit(Duration::from_secs(60))?;
            drop(vm);
            vm = Vm::start(&cfg)?;
        }
        let line = vm.wait_for_line("cairn: ready", 0, READY)?;
        let ready = Instant::now();
        if profile {
            vm.run(SNAPSHOT.replace("{n}", "0").as_str(), READY)?;
        }
        cairn_tests::http::get_until(port, READY).context("web never answered")?;
        println!("boot {boot}: from ready to answering: {:.2} s", ready.elapsed().as_secs_f64());
        if profile {
            vm.run(SNAPSHOT.replace("{n}", "1").as_str(), READY)?;
            println!("{}", vm.run(CPU_USE, READY)?.output);
        }
        // Init's clock (ms since boot) for ready and the runner's start, and the runner's steps.
        println!("{}", line.trim());
        let said = vm.run(
            "grep -E 'started /usr/sbin/cairn-cloud-config container web|container web: running' \
             /var/log/cairn/container-web.log | tail -2",
            READY,
        )?;
        println!("{}", said.output.trim());
    }
    for cmd in std::env::args().skip(1) {
        let out = vm.run(&cmd, Duration::from_secs(300))?;
        println!("$ {cmd}  [exit {}]\n{}", out.status, out.output);
    }
    Ok(())
}
