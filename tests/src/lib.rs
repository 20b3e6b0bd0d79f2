//! Test harness: a gateway, mock backends and simulated devices in one process, on loopback
//! ports reserved at run time (never fixed ports).

pub mod child;
pub mod refusal;

use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use yijian_device_sim::{DeviceConfig, MockBackends, SimDevice};
use yijian_gateway::config::{BackendConfig, Config, Role, ServiceConfig, TokenConfig};
use yijian_gateway::Gateway;

/// The operator token every test gateway accepts (`get` and `post` use it).
pub const OPERATOR_TOKEN: &str = "test-operator-token-0123456789";
/// A metrics-scraper token every test gateway accepts.
pub const METRICS_TOKEN: &str = "test-metrics-token-0123456789";

/// The token backend `name` uses for callbacks on a test gateway (declared by [`backend`]).
pub fn backend_token(name: &str) -> String {
    format!("test-backend-token-{name}")
}

fn token(name: &str, role: Role, backend: Option<&str>, token: &str) -> TokenConfig {
    let sha256 = yijian_gateway::devices::digest(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    TokenConfig {
        name: name.to_owned(),
        role,
        backend: backend.map(str::to_owned),
        sha256: Some(sha256),
        token_env: None,
    }
}

pub use refusal::{assert_refused, mqtt_options, Refusal};
pub use yijian_device_sim::{Behaviour, MockOptions};
pub use yijian_wire::{FeedbackState, Gesture};

/// A count from the environment variable `name` (a bigger run of a CI-sized test), or
/// `default` when it is unset.
pub fn env_count<T: std::str::FromStr>(name: &str, default: T) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// A free loopback port: bound, read and released. rumqttd binds its listener itself and
/// cannot report a port bound with port 0, so the broker gets one of these.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    l.local_addr().expect("local address").port()
}

/// A gateway under test with its own data directory.
pub struct TestGateway {
    pub gw: Gateway,
    pub config: Config,
    pub base: String,
    pub mqtt: SocketAddr,
    pub http: reqwest::Client,
    /// The admin token the gateway generated in its data directory on first start.
    pub admin_token: String,
    _dir: Option<tempfile::TempDir>,
}

/// A configuration for tests: loopback ports, a temporary data dir, fast retries.
pub fn test_config(data_dir: &std::path::Path) -> Config {
    let mut c = Config::default_config();
    c.mqtt.listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    c.store.data_dir = data_dir.to_owned();
    c.dispatch.backoff_initial_ms = 10;
    c.dispatch.backoff_max_ms = 50;
    // Dispatches still retrying when a test stops its gateway need not be waited for.
    c.shutdown.grace_ms = 500;
    // Rule files and resident changes are noticed within a few polls, not a second.
    c.rules.watch_interval_ms = 20;
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
    c.rules.dir = Some(rules);
    c.api
        .tokens
        .push(token("test-operator", Role::Operator, None, OPERATOR_TOKEN));
    c.api
        .tokens
        .push(token("test-metrics", Role::Metrics, None, METRICS_TOKEN));
    c
}

/// Route `service` to these backends (names) with the given deadline.
pub fn route(
    c: &mut Config,
    service: &str,
    backends: &[&str],
    attempt_timeout_ms: u64,
    deadline_s: u64,
) {
    c.services.insert(
        service.to_owned(),
        ServiceConfig {
            backends: backends.iter().map(|s| s.to_string()).collect(),
            attempt_timeout_ms: Some(attempt_timeout_ms),
            deadline_s: Some(deadline_s),
            notify_contacts: None,
        },
    );
}

/// Declare a backend served by `mock` at path `/{name}`, with a callback token
/// ([`backend_token`]).
pub fn backend(c: &mut Config, mock: &MockBackends, name: &str) {
    c.backends.insert(
        name.to_owned(),
        BackendConfig {
            url: mock.url(name),
            token_env: None,
        },
    );
    c.api.tokens.push(token(
        &format!("backend-{name}"),
        Role::Backend,
        Some(name),
        &backend_token(name),
    ));
}

impl TestGateway {
    /// Start a gateway with the test defaults adjusted by `adjust`.
    pub async fn start(adjust: impl FnOnce(&mut Config)) -> Result<TestGateway> {
        let dir = tempfile::tempdir()?;
        let mut config = test_config(dir.path());
        adjust(&mut config);
        let mut t = TestGateway::start_with(config).await?;
        t._dir = Some(dir);
        Ok(t)
    }

