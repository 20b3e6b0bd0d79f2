//! Stage 2 of the path — intake: the gateway's MQTT subscribers. Decode, validate, look up the
//! device, ask the rules, hand the press to the journal, and acknowledge to the broker in
//! receive order once the journal has answered.
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
use crate::rules::{Action, AttrValue, PressContext, RuleSet};
use crate::store::{PressAction, PressEntry, PressOutcome, Store, StoreError};
use crate::telemetry;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, Publish, QoS};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use yijian_wire::{decode_press, decode_status, topic, Feedback, Gesture, RejectReason};

/// A device clock further than this from the gateway's is counted as skewed.
const SKEW_MS: i64 = 24 * 3600 * 1000;

/// Everything intake needs; shared by both subscribers.
pub struct IntakeContext {
    /// The journal.
    pub store: Store,
    /// Registered devices.
    pub directory: Directory,
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

/// The journal's pending answer to one publish, kept in receive order.
struct Pending {
    publish: Publish,
    generation: u64,
    work: Work,
}

enum Work {
    /// Nothing to wait for (rejected, or the journal refused at once).
    Done,
    /// Waiting for the journal's commit.
    Press { rx: oneshot::Receiver<Result<PressOutcome, StoreError>>, started: Instant, gesture: Gesture },
}

/// Connect the press subscriber and run it until `shutdown`. Returns once the subscription
/// exists (so devices may be admitted); the loop keeps running in the background.
pub async fn start_presses(
    cfg: &MqttConfig,
    secret: &str,
    ctx: Arc<IntakeContext>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, rumqttc::ConnectionError> {
    let (client, mut events) = subscriber(cfg, broker::GATEWAY_PRESS_CLIENT, secret, topic::PRESS_FILTER).await?;
    let generation = Arc::new(AtomicU64::new(1));
    let (ack_tx, ack_rx) = mpsc::channel::<Pending>(1024);
    let acker = tokio::spawn(acker(ack_rx, client.clone(), generation.clone(), ctx.clone()));
    Ok(tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = events.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let work = take_press(&ctx, &p).await;
                    let pending = Pending { publish: p, generation: generation.load(Ordering::Acquire), work };
                    if ack_tx.send(pending).await.is_err() {
                        break;
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    // Acks from before the reconnect must not be sent: the broker will redeliver
                    // those publishes under new packet ids, and the journal dedupes them.
                    generation.fetch_add(1, Ordering::AcqRel);
                    if !ack.session_present {
                        let _ = client.try_subscribe(topic::PRESS_FILTER, QoS::AtLeastOnce);
                    }
                    tracing::info!(session_present = ack.session_present, "press intake reconnected");
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
        drop(ack_tx);
        let _ = acker.await;
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

/// Decode and validate one press publish and hand it to the journal.
async fn take_press(ctx: &IntakeContext, p: &Publish) -> Work {
    let started = Instant::now();
    let Some((device_id, _)) = topic::parse(&p.topic) else {
        // The ACL makes this unreachable for devices; count it anyway.
        telemetry::press_rejected(RejectReason::BadTopic, None, "topic outside yijian/v1/devices/{id}/press");
        return Work::Done;
    };
    let device_id = device_id.to_owned();
    let (press, unknown) = match decode_press(&p.payload) {
        Ok(v) => v,
        Err(r) => {
            telemetry::press_rejected(r.reason, Some(&device_id), &r.message);
            ctx.feedback.send(&device_id, &Feedback::rejected(r.press_id, r.message, now_ms())).await;
            return Work::Done;
        }
    };
    if unknown > 0 {
        telemetry::press_unknown_fields(unknown);
    }
    let Some(device) = ctx.directory.info(&device_id) else {
        let msg = format!("device {device_id} is not registered");
        telemetry::press_rejected(RejectReason::UnknownDevice, Some(&device_id), &msg);
        ctx.feedback.send(&device_id, &Feedback::rejected(Some(press.id), msg, now_ms())).await;
        return Work::Done;
    };
    let intake_at = now_ms();
    if (intake_at - press.at).abs() > SKEW_MS {
        telemetry::press_clock_skew();
    }
    let decision = {
        let rules = ctx.rules.read().expect("rules lock is never poisoned").clone();
        let attributes: BTreeMap<String, AttrValue> = BTreeMap::new();
        rules.evaluate(&PressContext {
            profile: &device.profile,
            button: &press.button,
            gesture: press.gesture,
            local_minutes: None,
            attributes: &attributes,
        })
    };
    let action = match decision.action {
        Action::Request { service, priority, tags } => PressAction::Request { service, priority, tags },
        Action::Cancel => PressAction::Cancel { window_ms: ctx.cancel_window_ms },
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
    };
    match ctx.store.submit_press(entry).await {
        Ok(rx) => Work::Press { rx, started, gesture },
        Err(e) => {
            telemetry::store_error("press", &e);
            telemetry::press_received(gesture, "store_error");
            Work::Done
        }
    }
}

/// Wait for each journal answer in receive order, act on it, then PUBACK the publish.
async fn acker(mut rx: mpsc::Receiver<Pending>, client: AsyncClient, generation: Arc<AtomicU64>, ctx: Arc<IntakeContext>) {
    while let Some(p) = rx.recv().await {
        if let Work::Press { rx, started, gesture } = p.work {
            match rx.await {
                Ok(Ok(outcome)) => after_commit(&ctx, outcome, started, gesture).await,
                Ok(Err(e)) => {
                    // No `received`: the device keeps the press and retransmits it.
                    tracing::warn!(error = %e, "press not journaled; the device will retransmit");
                    telemetry::press_received(gesture, "store_error");
                }
                Err(_) => telemetry::press_received(gesture, "store_error"),
            }
        }
        // The device's retransmission, not the broker, guarantees delivery: ack even when the
        // journal failed, so one bad moment cannot stall the 100-message window for everyone.
        if p.generation == generation.load(Ordering::Acquire) {
            if let Err(e) = client.ack(&p.publish).await {
                tracing::debug!(error = %e, "ack not sent");
            }
        }
    }
}

async fn after_commit(ctx: &IntakeContext, outcome: PressOutcome, started: Instant, gesture: Gesture) {
    match outcome {
        PressOutcome::Created(req) => {
            let fb = Feedback {
                press: Some(req.press.id.clone()),
                request: Some(req.id.clone()),
                service: Some(req.service),
                state: yijian_wire::FeedbackState::Received,
                reference: None,
                eta_s: None,
                reason: None,
                at: now_ms(),
            };
            ctx.feedback.send(&req.device_id, &fb).await;
            telemetry::intake_to_received(started.elapsed());
            telemetry::press_received(gesture, "request");
            tracing::info!(request_id = %req.id, device_id = %req.device_id, press_id = %req.press.id, service = %req.service, "request created");
            ctx.dispatch.submit(req).await;
        }
        PressOutcome::Duplicate(notice) => {
            telemetry::press_received(gesture, "duplicate");
            ctx.feedback.notify(&notice).await;
        }
        PressOutcome::Cancelled { notice, backend } => {
            telemetry::press_received(gesture, "cancel");
            if let Some(rid) = &notice.request_id {
                tracing::info!(request_id = %rid, device_id = %notice.device_id, "request cancelled by the resident");
                ctx.dispatch.cancel(rid, backend);
            }
            ctx.feedback.notify(&notice).await;
        }
        PressOutcome::NothingToCancel(notice) => {
            telemetry::press_received(gesture, "cancel");
            ctx.feedback.notify(&notice).await;
        }
        PressOutcome::PressedAgain { notice, update } => {
            // Flood control (crate::flood): the press joined the open request; the device hears
            // where that request stands, the backend holding it hears of the urgency.
            telemetry::press_received(gesture, "pressed_again");
            ctx.feedback.notify(&notice).await;
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
    let (client, mut events) = subscriber(cfg, broker::GATEWAY_STATUS_CLIENT, secret, topic::STATUS_FILTER).await?;
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
            ctx.feedback.send(device_id, &Feedback::rejected(None, msg, now_ms())).await;
            return;
        }
    };
    telemetry::status_received();
    let now = now_ms();
    let prev = tracker.online.get(device_id).copied();
    let changed = prev.map(|(o, _)| o) != Some(status.online);
    let stale = prev.map(|(_, t)| now - t >= STATUS_PERSIST_MS).unwrap_or(true);
    match (prev.map(|(o, _)| o), status.online) {
        (Some(true), false) => tracker.online_count -= 1,
        (Some(false) | None, true) => tracker.online_count += 1,
        _ => {}
    }
    if changed || stale {
        let json = serde_json::to_string(&status).expect("status serializes");
        ctx.store.status(device_id, status.online, json, now);
        tracker.online.insert(device_id.to_owned(), (status.online, now));
    } else if let Some(entry) = tracker.online.get_mut(device_id) {
        entry.0 = status.online;
    }
    telemetry::devices_connected(tracker.online_count);
}
