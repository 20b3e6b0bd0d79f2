//! Every metric name the gateway exports, with its labels, its histogram buckets and the
//! bounded sets of label values: the one place dashboards and alerts (`dashboards/`) are
//! checked against. Units are in the names.

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

/// `{subscriber}`: changes a change feed subscriber missed (it fell behind) and read back from
/// the journal.
pub const CHANGES_LAGGED_TOTAL: &str = "yijian_changes_lagged_total";
