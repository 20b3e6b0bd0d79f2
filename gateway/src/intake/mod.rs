//! Stage 3 of the path — intake: the gateway's readers of device messages. Each message from the
//! [`source`](crate::source) is decoded by the [`adapter`](crate::adapter), validated, looked up
//! and put to the rules ([`press`]), handed to the journal's queue, acknowledged to the broker in
//! receive order, and — once the journal has committed — answered to the device and handed to
//! dispatch as a request ([`respond`]). Statuses keep track of who is online ([`status`]).
//!
//! NOTE: a press is acknowledged to the broker only once it is in the journal (or answered at
//! once, as a rejection or a copy of a press still being journaled), in receive order. The
//! embedded broker withholds the device's PUBACK until then (rumqttd patch 14: deferred acks on
//! the press filter), so a PUBACK means "in the journal" (DESIGN §2, §5): a QoS 1 device that
//! forgets a press once it is acknowledged loses nothing to a crash or an overload. A commit
//! that fails is retried; meanwhile nothing after it is acknowledged, and the broker's window
//! (100 unacknowledged messages per connection) pushes back on it.
//!
//! Presses and statuses arrive on two separate connections: rumqttd's outgoing QoS 1 window is
//! fixed at 100 per connection and acks must come in order, so heartbeats must never queue
//! behind a press waiting for its commit (or the other way round).

mod context;
mod press;
mod respond;
mod status;

pub use context::IntakeContext;

use crate::source::{Incoming, Source, SourceError};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Each reader connection's request queue (its acks). At most 100 publishes are unacked at
/// once (the broker's window), so it always has room.
const QUEUE: usize = 1024;

/// Connect the press reader as `client_id` at `source` and run it until `shutdown`. Returns once
/// the subscription exists (so devices may be admitted); the loop keeps running in the
/// background.
pub async fn start_presses(
    source: &Source,
    client_id: &str,
    ctx: Arc<IntakeContext>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, SourceError> {
    let mut connection = source
        .connect(client_id, ctx.adapter.filters().presses, QUEUE)
        .await?;
    let (queue_tx, queue_rx) = mpsc::channel::<respond::Queued>(4096);
    let in_flight = press::InFlight::default();
    let responder = tokio::spawn(respond::responder(
        queue_rx,
        ctx.clone(),
        in_flight.clone(),
        connection.acker(),
        shutdown.clone(),
    ));
    Ok(tokio::spawn(async move {
        while let Some(event) = connection.next(&shutdown).await {
            match event {
                Incoming::Message(m) => {
                    let ack = m.ack_token();
                    let pending = press::take(&ctx, &in_flight, &m).await;
                    // Acknowledged by the responder, in receive order, once the press is in
                    // the journal (a rejected one at its turn).
                    let queued = respond::Queued { ack, pending };
                    if queue_tx.send(queued).await.is_err() {
                        break;
                    }
                }
                Incoming::Reconnected { session_present } => {
                    tracing::info!(session_present, "press intake reconnected");
                }
                Incoming::Lost(e) => {
                    tracing::warn!(error = %e, "press intake connection lost; reconnecting");
                }
            }
        }
        drop(queue_tx);
        let _ = responder.await;
    }))
}

/// Connect the status reader as `client_id` at `source` and run it until `shutdown`. Returns
/// once subscribed.
pub async fn start_statuses(
    source: &Source,
    client_id: &str,
    ctx: Arc<IntakeContext>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, SourceError> {
    let mut connection = source
        .connect(client_id, ctx.adapter.filters().statuses, QUEUE)
        .await?;
    Ok(tokio::spawn(async move {
        let mut presence = status::Presence::default();
        while let Some(event) = connection.next(&shutdown).await {
            match event {
                Incoming::Message(m) => {
                    status::take(&ctx, &mut presence, &m).await;
                    // At most 100 publishes are unacked at once, so this 1024-slot channel
                    // cannot be full: try_ack never waits on the loop that drains it.
                    if let Err(e) = connection.ack(&m) {
                        tracing::debug!(error = %e, "status ack not sent");
                    }
                }
                Incoming::Reconnected { .. } => {}
                Incoming::Lost(e) => {
                    tracing::warn!(error = %e, "status intake connection lost; reconnecting");
                }
            }
        }
    }))
}
