//! New requests in SQLite, inside the writer's transaction (one savepoint per command): a press
//! (a new request, a duplicate, a cancel, or a press joining an open one) and a request no
//! press started. What a press may do is decided by [`crate::store::lifecycle`]; later
//! transitions of a request are in [`super::transitions`].

use super::cancel;
use super::history::{event, nothing_to_cancel, Effects};
use super::transitions::{current, transition};
use crate::store::changes::Change;
use crate::store::error::StoreError;
use crate::store::lifecycle;
use crate::store::model::*;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;
use yijian_wire::{FeedbackState, Service};

fn new_request_id() -> String {
    format!("rq_{}", ulid::Ulid::new())
}

/// Journal a press: a new request, a duplicate, a cancel, or a press joining an open request.
pub(super) fn press(
    c: &Connection,
    e: &PressEntry,
    fx: &mut Effects,
) -> Result<PressOutcome, StoreError> {
    let p = &e.press;
    let open = match &e.action {
        PressAction::Request { service, .. } => open_request(c, e, *service)?,
        PressAction::Cancel { .. } => None,
    };
    let (outcome, request_id) = match (&e.action, &open) {
        (PressAction::Request { .. }, Some(rid)) => ("pressed_again", Some(rid.clone())),
        (PressAction::Request { .. }, None) => ("request", Some(new_request_id())),
        (PressAction::Cancel { .. }, _) => ("cancel", None),
    };
    let inserted = c
        .prepare_cached(
            "INSERT INTO presses (device_id, press_id, button, gesture, at_ms, battery, intake_at, rule, outcome, request_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            e.device_id,
            p.id,
            p.button,
            p.gesture.as_str(),
            p.at,
            p.battery,
            e.intake_at,
            e.rule,
            outcome,
            request_id
        ])?;
    if inserted == 0 {
        return duplicate(c, &e.device_id, &p.id).map(PressOutcome::Duplicate);
    }
    if let Some(rid) = open {
        return pressed_again(c, e, &rid, fx);
    }
    match &e.action {
        PressAction::Request {
            service,
            priority,
            tags,
        } => {
            let request_id = request_id.expect("a request press has an id");
            insert_request(
                c,
                &request_id,
                *service,
                *priority,
                tags,
                Some(&e.device_id),
                Some(&p.id),
                &e.rule,
                e.resident_id.as_deref(),
                None,
                e.intake_at,
            )?;
            let seq = event(
                c,
                &request_id,
                e.intake_at,
                "created",
                Some(RequestState::Received),
                Some(
                    json!({"rule": e.rule, "press_at": p.at, "button": p.button, "gesture": p.gesture}),
                ),
            )?;
            fx.deltas
                .push((*service, None, Some(RequestState::Received)));
            fx.changes.push(Change {
                seq,
                request_id: request_id.clone(),
                service: *service,
                state: RequestState::Received,
                kind: "created".into(),
                at: e.intake_at,
                notice: Some(Notice {
                    device_id: e.device_id.clone(),
                    press_id: Some(p.id.clone()),
                    request_id: Some(request_id.clone()),
                    service: Some(*service),
                    state: FeedbackState::Received,
                    reference: None,
                    eta_s: None,
                    reason: None,
                }),
                // Intake answers the press itself (see `Change::answered`).
                answered: true,
            });
            Ok(PressOutcome::Created(Request {
                id: request_id,
                service: *service,
                priority: *priority,
                tags: tags.clone(),
                device_id: Some(e.device_id.clone()),
                origin: Origin::Press(p.clone()),
                resident_id: e.resident_id.clone(),
                created_at: e.intake_at,
                attempts: 0,
                journaled_at: None,
            }))
        }
        PressAction::Cancel { window_ms } => cancel::press(c, e, *window_ms, fx),
    }
}

