//! When things happen: the first check after start, the spread of a fleet's checks, the
//! backoff after failures, how often an assessed host is looked at.

use std::time::Duration;

/// The first timed check comes this long after the agent starts (or `interval`, if shorter),
/// like Flatcar's update_engine: a host that just booted settles first, and a fleet rebooting
/// together does not hit the server at once. `updatectl check` does not wait.
pub const FIRST_CHECK_DELAY: u64 = 7 * 60;

/// How often a host being assessed is looked at.
pub const ASSESS_POLL: Duration = Duration::from_secs(1);

/// How long to wait while cairn-init carries out a reboot it was asked for.
pub const REBOOT_WAIT: Duration = Duration::from_secs(30);

/// Retry delay after `attempts` consecutive errors: 30 s doubling to 1 h.
pub fn backoff_secs(attempts: u32) -> u64 {
    (30u64 << attempts.min(7)).min(3600)
}

/// When to check next: `interval` plus up to 10% jitter, derived from `seed` (the machine-id)
/// and `now`, so a fleet does not check in lock-step.
pub fn next_check(now: u64, interval: u64, seed: &[u8]) -> u64 {
    use sha2::{Digest, Sha256};
    let h = Sha256::new().chain_update(seed).chain_update(now.to_le_bytes()).finalize();
    let r = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
    let jitter = interval / 10;
    now + interval + if jitter == 0 { 0 } else { r % (jitter + 1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!((backoff_secs(0), backoff_secs(1), backoff_secs(2)), (30, 60, 120));
        assert_eq!(backoff_secs(20), 3600);
    }

    /// The jitter stays within 10% and really spreads: a fleet of 1,000 machines checking at
    /// the same moment lands on many distinct times covering most of the window.
    #[test]
    fn jitter_spreads_a_fleet_within_ten_percent() {
        let times: Vec<u64> = (0..1000u32).map(|m| next_check(5000, 600, &m.to_le_bytes())).collect();
        assert!(times.iter().all(|t| (5600..=5660).contains(t)), "outside [interval, interval + 10%]");
        let distinct: std::collections::BTreeSet<_> = times.iter().collect();
        assert!(distinct.len() >= 55, "only {} distinct times of 61 possible", distinct.len());
        let (lo, hi) = (**distinct.first().unwrap(), **distinct.last().unwrap());
        assert!(lo <= 5605 && hi >= 5655, "the spread covers the window: {lo}..{hi}");
        // The same machine at another time gets another offset: no host is always last.
        let one: std::collections::BTreeSet<_> = (0..100).map(|t| next_check(t, 600, b"m") - t).collect();
        assert!(one.len() > 20, "{one:?}");
    }
}
