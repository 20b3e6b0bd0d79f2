//! The owned types that travel between stages: what intake hands the journal, what the journal
//! hands dispatch, and the request states the journal keeps.

use serde::Serialize;
use std::fmt;
use std::str::FromStr;
use yijian_wire::{FeedbackState, Press, Priority, Service};

/// Where a request stands, as journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Journaled; waiting in the outbox for a backend.
    Received,
    /// A backend accepted it.
    Dispatched,
    /// The backend says help is on its way.
    EnRoute,
    /// The backend says help has arrived.
    Arrived,
    /// Waiting for a human operator at the desk.
    Escalated,
    /// An operator has taken it.
    Acknowledged,
    /// Finished.
    Closed,
    /// Cancelled by the resident (or the backend).
    Cancelled,
}

impl RequestState {
    /// Every state.
    pub const ALL: &'static [RequestState] = &[
        RequestState::Received,
        RequestState::Dispatched,
        RequestState::EnRoute,
        RequestState::Arrived,
        RequestState::Escalated,
        RequestState::Acknowledged,
        RequestState::Closed,
        RequestState::Cancelled,
    ];

    /// The journal and API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Received => "received",
            RequestState::Dispatched => "dispatched",
            RequestState::EnRoute => "en_route",
            RequestState::Arrived => "arrived",
            RequestState::Escalated => "escalated",
            RequestState::Acknowledged => "acknowledged",
            RequestState::Closed => "closed",
            RequestState::Cancelled => "cancelled",
        }
    }

    /// Neither closed nor cancelled.
    pub fn is_open(self) -> bool {
        !matches!(self, RequestState::Closed | RequestState::Cancelled)
    }

    /// What the device hears for this state. An operator's acknowledgement is still
    /// "a person has it" to the resident.
    pub fn feedback(self) -> FeedbackState {
        match self {
            RequestState::Received => FeedbackState::Received,
            RequestState::Dispatched => FeedbackState::Dispatched,
            RequestState::EnRoute => FeedbackState::EnRoute,
            RequestState::Arrived => FeedbackState::Arrived,
            RequestState::Escalated | RequestState::Acknowledged => FeedbackState::Escalated,
            RequestState::Closed => FeedbackState::Closed,
            RequestState::Cancelled => FeedbackState::Cancelled,
        }
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RequestState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RequestState::ALL
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<_> = RequestState::ALL.iter().map(|v| v.as_str()).collect();
                format!("state must be one of {}", all.join("|"))
            })
    }
}

/// What the rules decided for a press, in the journal's terms.
#[derive(Debug, Clone, PartialEq)]
pub enum PressAction {
    /// Create a request.
    Request {
        /// The service asked for.
        service: Service,
        /// How urgent.
        priority: Priority,
        /// Extra hints for the backend (e.g. `wheelchair_accessible`).
        tags: Vec<String>,
    },
    /// Cancel the device's most recent open request inside the window.
    Cancel {
        /// How far back an open request may be cancelled, in milliseconds.
        window_ms: i64,
    },
}

/// A validated press on its way into the journal.
#[derive(Debug, Clone)]
pub struct PressEntry {
    /// The device named by the topic (and authenticated by the broker).
    pub device_id: String,
    /// The press itself.
    pub press: Press,
    /// What it becomes.
    pub action: PressAction,
    /// The rule that decided, for the history.
    pub rule: String,
    /// The resident bound to the device, if any.
    pub resident_id: Option<String>,
    /// Gateway clock at intake, epoch ms: becomes the request's `created_at`.
    pub intake_at: i64,
    /// A request press joins the device's open request of the same service created within
    /// this many milliseconds, instead of opening a second one (flood control: a stuck button
    /// must not book ten taxis). 0 turns it off.
    pub attach_window_ms: i64,
}

