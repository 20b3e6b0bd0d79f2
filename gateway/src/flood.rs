//! Flood control: a stuck button or a hostile device must not book ten taxis, nor drown the
//! gateway. Two layers (SECURITY.md):
//!
//! - In the journal (`store::writer`), a press of a service while the device's request for it
//!   is still open joins that request as a "pressed again" event instead of opening another.
//! - At the broker ([`crate::broker::Acl`]), each device connection has a [`TokenBucket`]; a
//!   connection that sends faster than the configured rate for longer than the burst allows is
//!   closed and counted.

use std::time::Instant;

/// The limits, as configured (`[flood]`); named here too, as this stage applies them.
pub use crate::config::FloodConfig;

// NOTE: an inherent method on the configuration's type, defined here so that `config` names
// no stage while a caller still asks the settings for a bucket.
impl FloodConfig {
    /// A full bucket with these limits.
    pub fn bucket(&self, now: Instant) -> TokenBucket {
        TokenBucket::new(self.device_messages_per_s, self.device_burst, now)
    }
}

/// A token bucket: `burst` tokens, refilled at `rate` per second; each message takes one.
/// Time is passed in, so tests need no clock.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        TokenBucket {
            rate,
            burst: burst as f64,
            tokens: burst as f64,
            last: now,
        }
    }

    /// Take one token at `now`; `false` when the bucket is empty.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5, t0);
        for _ in 0..5 {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0), "the burst is spent");
        assert!(
            !b.take(t0 + Duration::from_millis(50)),
            "half a token is not a token"
        );
        assert!(b.take(t0 + Duration::from_millis(120)));
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(b.take(later));
        }
        assert!(!b.take(later));
    }

    #[test]
    fn twenty_presses_in_two_seconds_fit_the_default_limits() {
        // Each press costs its PUBLISH and the PUBACK of its feedback.
        let cfg = FloodConfig::default();
        let t0 = Instant::now();
        let mut b = cfg.bucket(t0);
        for i in 0..20u64 {
            let at = t0 + Duration::from_millis(100 * i);
            assert!(b.take(at) && b.take(at), "press {i}");
        }
    }

    #[test]
    fn a_flood_is_stopped() {
        let cfg = FloodConfig::default();
        let t0 = Instant::now();
        let mut b = cfg.bucket(t0);
        let sent = (0..1000)
            .take_while(|i| b.take(t0 + Duration::from_millis(*i)))
            .count();
        assert!(sent < 80, "{sent} messages in one second passed");
    }
}
