//! The cancel gesture, inside the journal's transaction: the device's most recent open request
//! inside the cancel window is cancelled — and the backend that accepted it is owed a
//! cancellation ([`super::followup`]) — except a rescue already on its way, which is never
//! called off by a button alone: it is flagged for an operator to confirm by phone
//! ([`lifecycle::cancel_press`] decides).

use super::followup;
use super::history::{event, nothing_to_cancel, Effects};
use crate::store::changes::Change;
use crate::store::error::StoreError;
use crate::store::lifecycle::{self, CancelPress};
use crate::store::model::*;
use crate::store::FLAGGED_REASON;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;
use yijian_wire::{FeedbackState, Service};

/// The open request a cancel press is about.
struct Target {
    request_id: String,
    service: Service,
    state: RequestState,
    backend: Option<String>,
    reference: Option<String>,
    eta_s: Option<u32>,
}

/// The cancel branch of a journaled press (its row in `presses` is already written).
pub(super) fn press(
    c: &Connection,
    e: &PressEntry,
    window_ms: i64,
    fx: &mut Effects,
) -> Result<PressOutcome, StoreError> {
    let p = &e.press;
    let target = c
        .prepare_cached(
            "SELECT request_id, service, state, backend, backend_ref, eta_s FROM requests
             WHERE device_id = ?1 AND state NOT IN ('closed','cancelled') AND created_at >= ?2
             ORDER BY created_at DESC, request_id DESC LIMIT 1",
        )?
        .query_row(
            params![
                e.device_id,
                lifecycle::cancel_window_start(e.intake_at, window_ms)
            ],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<u32>>(5)?,
                ))
            },
        )
        .optional()?;
    let Some((request_id, service, state, backend, reference, eta_s)) = target else {
        c.prepare_cached(
            "UPDATE presses SET outcome = 'cancel_noop' WHERE device_id = ?1 AND press_id = ?2",
        )?
        .execute(params![e.device_id, p.id])?;
        return Ok(PressOutcome::NothingToCancel(nothing_to_cancel(
            &e.device_id,
            &p.id,
        )));
    };
    let t = Target {
        request_id,
        service: service.parse().map_err(StoreError::Corrupt)?,
        state: state.parse().map_err(StoreError::Corrupt)?,
        backend,
        reference,
        eta_s,
    };
    let rid = &t.request_id;
    if lifecycle::cancel_press(t.service, t.state) == CancelPress::Flag {
        c.prepare_cached(
            "UPDATE requests SET cancel_requested_at = coalesce(cancel_requested_at, ?2), updated_at = ?2 WHERE request_id = ?1",
        )?
        .execute(params![rid, e.intake_at])?;
        c.prepare_cached(
            "UPDATE presses SET outcome = 'cancel_flagged', request_id = ?3 WHERE device_id = ?1 AND press_id = ?2",
        )?
        .execute(params![e.device_id, p.id, rid])?;
        let seq = event(
            c,
            rid,
            e.intake_at,
            "cancel_requested",
            None,
            Some(
                json!({"by": "resident", "press": p.id, "rule": e.rule, "state": t.state.as_str(),
                        "note": "help is on its way: an operator confirms with the resident by phone"}),
            ),
        )?;
        let notice = flagged_notice(&e.device_id, &p.id, &t);
        fx.changes.push(Change {
            seq,
            request_id: rid.clone(),
            service: t.service,
            state: t.state,
            kind: "cancel_requested".into(),
            at: e.intake_at,
            notice: Some(notice.clone()),
            answered: false,
        });
        return Ok(PressOutcome::CancelFlagged(notice));
    }
    c.prepare_cached("UPDATE requests SET state = 'cancelled', updated_at = ?2, closed_at = ?2 WHERE request_id = ?1")?
        .execute(params![rid, e.intake_at])?;
    c.prepare_cached("DELETE FROM outbox WHERE request_id = ?1")?
        .execute(params![rid])?;
    c.prepare_cached("UPDATE presses SET request_id = ?3 WHERE device_id = ?1 AND press_id = ?2")?
        .execute(params![e.device_id, p.id, rid])?;
    let seq = event(
        c,
        rid,
        e.intake_at,
        "cancelled",
        Some(RequestState::Cancelled),
        Some(json!({"by": "resident", "press": p.id, "rule": e.rule, "was": t.state.as_str()})),
    )?;
    tell_backend(
        c,
        rid,
        t.state,
        t.backend.as_deref(),
        "resident",
        e.intake_at,
    )?;
    let notice = Notice {
        device_id: e.device_id.clone(),
        press_id: Some(p.id.clone()),
        request_id: Some(t.request_id.clone()),
        service: Some(t.service),
        state: FeedbackState::Cancelled,
        reference: None,
        eta_s: None,
        reason: None,
    };
    fx.deltas
        .push((t.service, Some(t.state), Some(RequestState::Cancelled)));
    fx.changes.push(Change {
        seq,
        request_id: rid.clone(),
        service: t.service,
        state: RequestState::Cancelled,
        kind: "cancelled".into(),
        at: e.intake_at,
        notice: Some(notice.clone()),
        answered: false,
    });
    Ok(PressOutcome::Cancelled {
        notice,
        backend: t.backend,
    })
}

