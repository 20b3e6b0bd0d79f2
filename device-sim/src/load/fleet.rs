//! A fleet of simulated devices for load runs: one real MQTT connection each, persistent
//! session, jittered ramp-up and jittered exponential reconnect backoff, feedback fed to the
//! shared [`Tracker`].
//!
//! As [`crate::device`]: every CONNACK is followed by a SUBSCRIBE to the device's `feedback`,
//! whatever `session_present` says, and a press goes out only once its SUBACK is in (a restarted
//! broker forgets sessions; a session left by an abandoned connection attempt never had the
//! subscription); presses held meanwhile go out on the SUBACK.

use super::tracker::Tracker;
use rand::Rng;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use yijian_wire::topic;

/// A device's id and secret.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct Credential {
    pub device_id: String,
    pub secret: String,
}

/// One device of the fleet.
pub struct Device {
    pub id: String,
    pub client: AsyncClient,
    pub connected: AtomicBool,
    /// Connected and subscribed to `feedback`: presses may go out.
    pub ready: AtomicBool,
    /// CONNACKs this device has had (a reconnect storm test counts them per device).
    pub connacks: AtomicU64,
    press_topic: String,
    status_topic: String,
}

impl Device {
    /// Queue a press publish; false when the device's queue is full. A device not yet
    /// subscribed holds the press (true): the tracker keeps it unanswered, and the SUBACK sends
    /// every unanswered press.
    pub fn publish_press(&self, payload: Vec<u8>) -> bool {
        if !self.ready.load(Ordering::SeqCst) {
            return true;
        }
        self.client
            .try_publish(&self.press_topic, QoS::AtLeastOnce, false, payload)
            .is_ok()
    }

    /// Queue a heartbeat (retained, as DESIGN §2 asks).
    pub fn heartbeat(&self, payload: Vec<u8>) -> bool {
        self.client
            .try_publish(&self.status_topic, QoS::AtLeastOnce, true, payload)
            .is_ok()
    }
}

/// Fleet-wide connection counters.
#[derive(Default)]
pub struct FleetStats {
    /// Devices currently connected.
    pub connected: AtomicUsize,
    /// Successful CONNACKs, first ones included.
    pub connacks: AtomicU64,
    /// Connections lost after they were established (a storm evicting sessions shows here).
    pub drops: AtomicU64,
    /// Connection attempts that failed before CONNACK.
    pub failed_attempts: AtomicU64,
}

/// The fleet.
pub struct Fleet {
    pub devices: Vec<Arc<Device>>,
    pub stats: Arc<FleetStats>,
}

/// How the fleet connects.
pub struct FleetOptions {
    pub broker: SocketAddr,
    /// New connections per second during the ramp.
    pub connect_rate: f64,
    pub keep_alive: Duration,
}

