//! The startup summary: where the gateway listens, where its journal lives, which rules it
//! loaded, and where each service's requests go. One line per fact, a short message with the
//! details as fields, so it reads the same in `--log-format human` and in JSON.
//!
//! It is the configuration describing itself, so it lives here and telemetry (a leaf) does
//! not need to know the configuration's shape.
//!
//! NOTE: a backend URL may carry credentials (`https://user:pass@host/...?key=...`): only its
//! scheme, host, port and path are printed. Tokens are named by their variable, never shown.

use super::{Config, DESK};
use std::net::SocketAddr;
use yijian_wire::Service;

impl Config {
    /// Log the summary; `http` is where the API listens, `rules` where the rules came from.
    /// Called once every stage is up, so `ready` means ready.
    pub fn log_summary(&self, http: SocketAddr, rules: &str) {
        log(self, http, rules)
    }
}

fn log(config: &Config, http: SocketAddr, rules: &str) {
    let http_url = format!("http://{http}");
    let mqtt_tls = config
        .mqtt
        .tls
        .as_ref()
        .map(|t| t.listen.to_string())
        .unwrap_or_else(|| "off".into());
    tracing::info!(mqtt = %config.mqtt.listen, mqtt_tls = %mqtt_tls, http = %http_url, metrics = %format!("{http_url}/metrics"), "listening");
    tracing::info!(
        data_dir = %config.store.data_dir.display(),
        journal = %config.db_path().display(),
        "journal"
    );
    tracing::info!(rules, "rules loaded");
    for s in Service::ALL {
        let r = config.route(*s);
        tracing::info!(
            service = %s,
            backends = %r.backends.join(" → "),
            attempt_timeout_ms = r.attempt_timeout.as_millis() as u64,
            deadline_s = r.deadline.as_secs(),
            "route"
        );
    }
    for (name, b) in &config.backends {
        let token = b
            .token_env
            .as_deref()
            .map(|v| format!("${v}"))
            .unwrap_or_else(|| "none".to_owned());
        tracing::info!(backend = %name, url = %redact(&b.url), token = %token, "backend");
    }
    tracing::info!(
        backend = DESK,
        "backend: the built-in operator queue (GET /api/v1/requests?state=escalated)"
    );
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "yijian gateway ready");
}

/// `url` without user info and query: what an operator needs to recognise it, nothing secret.
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let mut out = format!("{}://", u.scheme());
            if !u.username().is_empty() || u.password().is_some() {
                out.push_str("***@");
            }
            out.push_str(u.host_str().unwrap_or(""));
            if let Some(p) = u.port() {
                out.push_str(&format!(":{p}"));
            }
            out.push_str(u.path());
            if u.query().is_some() {
                out.push_str("?***");
            }
            out
        }
        // Config validation refuses such URLs before the summary is printed.
        Err(_) => "(invalid URL)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_and_queries_are_not_printed() {
        assert_eq!(
            redact("https://rescue.example.org/api/requests"),
            "https://rescue.example.org/api/requests"
        );
        assert_eq!(
            redact("http://127.0.0.1:9100/taxi"),
            "http://127.0.0.1:9100/taxi"
        );
        assert_eq!(
            redact("https://bob:s3cret@h.example:8443/p?api_key=k"),
            "https://***@h.example:8443/p?***"
        );
        assert_eq!(redact("not a url"), "(invalid URL)");
    }
}