/// Open a request that no press started (supervision, an operator).
pub(super) fn open(
    c: &Connection,
    n: &NewRequest,
    fx: &mut Effects,
) -> Result<Request, StoreError> {
    let request_id = new_request_id();
    let rule = n.origin.kind();
    insert_request(
        c,
        &request_id,
        n.service,
        n.priority,
        &n.tags,
        n.device_id.as_deref(),
        None,
        rule,
        n.resident_id.as_deref(),
        Some(&n.origin.to_json().to_string()),
        n.at,
    )?;
    let seq = event(
        c,
        &request_id,
        n.at,
        "created",
        Some(RequestState::Received),
        Some(json!({"origin": n.origin.to_json()})),
    )?;
    fx.deltas
        .push((n.service, None, Some(RequestState::Received)));
    fx.changes.push(Change {
        seq,
        request_id: request_id.clone(),
        service: n.service,
        state: RequestState::Received,
        kind: "created".into(),
        at: n.at,
        notice: n.device_id.as_ref().map(|d| Notice {
            device_id: d.clone(),
            press_id: None,
            request_id: Some(request_id.clone()),
            service: Some(n.service),
            state: FeedbackState::Received,
            reference: None,
            eta_s: None,
            reason: None,
        }),
        answered: false,
    });
    Ok(Request {
        id: request_id,
        service: n.service,
        priority: n.priority,
        tags: n.tags.clone(),
        device_id: n.device_id.clone(),
        origin: n.origin.clone(),
        resident_id: n.resident_id.clone(),
        created_at: n.at,
        attempts: 0,
        journaled_at: None,
    })
}

#[allow(clippy::too_many_arguments)]
fn insert_request(
    c: &Connection,
    request_id: &str,
    service: Service,
    priority: yijian_wire::Priority,
    tags: &[String],
    device_id: Option<&str>,
    press_id: Option<&str>,
    rule: &str,
    resident_id: Option<&str>,
    origin: Option<&str>,
    at: i64,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO requests (request_id, device_id, press_id, service, priority, tags, state, rule, resident_id, origin, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'received', ?7, ?8, ?9, ?10, ?10)",
    )?
    .execute(params![
        request_id,
        device_id,
        press_id,
        service.as_str(),
        priority.as_str(),
        serde_json::to_string(tags).expect("strings serialize"),
        rule,
        resident_id,
        origin,
        at
    ])?;
    c.prepare_cached("INSERT INTO outbox (request_id, attempts, created_at) VALUES (?1, 0, ?2)")?
        .execute(params![request_id, at])?;
    Ok(())
}

/// The device's newest open request of `service` inside the attach window, if any.
fn open_request(
    c: &Connection,
    e: &PressEntry,
    service: Service,
) -> Result<Option<String>, StoreError> {
    let Some(since) = lifecycle::attach_window_start(e.intake_at, e.attach_window_ms) else {
        return Ok(None);
    };
    Ok(c.prepare_cached(
        "SELECT request_id FROM requests
         WHERE device_id = ?1 AND service = ?2 AND state NOT IN ('closed','cancelled') AND created_at >= ?3
         ORDER BY created_at DESC, request_id DESC LIMIT 1",
    )?
    .query_row(params![e.device_id, service.as_str(), since], |r| r.get::<_, String>(0))
    .optional()?)
}

/// Flood control: the press joins the open request `rid` as a "pressed again" event; the
/// device hears the request's current state, and the backend holding it gets an update.
fn pressed_again(
    c: &Connection,
    e: &PressEntry,
    rid: &str,
    fx: &mut Effects,
) -> Result<PressOutcome, StoreError> {
    let p = &e.press;
    let cur = current(c, rid)?
        .ok_or_else(|| StoreError::Corrupt(format!("open request {rid} vanished")))?;
    let earlier: u32 = c
        .prepare_cached(
            "SELECT count(*) FROM request_events WHERE request_id = ?1 AND kind = 'pressed_again'",
        )?
        .query_row(params![rid], |r| r.get(0))?;
    let count = lifecycle::pressed_again_count(earlier);
    let seq = event(
        c,
        rid,
        e.intake_at,
        "pressed_again",
        None,
        Some(
            json!({"press": p.id, "button": p.button, "gesture": p.gesture, "press_at": p.at, "count": count, "rule": e.rule}),
        ),
    )?;
    let notice = Notice {
        device_id: e.device_id.clone(),
        press_id: Some(p.id.clone()),
        ..cur.notice_to(rid, cur.state, &e.device_id)
    };
    transition(
        fx,
        seq,
        &cur,
        rid,
        cur.state,
        "pressed_again",
        e.intake_at,
        Some(notice.clone()),
    );
    let update = lifecycle::tells_backend_of_press(cur.backend.as_deref()).map(|b| RequestUpdate {
        request_id: rid.to_owned(),
        backend: b.to_owned(),
        count,
        press: p.clone(),
        at: e.intake_at,
    });
    Ok(PressOutcome::PressedAgain { notice, update })
}

