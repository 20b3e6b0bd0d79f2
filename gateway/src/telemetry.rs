//! Telemetry: every metric name in one place, one function per event that counts (and, where a
//! human should know, logs), the Prometheus recorder, and the tracing subscriber.
//!
//! NOTE: no device id, resident id or request id is ever a label: cardinality stays bounded.
//! Those ids travel in tracing spans instead ([`press_span`], [`request_span`]), so every log
//! line about one press carries them. The dashboards and alerts built on these names live in
//! `dashboards/`; a test checks that every name they use is one a real scrape shows.

pub mod sampler;

pub mod security;

use metrics::{counter, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;
use yijian_wire::{FeedbackState, Gesture, Priority, RejectReason, Service};

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
/// `{service}`: press `at` → `received` feedback published (what the resident waits for).
pub const PRESS_TO_RECEIVED_SECONDS: &str = "yijian_press_to_received_seconds";
/// `{service,priority}`: requests created from presses.
pub const REQUESTS_CREATED_TOTAL: &str = "yijian_requests_created_total";
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
/// Devices whose latest status says offline (a last will, or a polite goodbye).
pub const DEVICES_OFFLINE: &str = "yijian_devices_offline";
/// Desk requests: created → acknowledged by an operator.
pub const OPERATOR_ANSWER_SECONDS: &str = "yijian_operator_answer_seconds";
/// Age of the oldest escalated request no operator has acknowledged yet (0 when none).
pub const DESK_OLDEST_WAITING_SECONDS: &str = "yijian_desk_oldest_waiting_seconds";
/// Heap memory SQLite holds (page caches, prepared statements, schemas of every journal
/// connection): the journal's share of the process's memory.
pub const STORE_MEMORY_BYTES: &str = "yijian_store_memory_bytes";
/// Bytes the process has allocated and not freed (the allocator's count, when the binary
/// reports it).
pub const HEAP_ALLOCATED_BYTES: &str = "yijian_heap_allocated_bytes";
/// Bytes of physical memory the allocator holds for the heap: allocated, plus free space it
/// has not returned to the OS yet.
pub const HEAP_RESIDENT_BYTES: &str = "yijian_heap_resident_bytes";
/// Heartbeats and last wills taken in.
pub const STATUS_RECEIVED_TOTAL: &str = "yijian_status_received_total";
/// `{reason}`: status messages refused.
pub const STATUS_REJECTED_TOTAL: &str = "yijian_status_rejected_total";
/// `{result}`: MQTT connection attempts by authentication result.
pub const MQTT_AUTH_TOTAL: &str = "yijian_mqtt_auth_total";
/// Device connections accepted while another under the same client id was still open (the
/// broker drops the older one).
pub const MQTT_DUPLICATE_CLIENT_ID_TOTAL: &str = "yijian_mqtt_duplicate_client_id_total";
/// `{reason}`: MQTT connections closed by the topic ACL.
pub const MQTT_REFUSED_TOTAL: &str = "yijian_mqtt_refused_total";
/// `{state}`: feedback messages published to devices.
pub const FEEDBACK_SENT_TOTAL: &str = "yijian_feedback_sent_total";
/// `{state}`: feedback messages that could not be queued for publishing.
pub const FEEDBACK_FAILED_TOTAL: &str = "yijian_feedback_failed_total";
/// `{state}`: feedback told again to a device when its subscription came up (after a
/// reconnect or a gateway restart).
pub const FEEDBACK_RESUMED_TOTAL: &str = "yijian_feedback_resumed_total";
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
/// `{result}`: rule set reloads (`ok`, `invalid`: the old set stayed).
pub const RULES_RELOAD_TOTAL: &str = "yijian_rules_reload_total";
/// `{kind,result}`: follow-ups finished: backend cancellations and contact notifications
/// (`delivered`, `unknown` (the backend did not have it), `refused`, `expired`).
pub const FOLLOWUPS_TOTAL: &str = "yijian_followups_total";
/// `{outcome}`: cancel gestures: `cancelled`, `flagged` (help already on its way: an operator
/// confirms by phone), `nothing_open`.
pub const CANCELS_TOTAL: &str = "yijian_cancels_total";
/// `{version}`: always 1; says which build is running (and that it is scraped at all).
pub const BUILD_INFO: &str = "yijian_build_info";

/// Histogram buckets, in seconds: 0.5 ms to 60 s.
pub const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0,
    60.0,
];

