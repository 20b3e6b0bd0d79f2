//! Which role each endpoint of the HTTP API needs, and the middleware that enforces it with
//! the token table of [`super::auth`].
//!
//! - `operator`: list and view requests, acknowledge and close them.
//! - `backend`: status callbacks, only for requests dispatched to its own backend.
//! - `admin`: devices and configuration, and everything an operator may do.
//! - `metrics`: `/metrics` when it is not open.
//!
//! The policy is one table, [`access`]: an endpoint it does not name is admin-only.

use super::auth::Auth;
use crate::config::Role;
use crate::telemetry::security as telemetry;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Open,
    /// A token with one of these roles.
    Roles(&'static [Role]),
}

const OPERATORS: &[Role] = &[Role::Operator, Role::Admin];
const BACKENDS: &[Role] = &[Role::Backend];
const ADMINS: &[Role] = &[Role::Admin];
const SCRAPERS: &[Role] = &[Role::Metrics, Role::Operator, Role::Admin];

/// The policy: what `method` on the route `path` (axum's pattern, e.g. `/api/v1/requests/:id`)
/// needs. NOTE: a route not named here is admin-only, so a new endpoint is closed until it is
/// given a role here (and in SECURITY.md).
pub fn access(method: &Method, path: &str, metrics_open: bool) -> Access {
    match (method.as_str(), path) {
        (_, "/healthz" | "/readyz") => Access::Open,
        (_, "/metrics") if metrics_open => Access::Open,
        (_, "/metrics") => Access::Roles(SCRAPERS),
        ("GET", "/api/v1/requests" | "/api/v1/requests/:id") => Access::Roles(OPERATORS),
        (
            "POST",
            "/api/v1/requests/:id/ack"
            | "/api/v1/requests/:id/close"
            | "/api/v1/requests/:id/cancel",
        ) => Access::Roles(OPERATORS),
        ("POST", "/api/v1/requests/:id/events") => Access::Roles(BACKENDS),
        _ => Access::Roles(ADMINS),
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let mut r = (status, Json(json!({"error": message}))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

/// The middleware: 401 without a valid token, 403 with the wrong role; the [`Caller`] goes into
/// the request's extensions for handlers that need to know who it is.
pub async fn authorize(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    // No matched route: the fallback answers 404, which tells nothing.
    let Some(path) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
    else {
        return next.run(req).await;
    };
    let roles = match access(req.method(), &path, auth.metrics_open()) {
        Access::Open => return next.run(req).await,
        Access::Roles(r) => r,
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(presented) = presented.filter(|t| !t.is_empty()) else {
        telemetry::api_auth("missing", &path);
        return refuse(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs `Authorization: Bearer <token>`",
        );
    };
    let Some(caller) = auth.identify(presented).cloned() else {
        telemetry::api_auth("invalid", &path);
        return refuse(StatusCode::UNAUTHORIZED, "unknown token");
    };
    if !roles.contains(&caller.role) {
        telemetry::api_auth("forbidden", &path);
        let need: Vec<_> = roles.iter().map(|r| r.as_str()).collect();
        return refuse(
            StatusCode::FORBIDDEN,
            &format!(
                "role {} may not do this (needs {})",
                caller.role.as_str(),
                need.join(" or ")
            ),
        );
    }
    telemetry::api_auth("ok", &path);
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_closes_what_it_does_not_name() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(access(&get, "/healthz", false), Access::Open);
        assert_eq!(access(&get, "/metrics", true), Access::Open);
        assert_eq!(access(&get, "/metrics", false), Access::Roles(SCRAPERS));
        assert_eq!(
            access(&get, "/api/v1/requests/:id", true),
            Access::Roles(OPERATORS)
        );
        assert_eq!(
            access(&post, "/api/v1/requests/:id/events", true),
            Access::Roles(BACKENDS)
        );
        assert_eq!(
            access(&post, "/api/v1/requests", true),
            Access::Roles(ADMINS)
        );
        assert_eq!(access(&get, "/api/v1/devices", true), Access::Roles(ADMINS));
        assert_eq!(
            access(&post, "/api/v1/some/new/thing", true),
            Access::Roles(ADMINS)
        );
    }
}
