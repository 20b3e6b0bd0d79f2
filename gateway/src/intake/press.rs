//! What a decoded press becomes: the device it came from, whether a copy is already on its way
//! to the journal, what the rules make of it, and the [`PressEntry`] queued for the journal.

use super::context::IntakeContext;
use crate::adapter::Decoded;
use crate::clock::now_ms;
use crate::residents::RESIDENT_UNKNOWN_TAG;
use crate::rules::{local_minutes_in, Action, AttrValue, PressContext};
use crate::source::Message;
use crate::store::{PressAction, PressEntry, PressOutcome, StoreError};
use crate::telemetry;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::oneshot;
use tracing::Instrument;
use yijian_wire::{Feedback, Gesture, Press, RejectReason};

/// A device clock further than this from the gateway's is counted as skewed.
const SKEW_MS: i64 = 24 * 3600 * 1000;

/// The attributes of a press with no resident on record: none, so `resident = {..}` rules
/// do not match.
static NO_ATTRIBUTES: BTreeMap<String, AttrValue> = BTreeMap::new();

/// A press waiting for the journal's commit, kept in receive order.
pub(super) struct Pending {
    pub(super) rx: oneshot::Receiver<Result<PressOutcome, StoreError>>,
    /// What was handed to the journal, handed again if its commit fails: the press is the
    /// device's until it is on disk (its PUBACK waits for that).
    pub(super) entry: PressEntry,
    pub(super) started: Instant,
    pub(super) gesture: Gesture,
    /// `device_id \0 press_id`, in [`InFlight`] until the commit answers.
    pub(super) key: String,
    /// Carries the press's ids to the lines logged after the commit.
    pub(super) span: tracing::Span,
}

/// Presses queued for the journal and not yet committed. A device retransmits every 5 s until
/// it hears `received`; when the gateway is slower than that, each copy would be journaled (and
/// answered) again, adding load exactly when there is least room: a retransmission storm feeding
/// on itself. A copy of a press still in this set is dropped — the original's `received` answers
/// the device. Copies arriving after the commit go to the journal as usual and get the current
/// state back.
#[derive(Clone, Default)]
pub(super) struct InFlight(Arc<Mutex<HashSet<String>>>);

impl InFlight {
    /// Note `key` as queued; false when a copy of it already is.
    fn insert(&self, key: String) -> bool {
        self.0
            .lock()
            .expect("queued lock is never poisoned")
            .insert(key)
    }

    /// The journal has answered for `key`.
    pub(super) fn remove(&self, key: &str) {
        self.0
            .lock()
            .expect("queued lock is never poisoned")
            .remove(key);
    }
}

/// Decode and validate one press message and queue it for the journal. `None` when it was
/// answered at once (rejected) or could not be queued.
pub(super) async fn take(
    ctx: &IntakeContext,
    in_flight: &InFlight,
    m: &Message,
) -> Option<Pending> {
    let started = Instant::now();
    match ctx.adapter.decode(m.topic(), m.payload()) {
        Decoded::Press {
            device_id,
            press,
            unknown_fields,
        } => {
            let span = telemetry::press_span(device_id);
            span.record("press_id", press.id.as_str());
            if unknown_fields > 0 {
                telemetry::press_unknown_fields(unknown_fields);
            }
            take_valid(ctx, in_flight, device_id, press, started, span.clone())
                .instrument(span)
                .await
        }
        Decoded::Rejected {
            device_id: Some(device_id),
            press_id,
            reason,
            message,
        } => {
            async {
                telemetry::press_rejected(reason, Some(device_id), press_id.as_deref(), &message);
                ctx.feedback
                    .send(device_id, &Feedback::rejected(press_id, message, now_ms()))
                    .await;
            }
            .instrument(telemetry::press_span(device_id))
            .await;
            None
        }
        Decoded::Rejected {
            device_id: None,
            reason,
            message,
            ..
        } => {
            // The ACL makes this unreachable for devices; count it anyway.
            telemetry::press_rejected(reason, None, None, &message);
            None
        }
        // Statuses have a connection of their own: no press filter carries one.
        Decoded::Status { .. } | Decoded::Ignore => None,
    }
}

