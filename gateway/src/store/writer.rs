//! The journal's single writer: one OS thread, one SQLite connection, group commit.
//!
//! Commands queue on a bounded channel. The writer takes the first, drains whatever else is
//! already waiting (up to `max_batch`), runs each inside its own savepoint of one transaction,
//! commits once (one fsync for the whole burst) and only then answers every caller. A caller
//! therefore never acts on something that is not durable: intake sends `received` only after
//! its reply arrives.

use super::followup::{self, Followup, NotifyContacts};
use super::model::*;
use super::StoreError;
use crate::clock::now_ms;
use crate::telemetry;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use yijian_wire::{FeedbackState, Service};

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// The result of an operator action or callback on a request.
#[derive(Debug, Clone)]
pub enum Transition {
    /// The state changed.
    Applied {
        /// Who to tell, and what.
        notice: Notice,
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

/// A command for the writer.
pub(crate) enum Command {
    Press(PressEntry, Reply<PressOutcome>),
    Attempt(AttemptRecord),
    /// The `received` feedback of a new request went out (a stage of its latency breakdown).
    ReceivedSent {
        request_id: String,
        journaled_at: Option<i64>,
        at: i64,
    },
    Dispatched {
        request_id: String,
        backend: String,
        reference: Option<String>,
        eta_s: Option<u32>,
        at: i64,
        reply: Reply<Option<Notice>>,
    },
    Escalated {
        request_id: String,
        reason: &'static str,
        contacts: NotifyContacts,
        at: i64,
        reply: Reply<Option<Notice>>,
    },
    FollowupAttempt {
        key: String,
        target: String,
        attempt: u32,
        at: i64,
    },
    FollowupFinished {
        followup: Followup,
        ending: followup::Ending,
        at: i64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Operator {
        request_id: String,
        action: OperatorAction,
        at: i64,
        reply: Reply<Transition>,
    },
    Callback {
        request_id: String,
        caller: Option<String>,
        state: RequestState,
        eta_s: Option<u32>,
        reference: Option<String>,
        at: i64,
        reply: Reply<Transition>,
    },
    Status {
        device_id: String,
        online: bool,
        status_json: String,
        at: i64,
    },
    Flush(oneshot::Sender<()>),
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

/// Shared switches between the writer and the rest of the gateway.
#[derive(Debug, Default)]
pub(crate) struct WriterState {
    /// Last commit succeeded (drives `/readyz`).
    pub healthy: AtomicBool,
    /// Test hook: make every commit fail, as a full disk would.
    pub fail_commits: AtomicBool,
    /// Woken after a commit that queued a follow-up (a cancellation, a notification).
    pub followups: tokio::sync::Notify,
}

enum Staged {
    Press(Reply<PressOutcome>, Result<PressOutcome, StoreError>),
    Notice(Reply<Option<Notice>>, Result<Option<Notice>, StoreError>),
    Transition(Reply<Transition>, Result<Transition, StoreError>),
    Done(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
    Flush(oneshot::Sender<()>),
}

impl Staged {
    fn fail(self, e: &StoreError) {
        match self {
            Staged::Press(r, _) => drop(r.send(Err(e.clone()))),
            Staged::Notice(r, _) => drop(r.send(Err(e.clone()))),
            Staged::Transition(r, _) => drop(r.send(Err(e.clone()))),
            Staged::Done(r, _) => drop(r.send(Err(e.clone()))),
            Staged::Flush(r) => drop(r.send(())),
        }
    }

    /// Answer the caller; a new request learns when its commit finished.
    fn deliver(self, committed_at: i64) {
        match self {
            Staged::Press(r, mut v) => {
                if let Ok(PressOutcome::Created(req)) = &mut v {
                    req.journaled_at = Some(committed_at);
                }
                drop(r.send(v))
            }
            Staged::Notice(r, v) => drop(r.send(v)),
            Staged::Transition(r, v) => drop(r.send(v)),
            Staged::Done(r, v) => drop(r.send(v)),
            Staged::Flush(r) => drop(r.send(())),
        }
    }
}

/// Open requests per (service, state), kept exact by applying each committed transition.
type OpenCounts = HashMap<(String, RequestState), i64>;

pub(crate) struct Writer {
    conn: Connection,
    rx: mpsc::Receiver<Command>,
    max_batch: usize,
    state: Arc<WriterState>,
    open: OpenCounts,
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        rx: mpsc::Receiver<Command>,
        max_batch: usize,
        state: Arc<WriterState>,
    ) -> Result<Writer, StoreError> {
        let mut open = OpenCounts::new();
        {
            let mut stmt = conn.prepare(
                "SELECT service, state, count(*) FROM requests WHERE state NOT IN ('closed','cancelled') GROUP BY service, state",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (service, state, n) = row?;
                if let Ok(state) = state.parse() {
                    open.insert((service, state), n);
                }
            }
        }
        for ((service, state), n) in &open {
            telemetry::requests_open(service, state.as_str(), *n);
        }
        Ok(Writer {
            conn,
            rx,
            max_batch,
            state,
            open,
        })
    }

    /// Run until every sender is gone.
    pub(crate) fn run(mut self) {
        let mut batch: Vec<Command> = Vec::with_capacity(self.max_batch);
        while let Some(first) = self.rx.blocking_recv() {
            batch.push(first);
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch);
        }
        tracing::debug!("journal writer stopped");
    }

    fn commit_batch(&mut self, batch: &mut Vec<Command>) {
        let started = Instant::now();
        let n = batch.len();
        let mut staged = Vec::with_capacity(n);
        let mut deltas: Vec<(Service, Option<RequestState>, Option<RequestState>)> = Vec::new();
        let mut statuses: HashMap<String, (bool, String, i64)> = HashMap::new();
        let fail = self.state.fail_commits.load(Ordering::Relaxed);

        let result = (|| -> Result<(), StoreError> {
            let tx = self.conn.transaction()?;
            for cmd in batch.drain(..) {
                match cmd {
                    Command::Press(entry, reply) => {
                        let r = in_savepoint(&tx, |tx| press(tx, &entry, &mut deltas));
                        staged.push(Staged::Press(reply, r));
                    }
                    Command::Attempt(a) => {
                        if let Err(e) = in_savepoint(&tx, |tx| attempt(tx, &a)) {
                            telemetry::store_error("attempt", &e);
                        }
                    }
                    Command::ReceivedSent {
                        request_id,
                        journaled_at,
                        at,
                    } => {
                        // One statement: atomic on its own, no savepoint needed.
                        let detail = json!({"journaled_at": journaled_at});
                        if let Err(e) = event(&tx, &request_id, at, "received", None, Some(detail))
                        {
                            telemetry::store_error("received", &e);
                        }
                    }
                    Command::Dispatched {
                        request_id,
                        backend,
                        reference,
                        eta_s,
                        at,
                        reply,
                    } => {
                        let r = in_savepoint(&tx, |tx| {
                            dispatched(
                                tx,
                                &request_id,
                                &backend,
                                reference.as_deref(),
                                eta_s,
                                at,
                                &mut deltas,
                            )
                        });
                        staged.push(Staged::Notice(reply, r));
                    }
                    Command::Escalated {
                        request_id,
                        reason,
                        contacts,
                        at,
                        reply,
                    } => {
                        let r = in_savepoint(&tx, |tx| {
                            escalated(tx, &request_id, reason, &contacts, at, &mut deltas)
                        });
                        staged.push(Staged::Notice(reply, r));
                    }
                    Command::FollowupAttempt {
                        key,
                        target,
                        attempt,
                        at,
                    } => {
                        if let Err(e) = in_savepoint(&tx, |tx| {
                            followup::attempted(tx, &key, &target, attempt, at)
                        }) {
                            telemetry::store_error("followup_attempt", &e);
                        }
                    }
                    Command::FollowupFinished {
                        followup: f,
                        ending,
                        at,
                        reply,
                    } => {
                        let r = in_savepoint(&tx, |tx| followup::finished(tx, &f, ending, at));
                        staged.push(Staged::Done(reply, r));
                    }
                    Command::Operator {
                        request_id,
                        action,
                        at,
                        reply,
                    } => {
                        let r = in_savepoint(&tx, |tx| {
                            operator(tx, &request_id, action, at, &mut deltas)
                        });
                        staged.push(Staged::Transition(reply, r));
                    }
                    Command::Callback {
                        request_id,
                        caller,
                        state,
                        eta_s,
                        reference,
                        at,
                        reply,
                    } => {
                        let r = in_savepoint(&tx, |tx| {
                            callback(
                                tx,
                                &request_id,
                                caller.as_deref(),
                                state,
                                eta_s,
                                reference.as_deref(),
                                at,
                                &mut deltas,
                            )
                        });
                        staged.push(Staged::Transition(reply, r));
                    }
                    Command::Status {
                        device_id,
                        online,
                        status_json,
                        at,
                    } => {
                        statuses.insert(device_id, (online, status_json, at));
                    }
                    Command::Flush(reply) => staged.push(Staged::Flush(reply)),
                }
            }
            for (device_id, (online, json, at)) in &statuses {
                tx.prepare_cached(
                    "UPDATE devices SET last_status = ?2, last_seen_at = ?3, online = ?4 WHERE device_id = ?1",
                )?
                .execute(params![device_id, json, at, *online as i64])?;
            }
            if fail {
                return Err(StoreError::Unavailable("injected journal failure".into()));
            }
            tx.commit()?;
            Ok(())
        })();

        match result {
            Ok(()) => {
                self.state.healthy.store(true, Ordering::Relaxed);
                let committed_at = now_ms();
                telemetry::store_commit(started.elapsed(), n);
                self.apply(deltas);
                if followup::take_queued() {
                    self.state.followups.notify_one();
                }
                for s in staged {
                    s.deliver(committed_at);
                }
            }
            Err(e) => {
                let e = match e {
                    StoreError::Unavailable(m) => StoreError::Unavailable(m),
                    other => StoreError::Unavailable(other.to_string()),
                };
                self.state.healthy.store(false, Ordering::Relaxed);
                // Nothing of this batch is in the journal, follow-ups included.
                followup::take_queued();
                telemetry::store_error("commit", &e);
                for s in staged {
                    s.fail(&e);
                }
            }
        }
    }

    fn apply(&mut self, deltas: Vec<(Service, Option<RequestState>, Option<RequestState>)>) {
        let mut touched = Vec::new();
        for (service, from, to) in deltas {
            for (state, d) in [(from, -1), (to, 1)] {
                if let Some(state) = state.filter(|s| s.is_open()) {
                    let key = (service.as_str().to_owned(), state);
                    *self.open.entry(key.clone()).or_insert(0) += d;
                    touched.push(key);
                }
            }
        }
        touched.sort_by(|a, b| (a.0.as_str(), a.1.as_str()).cmp(&(b.0.as_str(), b.1.as_str())));
        touched.dedup();
        for key in touched {
            let n = self.open.get(&key).copied().unwrap_or(0);
            telemetry::requests_open(&key.0, key.1.as_str(), n);
        }
    }
}

fn in_savepoint<T>(
    tx: &Transaction<'_>,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    // A savepoint per command: one command's failure (a bug, a constraint) must not undo the
    // others in the batch.
    // Prepared once and cached: parsing these on every command showed in profiles.
    tx.prepare_cached("SAVEPOINT cmd")?.execute([])?;
    match f(tx) {
        Ok(v) => {
            tx.prepare_cached("RELEASE cmd")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            tx.prepare_cached("ROLLBACK TO cmd")?.execute([])?;
            tx.prepare_cached("RELEASE cmd")?.execute([])?;
            Err(e)
        }
    }
}

fn new_request_id() -> String {
    format!("rq_{}", ulid::Ulid::new())
}

pub(super) fn event(
    c: &Connection,
    request_id: &str,
    at: i64,
    kind: &str,
    state: Option<RequestState>,
    detail: Option<serde_json::Value>,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO request_events (request_id, at, kind, state, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![request_id, at, kind, state.map(|s| s.as_str()), detail.map(|d| d.to_string())])?;
    Ok(())
}

fn press(
    c: &Connection,
    e: &PressEntry,
    deltas: &mut Vec<(Service, Option<RequestState>, Option<RequestState>)>,
) -> Result<PressOutcome, StoreError> {
    let p = &e.press;
    let open = match &e.action {
        PressAction::Request { service, .. } => open_request(c, e, *service)?,
        PressAction::Cancel { .. } => None,
    };
    let (outcome, request_id) = match (&e.action, &open) {
        (PressAction::Request { .. }, Some(rid)) => ("pressed_again", Some(rid.clone())),
        (PressAction::Request { .. }, None) => ("request", Some(new_request_id())),
        (PressAction::Cancel { .. }, _) => ("cancel", None),
    };
    let inserted = c
        .prepare_cached(
            "INSERT INTO presses (device_id, press_id, button, gesture, at_ms, battery, intake_at, rule, outcome, request_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            e.device_id,
            p.id,
            p.button,
            p.gesture.as_str(),
            p.at,
            p.battery,
            e.intake_at,
            e.rule,
            outcome,
            request_id
        ])?;
    if inserted == 0 {
        return duplicate(c, &e.device_id, &p.id).map(PressOutcome::Duplicate);
    }
    if let Some(rid) = open {
        return pressed_again(c, e, &rid);
    }
    match &e.action {
        PressAction::Request {
            service,
            priority,
            tags,
        } => {
            let request_id = request_id.expect("a request press has an id");
            c.prepare_cached(
                "INSERT INTO requests (request_id, device_id, press_id, service, priority, tags, state, rule, resident_id, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'received', ?7, ?8, ?9, ?9)",
            )?
            .execute(params![
                request_id,
                e.device_id,
                p.id,
                service.as_str(),
                priority.as_str(),
                serde_json::to_string(tags).expect("strings serialize"),
                e.rule,
                e.resident_id,
                e.intake_at
            ])?;
            event(
                c,
                &request_id,
                e.intake_at,
                "created",
                Some(RequestState::Received),
                Some(
                    json!({"rule": e.rule, "press_at": p.at, "button": p.button, "gesture": p.gesture}),
                ),
            )?;
            c.prepare_cached(
                "INSERT INTO outbox (request_id, attempts, created_at) VALUES (?1, 0, ?2)",
            )?
            .execute(params![request_id, e.intake_at])?;
            deltas.push((*service, None, Some(RequestState::Received)));
            Ok(PressOutcome::Created(Request {
                id: request_id,
                service: *service,
                priority: *priority,
                tags: tags.clone(),
                device_id: e.device_id.clone(),
                press: p.clone(),
                resident_id: e.resident_id.clone(),
                created_at: e.intake_at,
                attempts: 0,
                journaled_at: None,
            }))
        }
        PressAction::Cancel { window_ms } => super::cancel::press(c, e, *window_ms, deltas),
    }
}

/// The device's newest open request of `service` inside the attach window, if any.
fn open_request(
    c: &Connection,
    e: &PressEntry,
    service: Service,
) -> Result<Option<String>, StoreError> {
    if e.attach_window_ms <= 0 {
        return Ok(None);
    }
    Ok(c.prepare_cached(
        "SELECT request_id FROM requests
         WHERE device_id = ?1 AND service = ?2 AND state NOT IN ('closed','cancelled') AND created_at >= ?3
         ORDER BY created_at DESC, request_id DESC LIMIT 1",
    )?
    .query_row(params![e.device_id, service.as_str(), e.intake_at - e.attach_window_ms], |r| r.get::<_, String>(0))
    .optional()?)
}

/// Flood control: the press joins the open request `rid` as a "pressed again" event; the
/// device hears the request's current state, and the backend holding it gets an update.
fn pressed_again(c: &Connection, e: &PressEntry, rid: &str) -> Result<PressOutcome, StoreError> {
    let p = &e.press;
    let cur = current(c, rid)?
        .ok_or_else(|| StoreError::Corrupt(format!("open request {rid} vanished")))?;
    let earlier: u32 = c
        .prepare_cached(
            "SELECT count(*) FROM request_events WHERE request_id = ?1 AND kind = 'pressed_again'",
        )?
        .query_row(params![rid], |r| r.get(0))?;
    let count = earlier + 2;
    event(
        c,
        rid,
        e.intake_at,
        "pressed_again",
        None,
        Some(
            json!({"press": p.id, "button": p.button, "gesture": p.gesture, "press_at": p.at, "count": count, "rule": e.rule}),
        ),
    )?;
    let mut notice = cur.notice(rid, cur.state);
    notice.press_id = p.id.clone();
    let update = match &cur.backend {
        Some(b) if b != crate::config::DESK => Some(RequestUpdate {
            request_id: rid.to_owned(),
            backend: b.clone(),
            count,
            press: p.clone(),
            at: e.intake_at,
        }),
        _ => None,
    };
    Ok(PressOutcome::PressedAgain { notice, update })
}

pub(super) fn nothing_to_cancel(device_id: &str, press_id: &str) -> Notice {
    Notice {
        device_id: device_id.to_owned(),
        press_id: press_id.to_owned(),
        request_id: None,
        service: None,
        state: FeedbackState::Cancelled,
        reference: None,
        eta_s: None,
        reason: Some("no open request to cancel".into()),
    }
}

/// Where an already-journaled press stands.
fn duplicate(c: &Connection, device_id: &str, press_id: &str) -> Result<Notice, StoreError> {
    let row = c
        .prepare_cached(
            "SELECT p.outcome, p.request_id, r.state, r.service, r.backend_ref, r.eta_s
             FROM presses p LEFT JOIN requests r ON r.request_id = p.request_id
             WHERE p.device_id = ?1 AND p.press_id = ?2",
        )?
        .query_row(params![device_id, press_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<u32>>(5)?,
            ))
        })?;
    let (outcome, request_id, state, service, reference, eta_s) = row;
    if outcome == "cancel_noop" {
        return Ok(nothing_to_cancel(device_id, press_id));
    }
    if let ("cancel_flagged", Some(rid)) = (outcome.as_str(), &request_id) {
        return super::cancel::flagged_again(c, device_id, press_id, rid);
    }
    let service = service
        .map(|s| s.parse::<Service>())
        .transpose()
        .map_err(StoreError::Corrupt)?;
    let state = match (outcome.as_str(), state) {
        ("cancel", _) => FeedbackState::Cancelled,
        (_, Some(s)) => s
            .parse::<RequestState>()
            .map_err(StoreError::Corrupt)?
            .feedback(),
        (_, None) => {
            return Err(StoreError::Corrupt(format!(
                "press {press_id} has no request"
            )))
        }
    };
    Ok(Notice {
        device_id: device_id.to_owned(),
        press_id: press_id.to_owned(),
        request_id,
        service,
        state,
        reference,
        eta_s,
        reason: None,
    })
}

