//! The device registry and its credential changes: registration, revoke and rotate, each
//! change logged in `device_changes` in the same transaction, so a running gateway in another
//! process learns of it (`broker::evict` polls the log) and drops the device's live connection.
//!
//! NOTE: these writes run on a read-write connection of their own (the CLI's, or the admin
//! API's); SQLite's WAL and busy timeout let them share the file with the journal's writer.
//! Their transactions are IMMEDIATE: a deferred one that reads and then writes fails at once
//! with "database is locked" when the writer committed in between (the busy timeout does not
//! cover that upgrade).

use crate::store::error::StoreError;
use crate::store::records::{
    CredentialChange as Change, CredentialEntry as ChangeEntry, DeviceRecord, NewDevice, REVOKED,
    ROTATED,
};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

fn revoked_state(c: &Connection, device_id: &str) -> Result<Option<bool>, StoreError> {
    Ok(
        c.prepare_cached("SELECT revoked_at IS NOT NULL FROM devices WHERE device_id = ?1")?
            .query_row(params![device_id], |r| r.get::<_, bool>(0))
            .optional()?,
    )
}

/// Revoke a device: it may never connect again, and a running gateway drops its connection.
pub(super) fn revoke(c: &mut Connection, device_id: &str, at: i64) -> Result<Change, StoreError> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    match revoked_state(&tx, device_id)? {
        None => return Ok(Change::NotFound),
        Some(true) => return Ok(Change::Revoked),
        Some(false) => {}
    }
    tx.execute(
        "UPDATE devices SET revoked_at = ?2 WHERE device_id = ?1",
        params![device_id, at],
    )?;
    tx.execute(
        "INSERT INTO device_changes (device_id, change, at) VALUES (?1, ?2, ?3)",
        params![device_id, REVOKED, at],
    )?;
    tx.commit()?;
    Ok(Change::Done)
}

/// Replace a device's secret digest: the old secret stops working at once, and a running
/// gateway drops the connection made with it.
pub(super) fn rotate(
    c: &mut Connection,
    device_id: &str,
    secret_sha256: &[u8],
    at: i64,
) -> Result<Change, StoreError> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    match revoked_state(&tx, device_id)? {
        None => return Ok(Change::NotFound),
        Some(true) => return Ok(Change::Revoked),
        Some(false) => {}
    }
    tx.execute(
        "UPDATE devices SET secret_sha256 = ?2 WHERE device_id = ?1",
        params![device_id, secret_sha256],
    )?;
    tx.execute(
        "INSERT INTO device_changes (device_id, change, at) VALUES (?1, ?2, ?3)",
        params![device_id, ROTATED, at],
    )?;
    tx.commit()?;
    Ok(Change::Done)
}

/// The log's newest position (0 when empty).
pub(super) fn last_seq(c: &Connection) -> Result<i64, StoreError> {
    Ok(c.query_row(
        "SELECT coalesce(max(seq), 0) FROM device_changes",
        [],
        |r| r.get(0),
    )?)
}

/// Entries after `seq`, oldest first.
pub(super) fn since(c: &Connection, seq: i64) -> Result<Vec<ChangeEntry>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT seq, device_id, change FROM device_changes WHERE seq > ?1 ORDER BY seq LIMIT 1000",
    )?;
    let rows = stmt.query_map(params![seq], |r| {
        Ok(ChangeEntry {
            seq: r.get(0)?,
            device_id: r.get(1)?,
            change: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
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
pub(super) fn device(c: &Connection, device_id: &str) -> Result<Option<DeviceRecord>, StoreError> {
    Ok(c.prepare_cached(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = ?1"
    ))?
    .query_row(params![device_id], device_row)
    .optional()?)
}

/// Every device, by id.
pub(super) fn devices(c: &Connection) -> Result<Vec<DeviceRecord>, StoreError> {
    let mut stmt = c.prepare(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices ORDER BY device_id"
    ))?;
    let rows = stmt.query_map([], device_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Register a device. Fails with a clear message when the id is taken.
pub(super) fn add_device(
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
        return Err(StoreError::Refused(format!(
            "device {device_id} is already registered"
        )));
    }
    Ok(())
}

/// Register devices in one transaction: all of them or none. Fails with a clear message when
/// an id is taken.
pub(super) fn add_all(
    c: &mut Connection,
    devices: &[NewDevice],
    at: i64,
) -> Result<(), StoreError> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for d in devices {
        add_device(
            &tx,
            &d.device_id,
            &d.secret_sha256,
            &d.profile,
            d.resident_id.as_deref(),
            at,
        )?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_and_rotate_are_logged_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = super::super::open_rw(&dir.path().join("j.db")).unwrap();
        add_device(&c, "d1", &[1; 32], "one-button", None, 1).unwrap();
        assert_eq!(last_seq(&c).unwrap(), 0);
        assert_eq!(rotate(&mut c, "d1", &[2; 32], 2).unwrap(), Change::Done);
        assert_eq!(
            rotate(&mut c, "nope", &[2; 32], 2).unwrap(),
            Change::NotFound
        );
        assert_eq!(revoke(&mut c, "d1", 3).unwrap(), Change::Done);
        assert_eq!(revoke(&mut c, "d1", 4).unwrap(), Change::Revoked);
        assert_eq!(rotate(&mut c, "d1", &[3; 32], 5).unwrap(), Change::Revoked);
        let log = since(&c, 0).unwrap();
        let kinds: Vec<_> = log.iter().map(|e| e.change.as_str()).collect();
        assert_eq!(kinds, vec![ROTATED, REVOKED]);
        assert_eq!(since(&c, log[0].seq).unwrap().len(), 1);
        assert_eq!(last_seq(&c).unwrap(), log[1].seq);
        let d = device(&c, "d1").unwrap().unwrap();
        assert_eq!(
            d.secret_sha256,
            vec![2; 32],
            "a revoked device's digest is not rotated"
        );
        assert_eq!(d.revoked_at, Some(3));
    }
}