/// The rest of [`take`], for a well-formed press, inside the press's span.
async fn take_valid(
    ctx: &IntakeContext,
    in_flight: &InFlight,
    device_id: &str,
    press: Press,
    started: Instant,
    span: tracing::Span,
) -> Option<Pending> {
    let Some(device) = ctx.directory.info(device_id) else {
        let msg = format!("device {device_id} is not registered");
        telemetry::press_rejected(
            RejectReason::UnknownDevice,
            Some(device_id),
            Some(&press.id),
            &msg,
        );
        ctx.feedback
            .send(
                device_id,
                &Feedback::rejected(Some(press.id), msg, now_ms()),
            )
            .await;
        return None;
    };
    let key = format!("{device_id}\0{}", press.id);
    if !in_flight.insert(key.clone()) {
        telemetry::press_received(press.gesture, "duplicate");
        return None;
    }
    let intake_at = now_ms();
    let skewed = is_skewed(intake_at, press.at);
    if skewed {
        telemetry::press_clock_skew();
    }
    let resident = device
        .resident_id
        .as_deref()
        .and_then(|id| ctx.residents.info(id));
    // The rules judge a press by when it was pressed, in the resident's home zone; a device
    // clock that is far off is not believed.
    let pressed_at = if skewed { intake_at } else { press.at };
    let local_minutes = ctx
        .residents
        .zone(resident.as_deref())
        .and_then(|z| local_minutes_in(pressed_at, z));
    let decision = {
        // One complete rule set for this press: a reload swaps the Arc, never the set inside.
        let rules = ctx
            .rules
            .read()
            .expect("rules lock is never poisoned")
            .clone();
        rules.evaluate(&PressContext {
            profile: &device.profile,
            button: &press.button,
            gesture: press.gesture,
            local_minutes,
            attributes: resident.as_ref().map_or(&NO_ATTRIBUTES, |r| &r.attributes),
        })
    };
    let action = press_action(decision.action, resident.is_some(), ctx.cancel_window_ms);
    let gesture = press.gesture;
    let entry = PressEntry {
        device_id: device_id.to_owned(),
        press,
        action,
        rule: decision.rule.name.to_string(),
        resident_id: device.resident_id.as_deref().map(str::to_owned),
        intake_at,
        attach_window_ms: ctx.attach_window_ms,
    };
    match ctx.store.submit_press(entry.clone()).await {
        Ok(rx) => Some(Pending {
            rx,
            entry,
            started,
            gesture,
            key,
            span,
        }),
        Err(e) => {
            in_flight.remove(&key);
            telemetry::store_error("press", &e);
            telemetry::press_received(gesture, "store_error");
            None
        }
    }
}

/// Whether a press stamped `device_at` on the device's clock, taken at `intake_at` on the
/// gateway's, comes from a clock too far off to believe.
fn is_skewed(intake_at: i64, device_at: i64) -> bool {
    (intake_at - device_at).abs() > SKEW_MS
}

/// What the journal is asked to do with a press the rules decided on.
fn press_action(action: Action, resident_known: bool, cancel_window_ms: i64) -> PressAction {
    match action {
        Action::Request {
            service,
            priority,
            mut tags,
        } => {
            // Never dropped for want of a resident: the backend is told it must ask.
            if !resident_known && !tags.iter().any(|t| t == RESIDENT_UNKNOWN_TAG) {
                tags.push(RESIDENT_UNKNOWN_TAG.to_owned());
            }
            PressAction::Request {
                service,
                priority,
                tags,
            }
        }
        Action::Cancel => PressAction::Cancel {
            window_ms: cancel_window_ms,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yijian_wire::{Priority, Service};

    #[test]
    fn a_device_clock_more_than_a_day_off_is_skewed() {
        let now = 1_764_324_000_123;
        assert!(!is_skewed(now, now));
        assert!(!is_skewed(now, now - SKEW_MS), "a queued press a day old");
        assert!(!is_skewed(now, now + SKEW_MS));
        assert!(is_skewed(now, now - SKEW_MS - 1));
        assert!(is_skewed(now, now + SKEW_MS + 1));
        assert!(is_skewed(now, 0), "a device that never set its clock");
    }

    fn request(tags: &[&str]) -> Action {
        Action::Request {
            service: Service::Rescue,
            priority: Priority::Emergency,
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn tags(action: PressAction) -> Vec<String> {
        match action {
            PressAction::Request { tags, .. } => tags,
            PressAction::Cancel { .. } => panic!("a request was expected"),
        }
    }

    #[test]
    fn a_press_with_no_resident_on_record_tells_the_backend_to_ask() {
        assert_eq!(
            tags(press_action(request(&["wheelchair_accessible"]), false, 0)),
            ["wheelchair_accessible", RESIDENT_UNKNOWN_TAG]
        );
        assert_eq!(
            tags(press_action(request(&[RESIDENT_UNKNOWN_TAG]), false, 0)),
            [RESIDENT_UNKNOWN_TAG],
            "tagged once, even when a rule tags it too"
        );
        assert!(tags(press_action(request(&[]), true, 0)).is_empty());
    }

    #[test]
    fn a_cancel_carries_the_cancel_window() {
        assert!(matches!(
            press_action(Action::Cancel, false, 120_000),
            PressAction::Cancel { window_ms: 120_000 }
        ));
    }

    #[test]
    fn a_copy_is_dropped_only_while_the_original_is_in_flight() {
        let f = InFlight::default();
        assert!(f.insert("d1\0p1".into()));
        assert!(!f.insert("d1\0p1".into()), "a retransmission while queued");
        assert!(
            f.insert("d2\0p1".into()),
            "another device's press of the same id"
        );
        f.remove("d1\0p1");
        assert!(
            f.insert("d1\0p1".into()),
            "after the commit it goes to the journal"
        );
    }
}
