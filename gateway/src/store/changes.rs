//! The change feed: every committed request transition (created, pressed again, dispatched,
//! escalated, acknowledged, en route, arrived, closed, cancelled, cancel requested), published
//! once, after its commit, in commit order. Device feedback is one subscriber; the operator
//! console's stream and supervision are others.
//!
//! NOTE: a broadcast, so the writer never waits for a subscriber. A subscriber that falls
//! more than [`CAPACITY`] changes behind is told it lagged, and [`ChangeStream::next`] then
//! reads what it missed from the journal (each change is a row of the request's history, with
//! its `seq`), so nothing is skipped; what it reads back carries the request's state as it is
//! now, which is what a device or a console should hear anyway.

pub use super::model::Change;

use super::engine::Engine;
use crate::telemetry;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tokio::sync::broadcast;

/// How many changes a subscriber may fall behind before it reads from the journal instead.
pub const CAPACITY: usize = 16_384;

/// The history's event kinds the feed carries. Attempts, follow-up bookkeeping and the
/// `received` measurement are history too, but not transitions anyone reacts to.
pub const KINDS: &[&str] = &[
    "created",
    "pressed_again",
    "cancel_requested",
    "dispatched",
    "escalated",
    "acknowledged",
    "closed",
    "cancelled",
    "callback",
];

/// The publishing side, held by the engine's writer; cheap to clone.
#[derive(Clone)]
pub struct Changes {
    tx: broadcast::Sender<Arc<Change>>,
    /// The last published `seq`: a new subscriber starts after it.
    published: Arc<AtomicI64>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            tx: broadcast::channel(CAPACITY).0,
            published: Arc::default(),
        }
    }
}

impl Changes {
    /// Publish a committed change. Never blocks; with no subscriber it is simply dropped.
    pub fn publish(&self, change: Change) {
        self.published.fetch_max(change.seq, Ordering::Relaxed);
        let _ = self.tx.send(Arc::new(change));
    }

    fn subscribe(&self) -> (broadcast::Receiver<Arc<Change>>, i64) {
        let rx = self.tx.subscribe();
        (rx, self.published.load(Ordering::Relaxed))
    }
}

/// One subscriber's view of the feed: every change committed after it subscribed, each once,
/// in order, including those it would have lost by lagging.
pub struct ChangeStream {
    rx: broadcast::Receiver<Arc<Change>>,
    /// Where missed changes are read back from.
    engine: Arc<dyn Engine>,
    /// The last `seq` handed out.
    last: i64,
    /// Changes read back from the journal after a lag, not yet handed out.
    backlog: VecDeque<Arc<Change>>,
    /// A bounded label for the lag metric.
    name: &'static str,
}

/// How many history rows one catch-up read takes.
const CATCH_UP: u32 = 4_096;

impl ChangeStream {
    pub(super) fn new(engine: Arc<dyn Engine>, changes: &Changes, name: &'static str) -> Self {
        let (rx, last) = changes.subscribe();
        telemetry::changes_subscribed(name);
        ChangeStream {
            rx,
            engine,
            last,
            backlog: VecDeque::new(),
            name,
        }
    }

    /// The next change, or `None` when the journal has stopped.
    pub async fn next(&mut self) -> Option<Arc<Change>> {
        loop {
            if let Some(c) = self.backlog.pop_front() {
                self.last = c.seq;
                return Some(c);
            }
            match self.rx.recv().await {
                Ok(c) if c.seq <= self.last => continue,
                Ok(c) => {
                    self.last = c.seq;
                    return Some(c);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    telemetry::changes_lagged(self.name, n);
                    self.catch_up().await;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Read what was missed from the journal, up to now.
    async fn catch_up(&mut self) {
        let mut from = self.last;
        loop {
            let engine = self.engine.clone();
            let read = tokio::task::spawn_blocking(move || engine.changes_since(from, CATCH_UP))
                .await
                .unwrap_or_else(|e| Err(super::error::StoreError::Db(Arc::new(e))));
            match read {
                Ok(read) => {
                    let full = read.len() as u32 >= CATCH_UP;
                    if let Some(c) = read.last() {
                        from = c.seq;
                    }
                    self.backlog.extend(read.into_iter().map(Arc::new));
                    if !full {
                        return;
                    }
                }
                Err(e) => {
                    // The feed goes on; what was missed is what a later re-telling covers.
                    tracing::warn!(subscriber = self.name, error = %e, "cannot read missed changes from the journal");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::model::{PressAction, RequestState};
    use crate::store::{PressEntry, Store};
    use yijian_wire::Service;
    use yijian_wire::{Gesture, Press, Priority};

    fn press(id: &str, at: i64) -> PressEntry {
        PressEntry {
            device_id: "d-1".into(),
            press: Press {
                id: id.into(),
                button: "main".into(),
                gesture: Gesture::Single,
                at,
                battery: None,
            },
            action: PressAction::Request {
                service: Service::Taxi,
                priority: Priority::Routine,
                tags: vec![],
            },
            rule: "test".into(),
            resident_id: None,
            intake_at: at,
            attach_window_ms: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_transition_is_published_once_in_commit_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("j.db"), 16).expect("journal");
        let mut feed = store.changes("test");
        let t0 = 1_764_324_000_000;
        let super::super::PressOutcome::Created(req) =
            store.press(press("p1", t0)).await.expect("press")
        else {
            panic!("a request")
        };
        store
            .dispatched(&req.id, "taxi-a", Some("TX-1".into()), Some(600), t0 + 5)
            .await
            .expect("dispatched");
        store
            .callback(&req.id, None, RequestState::EnRoute, None, None, t0 + 9)
            .await
            .expect("callback");
        let mut seen = Vec::new();
        for _ in 0..3 {
            let c = feed.next().await.expect("a change");
            // Intake answers the press that created the request; the feed tells the rest.
            assert_eq!(c.answered, c.kind == "created", "{c:?}");
            seen.push((c.kind.clone(), c.state, c.notice.as_ref().map(|n| n.state)));
        }
        use yijian_wire::FeedbackState as F;
        assert_eq!(
            seen,
            [
                (
                    "created".to_owned(),
                    RequestState::Received,
                    Some(F::Received)
                ),
                (
                    "dispatched".to_owned(),
                    RequestState::Dispatched,
                    Some(F::Dispatched)
                ),
                (
                    "callback".to_owned(),
                    RequestState::EnRoute,
                    Some(F::EnRoute)
                ),
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_that_lags_reads_what_it_missed_from_the_journal() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("j.db"), 64).expect("journal");
        let mut feed = store.changes("test");
        let n = CAPACITY + 100;
        let t0 = 1_764_324_000_000;
        // More presses than the broadcast holds, none read meanwhile: the oldest are gone from
        // the channel and must come back from the journal.
        let mut waits = Vec::with_capacity(n);
        for i in 0..n {
            waits.push(
                store
                    .submit_press(press(&format!("p{i}"), t0 + i as i64))
                    .await
                    .expect("queued"),
            );
        }
        for w in waits {
            w.await.expect("answered").expect("journaled");
        }
        let mut ids = std::collections::HashSet::new();
        let mut last = 0;
        while ids.len() < n {
            let c = feed.next().await.expect("a change");
            assert!(c.seq > last, "in order, each once");
            last = c.seq;
            assert_eq!(c.kind, "created");
            ids.insert(
                c.notice
                    .as_ref()
                    .and_then(|x| x.press_id.clone())
                    .expect("press id"),
            );
        }
        assert_eq!(ids.len(), n);
    }
}
