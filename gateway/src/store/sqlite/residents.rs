//! The residents table and device bindings: written by the CLI (`residents import`, `devices
//! bind`) in its own process beside a running gateway, read by intake's cache and by dispatch.
//!
//! NOTE: writes are IMMEDIATE transactions on a connection of their own (WAL lets them share
//! the file with the journal's writer); the change stamp (`updated_at`, indexed) is how a
//! running gateway notices them.

use crate::store::error::StoreError;
use crate::store::records::Resident;
use rusqlite::{params, Connection, OptionalExtension};

/// One resident from the journal.
pub(super) fn load(c: &Connection, id: &str) -> Result<Option<Resident>, StoreError> {
    let data: Option<String> = c
        .prepare_cached("SELECT data FROM residents WHERE resident_id = ?1")?
        .query_row(params![id], |r| r.get(0))
        .optional()?;
    data.map(|d| {
        serde_json::from_str(&d).map_err(|e| StoreError::Corrupt(format!("resident {id}: {e}")))
    })
    .transpose()
}

/// Every resident, by id.
pub(super) fn list(c: &Connection) -> Result<Vec<Resident>, StoreError> {
    let mut stmt = c.prepare("SELECT resident_id, data FROM residents ORDER BY resident_id")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (id, data) = row?;
        out.push(
            serde_json::from_str(&data)
                .map_err(|e| StoreError::Corrupt(format!("resident {id}: {e}")))?,
        );
    }
    Ok(out)
}

/// The residents table's change stamp: the largest `updated_at` (indexed, so cheap to poll).
pub(super) fn version(c: &Connection) -> Result<i64, StoreError> {
    Ok(
        c.prepare_cached("SELECT coalesce(max(updated_at), 0) FROM residents")?
            .query_row([], |r| r.get(0))?,
    )
}

/// A stamp later than every `updated_at` so far and not before `now`: watchers compare maxima,
/// so two changes in one millisecond must still differ.
fn next_stamp(c: &Connection, now: i64) -> Result<i64, StoreError> {
    Ok(now.max(version(c)? + 1))
}

/// Insert or replace `residents` in one transaction: all of them or none.
pub(super) fn upsert_all(
    c: &mut Connection,
    residents: &[Resident],
    now: i64,
) -> Result<(), StoreError> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let stamp = next_stamp(&tx, now)?;
    {
        let mut stmt = tx.prepare(
            "INSERT INTO residents (resident_id, data, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (resident_id) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
        )?;
        for r in residents {
            stmt.execute(params![
                r.id,
                serde_json::to_string(r).expect("residents serialize"),
                stamp
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Bind `device_id` to `resident_id` (or to nobody). The resident must exist. Raises the
/// residents' change stamp so a running gateway re-reads the binding.
pub(super) fn bind_device(
    c: &mut Connection,
    device_id: &str,
    resident_id: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let previous: Option<Option<String>> = tx
        .query_row(
            "SELECT resident_id FROM devices WHERE device_id = ?1",
            params![device_id],
            |r| r.get(0),
        )
        .optional()?;
    let Some(previous) = previous else {
        return Err(StoreError::Refused(format!(
            "device {device_id} is not registered"
        )));
    };
    if let Some(r) = resident_id {
        if load(&tx, r)?.is_none() {
            return Err(StoreError::Refused(format!(
                "resident {r} is not on record (import it first: yijian-gateway residents import FILE)"
            )));
        }
    }
    tx.execute(
        "UPDATE devices SET resident_id = ?2 WHERE device_id = ?1",
        params![device_id, resident_id],
    )?;
    let stamp = next_stamp(&tx, now)?;
    for r in [previous.as_deref(), resident_id].into_iter().flatten() {
        tx.execute(
            "UPDATE residents SET updated_at = ?2 WHERE resident_id = ?1",
            params![r, stamp],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Devices bound to a resident.
pub(super) fn devices_of(c: &Connection, resident_id: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt =
        c.prepare("SELECT device_id FROM devices WHERE resident_id = ?1 ORDER BY device_id")?;
    let rows = stmt.query_map(params![resident_id], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// When a resident's record (or a binding to it) last changed.
pub(super) fn updated_at(c: &Connection, resident_id: &str) -> Result<Option<i64>, StoreError> {
    Ok(
        c.prepare_cached("SELECT updated_at FROM residents WHERE resident_id = ?1")?
            .query_row(params![resident_id], |r| r.get(0))
            .optional()?,
    )
}
