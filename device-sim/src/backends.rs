//! Mock dispatch backends that speak the real HTTP contract of DESIGN §4: `POST /{backend}`
//! with an Idempotency-Key. A key seen before is answered 409 and not counted twice. Each
//! backend can be told how to behave (accept, fail with a status, delay, hang), so tests can
//! drive every failure the gateway must survive.
//!
//! The cancellation contract too: `POST /{backend}/{request_id}/cancel` with
//! `Idempotency-Key: {request_id}:cancel` is answered 200 for a request the backend took,
//! 404 for one it never took, 409 for a repeated key. A notification webhook (an SMS
//! gateway) is just another `POST /{backend}`: its calls are in [`MockBackends::received`].
//!
//! `POST /{backend}/{request_id}/updates` takes the "pressed again" update call (README) and
//! records it.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde::Serialize;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What a backend does with the next request.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// 200 with `{"ref": ..., "eta_s": ...}` (a fresh ref per request).
    Accept,
    /// Answer with this status (and `Retry-After` seconds when given), not recording the key.
    Status(u16, Option<u64>),
    /// Record the key, then answer 200 only after this delay (longer than the gateway's attempt
    /// timeout: the gateway gives up, retries with the same key and gets 409).
    SlowAccept(Duration),
    /// Never answer within this time, not recording the key.
    Hang(Duration),
}

/// One request a backend took (first time its key was seen).
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    /// The backend's name (path segment).
    pub backend: String,
    /// The Idempotency-Key header.
    pub key: String,
    /// X-Yijian-Attempt.
    pub attempt: Option<u32>,
    /// `Authorization` header, if any.
    pub authorization: Option<String>,
    /// Arrival, epoch milliseconds.
    pub arrived_ms: i64,
    /// Arrival, epoch microseconds (for latency measurement).
    pub arrived_us: i64,
    /// `device.id` of the body.
    pub device_id: String,
    /// `press.id` of the body.
    pub press_id: String,
    /// The body (`null` when the backends were started with `keep_bodies = false`).
    pub body: serde_json::Value,
}

/// Every attempt that reached a backend, accepted or not.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    /// The backend.
    pub backend: String,
    /// The Idempotency-Key header.
    pub key: String,
    /// X-Yijian-Attempt.
    pub attempt: Option<u32>,
    /// Arrival, epoch ms.
    pub arrived_ms: i64,
    /// The status answered.
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    hits: Vec<Hit>,
    keys: HashSet<(String, String)>,
    duplicates: u64,
    /// Every attempt, accepted or not.
    attempts: u64,
    /// Per-backend queue of behaviours for the next requests; then the default.
    scripts: HashMap<String, VecDeque<Behaviour>>,
    /// Per-backend standing behaviour.
    standing: HashMap<String, Behaviour>,
    counter: u64,
    /// Cancellations taken (first time their key was seen), in arrival order.
    cancels: Vec<Received>,
    /// Every cancellation attempt, accepted or not.
    cancel_hits: Vec<Hit>,
    cancel_keys: HashSet<(String, String)>,
    /// Per-backend queue of behaviours for the next cancellations.
    cancel_scripts: HashMap<String, VecDeque<Behaviour>>,
}

/// Options of `yijian-sim backends`.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Added before every answer.
    pub latency: Duration,
    /// Probability of answering 503 instead of accepting.
    pub fail_rate: f64,
    /// Keep each request's whole body (tests); a load run keeps only ids to bound memory.
    pub keep_bodies: bool,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            latency: Duration::ZERO,
            fail_rate: 0.0,
            keep_bodies: true,
        }
    }
}

/// Running mock backends; cheap to clone.
#[derive(Clone)]
pub struct MockBackends {
    /// Where they listen.
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    opts: Arc<MockOptions>,
    stop: CancellationToken,
    /// Update calls taken so far (a watch, so tests wait without sleeping).
    updates: Arc<tokio::sync::watch::Sender<Vec<Received>>>,
}

