//! Stage 4 of the path — the journal, as a port: presses, requests and their history, the
//! dispatch outbox, follow-ups, devices and residents. The rest of the gateway speaks to it
//! only through [`Store`]: typed reads, the [`Command`] write protocol, and the change feed.
//!
//! ```text
//!   intake ── Press ──▶ ┌───────── Store ─────────┐ ──▶ PressOutcome (after the commit)
//! dispatch ── Dispatched/Escalated/Attempt ──▶    │
//!      api ── Operator/Callback ──▶   writer ── commit ──▶ change feed ──▶ feedback, console
//!  CLI/API ── registry writes ──▶ engine (sqlite/)│
//!                                 └───────────────┘
//! ```
//!
//! Files: [`model`] and [`records`] (the owned types), [`views`] (what the API shows),
//! [`command`] (the write protocol), [`lifecycle`] (the request lifecycle, pure), [`changes`]
//! (the change feed), [`engine`] (what an engine implements), [`followup`] and [`stages`] (pure
//! parts of follow-ups and latency breakdowns), [`lock`] (one gateway per data directory),
//! [`sampler`] (the journal's gauges), `sqlite/` (the engine: the only place that names SQL).

pub mod changes;
pub mod command;
pub mod engine;
pub mod error;
pub mod followup;
pub mod lifecycle;
pub mod lock;
pub mod model;
pub mod records;
pub mod sampler;
pub mod stages;
pub mod views;

mod sqlite;

pub use changes::{Change, ChangeStream, Changes};
pub use command::{Operation, OperatorAction, Transition};
pub use engine::Engine;
pub use error::StoreError;
pub use followup::{Followup, NotifyContacts};
pub use model::*;
pub use records::*;
pub use views::{EventView, ListFilter, PressView, RequestView};

use command::{Command, WriterState};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// What the device hears when its cancel press was flagged instead of obeyed.
pub const FLAGGED_REASON: &str =
    "help is already on its way, so the request stays open: an operator will call you to confirm the cancellation";

/// Open the journal's engine at `path` for reads and registry writes only (the CLI, beside a
/// running gateway or not): no writer thread, no change feed.
pub fn open_engine(path: &Path) -> Result<Arc<dyn Engine>, StoreError> {
    Ok(Arc::new(sqlite::open(path)?))
}

/// Handle to the journal; cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Command>,
    engine: Arc<dyn Engine>,
    state: Arc<WriterState>,
    changes: Changes,
}

