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

/// Where a request came from (DESIGN §3): the lifecycle is the same for all three.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// A device's press.
    Press(Press),
    /// The gateway noticed a device or resident (`offline`, `battery_low`, `missed_checkin`,
    /// `mass_offline`, ...): the request names the device and resident it is about.
    Supervision {
        /// Why, in one bounded word.
        reason: String,
    },
    /// Created by hand at the desk (a resident who phoned).
    Operator {
        /// The operator's name.
        name: String,
    },
}

impl Origin {
    /// `press`, `supervision` or `operator`.
    pub fn kind(&self) -> &'static str {
        match self {
            Origin::Press(_) => "press",
            Origin::Supervision { .. } => "supervision",
            Origin::Operator { .. } => "operator",
        }
    }

    /// The backend body's `origin` block (DESIGN §4).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Origin::Press(_) => serde_json::json!({"kind": "press"}),
            Origin::Supervision { reason } => {
                serde_json::json!({"kind": "supervision", "reason": reason})
            }
            Origin::Operator { name } => serde_json::json!({"kind": "operator", "operator": name}),
        }
    }

    /// Read back what [`Origin::to_json`] wrote for a request no press started.
    pub fn from_json(v: &serde_json::Value) -> Result<Origin, String> {
        let text = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_owned)
                .ok_or_else(|| format!("origin {v} has no {k}"))
        };
        match v.get("kind").and_then(|k| k.as_str()) {
            Some("supervision") => Ok(Origin::Supervision {
                reason: text("reason")?,
            }),
            Some("operator") => Ok(Origin::Operator {
                name: text("operator")?,
            }),
            _ => Err(format!("origin {v} is not supervision or operator")),
        }
    }
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
    /// The device it is about: the one that pressed, or the one supervision noticed. `None`
    /// for a request about a resident alone (an operator's, a missed check-in without device).
    pub device_id: Option<String>,
    /// What started it; a press request carries its press.
    pub origin: Origin,
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

impl Request {
    /// The press that started it, for a press request.
    pub fn press(&self) -> Option<&Press> {
        match &self.origin {
            Origin::Press(p) => Some(p),
            _ => None,
        }
    }
}

/// A request no press started, on its way into the journal.
#[derive(Debug, Clone)]
pub struct NewRequest {
    /// What is asked for.
    pub service: Service,
    /// How urgent.
    pub priority: Priority,
    /// Hints for the backend.
    pub tags: Vec<String>,
    /// Supervision or operator (a press goes through [`PressEntry`]).
    pub origin: Origin,
    /// The device it is about, if any.
    pub device_id: Option<String>,
    /// The resident it is about, if any.
    pub resident_id: Option<String>,
    /// Gateway clock, epoch ms: becomes `created_at`.
    pub at: i64,
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
    /// The press the feedback answers; `None` for a request no press started that names the
    /// device (supervision).
    pub press_id: Option<String>,
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
            press: self.press_id.clone(),
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

/// One committed request transition.
#[derive(Debug, Clone)]
pub struct Change {
    /// The history entry's position (`request_events.seq`): increases in commit order.
    pub seq: i64,
    /// The request.
    pub request_id: String,
    /// Its service.
    pub service: Service,
    /// Its state after the change.
    pub state: RequestState,
    /// The history's event kind (one of `changes::KINDS`).
    pub kind: String,
    /// When, gateway clock, epoch ms.
    pub at: i64,
    /// What a device hears because of it, when a device is to be told: the device whose press
    /// started the request (or that the request names), and the press it answers.
    pub notice: Option<Notice>,
    /// The device has already been told, by the stage that caused the change: intake answers
    /// the press that created a request with `received` itself, right after the commit and
    /// before the request goes to dispatch (so the resident hears it before any backend is
    /// called). A subscriber that tells devices skips it.
    pub answered: bool,
}
