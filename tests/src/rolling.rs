//! A fleet's rolling update under the FleetLock semaphore of a cairn-server on the test
//! machine's loopback: shared by the VM test and the rolling-update benchmark.

use crate::server::{Api, ServerProcess};
use anyhow::{Context, Result};
use cairn_qemu::Vm;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// cairn-server on the test machine's loopback, its data in `dir`, trusting the test release
/// key: the process, an admin token and its port.
pub fn rollout_server(dir: &Path) -> Result<(ServerProcess, String, u16)> {
    let public = dir.join("release.pub");
    let key = cairn_image::release::load_secret(&crate::test_signing_key()?)?;
    std::fs::write(&public, key.public().to_text())?;
    let store = vec!["--data".to_string(), dir.join("data").display().to_string()];
    let token = crate::server::create_token(&store)?;
    let mut args = store;
    args.extend(["--trust".into(), public.display().to_string()]);
    let server = crate::server::ServerProcess::spawn(&args)?;
    let port: u16 = server.url.rsplit(':').next().context("port")?.parse()?;
    Ok((server, token, port))
}

/// The most hosts that were ever between `pre-reboot` and `steady-state` at once, from the
/// server's timeline (events in the order they were committed).
pub fn most_rebooting_at_once(events: &Value) -> (usize, usize) {
    let mut holding = std::collections::HashSet::new();
    let (mut most, mut locks) = (0, 0);
    for e in events.as_array().into_iter().flatten() {
        let id = e["instance_id"].as_str().unwrap_or_default().to_string();
        match e["kind"].as_str() {
            Some("pre-reboot") => {
                locks += 1;
                holding.insert(id);
            }
            Some("steady-state" | "lock-released") => {
                holding.remove(&id);
            }
            _ => {}
        }
        most = most.max(holding.len());
    }
    (most, locks)
}

/// Gives every host `version` at once (each asked to check now) and waits until all run it
/// (on `slot`, if given) and the server saw `steady_states` slots given back in all: the
/// server's events.
pub fn roll(
    vms: &mut [&mut Vm],
    admin: &Api,
    version: &str,
    slot: Option<&str>,
    steady_states: usize,
) -> Result<Value> {
    admin.ok("PUT", "/v1/admin/channels/stable", &serde_json::json!({"version": version}))?;
    let mut marks = Vec::new();
    for vm in vms.iter_mut() {
        marks.push(vm.console().mark());
        vm.send(b"updatectl check --timeout 600\n")?;
    }
    for (vm, mark) in vms.iter_mut().zip(&marks) {
        let ready = format!("cairn: ready version={version} slot={}", slot.unwrap_or(""));
        vm.wait_for_line(&ready, *mark, Duration::from_secs(900))
            .with_context(|| format!("a host did not come up on {version}: {}", vm.console().text_from(*mark)))?;
    }
    // The last one gives its slot back once blessed.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let events = admin.ok("GET", "/v1/admin/events?group=default&limit=1000", &Value::Null)?;
        let steady = events.as_array().into_iter().flatten().filter(|e| e["kind"] == "steady-state").count();
        if steady >= steady_states {
            return Ok(events);
        }
        anyhow::ensure!(Instant::now() < deadline, "not every host gave its slot back: {events}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The events from the `n`th `pre-reboot` on.
pub fn from_lock(events: &Value, n: usize) -> Value {
    let all = events.as_array().cloned().unwrap_or_default();
    let start = all.iter().enumerate().filter(|(_, e)| e["kind"] == "pre-reboot").nth(n).map_or(all.len(), |(i, _)| i);
    Value::Array(all[start..].to_vec())
}

/// Lock hand-offs in the timeline: for each `steady-state` while another host waited, the
/// milliseconds until the next `pre-reboot` was granted.
pub fn handoffs(events: &Value) -> Vec<i64> {
    let mut out = Vec::new();
    let mut released_at: Option<i64> = None;
    for e in events.as_array().into_iter().flatten() {
        let at = e["at"].as_i64().unwrap_or_default();
        match e["kind"].as_str() {
            Some("steady-state" | "lock-released") => released_at = Some(at),
            Some("pre-reboot") => {
                if let Some(released) = released_at.take() {
                    out.push(at - released);
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_timeline() {
        let e = |at: i64, id: &str, kind: &str| serde_json::json!({"at": at, "instance_id": id, "kind": kind});
        let events = Value::Array(vec![
            e(0, "a", "pre-reboot"),
            e(1, "b", "staged"),
            e(10, "b", "pre-reboot"),
            e(20, "a", "steady-state"),
            e(25, "c", "pre-reboot"),
            e(40, "b", "steady-state"),
            e(45, "c", "steady-state"),
        ]);
        assert_eq!(most_rebooting_at_once(&events), (2, 3));
        assert_eq!(handoffs(&events), [5]);
        assert_eq!(from_lock(&events, 1).as_array().unwrap().len(), 5);
    }
}
