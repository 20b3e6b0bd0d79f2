//! Dispatch's decision table (DESIGN §4), as a state machine with no I/O: given how the last
//! attempt ended, which attempt it was, where its backend sits in the service's failover list,
//! the time left to the deadline and each backend's circuit breaker, what happens next —
//! accepted, retry the same backend after a backoff, fail over to the next, escalate to `desk`
//! now, or wait (no later than the deadline, where the request escalates).
//!
//! The attempt loop (`attempt.rs`) asks [`Plan::next`], performs the step and reports the
//! answer with [`Plan::record`]; time and randomness come in as arguments, so every row of the
//! table is tested below without a network or a sleep.

use super::backoff;
use super::http::AttemptResult;
use crate::config::DESK;
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

/// Why a request went to the desk (the `reason` label of `yijian_escalations_total`).
pub mod reason {
    /// `desk` is the service's first backend.
    pub const ROUTED: &str = "routed";
    /// Every earlier backend failed and `desk` is next in the list.
    pub const FAILOVER: &str = "failover";
    /// Every backend refused the request (4xx).
    pub const REFUSED: &str = "refused";
    /// The service deadline passed.
    pub const DEADLINE: &str = "deadline";
    /// Every reason, for registering the metric's series at zero.
    pub const ALL: &[&str] = &[ROUTED, FAILOVER, REFUSED, DEADLINE];
}

/// A service's routing as the plan needs it (taken from the configuration per request).
#[derive(Debug, Clone)]
pub struct Policy<'a> {
    /// Backend names in failover order; may include `desk`.
    pub backends: &'a [String],
    /// Attempts on one backend in a round before failing over.
    pub attempts_per_backend: u32,
    /// Timeout of one attempt (shortened to the time left before the deadline).
    pub attempt_timeout: Duration,
    /// First backoff, doubling per retry up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

/// The circuit breakers as the plan sees them; the dispatcher's are `Breaker`s, the tests'
/// are scripted.
pub trait Gates {
    /// Whether the backend is configured at all (an unknown one is skipped).
    fn known(&self, backend: &str) -> bool;
    /// May a request be sent now? (An open circuit past its cooldown lets a probe through.)
    fn allow(&self, backend: &str) -> bool;
    /// When a refused caller should look again.
    fn retry_at(&self, backend: &str) -> Instant;
    /// The backend answered (`alive`), or failed (5xx, timeout, connection error).
    fn report(&self, backend: &str, alive: bool);
}

/// What the attempt loop does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step<'a> {
    /// POST to this backend once, with this timeout.
    Attempt { backend: &'a str, timeout: Duration },
    /// Sleep until then (never past the deadline), then ask again.
    Wait { until: Instant },
    /// Give the request to the desk, for this [`reason`].
    Escalate(&'static str),
}

/// A backend took the request.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted<'a> {
    pub backend: &'a str,
    pub reference: Option<String>,
    pub eta_s: Option<u32>,
}

/// Where one request stands in its routing.
#[derive(Debug)]
pub struct Plan<'a> {
    policy: Policy<'a>,
    /// When the request escalates for lack of a taker.
    deadline: Instant,
    /// Rounds through the list so far; each round backs off longer.
    round: u32,
    /// The backend being tried (index into `policy.backends`).
    pos: usize,
    /// Attempts made on it in this round.
    tries: u32,
    /// Whether any attempt of this round failed (then the next round waits a backoff).
    failed_any: bool,
    /// Backends that answered 4xx: never asked again for this request.
    refused: HashSet<&'a str>,
    /// A backend's `Retry-After`: not asked again before then, even in the next round.
    not_before: HashMap<&'a str, Instant>,
    /// A wait decided by the last answer, to hand out at the next step.
    pending: Option<Instant>,
    /// The last step was a wait: the deadline may have come meanwhile.
    woke: bool,
}

impl<'a> Plan<'a> {
    /// A request about to be routed, escalating at `deadline`.
    pub fn new(policy: Policy<'a>, deadline: Instant) -> Self {
        Plan {
            policy,
            deadline,
            round: 0,
            pos: 0,
            tries: 0,
            failed_any: false,
            refused: HashSet::new(),
            not_before: HashMap::new(),
            pending: None,
            woke: false,
        }
    }

