//! `cairn-bench-config`: validating and applying a 1,000-line #cloud-config (users, keys,
//! files, services, update settings) into a scratch root, timed over several runs: the first
//! apply (everything written) and a repeat (nothing changes, as at every later boot).
//! The boot-time figures per datasource come with the boot integration.
//!
//! Usage: cargo run --release -p cairn-tests --bin cairn-bench-config [-- --runs N]

use anyhow::{Context, Result, bail};
use cairn_config::apply::{Host, apply};
use cairn_config::{Parsed, parse};
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
        let root = tempfile::tempdir()?;
        std::fs::create_dir_all(root.path().join("etc"))?;
        std::fs::write(root.path().join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
        std::fs::write(root.path().join("etc/group"), "root:x:0:\n")?;
        let host = Host { root: root.path().to_path_buf(), chown: nix::unistd::geteuid().is_root() };
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
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1000.0
    };
    println!("== cloud-config: {lines} lines (20 users, 175 files, 20 services), median of {runs} runs");
    let (p, f, a) = (median(&mut parse_t), median(&mut first_t), median(&mut again_t));
    println!("validate (parse + check):             {p:7.2} ms");
    println!("apply, first boot (writes, fsyncs):   {f:7.2} ms   validate + apply {:.2} ms (target < 50 ms)", p + f);
    println!("apply again (nothing changes):        {a:7.2} ms   validate + apply {:.2} ms", p + a);
    Ok(())
}