/// Operator answer time is measured against the telecare targets (97.5% within 60 s, 99%
/// within 180 s): it needs bounds at and past 180 s, and nothing below a second.
pub const OPERATOR_ANSWER_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0, 1800.0,
];

/// Commands per group commit: a count, not seconds (up to `store.max_batch`).
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// The `outcome` values of [`PRESS_RECEIVED_TOTAL`].
pub const PRESS_OUTCOMES: &[&str] = &["request", "cancel", "duplicate", "store_error"];

/// The `reason` values of [`MQTT_REFUSED_TOTAL`] (the broker's topic ACL).
pub const MQTT_REFUSED_REASONS: &[&str] = &[
    "will_topic",
    "publish_topic",
    "subscribe_topic",
    "second_connect",
];

/// The `result` values of [`CALLBACKS_TOTAL`].
pub const CALLBACK_RESULTS: &[&str] = &["ok", "bad_request", "not_found", "conflict"];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the Prometheus recorder once per process and return its handle.
///
/// NOTE: metrics are process-global; several gateways in one process (tests) share them.
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(OPERATOR_ANSWER_SECONDS.into()),
                        OPERATOR_ANSWER_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(STORE_BATCH_SIZE.into()),
                        BATCH_SIZE_BUCKETS,
                    )
                })
                .expect("bucket lists are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed by an embedding program; then our
            // handle renders nothing but the gateway keeps working.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            drain_histograms(handle.clone());
            handle
        })
        .clone()
}

/// The exporter keeps every histogram sample until a scrape folds it into the buckets; with
/// nobody scraping, that grew by a few dozen bytes per press forever. Fold them every 10 s
/// (rendering is what folds them in this exporter version; the text is thrown away).
fn drain_histograms(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("yijian-metrics".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(10));
            drop(handle.render());
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histograms grow until scraped");
    }
}

