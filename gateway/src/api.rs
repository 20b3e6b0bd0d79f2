//! The HTTP API (axum): health, readiness, metrics, the requests API for operators, and status
//! callbacks from backends. Every error is JSON `{"error": "..."}` with a 4xx status; a bad
//! request never produces a 500.

pub mod access;
pub mod auth;
pub mod devices;

use crate::clock::now_ms;
use crate::store::{
    self, ListFilter, Operation, OperatorAction, RequestState, Store, StoreError, Transition,
};
use crate::telemetry;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use yijian_wire::Service;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub struct Readiness {
    /// The broker's listener is up.
    pub broker: AtomicBool,
    /// Intake's subscriptions exist.
    pub intake: AtomicBool,
}

/// Shared by all handlers.
#[derive(Clone)]
pub struct ApiState {
    /// The journal.
    pub store: Store,
    /// Component readiness.
    pub ready: Arc<Readiness>,
    /// Prometheus rendering.
    pub metrics: PrometheusHandle,
    /// Tokens and roles (every route passes [`access::authorize`]).
    pub auth: Arc<auth::Auth>,
    /// The running configuration (admin endpoints: the journal's path, `GET /api/v1/config`).
    pub config: Arc<crate::config::Config>,
}

/// The operators' and backends' routes, (method, axum path); the admin routes are
/// [`devices::ROUTES`].
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/requests"),
    ("GET", "/api/v1/requests/:id"),
    ("POST", "/api/v1/requests/:id/ack"),
    ("POST", "/api/v1/requests/:id/close"),
    ("POST", "/api/v1/requests/:id/cancel"),
    ("POST", "/api/v1/requests/:id/events"),
];

/// Every route the API serves, as (method, axum path pattern). The router is built from this
/// list and nothing else, so a test can hold each route against the role it expects
/// (`every_api_endpoint_checks_the_token_and_its_role` in tests/tests/security.rs).
pub fn routes() -> impl Iterator<Item = (&'static str, &'static str)> {
    ROUTES.iter().chain(devices::ROUTES).copied()
}

/// The handler of one route of [`ROUTES`].
fn handler(method: &str, path: &str) -> Option<MethodRouter<ApiState>> {
    Some(match (method, path) {
        ("GET", "/healthz") => get(|| async { Json(json!({"status": "ok"})) }),
        ("GET", "/readyz") => get(readyz),
        ("GET", "/metrics") => get(metrics),
        ("GET", "/api/v1/requests") => get(list),
        ("GET", "/api/v1/requests/:id") => get(detail),
        ("POST", "/api/v1/requests/:id/ack") => post(ack),
        ("POST", "/api/v1/requests/:id/close") => post(close),
        ("POST", "/api/v1/requests/:id/cancel") => post(cancel),
        ("POST", "/api/v1/requests/:id/events") => post(events),
        _ => return None,
    })
}

/// The router: every route of [`routes`], nothing else.
pub fn router(state: ApiState) -> Router {
    let mut router = Router::new();
    for (method, path) in routes() {
        let h = handler(method, path)
            .or_else(|| devices::handler(method, path))
            .unwrap_or_else(|| panic!("the route table names {method} {path} but no handler"));
        router = router.route(path, h);
    }
    router
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            access::authorize,
        ))
        .with_state(state)
}

/// A JSON error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.message}))).into_response()
    }
}

/// Every error is JSON, including those axum answers before a handler runs: 405 for a wrong
/// method (an empty body) and extractor rejections such as a path that is not UTF-8 (plain
/// text). Their status and other headers (`Allow`) are kept; the text becomes `error`.
async fn json_errors(resp: Response) -> Response {
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(resp.status().is_client_error() || resp.status().is_server_error()) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| {
            parts
                .status
                .canonical_reason()
                .unwrap_or("error")
                .to_lowercase()
        });
    parts.headers.remove(axum::http::header::CONTENT_TYPE);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    (parts, Json(json!({"error": text}))).into_response()
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // The journal being unavailable is the server's problem, said plainly.
        tracing::error!(error = %e, "API request failed in the journal");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("journal unavailable: {e}"),
        )
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = match r {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ref other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, r.body_text())
    }
}

