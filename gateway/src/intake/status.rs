//! Statuses: heartbeats and last wills. [`Presence`] keeps who is online and decides when a
//! heartbeat is written to the journal; [`take`] acts on one status message.

use super::context::IntakeContext;
use crate::adapter::Decoded;
use crate::clock::now_ms;
use crate::source::Message;
use crate::telemetry;
use std::collections::HashMap;
use yijian_wire::{Feedback, RejectReason};

/// How often an unchanged heartbeat is written to the journal.
const STATUS_PERSIST_MS: i64 = 60_000;

/// Which devices are online, and when each was last written to the journal.
#[derive(Default)]
pub(super) struct Presence {
    online: HashMap<String, (bool, i64)>,
    online_count: usize,
    offline_count: usize,
}

/// What one status changed.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    /// What the device said before (`None`: nothing since the gateway started).
    was: Option<bool>,
    /// Write it to the journal: it changed, or the last write is [`STATUS_PERSIST_MS`] old.
    persist: bool,
}

impl Presence {
    /// `device_id` says it is `online` at `now`.
    fn observe(&mut self, device_id: &str, online: bool, now: i64) -> Seen {
        let prev = self.online.get(device_id).copied();
        let was = prev.map(|(o, _)| o);
        let changed = was != Some(online);
        let stale = prev
            .map(|(_, t)| now - t >= STATUS_PERSIST_MS)
            .unwrap_or(true);
        match (was, online) {
            (Some(true), false) => {
                self.online_count -= 1;
                self.offline_count += 1;
            }
            (Some(false), true) => {
                self.offline_count -= 1;
                self.online_count += 1;
            }
            (None, true) => self.online_count += 1,
            (None, false) => self.offline_count += 1,
            _ => {}
        }
        let persist = changed || stale;
        if persist {
            self.online.insert(device_id.to_owned(), (online, now));
        } else if let Some(entry) = self.online.get_mut(device_id) {
            entry.0 = online;
        }
        Seen { was, persist }
    }
}

/// Decode one status message and record it.
pub(super) async fn take(ctx: &IntakeContext, presence: &mut Presence, m: &Message) {
    let (device_id, status) = match ctx.adapter.decode(m.topic(), m.payload()) {
        Decoded::Status { device_id, status } => (device_id, status),
        // An empty retained message clears the retained status; nothing to record.
        Decoded::Ignore => return,
        Decoded::Rejected {
            device_id,
            reason,
            message,
            ..
        } => {
            telemetry::status_rejected(reason);
            if let Some(device_id) = device_id {
                ctx.feedback
                    .send(device_id, &Feedback::rejected(None, message, now_ms()))
                    .await;
            }
            return;
        }
        // Presses have a connection of their own: no status filter carries one.
        Decoded::Press { .. } => return,
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
    let seen = presence.observe(device_id, status.online, now);
    if seen.persist {
        let json = serde_json::to_string(&status).expect("status serializes");
        ctx.store.status(device_id, status.online, json, now);
    }
    ctx.resume.status(device_id, seen.was, status.online);
    telemetry::devices_connected(presence.online_count, presence.offline_count);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(p: &Presence) -> (usize, usize) {
        (p.online_count, p.offline_count)
    }

    #[test]
    fn devices_are_counted_online_and_offline_as_they_change() {
        let mut p = Presence::default();
        p.observe("d1", true, 0);
        p.observe("d2", false, 0);
        assert_eq!(counts(&p), (1, 1));
        p.observe("d1", true, 1_000);
        assert_eq!(counts(&p), (1, 1), "a heartbeat changes nothing");
        p.observe("d1", false, 2_000);
        assert_eq!(counts(&p), (0, 2));
        p.observe("d2", true, 3_000);
        p.observe("d1", true, 4_000);
        assert_eq!(counts(&p), (2, 0));
    }

    #[test]
    fn a_status_is_written_on_change_or_once_a_minute() {
        let mut p = Presence::default();
        let first = p.observe("d1", true, 0);
        assert_eq!(
            first,
            Seen {
                was: None,
                persist: true
            }
        );
        let heartbeat = p.observe("d1", true, STATUS_PERSIST_MS - 1);
        assert_eq!(
            heartbeat,
            Seen {
                was: Some(true),
                persist: false
            }
        );
        assert!(
            p.observe("d1", true, STATUS_PERSIST_MS).persist,
            "a minute after the last write"
        );
        assert!(
            !p.observe("d1", true, STATUS_PERSIST_MS + 1).persist,
            "the minute counts from the last write"
        );
        let gone = p.observe("d1", false, STATUS_PERSIST_MS + 2);
        assert_eq!(
            gone,
            Seen {
                was: Some(true),
                persist: true
            },
            "a change is written at once"
        );
    }
}
