//! Stage 1 of the path — the embedded MQTT broker (rumqttd 0.20) on the gateway's own runtime,
//! with authentication against the device registry and a per-device topic ACL.
//!
//! NOTE (DESIGN §6): rumqttd keeps everything in memory and PUBACKs a device's message before
//! the gateway has it, so the broker is not the durable layer; the journal and the device's
//! retransmission are. rumqttd has no ACLs: [`Acl`] wraps its v4 protocol to close any
//! connection that publishes or subscribes outside its own `yijian/v1/devices/{client_id}/`,
//! sends faster than its token bucket allows ([`crate::flood`]), was made before its device's
//! credentials changed ([`evict`]), or whose TLS client certificate names another device
//! ([`tls`]). SECURITY.md is the threat model these controls answer.

pub mod evict;
pub mod sessions;
pub mod tls;

use crate::config::MqttConfig;
use crate::devices::{self, Directory};
use crate::feedback::resume;
use crate::flood::{FloodConfig, TokenBucket};
use crate::telemetry;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{ConnectReturnCode, Error as ProtocolError, Packet, Protocol};
use rumqttd::{ConnectionSettings, RouterConfig, SegmentConfig, ServerSettings};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use yijian_wire::topic;

/// Client ids of the gateway's own MQTT connections. The '.' cannot occur in a device id, so no
/// device can ever be registered under one of these names.
pub const GATEWAY_PRESS_CLIENT: &str = "yijian.gateway.press";
/// See [`GATEWAY_PRESS_CLIENT`].
pub const GATEWAY_STATUS_CLIENT: &str = "yijian.gateway.status";
/// See [`GATEWAY_PRESS_CLIENT`].
pub const GATEWAY_FEEDBACK_CLIENT: &str = "yijian.gateway.feedback";

fn is_gateway_client(id: &str) -> bool {
    id.starts_with("yijian.gateway.")
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `[mqtt] listen`: the gateway's own connections, and devices unless TLS-only.
    Plain,
    /// `[mqtt.tls] listen`: devices only.
    Tls,
}

/// Who may connect.
#[derive(Clone)]
pub struct Accounts {
    /// Registered devices.
    directory: Directory,
    /// The gateway's own secret, made at start and never written anywhere.
    gateway_secret: Arc<str>,
    /// Devices are admitted only once intake's subscriptions exist: rumqttd drops messages on
    /// topics nobody subscribes to.
    admitting: Arc<AtomicBool>,
    /// Devices may use the plain listener (false when `[mqtt.tls]` says TLS only).
    plaintext_devices: bool,
    /// Credential changes seen by [`evict`]; the ACL closes connections older than them.
    pub changes: Arc<evict::CredentialChanges>,
}

impl Accounts {
    /// Accounts over `directory`, with a fresh random gateway secret.
    pub fn new(directory: Directory, cfg: &MqttConfig) -> Self {
        Accounts {
            directory,
            gateway_secret: devices::new_secret().into(),
            admitting: Arc::new(AtomicBool::new(false)),
            plaintext_devices: cfg.tls.as_ref().is_none_or(|t| t.plaintext_devices),
            changes: Arc::default(),
        }
    }

    /// The gateway's own password, for its MQTT clients.
    pub fn gateway_secret(&self) -> &str {
        &self.gateway_secret
    }

    /// The gateway's own password, shared.
    pub fn gateway_secret_arc(&self) -> Arc<str> {
        self.gateway_secret.clone()
    }

    /// Start (or stop) admitting devices.
    pub fn admit_devices(&self, on: bool) {
        self.admitting.store(on, Ordering::Release);
    }

    fn is_gateway_secret(&self, password: &str) -> bool {
        password
            .as_bytes()
            .ct_eq(self.gateway_secret.as_bytes())
            .into()
    }

    /// Decide one CONNECT on `listener`. Returns the result label counted in
    /// `yijian_mqtt_auth_total` (`accepted` and `evict` admit).
    pub fn check(
        &self,
        listener: Listener,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> &'static str {
        if username == evict::EVICT_USER
            && listener == Listener::Plain
            && topic::is_valid_device_id(client_id)
        {
            return if self.is_gateway_secret(password) {
                "evict"
            } else {
                "bad_credentials"
            };
        }
        if client_id != username {
            return "client_id_mismatch";
        }
        if is_gateway_client(client_id) {
            if listener != Listener::Plain {
                return "gateway_over_tls";
            }
            return if self.is_gateway_secret(password) {
                "accepted"
            } else {
                "bad_credentials"
            };
        }
        if !topic::is_valid_device_id(client_id) {
            return "invalid_client_id";
        }
        if listener == Listener::Plain && !self.plaintext_devices {
            return "plaintext_refused";
        }
        if !self.admitting.load(Ordering::Acquire) {
            return "not_ready";
        }
        match self.directory.load(client_id) {
            Ok(Some(rec)) if devices::verify(password, &rec.secret_sha256) => "accepted",
            Ok(Some(_)) => "bad_credentials",
            Ok(None) if self.directory.is_revoked(client_id) => "revoked",
            Ok(None) => "unknown_device",
            Err(e) => {
                tracing::error!(error = %e, "device lookup failed during MQTT authentication");
                "store_error"
            }
        }
    }
}

