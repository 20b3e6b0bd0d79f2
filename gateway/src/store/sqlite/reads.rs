//! Reads: what the API shows, what the outbox replays, where a device's requests stand, and
//! what the change feed's subscribers missed.

use crate::clock::rfc3339_ms;
use crate::store::changes::{Change, KINDS};
use crate::store::error::StoreError;
use crate::store::model::*;
use crate::store::views::{EventView, ListFilter, PressView, RequestView};
use rusqlite::{params, Connection, OptionalExtension, Row};
use yijian_wire::{Gesture, Press, Priority, Service};

const REQUEST_COLUMNS: &str = "r.request_id, r.service, r.priority, r.tags, r.state, r.device_id, r.resident_id,
     p.press_id, p.button, p.gesture, p.at_ms, p.battery, r.rule, r.backend, r.backend_ref, r.eta_s,
     r.created_at, r.updated_at, r.dispatched_at, r.escalated_at, r.acked_at, r.closed_at, r.cancel_requested_at,
     r.origin";

/// A request no press started has no row in `presses`: hence the outer join.
const REQUEST_FROM: &str =
    "FROM requests r LEFT JOIN presses p ON p.device_id = r.device_id AND p.press_id = r.press_id";

/// The `origin` column: NULL for a press (every request before origins existed was one), the
/// origin's JSON otherwise.
fn origin_json(origin: Option<String>) -> serde_json::Value {
    match origin {
        None => serde_json::json!({"kind": "press"}),
        Some(o) => serde_json::from_str(&o).unwrap_or(serde_json::Value::Null),
    }
}

fn request_view(r: &Row<'_>) -> rusqlite::Result<RequestView> {
    let opt_time = |i: usize| -> rusqlite::Result<Option<String>> {
        Ok(r.get::<_, Option<i64>>(i)?.map(rfc3339_ms))
    };
    let tags: String = r.get(3)?;
    Ok(RequestView {
        request_id: r.get(0)?,
        service: r.get(1)?,
        priority: r.get(2)?,
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        state: r.get(4)?,
        device_id: r.get(5)?,
        resident_id: r.get(6)?,
        origin: origin_json(r.get(23)?),
        press: match r.get::<_, Option<String>>(7)? {
            Some(id) => Some(PressView {
                id,
                button: r.get(8)?,
                gesture: r.get(9)?,
                at: rfc3339_ms(r.get(10)?),
                battery: r.get(11)?,
            }),
            None => None,
        },
        rule: r.get(12)?,
        backend: r.get(13)?,
        reference: r.get(14)?,
        eta_s: r.get(15)?,
        created_at: rfc3339_ms(r.get(16)?),
        updated_at: rfc3339_ms(r.get(17)?),
        dispatched_at: opt_time(18)?,
        escalated_at: opt_time(19)?,
        acknowledged_at: opt_time(20)?,
        closed_at: opt_time(21)?,
        cancel_requested_at: opt_time(22)?,
        resident: None,
        history: None,
        stages: None,
    })
}

