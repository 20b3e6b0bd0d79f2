//! `yijian-sim run`: N simulated devices, each a real MQTT connection behaving as DESIGN §2
//! asks, heartbeating, pressing as a Poisson process at R presses/s overall, against mock
//! backends served in the same process; per-press latency in HDR histograms and an integrity
//! check at the end (nothing lost, nothing doubled).

pub mod fleet;
pub mod report;
pub mod tracker;

use crate::backends::{MockBackends, MockOptions};
use fleet::{Credential, Fleet, FleetOptions};
use rand::Rng;
use report::{Quantiles, Report, StepReport};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracker::{Mix, Tracker};
use yijian_wire::Service;

/// Everything a load run needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub devices: usize,
    pub rate: f64,
    pub duration: Duration,
    pub heartbeat: Duration,
    pub mix: Mix,
    pub broker: SocketAddr,
    pub backends_listen: SocketAddr,
    pub connect_rate: f64,
    pub drain: Duration,
    pub retransmit: Duration,
    /// Step the rate up until p99 press → dispatched exceeds this or a press is lost.
    pub max_rate: Option<Duration>,
    /// Step length in `--max-rate` mode.
    pub step: Duration,
    /// The processes of the system under test (the gateway; or a broker and what consumes it),
    /// to report their memory and CPU, summed.
    pub gateway_pids: Vec<u32>,
    /// Print a progress line every second.
    pub progress: bool,
}

fn epoch_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Button of a three-button device for a service.
fn button(s: Service) -> &'static str {
    match s {
        Service::Rescue => "red",
        Service::Taxi => "green",
        _ => "yellow",
    }
}

/// Run the load; the report says whether anything was lost or doubled.
pub async fn run(opts: RunOptions, creds: Vec<Credential>) -> anyhow::Result<Report> {
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(opts.backends_listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen for mock backends on {}: {e}",
                opts.backends_listen
            )
        })?;
    let mock = MockBackends::start(
        listener,
        MockOptions {
            keep_bodies: false,
            ..Default::default()
        },
    )?;
    let tracker = Arc::new(Tracker::new(opts.retransmit));
    let n = creds.len().min(opts.devices);
    let fleet_opts = FleetOptions {
        broker: opts.broker,
        connect_rate: opts.connect_rate,
        keep_alive: (opts.heartbeat * 2).max(Duration::from_secs(60)),
    };
    let fleet = Arc::new(Fleet::start(
        &creds[..n],
        &fleet_opts,
        tracker.clone(),
        stop.clone(),
    ));
    let ramp = Duration::from_secs_f64(n as f64 / opts.connect_rate.max(1.0) * 1.5)
        + Duration::from_secs(60);
    let started = Instant::now();
    let progress = opts.progress;
    let connect_time = fleet
        .wait_connected(n, ramp, |c| {
            if progress && started.elapsed().as_millis() % 1000 < 200 {
                eprintln!(
                    "[{:>5.1}s] connecting {c}/{n}",
                    started.elapsed().as_secs_f64()
                );
            }
        })
        .await;
    let rss_after_connect = report::sum_over(&opts.gateway_pids, report::rss_kb);
    if let Some(t) = connect_time {
        eprintln!("connected {n} devices in {:.1} s", t.as_secs_f64());
    } else {
        eprintln!(
            "only {}/{n} devices connected within {:.0} s; pressing anyway",
            fleet.stats.connected.load(Ordering::Relaxed),
            ramp.as_secs_f64()
        );
    }

    tokio::spawn(heartbeats(fleet.clone(), opts.heartbeat, stop.clone()));
    tokio::spawn(retransmitter(fleet.clone(), tracker.clone(), stop.clone()));

    let mut steps = Vec::new();
    let press_started = Instant::now();
    let cpu_before = report::sum_over(&opts.gateway_pids, report::cpu_seconds);
    match opts.max_rate {
        None => {
            let step = press_phase(&opts, opts.rate, opts.duration, &fleet, &tracker).await;
            steps.push(step);
        }
        Some(limit) => {
            let (mut rate, mut good, mut bad): (f64, Option<f64>, Option<f64>) =
                (opts.rate, None, None);
            loop {
                let step = press_phase(&opts, rate, opts.step, &fleet, &tracker).await;
                let held = step.lost == 0
                    && step.press_to_dispatched.p99_ms <= limit.as_secs_f64() * 1000.0;
                eprintln!(
                    "step {:.0} presses/s: p99 press → dispatched {:.1} ms, lost {} → {}",
                    rate,
                    step.press_to_dispatched.p99_ms,
                    step.lost,
                    if held { "held" } else { "did not hold" }
                );
                steps.push(step);
                if held {
                    good = Some(rate);
                } else {
                    bad = Some(rate);
                }
                rate = match (good, bad) {
                    (Some(g), None) => g * 1.5,
                    (Some(g), Some(b)) if b / g > 1.12 => (g + b) / 2.0,
                    (None, Some(b)) if b > 100.0 => b / 2.0,
                    _ => break,
                };
            }
        }
    }
    let press_elapsed = press_started.elapsed();
    let cpu = report::sum_over(&opts.gateway_pids, report::cpu_seconds)
        .zip(cpu_before)
        .map(|(a, b)| a - b);
    stop.cancel();
    fleet.disconnect().await;

    let arrivals: Vec<(String, String, i64)> = mock
        .received()
        .into_iter()
        .map(|r| (r.key, r.press_id, r.arrived_us))
        .collect();
    let integrity = tracker.integrity(&arrivals);
    let fs = &fleet.stats;
    Ok(Report::build(
        &opts,
        n,
        connect_time,
        fs.connected.load(Ordering::Relaxed),
        fs.drops.load(Ordering::Relaxed),
        fs.failed_attempts.load(Ordering::Relaxed),
        steps,
        integrity,
        mock.duplicates(),
        mock.attempts(),
        press_elapsed,
        rss_after_connect,
        report::sum_over(&opts.gateway_pids, report::rss_kb),
        report::sum_over(&opts.gateway_pids, report::peak_rss_kb),
        cpu,
    ))
}