/// rumqttd's v4 protocol with a per-device topic ACL, a per-connection rate limit, the
/// credential-change check and the TLS identity binding. rumqttd clones it for every
/// connection; every packet the connection sends passes [`Protocol::read_mut`] here, and an
/// error closes the connection.
#[derive(Clone)]
pub struct Acl {
    inner: V4,
    /// The CONNECT's client id, once seen.
    client_id: Option<String>,
    /// The gateway's own connections may use any topic and are not rate limited.
    exempt: bool,
    /// Connected under a device's client id only to push that device's connection out
    /// ([`evict`]): it may neither publish nor subscribe.
    evictor: bool,
    /// When the CONNECT arrived: a credential change after it closes the connection.
    connected_at: Option<Instant>,
    /// What a TLS handshake established: `None` on the plain listener, `Some(None)` over TLS
    /// without a client certificate, `Some(Some(cn))` with a verified one.
    identity: Option<Option<String>>,
    /// Message budget of a device connection, set at CONNECT.
    bucket: Option<TokenBucket>,
    /// Rate and burst for that budget.
    flood: Arc<FloodConfig>,
    /// Credential changes (shared with [`evict`]).
    changes: Arc<evict::CredentialChanges>,
    /// Device connections open at the broker, shared by every connection.
    open: Arc<sessions::OpenSessions>,
    /// This device connection's place among them, from its CONNECT (counted once accepted).
    session: Option<Arc<sessions::Session>>,
}

impl Acl {
    fn new(flood: Arc<FloodConfig>, changes: Arc<evict::CredentialChanges>) -> Self {
        Acl {
            inner: V4,
            client_id: None,
            exempt: false,
            evictor: false,
            connected_at: None,
            identity: None,
            bucket: None,
            flood,
            changes,
            open: Arc::default(),
            session: None,
        }
    }

    fn refuse(&self, reason: &'static str, topic: &str) -> ProtocolError {
        telemetry::mqtt_refused(reason, self.client_id.as_deref().unwrap_or(""), topic);
        // Any error from read_mut closes the connection.
        ProtocolError::InvalidProtocol
    }

    fn own(&self, kind: topic::Kind) -> Option<String> {
        self.client_id.as_deref().map(|id| topic::topic(id, kind))
    }
}

impl Protocol for Acl {
    fn peer_identity(&mut self, identity: Option<String>) {
        self.identity = Some(identity);
    }

