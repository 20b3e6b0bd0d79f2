//! Who may call which endpoint of the HTTP API: bearer tokens with roles.
//!
//! - `operator`: list and view requests, acknowledge and close them.
//! - `backend`: status callbacks, only for requests dispatched to its own backend.
//! - `admin`: devices and configuration, and everything an operator may do.
//! - `metrics`: `/metrics` when it is not open.
//!
//! Tokens come from the configuration (`[[api.tokens]]`, each a SHA-256 digest or the name of
//! an environment variable holding the token) and from the admin token file the default
//! configuration generates on first start. Only digests are kept in memory, every presented
//! token is hashed and compared with every known digest in constant time, and no token is ever
//! logged. The policy is one table, [`access`]: an endpoint it does not name is admin-only.

use crate::devices;
use crate::telemetry::security as telemetry;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Dispatch operators: requests, ack, close.
    Operator,
    /// A dispatch backend: callbacks for its own requests.
    Backend,
    /// Integrators: devices, configuration, and what operators do.
    Admin,
    /// A metrics scraper.
    Metrics,
}

impl Role {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Backend => "backend",
            Role::Admin => "admin",
            Role::Metrics => "metrics",
        }
    }
}

/// `[api]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer tokens and their roles.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// `/metrics` without a token; when false it takes a `metrics`, `operator` or `admin` token.
    #[serde(default = "yes")]
    pub metrics_open: bool,
    /// On first start, generate an admin token into `{data_dir}/admin.token` (mode 0600), and
    /// accept the token in that file.
    #[serde(default = "yes")]
    pub admin_token_file: bool,
}

fn yes() -> bool {
    true
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            tokens: Vec::new(),
            metrics_open: true,
            admin_token_file: true,
        }
    }
}

/// `[[api.tokens]]`: one caller.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it (a person, a desk, a backend), for the logs of who did what.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// For role `backend`: the backend (a name under `[backends]`) it speaks for.
    #[serde(default)]
    pub backend: Option<String>,
    /// Hex SHA-256 of the token (`yijian-gateway tokens new` prints it), so no file holds the
    /// token itself.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Or: an environment variable holding the token.
    #[serde(default)]
    pub token_env: Option<String>,
}

impl ApiConfig {
    /// Every problem with these settings; `backends` are the configured backend names.
    pub fn problems<'a>(&self, backends: impl Iterator<Item = &'a String>) -> Vec<String> {
        let backends: Vec<&String> = backends.collect();
        let mut p = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let at = format!("[[api.tokens]] #{} ({:?})", i + 1, t.name);
            if t.name.is_empty() {
                p.push(format!("{at}: name must not be empty"));
            } else if !names.insert(t.name.as_str()) {
                p.push(format!("{at}: name is used twice"));
            }
            match (&t.sha256, &t.token_env) {
                (Some(_), Some(_)) | (None, None) => {
                    p.push(format!("{at}: give exactly one of sha256 and token_env"))
                }
                (Some(h), None) if h.len() != 64 || hex::decode(h).is_err() => {
                    p.push(format!("{at}: sha256 must be 64 hex digits"))
                }
                (None, Some(v)) if v.is_empty() => {
                    p.push(format!("{at}: token_env must name an environment variable"))
                }
                _ => {}
            }
            match (t.role, &t.backend) {
                (Role::Backend, None) => p.push(format!(
                    "{at}: role backend needs backend = \"NAME\" (a [backends] entry)"
                )),
                (Role::Backend, Some(b)) if !backends.contains(&b) => p.push(format!(
                    "{at}: backend {b:?} is not defined under [backends.{b}]"
                )),
                (Role::Backend, Some(_)) => {}
                (_, Some(_)) => p.push(format!("{at}: backend is only for role backend")),
                (_, None) => {}
            }
        }
        p
    }
}

/// One known token: its digest and who holds it.
struct Known {
    digest: [u8; 32],
    caller: Caller,
}

/// Who is calling, once their token checked out. Handlers read it from request extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name.
    pub name: Arc<str>,
    /// Its role.
    pub role: Role,
    /// For role `backend`: the backend it speaks for.
    pub backend: Option<Arc<str>>,
}

/// The token table and the open/closed switches; built once at start.
pub struct Auth {
    known: Vec<Known>,
    metrics_open: bool,
}

/// Where the generated admin token lives.
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.token")
}

impl Auth {
    /// Resolve the configured tokens (reading `token_env` variables) and the admin token file.
    /// Every problem is reported at once.
    pub fn load(cfg: &ApiConfig, data_dir: &Path) -> Result<Auth, Vec<String>> {
        let mut known = Vec::new();
        let mut problems = Vec::new();
        for t in &cfg.tokens {
            let digest = match (&t.sha256, &t.token_env) {
                (Some(h), _) => match hex::decode(h)
                    .ok()
                    .and_then(|d| <[u8; 32]>::try_from(d).ok())
                {
                    Some(d) => d,
                    None => {
                        problems.push(format!(
                            "[[api.tokens]] {:?}: sha256 must be 64 hex digits",
                            t.name
                        ));
                        continue;
                    }
                },
                (None, Some(var)) => {
                    match std::env::var(var) {
                        Ok(v) if v.len() >= 16 => devices::digest(&v),
                        Ok(_) => {
                            problems.push(format!("[[api.tokens]] {:?}: the token in {var} is shorter than 16 characters", t.name));
                            continue;
                        }
                        Err(_) => {
                            problems.push(format!("[[api.tokens]] {:?}: environment variable {var} (token_env) is not set", t.name));
                            continue;
                        }
                    }
                }
                (None, None) => continue,
            };
            known.push(Known {
                digest,
                caller: Caller {
                    name: t.name.as_str().into(),
                    role: t.role,
                    backend: t.backend.as_deref().map(Into::into),
                },
            });
        }
        if cfg.admin_token_file {
            match ensure_admin_token(&admin_token_path(data_dir)) {
                Ok(token) => known.push(Known {
                    digest: devices::digest(&token),
                    caller: Caller {
                        name: "admin.token".into(),
                        role: Role::Admin,
                        backend: None,
                    },
                }),
                Err(e) => problems.push(e),
            }
        }
        if problems.is_empty() {
            Ok(Auth {
                known,
                metrics_open: cfg.metrics_open,
            })
        } else {
            Err(problems)
        }
    }

