//! The attempt loop of one request: carries out the steps of its [`Plan`] — POST to a
//! backend, sleep until a retry, hand over to the desk — on the dispatcher's [`Clock`], and
//! logs every attempt to the journal. What to do next is decided in `decide.rs`; here is
//! only the doing (HTTP, timers, cancellation).

use super::backend::Backend;
use super::decide::{Gates, Plan, Policy, Step};
use super::http::{self, AttemptResult, HttpBackend};
use crate::clock::Clock;
use crate::store::{AttemptRecord, Store};
use crate::telemetry;
use bytes::Bytes;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How the routing of a request ended.
#[derive(Debug, PartialEq)]
pub enum Ending {
    Dispatched {
        backend: String,
        reference: Option<String>,
        eta_s: Option<u32>,
    },
    /// To the desk, for this `decide::reason`.
    Escalated(&'static str),
    /// Cancelled by the resident, or the gateway is stopping (the outbox keeps it).
    Abandoned,
}

/// When a request created at `created_at` (epoch ms, from the journal) escalates, as an
/// instant on `clock`: a replayed request has only what is left of its deadline.
pub fn deadline(clock: &Clock, created_at: i64, within: Duration) -> Instant {
    clock.instant_at(created_at.saturating_add(within.as_millis() as i64))
}

/// How one attempt reaches a backend: HTTP in the gateway, scripted in tests.
///
/// **NOTE** Real sockets and tokio's paused time do not mix: a paused runtime that waits on
/// I/O jumps to its next timer — the attempt's timeout — so a test on a driven clock needs a
/// transport that waits on timers only.
pub trait Transport {
    fn post(
        &self,
        backend: &HttpBackend,
        request_id: &str,
        attempt: u32,
        body: Bytes,
        timeout: Duration,
    ) -> impl Future<Output = AttemptResult> + Send;
}

impl Transport for reqwest::Client {
    fn post(
        &self,
        backend: &HttpBackend,
        request_id: &str,
        attempt: u32,
        body: Bytes,
        timeout: Duration,
    ) -> impl Future<Output = AttemptResult> + Send {
        http::attempt(self, backend, request_id, attempt, body, timeout)
    }
}

/// Where each attempt is written down (the request's history in the journal); a trait so the
/// loop is tested without a journal.
pub trait AttemptLog {
    fn attempt(&self, a: AttemptRecord) -> impl Future<Output = ()> + Send;
}

impl AttemptLog for Store {
    fn attempt(&self, a: AttemptRecord) -> impl Future<Output = ()> + Send {
        Store::attempt(self, a)
    }
}

/// The configured backends' circuit breakers, as the plan asks about them.
struct Breakers<'a>(&'a HashMap<String, Backend>);

impl Gates for Breakers<'_> {
    fn known(&self, backend: &str) -> bool {
        self.0.contains_key(backend)
    }
    fn allow(&self, backend: &str) -> bool {
        self.0.get(backend).is_some_and(|b| b.breaker.allow())
    }
    fn retry_at(&self, backend: &str) -> Instant {
        match self.0.get(backend) {
            Some(b) => b.breaker.retry_at(),
            // Never asked: `known` said no first.
            None => Instant::now(),
        }
    }
    fn report(&self, backend: &str, alive: bool) {
        if let Some(b) = self.0.get(backend) {
            if alive {
                b.breaker.success()
            } else {
                b.breaker.failure()
            }
        }
    }
}

/// What the loop works with; borrowed from the dispatcher for one request.
pub struct Attempts<'a, T, L> {
    pub transport: &'a T,
    pub backends: &'a HashMap<String, Backend>,
    pub clock: &'a Clock,
    pub log: &'a L,
    /// The gateway's abort: an attempt in flight is dropped (its outbox row stays).
    pub shutdown: &'a CancellationToken,
}

impl<T: Transport, L: AttemptLog> Attempts<'_, T, L> {
    /// Route request `request_id` (which has had `attempts` attempts before, across restarts)
    /// by `policy` until a backend takes it, it goes to the desk, or `token` is cancelled.
    pub async fn route(
        &self,
        request_id: &str,
        mut attempts: u32,
        policy: Policy<'_>,
        deadline: Instant,
        body: Bytes,
        token: &CancellationToken,
    ) -> Ending {
        let gates = Breakers(self.backends);
        let mut plan = Plan::new(policy, deadline);
        loop {
            // NOTE a fresh `thread_rng()` per call, dropped at the `;`: it is not `Send`, and
            // this future is (as a match scrutinee it would live across the sleep).
            let step = plan.next(self.clock.now(), &gates, &mut rand::thread_rng());
            let (name, timeout) = match step {
                Step::Attempt { backend, timeout } => (backend, timeout),
                Step::Escalate(why) => return Ending::Escalated(why),
                Step::Wait { until } => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = token.cancelled() => return Ending::Abandoned,
                    }
                    continue;
                }
            };
            let backend = self
                .backends
                .get(name)
                .expect("the plan attempts only backends `known` said are configured");
            let started = self.clock.now();
            attempts += 1;
            let started_ms = self.clock.now_ms();
            if token.is_cancelled() {
                return Ending::Abandoned;
            }
            // A cancel does not abort an attempt in flight: the backend may be taking the
            // request right now, and if it does, `dispatched` owes it a cancellation.
            let result = tokio::select! {
                r = self.transport.post(&backend.http, request_id, attempts, body.clone(), timeout) => r,
                _ = self.shutdown.cancelled() => return Ending::Abandoned,
            };
            let elapsed = self.clock.now() - started;
            telemetry::dispatch_attempt(name, result.label(), elapsed);
            self.log
                .attempt(AttemptRecord {
                    request_id: request_id.to_owned(),
                    backend: name.to_owned(),
                    attempt: attempts,
                    result: result.label(),
                    started_at: started_ms,
                    elapsed_ms: elapsed.as_millis() as u64,
                })
                .await;
            match &result {
                AttemptResult::Refused(status) => {
                    tracing::warn!(backend = %name, status, "backend refused the request")
                }
                AttemptResult::Failed { label, .. } => {
                    tracing::debug!(backend = %name, result = label, "attempt failed")
                }
                _ => {}
            }
            let accepted = plan.record(self.clock.now(), result, &gates, &mut rand::thread_rng());
            if let Some(a) = accepted {
                return Ending::Dispatched {
                    backend: a.backend.to_owned(),
                    reference: a.reference,
                    eta_s: a.eta_s,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests;
