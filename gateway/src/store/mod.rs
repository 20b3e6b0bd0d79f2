//! Stage 4 of the path — the journal: presses, requests and their history, the dispatch
//! outbox, devices. SQLite in WAL mode with `synchronous=FULL`, written by one thread with
//! group commit ([`writer`]), read through a small pool of read-only connections ([`read`]).
//!
//! Intake hands it a [`PressEntry`]; it answers with a [`PressOutcome`] only after the commit,
//! and the [`Request`] inside goes on to dispatch.

mod cancel;
pub mod credentials;
pub mod followup;
pub mod model;
pub mod read;
mod schema;
pub mod stages;
mod writer;

pub use cancel::FLAGGED_REASON;
pub use followup::{Followup, NotifyContacts};
pub use model::*;
pub use read::{EventView, ListFilter, PressView, RequestView};
pub use writer::{OperatorAction, Transition};

use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use writer::{Command, Writer, WriterState};

/// Journal errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("database: {0}")]
    Db(String),
    /// The journal cannot be written (disk full, read-only, injected failure).
    #[error("journal unavailable: {0}")]
    Unavailable(String),
    /// A row holds something this build does not understand.
    #[error("journal holds an unexpected value: {0}")]
    Corrupt(String),
    /// The writer thread is gone (shutting down).
    #[error("the journal writer has stopped")]
    Closed,
    /// Setting up the data directory failed.
    #[error("{0}")]
    Setup(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

/// Handle to the journal; cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Command>,
    reads: Arc<ReadPool>,
    state: Arc<WriterState>,
}