async fn readyz(State(s): State<ApiState>) -> Response {
    let broker = s.ready.broker.load(Ordering::Acquire);
    let intake = s.ready.intake.load(Ordering::Acquire);
    let store = s.store.healthy();
    let body = Json(
        json!({"ready": broker && intake && store, "broker": broker, "intake": intake, "store": store}),
    );
    if broker && intake && store {
        (StatusCode::OK, body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn metrics(State(s): State<ApiState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

fn parse_filter(q: &HashMap<String, String>) -> Result<ListFilter, ApiError> {
    let mut f = ListFilter {
        limit: 50,
        ..Default::default()
    };
    for (k, v) in q {
        match k.as_str() {
            "state" => f.state = Some(v.parse::<RequestState>().map_err(ApiError::bad)?),
            "service" => f.service = Some(v.parse::<Service>().map_err(ApiError::bad)?),
            "device" => f.device_id = Some(v.clone()),
            "cancel_requested" => {
                f.cancel_requested = Some(
                    v.parse::<bool>().map_err(|_| ApiError::bad("cancel_requested must be true or false"))?,
                )
            }
            "limit" => {
                f.limit = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| ApiError::bad("limit must be an integer from 1 to 1000"))?
            }
            other => {
                return Err(ApiError::bad(format!(
                    "unknown query parameter {other:?} (expected state, service, device, cancel_requested, limit)"
                )))
            }
        }
    }
    Ok(f)
}

async fn list(
    State(s): State<ApiState>,
    q: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad(e.body_text()))?;
    let filter = parse_filter(&q)?;
    let requests = s.store.requests(filter).await?;
    Ok(Json(json!({"requests": requests})))
}

async fn view(s: &ApiState, id: String) -> Result<Json<serde_json::Value>, ApiError> {
    let shown = id.clone();
    match s.store.request(&id).await? {
        Some(v) => Ok(Json(serde_json::to_value(v).expect("views serialize"))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no request {shown}"),
        )),
    }
}

async fn detail(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    view(&s, id).await
}

/// Body of an operator action (`ack`, `close`, `cancel`): optional; a note goes into the
/// request's history beside the operator's name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    #[serde(default)]
    note: Option<String>,
}

/// The note of an action's body (none for an empty body), or why it is refused.
fn action_note(body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let b: ActionBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("body must be {{\"note\": \"...\"}} or empty: {e}")))?;
    match b.note {
        Some(n) if n.chars().count() > 2000 || n.chars().any(|c| c.is_control() && c != '\n') => {
            Err(ApiError::bad(
                "note must be at most 2000 characters without control characters",
            ))
        }
        Some(n) if n.trim().is_empty() => Ok(None),
        n => Ok(n),
    }
}

async fn operator(
    s: ApiState,
    id: String,
    caller: auth::Caller,
    body: axum::body::Bytes,
    action: OperatorAction,
) -> Result<Json<serde_json::Value>, ApiError> {
    let note = match action_note(&body) {
        Ok(n) => n,
        // A request that does not exist is the first thing wrong with the call.
        Err(e) => {
            return match s.store.request(&id).await? {
                None => Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no request {id}"),
                )),
                Some(_) => Err(e),
            }
        }
    };
    let name = match action {
        OperatorAction::Ack => "ack",
        OperatorAction::Close => "close",
        OperatorAction::Cancel => "cancel",
    };
    let at = now_ms();
    let op = Operation {
        action,
        by: caller.name.to_string(),
        note,
    };
    match s.store.operator(&id, op, at).await {
        Ok(Transition::Applied {
            notice, created_at, ..
        }) => {
            telemetry::operator_action(name, "ok");
            match action {
                OperatorAction::Ack => {
                    telemetry::operator_answer((at - created_at).max(0) as f64 / 1000.0)
                }
                // The device hears a close or cancel from the change feed.
                OperatorAction::Close | OperatorAction::Cancel => {}
            }
            let (device_id, press_id) = who(&notice);
            tracing::info!(request_id = %id, device_id, press_id, action = name, operator = %caller.name, "operator action");
            view(&s, id).await
        }
        Ok(Transition::NotFound) => {
            telemetry::operator_action(name, "not_found");
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no request {id}"),
            ))
        }
        Ok(Transition::Forbidden) => Err(ApiError::new(StatusCode::FORBIDDEN, "not allowed")),
        Ok(Transition::Conflict(state)) => {
            telemetry::operator_action(name, "conflict");
            let why = match action {
                OperatorAction::Ack => {
                    format!("only an escalated request can be acknowledged; this one is {state}")
                }
                OperatorAction::Close | OperatorAction::Cancel => {
                    format!("request is already {state}")
                }
            };
            Err(ApiError::new(StatusCode::CONFLICT, why))
        }
        Err(e) => {
            telemetry::operator_action(name, "error");
            Err(e.into())
        }
    }
}

