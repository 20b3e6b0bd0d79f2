//! Delivering follow-ups (`store::followup`): a backend's cancellation and a contact's
//! notification, retried like dispatch — same headers, exponential backoff with jitter,
//! `Retry-After`, the backend's circuit breaker — until `[dispatch] followup_deadline_s`.
//!
//! The journal is the queue: the deliverer reads the pending rows at start (so nothing is lost
//! across a restart) and whenever the writer rings after committing new ones, and writes each
//! outcome back into the request's history.

use super::backend::Backend;
use super::backoff;
use super::http::{self, AttemptResult};
use crate::clock::Clock;
use crate::config::Config;
use crate::store::followup::{Ending, Kind};
use crate::store::{Followup, Store, StoreError};
use crate::telemetry;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Timeout of one follow-up attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the journal is swept for pending follow-ups even without a doorbell (a safety
/// net; the doorbell normally rings within the commit).
const SWEEP: Duration = Duration::from_secs(30);

/// Delivers follow-ups; one task per follow-up in flight.
pub struct Deliverer {
    store: Store,
    client: reqwest::Client,
    config: Arc<Config>,
    backends: Arc<HashMap<String, Backend>>,
    /// (key, target) being delivered, so a sweep does not start a second delivery.
    in_flight: Mutex<HashSet<(String, String)>>,
    /// The follow-up deadline, backoff and journal timestamps read it.
    clock: Clock,
}

impl Deliverer {
    pub(super) fn new(
        store: Store,
        client: reqwest::Client,
        config: Arc<Config>,
        backends: Arc<HashMap<String, Backend>>,
        clock: Clock,
    ) -> Self {
        Deliverer {
            store,
            client,
            config,
            backends,
            in_flight: Mutex::new(HashSet::new()),
            clock,
        }
    }

    /// Where a follow-up goes: `{url}/{request_id}/cancel` for a cancellation, the
    /// notification backend's own URL for a notification.
    fn url(&self, backend: &Backend, f: &Followup) -> Option<reqwest::Url> {
        match f.kind {
            Kind::Notify => Some(backend.http.url.clone()),
            Kind::Cancel => {
                let base = backend.http.url.as_str().trim_end_matches('/');
                reqwest::Url::parse(&format!("{base}/{}/cancel", f.request_id)).ok()
            }
        }
    }

    /// Deliver one follow-up until it ends; `None` when the gateway is stopping (it stays
    /// pending in the journal).
    async fn deliver(&self, f: &mut Followup, shutdown: &CancellationToken) -> Option<Ending> {
        let Some(backend) = self.backends.get(&f.target) else {
            tracing::error!(key = %f.key, backend = %f.target, "follow-up for a backend no longer configured");
            return Some(Ending::Unconfigured);
        };
        let Some(url) = self.url(backend, f) else {
            return Some(Ending::Unconfigured);
        };
        let dcfg = &self.config.dispatch;
        let deadline = self
            .clock
            .instant_at(f.created_at + dcfg.followup_deadline_s as i64 * 1000);
        let (initial, max) = (
            Duration::from_millis(dcfg.backoff_initial_ms),
            Duration::from_millis(dcfg.backoff_max_ms),
        );
        let body = Bytes::from(f.body.clone());
        let mut failures = 0u32;
        loop {
            let now = self.clock.now();
            if now >= deadline {
                return Some(Ending::Expired);
            }
            let wait = if backend.breaker.allow() {
                f.attempts += 1;
                self.store
                    .followup_attempt(f, f.attempts, self.clock.now_ms())
                    .await;
                let result = tokio::select! {
                    r = http::post(&self.client, url.clone(), backend.http.token.as_deref(), &f.key, f.attempts, body.clone(), ATTEMPT_TIMEOUT.min(deadline - now)) => r,
                    _ = shutdown.cancelled() => return None,
                };
                match result {
                    AttemptResult::Accepted { .. } | AttemptResult::Conflict => {
                        backend.breaker.success();
                        return Some(Ending::Delivered);
                    }
                    AttemptResult::Refused(404) if f.kind == Kind::Cancel => {
                        backend.breaker.success();
                        return Some(Ending::Unknown);
                    }
                    AttemptResult::Refused(status) => {
                        backend.breaker.success();
                        return Some(Ending::Refused(status));
                    }
                    AttemptResult::Failed { label, retry_after } => {
                        backend.breaker.failure();
                        tracing::debug!(key = %f.key, backend = %f.target, result = label, "follow-up attempt failed");
                        failures += 1;
                        retry_after.unwrap_or_else(|| {
                            backoff::delay(failures - 1, initial, max, &mut rand::thread_rng())
                        })
                    }
                }
            } else {
                backend
                    .breaker
                    .retry_at()
                    .saturating_duration_since(self.clock.now())
                    .max(Duration::from_millis(10))
            };
            tokio::select! {
                _ = tokio::time::sleep_until((self.clock.now() + wait).min(deadline)) => {}
                _ = shutdown.cancelled() => return None,
            }
        }
    }

    /// Deliver, then journal the outcome (retrying while the journal is down: the endpoint
    /// already has it, and a replay after a restart would be harmless but noisy).
    async fn run(self: Arc<Self>, mut f: Followup, shutdown: CancellationToken) {
        let id = (f.key.clone(), f.target.clone());
        if let Some(ending) = self.deliver(&mut f, &shutdown).await {
            let (kind, label) = (f.kind.as_str(), ending.label());
            match ending {
                Ending::Delivered | Ending::Unknown => {
                    tracing::info!(key = %f.key, backend = %f.target, result = label, "follow-up delivered")
                }
                _ => {
                    tracing::warn!(key = %f.key, backend = %f.target, result = label, "follow-up given up; see the request's history")
                }
            }
            loop {
                match self
                    .store
                    .followup_finished(f.clone(), ending, self.clock.now_ms())
                    .await
                {
                    Ok(()) | Err(StoreError::Closed) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "follow-up outcome not journaled yet; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                }
            }
            telemetry::followup(kind, label);
        }
        self.in_flight
            .lock()
            .expect("follow-up lock is never poisoned")
            .remove(&id);
    }
}

/// Sweep the journal for pending follow-ups now, at every doorbell and every [`SWEEP`], and
/// deliver each in its own task until `shutdown`.
/// `stop` ends the sweeping; `abort` abandons deliveries in flight (they stay pending).
pub fn start(
    deliverer: Deliverer,
    stop: CancellationToken,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let d = Arc::new(deliverer);
    tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            match d.store.pending_followups().await {
                Ok(list) => {
                    for f in list {
                        let fresh = d
                            .in_flight
                            .lock()
                            .expect("follow-up lock is never poisoned")
                            .insert((f.key.clone(), f.target.clone()));
                        if fresh {
                            tasks.spawn(d.clone().run(f, shutdown.clone()));
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read pending follow-ups"),
            }
            while tasks.try_join_next().is_some() {}
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = d.store.followups_queued() => {}
                _ = tokio::time::sleep(SWEEP) => {}
            }
        }
        while tasks.join_next().await.is_some() {}
    })
}
