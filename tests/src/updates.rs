//! Driving the update agent of a VM from its console: a feed of test releases served on the
//! test machine's loopback, the agent pointed at it, its status polled with `updatectl`.

use crate::http::FileServer;
use anyhow::{Result, bail};
use cairn_qemu::Vm;
use std::time::{Duration, Instant};

const CMD: Duration = Duration::from_secs(120);

/// Points the agent at `server` (seen from the VM at 10.0.2.2) with `strategy`, synced to disk,
/// and restarts it; returns once the restarted agent's API shows these settings.
pub fn configure_agent(vm: &mut Vm, server: &FileServer, strategy: &str) -> Result<()> {
    vm.run_ok(
        &format!(
            "mkdir -p /etc/cairn && printf 'source = \"http://10.0.2.2:{}/\"\\nstrategy = \"{strategy}\"\\n\
             bless_after = \"3s\"\\ninsecure = true\\n' > /etc/cairn/update.toml && sync && cairnctl restart cairn-agent",
            server.port
        ),
        CMD,
    )?;
    let source = format!("Source:          http://10.0.2.2:{}/", server.port);
    let strategy = format!("Strategy:        {strategy}");
    wait_for_status(vm, |s| s.contains(&source) && s.contains(&strategy), Duration::from_secs(60))
}

/// Points the agent at the rollout server on the test machine's `port` (10.0.2.2 in the VM) in
/// `group`, with the group's enrollment token, like [`configure_agent`]. Plain http inside
/// QEMU's user network: `insecure`.
pub fn configure_agent_for_server(vm: &mut Vm, port: u16, group: &str, strategy: &str, enroll: &str) -> Result<()> {
    vm.run_ok(
        &format!(
            "mkdir -p /etc/cairn && printf 'server = \"http://10.0.2.2:{port}\"\ngroup = \"{group}\"\n\
             strategy = \"{strategy}\"\nbless_after = \"3s\"\ninsecure = true\nenrollment_token = \"{enroll}\"\n' \
             > /etc/cairn/update.toml && chmod 600 /etc/cairn/update.toml && sync && cairnctl restart cairn-agent"
        ),
        CMD,
    )?;
    let source = format!("Source:          http://10.0.2.2:{port} (group {group})");
    wait_for_status(vm, |s| s.contains(&source), Duration::from_secs(60))
}

/// Points the agent at the rollout server on the test machine's `port` with strategy
/// `fleetlock` against the same server (which knows the host by its credential), asking for a
/// slot every `lock_retry`.
pub fn configure_agent_for_fleetlock(vm: &mut Vm, port: u16, lock_retry: &str, enroll: &str) -> Result<()> {
    vm.run_ok(
        &format!(
            "mkdir -p /etc/cairn && printf 'server = \"http://10.0.2.2:{port}\"\nstrategy = \"fleetlock\"\n\
             lock_retry = \"{lock_retry}\"\nbless_after = \"3s\"\ninsecure = true\nenrollment_token = \"{enroll}\"\n' \
             > /etc/cairn/update.toml && chmod 600 /etc/cairn/update.toml && sync && cairnctl restart cairn-agent"
        ),
        CMD,
    )?;
    wait_for_status(vm, |s| s.contains("Strategy:        fleetlock"), Duration::from_secs(60))
}

/// Polls `updatectl status` until `done` holds for its output.
pub fn wait_for_status(vm: &mut Vm, done: impl Fn(&str) -> bool, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        let out = vm.run("updatectl status", CMD)?;
        if out.status == 0 && done(&out.output) {
            return Ok(());
        }
        last = out.output;
    }
    bail!("updatectl status never got there; last:\n{last}\nagent log:\n{}", agent_log(vm))
}

/// The end of the agent's log, for failure messages.
pub fn agent_log(vm: &mut Vm) -> String {
    vm.run("tail -n 40 /var/log/cairn/cairn-agent.log", CMD).map(|o| o.output).unwrap_or_default()
}
