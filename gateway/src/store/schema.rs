//! The journal's schema and connection settings.
//!
//! NOTE: times are epoch milliseconds (INTEGER); states and services are their wire spellings.

use rusqlite::Connection;
use std::time::Duration;

/// Schema version this build writes (`PRAGMA user_version`).
pub const VERSION: i64 = 3;

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

/// Settings every connection gets.
pub fn configure(conn: &Connection) -> rusqlite::Result<()> {
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

/// Create or upgrade the schema.
pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "the journal was written by a newer gateway (schema {version}, this build knows {VERSION})"
        )));
    }
    if version < 1 {
        conn.execute_batch(&format!("BEGIN; {V1} PRAGMA user_version = 1; COMMIT;"))?;
    }
    if version < 2 {
        // BEGIN IMMEDIATE: the CLI and a gateway may open an old journal at the same moment;
        // the loser waits, then sees version 2 and does nothing.
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let now: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if now < 2 {
            if let Err(e) = conn.execute_batch(&format!("{V2} PRAGMA user_version = 2;")) {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
        conn.execute_batch("COMMIT")?;
    }
    if version < 3 {
        // As for version 2: whoever opens an old journal first upgrades it, the other waits.
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let now: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if now < 3 {
            if let Err(e) = conn.execute_batch(&format!("{V3} PRAGMA user_version = 3;")) {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
        conn.execute_batch("COMMIT")?;
    }
    Ok(())
}
