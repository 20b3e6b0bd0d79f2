//! Dropping a device's live connection after its credentials changed (revoke, rotate).
//!
//! The CLI runs in another process, so the running gateway polls the journal's
//! `device_changes` log. For each change it (1) refreshes the device directory, so intake stops
//! taking presses from a revoked device, (2) records the moment in [`CredentialChanges`], which
//! [`super::Acl`] checks on every packet: a connection made before the change is closed at its
//! next packet, whatever race the next step loses, and (3) pushes the connection out at once.
//!
//! rumqttd has no "kick client" API, but it drops an existing connection when a new one arrives
//! with the same client id (MQTT 3.1.1 §3.1.4). So (3) connects under the device's client id
//! with username [`EVICT_USER`] and the gateway's own secret, `clean_session = true` (which also
//! discards the device's stored session and queued feedback), and disconnects at once. That
//! account can do nothing else: [`super::Acl`] closes it on any PUBLISH or SUBSCRIBE.

use crate::config::MqttConfig;
use crate::devices::Directory;
use crate::store::Store;
use crate::telemetry::security as telemetry;
use rumqttc::{Event, MqttOptions, Packet};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Username of the gateway's evicting connection (its client id is the device's).
pub const EVICT_USER: &str = "yijian.gateway.evict";

/// How often the journal's change log is polled.
pub const POLL: Duration = Duration::from_millis(250);

/// When each device's credentials last changed during this process's life.
#[derive(Debug, Default)]
pub struct CredentialChanges {
    /// Fast path: false until the first change, so the ACL takes no lock before.
    any: AtomicBool,
    at: RwLock<HashMap<String, Instant>>,
}

impl CredentialChanges {
    /// Record that `device_id`'s credentials changed at `at`.
    pub fn record(&self, device_id: &str, at: Instant) {
        self.at
            .write()
            .expect("changes lock is never poisoned")
            .insert(device_id.to_owned(), at);
        self.any.store(true, Ordering::Release);
    }

    /// Whether `device_id`'s credentials changed after `since`.
    pub fn changed_since(&self, device_id: &str, since: Instant) -> bool {
        self.any.load(Ordering::Acquire)
            && self
                .at
                .read()
                .expect("changes lock is never poisoned")
                .get(device_id)
                .is_some_and(|t| *t > since)
    }
}

/// Poll the change log until `shutdown`; `from` is the log position already seen.
pub fn start(
    cfg: MqttConfig,
    store: Store,
    directory: Directory,
    changes: Arc<CredentialChanges>,
    secret: Arc<str>,
    from: i64,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = from;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(POLL) => {}
            }
            let entries = match store.credential_changes(seen).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the device change log");
                    continue;
                }
            };
            for e in entries {
                seen = e.seq;
                changes.record(&e.device_id, Instant::now());
                if let Err(err) = directory.load(&e.device_id) {
                    tracing::warn!(device_id = %e.device_id, error = %err, "device directory not refreshed");
                }
                evict(&cfg, &e.device_id, &secret).await;
                telemetry::eviction(e.change == crate::store::REVOKED, &e.device_id);
            }
        }
    })
}

/// Take over `device_id`'s client id with a clean session and leave at once.
pub async fn evict(cfg: &MqttConfig, device_id: &str, secret: &str) {
    let host = if cfg.listen.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        cfg.listen.ip().to_string()
    };
    let mut o = MqttOptions::new(device_id, host, cfg.listen.port());
    o.set_credentials(EVICT_USER, secret);
    o.set_clean_session(true);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = rumqttc::AsyncClient::new(o, 4);
    let run = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_disconnect();
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), run).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(device_id, error = %e, "evicting connection failed"),
        Err(_) => tracing::warn!(device_id, "evicting connection timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connections_older_than_the_change_are_affected() {
        let c = CredentialChanges::default();
        let before = Instant::now();
        assert!(!c.changed_since("d1", before));
        c.record("d1", Instant::now());
        let after = Instant::now();
        assert!(c.changed_since("d1", before));
        assert!(!c.changed_since("d1", after));
        assert!(!c.changed_since("d2", before));
    }
}
