//! The release gateway binary as a child process, for what an in-process gateway cannot show:
//! SIGKILL, SIGTERM and the exit status, a restart on the same data directory and ports.
//!
//! The binary is `target/release/yijian-gateway` beside this test's own executable (or
//! `YIJIAN_GATEWAY_BIN`). Building it is the test command's job: `cargo test --release
//! --workspace` (the README's) builds every workspace binary first. A missing binary, or one
//! older than the gateway's sources, fails the test with the command that fixes it.

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use yijian_device_sim::load::fleet::Credential;
use yijian_gateway::config::Config;

use crate::{test_config, OPERATOR_TOKEN};

/// How long a start may take before the test gives up (the journal replay included).
pub const START_WAIT: Duration = Duration::from_secs(30);

/// The release gateway binary, checked to exist and, when it is the one beside this test, to
/// be newer than every gateway source. `YIJIAN_GATEWAY_BIN` names another (taken as it is).
pub fn gateway_binary() -> Result<PathBuf> {
    let fix = "build it first: `cargo build --release -p yijian-gateway`, or run the tests as the README says \
               (`cargo test --release --workspace` builds every workspace binary)";
    if let Some(b) = std::env::var_os("YIJIAN_GATEWAY_BIN") {
        let bin = PathBuf::from(b);
        ensure!(
            bin.is_file(),
            "YIJIAN_GATEWAY_BIN={} is not a file",
            bin.display()
        );
        return Ok(bin);
    }
    // target/release/deps/crash-<hash> → target/release/yijian-gateway
    let exe = std::env::current_exe().context("this test's own path")?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .context("the test executable's target directory")?
        .join("yijian-gateway");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .map_err(|e| {
            anyhow!(
                "the gateway binary {} is not there ({e}); {fix}",
                bin.display()
            )
        })?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in [
        "gateway/src",
        "gateway/config",
        "wire/src",
        "vendor/rumqttd/src",
    ] {
        if let Some((newer, at)) = newest_file(&root.join(dir)) {
            ensure!(
                at <= built,
                "the gateway binary {} is older than {} (it would test stale code); {fix}",
                bin.display(),
                newer.display()
            );
        }
    }
    Ok(bin)
}

/// The most recently modified file under `dir`.
fn newest_file(dir: &Path) -> Option<(PathBuf, SystemTime)> {
    let mut best: Option<(PathBuf, SystemTime)> = None;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else if let Ok(at) = meta.modified() {
                if best.as_ref().is_none_or(|(_, b)| at > *b) {
                    best = Some((path, at));
                }
            }
        }
    }
    best
}

/// A free loopback port that no outgoing connection will take while the gateway is down.
///
/// NOTE: a gateway restarted on the same data directory must listen where its devices dial,
/// so its ports are kept across restarts. A port from the kernel's ephemeral range (what
/// binding port 0 gives) can be handed to any outgoing connection — a reconnecting device's
/// own socket, say — while the gateway is down, and the restart could not bind it. So this
/// picks a port below the ephemeral range at random and checks that it binds.
pub fn stable_port() -> Result<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    let (from, to) = (low.saturating_sub(12_000).max(1024), low.max(1025));
    for _ in 0..200 {
        let port = rand::Rng::gen_range(&mut rand::thread_rng(), from..to);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port between {from} and {to}")
}

/// The gateway binary running as a child process on a configuration the test wrote, restartable
/// on the same data directory and ports.
pub struct ChildGateway {
    bin: PathBuf,
    /// The configuration as written to `config.toml`.
    pub config: Config,
    config_path: PathBuf,
    /// `http://127.0.0.1:{port}`.
    pub base: String,
    /// The embedded broker.
    pub mqtt: SocketAddr,
    /// For API calls.
    pub http: reqwest::Client,
    child: Option<Child>,
    /// Starts so far; run n logs to `gateway-{n}.log`.
    runs: u32,
    dir: tempfile::TempDir,
}

impl ChildGateway {
    /// Write a configuration (the test defaults of [`test_config`] on reserved ports, adjusted
    /// by `adjust`) into a fresh temporary directory. Nothing runs yet: [`ChildGateway::start`].
    pub fn new(adjust: impl FnOnce(&mut Config)) -> Result<ChildGateway> {
        let bin = gateway_binary()?;
        let dir = tempfile::tempdir()?;
        let mut config = test_config(&dir.path().join("data"));
        config.mqtt.listen = SocketAddr::from(([127, 0, 0, 1], stable_port()?));
        config.http.listen = SocketAddr::from(([127, 0, 0, 1], stable_port()?));
        adjust(&mut config);
        let config_path = dir.path().join("config.toml");
        std::fs::write(
            &config_path,
            toml::to_string(&config).context("the configuration as TOML")?,
        )?;
        Ok(ChildGateway {
            bin,
            base: format!("http://{}", config.http.listen),
            mqtt: config.mqtt.listen,
            config,
            config_path,
            http: reqwest::Client::new(),
            child: None,
            runs: 0,
            dir,
        })
    }