fn describe() {
    use metrics::{describe_counter as c, describe_gauge as g, describe_histogram as h};
    c!(
        PRESS_RECEIVED_TOTAL,
        Unit::Count,
        "Valid presses taken in, by gesture and outcome (request, cancel, duplicate, store_error)."
    );
    c!(
        PRESS_REJECTED_TOTAL,
        Unit::Count,
        "Presses refused as malformed, from unknown devices or on bad topics, by reason."
    );
    c!(
        PRESS_DUPLICATES_TOTAL,
        Unit::Count,
        "Retransmitted presses answered from the journal without a new request."
    );
    c!(
        PRESS_UNKNOWN_FIELDS_TOTAL,
        Unit::Count,
        "Unknown fields seen in presses (ignored)."
    );
    c!(
        PRESS_CLOCK_SKEW_TOTAL,
        Unit::Count,
        "Presses whose device clock is more than a day off the gateway clock."
    );
    h!(INTAKE_TO_RECEIVED_SECONDS, Unit::Seconds, "From intake of a press to its received feedback being published (journal commit included).");
    h!(PRESS_TO_RECEIVED_SECONDS, Unit::Seconds, "From the press on the device clock to its received feedback being published, by service (clock-skewed presses are not recorded).");
    c!(
        REQUESTS_CREATED_TOTAL,
        Unit::Count,
        "Requests created from presses, by service and priority."
    );
    h!(
        PRESS_TO_DISPATCHED_SECONDS,
        Unit::Seconds,
        "From the press on the device clock to a backend accepting the request, by service."
    );
    h!(
        DISPATCH_ATTEMPT_SECONDS,
        Unit::Seconds,
        "Duration of one dispatch attempt, by backend and result."
    );
    c!(
        DISPATCH_ATTEMPTS_TOTAL,
        Unit::Count,
        "Dispatch attempts, by backend and result."
    );
    g!(
        REQUESTS_OPEN,
        Unit::Count,
        "Requests neither closed nor cancelled, by service and state."
    );
    c!(
        ESCALATIONS_TOTAL,
        Unit::Count,
        "Requests handed to a human operator, by service and reason."
    );
    g!(
        BACKEND_CIRCUIT_OPEN,
        Unit::Count,
        "1 while a backend's circuit breaker is open or half-open, else 0."
    );
    g!(
        DEVICES_CONNECTED,
        Unit::Count,
        "Devices whose latest status message says online."
    );
    g!(
        DEVICES_OFFLINE,
        Unit::Count,
        "Devices whose latest status message says offline (last will or goodbye)."
    );
    h!(
        OPERATOR_ANSWER_SECONDS,
        Unit::Seconds,
        "Desk requests: from creation to an operator's acknowledgement."
    );
    g!(
        DESK_OLDEST_WAITING_SECONDS,
        Unit::Seconds,
        "Age of the oldest escalated request no operator has acknowledged yet, 0 when none waits."
    );
    g!(
        STORE_MEMORY_BYTES,
        Unit::Bytes,
        "Heap memory SQLite holds for the journal's connections (page caches, statements)."
    );
    g!(
        HEAP_ALLOCATED_BYTES,
        Unit::Bytes,
        "Heap bytes allocated and not yet freed, as the allocator counts them."
    );
    g!(
        HEAP_RESIDENT_BYTES,
        Unit::Bytes,
        "Physical memory the allocator holds for the heap (allocated plus retained free pages)."
    );
    c!(
        STATUS_RECEIVED_TOTAL,
        Unit::Count,
        "Status messages (heartbeats, last wills) taken in."
    );
    c!(
        STATUS_REJECTED_TOTAL,
        Unit::Count,
        "Status messages refused, by reason."
    );
    c!(
        MQTT_AUTH_TOTAL,
        Unit::Count,
        "MQTT connection attempts, by authentication result."
    );
    c!(MQTT_DUPLICATE_CLIENT_ID_TOTAL, Unit::Count, "Device MQTT connections accepted while another with the same client id was still open; the broker dropped the older one.");
    c!(MQTT_REFUSED_TOTAL, Unit::Count, "MQTT connections closed for publishing or subscribing outside the device's own topics, by reason.");
    c!(
        FEEDBACK_SENT_TOTAL,
        Unit::Count,
        "Feedback messages published to devices, by state."
    );
    c!(
        FEEDBACK_FAILED_TOTAL,
        Unit::Count,
        "Feedback messages that could not be queued for publishing, by state."
    );
    c!(
        FEEDBACK_RESUMED_TOTAL,
        Unit::Count,
        "Requests' states told again to a device when its feedback subscription came up, by state."
    );
    h!(
        STORE_COMMIT_SECONDS,
        Unit::Seconds,
        "Duration of one journal group commit (fsync included)."
    );
    h!(
        STORE_BATCH_SIZE,
        Unit::Count,
        "Commands written per journal group commit."
    );
    c!(
        STORE_ERRORS_TOTAL,
        Unit::Count,
        "Journal operations that failed, by operation."
    );
    c!(
        CALLBACKS_TOTAL,
        Unit::Count,
        "Backend status callbacks, by result."
    );
    c!(
        OPERATOR_ACTIONS_TOTAL,
        Unit::Count,
        "Operator actions on requests, by action and result."
    );
    c!(
        RULES_RELOAD_TOTAL,
        Unit::Count,
        "Rule set reloads, by result (ok, or invalid: the previous rules stayed)."
    );
    c!(
        FOLLOWUPS_TOTAL,
        Unit::Count,
        "Backend cancellations and contact notifications finished, by kind and result."
    );
    c!(
        CANCELS_TOTAL,
        Unit::Count,
        "Cancel gestures, by outcome (cancelled, flagged for an operator, nothing open)."
    );
    for r in ["ok", "invalid"] {
        counter!(RULES_RELOAD_TOTAL, "result" => r).increment(0);
    }
    g!(
        BUILD_INFO,
        Unit::Count,
        "Always 1, labelled with the gateway's version."
    );
    // Pre-register the bounded label sets so dashboards see zeros rather than gaps, and so
    // `increase()` sees the first event: a counter series that is born at 1 has no earlier
    // sample to increase from, and an alert on it would never fire.
    // NOTE: `increment(0)`, never `absolute(0)`: several gateways may share one process (tests).
    for r in RejectReason::ALL {
        counter!(PRESS_REJECTED_TOTAL, "reason" => r.as_str()).increment(0);
    }
    for g in Gesture::ALL {
        for o in PRESS_OUTCOMES {
            counter!(PRESS_RECEIVED_TOTAL, "gesture" => g.as_str(), "outcome" => *o).increment(0);
        }
    }
    for s in Service::ALL {
        for p in Priority::ALL {
            counter!(REQUESTS_CREATED_TOTAL, "service" => s.as_str(), "priority" => p.as_str())
                .increment(0);
        }
    }
    for s in FeedbackState::ALL {
        counter!(FEEDBACK_SENT_TOTAL, "state" => s.as_str()).increment(0);
        counter!(FEEDBACK_FAILED_TOTAL, "state" => s.as_str()).increment(0);
        counter!(FEEDBACK_RESUMED_TOTAL, "state" => s.as_str()).increment(0);
    }
    for r in RejectReason::ALL {
        counter!(STATUS_REJECTED_TOTAL, "reason" => r.as_str()).increment(0);
    }
    for r in MQTT_REFUSED_REASONS {
        counter!(MQTT_REFUSED_TOTAL, "reason" => *r).increment(0);
    }
    for r in CALLBACK_RESULTS {
        counter!(CALLBACKS_TOTAL, "result" => *r).increment(0);
    }
    for name in [
        PRESS_DUPLICATES_TOTAL,
        PRESS_UNKNOWN_FIELDS_TOTAL,
        PRESS_CLOCK_SKEW_TOTAL,
        STATUS_RECEIVED_TOTAL,
        MQTT_DUPLICATE_CLIENT_ID_TOTAL,
    ] {
        counter!(name).increment(0);
    }
    counter!(STORE_ERRORS_TOTAL, "op" => "commit").increment(0);
    gauge!(DEVICES_CONNECTED).set(0.0);
    gauge!(DEVICES_OFFLINE).set(0.0);
    gauge!(DESK_OLDEST_WAITING_SECONDS).set(0.0);
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    security::describe();
}

