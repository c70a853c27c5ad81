//! Strategy `fleetlock`: a staged release reboots once the lock server grants a slot; the slot
//! goes back once the host is steady (blessed, rolled back, or idle at start). A refusal or an
//! unreachable server is asked again every `lock_retry`.

use super::{Plan, Waiting};
use std::time::Duration;

/// When the lock server may be asked next (after it said no or could not be reached).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotTimer {
    next_attempt: u64,
}

impl SlotTimer {
    pub fn refused_at(now: u64, retry: Duration) -> SlotTimer {
        SlotTimer { next_attempt: now + retry.as_secs() }
    }

    fn wait(&self, now: u64) -> Option<Duration> {
        (now < self.next_attempt).then(|| Duration::from_secs(self.next_attempt - now))
    }
}

pub fn plan(timer: &SlotTimer, has_lock_server: bool, now: u64, interval: Duration) -> Plan {
    if !has_lock_server {
        return Plan::Wait { wake: interval, why: Waiting::NoLockServer };
    }
    match timer.wait(now) {
        Some(wake) => Plan::Wait { wake, why: Waiting::Slot },
        None => Plan::AskForSlot,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GiveBack {
    /// No slot is held.
    Nothing,
    Now,
    /// The last attempt failed; the next is due then.
    Later(Duration),
}

/// Whether a slot the host may hold is to be given back now.
pub fn give_back(held: bool, timer: &SlotTimer, now: u64) -> GiveBack {
    match (held, timer.wait(now)) {
        (false, _) => GiveBack::Nothing,
        (true, None) => GiveBack::Now,
        (true, Some(wait)) => GiveBack::Later(wait),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_asked_again_after_the_retry_and_a_held_slot_goes_back() {
        let retry = Duration::from_secs(30);
        let t = SlotTimer::refused_at(100, retry);
        assert_eq!(plan(&t, true, 110, retry), Plan::Wait { wake: Duration::from_secs(20), why: Waiting::Slot });
        assert_eq!(plan(&t, true, 130, retry), Plan::AskForSlot);
        assert_eq!(give_back(true, &t, 110), GiveBack::Later(Duration::from_secs(20)));
        assert_eq!(give_back(true, &t, 130), GiveBack::Now);
        assert_eq!(give_back(false, &t, 130), GiveBack::Nothing);
        assert!(matches!(plan(&t, false, 130, retry), Plan::Wait { why: Waiting::NoLockServer, .. }));
    }
}
