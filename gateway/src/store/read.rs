//! Reads: what the API shows, what the outbox replays, what the broker authenticates against,
//! and the device registry the CLI maintains.

use super::model::*;
use super::StoreError;
use crate::clock::rfc3339_ms;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;
use yijian_wire::{Gesture, Press, Priority, Service};

/// A request as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestView {
    pub request_id: String,
    pub service: String,
    pub priority: String,
    pub tags: Vec<String>,
    pub state: String,
    pub device_id: String,
    pub resident_id: Option<String>,
    pub press: PressView,
    pub rule: String,
    pub backend: Option<String>,
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    pub eta_s: Option<u32>,
    pub created_at: String,
    pub updated_at: String,
    pub dispatched_at: Option<String>,
    pub escalated_at: Option<String>,
    pub acknowledged_at: Option<String>,
    pub closed_at: Option<String>,
    /// The resident asked to cancel while help was on its way: an operator confirms by phone.
    pub cancel_requested_at: Option<String>,
    /// The resident's record as on file now (detail view only; `null` when none is on record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resident: Option<serde_json::Value>,
    /// Every state change, attempt and callback, oldest first (detail view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<EventView>>,
    /// The latency breakdown: each stage's time and ms since the press (detail view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stages: Option<super::stages::Stages>,
}

/// The press that created a request.
#[derive(Debug, Clone, Serialize)]
pub struct PressView {
    pub id: String,
    pub button: String,
    pub gesture: String,
    pub at: String,
    pub battery: Option<u8>,
}

/// One entry of a request's history.
#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub at: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// Filters of `GET /api/v1/requests`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub state: Option<RequestState>,
    pub service: Option<Service>,
    pub device_id: Option<String>,
    /// Only requests whose resident asked to cancel while help was on its way (`true`) or
    /// only the others (`false`).
    pub cancel_requested: Option<bool>,
    pub limit: u32,
}

const REQUEST_COLUMNS: &str = "r.request_id, r.service, r.priority, r.tags, r.state, r.device_id, r.resident_id,
     p.press_id, p.button, p.gesture, p.at_ms, p.battery, r.rule, r.backend, r.backend_ref, r.eta_s,
     r.created_at, r.updated_at, r.dispatched_at, r.escalated_at, r.acked_at, r.closed_at, r.cancel_requested_at";

const REQUEST_FROM: &str =
    "FROM requests r JOIN presses p ON p.device_id = r.device_id AND p.press_id = r.press_id";

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
        press: PressView {
            id: r.get(7)?,
            button: r.get(8)?,
            gesture: r.get(9)?,
            at: rfc3339_ms(r.get(10)?),
            battery: r.get(11)?,
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
pub fn list_requests(c: &Connection, f: &ListFilter) -> Result<Vec<RequestView>, StoreError> {
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
pub fn get_request(c: &Connection, request_id: &str) -> Result<Option<RequestView>, StoreError> {
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
        let record = crate::residents::load(c, id)?;
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
pub fn oldest_escalated(c: &Connection) -> Result<Option<i64>, StoreError> {
    Ok(
        c.prepare_cached("SELECT min(created_at) FROM requests WHERE state = 'escalated'")?
            .query_row([], |r| r.get::<_, Option<i64>>(0))?,
    )
}

/// The backend that accepted a request, if any.
pub fn request_backend(
    c: &Connection,
    request_id: &str,
) -> Result<Option<Option<String>>, StoreError> {
    Ok(
        c.prepare_cached("SELECT backend FROM requests WHERE request_id = ?1")?
            .query_row(params![request_id], |r| r.get::<_, Option<String>>(0))
            .optional()?,
    )
}

/// Every request still owed a dispatch, oldest first.
pub fn outbox(c: &Connection) -> Result<Vec<Request>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT r.request_id, r.service, r.priority, r.tags, r.device_id, r.resident_id, r.created_at, o.attempts,
                p.press_id, p.button, p.gesture, p.at_ms, p.battery
         FROM outbox o JOIN requests r ON r.request_id = o.request_id
         JOIN presses p ON p.device_id = r.device_id AND p.press_id = r.press_id
         ORDER BY o.created_at, o.request_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, Option<String>>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, u32>(7)?,
            r.get::<_, String>(8)?,
            r.get::<_, String>(9)?,
            r.get::<_, String>(10)?,
            r.get::<_, i64>(11)?,
            r.get::<_, Option<u8>>(12)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (
            id,
            service,
            priority,
            tags,
            device_id,
            resident_id,
            created_at,
            attempts,
            press_id,
            button,
            gesture,
            at,
            battery,
        ) = row?;
        out.push(Request {
            id,
            service: service.parse::<Service>().map_err(StoreError::Corrupt)?,
            priority: priority.parse::<Priority>().map_err(StoreError::Corrupt)?,
            tags: serde_json::from_str(&tags).unwrap_or_default(),
            device_id,
            press: Press {
                id: press_id,
                button,
                gesture: gesture.parse::<Gesture>().map_err(StoreError::Corrupt)?,
                at,
                battery,
            },
            resident_id,
            created_at,
            attempts,
            journaled_at: None,
        });
    }
    Ok(out)
}

fn device_row(r: &Row<'_>) -> rusqlite::Result<DeviceRecord> {
    Ok(DeviceRecord {
        device_id: r.get(0)?,
        secret_sha256: r.get(1)?,
        profile: r.get(2)?,
        resident_id: r.get(3)?,
        created_at: r.get(4)?,
        revoked_at: r.get(5)?,
        last_seen_at: r.get(6)?,
        online: r.get::<_, Option<i64>>(7)?.map(|v| v != 0),
    })
}

const DEVICE_COLUMNS: &str =
    "device_id, secret_sha256, profile, resident_id, created_at, revoked_at, last_seen_at, online";

/// One device.
pub fn device(c: &Connection, device_id: &str) -> Result<Option<DeviceRecord>, StoreError> {
    Ok(c.prepare_cached(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = ?1"
    ))?
    .query_row(params![device_id], device_row)
    .optional()?)
}

/// Every device, by id.
pub fn devices(c: &Connection) -> Result<Vec<DeviceRecord>, StoreError> {
    let mut stmt = c.prepare(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices ORDER BY device_id"
    ))?;
    let rows = stmt.query_map([], device_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Register a device. Fails with a clear message when the id is taken.
pub fn add_device(
    c: &Connection,
    device_id: &str,
    secret_sha256: &[u8],
    profile: &str,
    resident_id: Option<&str>,
    at: i64,
) -> Result<(), StoreError> {
    let n = c.execute(
        "INSERT INTO devices (device_id, secret_sha256, profile, resident_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT DO NOTHING",
        params![device_id, secret_sha256, profile, resident_id, at],
    )?;
    if n == 0 {
        return Err(StoreError::Setup(format!(
            "device {device_id} is already registered"
        )));
    }
    Ok(())
}

/// Where a device's recent requests stand, as the feedback it would hear now, newest first:
/// those created since `created_since` that are still open, or that closed or were cancelled
/// since `ended_since`; at most `limit`. What a device that was away is told again when it
/// subscribes (`feedback::resume`).
pub fn current_notices(
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
            r.get::<_, String>(1)?,
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
