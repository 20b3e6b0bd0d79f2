//! The latency breakdown of one request, as `GET /api/v1/requests/{id}` shows it under
//! `stages`: every step from the press on the device to the operator, each with its time and
//! the milliseconds since the press, in the order a press travels.
//!
//! ```json
//! "stages": {
//!   "press":         {"at": "2026-11-28T10:00:00.123Z", "since_press_ms": 0},
//!   "intake":        {"at": "2026-11-28T10:00:00.125Z", "since_press_ms": 2},
//!   "journaled":     {"at": "2026-11-28T10:00:00.127Z", "since_press_ms": 4},
//!   "received_sent": {"at": "2026-11-28T10:00:00.127Z", "since_press_ms": 4},
//!   "attempt_1":     {"at": "2026-11-28T10:00:00.128Z", "since_press_ms": 5, "backend": "rescue-centre", "result": "accepted", "elapsed_ms": 3},
//!   "dispatched":    {"at": "2026-11-28T10:00:00.131Z", "since_press_ms": 8}
//! }
//! ```
//!
//! `press` is on the device clock, everything else on the gateway's: a device clock that is
//! off shows up here as an odd `since_press_ms`. Nothing here is written on the hot path that
//! would not be written anyway, except the `received` event, which rides the next group commit.

use crate::clock::rfc3339_ms;
use serde::ser::{Serialize, SerializeMap, Serializer};

/// One stage.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Stage {
    /// When, RFC 3339 with milliseconds.
    pub at: String,
    /// Milliseconds from the press on the device clock.
    pub since_press_ms: i64,
    /// For an attempt: the backend tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// For an attempt: how it ended (`accepted`, `http_500`, `timeout`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// For an attempt: how long it took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<u64>,
}

/// Every stage a request has passed, in path order; serialized as a JSON object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stages(pub Vec<(String, Stage)>);

impl Serialize for Stages {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (name, stage) in &self.0 {
            m.serialize_entry(name, stage)?;
        }
        m.end()
    }
}

impl Stages {
    /// The stage called `name`, if passed.
    pub fn get(&self, name: &str) -> Option<&Stage> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }
}

/// A dispatch attempt as the history keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptTime {
    /// Attempt number (continues across backends and restarts).
    pub n: u32,
    /// Start, epoch ms.
    pub at: i64,
    /// Backend name.
    pub backend: String,
    /// Result label.
    pub result: String,
    /// Duration.
    pub elapsed_ms: u64,
}

/// The raw times of one request, epoch ms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Times {
    pub press: i64,
    pub intake: i64,
    pub journaled: Option<i64>,
    pub received_sent: Option<i64>,
    pub attempts: Vec<AttemptTime>,
    pub dispatched: Option<i64>,
    pub escalated: Option<i64>,
    pub acknowledged: Option<i64>,
    /// End time and whether it was a cancel.
    pub closed: Option<(i64, bool)>,
}

impl Times {
    /// The breakdown, in the order a press travels.
    pub fn stages(&self) -> Stages {
        let stage = |at: i64| Stage {
            at: rfc3339_ms(at),
            since_press_ms: at - self.press,
            backend: None,
            result: None,
            elapsed_ms: None,
        };
        let mut v = vec![
            ("press".to_owned(), stage(self.press)),
            ("intake".to_owned(), stage(self.intake)),
        ];
        let mut push = |name: &str, at: Option<i64>| {
            if let Some(at) = at {
                v.push((name.to_owned(), stage(at)));
            }
        };
        push("journaled", self.journaled);
        push("received_sent", self.received_sent);
        for a in &self.attempts {
            let mut s = stage(a.at);
            s.backend = Some(a.backend.clone());
            s.result = Some(a.result.clone());
            s.elapsed_ms = Some(a.elapsed_ms);
            v.push((format!("attempt_{}", a.n), s));
        }
        let mut push = |name: &str, at: Option<i64>| {
            if let Some(at) = at {
                v.push((name.to_owned(), stage(at)));
            }
        };
        push("dispatched", self.dispatched);
        push("escalated", self.escalated);
        push("acknowledged", self.acknowledged);
        if let Some((at, cancelled)) = self.closed {
            push(if cancelled { "cancelled" } else { "closed" }, Some(at));
        }
        Stages(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_follow_the_path_and_count_from_the_press() {
        let t = Times {
            press: 1_000,
            intake: 1_002,
            journaled: Some(1_004),
            received_sent: Some(1_005),
            attempts: vec![
                AttemptTime {
                    n: 1,
                    at: 1_006,
                    backend: "a".into(),
                    result: "http_500".into(),
                    elapsed_ms: 3,
                },
                AttemptTime {
                    n: 2,
                    at: 1_020,
                    backend: "b".into(),
                    result: "accepted".into(),
                    elapsed_ms: 4,
                },
            ],
            dispatched: Some(1_025),
            closed: Some((9_000, true)),
            ..Default::default()
        };
        let s = t.stages();
        let names: Vec<_> = s.0.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "press",
                "intake",
                "journaled",
                "received_sent",
                "attempt_1",
                "attempt_2",
                "dispatched",
                "cancelled"
            ]
        );
        assert_eq!(s.get("dispatched").unwrap().since_press_ms, 25);
        assert_eq!(s.get("press").unwrap().at, "1970-01-01T00:00:01.000Z");
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.starts_with(
                r#"{"press":{"at":"1970-01-01T00:00:01.000Z","since_press_ms":0},"intake""#
            ),
            "{json}"
        );
        assert!(json.contains(r#""attempt_2":{"at":"1970-01-01T00:00:01.020Z","since_press_ms":20,"backend":"b","result":"accepted","elapsed_ms":4}"#));
    }

    #[test]
    fn a_replayed_request_has_no_received_stage() {
        let t = Times {
            press: 5,
            intake: 7,
            escalated: Some(20_007),
            acknowledged: Some(30_000),
            ..Default::default()
        };
        let names: Vec<_> = t.stages().0.into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["press", "intake", "escalated", "acknowledged"]);
    }
}