impl Fleet {
    /// Start every device's connection, paced at `connect_rate` with jitter. Returns at once;
    /// watch `stats.connected`.
    pub fn start(
        creds: &[Credential],
        opts: &FleetOptions,
        tracker: Arc<Tracker>,
        stop: CancellationToken,
    ) -> Fleet {
        let stats = Arc::new(FleetStats::default());
        let mut devices = Vec::with_capacity(creds.len());
        let ramp_start = Instant::now();
        for (idx, c) in creds.iter().enumerate() {
            let mut o = MqttOptions::new(
                &c.device_id,
                opts.broker.ip().to_string(),
                opts.broker.port(),
            );
            o.set_credentials(&c.device_id, &c.secret);
            o.set_clean_session(false);
            o.set_keep_alive(opts.keep_alive);
            let status_topic = topic::topic(&c.device_id, topic::Kind::Status);
            o.set_last_will(LastWill::new(
                &status_topic,
                r#"{"online":false}"#,
                QoS::AtLeastOnce,
                true,
            ));
            let (client, mut events) = AsyncClient::new(o, 64);
            events.network_options.set_tcp_nodelay(true);
            // A long connect timeout: a client that gives up after 5 s and retries while the
            // broker is still processing its first CONNECT evicts its own session (DESIGN §6).
            events.network_options.set_connection_timeout(30);
            let dev = Arc::new(Device {
                id: c.device_id.clone(),
                client,
                connected: AtomicBool::new(false),
                ready: AtomicBool::new(false),
                connacks: AtomicU64::new(0),
                press_topic: topic::topic(&c.device_id, topic::Kind::Press),
                status_topic,
            });
            devices.push(dev.clone());
            // Evenly paced with ±50% jitter: no thundering herd.
            let slot = idx as f64 / opts.connect_rate.max(1.0);
            let start_at =
                ramp_start + Duration::from_secs_f64(slot * rand::thread_rng().gen_range(0.5..1.5));
            let (tracker, stats, stop) = (tracker.clone(), stats.clone(), stop.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(start_at) => {}
                }
                run_device(idx as u32, dev, &mut events, tracker, stats, stop).await;
            });
        }
        Fleet { devices, stats }
    }

    /// Wait until `n` devices are connected or `timeout` passes; returns the time it took.
    pub async fn wait_connected(
        &self,
        n: usize,
        timeout: Duration,
        mut progress: impl FnMut(usize),
    ) -> Option<Duration> {
        let start = Instant::now();
        loop {
            let c = self.stats.connected.load(Ordering::Relaxed);
            if c >= n {
                return Some(start.elapsed());
            }
            if start.elapsed() >= timeout {
                return None;
            }
            progress(c);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Disconnect every device.
    pub async fn disconnect(&self) {
        for d in &self.devices {
            let _ = d.client.try_disconnect();
        }
    }
}

async fn run_device(
    idx: u32,
    dev: Arc<Device>,
    events: &mut rumqttc::EventLoop,
    tracker: Arc<Tracker>,
    stats: Arc<FleetStats>,
    stop: CancellationToken,
) {
    let feedback_topic = topic::topic(&dev.id, topic::Kind::Feedback);
    let mut failures: u32 = 0;
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            ev = events.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::Publish(p))) => tracker.heard(&p.payload, Instant::now()),
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                dev.connected.store(true, Ordering::Relaxed);
                dev.connacks.fetch_add(1, Ordering::Relaxed);
                stats.connected.fetch_add(1, Ordering::Relaxed);
                stats.connacks.fetch_add(1, Ordering::Relaxed);
                let _ = dev.heartbeat(br#"{"online":true}"#.to_vec());
                let _ = dev.client.try_subscribe(&feedback_topic, QoS::AtLeastOnce);
            }
            // The device contract: after every reconnect (once subscribed), resend what is
            // unanswered.
            Ok(Event::Incoming(Packet::SubAck(_))) => send_unanswered(idx, &dev, &tracker),
            Ok(_) => {}
            Err(_) => {
                dev.ready.store(false, Ordering::SeqCst);
                if dev.connected.swap(false, Ordering::Relaxed) {
                    stats.connected.fetch_sub(1, Ordering::Relaxed);
                    stats.drops.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                }
                failures = failures.saturating_add(1);
                let base = Duration::from_millis(500)
                    .saturating_mul(1 << failures.min(6))
                    .min(Duration::from_secs(30));
                let wait = base / 2 + base.mul_f64(rand::thread_rng().gen_range(0.0..0.5));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Presses may go out from now on; first every one still unanswered. `ready` is set before the
/// tracker is read, and a press is recorded in the tracker before `ready` is checked: a press
/// made meanwhile is sent by one side or both, never by neither.
fn send_unanswered(idx: u32, dev: &Device, tracker: &Tracker) {
    dev.ready.store(true, Ordering::SeqCst);
    for payload in tracker.unanswered_of(idx) {
        let _ = dev.publish_press(payload);
    }
}
