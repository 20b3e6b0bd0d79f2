//! Configuration: TOML through serde with `deny_unknown_fields`, defaults from functions, an
//! embedded default printable with `yijian-gateway config default`, and validation that
//! reports every problem at once.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use yijian_wire::Service;

/// The default configuration, as shipped (`gateway/config/default.toml`).
pub const DEFAULT_CONFIG: &str = include_str!("../config/default.toml");

/// The example configuration routing to HTTP backends (`gateway/config/example-backends.toml`).
pub const EXAMPLE_BACKENDS_CONFIG: &str = include_str!("../config/example-backends.toml");

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
    pub api: crate::api::auth::ApiConfig,
    /// Flood control: repeated presses, device message rate.
    #[serde(default)]
    pub flood: crate::flood::FloodConfig,
}

/// `[mqtt]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Where the embedded broker listens.
    #[serde(default = "default_mqtt_listen")]
    pub listen: SocketAddr,
    /// Largest MQTT packet accepted; larger ones close the connection.
    #[serde(default = "default_max_payload")]
    pub max_payload_size: usize,
    /// Most simultaneous connections.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time allowed between TCP accept and MQTT CONNECT, in milliseconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u16,
    /// The optional TLS listener for devices.
    #[serde(default)]
    pub tls: Option<crate::broker::tls::TlsSettings>,
}

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

/// `[store]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory holding `yijian.db`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Most commands per group commit.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
}

/// `[rules]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Rules directory; `None` means `./rules` if present, else the built-in rules.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// How long after a request the cancel gesture may still cancel it, in seconds.
    #[serde(default = "default_cancel_window")]
    pub cancel_window_s: u64,
    /// IANA time zone of residents with none of their own (and of devices bound to no
    /// resident): rules' `time` windows are local times. Empty: such presses have no known
    /// local time, and no rule with `time` matches them.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// How often the rules directory is checked for changed files, in milliseconds; 0 turns
    /// watching off (SIGHUP still reloads).
    #[serde(default = "default_watch_interval")]
    pub watch_interval_ms: u64,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            dir: None,
            cancel_window_s: default_cancel_window(),
            time_zone: default_time_zone(),
            watch_interval_ms: default_watch_interval(),
        }
    }
}

fn default_cancel_window() -> u64 {
    120
}
fn default_time_zone() -> String {
    "Asia/Shanghai".to_owned()
}
fn default_watch_interval() -> u64 {
    1000
}

/// `[notify]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// The notification backend (an HTTP webhook, e.g. an SMS gateway), named like a dispatch
    /// backend under `[backends.NAME]`. Absent: contacts are not notified, and the request's
    /// history says so.
    #[serde(default)]
    pub backend: Option<String>,
}

/// `[dispatch]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchConfig {
    /// First backoff delay.
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_ms: u64,
    /// Largest backoff delay.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    /// Attempts on one backend before failing over.
    #[serde(default = "default_attempts_per_backend")]
    pub attempts_per_backend: u32,
    /// Consecutive failures that open a backend's circuit.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open circuit waits before a probe.
    #[serde(default = "default_breaker_cooldown")]
    pub breaker_cooldown_ms: u64,
    /// Most requests in dispatch at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// How long a backend cancellation or a contact notification is retried before it is
    /// given up (and the request's history says so), in seconds.
    #[serde(default = "default_followup_deadline")]
    pub followup_deadline_s: u64,
}

/// `[shutdown]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// On SIGTERM, how long dispatches in flight may take to finish before they are left in
    /// the outbox for the next start, in milliseconds.
    #[serde(default = "default_grace_ms")]
    pub grace_ms: u64,
}

fn default_grace_ms() -> u64 {
    10_000
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_ms: default_grace_ms(),
        }
    }
}

/// `[services.NAME]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Backend names in order of preference; `desk` is the operator queue.
    #[serde(default)]
    pub backends: Vec<String>,
    /// Timeout of one HTTP attempt; the service's default when absent.
    #[serde(default)]
    pub attempt_timeout_ms: Option<u64>,
    /// Seconds from the press until a human operator takes over; the service's default when absent.
    #[serde(default)]
    pub deadline_s: Option<u64>,
    /// Notify the resident's contacts through `[notify] backend` when a request of this
    /// service goes to the desk; default true for `rescue`, false for the others.
    #[serde(default)]
    pub notify_contacts: Option<bool>,
}

/// `[backends.NAME]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Where requests are POSTed.
    pub url: String,
    /// Environment variable holding the bearer token (kept out of files and logs).
    #[serde(default)]
    pub token_env: Option<String>,
}

fn default_mqtt_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1883))
}
fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_payload() -> usize {
    16 * 1024
}
fn default_max_connections() -> usize {
    200_000
}
fn default_connect_timeout() -> u16 {
    10_000
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_max_batch() -> usize {
    1024
}
fn default_backoff_initial() -> u64 {
    200
}
fn default_backoff_max() -> u64 {
    5000
}
fn default_attempts_per_backend() -> u32 {
    3
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown() -> u64 {
    10_000
}
fn default_max_in_flight() -> usize {
    20_000
}
fn default_followup_deadline() -> u64 {
    3600
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: default_mqtt_listen(),
            max_payload_size: default_max_payload(),
            max_connections: default_max_connections(),
            connect_timeout_ms: default_connect_timeout(),
            tls: None,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_http_listen(),
            public_url: None,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: default_data_dir(),
            max_batch: default_max_batch(),
        }
    }
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            backoff_initial_ms: default_backoff_initial(),
            backoff_max_ms: default_backoff_max(),
            attempts_per_backend: default_attempts_per_backend(),
            breaker_failures: default_breaker_failures(),
            breaker_cooldown_ms: default_breaker_cooldown(),
            max_in_flight: default_max_in_flight(),
            followup_deadline_s: default_followup_deadline(),
        }
    }
}

/// Default attempt timeout and deadline of each service.
fn service_defaults(service: Service) -> (u64, u64) {
    match service {
        Service::Rescue => (2000, 20),
        Service::Taxi => (3000, 120),
        Service::Hospital => (3000, 300),
        Service::WelfareCheck => (3000, 600),
        Service::Maintenance => (3000, 3600),
    }
}

/// A service's routing, resolved and validated.
#[derive(Debug, Clone)]
pub struct ServiceRoute {
    /// Backend names in order; may include `desk`.
    pub backends: Vec<String>,
    /// Timeout of one attempt.
    pub attempt_timeout: Duration,
    /// From request creation until escalation to `desk`.
    pub deadline: Duration,
    /// Whether the resident's contacts are notified when it goes to the desk.
    pub notify_contacts: bool,
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
