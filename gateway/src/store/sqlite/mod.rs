//! The SQLite engine of the journal: WAL with `synchronous=FULL`, written by one thread with
//! group commit ([`writer`]), read through a small pool of read-only connections, checkpointed
//! on a thread of its own. The only place in the gateway that names `rusqlite`.
//!
//! Files: [`schema`] (settings and migrations), [`writer`] (the loop), [`requests`] and
//! [`cancel`] (new requests), [`transitions`] (what happens to them after), [`history`] (the history rows and a batch's
//! effects), [`followup`], [`reads`], [`devices`], [`residents`], [`stages`].

mod cancel;
mod devices;
mod followup;
mod history;
mod reads;
mod requests;
mod residents;
mod schema;
mod stages;
mod transitions;
mod writer;

use crate::store::changes::{Change, Changes};
use crate::store::command::{Command, WriterState};
use crate::store::engine::Engine;
use crate::store::error::StoreError;
use crate::store::followup::Followup;
use crate::store::model::{Notice, Request};
use crate::store::records::{CredentialChange, CredentialEntry, DeviceRecord, NewDevice, Resident};
use crate::store::views::{ListFilter, RequestView};
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(Arc::new(e))
    }
}

/// One SQLite journal file.
pub struct Sqlite {
    path: PathBuf,
    /// Read-only connections, reused.
    idle: Mutex<Vec<Connection>>,
}

/// Open (creating if needed) the journal at `path` with its settings and current schema.
pub fn open(path: &Path) -> Result<Sqlite, StoreError> {
    drop(open_rw(path)?);
    Ok(Sqlite {
        path: path.to_owned(),
        idle: Mutex::new(Vec::new()),
    })
}

/// Start the writer and the checkpointer threads on the journal at `path`: the writer takes
/// commands from `rx` and publishes on `changes`.
pub fn start_writer(
    path: &Path,
    rx: mpsc::Receiver<Command>,
    max_batch: usize,
    state: Arc<WriterState>,
    changes: Changes,
) -> Result<(), StoreError> {
    let conn = writer_connection(path)?;
    let writer = writer::Writer::new(conn, rx, max_batch, state, changes)?;
    let checkpoints = checkpoint_connection(path)?;
    let (writer_done, done) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("yijian-journal".into())
        .spawn(move || {
            writer.run();
            drop(writer_done);
        })
        .map_err(|e| StoreError::setup("cannot start the journal writer", e))?;
    std::thread::Builder::new()
        .name("yijian-checkpoint".into())
        .spawn(move || checkpoint_until(checkpoints, done))
        .map_err(|e| StoreError::setup("cannot start the journal checkpointer", e))?;
    Ok(())
}

/// The writer's connection. Checkpoints run on their own thread ([`checkpoint_until`]), so a
/// commit never waits for the WAL to be copied into the database file; the writer checkpoints
/// itself only as a safety net if the WAL grows past ~32 MB.
fn writer_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = open_rw(path)?;
    conn.pragma_update(None, "wal_autocheckpoint", 8000)?;
    Ok(conn)
}

/// The checkpointer's connection.
fn checkpoint_connection(path: &Path) -> Result<Connection, StoreError> {
    open_rw(path)
}

/// A connection of the read pool: read-only, so it can never write around the writer.
fn read_connection(path: &Path) -> Result<Connection, StoreError> {
    let c = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    c.set_prepared_statement_cache_capacity(32);
    Ok(c)
}

/// Copy committed WAL frames into the database file every 250 ms (a PASSIVE checkpoint: it
/// never blocks the writer), until the writer stops. Before this ran on its own thread the
/// writer checkpointed every 1,000 pages inside a commit, and every press in that batch
/// waited for the copy and its fsync.
fn checkpoint_until(conn: Connection, writer_done: std::sync::mpsc::Receiver<()>) {
    use std::sync::mpsc::RecvTimeoutError;
    loop {
        let stop = matches!(
            writer_done.recv_timeout(std::time::Duration::from_millis(250)),
            Err(RecvTimeoutError::Disconnected)
        );
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "journal checkpoint failed; the WAL grows until one succeeds");
        }
        if stop {
            return;
        }
    }
}

/// A read-write connection with the journal's settings and current schema. The CLI's writes
/// (devices, residents, credentials) use one of their own, beside a running gateway: WAL lets
/// both work on the same file.
fn open_rw(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::setup(
                    format!("cannot create data directory {}: {e}", dir.display()),
                    e,
                )
            })?;
        }
    }
    let conn = Connection::open(path).map_err(|e| {
        // SQLite says only "unable to open database file"; the operating system says why
        // (most often "Permission denied": the data directory belongs to another user).
        // NOTE: asked only once SQLite has failed: closing a descriptor of the journal drops
        // every POSIX lock this process holds on it, those of the open connections included.
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
        {
            Err(io) => StoreError::setup(
                format!(
                    "cannot open journal {}: {io} (the data directory must be writable by the user running the gateway)",
                    path.display()
                ),
                io,
            ),
            Ok(_) => StoreError::setup(format!("cannot open journal {}: {e}", path.display()), e),
        }
    })?;
    schema::configure(&conn)?;
    schema::migrate(&conn)?;
    Ok(conn)
}

impl Sqlite {
    /// Run `f` on a pooled read-only connection.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self
            .idle
            .lock()
            .expect("read pool lock is never poisoned")
            .pop();
        let conn = match conn {
            Some(c) => c,
            None => read_connection(&self.path)?,
        };
        let r = f(&conn);
        let mut idle = self.idle.lock().expect("read pool lock is never poisoned");
        if idle.len() < 8 {
            idle.push(conn);
        }
        r
    }

    /// Run `f` on a fresh read-write connection (a registry write).
    fn write<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = open_rw(&self.path)?;
        f(&mut conn)
    }
}

