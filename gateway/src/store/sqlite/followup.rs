//! The follow-ups outbox (`crate::store::followup`): written in the same transaction as the
//! change that needs it, read back by the deliverer, closed with its outcome in the history.

use super::history::event;
use crate::clock::rfc3339_ms;
use crate::store::error::StoreError;
use crate::store::followup::{notify_body, About, Ending, Followup, Kind, NotifyContacts};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;
use std::cell::Cell;

thread_local! {
    /// Set when the writer thread queued a follow-up in the batch being committed, so the
    /// deliverer is woken only when there is something for it.
    static QUEUED: Cell<bool> = const { Cell::new(false) };
}

/// True (once) if a follow-up was queued since the last call: the writer asks after a commit.
pub(super) fn take_queued() -> bool {
    QUEUED.with(|q| q.replace(false))
}

/// Queue a follow-up; a second one with the same key and target is ignored.
fn enqueue(c: &Connection, f: &Followup) -> Result<bool, StoreError> {
    let n = c
        .prepare_cached(
            "INSERT INTO followups (idempotency_key, target, request_id, kind, body, state, attempts, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?6) ON CONFLICT DO NOTHING",
        )?
        .execute(params![f.key, f.target, f.request_id, f.kind.as_str(), f.body, f.created_at])?;
    if n > 0 {
        QUEUED.with(|q| q.set(true));
    }
    Ok(n > 0)
}

/// Tell `backend` that `request_id` is cancelled (`by`: `resident` or `operator`).
pub(super) fn queue_cancel(
    c: &Connection,
    request_id: &str,
    backend: &str,
    by: &str,
    at: i64,
) -> Result<(), StoreError> {
    let body = json!({
        "request_id": request_id,
        "reason": format!("cancelled_by_{by}"),
        "cancelled_at": rfc3339_ms(at),
    });
    let f = Followup {
        key: format!("{request_id}:cancel"),
        target: backend.to_owned(),
        request_id: request_id.to_owned(),
        kind: Kind::Cancel,
        body: body.to_string(),
        attempts: 0,
        created_at: at,
    };
    if enqueue(c, &f)? {
        event(
            c,
            request_id,
            at,
            "backend_cancel_queued",
            None,
            Some(json!({"backend": backend, "by": by})),
        )?;
    }
    Ok(())
}

/// After an escalation to the desk: queue one notification per contact of the request's
/// resident, or say in the history why nobody was notified.
pub(super) fn queue_contacts(
    c: &Connection,
    request_id: &str,
    reason: &str,
    policy: &NotifyContacts,
    at: i64,
) -> Result<(), StoreError> {
    let backend = match policy {
        NotifyContacts::No => return Ok(()),
        NotifyContacts::Unconfigured => {
            return not_notified(c, request_id, at, "no [notify] backend is configured");
        }
        NotifyContacts::Via(b) => b,
    };
    let about = c
        .prepare_cached(
            "SELECT service, priority, created_at, resident_id FROM requests WHERE request_id = ?1",
        )?
        .query_row(params![request_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .optional()?;
    let Some((service, priority, created_at, resident_id)) = about else {
        return Ok(());
    };
    let about = About {
        service: service.parse().map_err(StoreError::Corrupt)?,
        priority,
        created_at,
        resident_id,
    };
    let resident = match &about.resident_id {
        Some(id) => super::residents::load(c, id)?,
        None => None,
    };
    let Some(resident) = resident else {
        return not_notified(
            c,
            request_id,
            at,
            "the device is bound to no resident on record",
        );
    };
    if resident.contacts.is_empty() {
        return not_notified(c, request_id, at, "the resident has no contacts on record");
    }
    let mut queued = Vec::new();
    for (i, contact) in resident.contacts.iter().enumerate() {
        let f = Followup {
            key: format!("{request_id}:notify:{}", i + 1),
            target: backend.clone(),
            request_id: request_id.to_owned(),
            kind: Kind::Notify,
            body: notify_body(request_id, &about, &resident, contact, i + 1, reason, at)
                .to_string(),
            attempts: 0,
            created_at: at,
        };
        if enqueue(c, &f)? {
            queued.push(json!({"name": contact.name, "relation": contact.relation}));
        }
    }
    if !queued.is_empty() {
        event(
            c,
            request_id,
            at,
            "contacts_notify_queued",
            None,
            Some(json!({"backend": backend, "contacts": queued})),
        )?;
    }
    Ok(())
}

fn not_notified(c: &Connection, request_id: &str, at: i64, why: &str) -> Result<(), StoreError> {
    event(
        c,
        request_id,
        at,
        "contacts_not_notified",
        None,
        Some(json!({"reason": why})),
    )?;
    Ok(())
}

/// Every follow-up still pending, oldest first.
pub(super) fn pending(c: &Connection) -> Result<Vec<Followup>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT idempotency_key, target, request_id, kind, body, attempts, created_at FROM followups
         WHERE state = 'pending' ORDER BY created_at, idempotency_key",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, u32>(5)?,
            r.get::<_, i64>(6)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (key, target, request_id, kind, body, attempts, created_at) = row?;
        let kind = match kind.as_str() {
            "cancel" => Kind::Cancel,
            "notify" => Kind::Notify,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "follow-up {key} has kind {other:?}"
                )))
            }
        };
        out.push(Followup {
            key,
            target,
            request_id,
            kind,
            body,
            attempts,
            created_at,
        });
    }
    Ok(out)
}

/// One attempt was made (its number), whatever its result.
pub(super) fn attempted(
    c: &Connection,
    key: &str,
    target: &str,
    attempt: u32,
    at: i64,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE followups SET attempts = max(attempts, ?3), updated_at = ?4 WHERE idempotency_key = ?1 AND target = ?2",
    )?
    .execute(params![key, target, attempt, at])?;
    Ok(())
}

/// The follow-up is over: mark it and write its outcome into the request's history.
pub(super) fn finished(
    c: &Connection,
    f: &Followup,
    ending: Ending,
    at: i64,
) -> Result<(), StoreError> {
    let state = match ending {
        Ending::Delivered | Ending::Unknown => "done",
        Ending::Refused(_) | Ending::Expired | Ending::Unconfigured => "failed",
    };
    let n = c
        .prepare_cached(
            "UPDATE followups SET state = ?3, updated_at = ?4 WHERE idempotency_key = ?1 AND target = ?2 AND state = 'pending'",
        )?
        .execute(params![f.key, f.target, state, at])?;
    if n == 0 {
        return Ok(());
    }
    let status = match ending {
        Ending::Refused(s) => Some(s),
        _ => None,
    };
    let (kind, detail) = match f.kind {
        Kind::Cancel => {
            let kind = if state == "done" {
                "backend_cancelled"
            } else {
                "backend_cancel_failed"
            };
            (
                kind,
                json!({"backend": f.target, "result": ending.label(), "status": status, "attempts": f.attempts}),
            )
        }
        Kind::Notify => {
            let to: serde_json::Value = serde_json::from_str::<serde_json::Value>(&f.body)
                .ok()
                .and_then(|b| b.get("to").cloned())
                .unwrap_or(serde_json::Value::Null);
            let kind = if state == "done" {
                "contact_notified"
            } else {
                "contact_notify_failed"
            };
            (
                kind,
                json!({"backend": f.target, "to": to, "result": ending.label(), "status": status}),
            )
        }
    };
    event(c, &f.request_id, at, kind, None, Some(detail))?;
    Ok(())
}
