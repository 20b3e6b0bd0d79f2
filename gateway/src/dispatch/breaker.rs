//! A per-backend circuit breaker: after `threshold` consecutive failures the circuit opens and
//! no request is sent for `cooldown`; then one probe is let through (half-open). Its success
//! closes the circuit, its failure opens it again.

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
    state: Mutex<State>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(name: &str, threshold: u32, cooldown: Duration) -> Self {
        telemetry::circuit(name, false);
        Breaker {
            name: name.to_owned(),
            threshold,
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// May a request be sent now?
    pub fn allow(&self) -> bool {
        let mut s = self.state.lock().expect("breaker lock is never poisoned");
        let now = Instant::now();
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
            State::Closed { .. } => Instant::now(),
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
        let now = Instant::now();
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
        let b = Breaker::new("t", 3, Duration::from_secs(10));
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
        let b = Breaker::new("t2", 2, Duration::from_secs(1));
        b.failure();
        b.success();
        b.failure();
        assert!(!b.is_open());
    }
}