    /// Start a gateway with exactly this configuration (its data dir is the caller's).
    pub async fn start_with(mut config: Config) -> Result<TestGateway> {
        let mut last = None;
        // The reserved MQTT port could be taken between reservation and bind: retry on a new one.
        for _ in 0..3 {
            let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            match Gateway::start(config.clone(), http).await {
                Ok(gw) => {
                    let base = format!("http://{}", gw.http_addr);
                    let mqtt = gw.mqtt_addr;
                    let path = yijian_gateway::api::auth::admin_token_path(&config.store.data_dir);
                    let admin_token = std::fs::read_to_string(&path)
                        .context("the admin token file")?
                        .trim()
                        .to_owned();
                    return Ok(TestGateway {
                        gw,
                        config,
                        base,
                        mqtt,
                        http: reqwest::Client::new(),
                        admin_token,
                        _dir: None,
                    });
                }
                Err(e @ yijian_gateway::StartError::Io { .. }) => {
                    last = Some(e);
                    config.mqtt.listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(anyhow!("gateway did not start: {:?}", last))
    }

    /// Register a device; returns its secret.
    pub fn add_device(&self, id: &str, profile: &str) -> Result<String> {
        let mut out = Vec::new();
        yijian_gateway::admin::devices_add(&self.config, id, Some(profile), None, true, &mut out)?;
        let v: Value = serde_json::from_slice(&out)?;
        Ok(v["secret"]
            .as_str()
            .context("secret in devices add output")?
            .to_owned())
    }

    /// Register and connect a simulated device.
    pub async fn device(&self, id: &str, profile: &str) -> Result<SimDevice> {
        let secret = self.add_device(id, profile)?;
        Ok(SimDevice::connect(DeviceConfig::new(id, secret, self.mqtt)).await?)
    }

    /// Register a device bound to `resident` and connect it.
    pub async fn device_of(&self, id: &str, profile: &str, resident: &str) -> Result<SimDevice> {
        let mut out = Vec::new();
        yijian_gateway::admin::devices_add(
            &self.config,
            id,
            Some(profile),
            Some(resident),
            true,
            &mut out,
        )?;
        let v: Value = serde_json::from_slice(&out)?;
        let secret = v["secret"]
            .as_str()
            .context("secret in devices add output")?;
        Ok(SimDevice::connect(DeviceConfig::new(id, secret, self.mqtt)).await?)
    }

    /// `residents import` a file named `name` (its extension says CSV or TOML) holding
    /// `text`; returns what the command printed, or its error with the printed problems.
    pub fn import_residents(&self, name: &str, text: &str) -> Result<String> {
        let path = self.config.store.data_dir.join(name);
        std::fs::write(&path, text)?;
        let mut out = Vec::new();
        let r = yijian_gateway::admin::residents::residents_import(&self.config, &path, &mut out);
        let printed = String::from_utf8(out)?;
        match r {
            Ok(()) => Ok(printed),
            Err(e) => Err(anyhow!("{printed}{e}")),
        }
    }

    /// `devices bind DEVICE RESIDENT`.
    pub fn bind(&self, device: &str, resident: &str) -> Result<()> {
        yijian_gateway::admin::residents::devices_bind(
            &self.config,
            device,
            Some(resident),
            &mut Vec::new(),
        )?;
        Ok(())
    }

    /// One request with its history (`GET /api/v1/requests/{id}`).
    pub async fn request(&self, id: &str) -> Result<Value> {
        let (status, v) = self.get(&format!("/api/v1/requests/{id}")).await?;
        anyhow::ensure!(status == 200, "GET request {id}: {status} {v}");
        Ok(v)
    }

    /// Poll request `id` until `done` holds for it (or fail after [`WAIT`]).
    pub async fn wait_request(
        &self,
        id: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.request(id).await?;
            if done(&v) {
                return Ok(v);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(anyhow!(
                    "request {id}: gave up waiting for {what}; it is {v}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// GET a path of the API as an operator: (status, JSON body).
    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        self.call("GET", path, Some(OPERATOR_TOKEN), None).await
    }

    /// POST JSON to a path of the API as an operator: (status, JSON body).
    pub async fn post(&self, path: &str, body: Value) -> Result<(u16, Value)> {
        self.call("POST", path, Some(OPERATOR_TOKEN), Some(body))
            .await
    }

    /// Any call: `method` on `path` with `token` (none: no Authorization header) and an
    /// optional JSON body. Returns (status, JSON body or Null).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut rb = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// A status callback for request `rid` from `backend` (with its token), as the backend
    /// would send it: (status, JSON body).
    pub async fn callback(&self, rid: &str, backend: &str, event: Value) -> Result<(u16, Value)> {
        self.call(
            "POST",
            &format!("/api/v1/requests/{rid}/events"),
            Some(&backend_token(backend)),
            Some(event),
        )
        .await
    }

    /// Stop the gateway.
    pub async fn stop(self) {
        self.gw.stop().await;
    }
}

/// A generous bound for waits that normally take milliseconds.
pub const WAIT: Duration = Duration::from_secs(15);

/// The `kind`s of a request's history, oldest first.
pub fn history_kinds(v: &Value) -> Vec<String> {
    v["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(|e| e["kind"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Poll `probe` until it returns `Some` (or fail after [`WAIT`] naming `what`).
pub async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(anyhow!("gave up waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Capture every log line of this test binary in memory, in `format` (installed once per
/// process, before any gateway starts; the first caller's format wins). Returns the buffer.
pub fn capture_logs(
    format: yijian_gateway::telemetry::LogFormat,
) -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        // rumqttd at info too: its own lines must not leak a password either.
        yijian_gateway::telemetry::init_logging_with(format, "info", false, move || {
            LogCapture(sink.clone())
        });
        buf
    })
    .clone()
}

/// What [`capture_logs`] has collected so far, as text.
pub fn captured_log_text() -> String {
    capture_logs(yijian_gateway::telemetry::LogFormat::Human)
        .lock()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
