//! Request-rate limits, so one caller cannot take the api from the others:
//!
//! - per API key, on every authenticated request (a key that sends more gets
//!   429 with `retry-after`, and other keys are not slowed);
//! - per client address, on key lookups that miss the cache: each one costs a
//!   PostgreSQL query, so guessing keys from one address is bounded too.
//!
//! GCRA from the governor crate: one atomic word per key in a sharded map,
//! no timer task; `retain_recent` drops keys idle longer than their period.
//! Limits are per api process: with N replicas a key may send N times its
//! limit in all. The address is the TCP peer's: behind a proxy that is the
//! proxy, so set the per-address limit there or turn it off here.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// SHA-256 of an API key: the limiter never holds the key itself.
type KeyDigest = [u8; 32];

/// Which limit refused a request (the metric's `scope` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Key,
    Address,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Address => "address",
        }
    }

    /// The field a 429's error body names: what the caller should change.
    pub fn field(self) -> &'static str {
        match self {
            Scope::Key => "x-api-key",
            Scope::Address => "address",
        }
    }

    /// Whose requests were too many, for the error message.
    pub fn describe(self) -> &'static str {
        match self {
            Scope::Key => "with this API key",
            Scope::Address => "with unknown API keys from this address",
        }
    }
}

/// The api's two keyed limiters; either may be off.
pub struct RateLimits {
    per_key: Option<DefaultKeyedRateLimiter<KeyDigest>>,
    per_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
}

/// A quota of `per_second` with bursts of twice that (0: no limit).
fn quota(per_second: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(per_second.saturating_mul(2)).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

impl RateLimits {
    /// Limits of `per_key` requests per second per API key and `lookups_per_address`
    /// uncached key lookups per second per client address; 0 turns one off.
    pub fn new(per_key: u32, lookups_per_address: u32) -> Self {
        Self {
            per_key: quota(per_key).map(RateLimiter::keyed),
            per_address: quota(lookups_per_address).map(RateLimiter::keyed),
            clock: DefaultClock::default(),
        }
    }

    fn refused(&self, scope: Scope, wait: Duration) -> Refused {
        metrics::counter!("marquee_http_rate_limited_total", "scope" => scope.as_str())
            .increment(1);
        Refused { scope, wait }
    }

    fn check<K: Clone + Eq + std::hash::Hash>(
        &self,
        limiter: Option<&DefaultKeyedRateLimiter<K>>,
        key: &K,
        scope: Scope,
    ) -> Result<(), Refused> {
        match limiter {
            Some(limiter) => limiter
                .check_key(key)
                .map_err(|until| self.refused(scope, until.wait_time_from(self.clock.now()))),
            None => Ok(()),
        }
    }

    /// One request by the key with this digest.
    pub fn check_key(&self, digest: &KeyDigest) -> Result<(), Refused> {
        self.check(self.per_key.as_ref(), digest, Scope::Key)
    }

    /// One key lookup in PostgreSQL for a request from `address`.
    pub fn check_lookup(&self, address: IpAddr) -> Result<(), Refused> {
        self.check(self.per_address.as_ref(), &address, Scope::Address)
    }

    /// Forget callers idle for longer than their limit's period, so the maps
    /// hold recent callers only (called periodically by the api).
    pub fn retain_recent(&self) {
        fn retain<K: Clone + Eq + std::hash::Hash>(l: Option<&DefaultKeyedRateLimiter<K>>) {
            if let Some(l) = l {
                l.retain_recent();
                l.shrink_to_fit();
            }
        }
        retain(self.per_key.as_ref());
        retain(self.per_address.as_ref());
    }
}

/// A request over a limit: which one, and how long until it would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub scope: Scope,
    pub wait: Duration,
}

impl Refused {
    /// Whole seconds for `retry-after`, at least 1.
    pub fn retry_after_s(&self) -> u64 {
        let ceil = self.wait.as_secs() + u64::from(self.wait.subsec_nanos() > 0);
        ceil.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_over_its_limit_is_refused_and_others_are_not() {
        let limits = RateLimits::new(10, 0);
        let (busy, quiet) = ([1u8; 32], [2u8; 32]);
        // A burst of twice the rate passes, then the key waits.
        let passed = (0..100).filter(|_| limits.check_key(&busy).is_ok()).count();
        assert!((20..=21).contains(&passed), "{passed} passed");
        let refused = limits.check_key(&busy).unwrap_err();
        assert_eq!(refused.scope, Scope::Key);
        assert!(refused.wait <= Duration::from_millis(100));
        assert_eq!(refused.retry_after_s(), 1);
        assert!(limits.check_key(&quiet).is_ok());
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let limits = RateLimits::new(0, 0);
        assert!((0..10_000).all(|_| limits.check_key(&[0; 32]).is_ok()));
        let ip: IpAddr = [127, 0, 0, 1].into();
        assert!((0..10_000).all(|_| limits.check_lookup(ip).is_ok()));
    }

    #[test]
    fn lookups_are_limited_per_address() {
        let limits = RateLimits::new(0, 5);
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let passed = (0..50).filter(|_| limits.check_lookup(a).is_ok()).count();
        assert!((10..=11).contains(&passed), "{passed} passed");
        assert_eq!(limits.check_lookup(a).unwrap_err().scope, Scope::Address);
        assert!(limits.check_lookup(b).is_ok());
    }
}
