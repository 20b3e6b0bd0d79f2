//! The journal's single writer: one OS thread, one SQLite connection, group commit.
//!
//! Commands ([`crate::store::command`]) queue on a bounded channel. The writer takes the first,
//! drains whatever else is already waiting (up to `max_batch`), runs each inside its own
//! savepoint of one transaction ([`super::requests`] holds the statements), commits once (one
//! fsync for the whole burst) and only then publishes the batch's transitions on the change
//! feed and answers every caller. Nobody therefore acts on something that is not durable: the
//! device hears `received` only from the change feed, after the commit.

use super::history::{self, Effects};
use super::{followup, StoreError};
use super::{requests, transitions};
use crate::clock::now_ms;
use crate::store::changes::Changes;
use crate::store::command::{Command, Reply, Transition, WriterState};
use crate::store::model::*;
use crate::telemetry;
use rusqlite::{params, Connection, Transaction};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use yijian_wire::Service;

/// A command's answer, held until the batch is committed (or has failed).
enum Staged {
    Press(Reply<PressOutcome>, Result<PressOutcome, StoreError>),
    Opened(Reply<Request>, Result<Request, StoreError>),
    Applied(Reply<bool>, Result<bool, StoreError>),
    Transition(Reply<Transition>, Result<Transition, StoreError>),
    Done(Reply<()>, Result<(), StoreError>),
    Flush(oneshot::Sender<()>),
}

impl Staged {
    fn fail(self, e: &StoreError) {
        match self {
            Staged::Press(r, _) => drop(r.send(Err(e.clone()))),
            Staged::Opened(r, _) => drop(r.send(Err(e.clone()))),
            Staged::Applied(r, _) => drop(r.send(Err(e.clone()))),
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
            Staged::Opened(r, mut v) => {
                if let Ok(req) = &mut v {
                    req.journaled_at = Some(committed_at);
                }
                drop(r.send(v))
            }
            Staged::Applied(r, v) => drop(r.send(v)),
            Staged::Transition(r, v) => drop(r.send(v)),
            Staged::Done(r, v) => drop(r.send(v)),
            Staged::Flush(r) => drop(r.send(())),
        }
    }
}

/// Open requests per (service, state), kept exact by applying each committed transition.
type OpenCounts = HashMap<(String, RequestState), i64>;

