//! Stage 5 of the path, after the journal — dispatch: each journaled [`Request`] goes to its
//! service's backends in order (DESIGN §4): per-attempt timeout, exponential backoff with
//! jitter, failover, a circuit breaker per backend, and escalation to `desk` — the built-in
//! operator queue — when the service deadline passes, every backend refuses, or `desk` is
//! next in line.
//!
//! Nothing is dropped: until a request is dispatched or escalated its outbox row stays in the
//! journal and is replayed at the next start; the Idempotency-Key makes a replay harmless.
//!
//! This file is the queue and the worker pool: requests in, one task per request, its ending
//! journaled. The decision table of a request's routing is `decide.rs`, the loop that carries
//! it out `attempt.rs`. Every timer reads the [`Clock`] handed to [`start`].

mod attempt;
mod backend;
pub mod backoff;
pub mod breaker;
pub mod decide;
pub mod followup;
pub mod http;
pub mod update;

use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::store::RESIDENT_UNKNOWN_TAG;
use crate::store::{NotifyContacts, Request, Store, StoreError};
use crate::telemetry;
use attempt::{Attempts, Ending};
use backend::Backend;
use decide::{reason, Policy};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Where intake (and the outbox replay) hand requests over; cheap to clone.
#[derive(Clone)]
pub struct DispatchHandle {
    tx: mpsc::Sender<Request>,
    /// Cancellation tokens of requests being dispatched, by request id.
    active: Arc<Mutex<HashMap<String, CancellationToken>>>,
    /// "Pressed again" updates for the backend that holds a request.
    updates: update::Updater,
}

impl DispatchHandle {
    /// Queue a journaled request for dispatch.
    pub async fn submit(&self, req: Request) {
        if self.tx.send(req).await.is_err() {
            // Shutting down: the outbox row stays and the next start replays it.
            tracing::debug!("dispatcher stopped; request stays in the outbox");
        }
    }

    /// Tell the backend holding a request that the resident pressed again (best effort).
    pub fn pressed_again(&self, update: crate::store::RequestUpdate) {
        self.updates.send(update);
    }

    /// Stop dispatching a request the resident cancelled.
    pub fn cancel(&self, request_id: &str, _accepted_by: Option<String>) {
        if let Some(t) = self
            .active
            .lock()
            .expect("dispatch lock is never poisoned")
            .get(request_id)
        {
            t.cancel();
        }
    }
}

struct Dispatcher {
    store: Store,
    client: reqwest::Client,
    config: Arc<Config>,
    backends: Arc<HashMap<String, Backend>>,
    active: Arc<Mutex<HashMap<String, CancellationToken>>>,
    shutdown: CancellationToken,
    /// Deadlines, backoff and journal timestamps read it (tests drive it).
    clock: Clock,
}

/// Build the dispatcher and start its loop, and the follow-up deliverer beside it (both
/// tasks are returned). Fails when a backend's token variable is missing.
///
/// Shutdown has two phases: `stop` ends the taking of new work (what is queued stays in the
/// outbox for the next start) while dispatches in flight go on; `abort` abandons those too
/// (their outbox rows remain). The tasks end when both their loop and their in-flight work have.
///
/// `clock` is what every deadline, backoff, `Retry-After` and breaker timer reads:
/// `Clock::system()` in the gateway, a paused tokio clock in tests.
pub fn start(
    config: Arc<Config>,
    store: Store,
    stop: CancellationToken,
    abort: CancellationToken,
    clock: Clock,
) -> Result<(DispatchHandle, Vec<tokio::task::JoinHandle<()>>), ConfigError> {
    let backends = backend::configured(&config, &clock)?;
    telemetry::escalation_reasons(reason::ALL);
    telemetry::backend_updates_at_zero(config.backends.keys());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .user_agent(concat!("yijian-gateway/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ConfigError {
            source_name: None,
            problems: vec![format!("HTTP client: {e}")],
        })?;
    let updates = update::Updater::new(
        client.clone(),
        backends
            .iter()
            .map(|(n, b)| (n.clone(), (b.http.url.clone(), b.http.token.clone())))
            .collect(),
    );
    let (tx, mut rx) = mpsc::channel::<Request>(4096);
    let active = Arc::new(Mutex::new(HashMap::new()));
    let permits = Arc::new(Semaphore::new(config.dispatch.max_in_flight));
    let backends = Arc::new(backends);
    let followups = followup::start(
        followup::Deliverer::new(
            store.clone(),
            client.clone(),
            config.clone(),
            backends.clone(),
            clock.clone(),
        ),
        stop.clone(),
        abort.clone(),
    );
    let d = Arc::new(Dispatcher {
        store,
        client,
        config,
        backends,
        active: active.clone(),
        shutdown: abort,
        clock,
    });
    let task = tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let req = tokio::select! {
                _ = stop.cancelled() => break,
                r = rx.recv() => match r { Some(r) => r, None => break },
            };
            let permit = tokio::select! {
                _ = stop.cancelled() => break,
                p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            let d = d.clone();
            let span = telemetry::request_span(
                &req.id,
                req.device_id.as_deref().unwrap_or(""),
                req.press().map_or("", |p| p.id.as_str()),
                req.service,
            );
            tasks.spawn(
                async move {
                    d.run(req).await;
                    drop(permit);
                }
                .instrument(span),
            );
            while tasks.try_join_next().is_some() {}
        }
        // Dispatches in flight finish (or, on abort, stop and leave their outbox rows). Those
        // that finished since the last spawn are still in the set until joined: not in flight.
        while tasks.try_join_next().is_some() {}
        let in_flight = tasks.len();
        if in_flight > 0 {
            tracing::info!(in_flight, "letting dispatches in flight finish");
        }
        while tasks.join_next().await.is_some() {}
    });
    Ok((
        DispatchHandle {
            tx,
            active,
            updates,
        },
        vec![task, followups],
    ))
}

