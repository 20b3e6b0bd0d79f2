//! One function per event: each counts (and, where a human should know, logs) under a name
//! from [`super::names`]. Grouped by the stage of the path that reports the event, in the
//! order a press travels.

use super::limit::LogLimiter;
use super::names::*;
use metrics::{counter, gauge, histogram};
use std::sync::LazyLock;
use std::time::{Duration, Instant};
use yijian_wire::{FeedbackState, Gesture, Priority, RejectReason, Service};

// Intake: presses and status messages from devices.

/// A valid press was taken in.
pub fn press_received(gesture: Gesture, outcome: &'static str) {
    counter!(PRESS_RECEIVED_TOTAL, "gesture" => gesture.as_str(), "outcome" => outcome)
        .increment(1);
    if outcome == "duplicate" {
        counter!(PRESS_DUPLICATES_TOTAL).increment(1);
    }
}

/// A press was refused. Logged at debug: a misbehaving device could otherwise flood the log.
///
/// Logged at warn (the integrator of a device whose presses are refused looks for it), at most
/// one line per device per 10 s and 20 lines per 10 s in all, each saying how many were held
/// back ([`super::limit`]).
pub fn press_rejected(
    reason: RejectReason,
    device: Option<&str>,
    press_id: Option<&str>,
    message: &str,
) {
    counter!(PRESS_REJECTED_TOTAL, "reason" => reason.as_str()).increment(1);
    if let Some(n) = REJECTED_LOG.admit(device.unwrap_or(""), Instant::now()) {
        tracing::warn!(
            device_id = device,
            press_id,
            reason = reason.as_str(),
            message,
            suppressed = n.suppressed,
            others_suppressed = n.others_suppressed,
            "press rejected"
        );
    }
}

/// Rejected presses' warnings: per device, and a ceiling over all.
static REJECTED_LOG: LazyLock<LogLimiter> =
    LazyLock::new(|| LogLimiter::new(Duration::from_secs(10), 20));

/// Refused MQTT connections' warnings: per client id, and a ceiling over all.
static REFUSED_CONNECT_LOG: LazyLock<LogLimiter> =
    LazyLock::new(|| LogLimiter::new(Duration::from_secs(10), 20));

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

/// Seconds from a press on the device clock to `now_ms` on the gateway's; `None` when the
/// device clock is more than a day off (such presses are counted by [`press_clock_skew`]).
pub fn since_press(press_at_ms: i64, now_ms: i64) -> Option<f64> {
    const DAY_MS: i64 = 24 * 3600 * 1000;
    ((now_ms - press_at_ms).abs() <= DAY_MS).then(|| (now_ms - press_at_ms).max(0) as f64 / 1000.0)
}

/// A status message was taken in.
pub fn status_received() {
    counter!(STATUS_RECEIVED_TOTAL).increment(1);
}

/// A status message was refused.
pub fn status_rejected(reason: RejectReason) {
    counter!(STATUS_REJECTED_TOTAL, "reason" => reason.as_str()).increment(1);
}

// The broker: who connects, and who is closed.

/// An MQTT connection attempt was authenticated (`accepted`) or refused (the reason).
pub fn mqtt_auth(result: &'static str) {
    counter!(MQTT_AUTH_TOTAL, "result" => result).increment(1);
}