/// Where an already-journaled press stands.
fn duplicate(c: &Connection, device_id: &str, press_id: &str) -> Result<Notice, StoreError> {
    let row = c
        .prepare_cached(
            "SELECT p.outcome, p.request_id, r.state, r.service, r.backend_ref, r.eta_s
             FROM presses p LEFT JOIN requests r ON r.request_id = p.request_id
             WHERE p.device_id = ?1 AND p.press_id = ?2",
        )?
        .query_row(params![device_id, press_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<u32>>(5)?,
            ))
        })?;
    let (outcome, request_id, state, service, reference, eta_s) = row;
    if outcome == "cancel_noop" {
        return Ok(nothing_to_cancel(device_id, press_id));
    }
    if let ("cancel_flagged", Some(rid)) = (outcome.as_str(), &request_id) {
        return cancel::flagged_again(c, device_id, press_id, rid);
    }
    let service = service
        .map(|s| s.parse::<Service>())
        .transpose()
        .map_err(StoreError::Corrupt)?;
    let state = match (outcome.as_str(), state) {
        ("cancel", _) => FeedbackState::Cancelled,
        (_, Some(s)) => s
            .parse::<RequestState>()
            .map_err(StoreError::Corrupt)?
            .feedback(),
        (_, None) => {
            return Err(StoreError::Corrupt(format!(
                "press {press_id} has no request"
            )))
        }
    };
    Ok(Notice {
        device_id: device_id.to_owned(),
        press_id: Some(press_id.to_owned()),
        request_id,
        service,
        state,
        reference,
        eta_s,
        reason: None,
    })
}

#[cfg(test)]
mod tests {
    use crate::store::{NewRequest, Origin, RequestState, Store};
    use yijian_wire::{FeedbackState, Priority, Service};

    fn welfare_check(device: Option<&str>) -> NewRequest {
        NewRequest {
            service: Service::WelfareCheck,
            priority: Priority::Urgent,
            tags: vec![],
            origin: Origin::Supervision {
                reason: "offline".into(),
            },
            device_id: device.map(str::to_owned),
            resident_id: Some("r-1".into()),
            at: 1_764_324_000_000,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_no_press_started_is_journaled_replayed_and_told_to_the_device_it_names() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("j.db"), 16).expect("journal");
        let mut feed = store.changes("test");
        let named = store
            .open_request(welfare_check(Some("d-7")))
            .await
            .expect("opened");
        let alone = store
            .open_request(NewRequest {
                // A millisecond later: the outbox is in creation order.
                at: 1_764_324_000_001,
                ..welfare_check(None)
            })
            .await
            .expect("opened");
        assert_eq!(named.press(), None);
        assert!(named.journaled_at.is_some());

        // The outbox gives dispatch the same origin back (a restart replays it).
        let owed = store.outbox().await.expect("outbox");
        let ids: Vec<_> = owed.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, [named.id.as_str(), alone.id.as_str()]);
        assert_eq!(owed[0].origin, named.origin);
        assert_eq!(owed[0].device_id.as_deref(), Some("d-7"));
        assert_eq!(owed[1].device_id, None);

        // The device it names hears of it, with no press id; a request naming none is on the
        // feed for everyone else (the console) but tells no device.
        let first = feed.next().await.expect("a change");
        let n = first.notice.as_ref().expect("the named device is told");
        assert!(
            !first.answered,
            "no press was answered: the feed tells the device"
        );
        assert_eq!(
            (n.device_id.as_str(), n.press_id.as_deref(), n.state),
            ("d-7", None, FeedbackState::Received)
        );
        let second = feed.next().await.expect("a change");
        assert_eq!(
            (second.request_id.as_str(), second.notice.is_none()),
            (alone.id.as_str(), true)
        );

        // The API's view says what started it and shows no press.
        let view = store
            .request(&named.id)
            .await
            .expect("read")
            .expect("found");
        assert_eq!(
            view.origin,
            serde_json::json!({"kind": "supervision", "reason": "offline"})
        );
        assert!(view.press.is_none());
        assert_eq!(view.state, RequestState::Received.as_str());
        assert!(
            view.stages.is_some(),
            "a latency breakdown from its creation"
        );

        // It goes through the same lifecycle as a press's request.
        assert!(store
            .escalated(
                &named.id,
                "routed",
                crate::store::NotifyContacts::No,
                1_764_324_000_100
            )
            .await
            .expect("escalated"));
        let third = feed.next().await.expect("a change");
        assert_eq!(
            (third.kind.as_str(), third.state),
            ("escalated", RequestState::Escalated)
        );
    }
}
