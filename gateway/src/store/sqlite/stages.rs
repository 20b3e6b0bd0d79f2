//! The raw times of one request ([`crate::store::stages::Times`]) from the journal: the
//! request's columns and its `received` and `attempt` events.

use crate::store::error::StoreError;
use crate::store::stages::{AttemptTime, Times};
use rusqlite::{params, Connection, OptionalExtension};

/// The times of `request_id` from the journal.
pub(super) fn load(c: &Connection, request_id: &str) -> Result<Option<Times>, StoreError> {
    let row = c
        .prepare_cached(
            "SELECT coalesce(p.at_ms, r.created_at), r.created_at, r.dispatched_at, r.escalated_at, r.acked_at, r.closed_at, r.state
             FROM requests r LEFT JOIN presses p ON p.device_id = r.device_id AND p.press_id = r.press_id
             WHERE r.request_id = ?1",
        )?
        .query_row(params![request_id], |r| {
            let cancelled = r.get::<_, String>(6)? == "cancelled";
            Ok(Times {
                press: r.get(0)?,
                intake: r.get(1)?,
                dispatched: r.get(2)?,
                escalated: r.get(3)?,
                acknowledged: r.get(4)?,
                closed: r.get::<_, Option<i64>>(5)?.map(|at| (at, cancelled)),
                ..Default::default()
            })
        })
        .optional()?;
    let Some(mut t) = row else { return Ok(None) };
    let mut stmt = c.prepare_cached(
        "SELECT at, kind, detail FROM request_events
         WHERE request_id = ?1 AND kind IN ('received', 'attempt') ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![request_id], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
        ))
    })?;
    for row in rows {
        let (at, kind, detail) = row?;
        let d: serde_json::Value = detail
            .and_then(|d| serde_json::from_str(&d).ok())
            .unwrap_or_default();
        match kind.as_str() {
            "received" => {
                t.received_sent = Some(at);
                t.journaled = d["journaled_at"].as_i64();
            }
            _ => t.attempts.push(AttemptTime {
                n: d["attempt"].as_u64().unwrap_or(0) as u32,
                at,
                backend: d["backend"].as_str().unwrap_or("").to_owned(),
                result: d["result"].as_str().unwrap_or("").to_owned(),
                elapsed_ms: d["elapsed_ms"].as_u64().unwrap_or(0),
            }),
        }
    }
    Ok(Some(t))
}