async fn ack(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Extension(caller): Extension<auth::Caller>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    operator(s, id, caller, body, OperatorAction::Ack).await
}

async fn close(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Extension(caller): Extension<auth::Caller>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    operator(s, id, caller, body, OperatorAction::Close).await
}

/// An operator cancels a request (e.g. after confirming by phone a resident's cancel press on
/// a rescue already on its way); the backend that accepted it is told.
async fn cancel(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Extension(caller): Extension<auth::Caller>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    operator(s, id, caller, body, OperatorAction::Cancel).await
}

/// Body of `POST /api/v1/requests/{id}/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    state: String,
    #[serde(default)]
    eta_s: Option<u32>,
    #[serde(default, rename = "ref")]
    reference: Option<String>,
}

async fn events(
    State(s): State<ApiState>,
    Extension(caller): Extension<auth::Caller>,
    Path(id): Path<String>,
    body: Result<Json<EventBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(body) = body.inspect_err(|_| telemetry::callback("bad_request"))?;
    let state: RequestState = body.state.parse().map_err(|_| {
        telemetry::callback("bad_request");
        ApiError::bad("state must be one of en_route|arrived|closed|cancelled")
    })?;
    if !matches!(
        state,
        RequestState::EnRoute
            | RequestState::Arrived
            | RequestState::Closed
            | RequestState::Cancelled
    ) {
        telemetry::callback("bad_request");
        return Err(ApiError::bad(
            "state must be one of en_route|arrived|closed|cancelled",
        ));
    }
    if body.reference.as_ref().is_some_and(|r| r.len() > 128) {
        telemetry::callback("bad_request");
        return Err(ApiError::bad("ref must be at most 128 characters"));
    }
    let backend = caller.backend.as_deref().map(str::to_owned);
    match s
        .store
        .callback(&id, backend, state, body.eta_s, body.reference, now_ms())
        .await?
    {
        Transition::Applied { notice, .. } => {
            telemetry::callback("ok");
            // The device hears it from the change feed.
            let (device_id, press_id) = who(&notice);
            tracing::info!(request_id = %id, device_id, press_id, %state, "backend callback");
            view(&s, id).await
        }
        Transition::NotFound => {
            telemetry::callback("not_found");
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no request {id}"),
            ))
        }
        Transition::Forbidden => {
            telemetry::callback("forbidden");
            tracing::warn!(request_id = %id, caller = %caller.name, "callback for a request dispatched to another backend");
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "request {id} was not dispatched to backend {}",
                    caller.backend.as_deref().unwrap_or("?")
                ),
            ))
        }
        Transition::Conflict(cur) => {
            telemetry::callback("conflict");
            Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("request is {cur}; it cannot become {state}"),
            ))
        }
    }
}

/// The device and press a transition is about, for the log line (empty when none).
fn who(notice: &Option<store::Notice>) -> (&str, &str) {
    match notice {
        Some(n) => (n.device_id.as_str(), n.press_id.as_deref().unwrap_or("")),
        None => ("", ""),
    }
}
