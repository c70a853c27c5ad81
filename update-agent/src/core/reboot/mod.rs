//! Whether a staged release reboots now: the maintenance windows are a gate in front (unless an
//! operator asked), then the strategy decides. Pure: the time and the lock's timer come in.

pub mod fleetlock;
pub mod immediate;
pub mod off;
pub mod window;

use cairn_release::maintenance::Maintenance;
use cairn_release::update_config::Strategy;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    Reboot,
    /// Strategy fleetlock: ask the lock server for a slot, reboot once it grants one.
    AskForSlot,
    Wait {
        wake: Duration,
        why: Waiting,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// Every maintenance window is closed; the next opens then (local time, for people).
    Window { opens: String },
    /// The lock server said no; it is asked again when the retry is due.
    Slot,
    /// Strategy off: an operator reboots (`updatectl reboot`).
    Operator,
    /// Strategy fleetlock, but no lock server is configured.
    NoLockServer,
}

pub struct Context<'a> {
    pub strategy: Strategy,
    pub maintenance: Option<&'a Maintenance>,
    /// `updatectl apply` or `reboot`: neither windows nor the strategy hold it back.
    pub asked: bool,
    pub now: u64,
    pub interval: Duration,
    pub lock: &'a fleetlock::SlotTimer,
    pub has_lock_server: bool,
}

pub fn plan(cx: &Context) -> Plan {
    if cx.asked {
        return Plan::Reboot;
    }
    if cx.strategy != Strategy::Off
        && let Some(wait) = window::gate(cx.maintenance, cx.now, cx.interval)
    {
        return wait;
    }
    match cx.strategy {
        Strategy::Immediate => immediate::plan(),
        Strategy::Off => off::plan(cx.interval),
        Strategy::FleetLock => fleetlock::plan(cx.lock, cx.has_lock_server, cx.now, cx.interval),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx(strategy: Strategy, asked: bool, lock: &fleetlock::SlotTimer) -> Context<'_> {
        Context {
            strategy,
            maintenance: None,
            asked,
            now: 100,
            interval: Duration::from_secs(600),
            lock,
            has_lock_server: true,
        }
    }

    #[test]
    fn each_strategy_decides_and_an_operator_overrides_them_all() {
        let free = fleetlock::SlotTimer::default();
        assert_eq!(plan(&cx(Strategy::Immediate, false, &free)), Plan::Reboot);
        assert_eq!(plan(&cx(Strategy::FleetLock, false, &free)), Plan::AskForSlot);
        let off = plan(&cx(Strategy::Off, false, &free));
        assert_eq!(off, Plan::Wait { wake: Duration::from_secs(600), why: Waiting::Operator });
        let refused = fleetlock::SlotTimer::refused_at(90, Duration::from_secs(30));
        assert_eq!(
            plan(&cx(Strategy::FleetLock, false, &refused)),
            Plan::Wait { wake: Duration::from_secs(20), why: Waiting::Slot }
        );
        for s in [Strategy::Immediate, Strategy::Off, Strategy::FleetLock] {
            assert_eq!(plan(&cx(s, true, &refused)), Plan::Reboot, "{s:?}");
        }
    }
}