/// Press at `rate` for `duration`, then wait for the answers; one step's report.
async fn press_phase(
    opts: &RunOptions,
    rate: f64,
    duration: Duration,
    fleet: &Arc<Fleet>,
    tracker: &Arc<Tracker>,
) -> StepReport {
    let _ = tracker.take_step();
    let start = Instant::now();
    let end = start + duration;
    let seq = AtomicU64::new(0);
    let mut next = start;
    let mut last_progress = start;
    let mut rng = rand::rngs::StdRng::from_entropy();
    let n = fleet.devices.len();
    while Instant::now() < end {
        let now = Instant::now();
        // Rate 0: connect and heartbeat only (the fleet's tasks do that); nothing to press.
        while rate > 0.0 && next <= now {
            // Poisson process: exponential gaps between presses.
            let gap = -(1.0 - rng.gen::<f64>()).ln() / rate;
            next += Duration::from_secs_f64(gap);
            let mut idx = rng.gen_range(0..n);
            for _ in 0..10 {
                if fleet.devices[idx].connected.load(Ordering::Relaxed) {
                    break;
                }
                idx = rng.gen_range(0..n);
            }
            let dev = &fleet.devices[idx];
            let service = opts.mix.pick(&mut rng);
            let id = format!("{}-{}", dev.id, seq.fetch_add(1, Ordering::Relaxed));
            let sent_us = epoch_us();
            let payload = serde_json::to_vec(&serde_json::json!({
                "id": id, "button": button(service), "gesture": "single", "at": sent_us / 1000, "battery": 80
            }))
            .expect("json serializes");
            tracker.sent(&id, idx as u32, sent_us, payload.clone());
            if !dev.publish_press(payload) {
                tracker.publish_error();
            }
        }
        if opts.progress && now.duration_since(last_progress) >= Duration::from_secs(1) {
            last_progress = now;
            let c = tracker.counts();
            eprintln!(
                "[{:>5.1}s] {:.0}/s connected {}/{} | sent {} | received {} | dispatched {} | escalated {} | retransmits {} | errors {}",
                now.duration_since(start).as_secs_f64(),
                rate,
                fleet.stats.connected.load(Ordering::Relaxed),
                n,
                c.sent,
                c.received,
                c.dispatched,
                c.escalated,
                c.retransmits,
                c.publish_errors + c.rejected
            );
        }
        let wake = if rate > 0.0 {
            next.min(end)
        } else {
            (now + Duration::from_secs(1)).min(end)
        };
        tokio::time::sleep_until(wake).await;
    }
    let phase = start.elapsed();
    // Drain: wait for every press to have its final answer.
    let drain_end = Instant::now() + opts.drain;
    while !tracker.settled() && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (h, c) = tracker.take_step();
    let lost = c
        .sent
        .saturating_sub(c.dispatched + c.escalated + c.other_final + c.rejected);
    StepReport {
        rate_offered: rate,
        seconds: phase.as_secs_f64(),
        sent: c.sent,
        received: c.received,
        dispatched: c.dispatched,
        escalated: c.escalated,
        lost,
        retransmits: c.retransmits,
        throughput: (c.dispatched + c.escalated) as f64 / phase.as_secs_f64(),
        press_to_received: Quantiles::of(&h.received),
        press_to_dispatched: Quantiles::of(&h.dispatched),
    }
}

async fn heartbeats(fleet: Arc<Fleet>, every: Duration, stop: CancellationToken) {
    // Each device heartbeats once per `every`, spread evenly over it.
    let tick = Duration::from_millis(100);
    let n = fleet.devices.len();
    let ticks = (every.as_millis() / tick.as_millis()).max(1) as usize;
    let mut t = 0usize;
    let mut rng = rand::rngs::StdRng::from_entropy();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let slot = t % ticks;
        for i in (slot..n).step_by(ticks) {
            let d = &fleet.devices[i];
            if d.connected.load(Ordering::Relaxed) {
                let payload = format!(
                    r#"{{"online":true,"battery":{},"rssi":-{},"at":{}}}"#,
                    rng.gen_range(20..100),
                    rng.gen_range(40..90),
                    epoch_us() / 1000
                );
                let _ = d.heartbeat(payload.into_bytes());
            }
        }
        t += 1;
    }
}

/// Resend every press the tracker says is due (unanswered past its retransmit interval), until
/// `stop`: the device contract's periodic retransmission, for a whole fleet.
pub async fn retransmitter(fleet: Arc<Fleet>, tracker: Arc<Tracker>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        for (idx, payload) in tracker.due() {
            if let Some(d) = fleet.devices.get(idx as usize) {
                let _ = d.publish_press(payload);
            }
        }
    }
}

use rand::SeedableRng;