fn flagged_notice(device_id: &str, press_id: &str, t: &Target) -> Notice {
    Notice {
        device_id: device_id.to_owned(),
        press_id: Some(press_id.to_owned()),
        request_id: Some(t.request_id.clone()),
        service: Some(t.service),
        state: t.state.feedback(),
        reference: t.reference.clone(),
        eta_s: t.eta_s,
        reason: Some(FLAGGED_REASON.into()),
    }
}

/// A retransmitted cancel press that was flagged: where the request stands now.
pub(super) fn flagged_again(
    c: &Connection,
    device_id: &str,
    press_id: &str,
    request_id: &str,
) -> Result<Notice, StoreError> {
    let row = c
        .prepare_cached(
            "SELECT service, state, backend_ref, eta_s FROM requests WHERE request_id = ?1",
        )?
        .query_row(params![request_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<u32>>(3)?,
            ))
        })?;
    let t = Target {
        request_id: request_id.to_owned(),
        service: row.0.parse().map_err(StoreError::Corrupt)?,
        state: row.1.parse().map_err(StoreError::Corrupt)?,
        backend: None,
        reference: row.2,
        eta_s: row.3,
    };
    let mut n = flagged_notice(device_id, press_id, &t);
    if !t.state.is_open() {
        // An operator has settled it since: say what happened, without the pending note.
        n.reason = None;
    }
    Ok(n)
}

/// A request just left `from` for `cancelled`: the backend that accepted it, if any and if it
/// is HTTP, is owed a cancellation ([`lifecycle::owes_cancellation`]).
pub(super) fn tell_backend(
    c: &Connection,
    request_id: &str,
    from: RequestState,
    backend: Option<&str>,
    by: &str,
    at: i64,
) -> Result<(), StoreError> {
    match lifecycle::owes_cancellation(from, backend) {
        Some(b) => followup::queue_cancel(c, request_id, b, by, at),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use yijian_wire::{Gesture, Press, Priority};

    fn entry(press_id: &str, gesture: Gesture, action: PressAction, at: i64) -> PressEntry {
        PressEntry {
            device_id: "d-1".into(),
            press: Press {
                id: press_id.into(),
                button: "main".into(),
                gesture,
                at,
                battery: None,
            },
            action,
            rule: "test".into(),
            resident_id: None,
            intake_at: at,
            // Flood control off: these tests are about cancelling.
            attach_window_ms: 0,
        }
    }

    fn taxi() -> PressAction {
        PressAction::Request {
            service: Service::Taxi,
            priority: Priority::Routine,
            tags: vec![],
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_window_includes_its_last_millisecond_and_not_one_more() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("j.db"), 16).expect("journal");
        let window = 120_000;
        let t0 = 1_764_324_000_000;
        let PressOutcome::Created(first) = store
            .press(entry("p1", Gesture::Double, taxi(), t0))
            .await
            .expect("press")
        else {
            panic!("a request")
        };
        let cancel = PressAction::Cancel { window_ms: window };
        match store
            .press(entry("c1", Gesture::Long, cancel.clone(), t0 + window))
            .await
            .expect("press")
        {
            PressOutcome::Cancelled { notice, .. } => {
                assert_eq!(notice.request_id.as_deref(), Some(first.id.as_str()))
            }
            other => panic!("inside the window: {other:?}"),
        }
        let t1 = t0 + 10 * window;
        store
            .press(entry("p2", Gesture::Double, taxi(), t1))
            .await
            .expect("press");
        match store
            .press(entry("c2", Gesture::Long, cancel, t1 + window + 1))
            .await
            .expect("press")
        {
            PressOutcome::NothingToCancel(n) => assert_eq!(n.request_id, None),
            other => panic!("after the window: {other:?}"),
        }
        // A retransmitted cancel press gets the same answer, and cancels nothing more.
        match store
            .press(entry(
                "c1",
                Gesture::Long,
                PressAction::Cancel { window_ms: window },
                t1 + 5,
            ))
            .await
            .expect("press")
        {
            PressOutcome::Duplicate(n) => {
                assert_eq!(
                    (n.state, n.request_id.as_deref()),
                    (FeedbackState::Cancelled, Some(first.id.as_str()))
                )
            }
            other => panic!("a duplicate: {other:?}"),
        }
    }
}
