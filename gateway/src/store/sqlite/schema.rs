//! The journal's schema and connection settings.
//!
//! NOTE: times are epoch milliseconds (INTEGER); states and services are their wire spellings.

use rusqlite::Connection;
use std::time::Duration;

/// Schema version this build writes (`PRAGMA user_version`).
pub(super) const VERSION: i64 = 4;

const V1: &str = r#"
CREATE TABLE IF NOT EXISTS devices (
    device_id      TEXT PRIMARY KEY,
    secret_sha256  BLOB NOT NULL,
    profile        TEXT NOT NULL,
    resident_id    TEXT,
    created_at     INTEGER NOT NULL,
    revoked_at     INTEGER,
    last_status    TEXT,
    last_seen_at   INTEGER,
    online         INTEGER
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS residents (
    resident_id    TEXT PRIMARY KEY,
    data           TEXT NOT NULL,
    updated_at     INTEGER NOT NULL
) WITHOUT ROWID;

-- One row per (device, press id): the dedupe key of "nothing doubled".
CREATE TABLE IF NOT EXISTS presses (
    device_id      TEXT NOT NULL,
    press_id       TEXT NOT NULL,
    button         TEXT NOT NULL,
    gesture        TEXT NOT NULL,
    at_ms          INTEGER NOT NULL,
    battery        INTEGER,
    intake_at      INTEGER NOT NULL,
    rule           TEXT NOT NULL,
    outcome        TEXT NOT NULL,
    request_id     TEXT,
    PRIMARY KEY (device_id, press_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS requests (
    request_id     TEXT PRIMARY KEY,
    device_id      TEXT NOT NULL,
    press_id       TEXT NOT NULL,
    service        TEXT NOT NULL,
    priority       TEXT NOT NULL,
    tags           TEXT NOT NULL DEFAULT '[]',
    state          TEXT NOT NULL,
    rule           TEXT NOT NULL,
    resident_id    TEXT,
    backend        TEXT,
    backend_ref    TEXT,
    eta_s          INTEGER,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    dispatched_at  INTEGER,
    escalated_at   INTEGER,
    acked_at       INTEGER,
    closed_at      INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS requests_by_created ON requests (created_at);
CREATE INDEX IF NOT EXISTS requests_by_state ON requests (state, created_at);
CREATE INDEX IF NOT EXISTS requests_by_device ON requests (device_id, created_at);

-- The request's history: every state change, dispatch attempt and callback.
CREATE TABLE IF NOT EXISTS request_events (
    seq            INTEGER PRIMARY KEY,
    request_id     TEXT NOT NULL,
    at             INTEGER NOT NULL,
    kind           TEXT NOT NULL,
    state          TEXT,
    detail         TEXT
);
CREATE INDEX IF NOT EXISTS events_by_request ON request_events (request_id, seq);

-- Requests still owed a dispatch. Replayed at start; the Idempotency-Key makes a replay harmless.
CREATE TABLE IF NOT EXISTS outbox (
    request_id     TEXT PRIMARY KEY,
    attempts       INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// Version 2: residents' data drives routing and the backend body; cancellations and contact
/// notifications get their own outbox; a rescue request already on its way can be flagged.
const V2: &str = r#"
-- Every import (and device binding) raises updated_at past the previous maximum, so the
-- gateway notices a change with one indexed max() instead of re-reading every resident.
CREATE INDEX IF NOT EXISTS residents_by_updated ON residents (updated_at);

-- The resident asked to cancel a request that help is already on its way for: an operator
-- confirms by phone. Stays set as a record once the request ends.
ALTER TABLE requests ADD COLUMN cancel_requested_at INTEGER;

-- Follow-ups owed to HTTP endpoints: a backend's cancellation (kind 'cancel') and a contact's
-- notification (kind 'notify'). Written in the same transaction as the state change that
-- needs them, delivered and retried by dispatch, picked up again after a restart.
-- `idempotency_key` is what the endpoint sees; state: pending | done | failed.
CREATE TABLE IF NOT EXISTS followups (
    idempotency_key TEXT NOT NULL,
    target          TEXT NOT NULL,
    request_id      TEXT NOT NULL,
    kind            TEXT NOT NULL,
    body            TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (idempotency_key, target)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS followups_by_state ON followups (state, created_at);
"#;

/// Version 3: credential changes (revocations, rotations) made by the CLI or the admin API in
/// whatever process; the running gateway polls this log to drop connections that lost their
/// right to be connected (`broker::evict`). Rows are never deleted: `seq` only grows.
const V3: &str = r#"
CREATE TABLE IF NOT EXISTS device_changes (
    seq            INTEGER PRIMARY KEY,
    device_id      TEXT NOT NULL,
    change         TEXT NOT NULL,
    at             INTEGER NOT NULL
);
"#;

/// Version 4: a request need not come from a press. `device_id` and `press_id` become nullable
/// (a request about a resident alone; supervision and operators start requests without a
/// press) and `origin` holds the origin of every request no press started (NULL: a press).
/// SQLite cannot drop NOT NULL in place, so the table is rebuilt with its rows and indexes.
const V4: &str = r#"
CREATE TABLE requests_v4 (
    request_id     TEXT PRIMARY KEY,
    device_id      TEXT,
    press_id       TEXT,
    service        TEXT NOT NULL,
    priority       TEXT NOT NULL,
    tags           TEXT NOT NULL DEFAULT '[]',
    state          TEXT NOT NULL,
    rule           TEXT NOT NULL,
    resident_id    TEXT,
    backend        TEXT,
    backend_ref    TEXT,
    eta_s          INTEGER,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    dispatched_at  INTEGER,
    escalated_at   INTEGER,
    acked_at       INTEGER,
    closed_at      INTEGER,
    cancel_requested_at INTEGER,
    origin         TEXT
) WITHOUT ROWID;
INSERT INTO requests_v4 (request_id, device_id, press_id, service, priority, tags, state, rule,
    resident_id, backend, backend_ref, eta_s, created_at, updated_at, dispatched_at, escalated_at,
    acked_at, closed_at, cancel_requested_at)
SELECT request_id, device_id, press_id, service, priority, tags, state, rule,
    resident_id, backend, backend_ref, eta_s, created_at, updated_at, dispatched_at, escalated_at,
    acked_at, closed_at, cancel_requested_at FROM requests;
DROP TABLE requests;
ALTER TABLE requests_v4 RENAME TO requests;
CREATE INDEX requests_by_created ON requests (created_at);
CREATE INDEX requests_by_state ON requests (state, created_at);
CREATE INDEX requests_by_device ON requests (device_id, created_at);
"#;

/// Settings every connection gets.
pub(super) fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(64);
    // WAL survives restarts (it is persistent in the file), synchronous=FULL makes every commit
    // durable at fsync, as DESIGN §5 asks.
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, WAL is required"
        )));
    }
    // A 16 MiB page cache (the default is 2 MiB): the writer's index pages stay in memory.
    conn.execute_batch(
        "PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF; PRAGMA temp_store=MEMORY; PRAGMA cache_size=-16384;",
    )?;
    Ok(())
}

fn upgrade(conn: &Connection, to: i64, sql: &str) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let now: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if now < to {
        if let Err(e) = conn.execute_batch(&format!("{sql} PRAGMA user_version = {to};")) {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    conn.execute_batch("COMMIT")
}

/// Create or upgrade the schema.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "the journal was written by a newer gateway (schema {version}, this build knows {VERSION})"
        )));
    }
    if version < 1 {
        conn.execute_batch(&format!("BEGIN; {V1} PRAGMA user_version = 1; COMMIT;"))?;
    }
    // BEGIN IMMEDIATE: the CLI and a gateway may open an old journal at the same moment; the
    // loser waits, then sees the new version and does nothing.
    for (v, sql) in [(2, V2), (3, V3), (4, V4)] {
        if version < v {
            upgrade(conn, v, sql)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_4_keeps_every_request_and_lets_one_have_no_press() {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = Connection::open(dir.path().join("j.db")).expect("open");
        configure(&conn).expect("settings");
        // A journal as version 3 left it, with a request in it.
        conn.execute_batch(&format!(
            "BEGIN; {V1} {V2} {V3} PRAGMA user_version = 3; COMMIT;"
        ))
        .expect("version 3");
        conn.execute_batch(
            "INSERT INTO requests (request_id, device_id, press_id, service, priority, state, rule, created_at, updated_at, cancel_requested_at)
             VALUES ('rq_1', 'd-1', 'p-1', 'rescue', 'emergency', 'escalated', 'r', 10, 20, 15);",
        )
        .expect("a version 3 request");
        migrate(&conn).expect("upgrade");
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, VERSION);
        let row: (String, String, String, i64, Option<String>) = conn
            .query_row(
                "SELECT device_id, press_id, state, cancel_requested_at, origin FROM requests WHERE request_id = 'rq_1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .expect("the request survived");
        assert_eq!(
            row,
            ("d-1".into(), "p-1".into(), "escalated".into(), 15, None)
        );
        conn.execute(
            "INSERT INTO requests (request_id, service, priority, state, rule, created_at, updated_at, origin)
             VALUES ('rq_2', 'welfare_check', 'urgent', 'received', 'supervision', 30, 30, '{\"kind\":\"supervision\",\"reason\":\"offline\"}')",
            [],
        )
        .expect("a request without device or press");
        let indexes: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'requests' AND name LIKE 'requests_by_%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 3, "the indexes are rebuilt");
        // Opening it again changes nothing.
        migrate(&conn).expect("idempotent");
    }
}