fn attempt(c: &Connection, a: &AttemptRecord) -> Result<(), StoreError> {
    event(
        c,
        &a.request_id,
        a.started_at,
        "attempt",
        None,
        Some(
            json!({"backend": a.backend, "attempt": a.attempt, "result": a.result, "elapsed_ms": a.elapsed_ms}),
        ),
    )?;
    c.prepare_cached("UPDATE outbox SET attempts = max(attempts, ?2) WHERE request_id = ?1")?
        .execute(params![a.request_id, a.attempt])?;
    Ok(())
}

/// Load what a notice needs and the current state of a request.
struct Current {
    device_id: String,
    press_id: String,
    service: Service,
    state: RequestState,
    created_at: i64,
    reference: Option<String>,
    eta_s: Option<u32>,
    /// The backend that accepted it (`desk` once escalated).
    backend: Option<String>,
}

fn current(c: &Connection, request_id: &str) -> Result<Option<Current>, StoreError> {
    let row = c
        .prepare_cached(
            "SELECT device_id, press_id, service, state, created_at, backend_ref, eta_s, backend FROM requests WHERE request_id = ?1",
        )?
        .query_row(params![request_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, Option<u32>>(6)?,
                r.get::<_, Option<String>>(7)?,
            ))
        })
        .optional()?;
    let Some((device_id, press_id, service, state, created_at, reference, eta_s, backend)) = row
    else {
        return Ok(None);
    };
    Ok(Some(Current {
        device_id,
        press_id,
        service: service.parse().map_err(StoreError::Corrupt)?,
        state: state.parse().map_err(StoreError::Corrupt)?,
        created_at,
        reference,
        eta_s,
        backend,
    }))
}

