//! Stage 2 of the path — intake: the gateway's MQTT subscribers. Decode, validate, look up the
//! device, ask the rules, hand the press to the journal's queue, acknowledge to the broker in
//! receive order, and — once the journal has committed — answer the device and hand the request
//! to dispatch.
//!
//! NOTE: the PUBACK goes out when the press is queued for the journal, not after its commit.
//! The embedded broker's memory dies with the gateway, so a commit-gated ack adds no safety:
//! what guarantees a press is the device keeping it until `received` (sent only after the
//! commit) and the journal's unique key (DESIGN §5). Gating it would cap intake at 100 presses
//! (rumqttd's fixed window) per commit latency. A full journal queue still stops the acks and
//! so pushes back on the broker.
//!
//! Presses and statuses arrive on two separate connections: rumqttd's outgoing QoS 1 window is
//! fixed at 100 per connection and acks must come in order, so heartbeats must never queue
//! behind a press waiting for its commit (or the other way round).

use crate::broker;
use crate::clock::now_ms;
use crate::config::MqttConfig;
use crate::devices::Directory;
use crate::dispatch::DispatchHandle;
use crate::feedback::{self, FeedbackSender};
use crate::residents::{Residents, RESIDENT_UNKNOWN_TAG};
use crate::rules::{local_minutes_in, Action, AttrValue, PressContext, RuleSet};
use crate::store::{PressAction, PressEntry, PressOutcome, Store, StoreError};
use crate::telemetry;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, Publish, QoS};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use yijian_wire::{decode_press, decode_status, topic, Feedback, Gesture, RejectReason};

/// A device clock further than this from the gateway's is counted as skewed.
const SKEW_MS: i64 = 24 * 3600 * 1000;

/// The attributes of a press with no resident on record: none, so `resident = {..}` rules
/// do not match.
static NO_ATTRIBUTES: BTreeMap<String, AttrValue> = BTreeMap::new();

/// Everything intake needs; shared by both subscribers.
pub struct IntakeContext {
    /// The journal.
    pub store: Store,
    /// Registered devices.
    pub directory: Directory,
    /// Residents' attributes and time zones, for the rules.
    pub residents: Residents,
    /// The current rule set; swapped whole on reload, so a press sees one complete set.
    pub rules: Arc<RwLock<Arc<RuleSet>>>,
    /// Feedback publisher.
    pub feedback: FeedbackSender,
    /// Where new requests go.
    pub dispatch: DispatchHandle,
    /// Cancel window, in milliseconds.
    pub cancel_window_ms: i64,
    /// Flood control: a press joins the device's open request of its service created within
    /// this many milliseconds (0: never).
    pub attach_window_ms: i64,
}

/// A press waiting for the journal's commit, kept in receive order.
struct Pending {
    rx: oneshot::Receiver<Result<PressOutcome, StoreError>>,
    gesture: Gesture,
    /// `device_id \0 press_id`, in [`Queued`] until the commit answers.
    key: String,
    /// Carries the press's ids to the lines logged after the commit.
    span: tracing::Span,
}

/// Presses queued for the journal and not yet committed. A device retransmits every 5 s until
/// it hears `received`; when the gateway is slower than that, each copy would be journaled (and
/// answered) again, adding load exactly when there is least room: a retransmission storm feeding
/// on itself. A copy of a press still in this set is dropped — the original's `received` answers
/// the device. Copies arriving after the commit go to the journal as usual and get the current
/// state back.
type Queued = Arc<Mutex<HashSet<String>>>;

/// Connect the press subscriber and run it until `shutdown`. Returns once the subscription
/// exists (so devices may be admitted); the loop keeps running in the background.
pub async fn start_presses(
    cfg: &MqttConfig,
    secret: &str,
    ctx: Arc<IntakeContext>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, rumqttc::ConnectionError> {
    let (client, mut events) = subscriber(
        cfg,
        broker::GATEWAY_PRESS_CLIENT,
        secret,
        topic::PRESS_FILTER,
    )
    .await?;
    let (pending_tx, pending_rx) = mpsc::channel::<Pending>(4096);
    let queued: Queued = Arc::default();
    let responder = tokio::spawn(responder(pending_rx, ctx.clone(), queued.clone()));
    Ok(tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = events.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let pending = take_press(&ctx, &queued, &p).await;
                    // In receive order, on the connection that delivered it. At most 100
                    // publishes are unacked at once, so this 1024-slot queue always has room.
                    if let Err(e) = client.try_ack(&p) {
                        tracing::debug!(error = %e, "press ack not sent");
                    }
                    if let Some(pending) = pending {
                        if pending_tx.send(pending).await.is_err() {
                            break;
                        }
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if !ack.session_present {
                        let _ = client.try_subscribe(topic::PRESS_FILTER, QoS::AtLeastOnce);
                    }
                    tracing::info!(
                        session_present = ack.session_present,
                        "press intake reconnected"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "press intake connection lost; reconnecting");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        }
        drop(pending_tx);
        let _ = responder.await;
    }))
}