/// A request as dispatch needs it: everything for the backend body.
#[derive(Debug, Clone)]
pub struct Request {
    /// `rq_` + ULID; also the Idempotency-Key.
    pub id: String,
    /// What is asked for.
    pub service: Service,
    /// How urgent.
    pub priority: Priority,
    /// Hints for the backend.
    pub tags: Vec<String>,
    /// The device that pressed.
    pub device_id: String,
    /// The press that created it.
    pub press: Press,
    /// The resident bound to the device, if any.
    pub resident_id: Option<String>,
    /// Gateway clock at intake, epoch ms.
    pub created_at: i64,
    /// Dispatch attempts already journaled (non-zero after a restart).
    pub attempts: u32,
    /// When the journal's commit of the press finished, epoch ms; `None` when the request was
    /// replayed from the outbox. Recorded with the `received` stage (see `Store::received_sent`).
    pub journaled_at: Option<i64>,
}

/// The journal's answer to a press.
#[derive(Debug, Clone)]
pub enum PressOutcome {
    /// A new request was created and queued for dispatch.
    Created(Request),
    /// The press was seen before: here is where it stands.
    Duplicate(Notice),
    /// The device's open request was cancelled.
    Cancelled {
        /// What the device hears.
        notice: Notice,
        /// The backend that had accepted it, if any (to be told).
        backend: Option<String>,
    },
    /// A cancel press found nothing open to cancel.
    NothingToCancel(Notice),
    /// A cancel press on a rescue already on its way: the request stays open, flagged for an
    /// operator to confirm by phone; the device hears where it stands and why.
    CancelFlagged(Notice),
    /// The device already had an open request of this service: the press joined it as a
    /// "pressed again" event (repeated presses signal urgency).
    PressedAgain {
        /// The open request's current state, answering this press.
        notice: Notice,
        /// What to tell the backend that holds the request, when an HTTP backend does.
        update: Option<RequestUpdate>,
    },
}

/// A "pressed again" update for the backend that holds a request (README: the update call).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestUpdate {
    /// The request.
    pub request_id: String,
    /// The backend that accepted it.
    pub backend: String,
    /// Presses for this request so far, the first one included.
    pub count: u32,
    /// The press that joined.
    pub press: Press,
    /// Gateway clock at intake, epoch ms.
    pub at: i64,
}

/// A feedback-worthy fact about a request: who to tell and what.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// The device to tell.
    pub device_id: String,
    /// The press the feedback answers.
    pub press_id: String,
    /// The request, if the press became one.
    pub request_id: Option<String>,
    /// Its service.
    pub service: Option<Service>,
    /// What the device hears.
    pub state: FeedbackState,
    /// The backend's reference.
    pub reference: Option<String>,
    /// Estimated seconds to arrival.
    pub eta_s: Option<u32>,
    /// An explanation, when useful.
    pub reason: Option<String>,
}

impl Notice {
    /// As a feedback message stamped with `at`.
    pub fn feedback(&self, at: i64) -> yijian_wire::Feedback {
        yijian_wire::Feedback {
            press: Some(self.press_id.clone()),
            request: self.request_id.clone(),
            service: self.service,
            state: self.state,
            reference: self.reference.clone(),
            eta_s: self.eta_s,
            reason: self.reason.clone(),
            at,
        }
    }
}

/// How a dispatch attempt ended, for the journal.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// The request.
    pub request_id: String,
    /// The backend tried.
    pub backend: String,
    /// Attempt number, from 1, across restarts.
    pub attempt: u32,
    /// Bounded result label (`accepted`, `conflict`, `http_500`, `timeout`, ...).
    pub result: &'static str,
    /// When it started, epoch ms.
    pub started_at: i64,
    /// How long it took.
    pub elapsed_ms: u64,
}

/// A registered device.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceRecord {
    /// The id, equal to its MQTT client id and username.
    pub device_id: String,
    /// SHA-256 of the secret.
    #[serde(skip)]
    pub secret_sha256: Vec<u8>,
    /// The device model's profile (how many buttons).
    pub profile: String,
    /// The resident it belongs to.
    pub resident_id: Option<String>,
    /// Registration time, epoch ms.
    pub created_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
    /// Last time a status arrived, epoch ms.
    pub last_seen_at: Option<i64>,
    /// Whether the latest status said online.
    pub online: Option<bool>,
}