impl Current {
    fn notice(&self, request_id: &str, state: RequestState) -> Notice {
        Notice {
            device_id: self.device_id.clone(),
            press_id: self.press_id.clone(),
            request_id: Some(request_id.to_owned()),
            service: Some(self.service),
            state: state.feedback(),
            reference: self.reference.clone(),
            eta_s: self.eta_s,
            reason: None,
        }
    }
}

fn set_state(
    c: &Connection,
    request_id: &str,
    state: RequestState,
    at: i64,
    stamp: Option<&str>,
) -> Result<(), StoreError> {
    let sql = match stamp {
        // `stamp` is one of our own column names, never input.
        Some(col) => format!("UPDATE requests SET state = ?2, updated_at = ?3, {col} = coalesce({col}, ?3) WHERE request_id = ?1"),
        None => "UPDATE requests SET state = ?2, updated_at = ?3 WHERE request_id = ?1".to_owned(),
    };
    c.prepare_cached(&sql)?
        .execute(params![request_id, state.as_str(), at])?;
    Ok(())
}

fn dispatched(
    c: &Connection,
    request_id: &str,
    backend: &str,
    reference: Option<&str>,
    eta_s: Option<u32>,
    at: i64,
    deltas: &mut Vec<(Service, Option<RequestState>, Option<RequestState>)>,
) -> Result<Option<Notice>, StoreError> {
    let Some(mut cur) = current(c, request_id)? else {
        return Ok(None);
    };
    c.prepare_cached("DELETE FROM outbox WHERE request_id = ?1")?
        .execute(params![request_id])?;
    if cur.state != RequestState::Received {
        // Cancelled or closed while an attempt was in flight, and the backend took it after
        // all: a cancelled request is called off there too.
        event(
            c,
            request_id,
            at,
            "dispatched_late",
            None,
            Some(json!({"backend": backend, "ref": reference})),
        )?;
        if cur.state == RequestState::Cancelled {
            let by: Option<String> = c
                .prepare_cached(
                    "SELECT json_extract(detail, '$.by') FROM request_events
                     WHERE request_id = ?1 AND kind = 'cancelled' ORDER BY seq DESC LIMIT 1",
                )?
                .query_row(params![request_id], |r| r.get(0))
                .optional()?
                .flatten();
            followup::queue_cancel(
                c,
                request_id,
                backend,
                by.as_deref().unwrap_or("resident"),
                at,
            )?;
        }
        return Ok(None);
    }
    c.prepare_cached(
        "UPDATE requests SET state = 'dispatched', backend = ?2, backend_ref = ?3, eta_s = ?4, updated_at = ?5, dispatched_at = ?5
         WHERE request_id = ?1",
    )?
    .execute(params![request_id, backend, reference, eta_s, at])?;
    event(
        c,
        request_id,
        at,
        "dispatched",
        Some(RequestState::Dispatched),
        Some(json!({"backend": backend, "ref": reference, "eta_s": eta_s})),
    )?;
    deltas.push((cur.service, Some(cur.state), Some(RequestState::Dispatched)));
    cur.reference = reference.map(str::to_owned);
    cur.eta_s = eta_s;
    Ok(Some(cur.notice(request_id, RequestState::Dispatched)))
}

