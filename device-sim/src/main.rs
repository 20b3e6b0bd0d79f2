//! `yijian-sim`: simulated devices and mock dispatch backends for Yijian.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;
use yijian_device_sim::load::fleet::Credential;
use yijian_device_sim::load::tracker::Mix;
use yijian_device_sim::load::RunOptions;
use yijian_device_sim::press::{is_final, Tally};
use yijian_device_sim::{DeviceConfig, MockBackends, MockOptions, SimDevice};
use yijian_wire::{FeedbackState, Gesture};

/// Simulated home call devices and mock dispatch backends for the Yijian gateway.
#[derive(Parser)]
#[command(name = "yijian-sim", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Press a button as a real device would (retransmitting until answered) and print each
    /// feedback with the time since the press.
    Press {
        /// Device id (registered with `yijian-gateway devices add`).
        #[arg(long)]
        device: String,
        /// The secret `devices add` printed.
        #[arg(long, env = "YIJIAN_DEVICE_SECRET", hide_env_values = true)]
        secret: String,
        /// Button label.
        #[arg(long, default_value = "main")]
        button: String,
        /// single | double | triple | long.
        #[arg(long, default_value = "single")]
        gesture: String,
        /// Broker address (the gateway's `--mqtt-listen`, which this also reads).
        #[arg(long, env = "YIJIAN_MQTT_LISTEN", default_value = "127.0.0.1:1883")]
        broker: String,
        /// Press this many times, one after another, and print the medians with their sample
        /// counts. NOTE: a device's presses of one service join its open request (the gateway's
        /// `[flood] attach_window_s`, 1800 s by default); run the gateway with 0 to measure
        /// separate requests.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        /// Seconds to wait for a final answer: anything after `received` (dispatched,
        /// escalated, en_route, arrived, cancelled, closed, rejected).
        #[arg(long, default_value_t = 30)]
        wait: u64,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Load and latency run: N devices (real MQTT connections, persistent sessions,
    /// retransmitting until answered, heartbeating), presses as a Poisson process at R/s
    /// overall, mock backends in this process; prints latency quantiles and the integrity
    /// check, and exits non-zero when any press is lost or doubled.
    ///
    /// The gateway must route rescue/taxi/hospital to http://BACKENDS_LISTEN/{rescue,taxi,hospital}
    /// (gateway/config/example-backends.toml does, with the default --backends-listen).
    Run(Box<RunArgs>),
    /// Run mock rescue / taxi / hospital backends: POST /{name} with an Idempotency-Key
    /// (a repeated key is answered 409 and not counted twice); GET /received lists them.
    Backends {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: SocketAddr,
        /// Milliseconds added before every answer.
        #[arg(long, default_value_t = 0)]
        latency: u64,
        /// Probability (0-1) of answering 503 instead of accepting.
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
        /// Print each request's JSON body as it arrives (what a real backend would get), and
        /// keep the bodies for GET /received.
        #[arg(long)]
        keep_bodies: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// How many devices.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Presses per second, all devices together (the first step with --max-rate); 0 only
    /// connects and heartbeats for --duration (a connection test).
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// How long to press, e.g. 60s, 2m (each step's length with --max-rate: see --step).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Seconds between each device's heartbeats.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Service mix as weights, e.g. rescue=1,taxi=2,hospital=1.
    #[arg(long, default_value = "rescue=1,taxi=1,hospital=1")]
    mix: String,
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    /// Gateway HTTP base URL; when given, the run waits for /readyz first.
    #[arg(long)]
    gateway_http: Option<String>,
    /// Where this process serves the mock backends.
    #[arg(long, default_value = "127.0.0.1:9100")]
    backends_listen: SocketAddr,
    /// Device credentials, one JSON object per line ({"device_id", "secret"}), as printed by
    /// `yijian-gateway devices add-many`. Without it devices are provisioned with that command.
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// Write the provisioned credentials here (for a later --credentials).
    #[arg(long)]
    save_credentials: Option<PathBuf>,
    /// The yijian-gateway binary used to provision devices (default: next to yijian-sim).
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// --config passed to yijian-gateway when provisioning.
    #[arg(long)]
    gateway_config: Option<PathBuf>,
    /// --data-dir passed to yijian-gateway when provisioning.
    #[arg(long)]
    gateway_data_dir: Option<PathBuf>,
    /// The process id of the system under test, to report its memory and CPU. Give several
    /// (comma-separated or repeated) for a system of several processes, e.g. a broker and an
    /// integration engine: their CPU seconds and RSS are summed.
    #[arg(long, value_delimiter = ',')]
    gateway_pid: Vec<u32>,
    /// New connections per second while ramping up.
    #[arg(long, default_value_t = 2000.0)]
    connect_rate: f64,
    /// How long to wait for outstanding answers after pressing stops.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    drain: Duration,
    /// Device retransmit interval (jittered ±20%).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    retransmit: Duration,
    /// Step the rate up (×1.5, then bisect) until p99 press → dispatched exceeds --p99-limit
    /// or a press is lost; report the highest rate that held.
    #[arg(long)]
    max_rate: bool,
    /// p99 limit for --max-rate.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    p99_limit: Duration,
    /// Length of each --max-rate step.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    step: Duration,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

/// `90`, `90s`, `1500ms`, `2m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 500ms or 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn read_credentials(path: &std::path::Path) -> Result<Vec<Credential>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_credentials(&text).with_context(|| format!("in {}", path.display()))
}

fn parse_credentials(text: &str) -> Result<Vec<Credential>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<Credential>(l)
                .with_context(|| format!("line {}: not a credential", i + 1))
        })
        .collect()
}

