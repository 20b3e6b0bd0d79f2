//! Admin endpoints: the device registry (list, show, rotate, revoke) and the running
//! configuration. Role `admin` only ([`super::access::access`]).

use super::{ApiError, ApiState};
use crate::lifecycle::{self, LifecycleError};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, MethodRouter};
use axum::Json;
use serde_json::{json, Value};

/// The admin routes, (method, axum path): part of [`super::routes`].
pub(super) const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/devices"),
    ("GET", "/api/v1/devices/:id"),
    ("POST", "/api/v1/devices/:id/rotate"),
    ("POST", "/api/v1/devices/:id/revoke"),
    ("GET", "/api/v1/config"),
];

/// The handler of one route of [`ROUTES`].
pub(super) fn handler(method: &str, path: &str) -> Option<MethodRouter<ApiState>> {
    Some(match (method, path) {
        ("GET", "/api/v1/devices") => get(list),
        ("GET", "/api/v1/devices/:id") => get(show),
        ("POST", "/api/v1/devices/:id/rotate") => post(rotate),
        ("POST", "/api/v1/devices/:id/revoke") => post(revoke),
        ("GET", "/api/v1/config") => get(config),
        _ => return None,
    })
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            LifecycleError::Revoked(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            LifecycleError::Store(s) => s.into(),
            LifecycleError::Io(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

/// Run a lifecycle command off the async runtime (it opens its own journal connection).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LifecycleError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("task failed: {e}"),
            )
        })?
        .map_err(Into::into)
}

async fn list(State(s): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let devices = s.store.devices().await?;
    Ok(Json(json!({"devices": devices})))
}

async fn show(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let db = s.config.db_path();
    let d = blocking(move || lifecycle::show(&db, &id)).await?;
    Ok(Json(serde_json::to_value(d).expect("records serialize")))
}

async fn rotate(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let db = s.config.db_path();
    let shown = id.clone();
    let secret = blocking(move || lifecycle::rotate(&db, &id)).await?;
    tracing::info!(device_id = %shown, "device secret rotated through the API");
    Ok(Json(json!({"device_id": shown, "secret": secret})))
}

async fn revoke(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let db = s.config.db_path();
    let shown = id.clone();
    blocking(move || lifecycle::revoke(&db, &id)).await?;
    tracing::info!(device_id = %shown, "device revoked through the API");
    Ok(Json(json!({"device_id": shown, "revoked": true})))
}

/// The running configuration, with token digests left out.
async fn config(State(s): State<ApiState>) -> Json<Value> {
    let mut v = serde_json::to_value(&*s.config).expect("the configuration serializes");
    if let Some(tokens) = v.pointer_mut("/api/tokens").and_then(Value::as_array_mut) {
        for t in tokens {
            if let Some(o) = t.as_object_mut() {
                o.remove("sha256");
            }
        }
    }
    Json(v)
}