fn epoch_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl MockBackends {
    /// Serve on `listener` until dropped or stopped.
    pub fn start(listener: TcpListener, opts: MockOptions) -> std::io::Result<MockBackends> {
        let addr = listener.local_addr()?;
        let m = MockBackends {
            addr,
            inner: Arc::new(Mutex::new(Inner::default())),
            opts: Arc::new(opts),
            stop: CancellationToken::new(),
            updates: Arc::new(tokio::sync::watch::channel(Vec::new()).0),
        };
        let app = Router::new()
            .route("/received", get(list_all))
            .route("/:backend", post(take))
            .route("/:backend/:request/cancel", post(take_cancel))
            .route("/:backend/:request_id/updates", post(take_update))
            .with_state(m.clone());
        let stop = m.stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Ok(m)
    }

    /// Bind 127.0.0.1 on a free port and serve.
    pub async fn start_local(opts: MockOptions) -> std::io::Result<MockBackends> {
        MockBackends::start(TcpListener::bind("127.0.0.1:0").await?, opts)
    }

    /// `http://addr/{backend}`.
    pub fn url(&self, backend: &str) -> String {
        format!("http://{}/{}", self.addr, backend)
    }

    /// Set how `backend` answers from now on.
    pub fn set(&self, backend: &str, b: Behaviour) {
        self.inner
            .lock()
            .expect("lock")
            .standing
            .insert(backend.to_owned(), b);
    }

    /// Queue behaviours for `backend`'s next requests (then its standing behaviour).
    pub fn script(&self, backend: &str, bs: impl IntoIterator<Item = Behaviour>) {
        self.inner
            .lock()
            .expect("lock")
            .scripts
            .entry(backend.to_owned())
            .or_default()
            .extend(bs);
    }

    /// Requests taken (unique keys), in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().expect("lock").received.clone()
    }

    /// Requests taken by one backend.
    pub fn received_by(&self, backend: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.backend == backend)
            .collect()
    }

    /// Update calls taken, in arrival order (`key` is their Idempotency-Key).
    pub fn updates(&self) -> Vec<Received> {
        self.updates.borrow().clone()
    }

    /// Wait until at least `n` update calls arrived; returns them.
    pub async fn wait_updates(&self, n: usize, timeout: Duration) -> Option<Vec<Received>> {
        let mut rx = self.updates.subscribe();
        let r = match tokio::time::timeout(timeout, rx.wait_for(|u| u.len() >= n)).await {
            Ok(Ok(u)) => Some(u.clone()),
            _ => None,
        };
        r
    }

    /// How many attempts arrived (every status).
    pub fn attempts(&self) -> u64 {
        self.inner.lock().expect("lock").attempts
    }

    /// Every attempt that arrived, in order (only kept with `keep_bodies`).
    pub fn hits(&self) -> Vec<Hit> {
        self.inner.lock().expect("lock").hits.clone()
    }

    /// Repeated keys answered 409.
    pub fn duplicates(&self) -> u64 {
        self.inner.lock().expect("lock").duplicates
    }

    /// Queue behaviours for `backend`'s next cancellations (then: answer by the contract).
    pub fn script_cancel(&self, backend: &str, bs: impl IntoIterator<Item = Behaviour>) {
        self.inner
            .lock()
            .expect("lock")
            .cancel_scripts
            .entry(backend.to_owned())
            .or_default()
            .extend(bs);
    }

    /// Cancellations taken (unique keys), in arrival order; `key` is the Idempotency-Key.
    pub fn cancels(&self) -> Vec<Received> {
        self.inner.lock().expect("lock").cancels.clone()
    }

    /// Every cancellation attempt that arrived, in order.
    pub fn cancel_hits(&self) -> Vec<Hit> {
        self.inner.lock().expect("lock").cancel_hits.clone()
    }

    /// Stop serving.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

async fn list_all(State(m): State<MockBackends>) -> Json<serde_json::Value> {
    let inner = m.inner.lock().expect("lock");
    Json(
        serde_json::json!({"received": inner.received, "duplicates": inner.duplicates, "attempts": inner.attempts, "cancels": inner.cancels}),
    )
}

async fn take_cancel(
    State(m): State<MockBackends>,
    Path((backend, request)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived_us = epoch_us();
    let arrived_ms = arrived_us / 1000;
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let Some(key) = header("idempotency-key") else {
        return (StatusCode::BAD_REQUEST, "missing Idempotency-Key").into_response();
    };
    let attempt = header("x-yijian-attempt").and_then(|a| a.parse().ok());
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "body is not JSON").into_response();
    };
    let (status, delay) = {
        let mut inner = m.inner.lock().expect("lock");
        let scripted = inner
            .cancel_scripts
            .get_mut(&backend)
            .and_then(VecDeque::pop_front);
        let had = inner.keys.contains(&(backend.clone(), request.clone()));
        let repeated = inner.cancel_keys.contains(&(backend.clone(), key.clone()));
        let (status, delay) = match scripted {
            Some(Behaviour::Status(s, _)) => (s, Duration::ZERO),
            Some(Behaviour::Hang(d)) => (504, d),
            _ if repeated => (409, Duration::ZERO),
            _ if !had => (404, Duration::ZERO),
            _ => (200, Duration::ZERO),
        };
        inner.cancel_hits.push(Hit {
            backend: backend.clone(),
            key: key.clone(),
            attempt,
            arrived_ms,
            status,
        });
        if status == 200 {
            inner.cancel_keys.insert((backend.clone(), key.clone()));
            inner.cancels.push(Received {
                backend: backend.clone(),
                key,
                attempt,
                authorization: header("authorization"),
                arrived_ms,
                arrived_us,
                device_id: String::new(),
                press_id: String::new(),
                body,
            });
        }
        (status, delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        Json(serde_json::json!({"request_id": request, "cancelled": status == 200})),
    )
        .into_response()
}

