//! The journal's write protocol: every write to requests goes to the engine's single writer
//! as a [`Command`], and the caller's reply (when it waits for one) comes only after the
//! commit. An engine implements this protocol — the SQLite writer (`sqlite/writer.rs`) today —
//! applying [`super::lifecycle`]'s decisions, and publishes every committed transition on the
//! change feed ([`super::changes`]).

use super::error::StoreError;
use super::followup::{self, Followup, NotifyContacts};
use super::model::*;
use std::sync::atomic::AtomicBool;
use std::sync::{Condvar, Mutex};
use tokio::sync::oneshot;

/// Where the writer sends its answer to one command.
pub type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// The result of an operator action or callback on a request.
#[derive(Debug, Clone)]
pub enum Transition {
    /// The state changed.
    Applied {
        /// Who is told, and what (the change feed's feedback subscriber tells them); `None`
        /// when the request names no device.
        notice: Option<Notice>,
        /// The state before.
        from: RequestState,
        /// The request's creation time, epoch ms.
        created_at: i64,
    },
    /// No such request.
    NotFound,
    /// The request is in a state that does not allow this.
    Conflict(RequestState),
    /// The caller is not the backend the request was dispatched to.
    Forbidden,
}

/// What an operator does to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorAction {
    /// Take an escalated request.
    Ack,
    /// Finish any open request.
    Close,
    /// Cancel any open request (e.g. after confirming by phone a resident's cancel press on
    /// a rescue already on its way); the backend that accepted it is told.
    Cancel,
}

/// An operator's action on a request, with who took it and why: both go into the request's
/// history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// What is done.
    pub action: OperatorAction,
    /// The operator's name (their API token's name).
    pub by: String,
    /// What the operator wrote about it, if anything (`requests close ID --note TEXT`).
    pub note: Option<String>,
}

/// A command for the writer.
pub enum Command {
    /// Journal a press: a new request, a duplicate, a cancel, or a press joining an open one.
    Press(PressEntry, Reply<PressOutcome>),
    /// Open a request that no press started (supervision, an operator at the desk).
    Open(NewRequest, Reply<Request>),
    /// A dispatch attempt ended (no reply: it rides the next batch).
    Attempt(AttemptRecord),
    /// The `received` feedback of a new request went out (a stage of its latency breakdown).
    ReceivedSent {
        request_id: String,
        journaled_at: Option<i64>,
        at: i64,
    },
    /// A backend accepted the request.
    Dispatched {
        request_id: String,
        backend: String,
        reference: Option<String>,
        eta_s: Option<u32>,
        at: i64,
        reply: Reply<bool>,
    },
    /// The request goes to the desk.
    Escalated {
        request_id: String,
        reason: &'static str,
        contacts: NotifyContacts,
        at: i64,
        reply: Reply<bool>,
    },
    /// A follow-up attempt was made (no reply).
    FollowupAttempt {
        key: String,
        target: String,
        attempt: u32,
        at: i64,
    },
    /// A follow-up is over.
    FollowupFinished {
        followup: Followup,
        ending: followup::Ending,
        at: i64,
        reply: Reply<()>,
    },
    /// An operator acts on a request.
    Operator {
        request_id: String,
        action: Operation,
        at: i64,
        reply: Reply<Transition>,
    },
    /// A backend reports progress.
    Callback {
        request_id: String,
        caller: Option<String>,
        state: RequestState,
        eta_s: Option<u32>,
        reference: Option<String>,
        at: i64,
        reply: Reply<Transition>,
    },
    /// A device's latest status (coalesced per batch; no reply).
    Status {
        device_id: String,
        online: bool,
        status_json: String,
        at: i64,
    },
    /// Answer once everything queued before it is committed.
    Flush(oneshot::Sender<()>),
}

/// Switches shared between the writer and the rest of the gateway.
#[derive(Debug, Default)]
pub struct WriterState {
    /// Last commit succeeded (drives `/readyz`).
    pub healthy: AtomicBool,
    /// Test hook: make every commit fail, as a full disk would.
    pub fail_commits: AtomicBool,
    /// Test hook: hold a press's commit open (see [`CommitHold`]).
    pub hold: CommitHold,
    /// Woken after a commit that queued a follow-up (a cancellation, a notification).
    pub followups: tokio::sync::Notify,
}

/// Test hook: while on, the writer stops each batch that holds a press after running its
/// statements and before its commit, the transaction open, until the hook is turned off.
/// Nothing of that batch is durable meanwhile, so nothing may be acted on: the device hears no
/// `received` (and, once the broker's PUBACK waits for the journal, gets no PUBACK either).
/// Batches without a press pass (a device's heartbeat must not take the hold first).
#[derive(Debug, Default)]
pub struct CommitHold {
    /// (on, presses in the batch waiting at the hold now).
    state: Mutex<(bool, usize)>,
    released: Condvar,
}

impl CommitHold {
    /// Turn the hold on or off; off lets a waiting batch commit.
    pub fn set(&self, on: bool) {
        self.state
            .lock()
            .expect("commit hold lock is never poisoned")
            .0 = on;
        self.released.notify_all();
    }

    /// How many presses the batch waiting at the hold carries (0: none is waiting).
    pub fn held(&self) -> usize {
        self.state
            .lock()
            .expect("commit hold lock is never poisoned")
            .1
    }

    /// The writer, before committing a batch of `presses` presses: wait while the hold is on.
    pub fn wait(&self, presses: usize) {
        if presses == 0 {
            return;
        }
        let mut s = self
            .state
            .lock()
            .expect("commit hold lock is never poisoned");
        if !s.0 {
            return;
        }
        s.1 = presses;
        while s.0 {
            s = self
                .released
                .wait(s)
                .expect("commit hold lock is never poisoned");
        }
        s.1 = 0;
    }
}
