//! The writer on its own, on a real journal file: what one batch is (a transaction, one
//! commit, at most `max_batch` commands), that nobody hears of a command before its batch is
//! committed, and what a failed commit leaves behind (nothing) and tells the callers (the error).

use super::*;
use crate::store::changes::ChangeStream;
use std::time::Duration;
use yijian_wire::{Gesture, Press, Priority};

type PressReply = oneshot::Receiver<Result<PressOutcome, StoreError>>;

fn press(id: &str) -> PressEntry {
    PressEntry {
        device_id: "d-1".into(),
        press: Press {
            id: id.into(),
            button: "main".into(),
            gesture: Gesture::Single,
            at: 1_764_324_000_000,
            battery: None,
        },
        action: PressAction::Request {
            service: Service::Rescue,
            priority: Priority::Emergency,
            tags: vec![],
        },
        rule: "test".into(),
        resident_id: None,
        intake_at: 1_764_324_000_000,
        // Each press its own request.
        attach_window_ms: 0,
    }
}

/// A journal in a temporary directory, its engine for reads, a writer fed by the returned
/// sender (started by [`Journal::start`]), and a subscriber of its change feed.
struct Journal {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    engine: Arc<super::super::Sqlite>,
    tx: mpsc::Sender<Command>,
    rx: Option<mpsc::Receiver<Command>>,
    state: Arc<WriterState>,
    changes: Changes,
}

impl Journal {
    fn new() -> Journal {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("journal.db");
        let engine = Arc::new(super::super::open(&path).expect("journal"));
        let (tx, rx) = mpsc::channel(64);
        Journal {
            _dir: dir,
            path,
            engine,
            tx,
            rx: Some(rx),
            state: Arc::new(WriterState::default()),
            changes: Changes::default(),
        }
    }

    fn feed(&self) -> ChangeStream {
        ChangeStream::new(self.engine.clone(), &self.changes, "test")
    }

    /// Queue a press (before or after the writer starts).
    fn press(&self, id: &str) -> PressReply {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Command::Press(press(id), reply))
            .expect("room in the queue");
        rx
    }

    fn flush(&self) -> oneshot::Receiver<()> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Command::Flush(reply))
            .expect("room in the queue");
        rx
    }

    /// Start the writer on its own thread, taking batches of at most `max_batch`.
    fn start(&mut self, max_batch: usize) -> std::thread::JoinHandle<()> {
        let conn = super::super::writer_connection(&self.path).expect("writer connection");
        let w = Writer::new(
            conn,
            self.rx.take().expect("started once"),
            max_batch,
            self.state.clone(),
            self.changes.clone(),
        )
        .expect("writer");
        std::thread::spawn(move || w.run())
    }

    /// Presses in the journal, read on a connection of the read pool.
    fn presses(&self) -> i64 {
        self.engine
            .read(|c| Ok(c.query_row("SELECT count(*) FROM presses", [], |r| r.get(0))?))
            .expect("read")
    }
}

