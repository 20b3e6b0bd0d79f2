//! `[http]` and `[api]`: where the HTTP API listens and who may call it. The token table and
//! the route policy built from these settings are the API's (`api::auth`); only the settings,
//! and the [`Role`] names they use, live here.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// `[http]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where the API listens.
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// Base URL for backend callbacks; `http://{listen}` when absent.
    #[serde(default)]
    pub public_url: Option<String>,
}

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_http_listen(),
            public_url: None,
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