impl Dispatcher {
    async fn run(&self, req: Request) {
        let token = self.shutdown.child_token();
        self.active
            .lock()
            .expect("dispatch lock is never poisoned")
            .insert(req.id.clone(), token.clone());
        let ending = self.route(&req, &token).await;
        self.active
            .lock()
            .expect("dispatch lock is never poisoned")
            .remove(&req.id);
        match ending {
            Ending::Dispatched {
                backend,
                reference,
                eta_s,
            } => {
                let at = self.clock.now_ms();
                let applied = self
                    .journal(|| {
                        self.store
                            .dispatched(&req.id, &backend, reference.clone(), eta_s, at)
                    })
                    .await;
                // The device hears `dispatched` from the change feed (feedback::changes).
                if applied {
                    let since = req.press().map_or(req.created_at, |p| p.at);
                    if let Some(secs) = telemetry::since_press(since, at) {
                        telemetry::press_to_dispatched(req.service, secs);
                    }
                    tracing::debug!(backend = %backend, "request dispatched");
                }
            }
            Ending::Escalated(why) => {
                let contacts = self.contacts_policy(&req);
                let applied = self
                    .journal(|| {
                        self.store
                            .escalated(&req.id, why, contacts.clone(), self.clock.now_ms())
                    })
                    .await;
                // The device hears `escalated` from the change feed.
                if applied {
                    telemetry::escalation(req.service, why);
                    tracing::warn!(reason = why, "request escalated to the desk");
                }
            }
            Ending::Abandoned => {}
        }
    }

    /// Write an outcome, retrying while the journal is down: the backend already has the
    /// request, so giving up here would leave it owned by nobody in the journal's eyes.
    async fn journal<F, Fut>(&self, mut write: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool, StoreError>>,
    {
        loop {
            match write().await {
                Ok(applied) => return applied,
                Err(StoreError::Closed) => return false,
                Err(e) => {
                    tracing::warn!(error = %e, "dispatch outcome not journaled yet; retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    /// The `resident` block of the body: the record as on file now (a phone number corrected
    /// since the press is the one the crew should call). `null` when the device is bound to
    /// nobody on record: the request then carries the `resident_unknown` tag from intake.
    async fn resident_block(&self, req: &Request) -> serde_json::Value {
        let Some(id) = req.resident_id.clone() else {
            return serde_json::Value::Null;
        };
        match self.store.resident(&id).await {
            Ok(Some(r)) => r.backend_block(),
            Ok(None) => {
                if !req.tags.iter().any(|t| t == RESIDENT_UNKNOWN_TAG) {
                    tracing::warn!(request_id = %req.id, resident_id = ?req.resident_id, "resident no longer on record");
                }
                serde_json::Value::Null
            }
            Err(e) => {
                // The journal read failed: the backend still gets the id to look up; help must
                // not wait for the residents table.
                tracing::error!(request_id = %req.id, error = %e, "resident not read; sending the id only");
                serde_json::json!({"id": req.resident_id})
            }
        }
    }

    /// Whether this request's contacts are notified when it goes to the desk.
    fn contacts_policy(&self, req: &Request) -> NotifyContacts {
        if !self.config.route(req.service).notify_contacts {
            return NotifyContacts::No;
        }
        match &self.config.notify.backend {
            Some(b) if self.backends.contains_key(b) => NotifyContacts::Via(b.clone()),
            _ => NotifyContacts::Unconfigured,
        }
    }

    async fn route(&self, req: &Request, token: &CancellationToken) -> Ending {
        let route = self.config.route(req.service);
        // The deadline runs from the request's creation (a replayed request has less time
        // left), read on the same clock the waits are measured on.
        let deadline = attempt::deadline(&self.clock, req.created_at, route.deadline);
        let callback = format!(
            "{}/api/v1/requests/{}/events",
            self.config.public_url(),
            req.id
        );
        let body = http::body(req, self.resident_block(req).await, &callback);
        let dcfg = &self.config.dispatch;
        let policy = Policy {
            backends: &route.backends,
            attempts_per_backend: dcfg.attempts_per_backend,
            attempt_timeout: route.attempt_timeout,
            backoff_initial: Duration::from_millis(dcfg.backoff_initial_ms),
            backoff_max: Duration::from_millis(dcfg.backoff_max_ms),
        };
        Attempts {
            transport: &self.client,
            backends: &self.backends,
            clock: &self.clock,
            log: &self.store,
            shutdown: &self.shutdown,
        }
        .route(&req.id, req.attempts, policy, deadline, body, token)
        .await
    }
}
