//! Which device client ids have a connection open at the broker, so that a second accepted
//! connection under one of them is seen and counted.
//!
//! rumqttd drops the older of two connections with the same client id ("Duplicate client_id",
//! logged by its router and nowhere counted). For a device that reconnects over a half-open
//! connection that is right; in a reconnect storm it is the failure DESIGN §6 warns about:
//! clients that give up on a slow CONNACK and retry evict their own sessions. The count
//! (`yijian_mqtt_duplicate_client_id_total`) makes the second case visible on a dashboard.
//!
//! NOTE: a connection enters the set when its successful CONNACK is written (the router has
//! taken it, and has already dropped any older one by then) and leaves it when the
//! connection's protocol object is dropped, which rumqttd does when the connection ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Open device connections per client id.
#[derive(Debug, Default)]
pub struct OpenSessions {
    open: Mutex<HashMap<String, u32>>,
}

impl OpenSessions {
    /// Connections currently open under `client_id`.
    pub fn count(&self, client_id: &str) -> u32 {
        self.open
            .lock()
            .expect("sessions lock is never poisoned")
            .get(client_id)
            .copied()
            .unwrap_or(0)
    }

    /// Add one; returns how many were open before.
    fn add(&self, client_id: &str) -> u32 {
        let mut open = self.open.lock().expect("sessions lock is never poisoned");
        let n = open.entry(client_id.to_owned()).or_insert(0);
        *n += 1;
        *n - 1
    }

    fn remove(&self, client_id: &str) {
        let mut open = self.open.lock().expect("sessions lock is never poisoned");
        if let Some(n) = open.get_mut(client_id) {
            *n -= 1;
            if *n == 0 {
                open.remove(client_id);
            }
        }
    }
}

/// One device connection: counted in [`OpenSessions`] from [`Session::accepted`] until dropped.
#[derive(Debug)]
pub struct Session {
    sessions: Arc<OpenSessions>,
    client_id: String,
    counted: AtomicBool,
}

impl Session {
    /// A connection that sent a CONNECT under `client_id`; not counted until accepted.
    pub fn new(sessions: Arc<OpenSessions>, client_id: String) -> Self {
        Session {
            sessions,
            client_id,
            counted: AtomicBool::new(false),
        }
    }

    /// The broker accepted the connection (its CONNACK is going out). Returns true when another
    /// connection under the same client id was still open: the broker has just dropped it as a
    /// duplicate. Only the first call counts.
    pub fn accepted(&self) -> bool {
        if self.counted.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.sessions.add(&self.client_id) > 0
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if *self.counted.get_mut() {
            self.sessions.remove(&self.client_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_accepted_connection_is_a_duplicate_until_the_first_ends() {
        let open = Arc::new(OpenSessions::default());
        let first = Session::new(open.clone(), "dev-1".into());
        assert!(!first.accepted(), "the first connection is no duplicate");
        assert!(!first.accepted(), "counted once");
        let refused = Session::new(open.clone(), "dev-1".into());
        drop(refused); // never accepted: never counted
        assert_eq!(open.count("dev-1"), 1);
        let second = Session::new(open.clone(), "dev-1".into());
        assert!(second.accepted(), "the first one is still open");
        drop(first);
        assert_eq!(open.count("dev-1"), 1);
        drop(second);
        assert_eq!(open.count("dev-1"), 0);
        let third = Session::new(open.clone(), "dev-1".into());
        assert!(
            !third.accepted(),
            "a reconnect after the old connection ended is no duplicate"
        );
        let other = Session::new(open.clone(), "dev-2".into());
        assert!(!other.accepted());
    }
}
