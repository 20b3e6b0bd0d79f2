//! A per-backend circuit breaker: after `threshold` consecutive failures the circuit opens and
//! no request is sent for `cooldown`; then one probe is let through (half-open). Its success
//! closes the circuit, its failure opens it again.
//!
//! Its timers read the dispatcher's [`Clock`], so a test drives cooldowns with tokio's paused
//! time instead of sleeping through them.

use crate::clock::Clock;
use crate::telemetry;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out since `since`; another is allowed if it never reports back.
    HalfOpen {
        since: Instant,
    },
}

/// The breaker of one backend.
#[derive(Debug)]
pub struct Breaker {
    /// The backend's name, for the metric label and logs.
    name: String,
    /// Consecutive failures that open the circuit.
    threshold: u32,
    /// How long an open circuit refuses requests.
    cooldown: Duration,
    /// Where "now" comes from.
    clock: Clock,
    state: Mutex<State>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(name: &str, threshold: u32, cooldown: Duration, clock: Clock) -> Self {
        telemetry::circuit(name, false);
        Breaker {
            name: name.to_owned(),
            threshold,
            cooldown,
            clock,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// May a request be sent now?
    pub fn allow(&self) -> bool {
        let mut s = self.state.lock().expect("breaker lock is never poisoned");
        let now = self.clock.now();
        match *s {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *s = State::HalfOpen { since: now };
                tracing::info!(backend = %self.name, "circuit half-open: sending one probe");
                true
            }
            State::Open { .. } => false,
            State::HalfOpen { since } if now >= since + self.cooldown => {
                *s = State::HalfOpen { since: now };
                true
            }
            State::HalfOpen { .. } => false,
        }
    }

    /// When a refused caller should look again.
    pub fn retry_at(&self) -> Instant {
        match *self.state.lock().expect("breaker lock is never poisoned") {
            State::Open { until } => until,
            State::HalfOpen { since } => since + self.cooldown,
            State::Closed { .. } => self.clock.now(),
        }
    }

    /// The backend answered (even with a refusal: it is alive).
    pub fn success(&self) {
        let mut s = self.state.lock().expect("breaker lock is never poisoned");
        if !matches!(*s, State::Closed { .. }) {
            tracing::info!(backend = %self.name, "circuit closed");
            telemetry::circuit(&self.name, false);
        }
        *s = State::Closed { failures: 0 };
    }

    /// The backend failed (5xx, timeout, connection error).
    pub fn failure(&self) {
        let mut s = self.state.lock().expect("breaker lock is never poisoned");
        let now = self.clock.now();
        let open = match *s {
            State::Closed { failures } if failures + 1 >= self.threshold => true,
            State::Closed { failures } => {
                *s = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::HalfOpen { .. } => true,
            State::Open { .. } => false,
        };
        if open {
            *s = State::Open {
                until: now + self.cooldown,
            };
            tracing::warn!(backend = %self.name, cooldown_ms = self.cooldown.as_millis() as u64, "circuit open");
            telemetry::circuit(&self.name, true);
        }
    }

    /// Whether the circuit is open or half-open.
    pub fn is_open(&self) -> bool {
        !matches!(
            *self.state.lock().expect("breaker lock is never poisoned"),
            State::Closed { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_half_opens_and_closes() {
        let b = Breaker::new("t", 3, Duration::from_secs(10), Clock::system());
        assert!(b.allow());
        b.failure();
        b.failure();
        assert!(!b.is_open(), "two failures stay under the threshold");
        b.failure();
        assert!(b.is_open());
        assert!(!b.allow(), "open circuit refuses");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.allow(), "one probe after the cooldown");
        assert!(!b.allow(), "only one probe at a time");
        b.failure();
        assert!(!b.allow(), "a failed probe reopens");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.allow());
        b.success();
        assert!(!b.is_open());
        assert!(b.allow() && b.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_count() {
        let b = Breaker::new("t2", 2, Duration::from_secs(1), Clock::system());
        b.failure();
        b.success();
        b.failure();
        assert!(!b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_reports_back_is_replaced_after_the_cooldown() {
        let clock = Clock::tokio_at(1_764_324_000_000);
        let cooldown = Duration::from_secs(30);
        let b = Breaker::new("t3", 1, cooldown, clock.clone());
        assert_eq!(
            b.retry_at(),
            clock.now(),
            "a closed circuit may be asked now"
        );
        b.failure();
        let opened = clock.now();
        assert!(b.is_open());
        assert_eq!(b.retry_at(), opened + cooldown);
        tokio::time::advance(cooldown - Duration::from_millis(1)).await;
        assert!(!b.allow(), "still cooling down");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.allow(), "the probe");
        let probed = clock.now();
        assert_eq!(
            b.retry_at(),
            probed + cooldown,
            "half-open: the next probe's time"
        );
        tokio::time::advance(cooldown / 2).await;
        assert!(!b.allow(), "the probe is still out");
        tokio::time::advance(cooldown / 2).await;
        assert!(b.allow(), "a lost probe is replaced after another cooldown");
        assert!(b.is_open(), "still half-open until an answer");
        b.success();
        assert!(!b.is_open());
    }
}
