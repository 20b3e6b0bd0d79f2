//! What the gateway tells a device about its press.

use crate::kinds::Service;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a press stands, as the device hears it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackState {
    /// Durably journaled: the press will not be lost.
    Received,
    /// A backend accepted the request.
    Dispatched,
    /// Help is on its way.
    EnRoute,
    /// Help has arrived.
    Arrived,
    /// The request is finished.
    Closed,
    /// The request was cancelled.
    Cancelled,
    /// A human operator has it.
    Escalated,
    /// The press itself was invalid; never sent for a backend failure.
    Rejected,
}

impl FeedbackState {
    /// Every state.
    pub const ALL: &'static [FeedbackState] = &[
        FeedbackState::Received,
        FeedbackState::Dispatched,
        FeedbackState::EnRoute,
        FeedbackState::Arrived,
        FeedbackState::Closed,
        FeedbackState::Cancelled,
        FeedbackState::Escalated,
        FeedbackState::Rejected,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackState::Received => "received",
            FeedbackState::Dispatched => "dispatched",
            FeedbackState::EnRoute => "en_route",
            FeedbackState::Arrived => "arrived",
            FeedbackState::Closed => "closed",
            FeedbackState::Cancelled => "cancelled",
            FeedbackState::Escalated => "escalated",
            FeedbackState::Rejected => "rejected",
        }
    }
}

impl fmt::Display for FeedbackState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FeedbackState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        FeedbackState::ALL
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<_> = FeedbackState::ALL.iter().map(|v| v.as_str()).collect();
                format!("state must be one of {}", all.join("|"))
            })
    }
}

/// One message on `yijian/v1/devices/{id}/feedback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    /// The press this answers; the device stops retransmitting it. Absent only when a rejected
    /// message carried no usable press id (a bad status, an id that breaks the id rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub press: Option<String>,
    /// The request the press became (absent for `rejected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The request's service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Service>,
    /// Where it stands.
    pub state: FeedbackState,
    /// The backend's reference, when it gave one.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Estimated seconds until help arrives, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<u32>,
    /// Why, for `rejected` and a few explanatory cases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Gateway clock, epoch milliseconds.
    pub at: i64,
}

impl Feedback {
    /// A `rejected` answer to press `press_id` (when the message had a usable id).
    pub fn rejected(press_id: Option<String>, reason: impl Into<String>, at: i64) -> Self {
        Feedback {
            press: press_id,
            request: None,
            service: None,
            state: FeedbackState::Rejected,
            reference: None,
            eta_s: None,
            reason: Some(reason.into()),
            at,
        }
    }

    /// Serialize for the wire.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("feedback has only serializable fields")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_design_examples() {
        let f = Feedback {
            press: Some("b7-000123".into()),
            request: Some("rq_1".into()),
            service: Some(Service::Taxi),
            state: FeedbackState::Dispatched,
            reference: Some("TX-8812".into()),
            eta_s: Some(600),
            reason: None,
            at: 5,
        };
        let v: serde_json::Value = serde_json::from_slice(&f.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"press":"b7-000123","request":"rq_1","service":"taxi","state":"dispatched","ref":"TX-8812","eta_s":600,"at":5})
        );
        let back: Feedback = serde_json::from_value(v).unwrap();
        assert_eq!(back, f);

        let r = Feedback::rejected(
            Some("b7-1".into()),
            "gesture must be one of single|double|triple|long",
            9,
        );
        let v: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"press":"b7-1","state":"rejected","reason":"gesture must be one of single|double|triple|long","at":9})
        );
    }

    #[test]
    fn state_spelling() {
        for s in FeedbackState::ALL {
            assert_eq!(s.as_str().parse::<FeedbackState>().unwrap(), *s);
            assert_eq!(
                serde_json::to_string(s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert!("done"
            .parse::<FeedbackState>()
            .unwrap_err()
            .starts_with("state must be one of received|"));
    }
}
