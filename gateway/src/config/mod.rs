//! Configuration: TOML through serde with `deny_unknown_fields`, defaults from functions, an
//! embedded default printable with `yijian-gateway config default`, and validation that
//! reports every problem at once.
//!
//! It sits beside the path, not on it: every stage reads its section from here, and this
//! module names no stage (the stages bring their own behaviour to their settings, e.g.
//! `flood` builds its token bucket from [`FloodConfig`]). This file holds the whole
//! [`Config`], its loading and the checks across sections; each section group has its own file.

mod api;
mod dispatch;
mod flood;
mod mqtt;
mod rules;
mod store;
mod summary;

pub use api::{ApiConfig, HttpConfig, Role, TokenConfig};
pub use dispatch::{
    BackendConfig, DispatchConfig, NotifyConfig, ServiceConfig, ServiceRoute, ShutdownConfig,
};
pub use flood::FloodConfig;
pub use mqtt::{MqttConfig, TlsSettings};
pub use rules::RulesConfig;
pub use store::StoreConfig;

use dispatch::service_defaults;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use yijian_wire::Service;

/// The default configuration, as shipped (`gateway/config/default.toml`).
pub const DEFAULT_CONFIG: &str = include_str!("../../config/default.toml");

/// The example configuration routing to HTTP backends (`gateway/config/example-backends.toml`).
pub const EXAMPLE_BACKENDS_CONFIG: &str = include_str!("../../config/example-backends.toml");

/// The name of the built-in operator queue backend.
pub const DESK: &str = "desk";

/// Everything the gateway is configured with.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The embedded MQTT broker.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// The HTTP API.
    #[serde(default)]
    pub http: HttpConfig,
    /// The journal.
    #[serde(default)]
    pub store: StoreConfig,
    /// Routing rules.
    #[serde(default)]
    pub rules: RulesConfig,
    /// Retry, backoff and circuit-breaker settings shared by all backends.
    #[serde(default)]
    pub dispatch: DispatchConfig,
    /// Per service: backends in order, attempt timeout, deadline. Keyed by service name so
    /// that a misspelt service is reported with the others rather than as a serde error.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
    /// HTTP backends by name.
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfig>,
    /// Graceful shutdown.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Where residents' contacts are notified when a request goes to the desk.
    #[serde(default)]
    pub notify: NotifyConfig,
    /// API tokens and roles.
    #[serde(default)]
    pub api: ApiConfig,
    /// Flood control: repeated presses, device message rate.
    #[serde(default)]
    pub flood: FloodConfig,
}

/// Why a configuration cannot be used: every problem found, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration{}:\n  {}", .source_name.as_deref().map(|s| format!(" in {s}")).unwrap_or_default(), .problems.join("\n  "))]
pub struct ConfigError {
    /// The file, when the configuration came from one.
    pub source_name: Option<String>,
    /// Each problem, with its place.
    pub problems: Vec<String>,
}

impl Config {
    /// The embedded default configuration.
    pub fn default_config() -> Config {
        Config::parse(DEFAULT_CONFIG, None).expect("the embedded default configuration is valid")
    }

