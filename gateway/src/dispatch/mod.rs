//! Stage 5 of the path — dispatch: each journaled [`Request`] goes to its service's backends in
//! order (DESIGN §4): per-attempt timeout, exponential backoff with jitter, failover, a circuit
//! breaker per backend, and escalation to `desk` — the built-in operator queue — when the
//! service deadline passes, every backend refuses, or `desk` is next in line.
//!
//! Nothing is dropped: until a request is dispatched or escalated its outbox row stays in the
//! journal and is replayed at the next start; the Idempotency-Key makes a replay harmless.

pub mod backoff;
pub mod breaker;
pub mod followup;
pub mod http;
pub mod update;

use crate::clock::now_ms;
use crate::config::{Config, ConfigError, DESK};
use crate::feedback::FeedbackSender;
use crate::residents::{self, RESIDENT_UNKNOWN_TAG};
use crate::store::{AttemptRecord, Notice, NotifyContacts, Request, Store, StoreError};
use crate::telemetry;
use breaker::Breaker;
use http::{AttemptResult, HttpBackend};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
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

/// One configured backend and its breaker (shared by dispatch and follow-ups: a dead backend
/// is dead for both).
struct Backend {
    http: HttpBackend,
    breaker: Breaker,
}

struct Dispatcher {
    store: Store,
    feedback: FeedbackSender,
    client: reqwest::Client,
    config: Arc<Config>,
    backends: Arc<HashMap<String, Backend>>,
    active: Arc<Mutex<HashMap<String, CancellationToken>>>,
    shutdown: CancellationToken,
}

