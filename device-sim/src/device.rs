//! A simulated home call device that behaves as DESIGN §2's device contract asks: a fixed
//! client id equal to its device id, `clean_session = false`, a last will on `status`, every
//! press kept until a feedback with its id arrives and retransmitted with the same id (every
//! 5 s, jittered, and after every reconnect), jittered exponential reconnect backoff.
//!
//! NOTE: a press goes out only while the device's `feedback` subscription exists, and the device
//! subscribes again after every CONNACK, whatever `session_present` says. A broker that
//! restarted (the embedded one keeps no sessions) has forgotten the subscription; and a
//! session the broker does remember may never have had one: a connection attempt the device
//! gave up on (its CONNACK was slow, as in a reconnect storm) can still be taken by the broker
//! and leave a session without the SUBSCRIBE that was never sent on it. A press sent before
//! the new SUBACK could be journaled and its `received` published to nobody. So presses made
//! while not subscribed wait in the device, and everything unanswered goes out on the SUBACK.

use rand::Rng;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use yijian_wire::{topic, Feedback, FeedbackState, Gesture};

/// How a device connects.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Device id (also client id and username).
    pub device_id: String,
    /// The secret `devices add` printed.
    pub secret: String,
    /// The broker.
    pub broker: SocketAddr,
    /// Base retransmit interval (jittered ±20%).
    pub retransmit: Duration,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Connect over TLS with this client configuration (trust anchors, optional client
    /// certificate); `None` for plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl DeviceConfig {
    /// Defaults of the device contract: retransmit every 5 s, keep-alive 60 s.
    pub fn new(
        device_id: impl Into<String>,
        secret: impl Into<String>,
        broker: SocketAddr,
    ) -> Self {
        DeviceConfig {
            device_id: device_id.into(),
            secret: secret.into(),
            broker,
            retransmit: Duration::from_secs(5),
            keep_alive: Duration::from_secs(60),
            tls: None,
        }
    }

    /// Connect over TLS with `tls`.
    pub fn with_tls(mut self, tls: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// A TLS client configuration trusting the CA certificates in PEM `ca`, presenting the client
/// certificate chain and key in PEM `cert` and `key` when given.
pub fn tls_client_config(
    ca: &[u8],
    client: Option<(&[u8], &[u8])>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca) {
        roots
            .add(c.map_err(|e| format!("CA: {e}"))?)
            .map_err(|e| format!("CA: {e}"))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client cert: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("client key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client cert: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// One feedback message as the device heard it.
#[derive(Debug, Clone)]
pub struct Heard {
    /// The message.
    pub feedback: Feedback,
    /// When it arrived.
    pub at: Instant,
}

/// A press the device still owes a feedback for.
struct Unanswered {
    payload: Vec<u8>,
    next_send: Instant,
    /// Published at least once (a later send counts as a retransmission).
    sent: bool,
}

/// Counters a device keeps about itself.
#[derive(Debug, Default, Clone)]
pub struct DeviceStats {
    /// CONNACKs seen.
    pub connects: u64,
    /// Connection errors seen.
    pub disconnects: u64,
    /// Presses published more than once.
    pub retransmits: u64,
}

struct Shared {
    unanswered: Mutex<HashMap<String, Unanswered>>,
    stats: Mutex<DeviceStats>,
    /// Set after the first successful CONNACK; cleared by connection errors.
    connected: Mutex<bool>,
    /// Connected and subscribed to `feedback`: presses may go out. Set by the SUBACK that
    /// follows every CONNACK; cleared by connection errors.
    ready: Mutex<bool>,
    /// Signalled once the DISCONNECT asked for by [`SimDevice::disconnect`] has gone out.
    gone: tokio::sync::Notify,
    /// Connection losses so far, watchable (tests wait for a disconnect without sleeping).
    losses: tokio::sync::watch::Sender<u64>,
}

/// A running simulated device.
pub struct SimDevice {
    /// Its id.
    pub id: String,
    client: AsyncClient,
    heard: mpsc::UnboundedReceiver<Heard>,
    shared: Arc<Shared>,
    retransmit: Duration,
    counter: u64,
    boot: String,
    stop: CancellationToken,
}

/// Why a device could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The broker refused or closed the connection before CONNACK.
    #[error("connection refused or closed: {0}")]
    Connect(String),
    /// Nothing arrived in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    /// The MQTT client's queue is closed.
    #[error("client stopped")]
    Stopped,
}

fn epoch_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn jittered(base: Duration) -> Duration {
    let f = rand::thread_rng().gen_range(0.8..1.2);
    base.mul_f64(f)
}

impl SimDevice {
    /// Connect and wait for the broker's CONNACK (an authentication failure is an error here).
    /// The device then keeps its own connection alive in the background.
    pub async fn connect(cfg: DeviceConfig) -> Result<SimDevice, DeviceError> {
        let mut opts = MqttOptions::new(
            &cfg.device_id,
            cfg.broker.ip().to_string(),
            cfg.broker.port(),
        );
        opts.set_credentials(&cfg.device_id, &cfg.secret);
        opts.set_clean_session(false);
        opts.set_keep_alive(cfg.keep_alive);
        opts.set_last_will(LastWill::new(
            topic::topic(&cfg.device_id, topic::Kind::Status),
            r#"{"online":false}"#,
            QoS::AtLeastOnce,
            true,
        ));
        if let Some(tls) = &cfg.tls {
            opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls.clone()),
            ));
        }
        let (client, mut events) = AsyncClient::new(opts, 256);
        // Small messages must not wait for Nagle + delayed ACK (~40 ms per hop).
        events.network_options.set_tcp_nodelay(true);
        // First connection: report failure directly instead of retrying forever.
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(e) => return Err(DeviceError::Connect(e.to_string())),
            }
        }
        let feedback_topic = topic::topic(&cfg.device_id, topic::Kind::Feedback);
        let status_topic = topic::topic(&cfg.device_id, topic::Kind::Status);
        // Always, even with a session present (see the module note); presses wait for the SUBACK.
        client
            .subscribe(&feedback_topic, QoS::AtLeastOnce)
            .await
            .map_err(|_| DeviceError::Stopped)?;
        let online =
            serde_json::json!({"online": true, "battery": 90, "at": epoch_ms()}).to_string();
        client
            .publish(&status_topic, QoS::AtLeastOnce, true, online)
            .await
            .map_err(|_| DeviceError::Stopped)?;

        let shared = Arc::new(Shared {
            unanswered: Mutex::new(HashMap::new()),
            stats: Mutex::new(DeviceStats {
                connects: 1,
                ..Default::default()
            }),
            connected: Mutex::new(true),
            ready: Mutex::new(false),
            gone: tokio::sync::Notify::new(),
            losses: tokio::sync::watch::channel(0).0,
        });
        let (tx, heard) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        tokio::spawn(event_loop(
            events,
            client.clone(),
            shared.clone(),
            tx,
            feedback_topic,
            stop.clone(),
        ));
        tokio::spawn(retransmitter(
            client.clone(),
            shared.clone(),
            cfg.device_id.clone(),
            cfg.retransmit,
            stop.clone(),
        ));
        let boot = format!("{:08x}", rand::thread_rng().gen::<u32>());
        Ok(SimDevice {
            id: cfg.device_id,
            client,
            heard,
            shared,
            retransmit: cfg.retransmit,
            counter: 0,
            boot,
            stop,
        })
    }

    /// Press a button. Returns the press id; the press is retransmitted until answered.
    pub async fn press(&mut self, button: &str, gesture: Gesture) -> Result<String, DeviceError> {
        self.counter += 1;
        let id = format!(
            "{}-{}-{}",
            self.id.chars().take(40).collect::<String>(),
            self.boot,
            self.counter
        );
        let payload = serde_json::json!({"id": id, "button": button, "gesture": gesture, "at": epoch_ms(), "battery": 87});
        self.press_payload(&id, serde_json::to_vec(&payload).expect("json serializes"))
            .await?;
        Ok(id)
    }

    /// Publish an arbitrary press payload under `id` and keep retransmitting it until a
    /// feedback names `id`. Sent at once when the device is connected and subscribed, else as
    /// soon as it is.
    pub async fn press_payload(&mut self, id: &str, payload: Vec<u8>) -> Result<(), DeviceError> {
        // Decided under the `ready` lock: a SUBACK handled meanwhile either sees this press in
        // `unanswered` (and sends it) or happens before the check (and this sends it).
        let send_now = {
            let ready = self.shared.ready.lock().expect("lock");
            self.shared.unanswered.lock().expect("lock").insert(
                id.to_owned(),
                Unanswered {
                    payload: payload.clone(),
                    next_send: Instant::now() + jittered(self.retransmit),
                    sent: *ready,
                },
            );
            *ready
        };
        if !send_now {
            return Ok(());
        }
        let t = topic::topic(&self.id, topic::Kind::Press);
        self.client
            .publish(t, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|_| DeviceError::Stopped)
    }

    /// Publish raw bytes on one of this device's topics, without retransmission.
    pub async fn publish_raw(
        &self,
        kind: topic::Kind,
        payload: Vec<u8>,
    ) -> Result<(), DeviceError> {
        let t = topic::topic(&self.id, kind);
        self.client
            .publish(t, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|_| DeviceError::Stopped)
    }

    /// Publish raw bytes on any topic (the ACL will close the connection for foreign ones).
    pub async fn publish_to(&self, topic: &str, payload: Vec<u8>) -> Result<(), DeviceError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|_| DeviceError::Stopped)
    }

    /// Subscribe to any filter (the ACL will close the connection for foreign ones).
    pub async fn subscribe_to(&self, filter: &str) -> Result<(), DeviceError> {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .map_err(|_| DeviceError::Stopped)
    }

    /// The next feedback, whatever it answers.
    pub async fn next_feedback(&mut self, timeout: Duration) -> Result<Heard, DeviceError> {
        match tokio::time::timeout(timeout, self.heard.recv()).await {
            Ok(Some(h)) => Ok(h),
            Ok(None) => Err(DeviceError::Stopped),
            Err(_) => Err(DeviceError::Timeout(timeout, "feedback".into())),
        }
    }

    /// Wait for a feedback about press `press_id` in state `state`; returns every feedback for
    /// that press heard on the way (in order, ending with the one asked for). Feedback for other
    /// presses is discarded.
    pub async fn wait_for(
        &mut self,
        press_id: &str,
        state: FeedbackState,
        timeout: Duration,
    ) -> Result<Vec<Heard>, DeviceError> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let h = match tokio::time::timeout(left, self.heard.recv()).await {
                Ok(Some(h)) => h,
                Ok(None) => return Err(DeviceError::Stopped),
                Err(_) => {
                    let states: Vec<_> = seen
                        .iter()
                        .map(|h: &Heard| h.feedback.state.as_str())
                        .collect();
                    return Err(DeviceError::Timeout(
                        timeout,
                        format!("{state} for press {press_id} (heard {states:?})"),
                    ));
                }
            };
            if h.feedback.press.as_deref() == Some(press_id) {
                let done = h.feedback.state == state;
                seen.push(h);
                if done {
                    return Ok(seen);
                }
            }
        }
    }

    /// Presses not yet answered by any feedback.
    pub fn unanswered(&self) -> usize {
        self.shared.unanswered.lock().expect("lock").len()
    }

    /// The device's own counters.
    pub fn stats(&self) -> DeviceStats {
        self.shared.stats.lock().expect("lock").clone()
    }

    /// Whether the last connection attempt succeeded and has not failed since.
    pub fn is_connected(&self) -> bool {
        *self.shared.connected.lock().expect("lock")
    }

    /// Wait until the broker has closed the connection (counted since the device connected);
    /// `false` when it stayed up for `timeout`.
    pub async fn wait_disconnected(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.losses.subscribe();
        let closed = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|n| *n > 0)).await,
            Ok(Ok(_))
        );
        closed
    }

    /// Say goodbye and disconnect cleanly, then stop the background tasks. A clean DISCONNECT
    /// discards the last will, so the device first publishes its own retained
    /// `{"online":false}`: the gateway's count of connected devices must not keep a device that
    /// left politely.
    pub async fn disconnect(self) {
        let status = topic::topic(&self.id, topic::Kind::Status);
        let bye = serde_json::json!({"online": false, "at": epoch_ms()}).to_string();
        let _ = self
            .client
            .publish(status, QoS::AtLeastOnce, true, bye)
            .await;
        if self.client.disconnect().await.is_ok() {
            // Wait (briefly) for the event loop to send both before stopping it.
            let _ = tokio::time::timeout(Duration::from_secs(2), self.shared.gone.notified()).await;
        }
        self.stop.cancel();
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn event_loop(
    mut events: rumqttc::EventLoop,
    client: AsyncClient,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Heard>,
    feedback_topic: String,
    stop: CancellationToken,
) {
    let mut failures: u32 = 0;
    let press_topic = feedback_topic.trim_end_matches("feedback").to_owned() + "press";
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            ev = events.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Ok(f) = serde_json::from_slice::<Feedback>(&p.payload) {
                    if let Some(id) = &f.press {
                        shared.unanswered.lock().expect("lock").remove(id);
                    }
                    let _ = tx.send(Heard {
                        feedback: f,
                        at: Instant::now(),
                    });
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                *shared.connected.lock().expect("lock") = true;
                shared.stats.lock().expect("lock").connects += 1;
                // Subscribe again whatever `session_present` says (see the module note), and
                // send presses only once the SUBACK says the subscription exists.
                let _ = client.try_subscribe(&feedback_topic, QoS::AtLeastOnce);
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                send_unanswered(&client, &shared, &press_topic)
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                shared.gone.notify_one();
                return;
            }
            Ok(_) => {}
            Err(_) => {
                *shared.ready.lock().expect("lock") = false;
                *shared.connected.lock().expect("lock") = false;
                shared.stats.lock().expect("lock").disconnects += 1;
                shared.losses.send_modify(|n| *n += 1);
                failures = failures.saturating_add(1);
                // Jittered exponential reconnect backoff: 0.25 s doubling to 30 s.
                let base = Duration::from_millis(250)
                    .saturating_mul(1 << failures.min(7))
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

/// The device is connected and subscribed: from now on presses go out, starting with every
/// one still unanswered (the device contract's resend after every reconnect).
fn send_unanswered(client: &AsyncClient, shared: &Shared, press_topic: &str) {
    let mut ready = shared.ready.lock().expect("lock");
    *ready = true;
    let resend: Vec<(Vec<u8>, bool)> = shared
        .unanswered
        .lock()
        .expect("lock")
        .values_mut()
        .map(|u| (u.payload.clone(), std::mem::replace(&mut u.sent, true)))
        .collect();
    for (payload, was_sent) in resend {
        if was_sent {
            shared.stats.lock().expect("lock").retransmits += 1;
        }
        let _ = client.try_publish(press_topic, QoS::AtLeastOnce, false, payload);
    }
    drop(ready);
}

async fn retransmitter(
    client: AsyncClient,
    shared: Arc<Shared>,
    device_id: String,
    every: Duration,
    stop: CancellationToken,
) {
    let press_topic = topic::topic(&device_id, topic::Kind::Press);
    let tick = (every / 5).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let now = Instant::now();
        if !*shared.ready.lock().expect("lock") {
            // Not subscribed: the resend after the SUBACK covers these.
            continue;
        }
        let due: Vec<Vec<u8>> = {
            let mut u = shared.unanswered.lock().expect("lock");
            u.values_mut()
                .filter(|x| x.next_send <= now)
                .map(|x| {
                    x.next_send = now + jittered(every);
                    x.sent = true;
                    x.payload.clone()
                })
                .collect()
        };
        for payload in due {
            shared.stats.lock().expect("lock").retransmits += 1;
            let _ = client
                .publish(&press_topic, QoS::AtLeastOnce, false, payload)
                .await;
        }
    }
}