fn provision(a: &RunArgs) -> Result<Vec<Credential>> {
    let bin = match &a.gateway_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("yijian-gateway"),
    };
    if !bin.exists() {
        bail!("cannot provision devices: {} not found (build it, pass --gateway-bin, or pass --credentials)", bin.display());
    }
    let prefix = format!("sim{:04x}-", rand::random::<u16>());
    let mut cmd = std::process::Command::new(&bin);
    if let Some(c) = &a.gateway_config {
        cmd.arg("--config").arg(c);
    }
    if let Some(d) = &a.gateway_data_dir {
        cmd.arg("--data-dir").arg(d);
    }
    cmd.args([
        "devices",
        "add-many",
        "--prefix",
        &prefix,
        "--count",
        &a.devices.to_string(),
        "--profile",
        "three-button",
    ]);
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "provisioning failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let creds = parse_credentials(&String::from_utf8_lossy(&out.stdout))?;
    eprintln!(
        "provisioned {} devices ({}1 … {}{})",
        creds.len(),
        prefix,
        prefix,
        creds.len()
    );
    Ok(creds)
}

async fn wait_ready(base: &str) -> Result<()> {
    let url = format!("{}/readyz", base.trim_end_matches('/'));
    let client = reqwest::Client::new();
    for _ in 0..50 {
        if let Ok(r) = client.get(&url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the gateway at {base} is not ready ({url} did not answer 200 within 10 s)")
}

async fn run(a: RunArgs) -> Result<bool> {
    // Each simulated device is a socket: raise the soft limit on open files, and say clearly
    // when even the hard limit is too low for the fleet.
    if let Some((soft, _)) = yijian_wire::os::raise_fd_limit() {
        let need = a.devices as u64 + 200;
        anyhow::ensure!(
            soft >= need,
            "{} devices need about {need} open files, but this process may open only {soft} (ulimit -n); \
             run several yijian-sim processes with --credentials, or raise the limit",
            a.devices
        );
    }
    let mix = Mix::parse(&a.mix).map_err(anyhow::Error::msg)?;
    if a.rate < 0.0 || !a.rate.is_finite() || (a.rate == 0.0 && a.max_rate) {
        bail!("--rate must be a positive number (or 0 to only connect and heartbeat, without --max-rate)");
    }
    if a.devices == 0 {
        bail!("--devices must be at least 1");
    }
    if let Some(base) = &a.gateway_http {
        wait_ready(base).await?;
    }
    let creds = match &a.credentials {
        Some(p) => read_credentials(p)?,
        None => provision(&a)?,
    };
    if creds.len() < a.devices {
        bail!(
            "{} devices asked for, {} credentials available",
            a.devices,
            creds.len()
        );
    }
    if let Some(p) = &a.save_credentials {
        let text: String = creds
            .iter()
            .map(|c| serde_json::to_string(c).expect("serializes") + "\n")
            .collect();
        std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?;
    }
    let opts = RunOptions {
        devices: a.devices,
        rate: a.rate,
        duration: a.duration,
        heartbeat: a.heartbeat,
        mix,
        broker: resolve(&a.broker)?,
        backends_listen: a.backends_listen,
        connect_rate: a.connect_rate,
        drain: a.drain,
        retransmit: a.retransmit,
        max_rate: a.max_rate.then_some(a.p99_limit),
        step: a.step,
        gateway_pids: a.gateway_pid,
        progress: !a.quiet,
    };
    let report = yijian_device_sim::load::run(opts, creds).await?;
    println!("{report}");
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(report.ok())
}

/// TLS to the broker's `[mqtt.tls]` listener (port 8883 by convention).
#[derive(clap::Args)]
struct TlsArgs {
    /// Connect over TLS, trusting the CA certificate(s) in this PEM file.
    #[arg(long = "tls-ca", value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) to present; its subject CN must be the device id.
    #[arg(long = "tls-cert", value_name = "FILE", requires_all = ["ca", "key"])]
    cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long = "tls-key", value_name = "FILE", requires_all = ["ca", "cert"])]
    key: Option<std::path::PathBuf>,
}