pub(super) struct Writer {
    conn: Connection,
    rx: mpsc::Receiver<Command>,
    max_batch: usize,
    state: Arc<WriterState>,
    changes: Changes,
    open: OpenCounts,
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        rx: mpsc::Receiver<Command>,
        max_batch: usize,
        state: Arc<WriterState>,
        changes: Changes,
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
            changes,
            open,
        })
    }

    /// Run until every sender is gone.
    pub(super) fn run(mut self) {
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
        let presses = batch
            .iter()
            .filter(|c| matches!(c, Command::Press(..)))
            .count();
        let mut staged = Vec::with_capacity(n);
        let mut fx = Effects::default();
        let fail = self.state.fail_commits.load(Ordering::Relaxed);

        let result = (|| -> Result<(), StoreError> {
            let tx = self.conn.transaction()?;
            let mut statuses: HashMap<String, (bool, String, i64)> = HashMap::new();
            for cmd in batch.drain(..) {
                apply(&tx, cmd, &mut fx, &mut staged, &mut statuses);
            }
            for (device_id, (online, json, at)) in &statuses {
                tx.prepare_cached(
                    "UPDATE devices SET last_status = ?2, last_seen_at = ?3, online = ?4 WHERE device_id = ?1",
                )?
                .execute(params![device_id, json, at, *online as i64])?;
            }
            self.state.hold.wait(presses);
            if fail {
                return Err(StoreError::unavailable("injected journal failure"));
            }
            tx.commit()?;
            Ok(())
        })();

        match result {
            Ok(()) => {
                self.state.healthy.store(true, Ordering::Relaxed);
                let committed_at = now_ms();
                telemetry::store_commit(started.elapsed(), n);
                self.count_open(std::mem::take(&mut fx.deltas));
                if followup::take_queued() {
                    self.state.followups.notify_one();
                }
                for change in fx.changes {
                    self.changes.publish(change);
                }
                for s in staged {
                    s.deliver(committed_at);
                }
            }
            Err(e) => {
                let e = match e {
                    e @ StoreError::Unavailable { .. } => e,
                    other => StoreError::Unavailable {
                        what: other.to_string(),
                        cause: Some(Arc::new(other)),
                    },
                };
                self.state.healthy.store(false, Ordering::Relaxed);
                // Nothing of this batch is in the journal, follow-ups and changes included.
                followup::take_queued();
                telemetry::store_error("commit", &e);
                for s in staged {
                    s.fail(&e);
                }
            }
        }
    }

    fn count_open(&mut self, deltas: Vec<(Service, Option<RequestState>, Option<RequestState>)>) {
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

/// Run one command inside the batch's transaction and stage its answer.
fn apply(
    tx: &Transaction<'_>,
    cmd: Command,
    fx: &mut Effects,
    staged: &mut Vec<Staged>,
    statuses: &mut HashMap<String, (bool, String, i64)>,
) {
    match cmd {
        Command::Press(entry, reply) => {
            let r = in_savepoint(tx, fx, |c, fx| requests::press(c, &entry, fx));
            staged.push(Staged::Press(reply, r));
        }
        Command::Open(new, reply) => {
            let r = in_savepoint(tx, fx, |c, fx| requests::open(c, &new, fx));
            staged.push(Staged::Opened(reply, r));
        }
        Command::Attempt(a) => {
            if let Err(e) = in_savepoint(tx, fx, |c, _| transitions::attempt(c, &a)) {
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
            if let Err(e) = history::event(tx, &request_id, at, "received", None, Some(detail)) {
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
            let r = in_savepoint(tx, fx, |c, fx| {
                transitions::dispatched(
                    c,
                    &request_id,
                    &backend,
                    reference.as_deref(),
                    eta_s,
                    at,
                    fx,
                )
            });
            staged.push(Staged::Applied(reply, r));
        }
        Command::Escalated {
            request_id,
            reason,
            contacts,
            at,
            reply,
        } => {
            let r = in_savepoint(tx, fx, |c, fx| {
                transitions::escalated(c, &request_id, reason, &contacts, at, fx)
            });
            staged.push(Staged::Applied(reply, r));
        }
        Command::FollowupAttempt {
            key,
            target,
            attempt,
            at,
        } => {
            if let Err(e) = in_savepoint(tx, fx, |c, _| {
                followup::attempted(c, &key, &target, attempt, at)
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
            let r = in_savepoint(tx, fx, |c, _| followup::finished(c, &f, ending, at));
            staged.push(Staged::Done(reply, r));
        }
        Command::Operator {
            request_id,
            action,
            at,
            reply,
        } => {
            let r = in_savepoint(tx, fx, |c, fx| {
                transitions::operator(c, &request_id, action, at, fx)
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
            let r = in_savepoint(tx, fx, |c, fx| {
                transitions::callback(
                    c,
                    &request_id,
                    caller.as_deref(),
                    state,
                    eta_s,
                    reference.as_deref(),
                    at,
                    fx,
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

/// A savepoint per command: one command's failure (a bug, a constraint) must not undo the
/// others in the batch, nor leave its effects behind.
fn in_savepoint<T>(
    tx: &Transaction<'_>,
    fx: &mut Effects,
    f: impl FnOnce(&Connection, &mut Effects) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    // Prepared once and cached: parsing these on every command showed in profiles.
    tx.prepare_cached("SAVEPOINT cmd")?.execute([])?;
    let mark = fx.mark();
    match f(tx, fx) {
        Ok(v) => {
            tx.prepare_cached("RELEASE cmd")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            fx.rollback(mark);
            tx.prepare_cached("ROLLBACK TO cmd")?.execute([])?;
            tx.prepare_cached("RELEASE cmd")?.execute([])?;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests;
