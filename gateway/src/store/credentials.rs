//! Device credential changes: revoke and rotate, each logged in `device_changes` in the same
//! transaction, so a running gateway in another process learns of it (`broker::evict` polls
//! the log) and drops the device's live connection.
//!
//! NOTE: these run on a read-write connection of their own (the CLI's, or the admin API's), as
//! `read::add_device` does; SQLite's WAL and busy timeout let them share the file with the
//! journal's writer. Their transactions are IMMEDIATE: a deferred one that reads and then
//! writes fails at once with "database is locked" when the writer committed in between (the
//! busy timeout does not cover that upgrade).

use super::StoreError;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// What a credential change is.
pub const REVOKED: &str = "revoked";
/// See [`REVOKED`].
pub const ROTATED: &str = "rotated";

/// How a revoke or rotate went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Done and logged.
    Done,
    /// No such device.
    NotFound,
    /// The device is revoked: nothing more can be done to it.
    Revoked,
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEntry {
    /// Position in the log.
    pub seq: i64,
    /// The device.
    pub device_id: String,
    /// [`REVOKED`] or [`ROTATED`].
    pub change: String,
}

fn revoked_state(c: &Connection, device_id: &str) -> Result<Option<bool>, StoreError> {
    Ok(
        c.prepare_cached("SELECT revoked_at IS NOT NULL FROM devices WHERE device_id = ?1")?
            .query_row(params![device_id], |r| r.get::<_, bool>(0))
            .optional()?,
    )
}

/// Revoke a device: it may never connect again, and a running gateway drops its connection.
pub fn revoke(c: &mut Connection, device_id: &str, at: i64) -> Result<Change, StoreError> {
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
pub fn rotate(
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
pub fn last_seq(c: &Connection) -> Result<i64, StoreError> {
    Ok(c.query_row(
        "SELECT coalesce(max(seq), 0) FROM device_changes",
        [],
        |r| r.get(0),
    )?)
}

/// Entries after `seq`, oldest first.
pub fn since(c: &Connection, seq: i64) -> Result<Vec<ChangeEntry>, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_and_rotate_are_logged_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = super::super::open_rw(&dir.path().join("j.db")).unwrap();
        super::super::read::add_device(&c, "d1", &[1; 32], "one-button", None, 1).unwrap();
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
        let d = super::super::read::device(&c, "d1").unwrap().unwrap();
        assert_eq!(
            d.secret_sha256,
            vec![2; 32],
            "a revoked device's digest is not rotated"
        );
        assert_eq!(d.revoked_at, Some(3));
    }
}