impl TlsArgs {
    fn config(&self) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>> {
        let Some(ca) = &self.ca else { return Ok(None) };
        let read = |p: &std::path::Path| {
            std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
        };
        let ca = read(ca)?;
        let client = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        let cfg = yijian_device_sim::tls_client_config(
            &ca,
            client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        )
        .map_err(anyhow::Error::msg)?;
        Ok(Some(cfg))
    }
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("cannot resolve broker address {addr}"))?
        .next()
        .with_context(|| format!("broker address {addr} resolves to nothing"))
}

#[allow(clippy::too_many_arguments)]
async fn press(
    device: String,
    secret: String,
    button: String,
    gesture: String,
    broker: String,
    repeat: u32,
    wait: u64,
    tls: TlsArgs,
) -> Result<()> {
    let gesture: Gesture = gesture.parse().map_err(anyhow::Error::msg)?;
    let broker = resolve(&broker)?;
    let mut cfg = DeviceConfig::new(&device, &secret, broker);
    cfg.tls = tls.config()?;
    let mut dev = SimDevice::connect(cfg)
        .await
        .with_context(|| format!("device {device} could not connect to {broker} (is it registered, is the secret right?)"))?;
    let mut tally = Tally::default();
    for n in 1..=repeat.max(1) {
        let sent = tokio::time::Instant::now();
        let id = dev.press(&button, gesture).await?;
        tally.sent();
        println!("press {id} ({button}, {gesture}) sent");
        let deadline = sent + Duration::from_secs(wait);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let heard = match dev.next_feedback(left).await {
                Ok(h) => h,
                Err(_) => bail!("no final answer for press {id} within {wait} s"),
            };
            if heard.feedback.press.as_deref() != Some(id.as_str()) {
                continue;
            }
            let ms = heard.at.duration_since(sent).as_secs_f64() * 1000.0;
            let f = &heard.feedback;
            let mut line = format!("  {:>9.1} ms  {}", ms, f.state);
            if let Some(r) = &f.request {
                line.push_str(&format!("  request={r}"));
            }
            if let Some(s) = f.service {
                line.push_str(&format!(" service={s}"));
            }
            if let Some(r) = &f.reference {
                line.push_str(&format!(" ref={r}"));
            }
            if let Some(e) = f.eta_s {
                line.push_str(&format!(" eta_s={e}"));
            }
            if let Some(r) = &f.reason {
                line.push_str(&format!(" reason={r:?}"));
            }
            println!("{line}");
            if f.state == FeedbackState::Received {
                tally.received(ms);
            }
            if is_final(f.state) {
                tally.answered(ms, f.request.as_deref());
                break;
            }
        }
        if repeat > 1 && n < repeat {
            // Spread presses a little so each is measured on its own.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    if repeat > 1 {
        println!("{}", tally.summary());
    }
    dev.disconnect().await;
    Ok(())
}

async fn backends(
    listen: SocketAddr,
    latency: u64,
    fail_rate: f64,
    keep_bodies: bool,
) -> Result<()> {
    if !(0.0..=1.0).contains(&fail_rate) {
        bail!("--fail-rate must be between 0 and 1");
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let m = MockBackends::start(
        listener,
        MockOptions {
            latency: Duration::from_millis(latency),
            fail_rate,
            keep_bodies,
        },
    )?;
    println!("mock backends on http://{} — POST /rescue, /taxi, /hospital (any name works); GET /received", m.addr);
    let mut shown = 0;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let r = m.received();
        for x in &r[shown..] {
            println!(
                "{} {} request={} device={} press={} attempt={:?}",
                x.arrived_ms, x.backend, x.key, x.device_id, x.press_id, x.attempt
            );
            if keep_bodies {
                println!("{}", serde_json::to_string_pretty(&x.body)?);
            }
        }
        shown = r.len();
    }
    println!(
        "received {} requests, {} repeated keys answered 409",
        shown,
        m.duplicates()
    );
    Ok(())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Press {
            device,
            secret,
            button,
            gesture,
            broker,
            repeat,
            wait,
            tls,
        } => press(device, secret, button, gesture, broker, repeat, wait, tls).await,
        Command::Backends {
            listen,
            latency,
            fail_rate,
            keep_bodies,
        } => backends(listen, latency, fail_rate, keep_bodies).await,
        Command::Run(a) => match run(*a).await {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(2),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = r {
        eprintln!("yijian-sim: {e:#}");
        std::process::exit(1);
    }
}
