//! `yijian-sim`: simulated devices and mock dispatch backends for Yijian.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;
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
        /// Broker address.
        #[arg(long, default_value = "127.0.0.1:1883")]
        broker: String,
        /// Press this many times, one after another, and print medians.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        /// Seconds to wait for a final answer (dispatched, escalated, rejected, cancelled, closed).
        #[arg(long, default_value_t = 30)]
        wait: u64,
        #[command(flatten)]
        tls: TlsArgs,
    },
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
    },
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
        let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        let ca = read(ca)?;
        let client = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        let cfg = yijian_device_sim::tls_client_config(&ca, client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())))
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

fn final_state(s: FeedbackState) -> bool {
    matches!(
        s,
        FeedbackState::Dispatched | FeedbackState::Escalated | FeedbackState::Rejected | FeedbackState::Cancelled | FeedbackState::Closed
    )
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

#[allow(clippy::too_many_arguments)]
async fn press(device: String, secret: String, button: String, gesture: String, broker: String, repeat: u32, wait: u64, tls: TlsArgs) -> Result<()> {
    let gesture: Gesture = gesture.parse().map_err(anyhow::Error::msg)?;
    let broker = resolve(&broker)?;
    let mut cfg = DeviceConfig::new(&device, &secret, broker);
    cfg.tls = tls.config()?;
    let mut dev = SimDevice::connect(cfg)
        .await
        .with_context(|| format!("device {device} could not connect to {broker} (is it registered, is the secret right?)"))?;
    let mut to_received = Vec::new();
    let mut to_final = Vec::new();
    for n in 1..=repeat.max(1) {
        let sent = tokio::time::Instant::now();
        let id = dev.press(&button, gesture).await?;
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
                to_received.push(ms);
            }
            if final_state(f.state) {
                to_final.push(ms);
                break;
            }
        }
        if repeat > 1 && n < repeat {
            // Spread presses a little so each is measured on its own.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    if repeat > 1 {
        println!(
            "median of {repeat}: press → received {:.1} ms, press → final answer {:.1} ms",
            median(&mut to_received).unwrap_or(f64::NAN),
            median(&mut to_final).unwrap_or(f64::NAN)
        );
    }
    dev.disconnect().await;
    Ok(())
}

async fn backends(listen: SocketAddr, latency: u64, fail_rate: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&fail_rate) {
        bail!("--fail-rate must be between 0 and 1");
    }
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let m = MockBackends::start(listener, MockOptions { latency: Duration::from_millis(latency), fail_rate })?;
    println!("mock backends on http://{} — POST /rescue, /taxi, /hospital (any name works); GET /received", m.addr);
    let mut shown = 0;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let r = m.received();
        for x in &r[shown..] {
            let service = x.body.get("service").and_then(|v| v.as_str()).unwrap_or("?");
            let device = x.body.pointer("/device/id").and_then(|v| v.as_str()).unwrap_or("?");
            println!("{} {} request={} service={} device={} attempt={:?}", x.arrived_ms, x.backend, x.key, service, device, x.attempt);
        }
        shown = r.len();
    }
    println!("received {} requests, {} repeated keys answered 409", shown, m.duplicates());
    Ok(())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Press { device, secret, button, gesture, broker, repeat, wait, tls } => {
            press(device, secret, button, gesture, broker, repeat, wait, tls).await
        }
        Command::Backends { listen, latency, fail_rate } => backends(listen, latency, fail_rate).await,
    };
    if let Err(e) = r {
        eprintln!("yijian-sim: {e:#}");
        std::process::exit(1);
    }
}