/// Connect one of the gateway's subscribers and poll until its SUBACK.
async fn subscriber(
    cfg: &MqttConfig,
    client_id: &str,
    secret: &str,
    filter: &str,
) -> Result<(AsyncClient, EventLoop), rumqttc::ConnectionError> {
    let (client, mut events) = broker::gateway_client(cfg, client_id, secret, 1024);
    feedback::wait_connack(&mut events).await?;
    let _ = client.try_subscribe(filter, QoS::AtLeastOnce);
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = events.poll().await? {
            return Ok((client, events));
        }
    }
}

/// Decode and validate one press publish and queue it for the journal. `None` when it was
/// answered at once (rejected) or could not be queued.
async fn take_press(ctx: &IntakeContext, queued: &Queued, p: &Publish) -> Option<Pending> {
    let started = Instant::now();
    let Some((device_id, _)) = topic::parse(&p.topic) else {
        // The ACL makes this unreachable for devices; count it anyway.
        telemetry::press_rejected(
            RejectReason::BadTopic,
            None,
            "topic outside yijian/v1/devices/{id}/press",
        );
        return None;
    };
    let span = telemetry::press_span(device_id);
    take_valid_press(ctx, queued, p, device_id.to_owned(), started, span.clone())
        .instrument(span)
        .await
}

/// The rest of [`take_press`], inside the press's span.
async fn take_valid_press(
    ctx: &IntakeContext,
    queued: &Queued,
    p: &Publish,
    device_id: String,
    started: Instant,
    span: tracing::Span,
) -> Option<Pending> {
    let (press, unknown) = match decode_press(&p.payload) {
        Ok(v) => v,
        Err(r) => {
            telemetry::press_rejected(r.reason, Some(&device_id), &r.message);
            ctx.feedback
                .send(
                    &device_id,
                    &Feedback::rejected(r.press_id, r.message, now_ms()),
                )
                .await;
            return None;
        }
    };
    span.record("press_id", press.id.as_str());
    if unknown > 0 {
        telemetry::press_unknown_fields(unknown);
    }
    let Some(device) = ctx.directory.info(&device_id) else {
        let msg = format!("device {device_id} is not registered");
        telemetry::press_rejected(RejectReason::UnknownDevice, Some(&device_id), &msg);
        ctx.feedback
            .send(
                &device_id,
                &Feedback::rejected(Some(press.id), msg, now_ms()),
            )
            .await;
        return None;
    };
    let key = format!("{device_id}\0{}", press.id);
    if !queued
        .lock()
        .expect("queued lock is never poisoned")
        .insert(key.clone())
    {
        telemetry::press_received(press.gesture, "duplicate");
        return None;
    }
    let intake_at = now_ms();
    if (intake_at - press.at).abs() > SKEW_MS {
        telemetry::press_clock_skew();
    }
    let resident = device
        .resident_id
        .as_deref()
        .and_then(|id| ctx.residents.info(id));
    // The rules judge a press by when it was pressed, in the resident's home zone; a device
    // clock that is far off is not believed.
    let pressed_at = if (intake_at - press.at).abs() > SKEW_MS {
        intake_at
    } else {
        press.at
    };
    let local_minutes = ctx
        .residents
        .zone(resident.as_deref())
        .and_then(|z| local_minutes_in(pressed_at, z));
    let decision = {
        // One complete rule set for this press: a reload swaps the Arc, never the set inside.
        let rules = ctx
            .rules
            .read()
            .expect("rules lock is never poisoned")
            .clone();
        rules.evaluate(&PressContext {
            profile: &device.profile,
            button: &press.button,
            gesture: press.gesture,
            local_minutes,
            attributes: resident.as_ref().map_or(&NO_ATTRIBUTES, |r| &r.attributes),
        })
    };
    let action = match decision.action {
        Action::Request {
            service,
            priority,
            mut tags,
        } => {
            // Never dropped for want of a resident: the backend is told it must ask.
            if resident.is_none() && !tags.iter().any(|t| t == RESIDENT_UNKNOWN_TAG) {
                tags.push(RESIDENT_UNKNOWN_TAG.to_owned());
            }
            PressAction::Request {
                service,
                priority,
                tags,
            }
        }
        Action::Cancel => PressAction::Cancel {
            window_ms: ctx.cancel_window_ms,
        },
    };
    let gesture = press.gesture;
    let entry = PressEntry {
        device_id,
        press,
        action,
        rule: decision.rule.name.to_string(),
        resident_id: device.resident_id.as_deref().map(str::to_owned),
        intake_at,
        attach_window_ms: ctx.attach_window_ms,
        intake_started: Some(started),
    };
    match ctx.store.submit_press(entry).await {
        Ok(rx) => Some(Pending {
            rx,
            gesture,
            key,
            span,
        }),
        Err(e) => {
            queued
                .lock()
                .expect("queued lock is never poisoned")
                .remove(&key);
            telemetry::store_error("press", &e);
            telemetry::press_received(gesture, "store_error");
            None
        }
    }
}

