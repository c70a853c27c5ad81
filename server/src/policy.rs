//! Rollout policy: whether a host that checks in gets the group's target release now. Pure
//! decisions over counts the store computes (grants in the current period, outstanding grants,
//! successes and failures of this rollout) and the time, which is passed in: the same code
//! answers for SQLite, PostgreSQL and the tests.
//!
//! The model is Nebraska's: at most `max_per_period` new grants per `period`; safe mode (one
//! host until the first success); halt after `halt_after` failures or rollbacks; an optional
//! percentage of the group; a pinned version. A grant not reported back within `grant_timeout`
//! counts as a failure.

use sha2::{Digest, Sha256};
use std::cmp::Ordering;

pub use cairn_release::admin::GroupPolicy;

/// The rollout of one version in one group, as the store counts it at `now`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RolloutCounts {
    /// Grants made in the current period (`now - period_s` to `now`).
    pub granted_in_period: u32,
    /// Granted, not reported back yet, not timed out.
    pub outstanding: u32,
    pub succeeded: u32,
    /// Reported failures and rollbacks, plus grants that timed out.
    pub failed: u32,
}

/// One host at its check-in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostView<'a> {
    pub instance_id: &'a str,
    pub version: &'a str,
    /// The version this host was granted and has not reported on yet, if any.
    pub outstanding_grant: Option<&'a str>,
    pub rolled_back: &'a [String],
    /// The agent's state as the host reported it (`idle`, `assessing`, ...).
    pub state: &'a str,
}

