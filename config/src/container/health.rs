//! What a container's health checks add up to (pure): healthy from the first success, unhealthy
//! after `retries` failures in a row (when its runner restarts it).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It succeeded; `first` when it never had before (the container is now ready).
    Healthy { first: bool },
    /// It failed, `failures` times in a row, fewer than allowed.
    Failing { failures: u32 },
    /// It failed `retries` times in a row.
    Unhealthy,
}

#[derive(Debug)]
pub struct Tracker {
    retries: u32,
    failures: u32,
    was_healthy: bool,
}

impl Tracker {
    pub fn new(retries: u32) -> Tracker {
        Tracker { retries: retries.max(1), failures: 0, was_healthy: false }
    }

    pub fn record(&mut self, succeeded: bool) -> Verdict {
        if succeeded {
            self.failures = 0;
            let first = !self.was_healthy;
            self.was_healthy = true;
            return Verdict::Healthy { first };
        }
        self.failures += 1;
        if self.failures >= self.retries { Verdict::Unhealthy } else { Verdict::Failing { failures: self.failures } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_make_it_unhealthy_and_a_success_forgives_them() {
        let mut t = Tracker::new(3);
        assert_eq!(t.record(false), Verdict::Failing { failures: 1 });
        assert_eq!(t.record(true), Verdict::Healthy { first: true });
        assert_eq!(t.record(true), Verdict::Healthy { first: false });
        assert_eq!(t.record(false), Verdict::Failing { failures: 1 });
        assert_eq!(t.record(false), Verdict::Failing { failures: 2 });
        assert_eq!(t.record(true), Verdict::Healthy { first: false });
        for n in 1..3 {
            assert_eq!(t.record(false), Verdict::Failing { failures: n });
        }
        assert_eq!(t.record(false), Verdict::Unhealthy);
        assert_eq!(Tracker::new(0).record(false), Verdict::Unhealthy, "at least one failure is allowed for");
    }
}
