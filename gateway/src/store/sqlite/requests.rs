//! Requests in SQLite: each writer command's statements, inside the writer's transaction (one
//! savepoint per command). What is allowed is decided by [`crate::store::lifecycle`]; this file
//! reads the current row, asks, and writes what it decided, recording every transition for the
//! change feed and the open-request gauges ([`Effects`]).

use super::history::{event, nothing_to_cancel, Effects};
use super::{cancel, followup};
use crate::store::changes::{Change, Created};
use crate::store::command::{OperatorAction, Transition};
use crate::store::error::StoreError;
use crate::store::followup::NotifyContacts;
use crate::store::lifecycle::{self, CallbackRefusal, OnAccepted, Stamp, Step};
use crate::store::model::*;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;
use yijian_wire::{FeedbackState, Service};

/// Record a transition of `cur` to `to` for the gauges and the change feed.
#[allow(clippy::too_many_arguments)]
fn transition(
    fx: &mut Effects,
    seq: i64,
    cur: &Current,
    request_id: &str,
    to: RequestState,
    kind: &str,
    at: i64,
    notice: Option<Notice>,
) {
    if cur.state != to {
        fx.deltas.push((cur.service, Some(cur.state), Some(to)));
    }
    fx.changes.push(Change {
        seq,
        request_id: request_id.to_owned(),
        service: cur.service,
        state: to,
        kind: kind.to_owned(),
        at,
        notice,
        created: None,
    });
}

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
                // The commit time is filled in once the batch is committed.
                created: Some(Created {
                    press_at: p.at,
                    intake_started: e.intake_started,
                    journaled_at: 0,
                }),
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
        created: None,
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

pub(super) fn attempt(c: &Connection, a: &AttemptRecord) -> Result<(), StoreError> {
    event(
        c,
        &a.request_id,
        a.started_at,
        "attempt",
        None,
        Some(
            json!({"backend": a.backend, "attempt": a.attempt, "result": a.result, "elapsed_ms": a.elapsed_ms}),
        ),
    )?;
    c.prepare_cached("UPDATE outbox SET attempts = max(attempts, ?2) WHERE request_id = ?1")?
        .execute(params![a.request_id, a.attempt])?;
    Ok(())
}

/// What a notice needs and the current state of a request.
pub(super) struct Current {
    device_id: Option<String>,
    press_id: Option<String>,
    pub service: Service,
    pub state: RequestState,
    created_at: i64,
    pub reference: Option<String>,
    pub eta_s: Option<u32>,
    /// The backend that accepted it (`desk` once escalated).
    pub backend: Option<String>,
}

pub(super) fn current(c: &Connection, request_id: &str) -> Result<Option<Current>, StoreError> {
    let row = c
        .prepare_cached(
            "SELECT device_id, press_id, service, state, created_at, backend_ref, eta_s, backend FROM requests WHERE request_id = ?1",
        )?
        .query_row(params![request_id], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, Option<u32>>(6)?,
                r.get::<_, Option<String>>(7)?,
            ))
        })
        .optional()?;
    let Some((device_id, press_id, service, state, created_at, reference, eta_s, backend)) = row
    else {
        return Ok(None);
    };
    Ok(Some(Current {
        device_id,
        press_id,
        service: service.parse().map_err(StoreError::Corrupt)?,
        state: state.parse().map_err(StoreError::Corrupt)?,
        created_at,
        reference,
        eta_s,
        backend,
    }))
}

impl Current {
    /// What the request's device hears of it in `state`; `None` when it names no device.
    pub(super) fn notice(&self, request_id: &str, state: RequestState) -> Option<Notice> {
        let device = self.device_id.as_deref()?;
        Some(self.notice_to(request_id, state, device))
    }

    fn notice_to(&self, request_id: &str, state: RequestState, device_id: &str) -> Notice {
        Notice {
            device_id: device_id.to_owned(),
            press_id: self.press_id.clone(),
            request_id: Some(request_id.to_owned()),
            service: Some(self.service),
            state: state.feedback(),
            reference: self.reference.clone(),
            eta_s: self.eta_s,
            reason: None,
        }
    }
}

fn set_state(c: &Connection, request_id: &str, step: &Step, at: i64) -> Result<(), StoreError> {
    let sql = match step.stamp {
        Some(Stamp::Acknowledged) => "UPDATE requests SET state = ?2, updated_at = ?3, acked_at = coalesce(acked_at, ?3) WHERE request_id = ?1",
        Some(Stamp::Closed) => "UPDATE requests SET state = ?2, updated_at = ?3, closed_at = coalesce(closed_at, ?3) WHERE request_id = ?1",
        None => "UPDATE requests SET state = ?2, updated_at = ?3 WHERE request_id = ?1",
    };
    c.prepare_cached(sql)?
        .execute(params![request_id, step.to.as_str(), at])?;
    Ok(())
}