/// A CONNECT was refused (the device was answered with CONNACK `code`). Logged at warn with
/// the client id and the reason, at most one line per client id and reason per 10 s and 20 in
/// all, each saying how many were held back: a device reconnecting in a loop with a wrong
/// secret, or a storm of them, shows as a few lines, and every refusal is counted in
/// `mqtt_auth`.
pub fn mqtt_connect_refused(client_id: &str, result: &'static str, code: u8) {
    let key = format!("{client_id}\0{result}");
    if let Some(n) = REFUSED_CONNECT_LOG.admit(&key, Instant::now()) {
        tracing::warn!(
            client_id,
            reason = result,
            connack = code,
            suppressed = n.suppressed,
            others_suppressed = n.others_suppressed,
            "MQTT connection refused"
        );
    }
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

// Rules.

/// A rule set reload finished (`ok` or `invalid`); the reloader logs the details.
pub fn rules_reload(result: &'static str) {
    counter!(RULES_RELOAD_TOTAL, "result" => result).increment(1);
}

// The store: the journal's commits and what it holds.

/// A press became a request.
pub fn request_created(service: Service, priority: Priority) {
    counter!(REQUESTS_CREATED_TOTAL, "service" => service.as_str(), "priority" => priority.as_str()).increment(1);
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

/// SQLite's heap, sampled.
pub fn store_memory(bytes: i64) {
    gauge!(STORE_MEMORY_BYTES).set(bytes.max(0) as f64);
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

// Dispatch: backends, breakers, escalation, follow-ups.

/// Press → backend accepted.
pub fn press_to_dispatched(service: Service, secs: f64) {
    histogram!(PRESS_TO_DISPATCHED_SECONDS, "service" => service.as_str()).record(secs);
}

/// One dispatch attempt finished.
pub fn dispatch_attempt(backend: &str, result: &'static str, d: Duration) {
    let backend = backend.to_owned();
    histogram!(DISPATCH_ATTEMPT_SECONDS, "backend" => backend.clone(), "result" => result)
        .record(d.as_secs_f64());
    counter!(DISPATCH_ATTEMPTS_TOTAL, "backend" => backend, "result" => result).increment(1);
}

/// A backend's circuit changed state.
pub fn circuit(backend: &str, open: bool) {
    gauge!(BACKEND_CIRCUIT_OPEN, "backend" => backend.to_owned()).set(if open { 1.0 } else { 0.0 });
}

/// A request went to a human operator.
pub fn escalation(service: Service, reason: &'static str) {
    counter!(ESCALATIONS_TOTAL, "service" => service.as_str(), "reason" => reason).increment(1);
}

/// A follow-up (`cancel` or `notify`) finished with `result`.
pub fn followup(kind: &'static str, result: &'static str) {
    counter!(FOLLOWUPS_TOTAL, "kind" => kind, "result" => result).increment(1);
}

/// A cancel gesture was decided.
pub fn cancel(outcome: &'static str) {
    counter!(CANCELS_TOTAL, "outcome" => outcome).increment(1);
}

// Feedback to devices.

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

// The API and the desk: operators and backend callbacks.

/// An operator acknowledged a desk request.
pub fn operator_answer(secs: f64) {
    histogram!(OPERATOR_ANSWER_SECONDS).record(secs);
}

/// An operator action and its result (`ok`, `not_found`, `conflict`, `error`).
pub fn operator_action(action: &'static str, result: &'static str) {
    counter!(OPERATOR_ACTIONS_TOTAL, "action" => action, "result" => result).increment(1);
}

/// How long the oldest unanswered desk request has waited.
pub fn desk_oldest_waiting(secs: f64) {
    gauge!(DESK_OLDEST_WAITING_SECONDS).set(secs);
}

/// A backend callback was handled.
pub fn callback(result: &'static str) {
    counter!(CALLBACKS_TOTAL, "result" => result).increment(1);
}

// The process.

/// The allocator's view of the heap, sampled.
pub fn heap(allocated: u64, resident: u64) {
    gauge!(HEAP_ALLOCATED_BYTES).set(allocated as f64);
    gauge!(HEAP_RESIDENT_BYTES).set(resident as f64);
}

/// A change feed subscriber joined: its lag series exists (at zero) from the start, so a
/// dashboard shows "none missed" rather than nothing.
pub fn changes_subscribed(subscriber: &'static str) {
    counter!(CHANGES_LAGGED_TOTAL, "subscriber" => subscriber).increment(0);
}

/// A change feed subscriber lagged by `missed` changes and catches up from the journal
/// (`subscriber`: `feedback`, ...; bounded).
pub fn changes_lagged(subscriber: &'static str, missed: u64) {
    counter!(CHANGES_LAGGED_TOTAL, "subscriber" => subscriber).increment(missed);
    tracing::warn!(
        subscriber,
        missed,
        "change feed subscriber fell behind; catching up from the journal"
    );
}
