//! `[dispatch]`, `[services.NAME]`, `[backends.NAME]`, `[notify]` and `[shutdown]`: where each
//! service's requests go, how hard dispatch tries, and how long it may finish on a stop.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use yijian_wire::Service;

/// `[dispatch]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchConfig {
    /// First backoff delay.
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_ms: u64,
    /// Largest backoff delay.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    /// Attempts on one backend before failing over.
    #[serde(default = "default_attempts_per_backend")]
    pub attempts_per_backend: u32,
    /// Consecutive failures that open a backend's circuit.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open circuit waits before a probe.
    #[serde(default = "default_breaker_cooldown")]
    pub breaker_cooldown_ms: u64,
    /// Most requests in dispatch at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// How long a backend cancellation or a contact notification is retried before it is
    /// given up (and the request's history says so), in seconds.
    #[serde(default = "default_followup_deadline")]
    pub followup_deadline_s: u64,
}

fn default_backoff_initial() -> u64 {
    200
}
fn default_backoff_max() -> u64 {
    5000
}
fn default_attempts_per_backend() -> u32 {
    3
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown() -> u64 {
    10_000
}
fn default_max_in_flight() -> usize {
    20_000
}
fn default_followup_deadline() -> u64 {
    3600
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            backoff_initial_ms: default_backoff_initial(),
            backoff_max_ms: default_backoff_max(),
            attempts_per_backend: default_attempts_per_backend(),
            breaker_failures: default_breaker_failures(),
            breaker_cooldown_ms: default_breaker_cooldown(),
            max_in_flight: default_max_in_flight(),
            followup_deadline_s: default_followup_deadline(),
        }
    }
}

/// `[services.NAME]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Backend names in order of preference; `desk` is the operator queue.
    #[serde(default)]
    pub backends: Vec<String>,
    /// Timeout of one HTTP attempt; the service's default when absent.
    #[serde(default)]
    pub attempt_timeout_ms: Option<u64>,
    /// Seconds from the press until a human operator takes over; the service's default when absent.
    #[serde(default)]
    pub deadline_s: Option<u64>,
    /// Notify the resident's contacts through `[notify] backend` when a request of this
    /// service goes to the desk; default true for `rescue`, false for the others.
    #[serde(default)]
    pub notify_contacts: Option<bool>,
}

/// Default attempt timeout (ms) and deadline (s) of each service.
pub(super) fn service_defaults(service: Service) -> (u64, u64) {
    match service {
        Service::Rescue => (2000, 20),
        Service::Taxi => (3000, 120),
        Service::Hospital => (3000, 300),
        Service::WelfareCheck => (3000, 600),
        Service::Maintenance => (3000, 3600),
    }
}

/// A service's routing, resolved and validated.
#[derive(Debug, Clone)]
pub struct ServiceRoute {
    /// Backend names in order; may include `desk`.
    pub backends: Vec<String>,
    /// Timeout of one attempt.
    pub attempt_timeout: Duration,
    /// From request creation until escalation to `desk`.
    pub deadline: Duration,
    /// Whether the resident's contacts are notified when it goes to the desk.
    pub notify_contacts: bool,
}

/// `[backends.NAME]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Where requests are POSTed.
    pub url: String,
    /// Environment variable holding the bearer token (kept out of files and logs).
    #[serde(default)]
    pub token_env: Option<String>,
}

/// `[notify]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// The notification backend (an HTTP webhook, e.g. an SMS gateway), named like a dispatch
    /// backend under `[backends.NAME]`. Absent: contacts are not notified, and the request's
    /// history says so.
    #[serde(default)]
    pub backend: Option<String>,
}

/// `[shutdown]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// On SIGTERM, how long dispatches in flight may take to finish before they are left in
    /// the outbox for the next start, in milliseconds.
    #[serde(default = "default_grace_ms")]
    pub grace_ms: u64,
}

fn default_grace_ms() -> u64 {
    10_000
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_ms: default_grace_ms(),
        }
    }
}
