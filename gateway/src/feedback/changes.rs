//! Feedback as a subscriber of the journal's change feed: every committed transition that names
//! a device (the one whose press started the request, or the one the request is about) is told
//! to that device — `dispatched`, `escalated`, `en_route`, `arrived`, `closed`, `cancelled`, a
//! press joining an open request, a cancel press flagged for an operator, the `received` of a
//! request no press started. Nobody else sends a request's progress to a device, so each
//! transition is told once, in commit order, whichever stage (dispatch, an operator, a
//! backend's callback, intake) caused it.
//!
//! What answers a press itself is sent by intake, right after the commit: `received` for the
//! request it created (its change is marked `answered`), where a retransmitted press stands, a
//! rejection. A device that was away is re-told by [`super::resume`].

use super::FeedbackSender;
use crate::store::{Change, Store};
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
            tell(&sender, &change).await;
        }
    })
}

async fn tell(sender: &FeedbackSender, change: &Change) {
    match &change.notice {
        Some(notice) if !change.answered => sender.notify(notice).await,
        _ => {}
    }
}