fn escalated(
    c: &Connection,
    request_id: &str,
    reason: &str,
    contacts: &NotifyContacts,
    at: i64,
    deltas: &mut Vec<(Service, Option<RequestState>, Option<RequestState>)>,
) -> Result<Option<Notice>, StoreError> {
    let Some(cur) = current(c, request_id)? else {
        return Ok(None);
    };
    c.prepare_cached("DELETE FROM outbox WHERE request_id = ?1")?
        .execute(params![request_id])?;
    if cur.state != RequestState::Received {
        return Ok(None);
    }
    c.prepare_cached(
        "UPDATE requests SET state = 'escalated', backend = 'desk', updated_at = ?2, escalated_at = ?2 WHERE request_id = ?1",
    )?
    .execute(params![request_id, at])?;
    event(
        c,
        request_id,
        at,
        "escalated",
        Some(RequestState::Escalated),
        Some(json!({"reason": reason})),
    )?;
    followup::queue_contacts(c, request_id, reason, contacts, at)?;
    deltas.push((cur.service, Some(cur.state), Some(RequestState::Escalated)));
    Ok(Some(cur.notice(request_id, RequestState::Escalated)))
}

fn operator(
    c: &Connection,
    request_id: &str,
    action: OperatorAction,
    at: i64,
    deltas: &mut Vec<(Service, Option<RequestState>, Option<RequestState>)>,
) -> Result<Transition, StoreError> {
    let Some(cur) = current(c, request_id)? else {
        return Ok(Transition::NotFound);
    };
    let (to, stamp, kind) = match action {
        OperatorAction::Ack if cur.state == RequestState::Escalated => {
            (RequestState::Acknowledged, "acked_at", "acknowledged")
        }
        OperatorAction::Close if cur.state.is_open() => {
            (RequestState::Closed, "closed_at", "closed")
        }
        OperatorAction::Cancel if cur.state.is_open() => {
            (RequestState::Cancelled, "closed_at", "cancelled")
        }
        _ => return Ok(Transition::Conflict(cur.state)),
    };
    set_state(c, request_id, to, at, Some(stamp))?;
    c.prepare_cached("DELETE FROM outbox WHERE request_id = ?1")?
        .execute(params![request_id])?;
    event(
        c,
        request_id,
        at,
        kind,
        Some(to),
        Some(json!({"by": "operator", "was": cur.state.as_str()})),
    )?;
    if action == OperatorAction::Cancel {
        let backend = super::cancel::backend_of(c, request_id)?;
        super::cancel::tell_backend(c, request_id, cur.state, backend.as_deref(), "operator", at)?;
    }
    deltas.push((cur.service, Some(cur.state), Some(to)));
    Ok(Transition::Applied {
        notice: cur.notice(request_id, to),
        from: cur.state,
        created_at: cur.created_at,
    })
}