async fn take_update(
    State(m): State<MockBackends>,
    Path((backend, _request_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "body is not JSON").into_response();
    };
    let arrived_us = epoch_us();
    let text = |p: &str| {
        body.pointer(p)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let (device_id, press_id) = (text("/device/id"), text("/press/id"));
    let r = Received {
        backend,
        key: header("idempotency-key").unwrap_or_default(),
        attempt: header("x-yijian-attempt").and_then(|a| a.parse().ok()),
        authorization: header("authorization"),
        arrived_ms: arrived_us / 1000,
        arrived_us,
        device_id,
        press_id,
        body,
    };
    m.updates.send_modify(|u| u.push(r));
    StatusCode::NO_CONTENT.into_response()
}

async fn take(
    State(m): State<MockBackends>,
    Path(backend): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived_us = epoch_us();
    let arrived_ms = arrived_us / 1000;
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let Some(key) = header("idempotency-key") else {
        return (StatusCode::BAD_REQUEST, "missing Idempotency-Key").into_response();
    };
    let attempt = header("x-yijian-attempt").and_then(|a| a.parse().ok());
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "body is not JSON").into_response();
    };
    if !m.opts.latency.is_zero() {
        tokio::time::sleep(m.opts.latency).await;
    }
    let random_fail =
        m.opts.fail_rate > 0.0 && rand::thread_rng().gen_bool(m.opts.fail_rate.min(1.0));
    // Decide, and record, under the lock; sleep outside it.
    let (status, delay, reference) = {
        let mut inner = m.inner.lock().expect("lock");
        let behaviour = inner
            .scripts
            .get_mut(&backend)
            .and_then(VecDeque::pop_front)
            .or_else(|| inner.standing.get(&backend).cloned())
            .unwrap_or(Behaviour::Accept);
        let behaviour = if random_fail {
            Behaviour::Status(503, None)
        } else {
            behaviour
        };
        let seen = inner.keys.contains(&(backend.clone(), key.clone()));
        let (status, delay, retry_after) = match behaviour {
            Behaviour::Status(s, ra) => (s, Duration::ZERO, ra),
            Behaviour::Hang(d) => (504, d, None),
            _ if seen => (409, Duration::ZERO, None),
            Behaviour::Accept => (200, Duration::ZERO, None),
            Behaviour::SlowAccept(d) => (200, d, None),
        };
        inner.attempts += 1;
        if m.opts.keep_bodies {
            inner.hits.push(Hit {
                backend: backend.clone(),
                key: key.clone(),
                attempt,
                arrived_ms,
                status,
            });
        }
        if status == 409 {
            inner.duplicates += 1;
        }
        let mut reference = None;
        if status == 200 {
            inner.keys.insert((backend.clone(), key.clone()));
            inner.counter += 1;
            reference = Some(format!("{}-{}", backend.to_uppercase(), inner.counter));
            let text = |p: &str| {
                body.pointer(p)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            let (device_id, press_id) = (text("/device/id"), text("/press/id"));
            inner.received.push(Received {
                backend: backend.clone(),
                key,
                attempt,
                authorization: header("authorization"),
                arrived_ms,
                arrived_us,
                device_id,
                press_id,
                body: if m.opts.keep_bodies {
                    body
                } else {
                    serde_json::Value::Null
                },
            });
        }
        ((status, retry_after), delay, reference)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (status, retry_after) = status;
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match reference {
        Some(r) => (code, Json(serde_json::json!({"ref": r, "eta_s": 600}))).into_response(),
        None => (
            code,
            Json(serde_json::json!({"error": code.canonical_reason()})),
        )
            .into_response(),
    };
    if let Some(secs) = retry_after {
        if let Ok(v) = secs.to_string().parse() {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
    }
    resp
}