/// States in which a host is busy with a release already (staged, rebooting into it, or
/// assessing it): it reports them without asking for another, so none is granted.
pub fn busy(state: &str) -> bool {
    matches!(state, "downloading" | "verifying" | "staged" | "waiting-to-reboot" | "rebooting" | "assessing")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Offer `version`; `new_grant` says whether it counts against the rate (a repeated offer
    /// to a host that already holds a grant does not).
    Offer {
        version: String,
        new_grant: bool,
    },
    NoUpdate(String),
}

/// The version a group installs: pinned, or its channel's.
pub fn target_version<'a>(policy: &'a GroupPolicy, channel_version: Option<&'a str>) -> Option<&'a str> {
    policy.pinned_version.as_deref().or(channel_version)
}

/// Whether the rollout has failed often enough to stop by itself.
pub fn should_halt(policy: &GroupPolicy, counts: &RolloutCounts) -> bool {
    policy.halt_after > 0 && counts.failed >= policy.halt_after
}

/// Whether `instance_id` is inside the first `percentage` percent of the group, stably: the
/// same host is always in or out for the same percentage, and raising it only adds hosts.
pub fn in_percentage(instance_id: &str, percentage: u8) -> bool {
    let h = Sha256::digest(instance_id.as_bytes());
    (u16::from_le_bytes([h[0], h[1]]) % 100) < u16::from(percentage)
}

pub fn decide(
    policy: &GroupPolicy,
    halted: bool,
    target: Option<&str>,
    counts: &RolloutCounts,
    host: &HostView,
) -> Decision {
    let no = |why: &str| Decision::NoUpdate(why.to_string());
    let Some(target) = target else { return no("the group's channel has no version yet") };
    if cairn_release::version::compare(host.version, target) != Ordering::Less {
        return no("up to date");
    }
    if host.rolled_back.iter().any(|v| v == target) {
        return no("this version was rolled back on this host");
    }
    // A host that holds a grant gets the same offer again (its download may have broken).
    if host.outstanding_grant == Some(target) {
        return Decision::Offer { version: target.to_string(), new_grant: false };
    }
    if busy(host.state) {
        return no("the host is busy with another release");
    }
    if halted {
        return no("the group's rollout is halted");
    }
    if !policy.updates_enabled {
        return no("updates are paused for the group");
    }
    if !in_percentage(host.instance_id, policy.percentage) {
        return no("outside the group's rollout percentage");
    }
    if policy.safe_mode && counts.succeeded == 0 && counts.outstanding + counts.failed > 0 {
        return no("safe mode: waiting for the first host to succeed");
    }
    if counts.granted_in_period >= policy.max_per_period {
        return no("the group's rate limit is reached for this period");
    }
    Decision::Offer { version: target.to_string(), new_grant: true }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Clone, Copy, PartialEq)]
    enum Outcome {
        Pending,
        Succeeded,
        Failed,
    }

    /// An in-memory store of grants, counted as the database will count them.
    #[derive(Default)]
    struct Rollout {
        grants: HashMap<String, (u64, Outcome)>,
        halted: bool,
    }

    impl Rollout {
        fn counts(&self, p: &GroupPolicy, now: u64) -> RolloutCounts {
            let mut c = RolloutCounts::default();
            for (at, outcome) in self.grants.values() {
                if now.saturating_sub(*at) < p.period_s {
                    c.granted_in_period += 1;
                }
                match outcome {
                    Outcome::Succeeded => c.succeeded += 1,
                    Outcome::Failed => c.failed += 1,
                    Outcome::Pending if now.saturating_sub(*at) >= p.grant_timeout_s => c.failed += 1,
                    Outcome::Pending => c.outstanding += 1,
                }
            }
            c
        }

        fn check_in(&mut self, p: &GroupPolicy, id: &str, version: &str, now: u64) -> Decision {
            let counts = self.counts(p, now);
            self.halted |= should_halt(p, &counts);
            let outstanding = match self.grants.get(id) {
                Some((_, Outcome::Pending)) => Some("2"),
                _ => None,
            };
            let host =
                HostView { instance_id: id, version, outstanding_grant: outstanding, rolled_back: &[], state: "idle" };
            let d = decide(p, self.halted, Some("2"), &counts, &host);
            if let Decision::Offer { new_grant: true, .. } = d {
                self.grants.insert(id.to_string(), (now, Outcome::Pending));
            }
            d
        }

        fn report(&mut self, id: &str, outcome: Outcome) {
            if let Some(g) = self.grants.get_mut(id) {
                g.1 = outcome;
            }
        }
    }

    fn offered(d: &Decision) -> bool {
        matches!(d, Decision::Offer { .. })
    }

    #[test]
    fn at_most_n_new_grants_per_period() {
        let p = GroupPolicy { max_per_period: 2, period_s: 3600, ..Default::default() };
        let mut r = Rollout::default();
        // 50 hosts check in every minute for an hour: exactly 2 grants.
        let mut granted = 0;
        for minute in 0..60 {
            for h in 0..50 {
                let id = format!("host-{h}");
                let d = r.check_in(&p, &id, "1", minute * 60);
                if let Decision::Offer { new_grant: true, .. } = d {
                    granted += 1;
                }
            }
        }
        assert_eq!(granted, 2);
        // The next period grants 2 more (the first two grants timed out by now: 2 failures, below
        // halt_after).
        let mut offers_next_hour = 0;
        for h in 0..50 {
            if let Decision::Offer { new_grant: true, .. } = r.check_in(&p, &format!("host-{h}"), "1", 3600 + 10) {
                offers_next_hour += 1;
            }
        }
        assert_eq!(offers_next_hour, 2);
    }

    #[test]
    fn safe_mode_grants_one_until_it_succeeds() {
        let p = GroupPolicy { safe_mode: true, max_per_period: 100, ..Default::default() };
        let mut r = Rollout::default();
        assert!(offered(&r.check_in(&p, "a", "1", 0)));
        assert_eq!(
            r.check_in(&p, "b", "1", 1),
            Decision::NoUpdate("safe mode: waiting for the first host to succeed".into())
        );
        assert!(offered(&r.check_in(&p, "a", "1", 2)), "the granted host keeps its offer");
        r.report("a", Outcome::Succeeded);
        assert!(offered(&r.check_in(&p, "b", "1", 3)));
        assert!(offered(&r.check_in(&p, "c", "1", 4)));
    }

    #[test]
    fn failures_and_rollbacks_halt_the_group() {
        let p = GroupPolicy { halt_after: 3, max_per_period: 100, ..Default::default() };
        let mut r = Rollout::default();
        for h in ["a", "b", "c", "d"] {
            assert!(offered(&r.check_in(&p, h, "1", 0)));
        }
        for h in ["a", "b", "c"] {
            r.report(h, Outcome::Failed);
        }
        assert_eq!(r.check_in(&p, "e", "1", 5), Decision::NoUpdate("the group's rollout is halted".into()));
        assert!(r.halted);
        // A host already holding a grant may still finish it.
        assert!(offered(&r.check_in(&p, "d", "1", 6)));
    }

    #[test]
    fn a_grant_never_reported_back_counts_as_failed() {
        let p = GroupPolicy { halt_after: 1, grant_timeout_s: 600, max_per_period: 100, ..Default::default() };
        let mut r = Rollout::default();
        assert!(offered(&r.check_in(&p, "silent", "1", 0)));
        assert!(offered(&r.check_in(&p, "b", "1", 599)));
        assert_eq!(r.counts(&p, 600).failed, 1);
        assert!(!offered(&r.check_in(&p, "c", "1", 600)), "halted by the timeout");
    }

    #[test]
    fn paused_pinned_percentage_and_up_to_date() {
        let counts = RolloutCounts::default();
        let host =
            |v| HostView { instance_id: "h", version: v, outstanding_grant: None, rolled_back: &[], state: "idle" };
        let paused = GroupPolicy { updates_enabled: false, ..Default::default() };
        assert!(!offered(&decide(&paused, false, Some("2"), &counts, &host("1"))));
        assert!(!offered(&decide(&GroupPolicy::default(), false, Some("2"), &counts, &host("2"))));
        assert!(!offered(&decide(&GroupPolicy::default(), false, Some("2"), &counts, &host("3"))), "no downgrade");
        let pinned = GroupPolicy { pinned_version: Some("1.5".into()), ..Default::default() };
        assert_eq!(target_version(&pinned, Some("2")), Some("1.5"));
        let rolled = vec!["2".to_string()];
        let h = HostView { rolled_back: &rolled, ..host("1") };
        assert!(!offered(&decide(&GroupPolicy::default(), false, Some("2"), &counts, &h)));
        // A host assessing (or waiting to reboot into) a release reports it; it gets no new grant.
        for state in ["assessing", "waiting-to-reboot"] {
            let h = HostView { state, ..host("1") };
            assert_eq!(
                decide(&GroupPolicy::default(), false, Some("2"), &counts, &h),
                Decision::NoUpdate("the host is busy with another release".into())
            );
        }
        // 30%: roughly 30 of 1000 hosts per 100, stably, and 60% keeps every one of them.
        let in30: Vec<String> = (0..1000).map(|i| format!("h{i}")).filter(|id| in_percentage(id, 30)).collect();
        assert!((250..350).contains(&in30.len()), "{}", in30.len());
        assert!(in30.iter().all(|id| in_percentage(id, 60)));
        assert!(!in_percentage("anything", 0) && in_percentage("anything", 100));
    }
}
