//! Maintenance windows as a gate: while every window is closed, a staged release waits (and
//! under fleetlock asks for no slot) until one opens.

use super::{Plan, Waiting};
use cairn_release::maintenance::{Maintenance, Now};
use std::time::Duration;

/// `Some(wait)` while all windows are closed. The sleep ends at the opening, or sooner after a
/// clock change: the interval bounds it.
pub fn gate(maintenance: Option<&Maintenance>, now: u64, interval: Duration) -> Option<Plan> {
    let maintenance = maintenance?;
    let Now::Closed { opens } = maintenance.at(now as i64) else { return None };
    let wake = Duration::from_secs((opens - now as i64).max(1) as u64).min(interval);
    Some(Plan::Wait { wake, why: Waiting::Window { opens: maintenance.local(opens) } })
}