/// Register every `{service,reason}` series of [`ESCALATIONS_TOTAL`] at zero (see `describe`).
pub fn escalation_reasons(reasons: &[&'static str]) {
    for s in Service::ALL {
        for r in reasons {
            counter!(ESCALATIONS_TOTAL, "service" => s.as_str(), "reason" => *r).increment(0);
        }
    }
}

/// A valid press was taken in.
pub fn press_received(gesture: Gesture, outcome: &'static str) {
    counter!(PRESS_RECEIVED_TOTAL, "gesture" => gesture.as_str(), "outcome" => outcome)
        .increment(1);
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

/// Press (device clock) → `received` published. Counted elsewhere, not recorded, when the
/// device clock is more than a day off.
pub fn press_to_received(service: Service, press_at_ms: i64, now_ms: i64) {
    if let Some(secs) = since_press(press_at_ms, now_ms) {
        histogram!(PRESS_TO_RECEIVED_SECONDS, "service" => service.as_str()).record(secs);
    }
}

/// Press → backend accepted.
pub fn press_to_dispatched(service: Service, secs: f64) {
    histogram!(PRESS_TO_DISPATCHED_SECONDS, "service" => service.as_str()).record(secs);
}

/// Seconds from a press on the device clock to `now_ms` on the gateway's; `None` when the
/// device clock is more than a day off (such presses are counted by [`press_clock_skew`]).
pub fn since_press(press_at_ms: i64, now_ms: i64) -> Option<f64> {
    const DAY_MS: i64 = 24 * 3600 * 1000;
    ((now_ms - press_at_ms).abs() <= DAY_MS).then(|| (now_ms - press_at_ms).max(0) as f64 / 1000.0)
}

/// A press became a request.
pub fn request_created(service: Service, priority: Priority) {
    counter!(REQUESTS_CREATED_TOTAL, "service" => service.as_str(), "priority" => priority.as_str()).increment(1);
}

/// One dispatch attempt finished.
pub fn dispatch_attempt(backend: &str, result: &'static str, d: Duration) {
    let backend = backend.to_owned();
    histogram!(DISPATCH_ATTEMPT_SECONDS, "backend" => backend.clone(), "result" => result)
        .record(d.as_secs_f64());
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
    gauge!(REQUESTS_OPEN, "service" => service.to_owned(), "state" => state.to_owned())
        .set(n as f64);
}

/// Devices online and offline, by their latest status.
pub fn devices_connected(online: usize, offline: usize) {
    gauge!(DEVICES_CONNECTED).set(online as f64);
    gauge!(DEVICES_OFFLINE).set(offline as f64);
}

/// How long the oldest unanswered desk request has waited.
pub fn desk_oldest_waiting(secs: f64) {
    gauge!(DESK_OLDEST_WAITING_SECONDS).set(secs);
}

/// SQLite's heap, sampled.
pub fn store_memory(bytes: i64) {
    gauge!(STORE_MEMORY_BYTES).set(bytes.max(0) as f64);
}

/// The allocator's view of the heap, sampled.
pub fn heap(allocated: u64, resident: u64) {
    gauge!(HEAP_ALLOCATED_BYTES).set(allocated as f64);
    gauge!(HEAP_RESIDENT_BYTES).set(resident as f64);
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

/// A device connection was accepted while an older one with its client id was still open; the
/// broker drops the older one. Logged at warn: one now and then is a device reconnecting over a
/// half-open connection, many are a reconnect storm evicting sessions (DESIGN §6).
pub fn mqtt_duplicate_client_id(client_id: &str) {
    counter!(MQTT_DUPLICATE_CLIENT_ID_TOTAL).increment(1);
    tracing::warn!(client_id, "MQTT connection took over a client id that was still connected; the older connection is dropped");
}

/// The topic ACL closed a connection. Logged at warn: it is either a bug in a device or an attack.
pub fn mqtt_refused(reason: &'static str, client_id: &str, topic: &str) {
    counter!(MQTT_REFUSED_TOTAL, "reason" => reason).increment(1);
    tracing::warn!(
        client_id,
        topic,
        reason,
        "MQTT connection closed by the topic ACL"
    );
}

/// Feedback was published.
pub fn feedback_sent(state: FeedbackState) {
    counter!(FEEDBACK_SENT_TOTAL, "state" => state.as_str()).increment(1);
}

/// A request's state was told again to a device whose feedback subscription came up.
pub fn feedback_resumed(state: FeedbackState) {
    counter!(FEEDBACK_RESUMED_TOTAL, "state" => state.as_str()).increment(1);
}

/// Feedback could not be queued (the gateway's MQTT client is gone). Logged at error: the
/// device will retransmit, but an operator should know the gateway cannot talk back.
pub fn feedback_failed(state: FeedbackState, device_id: &str, error: &dyn std::fmt::Display) {
    counter!(FEEDBACK_FAILED_TOTAL, "state" => state.as_str()).increment(1);
    tracing::error!(device_id, state = state.as_str(), %error, "feedback could not be queued");
}

/// The span every log line about one press runs in. `request_id` is filled in once the
/// journal has made the press a request.
pub fn press_span(device_id: &str) -> tracing::Span {
    tracing::info_span!(
        "press",
        device_id,
        press_id = tracing::field::Empty,
        request_id = tracing::field::Empty
    )
}

/// The span every log line about one request runs in (dispatch, escalation).
pub fn request_span(
    request_id: &str,
    device_id: &str,
    press_id: &str,
    service: Service,
) -> tracing::Span {
    tracing::info_span!(
        "request",
        request_id,
        device_id,
        press_id,
        service = service.as_str()
    )
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

/// A rule set reload finished (`ok` or `invalid`); the reloader logs the details.
pub fn rules_reload(result: &'static str) {
    counter!(RULES_RELOAD_TOTAL, "result" => result).increment(1);
}

/// A follow-up (`cancel` or `notify`) finished with `result`.
pub fn followup(kind: &'static str, result: &'static str) {
    counter!(FOLLOWUPS_TOTAL, "kind" => kind, "result" => result).increment(1);
}

/// A cancel gesture was decided.
pub fn cancel(outcome: &'static str) {
    counter!(CANCELS_TOTAL, "outcome" => outcome).increment(1);
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

/// Install the tracing subscriber on stderr. `RUST_LOG` overrides the default filter.
pub fn init_logging(format: LogFormat) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_LOG_FILTER.to_owned());
    use std::io::IsTerminal;
    init_logging_with(
        format,
        &filter,
        std::io::stderr().is_terminal(),
        std::io::stderr,
    );
}

/// Install the tracing subscriber with this filter and writer (tests capture the output).
///
/// Human lines show the span of the press or request first (`press{device_id=.. press_id=..}:`);
/// JSON lines are one object each, with the event's fields at the top level and the current
/// span's fields (the ids) under `span`.
pub fn init_logging_with<W>(format: LogFormat, filter: &str, ansi: bool, writer: W)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = match format {
        LogFormat::Human => builder.with_ansi(ansi).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = result;
}
