//! Telemetry: every metric name in one place, one function per event that counts (and, where a
//! human should know, logs), the Prometheus recorder, and the tracing subscriber.
//!
//! NOTE: no device id, resident id or request id is ever a label: cardinality stays bounded.

pub mod security;

use metrics::{counter, gauge, histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;
use yijian_wire::{FeedbackState, Gesture, RejectReason, Service};

/// `{gesture,outcome}`: valid presses taken in; outcome is `request`, `cancel`, `duplicate` or `store_error`.
pub const PRESS_RECEIVED_TOTAL: &str = "yijian_press_received_total";
/// `{reason}`: presses refused as malformed, unknown or misaddressed.
pub const PRESS_REJECTED_TOTAL: &str = "yijian_press_rejected_total";
/// Retransmitted presses answered from the journal.
pub const PRESS_DUPLICATES_TOTAL: &str = "yijian_press_duplicates_total";
/// Unknown fields seen in presses (ignored).
pub const PRESS_UNKNOWN_FIELDS_TOTAL: &str = "yijian_press_unknown_fields_total";
/// Presses whose device clock is more than a day off the gateway's (not recorded in latency).
pub const PRESS_CLOCK_SKEW_TOTAL: &str = "yijian_press_clock_skew_total";
/// Intake → `received` feedback published: the journal's cost.
pub const INTAKE_TO_RECEIVED_SECONDS: &str = "yijian_intake_to_received_seconds";
/// `{service}`: press `at` → backend accepted.
pub const PRESS_TO_DISPATCHED_SECONDS: &str = "yijian_press_to_dispatched_seconds";
/// `{backend,result}`: duration of one dispatch attempt.
pub const DISPATCH_ATTEMPT_SECONDS: &str = "yijian_dispatch_attempt_seconds";
/// `{backend,result}`: dispatch attempts.
pub const DISPATCH_ATTEMPTS_TOTAL: &str = "yijian_dispatch_attempts_total";
/// `{service,state}`: requests not yet closed or cancelled.
pub const REQUESTS_OPEN: &str = "yijian_requests_open";
/// `{service,reason}`: requests handed to a human operator.
pub const ESCALATIONS_TOTAL: &str = "yijian_escalations_total";
/// `{backend}`: 1 while the backend's circuit is open (or half-open), else 0.
pub const BACKEND_CIRCUIT_OPEN: &str = "yijian_backend_circuit_open";
/// Devices whose latest status says online.
pub const DEVICES_CONNECTED: &str = "yijian_devices_connected";
/// Desk requests: created → acknowledged by an operator.
pub const OPERATOR_ANSWER_SECONDS: &str = "yijian_operator_answer_seconds";
/// Heartbeats and last wills taken in.
pub const STATUS_RECEIVED_TOTAL: &str = "yijian_status_received_total";
/// `{reason}`: status messages refused.
pub const STATUS_REJECTED_TOTAL: &str = "yijian_status_rejected_total";
/// `{result}`: MQTT connection attempts by authentication result.
pub const MQTT_AUTH_TOTAL: &str = "yijian_mqtt_auth_total";
/// `{reason}`: MQTT connections closed by the topic ACL.
pub const MQTT_REFUSED_TOTAL: &str = "yijian_mqtt_refused_total";
/// `{state}`: feedback messages published to devices.
pub const FEEDBACK_SENT_TOTAL: &str = "yijian_feedback_sent_total";
/// One group commit of the journal.
pub const STORE_COMMIT_SECONDS: &str = "yijian_store_commit_seconds";
/// Commands per group commit.
pub const STORE_BATCH_SIZE: &str = "yijian_store_batch_size";
/// `{op}`: journal writes that failed.
pub const STORE_ERRORS_TOTAL: &str = "yijian_store_errors_total";
/// `{result}`: backend status callbacks.
pub const CALLBACKS_TOTAL: &str = "yijian_callbacks_total";
/// `{action,result}`: operator actions on requests.
pub const OPERATOR_ACTIONS_TOTAL: &str = "yijian_operator_actions_total";

/// Histogram buckets, in seconds: 0.5 ms to 60 s.
pub const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the Prometheus recorder once per process and return its handle.
///
/// NOTE: metrics are process-global; several gateways in one process (tests) share them.
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .expect("bucket list is non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed by an embedding program; then our
            // handle renders nothing but the gateway keeps working.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter as c, describe_gauge as g, describe_histogram as h};
    c!(PRESS_RECEIVED_TOTAL, Unit::Count, "Valid presses taken in, by gesture and outcome (request, cancel, duplicate, store_error).");
    c!(PRESS_REJECTED_TOTAL, Unit::Count, "Presses refused as malformed, from unknown devices or on bad topics, by reason.");
    c!(PRESS_DUPLICATES_TOTAL, Unit::Count, "Retransmitted presses answered from the journal without a new request.");
    c!(PRESS_UNKNOWN_FIELDS_TOTAL, Unit::Count, "Unknown fields seen in presses (ignored).");
    c!(PRESS_CLOCK_SKEW_TOTAL, Unit::Count, "Presses whose device clock is more than a day off the gateway clock.");
    h!(INTAKE_TO_RECEIVED_SECONDS, Unit::Seconds, "From intake of a press to its received feedback being published (journal commit included).");
    h!(PRESS_TO_DISPATCHED_SECONDS, Unit::Seconds, "From the press on the device clock to a backend accepting the request, by service.");
    h!(DISPATCH_ATTEMPT_SECONDS, Unit::Seconds, "Duration of one dispatch attempt, by backend and result.");
    c!(DISPATCH_ATTEMPTS_TOTAL, Unit::Count, "Dispatch attempts, by backend and result.");
    g!(REQUESTS_OPEN, Unit::Count, "Requests neither closed nor cancelled, by service and state.");
    c!(ESCALATIONS_TOTAL, Unit::Count, "Requests handed to a human operator, by service and reason.");
    g!(BACKEND_CIRCUIT_OPEN, Unit::Count, "1 while a backend's circuit breaker is open or half-open, else 0.");
    g!(DEVICES_CONNECTED, Unit::Count, "Devices whose latest status message says online.");
    h!(OPERATOR_ANSWER_SECONDS, Unit::Seconds, "Desk requests: from creation to an operator's acknowledgement.");
    c!(STATUS_RECEIVED_TOTAL, Unit::Count, "Status messages (heartbeats, last wills) taken in.");
    c!(STATUS_REJECTED_TOTAL, Unit::Count, "Status messages refused, by reason.");
    c!(MQTT_AUTH_TOTAL, Unit::Count, "MQTT connection attempts, by authentication result.");
    c!(MQTT_REFUSED_TOTAL, Unit::Count, "MQTT connections closed for publishing or subscribing outside the device's own topics, by reason.");
    c!(FEEDBACK_SENT_TOTAL, Unit::Count, "Feedback messages published to devices, by state.");
    h!(STORE_COMMIT_SECONDS, Unit::Seconds, "Duration of one journal group commit (fsync included).");
    h!(STORE_BATCH_SIZE, Unit::Count, "Commands written per journal group commit.");
    c!(STORE_ERRORS_TOTAL, Unit::Count, "Journal operations that failed, by operation.");
    c!(CALLBACKS_TOTAL, Unit::Count, "Backend status callbacks, by result.");
    c!(OPERATOR_ACTIONS_TOTAL, Unit::Count, "Operator actions on requests, by action and result.");
    // Pre-register the bounded label sets so dashboards see zeros rather than gaps.
    for r in RejectReason::ALL {
        counter!(PRESS_REJECTED_TOTAL, "reason" => r.as_str()).absolute(0);
    }
    counter!(PRESS_DUPLICATES_TOTAL).absolute(0);
    gauge!(DEVICES_CONNECTED).set(0.0);
    security::describe();
}

/// A valid press was taken in.
pub fn press_received(gesture: Gesture, outcome: &'static str) {
    counter!(PRESS_RECEIVED_TOTAL, "gesture" => gesture.as_str(), "outcome" => outcome).increment(1);
    if outcome == "duplicate" {
        counter!(PRESS_DUPLICATES_TOTAL).increment(1);
    }
}

/// A press was refused. Logged at debug: a misbehaving device could otherwise flood the log.
pub fn press_rejected(reason: RejectReason, device: Option<&str>, message: &str) {
    counter!(PRESS_REJECTED_TOTAL, "reason" => reason.as_str()).increment(1);
    tracing::debug!(device, reason = reason.as_str(), message, "press rejected");
}

/// Unknown fields were ignored.
pub fn press_unknown_fields(n: usize) {
    counter!(PRESS_UNKNOWN_FIELDS_TOTAL).increment(n as u64);
}

/// A press's device clock is far off.
pub fn press_clock_skew() {
    counter!(PRESS_CLOCK_SKEW_TOTAL).increment(1);
}

/// Intake → received published.
pub fn intake_to_received(d: Duration) {
    histogram!(INTAKE_TO_RECEIVED_SECONDS).record(d.as_secs_f64());
}

/// Press → backend accepted.
pub fn press_to_dispatched(service: Service, secs: f64) {
    histogram!(PRESS_TO_DISPATCHED_SECONDS, "service" => service.as_str()).record(secs);
}

/// One dispatch attempt finished.
pub fn dispatch_attempt(backend: &str, result: &'static str, d: Duration) {
    let backend = backend.to_owned();
    histogram!(DISPATCH_ATTEMPT_SECONDS, "backend" => backend.clone(), "result" => result).record(d.as_secs_f64());
    counter!(DISPATCH_ATTEMPTS_TOTAL, "backend" => backend, "result" => result).increment(1);
}

/// A request went to a human operator.
pub fn escalation(service: Service, reason: &'static str) {
    counter!(ESCALATIONS_TOTAL, "service" => service.as_str(), "reason" => reason).increment(1);
}

/// A backend's circuit changed state.
pub fn circuit(backend: &str, open: bool) {
    gauge!(BACKEND_CIRCUIT_OPEN, "backend" => backend.to_owned()).set(if open { 1.0 } else { 0.0 });
}

/// Open requests of one service and state.
pub fn requests_open(service: &str, state: &str, n: i64) {
    gauge!(REQUESTS_OPEN, "service" => service.to_owned(), "state" => state.to_owned()).set(n as f64);
}

/// Devices online.
pub fn devices_connected(n: usize) {
    gauge!(DEVICES_CONNECTED).set(n as f64);
}

/// An operator acknowledged a desk request.
pub fn operator_answer(secs: f64) {
    histogram!(OPERATOR_ANSWER_SECONDS).record(secs);
}

/// An operator action and its result (`ok`, `not_found`, `conflict`, `error`).
pub fn operator_action(action: &'static str, result: &'static str) {
    counter!(OPERATOR_ACTIONS_TOTAL, "action" => action, "result" => result).increment(1);
}

/// A status message was taken in.
pub fn status_received() {
    counter!(STATUS_RECEIVED_TOTAL).increment(1);
}

/// A status message was refused.
pub fn status_rejected(reason: RejectReason) {
    counter!(STATUS_REJECTED_TOTAL, "reason" => reason.as_str()).increment(1);
}

/// An MQTT connection attempt was authenticated (`accepted`) or refused (the reason).
pub fn mqtt_auth(result: &'static str) {
    counter!(MQTT_AUTH_TOTAL, "result" => result).increment(1);
}

/// The topic ACL closed a connection. Logged at warn: it is either a bug in a device or an attack.
pub fn mqtt_refused(reason: &'static str, client_id: &str, topic: &str) {
    counter!(MQTT_REFUSED_TOTAL, "reason" => reason).increment(1);
    tracing::warn!(client_id, topic, reason, "MQTT connection closed by the topic ACL");
}

/// Feedback was published.
pub fn feedback_sent(state: FeedbackState) {
    counter!(FEEDBACK_SENT_TOTAL, "state" => state.as_str()).increment(1);
}

/// One group commit.
pub fn store_commit(d: Duration, batch: usize) {
    histogram!(STORE_COMMIT_SECONDS).record(d.as_secs_f64());
    histogram!(STORE_BATCH_SIZE).record(batch as f64);
}

/// A journal operation failed. Logged at error: an operator must act (disk full, permissions).
pub fn store_error(op: &'static str, error: &dyn std::fmt::Display) {
    counter!(STORE_ERRORS_TOTAL, "op" => op).increment(1);
    tracing::error!(op, %error, "journal write failed");
}

/// A backend callback was handled.
pub fn callback(result: &'static str) {
    counter!(CALLBACKS_TOTAL, "result" => result).increment(1);
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// The default log filter. rumqttd logs every disconnect and refused login at error level from
/// `rumqttd::server::broker`; the gateway counts those itself (`yijian_mqtt_auth_total`), so a
/// reconnect storm does not bury real errors.
pub const DEFAULT_LOG_FILTER: &str = "info,rumqttd=warn,rumqttd::server::broker=off,rumqttc=warn";

/// Install the tracing subscriber. `RUST_LOG` overrides the default filter (`info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = result;
}