    /// The next step at `now`.
    pub fn next(&mut self, now: Instant, gates: &impl Gates, rng: &mut impl Rng) -> Step<'a> {
        if let Some(until) = self.pending.take() {
            return self.wait_until(until);
        }
        if std::mem::take(&mut self.woke) && now >= self.deadline {
            return Step::Escalate(reason::DEADLINE);
        }
        let backends = self.policy.backends;
        while let Some(name) = backends.get(self.pos).map(String::as_str) {
            if name == DESK {
                // NOTE `desk` in the list ends the routing whatever the time: it is where the
                // deadline would send the request anyway.
                return Step::Escalate(if self.pos == 0 {
                    reason::ROUTED
                } else {
                    reason::FAILOVER
                });
            }
            // Checked in this order on purpose: `allow` may turn an open circuit half-open,
            // which must not happen for a backend that is not going to be asked.
            let skip = self.tries >= self.policy.attempts_per_backend
                || self.refused.contains(name)
                || !gates.known(name)
                || self.not_before.get(name).is_some_and(|t| *t > now)
                || !gates.allow(name);
            if skip {
                self.pos += 1;
                self.tries = 0;
                continue;
            }
            if now >= self.deadline {
                return Step::Escalate(reason::DEADLINE);
            }
            self.tries += 1;
            return Step::Attempt {
                backend: name,
                timeout: self.policy.attempt_timeout.min(self.deadline - now),
            };
        }
        self.end_round(now, gates, rng)
    }

    /// How the attempt handed out by the last [`Plan::next`] ended, at `now`. `Some` when the
    /// backend took the request: the routing is over.
    pub fn record(
        &mut self,
        now: Instant,
        result: AttemptResult,
        gates: &impl Gates,
        rng: &mut impl Rng,
    ) -> Option<Accepted<'a>> {
        let name = self.policy.backends[self.pos].as_str();
        match result {
            AttemptResult::Accepted { reference, eta_s } => {
                gates.report(name, true);
                Some(Accepted {
                    backend: name,
                    reference,
                    eta_s,
                })
            }
            AttemptResult::Conflict => {
                gates.report(name, true);
                Some(Accepted {
                    backend: name,
                    reference: None,
                    eta_s: None,
                })
            }
            AttemptResult::Refused(_) => {
                // A refusal is an answer: the backend is alive, it just will never take this.
                gates.report(name, true);
                self.refused.insert(name);
                None
            }
            AttemptResult::Failed { retry_after, .. } => {
                gates.report(name, false);
                if let Some(ra) = retry_after {
                    self.not_before.insert(name, now + ra);
                }
                self.failed_any = true;
                let i = self.tries - 1;
                let per = self.policy.attempts_per_backend;
                if i + 1 < per {
                    let wait = retry_after.unwrap_or_else(|| {
                        backoff::delay(
                            self.round * per + i,
                            self.policy.backoff_initial,
                            self.policy.backoff_max,
                            rng,
                        )
                    });
                    self.pending = Some(now + wait);
                }
                None
            }
        }
    }

    /// Every backend of the list was tried or skipped this round.
    fn end_round(&mut self, now: Instant, gates: &impl Gates, rng: &mut impl Rng) -> Step<'a> {
        let backends = self.policy.backends;
        let http = || backends.iter().map(String::as_str).filter(|b| *b != DESK);
        if http().next().is_some() && http().all(|b| self.refused.contains(b)) {
            return Step::Escalate(reason::REFUSED);
        }
        // Another round: once the first backend may be asked again (its circuit lets a probe
        // through, its Retry-After has passed), and after a backoff if something failed.
        // Either way no later than the deadline.
        let ready = http()
            .filter(|b| !self.refused.contains(b) && gates.known(b))
            .map(|b| {
                gates
                    .retry_at(b)
                    .max(self.not_before.get(b).copied().unwrap_or(now))
            })
            .min()
            .unwrap_or(self.deadline);
        let ready_in = ready.saturating_duration_since(now);
        let wait = if self.failed_any {
            backoff::delay(
                self.round + 1,
                self.policy.backoff_initial,
                self.policy.backoff_max,
                rng,
            )
            .max(ready_in)
        } else {
            // Nothing failed, so nothing to back off from; the floor keeps a misbehaving
            // breaker from spinning this loop.
            ready_in.max(Duration::from_millis(10))
        };
        self.round += 1;
        self.pos = 0;
        self.tries = 0;
        self.failed_any = false;
        self.wait_until(now + wait)
    }

    fn wait_until(&mut self, until: Instant) -> Step<'a> {
        self.woke = true;
        Step::Wait {
            until: until.min(self.deadline),
        }
    }
}

#[cfg(test)]
mod tests;