pub(super) fn dispatched(
    c: &Connection,
    request_id: &str,
    backend: &str,
    reference: Option<&str>,
    eta_s: Option<u32>,
    at: i64,
    fx: &mut Effects,
) -> Result<bool, StoreError> {
    let Some(mut cur) = current(c, request_id)? else {
        return Ok(false);
    };
    c.prepare_cached("DELETE FROM outbox WHERE request_id = ?1")?
        .execute(params![request_id])?;
    if let OnAccepted::Late { call_off } = lifecycle::on_accepted(cur.state) {
        // Cancelled or closed while an attempt was in flight, and the backend took it after
        // all: a cancelled request is called off there too.
        event(
            c,
            request_id,
            at,
            "dispatched_late",
            None,
            Some(json!({"backend": backend, "ref": reference})),
        )?;
        if call_off {
            let by: Option<String> = c
                .prepare_cached(
                    "SELECT json_extract(detail, '$.by') FROM request_events
                     WHERE request_id = ?1 AND kind = 'cancelled' ORDER BY seq DESC LIMIT 1",
                )?
                .query_row(params![request_id], |r| r.get(0))
                .optional()?
                .flatten();
            followup::queue_cancel(
                c,
                request_id,
                backend,
                by.as_deref().unwrap_or("resident"),
                at,
            )?;
        }
        return Ok(false);
    }
    c.prepare_cached(
        "UPDATE requests SET state = 'dispatched', backend = ?2, backend_ref = ?3, eta_s = ?4, updated_at = ?5, dispatched_at = ?5
         WHERE request_id = ?1",
    )?
    .execute(params![request_id, backend, reference, eta_s, at])?;
    let seq = event(
        c,
        request_id,
        at,
        "dispatched",
        Some(RequestState::Dispatched),
        Some(json!({"backend": backend, "ref": reference, "eta_s": eta_s})),
    )?;
    cur.reference = reference.map(str::to_owned);
    cur.eta_s = eta_s;
    let notice = cur.notice(request_id, RequestState::Dispatched);
    transition(
        fx,
        seq,
        &cur,
        request_id,
        RequestState::Dispatched,
        "dispatched",
        at,
        notice,
    );
    Ok(true)
}

pub(super) fn escalated(
    c: &Connection,
    request_id: &str,
    reason: &str,
    contacts: &NotifyContacts,
    at: i64,
    fx: &mut Effects,
) -> Result<bool, StoreError> {
    let Some(cur) = current(c, request_id)? else {
        return Ok(false);
    };
    c.prepare_cached("DELETE FROM outbox WHERE request_id = ?1")?
        .execute(params![request_id])?;
    if !lifecycle::may_escalate(cur.state) {
        return Ok(false);
    }
    c.prepare_cached(
        "UPDATE requests SET state = 'escalated', backend = 'desk', updated_at = ?2, escalated_at = ?2 WHERE request_id = ?1",
    )?
    .execute(params![request_id, at])?;
    let seq = event(
        c,
        request_id,
        at,
        "escalated",
        Some(RequestState::Escalated),
        Some(json!({"reason": reason})),
    )?;
    followup::queue_contacts(c, request_id, reason, contacts, at)?;
    let notice = cur.notice(request_id, RequestState::Escalated);
    transition(
        fx,
        seq,
        &cur,
        request_id,
        RequestState::Escalated,
        "escalated",
        at,
        notice,
    );
    Ok(true)
}

pub(super) fn operator(
    c: &Connection,
    request_id: &str,
    action: OperatorAction,
    at: i64,
    fx: &mut Effects,
) -> Result<Transition, StoreError> {
    let Some(cur) = current(c, request_id)? else {
        return Ok(Transition::NotFound);
    };
    let step = match lifecycle::operator(action, cur.state) {
        Ok(step) => step,
        Err(state) => return Ok(Transition::Conflict(state)),
    };
    set_state(c, request_id, &step, at)?;
    c.prepare_cached("DELETE FROM outbox WHERE request_id = ?1")?
        .execute(params![request_id])?;
    let seq = event(
        c,
        request_id,
        at,
        step.kind,
        Some(step.to),
        Some(json!({"by": "operator", "was": cur.state.as_str()})),
    )?;
    if action == OperatorAction::Cancel {
        cancel::tell_backend(
            c,
            request_id,
            cur.state,
            cur.backend.as_deref(),
            "operator",
            at,
        )?;
    }
    let notice = cur.notice(request_id, step.to);
    // The resident already heard "escalated" (a person has it): an acknowledgement changes
    // nothing for them, so their device is not told again.
    let told = notice.clone().filter(|_| action != OperatorAction::Ack);
    transition(fx, seq, &cur, request_id, step.to, step.kind, at, told);
    Ok(Transition::Applied {
        notice,
        from: cur.state,
        created_at: cur.created_at,
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn callback(
    c: &Connection,
    request_id: &str,
    caller: Option<&str>,
    to: RequestState,
    eta_s: Option<u32>,
    reference: Option<&str>,
    at: i64,
    fx: &mut Effects,
) -> Result<Transition, StoreError> {
    let Some(mut cur) = current(c, request_id)? else {
        return Ok(Transition::NotFound);
    };
    let step = match lifecycle::callback(caller, cur.backend.as_deref(), cur.state, to) {
        Ok(step) => step,
        Err(CallbackRefusal::Forbidden) => return Ok(Transition::Forbidden),
        Err(CallbackRefusal::Conflict(s)) => return Ok(Transition::Conflict(s)),
    };
    set_state(c, request_id, &step, at)?;
    if eta_s.is_some() || reference.is_some() {
        c.prepare_cached(
            "UPDATE requests SET eta_s = coalesce(?2, eta_s), backend_ref = coalesce(?3, backend_ref) WHERE request_id = ?1",
        )?
        .execute(params![request_id, eta_s, reference])?;
    }
    let seq = event(
        c,
        request_id,
        at,
        step.kind,
        Some(to),
        Some(json!({"eta_s": eta_s, "ref": reference})),
    )?;
    if eta_s.is_some() {
        cur.eta_s = eta_s;
    }
    if let Some(r) = reference {
        cur.reference = Some(r.to_owned());
    }
    let notice = cur.notice(request_id, to);
    transition(fx, seq, &cur, request_id, to, step.kind, at, notice.clone());
    Ok(Transition::Applied {
        notice,
        from: cur.state,
        created_at: cur.created_at,
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
            .open_request(welfare_check(None))
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
