//! Feedback again for a device that was away, from the journal.
//!
//! The embedded broker keeps nothing across a gateway restart, and even a live persistent
//! session keeps only the last few feedback messages (broker.rs sizes each device's log). A
//! `dispatched` published while a device was gone is then never heard: the device had its
//! `received`, so it no longer retransmits the press, and the resident is never told that help
//! is coming. So when a device's subscription to its `feedback` topic starts afresh (a clean
//! session, or any session after a gateway restart: rumqttd patch 11 tells us), and when the
//! broker had to drop feedback the subscription had not yet read, the gateway tells it where
//! each of its recent requests stands ([`MAX_AGE_MS`], [`ENDED_WITHIN_MS`], [`LIMIT`]).
//!
//! A persistent session that comes back intact reads on where it left off, so it is not told
//! again: it would be told what it is about to hear anyway, and those copies would crowd its
//! bounded log (measured: at 5,000 presses/s, when every reconnect was told again, nearly every
//! reconnect then lost fresh feedback to the log's bound; see BENCHMARKS.md). Drops are told at
//! most once per device per [`SKIPPED_EVERY`], so a device too slow for its own feedback is
//! not sent more of it.
//!
//! NOTE: rumqttd tells us on its router thread, right after the subscription is in place
//! (patch 11), so whatever the gateway publishes after that reaches the device. A dispatch
//! outcome is journaled before its feedback is published, so a `dispatched` that fell before
//! the subscription is in the journal by the time it is read here. Hearing a state twice is
//! harmless to a device; missing one is not.
//!
//! Without those hooks (any broker but the vendored one: [`Resume::hooks_available`] is false)
//! a device is told again when its status says it came online (`online: true` after `false`, or
//! the first status heard since the gateway started: the broker's retained copy). That is
//! coarser: every reconnect that the device's last will announced is told again, intact session
//! or not, and a device that left without its will firing is not. It relies on the device
//! contract (DESIGN §2) that a device subscribes to its feedback before it says it is online.

use super::FeedbackSender;
use crate::clock::now_ms;
use crate::store::Store;
use crate::telemetry;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use yijian_wire::topic;

/// Requests older than this are not told again (a day: a rescue still open after that is an
/// operator's business, not the device's LED).
pub const MAX_AGE_MS: i64 = 24 * 3600 * 1000;
/// A request that closed or was cancelled this recently is told again (its device may have
/// missed the end); earlier ones are not.
pub const ENDED_WITHIN_MS: i64 = 15 * 60 * 1000;
/// At most this many requests per device, newest first.
pub const LIMIT: u32 = 8;
/// A device whose unread feedback the broker dropped is told again at most once per this.
pub const SKIPPED_EVERY: Duration = Duration::from_secs(10);
/// Devices looked up per journal read: a reconnect storm of 100,000 devices costs a few hundred
/// reads, not 100,000.
const BATCH: usize = 256;

/// What happened to a device's subscription, as the vendored broker reports it (rumqttd
/// patch 11, whose `Subscription` this mirrors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription {
    /// A subscription the connection did not have: nothing published before reaches it.
    New,
    /// A persistent session's subscription, back where it left off.
    Kept,
    /// Its read position fell out of the broker's bounded log: messages were dropped for it.
    Skipped,
}

/// Devices whose feedback subscription has just come up and who are owed their requests'
/// states. Filled by the broker's router thread (or, without its hooks, by intake's status
/// stage), drained by [`start`]'s task.
#[derive(Debug, Default)]
pub struct Resume {
    /// The broker reports subscriptions through [`Resume::subscribed`]; when false, statuses
    /// going online stand in for them ([`Resume::status`]).
    hooks: AtomicBool,
    /// A set, so a device that subscribes twice before it is served is served once, and the
    /// backlog is bounded by the number of devices.
    pending: Mutex<HashSet<String>>,
    /// Devices told again for dropped feedback in the current [`SKIPPED_EVERY`] window.
    skipped: Mutex<(Option<Instant>, HashSet<String>)>,
    /// Wakes the task; a wake-up before it waits is kept (`Notify` stores one permit).
    wake: Notify,
}

impl Resume {
    /// Whether the broker calls [`Resume::subscribed`] (the vendored embedded broker does). Set
    /// before devices are admitted; until then the status fallback is in force.
    pub fn hooks_available(&self, on: bool) {
        self.hooks.store(on, Ordering::Release);
    }

    /// Intake's status stage: `device_id` says it is `online`, and was `was` (`None`: not heard
    /// from since the gateway started). The fallback for brokers without subscribe hooks.
    pub fn status(&self, device_id: &str, was: Option<bool>, online: bool) {
        if owed_on_status(self.hooks.load(Ordering::Acquire), was, online) {
            self.owe(device_id);
        }
    }

    /// The router's subscribe hook: `client_id`'s subscription on `filter` is in place or
    /// lost messages. Only a device's own feedback topic counts (the gateway's own
    /// subscriptions are to presses and statuses). Never blocks beyond a short lock: the router
    /// thread waits for it.
    pub fn subscribed(&self, client_id: &str, filter: &str, event: Subscription) {
        // Most calls are a reconnecting session's kept subscriptions: answered before parsing.
        if event == Subscription::Kept {
            return;
        }
        match topic::parse(filter) {
            Some((device, topic::Kind::Feedback)) if device == client_id => {}
            _ => return,
        }
        if event == Subscription::Skipped && !self.first_skip_in_window(client_id) {
            return;
        }
        self.owe(client_id);
    }

