//! Token buckets per client: each key refills at `rate` per second up to `burst`, and a request
//! takes one token or is refused. The map of keys is bounded: when it is full, buckets that have
//! refilled completely (clients that went quiet) are dropped, since a new bucket starts full.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Keys kept before quiet ones are dropped.
const MAX_KEYS: usize = 100_000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Refills for the time since the last request, then takes one token if there is one.
    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn full(&self, rate: f64, burst: f64, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate >= burst
    }
}

/// A rate per key; `None` rate: no limit.
pub struct RateLimiter {
    rate: Option<f64>,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// `per_second` requests per key (0: no limit), with bursts of `burst`.
    pub fn new(per_second: f64, burst: u32) -> RateLimiter {
        let rate = (per_second > 0.0).then_some(per_second);
        RateLimiter { rate, burst: f64::from(burst.max(1)), buckets: Mutex::new(HashMap::new()) }
    }

    pub fn unlimited() -> RateLimiter {
        RateLimiter::new(0.0, 1)
    }

    /// Whether `key` may make a request now.
    pub fn allow(&self, key: &str, now: Instant) -> bool {
        let Some(rate) = self.rate else { return true };
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        if let Some(bucket) = buckets.get_mut(key) {
            return bucket.take(rate, self.burst, now);
        }
        if buckets.len() >= MAX_KEYS {
            buckets.retain(|_, b| !b.full(rate, self.burst, now));
        }
        let mut bucket = Bucket { tokens: self.burst, at: now };
        let allowed = bucket.take(rate, self.burst, now);
        buckets.insert(key.to_string(), bucket);
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let limiter = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        let allowed = (0..5).filter(|_| limiter.allow("a", t0)).count();
        assert_eq!(allowed, 3, "the burst");
        assert!(limiter.allow("b", t0), "another key has its own bucket");
        assert!(!limiter.allow("a", t0 + Duration::from_millis(400)), "0.8 of a token");
        assert!(limiter.allow("a", t0 + Duration::from_millis(500)), "one token after half a second");
        assert!(!limiter.allow("a", t0 + Duration::from_millis(500)));
        assert_eq!(
            (0..10).filter(|_| limiter.allow("a", t0 + Duration::from_secs(60))).count(),
            3,
            "refilled to the burst only"
        );
    }

    #[test]
    fn no_rate_is_no_limit() {
        let limiter = RateLimiter::unlimited();
        let t0 = Instant::now();
        assert!((0..10_000).all(|_| limiter.allow("a", t0)));
    }
}
