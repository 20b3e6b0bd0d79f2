//! What the journal shows of requests: the API's request view (list and detail) and its
//! filter. Every engine returns these.

use super::model::RequestState;
use super::stages::Stages;
use serde::Serialize;
use yijian_wire::Service;

/// A request as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestView {
    pub request_id: String,
    pub service: String,
    pub priority: String,
    pub tags: Vec<String>,
    pub state: String,
    /// The device it is about (`null` for a request about a resident alone).
    pub device_id: Option<String>,
    pub resident_id: Option<String>,
    /// What started it: `{"kind": "press"}`, `{"kind": "supervision", "reason": ...}` or
    /// `{"kind": "operator", "operator": ...}`.
    pub origin: serde_json::Value,
    /// The press that started it (`null` unless `origin.kind` is `press`).
    pub press: Option<PressView>,
    pub rule: String,
    pub backend: Option<String>,
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    pub eta_s: Option<u32>,
    pub created_at: String,
    pub updated_at: String,
    pub dispatched_at: Option<String>,
    pub escalated_at: Option<String>,
    pub acknowledged_at: Option<String>,
    pub closed_at: Option<String>,
    /// The resident asked to cancel while help was on its way: an operator confirms by phone.
    pub cancel_requested_at: Option<String>,
    /// The resident's record as on file now (detail view only; `null` when none is on record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resident: Option<serde_json::Value>,
    /// Every state change, attempt and callback, oldest first (detail view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<EventView>>,
    /// The latency breakdown: each stage's time and ms since the press (detail view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stages: Option<Stages>,
}

/// The press that created a request.
#[derive(Debug, Clone, Serialize)]
pub struct PressView {
    pub id: String,
    pub button: String,
    pub gesture: String,
    pub at: String,
    pub battery: Option<u8>,
}

/// One entry of a request's history.
#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub at: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// Filters of `GET /api/v1/requests`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub state: Option<RequestState>,
    pub service: Option<Service>,
    pub device_id: Option<String>,
    /// Only requests whose resident asked to cancel while help was on its way (`true`) or
    /// only the others (`false`).
    pub cancel_requested: Option<bool>,
    pub limit: u32,
}
