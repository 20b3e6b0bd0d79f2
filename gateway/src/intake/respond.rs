//! After the journal: the responder waits for each press's commit in receive order, answers
//! what is not a request's transition (a duplicate, a cancel with nothing to cancel) and hands
//! new requests to dispatch. A transition (`received`, `cancelled`, a press joining an open
//! request) reaches the device from the change feed (`feedback::changes`).

use super::context::IntakeContext;
use super::press::{InFlight, Pending};
use crate::store::PressOutcome;
use crate::telemetry;
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::Instrument;
use yijian_wire::Gesture;

/// Wait for each journal answer in receive order and act on it.
pub(super) async fn responder(
    mut rx: mpsc::Receiver<Pending>,
    ctx: Arc<IntakeContext>,
    in_flight: InFlight,
) {
    while let Some(Pending {
        rx,
        gesture,
        key,
        span,
    }) = rx.recv().await
    {
        let result = rx.await;
        in_flight.remove(&key);
        match result {
            Ok(Ok(outcome)) => {
                after_commit(&ctx, outcome, gesture, &span)
                    .instrument(span.clone())
                    .await
            }
            Ok(Err(e)) => {
                // No `received`: the device keeps the press and retransmits it.
                span.in_scope(|| tracing::warn!(error = %e, "press not journaled; the device will retransmit"));
                telemetry::press_received(gesture, "store_error");
            }
            Err(_) => telemetry::press_received(gesture, "store_error"),
        }
    }
}

/// Act on one press the journal has answered for: tell the device, count, hand on.
async fn after_commit(
    ctx: &IntakeContext,
    outcome: PressOutcome,
    gesture: Gesture,
    span: &tracing::Span,
) {
    match outcome {
        PressOutcome::Created(req) => {
            // The device hears `received` from the change feed (feedback::changes): the commit
            // that answered here has already published it.
            span.record("request_id", req.id.as_str());
            telemetry::press_received(gesture, "request");
            telemetry::request_created(req.service, req.priority);
            tracing::info!(service = %req.service, priority = %req.priority, "request created");
            ctx.dispatch.submit(req).await;
        }
        PressOutcome::Duplicate(notice) => {
            telemetry::press_received(gesture, "duplicate");
            ctx.feedback.notify(&notice).await;
        }
        PressOutcome::Cancelled { notice, backend } => {
            telemetry::press_received(gesture, "cancel");
            telemetry::cancel("cancelled");
            if let Some(rid) = &notice.request_id {
                span.record("request_id", rid.as_str());
                tracing::info!("request cancelled by the resident");
                ctx.dispatch.cancel(rid, backend);
            }
            // The device hears `cancelled` from the change feed.
        }
        PressOutcome::NothingToCancel(notice) => {
            telemetry::press_received(gesture, "cancel");
            telemetry::cancel("nothing_open");
            ctx.feedback.notify(&notice).await;
        }
        PressOutcome::CancelFlagged(notice) => {
            telemetry::press_received(gesture, "cancel");
            telemetry::cancel("flagged");
            tracing::warn!(
                request_id = ?notice.request_id,
                device_id = %notice.device_id,
                "the resident asked to cancel a rescue already on its way; an operator must confirm by phone"
            );
            // The device hears where the request stands, and why, from the change feed.
        }
        PressOutcome::PressedAgain { notice, update } => {
            // Flood control (crate::flood): the press joined the open request; the device hears
            // where that request stands from the change feed, the backend holding it hears of
            // the urgency.
            telemetry::press_received(gesture, "pressed_again");
            let _ = notice;
            if let Some(u) = update {
                ctx.dispatch.pressed_again(u);
            }
        }
    }
}