    /// `device` is owed its requests' states.
    fn owe(&self, device: &str) {
        self.pending
            .lock()
            .expect("resume lock is never poisoned")
            .insert(device.to_owned());
        self.wake.notify_one();
    }

    /// Whether `device`'s dropped feedback is the first told in the current [`SKIPPED_EVERY`]
    /// window (and note that it was).
    fn first_skip_in_window(&self, device: &str) -> bool {
        let mut skipped = self.skipped.lock().expect("resume lock is never poisoned");
        let now = Instant::now();
        if skipped
            .0
            .is_none_or(|start| now.duration_since(start) >= SKIPPED_EVERY)
        {
            *skipped = (Some(now), HashSet::new());
        }
        skipped.1.insert(device.to_owned())
    }

    /// Up to `n` devices owed their states.
    fn take(&self, n: usize) -> Vec<String> {
        let mut pending = self.pending.lock().expect("resume lock is never poisoned");
        let batch: Vec<String> = pending.iter().take(n).cloned().collect();
        for d in &batch {
            pending.remove(d);
        }
        batch
    }
}

/// Whether a status tells the fallback that a device came back: only without the broker's hooks,
/// and only on the step to online (a heartbeat repeating `online: true` is not a return).
fn owed_on_status(hooks: bool, was: Option<bool>, online: bool) -> bool {
    !hooks && online && was != Some(true)
}

/// Serve subscribed devices until `shutdown`.
pub fn start(
    resume: Arc<Resume>,
    store: Store,
    feedback: FeedbackSender,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = resume.wake.notified() => {}
            }
            loop {
                let devices = resume.take(BATCH);
                if devices.is_empty() {
                    break;
                }
                let now = now_ms();
                let found = store
                    .recent_for_devices(devices, now - MAX_AGE_MS, now - ENDED_WITHIN_MS, LIMIT)
                    .await;
                match found {
                    Ok(notices) => {
                        for n in &notices {
                            feedback.notify(n).await;
                            telemetry::feedback_resumed(n.state);
                        }
                    }
                    // Counted and logged where the journal fails; these devices are told at
                    // their next subscription, and retransmit whatever was never answered.
                    Err(e) => {
                        tracing::warn!(error = %e, "requests' states not read for devices that subscribed")
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_device_subscribing_to_its_own_feedback_is_owed_anything() {
        let r = Resume::default();
        let new = Subscription::New;
        r.subscribed("d1", "yijian/v1/devices/d1/feedback", new);
        r.subscribed("d1", "yijian/v1/devices/d1/feedback", new);
        r.subscribed("d2", "yijian/v1/devices/d1/feedback", new);
        r.subscribed("d3", "yijian/v1/devices/d3/press", new);
        r.subscribed("yijian-gateway", topic::PRESS_FILTER, new);
        r.subscribed("d4", "yijian/v1/devices/+/feedback", new);
        assert_eq!(r.take(10), vec!["d1".to_owned()]);
        assert!(r.take(10).is_empty());
    }

    #[test]
    fn a_session_that_kept_its_place_is_owed_nothing_and_drops_are_told_once_a_window() {
        let r = Resume::default();
        r.subscribed("d1", "yijian/v1/devices/d1/feedback", Subscription::Kept);
        assert!(r.take(10).is_empty());
        r.subscribed("d1", "yijian/v1/devices/d1/feedback", Subscription::Skipped);
        assert_eq!(r.take(10), vec!["d1".to_owned()]);
        // The same device dropping again within the window is not told again; another is.
        r.subscribed("d1", "yijian/v1/devices/d1/feedback", Subscription::Skipped);
        r.subscribed("d2", "yijian/v1/devices/d2/feedback", Subscription::Skipped);
        assert_eq!(r.take(10), vec!["d2".to_owned()]);
        // A fresh subscription always is.
        r.subscribed("d1", "yijian/v1/devices/d1/feedback", Subscription::New);
        assert_eq!(r.take(10), vec!["d1".to_owned()]);
    }

    #[test]
    fn without_hooks_a_device_coming_online_is_owed_its_states() {
        // The decision: the step to online, from offline or from not heard of.
        assert!(owed_on_status(false, None, true));
        assert!(owed_on_status(false, Some(false), true));
        assert!(!owed_on_status(false, Some(true), true), "a heartbeat");
        assert!(!owed_on_status(false, Some(true), false), "going away");
        assert!(!owed_on_status(false, None, false));
        for was in [None, Some(false), Some(true)] {
            assert!(!owed_on_status(true, was, true), "the hooks tell instead");
        }
        let r = Resume::default();
        r.status("d1", None, true);
        r.status("d2", Some(true), true);
        assert_eq!(r.take(10), vec!["d1".to_owned()]);
        r.hooks_available(true);
        r.status("d3", Some(false), true);
        assert!(r.take(10).is_empty(), "with hooks, statuses are not used");
    }

    #[test]
    fn devices_are_taken_in_batches() {
        let r = Resume::default();
        for i in 0..5 {
            let d = format!("d{i}");
            r.subscribed(
                &d,
                &topic::topic(&d, topic::Kind::Feedback),
                Subscription::New,
            );
        }
        assert_eq!(r.take(3).len(), 3);
        assert_eq!(r.take(3).len(), 2);
        assert!(r.take(3).is_empty());
    }
}
