//! The configured dispatch backends: where each one is (`http.rs` posts to it) and its circuit
//! breaker, shared by dispatch and follow-ups — a dead backend is dead for both.

use super::breaker::Breaker;
use super::http::HttpBackend;
use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use std::collections::HashMap;
use std::time::Duration;

/// One configured backend and its breaker.
pub struct Backend {
    pub http: HttpBackend,
    pub breaker: Breaker,
}

/// Every backend of the configuration, its breaker on `clock`. Fails, naming every problem,
/// when a token variable is missing or a URL does not parse.
pub fn configured(config: &Config, clock: &Clock) -> Result<HashMap<String, Backend>, ConfigError> {
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
            clock.clone(),
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
    Ok(backends)
}
