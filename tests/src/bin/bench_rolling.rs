//! `cairn-bench-rolling`: a three-host rolling update under the FleetLock semaphore (slots=1)
//! of a cairn-server on loopback, next to three times a single-host update measured in the
//! same run, and the lock hand-off delay (a host's steady-state to the next host's
//! pre-reboot grant).
//!
//! - single: one host (the only VM running) on 1 is given 2; from `updatectl check` to its
//!   steady-state (download, write, reboot, assessment, blessing, slot given back);
//! - rolling: that host (on 2) and two more on 1 are given 4 at once; from the checks to the
//!   last steady-state.
//!
//! Usage: cargo run --release -p cairn-tests --bin cairn-bench-rolling [-- --lock-retry 2s] [--quick]
//! (`--quick`, for CI: the single-host update only.)

use anyhow::{Context, Result};
use cairn_qemu::{Vm, VmConfig};
use cairn_tests::rolling::{from_lock, handoffs, most_rebooting_at_once, roll, rollout_server};
use cairn_tests::server::Api;
use cairn_tests::tuf_image;
use cairn_tests::updates::configure_agent_for_fleetlock;
use std::time::{Duration, Instant};

const READY: Duration = Duration::from_secs(300);

fn main() {
    if let Err(e) = run() {
        eprintln!("cairn-bench-rolling: error: {e:#}");
        std::process::exit(1);
    }
}

fn boot(img: &cairn_tests::Image, port: u16, lock_retry: &str, enroll: &str) -> Result<Vm> {
    let mut vm = Vm::start(&VmConfig::uefi(img.raw()))?;
    vm.wait_for_line("cairn: ready version=1 slot=a", 0, READY)?;
    configure_agent_for_fleetlock(&mut vm, port, lock_retry, enroll)?;
    Ok(vm)
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let lock_retry = match args.iter().position(|a| a == "--lock-retry") {
        Some(i) => args.get(i + 1).context("--lock-retry DURATION")?.clone(),
        None => "2s".to_string(),
    };
    let retry = cairn_release::duration::parse(&lock_retry).map_err(|e| anyhow::anyhow!("--lock-retry: {e}"))?;
    // The same images as the VM tests (shared build directory).
    let v1 = tuf_image("update-1", "images/dev.toml", "1")?;
    let v2 = tuf_image("update-2", "images/dev.toml", "2")?;
    let v4 = tuf_image("update-4", "images/dev.toml", "4")?;
    let tmp = tempfile::tempdir()?;
    let (server, token, port) = rollout_server(tmp.path(), &[&v2, &v4])?;
    let admin = Api::new(&server.url, Some(&token));
    let enroll = Api::agent(&server.url, &token).enrollment_token("default")?.context("the default group")?;

    println!("== rolling update (FleetLock slots=1, lock_retry={lock_retry}, 2 vCPU TCG VMs)");
    let mut a = boot(&v1, port, &lock_retry, &enroll)?;
    let started = Instant::now();
    roll(&mut [&mut a], &admin, "2", Some("b"), 1)?;
    let single = started.elapsed().as_secs_f64();
    println!("single-host update (check to steady-state):   {single:6.1} s");
    if args.iter().any(|a| a == "--quick") {
        return Ok(());
    }

    let mut b = boot(&v1, port, &lock_retry, &enroll)?;
    let mut c = boot(&v1, port, &lock_retry, &enroll)?;
    let started = Instant::now();
    let rolled = roll(&mut [&mut a, &mut b, &mut c], &admin, "4", None, 4)?;
    let rolling = started.elapsed().as_secs_f64();
    let down = cairn_tests::rolling::most_overlapping(&rolled.windows);
    anyhow::ensure!(down == 1, "{down} hosts were down for a reboot at once");
    let events = from_lock(&rolled.events, 1);
    let (most, locks) = most_rebooting_at_once(&events);
    anyhow::ensure!(locks == 3 && most == 1, "expected 3 slots taken one at a time, got {locks} (at most {most})");
    println!(
        "three hosts, one at a time:                   {rolling:6.1} s = {:.2}x three single-host updates \
         ({:.1} s; target <= 1.2x)",
        rolling / (3.0 * single),
        3.0 * single
    );
    let delays = handoffs(&events);
    let shown: Vec<String> = delays.iter().map(|ms| format!("{:.2} s", *ms as f64 / 1000.0)).collect();
    let worst = delays.iter().copied().max().unwrap_or_default() as f64 / 1000.0;
    println!(
        "lock hand-offs (steady-state to next grant): {} ; worst {worst:.2} s (target < 2 s + lock_retry = {:.0} s)",
        shown.join(", "),
        2.0 + retry.as_secs_f64()
    );
    Ok(())
}