    fn read_mut(
        &mut self,
        stream: &mut bytes::BytesMut,
        max_size: usize,
    ) -> Result<Packet, ProtocolError> {
        let packet = self.inner.read_mut(stream, max_size)?;
        if let (false, Some(connected_at), Some(id)) =
            (self.exempt, self.connected_at, self.client_id.as_deref())
        {
            let now = Instant::now();
            if self.bucket.as_mut().is_some_and(|b| !b.take(now)) {
                crate::telemetry::security::flood_disconnect(id);
                return Err(ProtocolError::InvalidProtocol);
            }
            if !self.evictor && self.changes.changed_since(id, connected_at) {
                return Err(self.refuse("credentials_changed", ""));
            }
        }
        match &packet {
            Packet::Connect(connect, _, will, _, login) => {
                // A second CONNECT is a protocol violation (MQTT 3.1.1 §3.1). Refused here,
                // before rumqttd sees it: it would otherwise switch this ACL to another client id
                // (even a gateway one) and rumqttd's router would log the packet, password included.
                if self.client_id.is_some() {
                    return Err(self.refuse("second_connect", &connect.client_id));
                }
                self.client_id = Some(connect.client_id.clone());
                self.connected_at = Some(Instant::now());
                self.evictor = login
                    .as_ref()
                    .is_some_and(|l| l.username == evict::EVICT_USER);
                self.exempt = is_gateway_client(&connect.client_id) && !self.evictor;
                if !self.exempt {
                    self.bucket = Some(self.flood.bucket(Instant::now()));
                }
                // An evictor takes a device's client id on purpose ([`evict`]): not a duplicate.
                if !self.exempt && !self.evictor {
                    self.session = Some(Arc::new(sessions::Session::new(
                        self.open.clone(),
                        connect.client_id.clone(),
                    )));
                }
                // Over TLS with a verified client certificate, the certificate names the device.
                if let Some(Some(cn)) = &self.identity {
                    if *cn != connect.client_id {
                        return Err(self.refuse("certificate_mismatch", cn));
                    }
                }
                if let (false, Some(will)) = (self.exempt, will) {
                    let t = String::from_utf8_lossy(&will.topic);
                    if Some(t.as_ref()) != self.own(topic::Kind::Status).as_deref() {
                        return Err(self.refuse("will_topic", &t));
                    }
                }
            }
            Packet::Publish(p, _) if self.evictor => {
                return Err(self.refuse("evictor", &String::from_utf8_lossy(&p.topic)));
            }
            Packet::Subscribe(s, _) if self.evictor => {
                return Err(self.refuse(
                    "evictor",
                    s.filters.first().map(|f| f.path.as_str()).unwrap_or(""),
                ));
            }
            Packet::Publish(p, _) if !self.exempt => {
                let t = String::from_utf8_lossy(&p.topic);
                let allowed = self.own(topic::Kind::Press).as_deref() == Some(t.as_ref())
                    || self.own(topic::Kind::Status).as_deref() == Some(t.as_ref());
                if !allowed {
                    return Err(self.refuse("publish_topic", &t));
                }
            }
            Packet::Subscribe(s, _) if !self.exempt => {
                let own = self.own(topic::Kind::Feedback);
                if let Some(f) = s
                    .filters
                    .iter()
                    .find(|f| Some(f.path.as_str()) != own.as_deref())
                {
                    return Err(self.refuse("subscribe_topic", &f.path));
                }
            }
            _ => {}
        }
        Ok(packet)
    }

    fn write(&self, packet: Packet, write: &mut bytes::BytesMut) -> Result<usize, ProtocolError> {
        if let (Packet::ConnAck(ack, _), Some(session)) = (&packet, &self.session) {
            if ack.code == rumqttd::protocol::ConnectReturnCode::Success && session.accepted() {
                telemetry::mqtt_duplicate_client_id(self.client_id.as_deref().unwrap_or(""));
            }
        }
        self.inner.write(packet, write)
    }
}

/// The CONNACK return code for a result of [`Accounts::check`]: 4 for credentials that do
/// not match (unknown device, wrong secret), 5 for a device that may not connect this way
/// (revoked, client id not its username, plaintext when TLS is required), 2 for a client id
/// that cannot be a device's, 3 while the gateway is not ready.
pub fn connack_code(result: &str) -> ConnectReturnCode {
    match result {
        "accepted" | "evict" => ConnectReturnCode::Success,
        "bad_credentials" | "unknown_device" => ConnectReturnCode::BadUserNamePassword,
        "invalid_client_id" => ConnectReturnCode::ClientIdentifierNotValid,
        "not_ready" | "store_error" => ConnectReturnCode::ServiceUnavailable,
        _ => ConnectReturnCode::NotAuthorized,
    }
}

/// MQTT 3.1.1's number for a return code (§3.2.2.3).
fn connack_number(code: ConnectReturnCode) -> u8 {
    match code {
        ConnectReturnCode::Success => 0,
        ConnectReturnCode::RefusedProtocolVersion => 1,
        ConnectReturnCode::ClientIdentifierNotValid => 2,
        ConnectReturnCode::ServiceUnavailable => 3,
        ConnectReturnCode::BadUserNamePassword => 4,
        _ => 5,
    }
}

fn segment(size: usize, count: usize) -> SegmentConfig {
    SegmentConfig {
        max_segment_size: size,
        max_segment_count: count,
    }
}