    /// Parse and validate TOML text. `source_name` is used in error messages.
    pub fn parse(text: &str, source_name: Option<&str>) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError {
            source_name: source_name.map(str::to_owned),
            problems: vec![describe_toml_error(text, &e)],
        })?;
        let mut cfg = cfg;
        cfg.fill_services();
        let problems = cfg.problems();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError {
                source_name: source_name.map(str::to_owned),
                problems,
            })
        }
    }

    /// Load from a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: Some(path.display().to_string()),
            problems: vec![format!("cannot read the file: {e}")],
        })?;
        Config::parse(&text, Some(&path.display().to_string()))
    }

    /// Every service gets a route: the built-in desk for those not configured.
    fn fill_services(&mut self) {
        for s in Service::ALL {
            self.services
                .entry(s.as_str().to_owned())
                .or_insert_with(|| ServiceConfig {
                    backends: vec![DESK.to_owned()],
                    attempt_timeout_ms: None,
                    deadline_s: None,
                    notify_contacts: None,
                });
        }
    }

    /// Every problem with this configuration, or none.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (name, svc) in &self.services {
            if name.parse::<Service>().is_err() {
                p.push(format!(
                    "[services.{name}]: unknown service (expected one of {})",
                    Service::choices()
                ));
            }
            if svc.backends.is_empty() {
                p.push(format!("[services.{name}]: backends must name at least one backend (\"desk\" is the operator queue)"));
            }
            for b in &svc.backends {
                if b != DESK && !self.backends.contains_key(b) {
                    p.push(format!(
                        "[services.{name}]: backend \"{b}\" is not defined under [backends.{b}]"
                    ));
                }
            }
            if svc.attempt_timeout_ms == Some(0) {
                p.push(format!(
                    "[services.{name}]: attempt_timeout_ms must be greater than 0"
                ));
            }
            if svc.deadline_s == Some(0) {
                p.push(format!(
                    "[services.{name}]: deadline_s must be greater than 0"
                ));
            }
        }
        for (name, b) in &self.backends {
            if name == DESK {
                p.push("[backends.desk]: \"desk\" is the built-in operator queue and cannot be redefined".into());
            }
            if !(b.url.starts_with("http://") || b.url.starts_with("https://")) {
                p.push(format!(
                    "[backends.{name}]: url must start with http:// or https:// (got {:?})",
                    b.url
                ));
            } else if reqwest::Url::parse(&b.url).is_err() {
                p.push(format!(
                    "[backends.{name}]: url {:?} is not a valid URL",
                    b.url
                ));
            }
            if let Some(var) = &b.token_env {
                if var.is_empty() {
                    p.push(format!(
                        "[backends.{name}]: token_env must name an environment variable"
                    ));
                }
            }
        }
        if self.store.max_batch == 0 {
            p.push("[store]: max_batch must be greater than 0".into());
        }
        if self.dispatch.attempts_per_backend == 0 {
            p.push("[dispatch]: attempts_per_backend must be greater than 0".into());
        }
        if self.dispatch.breaker_failures == 0 {
            p.push("[dispatch]: breaker_failures must be greater than 0".into());
        }
        if self.dispatch.backoff_initial_ms > self.dispatch.backoff_max_ms {
            p.push("[dispatch]: backoff_initial_ms must not exceed backoff_max_ms".into());
        }
        if self.dispatch.followup_deadline_s == 0 {
            p.push("[dispatch]: followup_deadline_s must be greater than 0".into());
        }
        if self.dispatch.max_in_flight == 0 {
            p.push("[dispatch]: max_in_flight must be greater than 0".into());
        }
        if self.mqtt.max_payload_size < 1024 {
            p.push("[mqtt]: max_payload_size must be at least 1024 bytes".into());
        }
        if !self.rules.time_zone.is_empty()
            && jiff::tz::TimeZone::get(&self.rules.time_zone).is_err()
        {
            p.push(format!(
                "[rules]: time_zone {:?} is not a known IANA time zone (e.g. Asia/Shanghai, UTC)",
                self.rules.time_zone
            ));
        }
        if let Some(b) = &self.notify.backend {
            if b == DESK || !self.backends.contains_key(b) {
                p.push(format!(
                    "[notify]: backend \"{b}\" is not defined under [backends.{b}]"
                ));
            }
        }
        if let Some(url) = &self.http.public_url {
            if reqwest::Url::parse(url).is_err() {
                p.push(format!("[http]: public_url {url:?} is not a valid URL"));
            }
        }
        if let Some(tls) = &self.mqtt.tls {
            p.extend(tls.problems());
            if tls.listen == self.mqtt.listen {
                p.push("[mqtt.tls]: listen must differ from [mqtt] listen".into());
            }
        }
        p.extend(self.api.problems(self.backends.keys()));
        p.extend(self.flood.problems());
        p
    }

    /// The resolved route of `service`.
    pub fn route(&self, service: Service) -> ServiceRoute {
        let (timeout, deadline) = service_defaults(service);
        let svc = self.services.get(service.as_str());
        ServiceRoute {
            backends: svc
                .map(|s| s.backends.clone())
                .unwrap_or_else(|| vec![DESK.to_owned()]),
            attempt_timeout: Duration::from_millis(
                svc.and_then(|s| s.attempt_timeout_ms).unwrap_or(timeout),
            ),
            deadline: Duration::from_secs(svc.and_then(|s| s.deadline_s).unwrap_or(deadline)),
            notify_contacts: svc
                .and_then(|s| s.notify_contacts)
                .unwrap_or(service == Service::Rescue),
        }
    }

    /// Base URL for callbacks.
    pub fn public_url(&self) -> String {
        match &self.http.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.http.listen),
        }
    }

    /// The journal's file.
    pub fn db_path(&self) -> PathBuf {
        self.store.data_dir.join("yijian.db")
    }
}

/// A TOML error with line and column.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim_end().to_owned();
    match e.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!("{line}:{col}: {msg}")
        }
        None => msg,
    }
}

/// 1-based line and column of byte offset `at`.
pub(crate) fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_everything_to_desk() {
        let c = Config::default_config();
        for s in Service::ALL {
            assert_eq!(c.route(*s).backends, vec!["desk"], "{s}");
        }
        assert_eq!(c.mqtt.listen.to_string(), "127.0.0.1:1883");
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.route(Service::Rescue).deadline, Duration::from_secs(20));
    }

    #[test]
    fn example_config_is_valid() {
        let c = Config::parse(EXAMPLE_BACKENDS_CONFIG, Some("example")).unwrap();
        assert_eq!(
            c.route(Service::Rescue).backends,
            vec!["rescue-centre", "rescue-standby", "desk"]
        );
        assert_eq!(c.route(Service::Maintenance).backends, vec!["desk"]);
    }

    #[test]
    fn reports_every_problem_at_once() {
        let text = r#"
[services.resuce]
backends = ["nowhere"]
[services.taxi]
backends = []
deadline_s = 0
[backends.x]
url = "ftp://x"
"#;
        let e = Config::parse(text, Some("bad.toml")).unwrap_err();
        let all = e.to_string();
        for needle in [
            "[services.resuce]: unknown service",
            "backend \"nowhere\" is not defined",
            "[services.taxi]: backends must name at least one backend",
            "[services.taxi]: deadline_s must be greater than 0",
            "[backends.x]: url must start with http:// or https://",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_eq!(e.problems.len(), 5, "{all}");
    }

    #[test]
    fn unknown_key_has_a_position() {
        let e = Config::parse(
            "[mqtt]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n",
            Some("c.toml"),
        )
        .unwrap_err();
        assert!(
            e.problems[0].starts_with("3:1: unknown field `lisen`"),
            "{}",
            e.problems[0]
        );
    }
}
