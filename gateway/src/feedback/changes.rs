//! Feedback as a subscriber of the journal's change feed: every committed transition that names
//! a device (the one whose press started the request, or the one the request is about) is told
//! to that device — `received` after the press's commit, `dispatched`, `escalated`, `en_route`,
//! `cancelled`, a press joining an open request, a cancel press flagged for an operator. Nobody
//! else sends a request's progress to a device, so a transition is told once, in commit order,
//! whichever stage (intake, dispatch, an operator, a backend's callback) caused it.
//!
//! What is not a transition is answered where it happens: a duplicate press and a cancel press
//! with nothing to cancel by intake, a rejected press by intake, a device that was away by
//! [`super::resume`].

use super::FeedbackSender;
use crate::clock::now_ms;
use crate::store::{Change, Store};
use crate::telemetry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Tell devices what the change feed says until `stop`. Changes already published when `stop`
/// comes are still told (dispatches finishing in the shutdown grace period reach their device).
pub fn start(store: Store, sender: FeedbackSender, stop: CancellationToken) -> JoinHandle<()> {
    let mut feed = store.changes("feedback");
    tokio::spawn(async move {
        loop {
            let change = tokio::select! {
                biased;
                c = feed.next() => match c {
                    Some(c) => c,
                    None => break,
                },
                _ = stop.cancelled() => break,
            };
            tell(&store, &sender, &change).await;
        }
    })
}

async fn tell(store: &Store, sender: &FeedbackSender, change: &Change) {
    let Some(notice) = &change.notice else {
        return;
    };
    sender.notify(notice).await;
    if let Some(created) = &change.created {
        // The press's `received`: the latency every resident feels first.
        let sent_at = now_ms();
        if let Some(started) = created.intake_started {
            telemetry::intake_to_received(started.elapsed());
        }
        telemetry::press_to_received(change.service, created.press_at, sent_at);
        store.received_sent(&change.request_id, Some(created.journaled_at), sent_at);
    }
}