#[allow(clippy::too_many_arguments)]
fn callback(
    c: &Connection,
    request_id: &str,
    caller: Option<&str>,
    to: RequestState,
    eta_s: Option<u32>,
    reference: Option<&str>,
    at: i64,
    deltas: &mut Vec<(Service, Option<RequestState>, Option<RequestState>)>,
) -> Result<Transition, StoreError> {
    let Some(mut cur) = current(c, request_id)? else {
        return Ok(Transition::NotFound);
    };
    // Only the backend that accepted the request may report on it. Before any backend has it
    // (`received`) the state check below answers with a conflict.
    if let (Some(caller), Some(owner)) = (caller, cur.backend.as_deref()) {
        if caller != owner {
            return Ok(Transition::Forbidden);
        }
    }
    let allowed = matches!(
        cur.state,
        RequestState::Dispatched | RequestState::EnRoute | RequestState::Arrived
    ) && matches!(
        to,
        RequestState::EnRoute
            | RequestState::Arrived
            | RequestState::Closed
            | RequestState::Cancelled
    );
    if !allowed {
        return Ok(Transition::Conflict(cur.state));
    }
    let stamp = if to.is_open() {
        None
    } else {
        Some("closed_at")
    };
    set_state(c, request_id, to, at, stamp)?;
    if eta_s.is_some() || reference.is_some() {
        c.prepare_cached(
            "UPDATE requests SET eta_s = coalesce(?2, eta_s), backend_ref = coalesce(?3, backend_ref) WHERE request_id = ?1",
        )?
        .execute(params![request_id, eta_s, reference])?;
    }
    event(
        c,
        request_id,
        at,
        "callback",
        Some(to),
        Some(json!({"eta_s": eta_s, "ref": reference})),
    )?;
    if to != cur.state {
        deltas.push((cur.service, Some(cur.state), Some(to)));
    }
    if eta_s.is_some() {
        cur.eta_s = eta_s;
    }
    if let Some(r) = reference {
        cur.reference = Some(r.to_owned());
    }
    Ok(Transition::Applied {
        notice: cur.notice(request_id, to),
        from: cur.state,
        created_at: cur.created_at,
    })
}