    /// Register `count` devices `{prefix}1..` with `profile` (the data directory is created if
    /// needed; a running gateway sees them at once).
    pub fn add_devices(&self, prefix: &str, count: u32, profile: &str) -> Result<Vec<Credential>> {
        let mut out = Vec::new();
        yijian_gateway::admin::devices_add_many(
            &self.config,
            prefix,
            count,
            Some(profile),
            &mut out,
        )?;
        String::from_utf8(out)?
            .lines()
            .map(|l| serde_json::from_str::<Credential>(l).context("a devices add-many line"))
            .collect()
    }

    /// Start the binary and wait until `/readyz` answers 200. Fails with the log's tail when
    /// the process exits or is not ready within [`START_WAIT`].
    pub async fn start(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "the gateway is already running");
        self.runs += 1;
        let log = std::fs::File::create(self.log_path(self.runs))?;
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config_path)
            .arg("serve")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_WAIT;
        loop {
            if let Some(status) = self.child.as_mut().expect("just spawned").try_wait()? {
                self.child = None;
                bail!(
                    "the gateway exited at start ({status}):\n{}",
                    self.log_tail(40)
                );
            }
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send().await {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the gateway was not ready within {START_WAIT:?}:\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Run the binary once more with this gateway's configuration and `args` (beside a running
    /// one, say) and wait for it to exit, at most `timeout`: its exit code and what it printed.
    pub async fn run_again(
        &self,
        args: &[&str],
        timeout: Duration,
    ) -> Result<(Option<i32>, String)> {
        let mut child = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("`{}` did not exit within {timeout:?}", args.join(" "));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut text = String::new();
        for mut pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read>),
        ]
        .into_iter()
        .flatten()
        {
            pipe.read_to_string(&mut text)?;
        }
        Ok((status.code(), text))
    }

    /// Whether the process is still running (it has not exited).
    pub fn is_running(&mut self) -> Result<bool> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?.is_none()),
            None => Ok(false),
        }
    }

    /// SIGKILL: no grace, no flush; the kernel closes every socket. Returns once reaped.
    pub fn kill(&mut self) -> Result<()> {
        let mut child = self.child.take().context("the gateway is not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Send SIGTERM (a graceful stop); [`ChildGateway::wait_exit`] collects the status.
    pub fn terminate(&self) -> Result<()> {
        let pid = self
            .child
            .as_ref()
            .map(Child::id)
            .context("the gateway is not running")?;
        // SAFETY: kill(2) on our own child's pid; it has not been reaped (`child` is still
        // set), so the pid cannot have been reused.
        let r = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        ensure!(
            r == 0,
            "kill -TERM {pid}: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Wait for the process to exit, at most `timeout` (then it is killed and this fails).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().context("the gateway is not running")?;
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.kill();
                bail!(
                    "the gateway did not exit within {timeout:?}:\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM, then wait for the exit; fails unless it exits 0 within `timeout`.
    pub async fn stop(&mut self, timeout: Duration) -> Result<()> {
        self.terminate()?;
        let status = self.wait_exit(timeout).await?;
        ensure!(
            status.success(),
            "the gateway exited with {status} after SIGTERM:\n{}",
            self.log_tail(40)
        );
        Ok(())
    }

    fn log_path(&self, run: u32) -> PathBuf {
        self.dir.path().join(format!("gateway-{run}.log"))
    }

    /// The log of start number `run` (from 1).
    pub fn log(&self, run: u32) -> String {
        std::fs::read_to_string(self.log_path(run)).unwrap_or_default()
    }

    /// Every run's log, in order.
    pub fn logs(&self) -> String {
        (1..=self.runs)
            .map(|r| format!("--- run {r} ---\n{}", self.log(r)))
            .collect()
    }

    /// The last `n` lines of the current run's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log(self.runs);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// GET a path of the API as an operator: (status, JSON body or Null).
    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let r = self
            .http
            .get(format!("{}{}", self.base, path))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// The `/metrics` scrape, as text.
    pub async fn metrics(&self) -> Result<String> {
        let r = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?;
        ensure!(r.status() == 200, "/metrics answered {}", r.status());
        Ok(r.text().await?)
    }

    /// Open the journal read-only (for a gateway that has stopped, or beside a running one).
    pub fn journal(&self) -> Result<rusqlite::Connection> {
        Ok(rusqlite::Connection::open_with_flags(
            self.config.db_path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?)
    }

    /// The journal through the gateway's own store port (reads; beside a running gateway or
    /// after it stopped).
    pub fn engine(&self) -> Result<std::sync::Arc<dyn yijian_gateway::store::Engine>> {
        Ok(yijian_gateway::store::open_engine(&self.config.db_path())?)
    }

    /// Request ids the journal still owes a dispatch (the outbox).
    pub fn outbox(&self) -> Result<Vec<String>> {
        Ok(self.engine()?.outbox()?.into_iter().map(|r| r.id).collect())
    }
}

impl Drop for ChildGateway {
    fn drop(&mut self) {
        // A failed test must not leave a gateway running.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A counter's value in a Prometheus text scrape (the sample without labels); 0 when absent.
pub fn counter(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