    /// Who holds `token`, if anyone. Hashes once and compares with every digest, without an
    /// early exit, so the time taken does not tell which entry matched or how many bytes did.
    pub fn identify(&self, token: &str) -> Option<&Caller> {
        let d = devices::digest(token);
        let mut found = None;
        for k in &self.known {
            if bool::from(k.digest.ct_eq(&d)) {
                found = Some(&k.caller);
            }
        }
        found
    }
}

/// Read the admin token file, creating it (mode 0600, a fresh 128-bit token) when absent.
/// Logs where it is, never what it holds.
fn ensure_admin_token(path: &Path) -> Result<String, String> {
    use std::io::Write;
    match std::fs::read_to_string(path) {
        Ok(t) => {
            check_private(path);
            let t = t.trim().to_owned();
            if t.len() < 16 {
                return Err(format!(
                    "{}: the admin token must be at least 16 characters",
                    path.display()
                ));
            }
            tracing::info!(path = %path.display(), "admin API token read from file");
            return Ok(t);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!(
                "cannot read the admin token file {}: {e}",
                path.display()
            ))
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let token = devices::new_secret();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| format!("cannot create the admin token file {}: {e}", path.display()))?;
    writeln!(f, "{token}")
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write the admin token file {}: {e}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        "generated an admin API token (file mode 0600); use it as `Authorization: Bearer <token>`"
    );
    Ok(token)
}

/// Warn when the token file is readable by others.
fn check_private(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path) {
            if m.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the admin token file is readable by other users; chmod 600 it");
            }
        }
    }
}

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
    let roles = match access(req.method(), &path, auth.metrics_open) {
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

/// A new random API token and its digest, for `yijian-gateway tokens new`.
pub fn new_token() -> (String, String) {
    let t = devices::new_secret();
    let d = hex::encode(devices::digest(&t));
    (t, d)
}

/// The configuration snippet declaring a token (by digest).
pub fn token_snippet(name: &str, role: Role, backend: Option<&str>, sha256: &str) -> String {
    let mut s = format!(
        "[[api.tokens]]\nname = {name:?}\nrole = {:?}\n",
        role.as_str()
    );
    if let Some(b) = backend {
        s.push_str(&format!("backend = {b:?}\n"));
    }
    s.push_str(&format!("sha256 = {sha256:?}\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth_with(tokens: &[(&str, Role, Option<&str>, &str)]) -> Auth {
        Auth {
            known: tokens
                .iter()
                .map(|(n, r, b, t)| Known {
                    digest: devices::digest(t),
                    caller: Caller {
                        name: (*n).into(),
                        role: *r,
                        backend: b.map(Into::into),
                    },
                })
                .collect(),
            metrics_open: true,
        }
    }

    #[test]
    fn tokens_identify_their_holder_only() {
        let a = auth_with(&[
            ("desk", Role::Operator, None, "op-token-0123456789"),
            ("rc", Role::Backend, Some("rescue"), "be-token-0123456789"),
        ]);
        assert_eq!(
            a.identify("op-token-0123456789").unwrap().name.as_ref(),
            "desk"
        );
        assert_eq!(
            a.identify("be-token-0123456789")
                .unwrap()
                .backend
                .as_deref(),
            Some("rescue")
        );
        assert!(a.identify("op-token-012345678").is_none());
        assert!(a.identify("").is_none());
    }

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

    #[test]
    fn config_problems_are_reported_together() {
        let cfg = ApiConfig {
            tokens: vec![
                TokenConfig {
                    name: "a".into(),
                    role: Role::Backend,
                    backend: None,
                    sha256: Some("zz".into()),
                    token_env: None,
                },
                TokenConfig {
                    name: "a".into(),
                    role: Role::Operator,
                    backend: Some("x".into()),
                    sha256: None,
                    token_env: None,
                },
                TokenConfig {
                    name: "b".into(),
                    role: Role::Backend,
                    backend: Some("nope".into()),
                    sha256: None,
                    token_env: Some("V".into()),
                },
            ],
            ..ApiConfig::default()
        };
        let known = ["rescue".to_owned()];
        let p = cfg.problems(known.iter());
        assert_eq!(p.len(), 6, "{p:#?}");
    }

    #[test]
    fn the_admin_token_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = admin_token_path(dir.path());
        let t1 = ensure_admin_token(&path).unwrap();
        let t2 = ensure_admin_token(&path).unwrap();
        assert_eq!(t1, t2, "generated once, then read");
        assert_eq!(t1.len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
