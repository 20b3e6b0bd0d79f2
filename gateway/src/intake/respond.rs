//! After the journal: the responder waits for each press's commit in receive order, answers the
//! press (`received` for a new request, where it stands for a duplicate, a cancel with nothing
//! to cancel) and hands new requests to dispatch. Every later transition — and a cancel or a
//! press joining an open request — reaches the device from the change feed
//! (`feedback::changes`), whichever stage caused it.

use super::context::IntakeContext;
use super::press::{InFlight, Pending};
use crate::clock::now_ms;
use crate::source::{AckToken, Acker};
use crate::store::PressOutcome;
use crate::telemetry;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use yijian_wire::{Feedback, Gesture};

/// A press message in receive order: its acknowledgement to the broker, and what the journal
/// was asked (nothing for a message answered at once: rejected, or a copy of a press whose
/// original is still being journaled).
pub(super) struct Queued {
    /// Sent once the press is in the journal (or needed no journal), in receive order: with the
    /// embedded broker's deferred acks (rumqttd patch 14) it releases the device's PUBACK.
    pub(super) ack: AckToken,
    pub(super) pending: Option<Pending>,
}

/// How long a press whose commit failed waits before it is handed to the journal again.
const RETRY: Duration = Duration::from_millis(200);

/// Wait for each journal answer in receive order, act on it, then acknowledge the message.
pub(super) async fn responder(
    mut rx: mpsc::Receiver<Queued>,
    ctx: Arc<IntakeContext>,
    in_flight: InFlight,
    acker: Acker,
    shutdown: CancellationToken,
) {
    while let Some(Queued { ack, pending }) = rx.recv().await {
        if let Some(pending) = pending {
            if !journal(&ctx, &in_flight, pending, &shutdown).await {
                // The journal has stopped (the gateway is stopping): the press is not on disk,
                // so it is not acknowledged; neither is anything after it (acks go in order).
                break;
            }
        }
        if let Err(e) = acker.ack(&ack) {
            tracing::debug!(error = %e, "press ack not sent");
        }
    }
}

/// Wait for one press's commit and act on it. A failed commit (a full disk, a read-only mount)
/// leaves the press unanswered and unacknowledged, and it is handed to the journal again until
/// it is on disk; false when the journal has stopped instead.
async fn journal(
    ctx: &IntakeContext,
    in_flight: &InFlight,
    pending: Pending,
    shutdown: &CancellationToken,
) -> bool {
    let Pending {
        mut rx,
        entry,
        started,
        gesture,
        key,
        span,
    } = pending;
    loop {
        match rx.await {
            Ok(Ok(outcome)) => {
                in_flight.remove(&key);
                after_commit(ctx, outcome, started, gesture, &span)
                    .instrument(span.clone())
                    .await;
                return true;
            }
            Ok(Err(e)) => {
                // No `received` and no PUBACK: the device keeps the press.
                span.in_scope(|| tracing::warn!(error = %e, "press not journaled; the device will retransmit, and the gateway tries again"));
                telemetry::press_received(gesture, "store_error");
            }
            Err(_) => {
                telemetry::press_received(gesture, "store_error");
                in_flight.remove(&key);
                return false;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = shutdown.cancelled() => {
                in_flight.remove(&key);
                return false;
            }
        }
        rx = match ctx.store.submit_press(entry.clone()).await {
            Ok(rx) => rx,
            Err(_) => {
                in_flight.remove(&key);
                return false;
            }
        };
    }
}

/// Act on one press the journal has answered for: tell the device, count, hand on.
async fn after_commit(
    ctx: &IntakeContext,
    outcome: PressOutcome,
    started: Instant,
    gesture: Gesture,
    span: &tracing::Span,
) {
    match outcome {
        PressOutcome::Created(req) => {
            span.record("request_id", req.id.as_str());
            // The press's answer, here rather than from the change feed (its change is marked
            // `answered`): in receive order, and before the request goes to dispatch, so the
            // resident hears `received` before any backend is called.
            let (Some(device_id), Some(press)) = (req.device_id.as_deref(), req.press()) else {
                return;
            };
            let fb = Feedback {
                press: Some(press.id.clone()),
                request: Some(req.id.clone()),
                service: Some(req.service),
                state: yijian_wire::FeedbackState::Received,
                reference: None,
                eta_s: None,
                reason: None,
                at: now_ms(),
            };
            ctx.feedback.send(device_id, &fb).await;
            let sent_at = now_ms();
            telemetry::intake_to_received(started.elapsed());
            telemetry::press_to_received(req.service, press.at, sent_at);
            telemetry::press_received(gesture, "request");
            telemetry::request_created(req.service, req.priority);
            ctx.store.received_sent(&req.id, req.journaled_at, sent_at);
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
            // where that request stands, the backend holding it hears of the urgency.
            telemetry::press_received(gesture, "pressed_again");
            // The device hears where the request stands from the change feed.
            let _ = notice;
            if let Some(u) = update {
                ctx.dispatch.pressed_again(u);
            }
        }
    }
}