/// Wait (on the real clock, the writer being an OS thread) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn created(r: Result<PressOutcome, StoreError>) -> Request {
    match r {
        Ok(PressOutcome::Created(req)) => req,
        other => panic!("a new request was expected: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_one_transaction_and_nobody_hears_of_it_before_the_commit() {
    let mut j = Journal::new();
    let mut feed = j.feed();
    // Queued before the writer runs: the first batch takes what is waiting, up to max_batch.
    let mut replies = vec![j.press("p-1"), j.press("p-2"), j.press("p-3")];
    let mut flushed = j.flush();
    j.state.hold.set(true);
    let writer = j.start(3);

    until("the first batch held before its commit", || {
        j.state.hold.held() > 0
    })
    .await;
    assert_eq!(
        j.state.hold.held(),
        3,
        "all three presses in one batch, and not the flush: max_batch is 3"
    );
    // Run, not committed: no caller answered, nothing published, nothing visible to a reader.
    for r in &mut replies {
        assert!(
            matches!(r.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
            "answered before the commit"
        );
    }
    assert!(matches!(
        flushed.try_recv(),
        Err(oneshot::error::TryRecvError::Empty)
    ));
    assert_eq!(j.presses(), 0, "an uncommitted batch is visible to readers");
    assert!(
        tokio::time::timeout(Duration::from_millis(50), feed.next())
            .await
            .is_err(),
        "a change was published before its commit"
    );

    j.state.hold.set(false);
    let mut committed_at = Vec::new();
    let mut ids = Vec::new();
    for r in replies {
        let req = created(r.await.expect("answered"));
        committed_at.push(req.journaled_at.expect("journaled_at"));
        ids.push(req.id);
    }
    assert!(
        committed_at.windows(2).all(|w| w[0] == w[1]),
        "one commit answers the whole batch: {committed_at:?}"
    );
    flushed
        .await
        .expect("the flush is answered after its own batch");
    assert_eq!(j.presses(), 3);
    // The feed carries the batch's transitions, in order, each after the commit.
    for id in &ids {
        let c = feed.next().await.expect("a change");
        assert_eq!((&c.request_id, c.kind.as_str()), (id, "created"));
        assert!(c.answered, "intake answers its own press with received");
    }
    assert!(j.state.healthy.load(Ordering::Relaxed));
    drop(j.tx);
    writer
        .join()
        .expect("the writer stops when every sender is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_answers_every_caller_with_the_error_and_leaves_nothing() {
    let mut j = Journal::new();
    let mut feed = j.feed();
    j.state.fail_commits.store(true, Ordering::Relaxed);
    let (a, b, flushed) = (j.press("p-1"), j.press("p-2"), j.flush());
    let writer = j.start(16);

    for r in [a, b] {
        match r.await.expect("answered") {
            Err(StoreError::Unavailable { .. }) => {}
            other => panic!("the commit's failure was expected: {other:?}"),
        }
    }
    flushed
        .await
        .expect("a flush is answered even when its batch fails");
    assert!(
        !j.state.healthy.load(Ordering::Relaxed),
        "/readyz must say so"
    );
    assert_eq!(
        j.presses(),
        0,
        "nothing of the failed batch is in the journal"
    );

    // The disk is back: the same press (a retransmission) is journaled once, as new — and the
    // first change anyone hears of is its, so nothing of the failed batch was published.
    j.state.fail_commits.store(false, Ordering::Relaxed);
    let req = created(j.press("p-1").await.expect("answered"));
    assert!(j.state.healthy.load(Ordering::Relaxed));
    let c = feed.next().await.expect("a change");
    assert_eq!(
        (c.request_id.as_str(), c.kind.as_str()),
        (req.id.as_str(), "created")
    );
    assert_eq!(j.presses(), 1);
    match j.press("p-1").await.expect("answered") {
        Ok(PressOutcome::Duplicate(n)) => {
            assert_eq!(n.request_id.as_deref(), Some(req.id.as_str()))
        }
        other => panic!("a retransmission after the commit is a duplicate: {other:?}"),
    }
    drop(j.tx);
    writer.join().expect("writer");
}

/// Each command of a batch is answered on its own: one with nothing to act on (a dispatch for
/// a request that does not exist) is told so, and the others of its batch commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_command_of_a_batch_is_answered_on_its_own() {
    let mut j = Journal::new();
    let first = j.press("p-1");
    let (reply, dispatched) = oneshot::channel();
    j.tx.try_send(Command::Dispatched {
        request_id: "rq_does_not_exist".into(),
        backend: "b".into(),
        reference: None,
        eta_s: None,
        at: 1,
        reply,
    })
    .expect("room");
    let second = j.press("p-2");
    let writer = j.start(16);
    created(first.await.expect("answered"));
    assert_eq!(dispatched.await.expect("answered").ok(), Some(false));
    created(second.await.expect("answered"));
    assert_eq!(j.presses(), 2);
    drop(j.tx);
    writer.join().expect("writer");
}

/// What intake's press becomes in the journal, decided in the writer's transaction: a new
/// request, a retransmission (the same answer, never a second request), a press joining the
/// device's open request of that service (flood control), a cancel, and a cancel with nothing
/// left to cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_press_becomes_a_request_a_duplicate_a_joined_press_or_a_cancel() {
    let mut j = Journal::new();
    let writer = j.start(16);
    let send = |entry: PressEntry| {
        let (reply, rx) = oneshot::channel();
        j.tx.try_send(Command::Press(entry, reply)).expect("room");
        rx
    };
    let joining = |id: &str| PressEntry {
        attach_window_ms: 60_000,
        ..press(id)
    };
    let cancel = |id: &str| PressEntry {
        press: Press {
            gesture: Gesture::Long,
            ..press(id).press
        },
        action: PressAction::Cancel { window_ms: 120_000 },
        ..press(id)
    };

    let req = created(send(joining("p-1")).await.expect("answered"));
    let rid = Some(req.id.clone());
    match send(joining("p-1")).await.expect("answered") {
        Ok(PressOutcome::Duplicate(n)) => assert_eq!(n.request_id, rid),
        other => panic!("a retransmission: {other:?}"),
    }
    match send(joining("p-2")).await.expect("answered") {
        Ok(PressOutcome::PressedAgain { notice, update }) => {
            assert_eq!(notice.request_id, rid);
            assert_eq!(update, None, "no backend holds it yet: nobody to update");
        }
        other => panic!("a second press of the same service joins: {other:?}"),
    }
    match send(cancel("p-3")).await.expect("answered") {
        Ok(PressOutcome::Cancelled { notice, backend }) => {
            assert_eq!(notice.request_id, rid);
            assert_eq!(backend, None, "no backend had accepted it");
        }
        other => panic!("a cancel inside the window: {other:?}"),
    }
    match send(cancel("p-4")).await.expect("answered") {
        Ok(PressOutcome::NothingToCancel(n)) => assert_eq!(n.request_id, None),
        other => panic!("nothing open is left: {other:?}"),
    }
    // The joined press left one request; every press is on record once.
    assert_eq!(j.presses(), 4);
    let requests: i64 = j
        .engine
        .read(|c| Ok(c.query_row("SELECT count(*) FROM requests", [], |r| r.get(0))?))
        .expect("read");
    assert_eq!(requests, 1);
    drop(j.tx);
    writer.join().expect("writer");
}