/// Why a request went to the desk (the `reason` label of `yijian_escalations_total`).
mod reason {
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

enum Ending {
    Dispatched {
        backend: String,
        reference: Option<String>,
        eta_s: Option<u32>,
    },
    Escalated(&'static str),
    /// Cancelled by the resident, or the gateway is stopping (the outbox keeps it).
    Abandoned,
}

/// Build the dispatcher and start its loop, and the follow-up deliverer beside it (both
/// tasks are returned). Fails when a backend's token variable is missing.
///
/// Shutdown has two phases: `stop` ends the taking of new work (what is queued stays in the
/// outbox for the next start) while dispatches in flight go on; `abort` abandons those too
/// (their outbox rows remain). The tasks end when both their loop and their in-flight work have.
pub fn start(
    config: Arc<Config>,
    store: Store,
    feedback: FeedbackSender,
    stop: CancellationToken,
    abort: CancellationToken,
) -> Result<(DispatchHandle, Vec<tokio::task::JoinHandle<()>>), ConfigError> {
    let mut problems = Vec::new();
    let mut backends = HashMap::new();
    for (name, b) in &config.backends {
        let token = match &b.token_env {
            Some(var) => match std::env::var(var) {
                Ok(t) if !t.is_empty() => Some(t),
                _ => {
                    problems.push(format!(
                        "[backends.{name}]: environment variable {var} (token_env) is not set"
                    ));
                    None
                }
            },
            None => None,
        };
        let url = match reqwest::Url::parse(&b.url) {
            Ok(u) => u,
            Err(e) => {
                problems.push(format!("[backends.{name}]: url: {e}"));
                continue;
            }
        };
        let breaker = Breaker::new(
            name,
            config.dispatch.breaker_failures,
            Duration::from_millis(config.dispatch.breaker_cooldown_ms),
            crate::clock::Clock::system(),
        );
        backends.insert(
            name.clone(),
            Backend {
                http: HttpBackend {
                    name: name.clone(),
                    url,
                    token,
                },
                breaker,
            },
        );
    }
    if !problems.is_empty() {
        return Err(ConfigError {
            source_name: None,
            problems,
        });
    }
    telemetry::escalation_reasons(reason::ALL);
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
        ),
        stop.clone(),
        abort.clone(),
    );
    let d = Arc::new(Dispatcher {
        store,
        feedback,
        client,
        config,
        backends,
        active: active.clone(),
        shutdown: abort,
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
            let span = telemetry::request_span(&req.id, &req.device_id, &req.press.id, req.service);
            tasks.spawn(
                async move {
                    d.run(req).await;
                    drop(permit);
                }
                .instrument(span),
            );
            while tasks.try_join_next().is_some() {}
        }
        // Dispatches in flight finish (or, on abort, stop and leave their outbox rows).
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
                let at = now_ms();
                let notice = self
                    .journal(|| {
                        self.store
                            .dispatched(&req.id, &backend, reference.clone(), eta_s, at)
                    })
                    .await;
                if let Some(notice) = notice {
                    if let Some(secs) = telemetry::since_press(req.press.at, at) {
                        telemetry::press_to_dispatched(req.service, secs);
                    }
                    tracing::debug!(backend = %backend, "request dispatched");
                    self.feedback.notify(&notice).await;
                }
            }
            Ending::Escalated(why) => {
                let contacts = self.contacts_policy(&req);
                let notice = self
                    .journal(|| {
                        self.store
                            .escalated(&req.id, why, contacts.clone(), now_ms())
                    })
                    .await;
                if let Some(notice) = notice {
                    telemetry::escalation(req.service, why);
                    tracing::warn!(reason = why, "request escalated to the desk");
                    self.feedback.notify(&notice).await;
                }
            }
            Ending::Abandoned => {}
        }
    }

    /// Write an outcome, retrying while the journal is down: the backend already has the
    /// request, so giving up here would leave it owned by nobody in the journal's eyes.
    async fn journal<F, Fut>(&self, mut write: F) -> Option<Notice>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<Notice>, StoreError>>,
    {
        loop {
            match write().await {
                Ok(n) => return n,
                Err(StoreError::Closed) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "dispatch outcome not journaled yet; retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return None,
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
        match self.store.read(move |c| residents::load(c, &id)).await {
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
        let remaining_ms =
            (req.created_at + route.deadline.as_millis() as i64 - now_ms()).max(0) as u64;
        let deadline = Instant::now() + Duration::from_millis(remaining_ms);
        let callback = format!(
            "{}/api/v1/requests/{}/events",
            self.config.public_url(),
            req.id
        );
        let body = http::body(req, self.resident_block(req).await, &callback);
        let dcfg = &self.config.dispatch;
        let (initial, max) = (
            Duration::from_millis(dcfg.backoff_initial_ms),
            Duration::from_millis(dcfg.backoff_max_ms),
        );
        let mut attempt_no = req.attempts;
        let mut refused: HashSet<&str> = HashSet::new();
        // A backend's `Retry-After`: not asked again before then, even in the next round.
        let mut not_before: HashMap<&str, Instant> = HashMap::new();
        let http_backends: Vec<&str> = route
            .backends
            .iter()
            .map(String::as_str)
            .filter(|b| *b != DESK)
            .collect();
        let mut round = 0u32;
        loop {
            let mut failed_any = false;
            for (pos, name) in route.backends.iter().enumerate() {
                if name == DESK {
                    return Ending::Escalated(if pos == 0 {
                        reason::ROUTED
                    } else {
                        reason::FAILOVER
                    });
                }
                if refused.contains(name.as_str()) {
                    continue;
                }
                let Some(backend) = self.backends.get(name) else {
                    continue;
                };
                for i in 0..dcfg.attempts_per_backend {
                    if not_before
                        .get(name.as_str())
                        .is_some_and(|t| *t > Instant::now())
                    {
                        break;
                    }
                    if !backend.breaker.allow() {
                        break;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        return Ending::Escalated(reason::DEADLINE);
                    }
                    attempt_no += 1;
                    let timeout = route.attempt_timeout.min(deadline - now);
                    let started_ms = now_ms();
                    if token.is_cancelled() {
                        return Ending::Abandoned;
                    }
                    // A cancel does not abort an attempt in flight: the backend may be taking
                    // the request right now, and if it does, `dispatched` owes it a cancellation.
                    let result = tokio::select! {
                        r = http::attempt(&self.client, &backend.http, &req.id, attempt_no, body.clone(), timeout) => r,
                        _ = self.shutdown.cancelled() => return Ending::Abandoned,
                    };
                    let elapsed = now.elapsed();
                    telemetry::dispatch_attempt(name, result.label(), elapsed);
                    self.store
                        .attempt(AttemptRecord {
                            request_id: req.id.clone(),
                            backend: name.clone(),
                            attempt: attempt_no,
                            result: result.label(),
                            started_at: started_ms,
                            elapsed_ms: elapsed.as_millis() as u64,
                        })
                        .await;
                    match result {
                        AttemptResult::Accepted { reference, eta_s } => {
                            backend.breaker.success();
                            return Ending::Dispatched {
                                backend: name.clone(),
                                reference,
                                eta_s,
                            };
                        }
                        AttemptResult::Conflict => {
                            backend.breaker.success();
                            return Ending::Dispatched {
                                backend: name.clone(),
                                reference: None,
                                eta_s: None,
                            };
                        }
                        AttemptResult::Refused(status) => {
                            backend.breaker.success();
                            tracing::warn!(backend = %name, status, "backend refused the request");
                            refused.insert(name.as_str());
                            break;
                        }
                        AttemptResult::Failed { label, retry_after } => {
                            backend.breaker.failure();
                            if let Some(ra) = retry_after {
                                not_before.insert(name.as_str(), Instant::now() + ra);
                            }
                            failed_any = true;
                            tracing::debug!(backend = %name, result = label, "attempt failed");
                            if i + 1 < dcfg.attempts_per_backend {
                                let wait = retry_after.unwrap_or_else(|| {
                                    backoff::delay(
                                        round * dcfg.attempts_per_backend + i,
                                        initial,
                                        max,
                                        &mut rand::thread_rng(),
                                    )
                                });
                                if let Some(e) = self.pause(wait, deadline, token).await {
                                    return e;
                                }
                            }
                        }
                    }
                }
            }
            if !http_backends.is_empty() && http_backends.iter().all(|b| refused.contains(b)) {
                return Ending::Escalated(reason::REFUSED);
            }
            // Another round: once the first backend may be asked again (its circuit lets a
            // probe through, its Retry-After has passed), and after a backoff if something
            // failed. Either way no later than the deadline.
            let ready = http_backends
                .iter()
                .filter(|b| !refused.contains(*b))
                .filter_map(|b| self.backends.get(*b).map(|be| (b, be)))
                .map(|(b, be)| {
                    be.breaker
                        .retry_at()
                        .max(not_before.get(b).copied().unwrap_or_else(Instant::now))
                })
                .min()
                .unwrap_or(deadline);
            let ready_in = ready.saturating_duration_since(Instant::now());
            let wait = if failed_any {
                backoff::delay(round + 1, initial, max, &mut rand::thread_rng()).max(ready_in)
            } else {
                ready_in.max(Duration::from_millis(10))
            };
            if let Some(e) = self.pause(wait, deadline, token).await {
                return e;
            }
            round += 1;
        }
    }

    /// Sleep `wait`, but wake for the deadline, a cancel or shutdown.
    async fn pause(
        &self,
        wait: Duration,
        deadline: Instant,
        token: &CancellationToken,
    ) -> Option<Ending> {
        let until = (Instant::now() + wait).min(deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = token.cancelled() => return Some(Ending::Abandoned),
        }
        (Instant::now() >= deadline).then_some(Ending::Escalated(reason::DEADLINE))
    }
}