impl Store {
    /// Open (creating if needed) the journal at `path`, start the writer thread.
    pub fn open(path: &Path, max_batch: usize) -> Result<Store, StoreError> {
        let conn = open_rw(path)?;
        let state = Arc::new(WriterState::default());
        state.healthy.store(true, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(max_batch * 4);
        // Checkpoints run on their own thread (below), so a commit never waits for the WAL to
        // be copied into the database file; the writer checkpoints itself only as a safety
        // net if the WAL grows past ~32 MB.
        conn.pragma_update(None, "wal_autocheckpoint", 8000)?;
        let writer = Writer::new(conn, rx, max_batch, state.clone())?;
        let checkpoints = open_rw(path)?;
        let (writer_done, done) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("yijian-journal".into())
            .spawn(move || {
                writer.run();
                drop(writer_done);
            })
            .map_err(|e| StoreError::Setup(format!("cannot start the journal writer: {e}")))?;
        std::thread::Builder::new()
            .name("yijian-checkpoint".into())
            .spawn(move || checkpoint_until(checkpoints, done))
            .map_err(|e| {
                StoreError::Setup(format!("cannot start the journal checkpointer: {e}"))
            })?;
        Ok(Store {
            tx,
            reads: Arc::new(ReadPool::new(path.to_owned())),
            state,
        })
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queue a press for the journal and return a receiver that resolves after the commit.
    /// Splitting submit from wait lets intake keep reading while a batch commits.
    pub async fn submit_press(
        &self,
        entry: PressEntry,
    ) -> Result<oneshot::Receiver<Result<PressOutcome, StoreError>>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Press(entry, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(rx)
    }

    /// Journal a press and wait for the commit.
    pub async fn press(&self, entry: PressEntry) -> Result<PressOutcome, StoreError> {
        self.call(|reply| Command::Press(entry, reply)).await
    }

    /// Record a dispatch attempt (no wait: it rides the next batch).
    pub async fn attempt(&self, a: AttemptRecord) {
        let _ = self.tx.send(Command::Attempt(a)).await;
    }

    /// The `received` feedback of a new request went out at `at`; `journaled_at` is when its
    /// commit finished. Fire and forget: it rides the next batch, and when the journal's queue
    /// is full it is dropped rather than make intake wait (it is a measurement, not a fact the
    /// gateway acts on).
    pub fn received_sent(&self, request_id: &str, journaled_at: Option<i64>, at: i64) {
        let cmd = Command::ReceivedSent {
            request_id: request_id.to_owned(),
            journaled_at,
            at,
        };
        if self.tx.try_send(cmd).is_err() {
            tracing::debug!(
                request_id,
                "received stage not recorded: the journal queue is full"
            );
        }
    }

    /// A backend accepted the request. `None` when it was cancelled or closed meanwhile.
    pub async fn dispatched(
        &self,
        request_id: &str,
        backend: &str,
        reference: Option<String>,
        eta_s: Option<u32>,
        at: i64,
    ) -> Result<Option<Notice>, StoreError> {
        let (request_id, backend) = (request_id.to_owned(), backend.to_owned());
        self.call(|reply| Command::Dispatched {
            request_id,
            backend,
            reference,
            eta_s,
            at,
            reply,
        })
        .await
    }

    /// Hand the request to the desk, and queue its contacts' notifications as `contacts`
    /// says. `None` when it is no longer waiting for dispatch.
    pub async fn escalated(
        &self,
        request_id: &str,
        reason: &'static str,
        contacts: NotifyContacts,
        at: i64,
    ) -> Result<Option<Notice>, StoreError> {
        let request_id = request_id.to_owned();
        self.call(|reply| Command::Escalated {
            request_id,
            reason,
            contacts,
            at,
            reply,
        })
        .await
    }

    /// A follow-up attempt was made (no wait: it rides the next batch).
    pub async fn followup_attempt(&self, f: &Followup, attempt: u32, at: i64) {
        let (key, target) = (f.key.clone(), f.target.clone());
        let _ = self
            .tx
            .send(Command::FollowupAttempt {
                key,
                target,
                attempt,
                at,
            })
            .await;
    }

    /// A follow-up is over; its outcome goes into the request's history.
    pub async fn followup_finished(
        &self,
        f: Followup,
        ending: followup::Ending,
        at: i64,
    ) -> Result<(), StoreError> {
        self.call(|reply| Command::FollowupFinished {
            followup: f,
            ending,
            at,
            reply,
        })
        .await
    }

    /// Resolves after a commit that queued follow-ups (or at once if one happened since the
    /// last call): the follow-up deliverer's doorbell.
    pub async fn followups_queued(&self) {
        self.state.followups.notified().await
    }

    /// An operator acts on a request.
    pub async fn operator(
        &self,
        request_id: &str,
        action: OperatorAction,
        at: i64,
    ) -> Result<Transition, StoreError> {
        let request_id = request_id.to_owned();
        self.call(|reply| Command::Operator {
            request_id,
            action,
            at,
            reply,
        })
        .await
    }

    /// A backend reports progress. With `caller` set, the request must have been dispatched
    /// to that backend ([`Transition::Forbidden`] otherwise), checked in the same transaction.
    pub async fn callback(
        &self,
        request_id: &str,
        caller: Option<String>,
        state: RequestState,
        eta_s: Option<u32>,
        reference: Option<String>,
        at: i64,
    ) -> Result<Transition, StoreError> {
        let request_id = request_id.to_owned();
        self.call(|reply| Command::Callback {
            request_id,
            caller,
            state,
            eta_s,
            reference,
            at,
            reply,
        })
        .await
    }

    /// Remember a device's latest status (coalesced per batch; no wait).
    pub fn status(&self, device_id: &str, online: bool, status_json: String, at: i64) {
        let _ = self.tx.try_send(Command::Status {
            device_id: device_id.to_owned(),
            online,
            status_json,
            at,
        });
    }

    /// Wait until everything queued so far is committed (or failed).
    pub async fn flush(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Flush(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Whether the last commit succeeded.
    pub fn healthy(&self) -> bool {
        self.state.healthy.load(Ordering::Relaxed)
    }

    /// Test hook: make every commit fail (as a full disk would) until turned off.
    pub fn inject_commit_failure(&self, on: bool) {
        self.state.fail_commits.store(on, Ordering::Relaxed);
    }

    /// Run `f` on a read-only connection, off the async runtime.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reads = self.reads.clone();
        tokio::task::spawn_blocking(move || reads.with(f))
            .await
            .map_err(|e| StoreError::Db(format!("read task failed: {e}")))?
    }

    /// Run `f` on a read-only connection, on the calling thread (for short point lookups).
    pub fn read_now<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.reads.with(f)
    }
}

/// Bytes of heap SQLite holds now, over every connection of the process.
pub fn memory_used() -> i64 {
    // SAFETY: sqlite3_memory_used takes no arguments and only reads SQLite's own counter
    // (thread-safe in the bundled build's default serialized mode).
    unsafe { rusqlite::ffi::sqlite3_memory_used() }
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

/// Open a read-write connection with the journal's settings and current schema. The CLI uses
/// this too, beside a running gateway: WAL lets both work on the same file.
pub fn open_rw(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Setup(format!(
                    "cannot create data directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
    }
    let conn = Connection::open(path)
        .map_err(|e| StoreError::Setup(format!("cannot open journal {}: {e}", path.display())))?;
    schema::configure(&conn)?;
    schema::migrate(&conn)?;
    Ok(conn)
}

/// A few read-only connections, reused.
struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    fn new(path: PathBuf) -> Self {
        ReadPool {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn with<T>(
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
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(std::time::Duration::from_secs(5))?;
                c.set_prepared_statement_cache_capacity(32);
                c
            }
        };
        let r = f(&conn);
        let mut idle = self.idle.lock().expect("read pool lock is never poisoned");
        if idle.len() < 8 {
            idle.push(conn);
        }
        r
    }
}
