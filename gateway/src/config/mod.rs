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

    /// Parse and validate TOML text, reporting every problem at once: unknown keys (with a
    /// "did you mean" when a known one is close), values of the wrong type or form, and what
    /// the sections say together. `source_name` is used in error messages.
    pub fn parse(text: &str, source_name: Option<&str>) -> Result<Config, ConfigError> {
        let (cfg, mut problems) = deserialize_all(text);
        let cfg = cfg.map(|mut cfg| {
            cfg.fill_services();
            problems.extend(cfg.problems());
            cfg
        });
        match cfg {
            Some(cfg) if problems.is_empty() => Ok(cfg),
            _ => Err(ConfigError {
                source_name: source_name.map(str::to_owned),
                problems,
            }),
        }
    }

    /// What `serve` would find wrong only when it starts, from the environment `env` gives
    /// (`std::env::var` in `config check`): token variables that are not set.
    pub fn environment_problems(&self, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
        let set = |var: &str| env(var).is_some_and(|v| !v.is_empty());
        let mut p = Vec::new();
        for (name, b) in &self.backends {
            if let Some(var) = b.token_env.as_deref().filter(|v| !v.is_empty() && !set(v)) {
                p.push(format!(
                    "[backends.{name}]: environment variable {var} (token_env) is not set"
                ));
            }
        }
        for t in &self.api.tokens {
            if let (None, Some(var)) = (&t.sha256, t.token_env.as_deref()) {
                if !set(var) {
                    p.push(format!(
                        "[[api.tokens]] {:?}: environment variable {var} (token_env) is not set",
                        t.name
                    ));
                }
            }
        }
        p
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
            } else {
                match reqwest::Url::parse(&b.url) {
                    Err(e) => p.push(format!(
                        "[backends.{name}]: url {:?} is not a valid URL: {e}",
                        b.url
                    )),
                    Ok(u) if u.port() == Some(0) => p.push(format!(
                        "[backends.{name}]: url {:?} has port 0, which nothing can be reached on",
                        b.url
                    )),
                    Ok(_) => {}
                }
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

/// Deserialize `text`, collecting every key or value serde refuses: each one refused is
/// commented out and the rest read again, so one unknown key does not hide the problems after
/// it. Returns the configuration when what is left deserializes, and every problem, placed.
///
/// NOTE: commenting out keeps every line where it was, so each problem's line:column is that
/// of the original text. A syntax error is reported alone: nothing after it can be trusted.
fn deserialize_all(text: &str) -> (Option<Config>, Vec<String>) {
    if let Err(e) = text.parse::<toml::Table>() {
        return (None, vec![describe_toml_error(text, &e)]);
    }
    let mut problems = Vec::new();
    let mut current = text.to_owned();
    // Each round removes at least one line, so this ends; the bound is a guard only.
    for _ in 0..=text.lines().count() {
        let e = match toml::from_str::<Config>(&current) {
            Ok(cfg) => return (Some(cfg), problems),
            Err(e) => e,
        };
        // `current` has the same lines as `text`, and the problem's own line is not commented.
        problems.push(describe_toml_error(&current, &e));
        let cascade = e.message().starts_with("missing field");
        let next = e.span().and_then(|span| comment_out(&current, span.start));
        match next {
            Some(next) if !cascade && next.parse::<toml::Table>().is_ok() => current = next,
            _ => return (None, problems),
        }
    }
    (None, problems)
}

/// `text` with the line holding byte `at` commented out, or, when that line is a table header,
/// the whole table. `None` when nothing would change.
fn comment_out(text: &str, at: usize) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 16);
    let mut offset = 0;
    let mut in_table = false;
    let mut changed = false;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let trimmed = line.trim_start();
        let header = trimmed.starts_with('[');
        if header {
            in_table = false;
        }
        let hit = (start..offset).contains(&at) && !trimmed.starts_with('#');
        if hit && header {
            in_table = true;
        }
        if (hit || in_table) && !trimmed.starts_with('#') {
            out.push('#');
            changed = true;
        }
        out.push_str(line);
    }
    changed.then_some(out)
}

/// A TOML error with line and column, and a hint where one helps: the known key closest to an
/// unknown one, the form of a listen address.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let mut msg = e.message().trim_end().to_owned();
    if let Some(hint) = did_you_mean(&msg) {
        msg.push_str(&format!("; did you mean `{hint}`?"));
    }
    if msg.contains("invalid socket address syntax") {
        msg.push_str(
            ": use an IP address and port such as 127.0.0.1:1883 (host names such as localhost are not resolved)",
        );
    }
    match e.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!("{line}:{col}: {msg}")
        }
        None => msg,
    }
}

/// For serde's "unknown field `lisen`, expected one of `listen`, `tls`": the expected name
/// closest to the unknown one, when it is close enough to be a slip.
fn did_you_mean(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    let (unknown, expected) = rest.split_once('`')?;
    let expected = expected.split_once("expected")?.1;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (edit_distance(unknown, k), k))
        .filter(|(d, k)| *d <= (k.len().max(unknown.len()) / 3).max(1))
        .min()
        .map(|(_, k)| k.to_owned())
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
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
    fn unknown_keys_and_bad_values_are_reported_together_with_hints() {
        let text = "[mqtt]\nlisen = \"127.0.0.1:1\"\nlisten = \"localhost:1883\"\n\n[store]\nmax_bach = 3\n\n[dispatch]\nattempts_per_backend = \"three\"\n\n[services.resuce]\nbackends = [\"desk\"]\n";
        let e = Config::parse(text, Some("c.toml")).unwrap_err();
        let all = e.to_string();
        for needle in [
            "2:1: unknown field `lisen`",
            "did you mean `listen`?",
            "3:10: invalid socket address syntax: use an IP address and port such as 127.0.0.1:1883",
            "6:1: unknown field `max_bach`",
            "did you mean `max_batch`?",
            "9:24: invalid type: string \"three\", expected u32",
            "[services.resuce]: unknown service",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_eq!(e.problems.len(), 5, "{all}");
    }

    #[test]
    fn an_unknown_table_is_skipped_whole() {
        let e = Config::parse(
            "[mqtt]\nlisten = \"127.0.0.1:1\"\n[frobnicate]\na = 1\nb = 2\n[store]\nmax_batch = 0\n",
            None,
        )
        .unwrap_err();
        assert_eq!(e.problems.len(), 2, "{:?}", e.problems);
        assert!(
            e.problems[0].starts_with("3:2: unknown field `frobnicate`"),
            "{:?}",
            e.problems
        );
        assert_eq!(e.problems[1], "[store]: max_batch must be greater than 0");
    }

    #[test]
    fn token_variables_that_are_not_set_are_reported() {
        let c = Config::parse(
            "[backends.r]\nurl = \"http://127.0.0.1:9/r\"\ntoken_env = \"R_TOKEN\"\n[backends.s]\nurl = \"http://127.0.0.1:9/s\"\ntoken_env = \"S_TOKEN\"\n",
            None,
        )
        .expect("valid");
        let env = |v: &str| (v == "S_TOKEN").then(|| "x".to_owned());
        assert_eq!(
            c.environment_problems(&env),
            ["[backends.r]: environment variable R_TOKEN (token_env) is not set"]
        );
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
