//! A request's transitions after it was created, in SQLite, inside the writer's transaction: a
//! backend accepted it, it went to the desk, an operator acted, a backend called back, an
//! attempt was made. Each reads the current row ([`Current`]), asks
//! [`crate::store::lifecycle`] what is allowed, writes what it decided and records the
//! transition for the change feed and the open-request gauges ([`Effects`]).

use super::history::{event, Effects};
use super::{cancel, followup};
use crate::store::changes::Change;
use crate::store::command::{Operation, OperatorAction, Transition};
use crate::store::error::StoreError;
use crate::store::followup::NotifyContacts;
use crate::store::lifecycle::{self, CallbackRefusal, OnAccepted, Stamp, Step};
use crate::store::model::*;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;
use yijian_wire::Service;

/// Record a transition of `cur` to `to` for the gauges and the change feed.
#[allow(clippy::too_many_arguments)]
pub(super) fn transition(
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
        answered: false,
    });
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

    pub(super) fn notice_to(
        &self,
        request_id: &str,
        state: RequestState,
        device_id: &str,
    ) -> Notice {
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
    op: Operation,
    at: i64,
    fx: &mut Effects,
) -> Result<Transition, StoreError> {
    let action = op.action;
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
        Some(operator_detail(&op, cur.state)),
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

/// The history's detail of an operator action: who, from which state, and their note.
fn operator_detail(op: &Operation, was: RequestState) -> serde_json::Value {
    let mut d = json!({"by": "operator", "operator": op.by, "was": was.as_str()});
    if let Some(n) = &op.note {
        d["note"] = json!(n);
    }
    d
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