/// Requests matching `f`, newest first.
pub(super) fn list_requests(
    c: &Connection,
    f: &ListFilter,
) -> Result<Vec<RequestView>, StoreError> {
    let sql = format!(
        "SELECT {REQUEST_COLUMNS} {REQUEST_FROM}
         WHERE (?1 IS NULL OR r.state = ?1) AND (?2 IS NULL OR r.service = ?2) AND (?3 IS NULL OR r.device_id = ?3)
           AND (?5 IS NULL OR (r.cancel_requested_at IS NOT NULL) = ?5)
         ORDER BY r.created_at DESC, r.request_id DESC LIMIT ?4"
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt.query_map(
        params![
            f.state.map(|s| s.as_str()),
            f.service.map(|s| s.as_str()),
            f.device_id,
            f.limit,
            f.cancel_requested
        ],
        request_view,
    )?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// One request with its history.
pub(super) fn get_request(
    c: &Connection,
    request_id: &str,
) -> Result<Option<RequestView>, StoreError> {
    let sql = format!("SELECT {REQUEST_COLUMNS} {REQUEST_FROM} WHERE r.request_id = ?1");
    let Some(mut view) = c
        .prepare_cached(&sql)?
        .query_row(params![request_id], request_view)
        .optional()?
    else {
        return Ok(None);
    };
    let mut stmt = c.prepare_cached(
        "SELECT at, kind, state, detail FROM request_events WHERE request_id = ?1 ORDER BY seq",
    )?;
    let events = stmt
        .query_map(params![request_id], |r| {
            let detail: Option<String> = r.get(3)?;
            Ok(EventView {
                at: rfc3339_ms(r.get(0)?),
                kind: r.get(1)?,
                state: r.get(2)?,
                detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    view.history = Some(events);
    if let Some(id) = &view.resident_id {
        let record = super::residents::load(c, id)?;
        view.resident = Some(
            record
                .map(|r| serde_json::to_value(r).expect("residents serialize"))
                .unwrap_or_default(),
        );
    }
    view.stages = super::stages::load(c, request_id)?.map(|t| t.stages());
    Ok(Some(view))
}

/// Creation time of the oldest request waiting at the desk for an operator, epoch ms.
pub(super) fn oldest_escalated(c: &Connection) -> Result<Option<i64>, StoreError> {
    Ok(
        c.prepare_cached("SELECT min(created_at) FROM requests WHERE state = 'escalated'")?
            .query_row([], |r| r.get::<_, Option<i64>>(0))?,
    )
}

/// Every request still owed a dispatch, oldest first.
pub(super) fn outbox(c: &Connection) -> Result<Vec<Request>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT r.request_id, r.service, r.priority, r.tags, r.device_id, r.resident_id, r.created_at, o.attempts,
                p.press_id, p.button, p.gesture, p.at_ms, p.battery, r.origin
         FROM outbox o JOIN requests r ON r.request_id = o.request_id
         LEFT JOIN presses p ON p.device_id = r.device_id AND p.press_id = r.press_id
         ORDER BY o.created_at, o.request_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(OutboxRow {
            id: r.get(0)?,
            service: r.get(1)?,
            priority: r.get(2)?,
            tags: r.get(3)?,
            device_id: r.get(4)?,
            resident_id: r.get(5)?,
            created_at: r.get(6)?,
            attempts: r.get(7)?,
            press: match r.get::<_, Option<String>>(8)? {
                Some(id) => Some((id, r.get(9)?, r.get(10)?, r.get(11)?, r.get(12)?)),
                None => None,
            },
            origin: r.get(13)?,
        })
    })?;
    let mut out = Vec::new();
    for row in rows {
        let row = row?;
        let origin = match (row.press, row.origin) {
            (Some((id, button, gesture, at, battery)), _) => Origin::Press(Press {
                id,
                button,
                gesture: gesture.parse::<Gesture>().map_err(StoreError::Corrupt)?,
                at,
                battery,
            }),
            (None, Some(o)) => {
                let v: serde_json::Value = serde_json::from_str(&o)
                    .map_err(|e| StoreError::Corrupt(format!("request {}: origin: {e}", row.id)))?;
                Origin::from_json(&v).map_err(StoreError::Corrupt)?
            }
            (None, None) => {
                return Err(StoreError::Corrupt(format!(
                    "request {} has neither a press nor an origin",
                    row.id
                )))
            }
        };
        out.push(Request {
            service: row
                .service
                .parse::<Service>()
                .map_err(StoreError::Corrupt)?,
            priority: row
                .priority
                .parse::<Priority>()
                .map_err(StoreError::Corrupt)?,
            tags: serde_json::from_str(&row.tags).unwrap_or_default(),
            id: row.id,
            device_id: row.device_id,
            origin,
            resident_id: row.resident_id,
            created_at: row.created_at,
            attempts: row.attempts,
            journaled_at: None,
        });
    }
    Ok(out)
}

/// One outbox row as read, before its values are parsed.
struct OutboxRow {
    id: String,
    service: String,
    priority: String,
    tags: String,
    device_id: Option<String>,
    resident_id: Option<String>,
    created_at: i64,
    attempts: u32,
    /// id, button, gesture, at, battery
    press: Option<(String, String, String, i64, Option<u8>)>,
    origin: Option<String>,
}

/// Where a device's recent requests stand, as the feedback it would hear now, newest first:
/// those created since `created_since` that are still open, or that closed or were cancelled
/// since `ended_since`; at most `limit`. What a device that was away is told again when it
/// subscribes (`feedback::resume`).
pub(super) fn current_notices(
    c: &Connection,
    device_id: &str,
    created_since: i64,
    ended_since: i64,
    limit: u32,
) -> Result<Vec<Notice>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT request_id, press_id, service, state, backend_ref, eta_s FROM requests
         WHERE device_id = ?1 AND created_at >= ?2
           AND (state NOT IN ('closed', 'cancelled') OR updated_at >= ?3)
         ORDER BY created_at DESC LIMIT ?4",
    )?;
    let rows = stmt.query_map(params![device_id, created_since, ended_since, limit], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, Option<u32>>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (request_id, press_id, service, state, reference, eta_s) = row?;
        let service: Service = service.parse().map_err(StoreError::Corrupt)?;
        let state: RequestState = state.parse().map_err(StoreError::Corrupt)?;
        out.push(Notice {
            device_id: device_id.to_owned(),
            press_id,
            request_id: Some(request_id),
            service: Some(service),
            state: state.feedback(),
            reference,
            eta_s,
            reason: None,
        });
    }
    Ok(out)
}

/// The change feed's transitions after `seq`, oldest first, at most `limit`, each with the
/// request's state and what its device hears as they are now (what a subscriber that lagged
/// catches up with).
pub(super) fn changes_since(
    c: &Connection,
    seq: i64,
    limit: u32,
) -> Result<Vec<Change>, StoreError> {
    let kinds = KINDS
        .iter()
        .map(|k| format!("'{k}'"))
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!(
        "SELECT e.seq, e.request_id, e.kind, e.at, r.service, r.state, r.device_id, r.press_id, r.backend_ref, r.eta_s
         FROM request_events e JOIN requests r ON r.request_id = e.request_id
         WHERE e.seq > ?1 AND e.kind IN ({kinds}) ORDER BY e.seq LIMIT ?2"
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![seq, limit], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, Option<String>>(6)?,
            r.get::<_, Option<String>>(7)?,
            r.get::<_, Option<String>>(8)?,
            r.get::<_, Option<u32>>(9)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, request_id, kind, at, service, state, device_id, press_id, reference, eta_s) =
            row?;
        let service: Service = service.parse().map_err(StoreError::Corrupt)?;
        let state: RequestState = state.parse().map_err(StoreError::Corrupt)?;
        // A press's `received` was intake's answer (`Change::answered`); an acknowledgement is
        // not told to the device (it already heard `escalated`).
        let answered = kind == "created" && press_id.is_some();
        let notice = device_id
            .filter(|_| kind != "acknowledged")
            .map(|device_id| Notice {
                device_id,
                press_id,
                request_id: Some(request_id.clone()),
                service: Some(service),
                state: state.feedback(),
                reference,
                eta_s,
                reason: None,
            });
        out.push(Change {
            seq,
            request_id,
            service,
            state,
            kind,
            at,
            notice,
            answered,
        });
    }
    Ok(out)
}