impl Engine for Sqlite {
    fn requests(&self, filter: &ListFilter) -> Result<Vec<RequestView>, StoreError> {
        self.read(|c| reads::list_requests(c, filter))
    }
    fn request(&self, request_id: &str) -> Result<Option<RequestView>, StoreError> {
        self.read(|c| reads::get_request(c, request_id))
    }
    fn outbox(&self) -> Result<Vec<Request>, StoreError> {
        self.read(reads::outbox)
    }
    fn oldest_escalated(&self) -> Result<Option<i64>, StoreError> {
        self.read(reads::oldest_escalated)
    }
    fn recent_for_devices(
        &self,
        device_ids: &[String],
        created_since: i64,
        ended_since: i64,
        limit: u32,
    ) -> Result<Vec<Notice>, StoreError> {
        self.read(|c| {
            let mut all = Vec::new();
            for d in device_ids {
                all.extend(reads::current_notices(
                    c,
                    d,
                    created_since,
                    ended_since,
                    limit,
                )?);
            }
            Ok(all)
        })
    }
    fn changes_since(&self, seq: i64, limit: u32) -> Result<Vec<Change>, StoreError> {
        self.read(|c| reads::changes_since(c, seq, limit))
    }
    fn pending_followups(&self) -> Result<Vec<Followup>, StoreError> {
        self.read(followup::pending)
    }
    fn device(&self, device_id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        self.read(|c| devices::device(c, device_id))
    }
    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.read(devices::devices)
    }
    fn add_devices(&self, list: &[NewDevice], at: i64) -> Result<(), StoreError> {
        self.write(|c| devices::add_all(c, list, at))
    }
    fn revoke(&self, device_id: &str, at: i64) -> Result<CredentialChange, StoreError> {
        self.write(|c| devices::revoke(c, device_id, at))
    }
    fn rotate(
        &self,
        device_id: &str,
        secret_sha256: &[u8],
        at: i64,
    ) -> Result<CredentialChange, StoreError> {
        self.write(|c| devices::rotate(c, device_id, secret_sha256, at))
    }
    fn credential_changes(&self, since: i64) -> Result<Vec<CredentialEntry>, StoreError> {
        self.read(|c| devices::since(c, since))
    }
    fn last_credential_change(&self) -> Result<i64, StoreError> {
        self.read(devices::last_seq)
    }
    fn resident(&self, resident_id: &str) -> Result<Option<Resident>, StoreError> {
        self.read(|c| residents::load(c, resident_id))
    }
    fn resident_updated_at(&self, resident_id: &str) -> Result<Option<i64>, StoreError> {
        self.read(|c| residents::updated_at(c, resident_id))
    }
    fn residents(&self) -> Result<Vec<Resident>, StoreError> {
        self.read(residents::list)
    }
    fn residents_version(&self) -> Result<i64, StoreError> {
        self.read(residents::version)
    }
    fn upsert_residents(&self, list: &[Resident], at: i64) -> Result<(), StoreError> {
        self.write(|c| residents::upsert_all(c, list, at))
    }
    fn bind_device(
        &self,
        device_id: &str,
        resident_id: Option<&str>,
        at: i64,
    ) -> Result<(), StoreError> {
        self.write(|c| residents::bind_device(c, device_id, resident_id, at))
    }
    fn devices_of(&self, resident_id: &str) -> Result<Vec<String>, StoreError> {
        self.read(|c| residents::devices_of(c, resident_id))
    }
    fn memory_used(&self) -> i64 {
        // SAFETY: sqlite3_memory_used takes no arguments and only reads SQLite's own counter
        // (thread-safe in the bundled build's default serialized mode).
        unsafe { rusqlite::ffi::sqlite3_memory_used() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (journal_mode, synchronous) as SQLite reports them on `conn`.
    fn durability(conn: &Connection) -> (String, i64) {
        let mode = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("journal_mode");
        let sync = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .expect("synchronous");
        (mode, sync)
    }

    /// DESIGN §5: a commit is durable at its fsync. Every connection the engine opens on the
    /// journal — the writer's, the checkpointer's, the read pool's, and the one the CLI and
    /// the registry writes use — runs WAL with `synchronous=FULL` (2); `NORMAL` (1) would let
    /// a power cut take back commits already answered with `received`.
    #[test]
    fn every_journal_connection_runs_wal_with_synchronous_full() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("journal.db");
        let engine = open(&path).expect("open the journal");
        let full = ("wal".to_owned(), 2);
        for (who, conn) in [
            ("writer", writer_connection(&path)),
            ("checkpointer", checkpoint_connection(&path)),
            ("CLI and registry writes", open_rw(&path)),
            ("read pool", read_connection(&path)),
        ] {
            let conn = conn.unwrap_or_else(|e| panic!("{who}: {e}"));
            assert_eq!(durability(&conn), full, "the {who}'s connection");
        }
        // The pool hands out what `read_connection` opened, and registry writes go through
        // `open_rw`: checked on the engine's own calls.
        engine
            .read(|c| {
                assert_eq!(durability(c), full, "a pooled read connection");
                Ok(())
            })
            .expect("read");
        engine
            .write(|c| {
                assert_eq!(durability(c), full, "a registry write's connection");
                Ok(())
            })
            .expect("write");
    }
}