/// Wait for each journal answer in receive order and act on it.
async fn responder(mut rx: mpsc::Receiver<Pending>, ctx: Arc<IntakeContext>, queued: Queued) {
    while let Some(Pending {
        rx,
        gesture,
        key,
        span,
    }) = rx.recv().await
    {
        let result = rx.await;
        queued
            .lock()
            .expect("queued lock is never poisoned")
            .remove(&key);
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

async fn after_commit(
    ctx: &IntakeContext,
    outcome: PressOutcome,
    gesture: Gesture,
    span: &tracing::Span,
) {
    match outcome {
        PressOutcome::Created(req) => {
            // The device hears `received` from the change feed (feedback::changes), already
            // published by the commit that answered here.
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

/// Connect the status subscriber and run it until `shutdown`. Returns once subscribed.
pub async fn start_statuses(
    cfg: &MqttConfig,
    secret: &str,
    ctx: Arc<IntakeContext>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, rumqttc::ConnectionError> {
    let (client, mut events) = subscriber(
        cfg,
        broker::GATEWAY_STATUS_CLIENT,
        secret,
        topic::STATUS_FILTER,
    )
    .await?;
    Ok(tokio::spawn(async move {
        let mut tracker = Presence::default();
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = events.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    take_status(&ctx, &mut tracker, &p).await;
                    // At most 100 publishes are unacked at once, so this 1024-slot channel
                    // cannot be full: try_ack never waits on the loop that drains it.
                    if let Err(e) = client.try_ack(&p) {
                        tracing::debug!(error = %e, "status ack not sent");
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if !ack.session_present {
                        let _ = client.try_subscribe(topic::STATUS_FILTER, QoS::AtLeastOnce);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "status intake connection lost; reconnecting");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        }
    }))
}

/// Which devices are online, and when each was last written to the journal.
#[derive(Default)]
struct Presence {
    online: HashMap<String, (bool, i64)>,
    online_count: usize,
    offline_count: usize,
}

/// How often an unchanged heartbeat is written to the journal.
const STATUS_PERSIST_MS: i64 = 60_000;

async fn take_status(ctx: &IntakeContext, tracker: &mut Presence, p: &Publish) {
    let Some((device_id, _)) = topic::parse(&p.topic) else {
        telemetry::status_rejected(RejectReason::BadTopic);
        return;
    };
    if p.payload.is_empty() {
        // An empty retained message clears the retained status; nothing to record.
        return;
    }
    let status = match decode_status(&p.payload) {
        Ok((s, _)) => s,
        Err(r) => {
            telemetry::status_rejected(r.reason);
            let msg = format!("status: {}", r.message);
            ctx.feedback
                .send(device_id, &Feedback::rejected(None, msg, now_ms()))
                .await;
            return;
        }
    };
    // As for presses: a device revoked while its connection stays up is not counted online,
    // nor is its heartbeat written to the journal.
    if ctx.directory.info(device_id).is_none() {
        telemetry::status_rejected(RejectReason::UnknownDevice);
        let msg = format!("status: device {device_id} is not registered");
        ctx.feedback
            .send(device_id, &Feedback::rejected(None, msg, now_ms()))
            .await;
        return;
    }
    telemetry::status_received();
    let now = now_ms();
    let prev = tracker.online.get(device_id).copied();
    let changed = prev.map(|(o, _)| o) != Some(status.online);
    let stale = prev
        .map(|(_, t)| now - t >= STATUS_PERSIST_MS)
        .unwrap_or(true);
    match (prev.map(|(o, _)| o), status.online) {
        (Some(true), false) => {
            tracker.online_count -= 1;
            tracker.offline_count += 1;
        }
        (Some(false), true) => {
            tracker.offline_count -= 1;
            tracker.online_count += 1;
        }
        (None, true) => tracker.online_count += 1,
        (None, false) => tracker.offline_count += 1,
        _ => {}
    }
    if changed || stale {
        let json = serde_json::to_string(&status).expect("status serializes");
        ctx.store.status(device_id, status.online, json, now);
        tracker
            .online
            .insert(device_id.to_owned(), (status.online, now));
    } else if let Some(entry) = tracker.online.get_mut(device_id) {
        entry.0 = status.online;
    }
    telemetry::devices_connected(tracker.online_count, tracker.offline_count);
}
