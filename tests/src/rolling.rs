//! A fleet's rolling update under the FleetLock semaphore of a cairn-server on the test
//! machine's loopback: shared by the VM test and the rolling-update benchmark.

use crate::server::{Api, ServerProcess};
use anyhow::{Context, Result};
use cairn_qemu::Vm;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// cairn-server on the test machine's loopback, its data in `dir`, serving a copy of the test
/// TUF repository with `images`' releases published: the process, an admin token and its port.
pub fn rollout_server(dir: &Path, images: &[&crate::Image]) -> Result<(ServerProcess, String, u16)> {
    let repo = crate::TufCopy::new(&dir.join("tuf"))?;
    for img in images {
        repo.publish_image(img)?;
    }
    let store = vec!["--data".to_string(), dir.join("data").display().to_string()];
    let token = crate::server::create_token(&store)?;
    let server = crate::server::ServerProcess::spawn(&[store, repo.serve_args()].concat())?;
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

/// When a host was down for a reboot, as its own console shows it: from cairn-init's
/// "stopping services" to the next "cairn: ready".
pub type Window = (Instant, Instant);

/// The reboot windows on `vm`'s console after byte `from`.
pub fn reboot_windows(vm: &Vm, from: usize) -> Vec<Window> {
    let stops = vm.console().timed_lines("cairn: stopping services", from);
    let readies = vm.console().timed_lines("cairn: ready", from);
    stops.iter().filter_map(|(down, _)| readies.iter().find(|(up, _)| up > down).map(|(up, _)| (*down, *up))).collect()
}

/// The most windows open at one instant.
pub fn most_overlapping(windows: &[Window]) -> usize {
    let mut edges: Vec<(Instant, i32)> = windows.iter().flat_map(|(a, b)| [(*a, 1), (*b, -1)]).collect();
    // At the same instant a host coming up counts before one going down.
    edges.sort_by_key(|(t, d)| (*t, *d));
    let (mut open, mut most) = (0, 0);
    for (_, d) in edges {
        open += d;
        most = most.max(open);
    }
    most as usize
}

/// What a rolling update showed: the server's events and every host's reboot windows.
pub struct Rolled {
    pub events: Value,
    pub windows: Vec<Window>,
}

/// Gives every host `version` at once (each asked to check now) and waits until all run it
/// (on `slot`, if given) and the server saw `steady_states` slots given back in all.
pub fn roll(
    vms: &mut [&mut Vm],
    admin: &Api,
    version: &str,
    slot: Option<&str>,
    steady_states: usize,
) -> Result<Rolled> {
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
            let windows = vms.iter().zip(&marks).flat_map(|(vm, mark)| reboot_windows(vm, *mark)).collect();
            return Ok(Rolled { events, windows });
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
    #[test]
    fn overlapping_windows_are_counted_at_their_peak() {
        use super::most_overlapping;
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + std::time::Duration::from_secs(s);
        assert_eq!(most_overlapping(&[]), 0);
        assert_eq!(most_overlapping(&[(at(0), at(10)), (at(10), at(20)), (at(20), at(30))]), 1, "back to back");
        assert_eq!(most_overlapping(&[(at(0), at(10)), (at(5), at(15)), (at(12), at(20))]), 2);
        assert_eq!(most_overlapping(&[(at(0), at(30)), (at(5), at(15)), (at(10), at(20))]), 3);
    }

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