impl Store {
    /// Open (creating if needed) the journal at `path` and start its writer.
    pub fn open(path: &Path, max_batch: usize) -> Result<Store, StoreError> {
        let engine = sqlite::open(path)?;
        let state = Arc::new(WriterState::default());
        state.healthy.store(true, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(max_batch * 4);
        let changes = Changes::default();
        sqlite::start_writer(path, rx, max_batch, state.clone(), changes.clone())?;
        Ok(Store {
            tx,
            engine: Arc::new(engine),
            state,
            changes,
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

    /// Subscribe to the change feed: every request transition committed from now on, in order
    /// (`name` labels the lag metric).
    pub fn changes(&self, name: &'static str) -> ChangeStream {
        ChangeStream::new(self.engine.clone(), &self.changes, name)
    }

    // --- writes (the Command protocol) ---

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

    /// Open a request that no press started (supervision, an operator) and wait for the
    /// commit; it is then in the outbox, to be handed to dispatch.
    pub async fn open_request(&self, request: NewRequest) -> Result<Request, StoreError> {
        self.call(|reply| Command::Open(request, reply)).await
    }

    /// Record a dispatch attempt (no wait: it rides the next batch).
    pub async fn attempt(&self, a: AttemptRecord) {
        let _ = self.tx.send(Command::Attempt(a)).await;
    }

    /// The `received` feedback of a new request went out at `at`; `journaled_at` is when its
    /// commit finished. Fire and forget: it rides the next batch, and when the journal's queue
    /// is full it is dropped rather than make anyone wait (it is a measurement, not a fact the
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

    /// A backend accepted the request. `false` when it was cancelled or closed meanwhile.
    pub async fn dispatched(
        &self,
        request_id: &str,
        backend: &str,
        reference: Option<String>,
        eta_s: Option<u32>,
        at: i64,
    ) -> Result<bool, StoreError> {
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
    /// says. `false` when it is no longer waiting for dispatch.
    pub async fn escalated(
        &self,
        request_id: &str,
        reason: &'static str,
        contacts: NotifyContacts,
        at: i64,
    ) -> Result<bool, StoreError> {
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

    /// An operator acts on a request; the history names them (and their note).
    pub async fn operator(
        &self,
        request_id: &str,
        action: Operation,
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
    #[allow(clippy::too_many_arguments)]
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

    /// Test hook: hold every batch that carries a press open just before its commit while
    /// `on` ([`command::CommitHold`]); turning it off lets the batch commit.
    pub fn hold_commits(&self, on: bool) {
        self.state.hold.set(on);
    }

    /// Test hook: how many presses the batch held by [`Store::hold_commits`] carries (0 while
    /// none is held).
    pub fn held_presses(&self) -> usize {
        self.state.hold.held()
    }

    // --- reads ---

    /// The engine, for reads and registry writes done in place (short point lookups on the
    /// calling thread; the async methods below run the rest off the runtime).
    pub fn engine(&self) -> &dyn Engine {
        self.engine.as_ref()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Engine) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || f(engine.as_ref()))
            .await
            .map_err(|e| StoreError::Db(Arc::new(e)))?
    }

    /// Requests matching `filter`, newest first.
    pub async fn requests(&self, filter: ListFilter) -> Result<Vec<RequestView>, StoreError> {
        self.blocking(move |e| e.requests(&filter)).await
    }

    /// One request with its history.
    pub async fn request(&self, request_id: &str) -> Result<Option<RequestView>, StoreError> {
        let id = request_id.to_owned();
        self.blocking(move |e| e.request(&id)).await
    }

    /// Every request still owed a dispatch, oldest first.
    pub async fn outbox(&self) -> Result<Vec<Request>, StoreError> {
        self.blocking(|e| e.outbox()).await
    }

    /// Creation time of the oldest request waiting at the desk, epoch ms.
    pub async fn oldest_escalated(&self) -> Result<Option<i64>, StoreError> {
        self.blocking(|e| e.oldest_escalated()).await
    }

    /// Where each device's recent requests stand (see [`Engine::recent_for_devices`]).
    pub async fn recent_for_devices(
        &self,
        device_ids: Vec<String>,
        created_since: i64,
        ended_since: i64,
        limit: u32,
    ) -> Result<Vec<Notice>, StoreError> {
        self.blocking(move |e| e.recent_for_devices(&device_ids, created_since, ended_since, limit))
            .await
    }

    /// The change feed's transitions after `seq` (a lagging subscriber's catch-up).
    pub async fn changes_since(&self, seq: i64, limit: u32) -> Result<Vec<Change>, StoreError> {
        self.blocking(move |e| e.changes_since(seq, limit)).await
    }

    /// Every follow-up still pending, oldest first.
    pub async fn pending_followups(&self) -> Result<Vec<Followup>, StoreError> {
        self.blocking(|e| e.pending_followups()).await
    }

    /// Every device, by id.
    pub async fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.blocking(|e| e.devices()).await
    }

    /// One resident.
    pub async fn resident(&self, resident_id: &str) -> Result<Option<Resident>, StoreError> {
        let id = resident_id.to_owned();
        self.blocking(move |e| e.resident(&id)).await
    }

    /// The residents' change stamp.
    pub async fn residents_version(&self) -> Result<i64, StoreError> {
        self.blocking(|e| e.residents_version()).await
    }

    /// Credential changes after `seq`, oldest first.
    pub async fn credential_changes(&self, since: i64) -> Result<Vec<CredentialEntry>, StoreError> {
        self.blocking(move |e| e.credential_changes(since)).await
    }

    /// The credential log's newest position.
    pub async fn last_credential_change(&self) -> Result<i64, StoreError> {
        self.blocking(|e| e.last_credential_change()).await
    }
}
