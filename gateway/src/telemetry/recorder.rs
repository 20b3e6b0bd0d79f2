//! The Prometheus recorder: installed once per process, with every metric described and its
//! bounded label sets registered at zero before the first event.

use super::names::*;
use super::security;
use metrics::{counter, gauge, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use yijian_wire::{FeedbackState, Gesture, Priority, RejectReason, Service};

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
        CHANGES_LAGGED_TOTAL,
        Unit::Count,
        "Changes a change feed subscriber missed and read back from the journal, by subscriber."
    );
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
    // Every metric in the table is in a scrape from the start (tests/tests/newcomer.rs).
    for k in ["cancel", "notify"] {
        for r in ["delivered", "unknown", "refused", "expired", "unconfigured"] {
            counter!(FOLLOWUPS_TOTAL, "kind" => k, "result" => r).increment(0);
        }
    }
    for o in ["cancelled", "nothing_open", "flagged"] {
        counter!(CANCELS_TOTAL, "outcome" => o).increment(0);
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
/// The pressed-again update counter exists at zero for every configured backend from the start
/// (its label set depends on the configuration; the fixed ones are registered in `describe`).
pub fn backend_updates_at_zero<'a>(backends: impl Iterator<Item = &'a String>) {
    for b in backends {
        for result in ["accepted", "refused", "failed"] {
            counter!(security::BACKEND_UPDATES_TOTAL, "backend" => b.clone(), "result" => result)
                .increment(0);
        }
    }
}

pub fn escalation_reasons(reasons: &[&'static str]) {
    for s in Service::ALL {
        for r in reasons {
            counter!(ESCALATIONS_TOTAL, "service" => s.as_str(), "reason" => *r).increment(0);
        }
    }
}