/// Start the broker: rumqttd's router thread, and its listeners (the plain one, and the TLS one
/// when configured; each binds its address itself) on a thread of their own running a
/// current-thread runtime, as upstream rumqttd does. `tls` is the handshake built from
/// `cfg.tls`. Cancelling `stop` drops that runtime and with it every device connection.
///
/// NOTE: not on the gateway's runtime: rumqttd's link code blocks on synchronous channels
/// (`LinkBuilder::build` waits for the router's CONNACK with a blocking `recv`, and sends to the
/// router's bounded channel block when it is full). On the gateway's two workers a burst of
/// connects stalled intake, dispatch and the API (measured: 10,000 devices ramping at 2,000/s
/// got ~90 connects/s and no feedback at all).
pub fn start(
    cfg: &MqttConfig,
    flood: &FloodConfig,
    accounts: Accounts,
    tls: Option<Arc<tls::TlsHandshake>>,
    resume: Arc<resume::Resume>,
    stop: CancellationToken,
) -> std::io::Result<JoinHandle<()>> {
    // Commit-log limits per filter (rumqttd keeps them in memory, and counts only topic and
    // payload bytes: each entry really costs ~400 bytes with its struct). Intake's press filter
    // keeps up to ~8 MB of presses (~60,000, a minute of intake stall at 1,000/s) and status
    // less. Each device's feedback log keeps 1-2 KB (the last few answers, what a device that
    // was away needs): at 4 KB x 2 the 10,000 logs of a soak held ~250 MB once full. Memory
    // does not grow with history, and a press or feedback evicted before it was read is
    // recovered when the device retransmits (DESIGN §2).
    let mut custom = HashMap::new();
    custom.insert(topic::PRESS_FILTER.to_owned(), segment(2 << 20, 4));
    custom.insert(topic::STATUS_FILTER.to_owned(), segment(1 << 20, 2));
    custom.insert("yijian/v1/devices/+/feedback".to_owned(), segment(1024, 2));
    let router_config = RouterConfig {
        max_connections: cfg.max_connections,
        max_outgoing_packet_count: 200,
        max_segment_size: 1 << 20,
        max_segment_count: 2,
        custom_segment: Some(custom),
        initialized_filters: None,
        ..Default::default()
    };
    // Every subscription put in place, and every one that lost messages, is reported to
    // `resume` (rumqttd patch 11): a device that missed feedback hears where its requests stand.
    // A press's PUBACK waits until intake acknowledges it, which it does once the press is in
    // the journal (rumqttd patch 14): a PUBACK means "in the journal".
    let router = rumqttd::Router::new(0, router_config)
        .on_subscribe(move |client_id, filter, event| {
            let event = match event {
                rumqttd::Subscription::New => resume::Subscription::New,
                rumqttd::Subscription::Kept => resume::Subscription::Kept,
                rumqttd::Subscription::Skipped => resume::Subscription::Skipped,
            };
            resume.subscribed(client_id, filter, event)
        })
        .defer_acks(topic::PRESS_FILTER);
    let router_tx = router.spawn();

    let connections = |listener: Listener| {
        let accounts = accounts.clone();
        let mut connections = ConnectionSettings {
            connection_timeout_ms: cfg.connect_timeout_ms,
            max_payload_size: cfg.max_payload_size,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            // Feedback may be published before a device has subscribed; without dynamic filters
            // rumqttd would disconnect the gateway's publisher for that.
            dynamic_filters: true,
        };
        connections.set_auth_handler(move |client_id: String, user: String, pass: String| {
            let result = accounts.check(listener, &client_id, &user, &pass);
            telemetry::mqtt_auth(result);
            let code = connack_code(result);
            if code != ConnectReturnCode::Success {
                telemetry::mqtt_connect_refused(&client_id, result, connack_number(code));
            }
            // The device hears the code (rumqttd patch 15), so its MQTT library says why.
            std::future::ready(code)
        });
        connections
    };
    let flood = Arc::new(flood.clone());
    let acl = Acl::new(flood, accounts.changes.clone());
    let mut servers = vec![rumqttd::Server::new(
        ServerSettings {
            name: "yijian-v4".into(),
            listen: cfg.listen,
            tls: None,
            next_connection_delay_ms: 0,
            connections: connections(Listener::Plain),
        },
        router_tx.clone(),
        acl.clone(),
    )];
    if let (Some(t), Some(handshake)) = (&cfg.tls, tls) {
        let settings = ServerSettings {
            name: "yijian-v4-tls".into(),
            listen: t.listen,
            tls: None,
            next_connection_delay_ms: 0,
            connections: connections(Listener::Tls),
        };
        servers.push(rumqttd::Server::new(settings, router_tx, acl).with_handshake(handshake));
    }
    std::thread::Builder::new()
        .name("yijian-mqtt".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the MQTT listener's runtime");
                    return;
                }
            };
            rt.block_on(async move {
                for mut server in servers {
                    tokio::spawn(async move {
                        if let Err(e) = server.start(rumqttd::LinkType::Remote).await {
                            tracing::error!(error = %e, "MQTT listener stopped");
                        }
                    });
                }
                stop.cancelled().await;
            });
            // Dropping the runtime ends every connection task: devices see the broker go away.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
        })
}
