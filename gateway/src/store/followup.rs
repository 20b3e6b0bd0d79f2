//! Follow-ups: what the gateway still owes an HTTP endpoint after a request changed — a
//! backend's cancellation (`cancel`) and a contact's notification (`notify`). The journal's
//! second outbox: a follow-up is written in the same transaction as the change that needs it,
//! delivered and retried by `dispatch::followup`, and picked up again after a restart. The
//! endpoint sees the same `Idempotency-Key` on every attempt, so a replay is harmless.
//!
//! Every step lands in the request's history (`request_events`), where operators look. The
//! types and the bodies are here; the engine keeps the rows (`sqlite/followup.rs`).

use super::records::{Contact, Resident};
use crate::clock::rfc3339_ms;
use serde::Serialize;
use serde_json::json;
use yijian_wire::Service;

/// What a follow-up is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `POST {backend.url}/{request_id}/cancel`: the backend that has the request drops it.
    Cancel,
    /// `POST {notify backend url}`: one contact is told about the resident's request.
    Notify,
}

impl Kind {
    /// The journal and metric spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Cancel => "cancel",
            Kind::Notify => "notify",
        }
    }
}

/// One follow-up owed, as the deliverer needs it.
#[derive(Debug, Clone)]
pub struct Followup {
    /// What the endpoint sees as `Idempotency-Key` (`{request_id}:cancel`, `{request_id}:notify:{n}`).
    pub key: String,
    /// The backend (configuration name) it goes to.
    pub target: String,
    /// The request it is about.
    pub request_id: String,
    pub kind: Kind,
    /// The JSON body, fixed when the follow-up was written.
    pub body: String,
    /// Attempts already made (across restarts), for `X-Yijian-Attempt`.
    pub attempts: u32,
    /// When it was written, epoch ms: its retry deadline counts from here.
    pub created_at: i64,
}

/// How a follow-up ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// 2xx (or 409: the endpoint already had it).
    Delivered,
    /// 404 to a cancellation: the backend does not have the request; nothing to cancel.
    Unknown,
    /// Another 4xx: the endpoint will not take it.
    Refused(u16),
    /// Retried until the follow-up deadline without an answer.
    Expired,
    /// Its backend is no longer in the configuration.
    Unconfigured,
}

impl Ending {
    /// Bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            Ending::Delivered => "delivered",
            Ending::Unknown => "unknown",
            Ending::Refused(_) => "refused",
            Ending::Expired => "expired",
            Ending::Unconfigured => "unconfigured",
        }
    }
}

/// Whether contacts are told when a request goes to the desk (the service's policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyContacts {
    /// The service does not notify contacts.
    No,
    /// Notify through this backend.
    Via(String),
    /// The service would, but no `[notify] backend` is configured: the history says so.
    Unconfigured,
}

/// The request fields a notification talks about.
pub struct About {
    pub service: Service,
    pub priority: String,
    pub created_at: i64,
    pub resident_id: Option<String>,
}

/// The notification webhook's body: who to tell, what about, and a message ready to send.
pub fn notify_body(
    request_id: &str,
    about: &About,
    resident: &Resident,
    contact: &Contact,
    n: usize,
    reason: &str,
    at: i64,
) -> serde_json::Value {
    let why = match reason {
        "routed" | "failover" => "an operator at the alarm centre is handling it",
        _ => "the dispatch service could not take it in time, so an operator at the alarm centre is handling it",
    };
    let message = format!(
        "{} ({}) pressed the {} button at {}; {why}. Request {request_id}.",
        resident.name,
        resident
            .address
            .as_deref()
            .unwrap_or("address not on record"),
        about.service,
        rfc3339_ms(about.created_at),
    );
    json!({
        "notification_id": format!("{request_id}:notify:{n}"),
        "request_id": request_id,
        "service": about.service,
        "priority": about.priority,
        "event": "escalated",
        "reason": reason,
        "to": contact,
        "resident": {"id": resident.id, "name": resident.name, "phone": resident.phone, "address": resident.address},
        "message": message,
        "created_at": rfc3339_ms(at),
    })
}
