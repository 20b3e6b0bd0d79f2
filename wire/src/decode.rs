//! Decoding and validating what devices send. Every failure names its reason precisely, in
//! words a device integrator can act on, plus a bounded [`RejectReason`] for metrics.

use crate::kinds::Gesture;
use crate::{MAX_AT_MS, MAX_BUTTON_CHARS, MAX_PAYLOAD_BYTES, MAX_PRESS_ID_CHARS};
use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt;

/// One button event, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Press {
    /// Unique per device for the device's lifetime; a retransmission reuses it.
    pub id: String,
    /// The device's own label for the button (`main`, `red`, ...).
    pub button: String,
    /// How it was pressed.
    pub gesture: Gesture,
    /// Epoch milliseconds on the device clock (a queued press can be old).
    pub at: i64,
    /// Battery percentage, when the device reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub battery: Option<u8>,
}

/// A heartbeat or last will, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// `false` in the device's last will.
    pub online: bool,
    /// Battery percentage.
    pub battery: Option<u8>,
    /// Signal strength in dBm.
    pub rssi: Option<i16>,
    /// Firmware version.
    pub fw: Option<String>,
    /// Epoch milliseconds on the device clock.
    pub at: Option<i64>,
}

/// The bounded vocabulary of rejection reasons: the `reason` label of
/// `yijian_press_rejected_total`. Never grows with input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Payload bytes are not UTF-8.
    NotUtf8,
    /// Payload exceeds [`MAX_PAYLOAD_BYTES`].
    TooLarge,
    /// Payload does not parse as JSON.
    NotJson,
    /// Payload is JSON but not an object.
    NotObject,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// `id` breaks its rule.
    InvalidId,
    /// `button` breaks its rule.
    InvalidButton,
    /// `gesture` is not one of the four.
    InvalidGesture,
    /// `at` is not plausible epoch milliseconds.
    InvalidAt,
    /// `battery` is out of range.
    InvalidBattery,
    /// A status field is out of range.
    InvalidStatus,
    /// The topic names a device that is not registered (gateway side).
    UnknownDevice,
    /// The topic is outside `yijian/v1/devices/{id}/…` (gateway side).
    BadTopic,
}

impl RejectReason {
    /// Every reason, for pre-registering metrics.
    pub const ALL: &'static [RejectReason] = &[
        RejectReason::NotUtf8,
        RejectReason::TooLarge,
        RejectReason::NotJson,
        RejectReason::NotObject,
        RejectReason::MissingField,
        RejectReason::WrongType,
        RejectReason::InvalidId,
        RejectReason::InvalidButton,
        RejectReason::InvalidGesture,
        RejectReason::InvalidAt,
        RejectReason::InvalidBattery,
        RejectReason::InvalidStatus,
        RejectReason::UnknownDevice,
        RejectReason::BadTopic,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::NotUtf8 => "not_utf8",
            RejectReason::TooLarge => "too_large",
            RejectReason::NotJson => "not_json",
            RejectReason::NotObject => "not_object",
            RejectReason::MissingField => "missing_field",
            RejectReason::WrongType => "wrong_type",
            RejectReason::InvalidId => "invalid_id",
            RejectReason::InvalidButton => "invalid_button",
            RejectReason::InvalidGesture => "invalid_gesture",
            RejectReason::InvalidAt => "invalid_at",
            RejectReason::InvalidBattery => "invalid_battery",
            RejectReason::InvalidStatus => "invalid_status",
            RejectReason::UnknownDevice => "unknown_device",
            RejectReason::BadTopic => "bad_topic",
        }
    }
}

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Bounded reason, for metrics.
    pub reason: RejectReason,
    /// Precise human-readable reason, sent back to the device.
    pub message: String,
    /// The press id, when the payload carried a usable one: the device needs it to match the
    /// `rejected` feedback to the press it keeps retransmitting.
    pub press_id: Option<String>,
}

impl Rejection {
    fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Rejection {
            reason,
            message: message.into(),
            press_id: None,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Rejection {}

/// Decode a press payload. Returns the press and how many unknown fields it carried (they are
/// ignored, and counted by the gateway).
pub fn decode_press(payload: &[u8]) -> Result<(Press, usize), Rejection> {
    let obj = object(payload)?;
    let press_id = usable_id(obj.get("id"));
    press_fields(&obj).map_err(|mut r| {
        r.press_id = press_id;
        r
    })
}

fn press_fields(obj: &Map<String, Value>) -> Result<(Press, usize), Rejection> {
    let id = required_str(obj, "id")?;
    if id.is_empty() {
        return Err(Rejection::new(
            RejectReason::InvalidId,
            "id must not be empty",
        ));
    }
    if id.chars().count() > MAX_PRESS_ID_CHARS {
        return Err(Rejection::new(
            RejectReason::InvalidId,
            format!("id longer than {MAX_PRESS_ID_CHARS} characters"),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(Rejection::new(
            RejectReason::InvalidId,
            "id must not contain control characters",
        ));
    }

    let button = required_str(obj, "button")?;
    if button.is_empty() {
        return Err(Rejection::new(
            RejectReason::InvalidButton,
            "button must not be empty",
        ));
    }
    if button.chars().count() > MAX_BUTTON_CHARS {
        return Err(Rejection::new(
            RejectReason::InvalidButton,
            format!("button longer than {MAX_BUTTON_CHARS} characters"),
        ));
    }
    if !button
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(Rejection::new(
            RejectReason::InvalidButton,
            "button may contain only a-z, 0-9, '_' and '-'",
        ));
    }

    let gesture: Gesture = required_str(obj, "gesture")?
        .parse()
        .map_err(|m: String| Rejection::new(RejectReason::InvalidGesture, m))?;

    let at = match obj.get("at") {
        None | Some(Value::Null) => return Err(missing("at")),
        Some(v) => epoch_ms(v, "at")?,
    };

    let battery = match obj.get("battery") {
        None | Some(Value::Null) => None,
        Some(v) => Some(percent(v, "battery", RejectReason::InvalidBattery)?),
    };

    let known = ["id", "button", "gesture", "at", "battery"];
    let unknown = obj.keys().filter(|k| !known.contains(&k.as_str())).count();
    Ok((
        Press {
            id: id.to_owned(),
            button: button.to_owned(),
            gesture,
            at,
            battery,
        },
        unknown,
    ))
}

/// Decode a status payload (heartbeat or last will). Returns the status and how many unknown
/// fields it carried.
pub fn decode_status(payload: &[u8]) -> Result<(Status, usize), Rejection> {
    let obj = object(payload)?;
    let online = match obj.get("online") {
        None | Some(Value::Null) => return Err(missing("online")),
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(wrong_type("online", "a boolean")),
    };
    let battery = match obj.get("battery") {
        None | Some(Value::Null) => None,
        Some(v) => Some(percent(v, "battery", RejectReason::InvalidStatus)?),
    };
    let rssi = match obj.get("rssi") {
        None | Some(Value::Null) => None,
        Some(v) => {
            if !is_integer(v) {
                return Err(wrong_type("rssi", "an integer (dBm)"));
            }
            match v.as_i64() {
                Some(n) if (-200..=0).contains(&n) => Some(n as i16),
                _ => {
                    return Err(Rejection::new(
                        RejectReason::InvalidStatus,
                        "rssi must be an integer from -200 to 0 (dBm)",
                    ))
                }
            }
        }
    };
    let fw = match obj.get("fw") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= 32 && !s.chars().any(char::is_control) => {
            Some(s.clone())
        }
        Some(Value::String(_)) => {
            return Err(Rejection::new(
                RejectReason::InvalidStatus,
                "fw must be at most 32 printable characters",
            ))
        }
        Some(_) => return Err(wrong_type("fw", "a string")),
    };
    let at = match obj.get("at") {
        None | Some(Value::Null) => None,
        Some(v) => Some(epoch_ms(v, "at")?),
    };
    let known = ["online", "battery", "rssi", "fw", "at"];
    let unknown = obj.keys().filter(|k| !known.contains(&k.as_str())).count();
    Ok((
        Status {
            online,
            battery,
            rssi,
            fw,
            at,
        },
        unknown,
    ))
}

fn object(payload: &[u8]) -> Result<Map<String, Value>, Rejection> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            format!("payload larger than {MAX_PAYLOAD_BYTES} bytes"),
        ));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|_| Rejection::new(RejectReason::NotUtf8, "payload is not UTF-8"))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Rejection::new(
            RejectReason::NotObject,
            "payload must be a JSON object",
        )),
        Err(e) => Err(Rejection::new(
            RejectReason::NotJson,
            format!("payload is not JSON: {e}"),
        )),
    }
}

fn usable_id(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s))
            if !s.is_empty()
                && s.chars().count() <= MAX_PRESS_ID_CHARS
                && !s.chars().any(char::is_control) =>
        {
            Some(s.clone())
        }
        _ => None,
    }
}

fn required_str<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a str, Rejection> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(missing(field)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(wrong_type(field, "a string")),
    }
}

fn epoch_ms(v: &Value, field: &str) -> Result<i64, Rejection> {
    let n = match v {
        Value::Number(n) => n,
        _ => return Err(wrong_type(field, "an integer (epoch milliseconds)")),
    };
    let Some(ms) = n.as_i64() else {
        return Err(if n.is_f64() {
            wrong_type(field, "an integer (epoch milliseconds)")
        } else {
            out_of_range_at(field)
        });
    };
    if !(0..=MAX_AT_MS).contains(&ms) {
        return Err(out_of_range_at(field));
    }
    Ok(ms)
}

fn out_of_range_at(field: &str) -> Rejection {
    Rejection::new(
        RejectReason::InvalidAt,
        format!("{field} must be epoch milliseconds between 1970 and 2100"),
    )
}

fn percent(v: &Value, field: &str, reason: RejectReason) -> Result<u8, Rejection> {
    if !is_integer(v) {
        return Err(wrong_type(field, "an integer from 0 to 100"));
    }
    match v.as_i64() {
        Some(n @ 0..=100) => Ok(n as u8),
        _ => Err(Rejection::new(
            reason,
            format!("{field} must be an integer from 0 to 100"),
        )),
    }
}

/// A JSON integer of any size: serde_json keeps one beyond `i64` as `u64`, and such a value
/// is out of range, not of the wrong type (found by the fuzz target).
fn is_integer(v: &Value) -> bool {
    v.as_i64().is_some() || v.as_u64().is_some()
}

fn missing(field: &str) -> Rejection {
    Rejection::new(RejectReason::MissingField, format!("{field} is required"))
}

fn wrong_type(field: &str, what: &str) -> Rejection {
    Rejection::new(RejectReason::WrongType, format!("{field} must be {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reject(payload: &[u8]) -> Rejection {
        decode_press(payload).expect_err("payload must be rejected")
    }

    fn ok(payload: &str) -> (Press, usize) {
        decode_press(payload.as_bytes()).expect("payload must be accepted")
    }

    const GOOD: &str =
        r#"{"id":"b7-000123","button":"main","gesture":"single","at":1764324000123,"battery":87}"#;

    #[test]
    fn accepts_the_design_example() {
        let (p, unknown) = ok(GOOD);
        assert_eq!(
            p,
            Press {
                id: "b7-000123".into(),
                button: "main".into(),
                gesture: Gesture::Single,
                at: 1_764_324_000_123,
                battery: Some(87)
            }
        );
        assert_eq!(unknown, 0);
    }

    #[test]
    fn ignores_and_counts_unknown_fields() {
        let (p, unknown) =
            ok(r#"{"id":"x","button":"red","gesture":"long","at":0,"fw":"1","extra":{"a":1}}"#);
        assert_eq!(p.gesture, Gesture::Long);
        assert_eq!(p.battery, None);
        assert_eq!(unknown, 2);
    }

    #[test]
    fn battery_null_is_absent() {
        let (p, _) = ok(r#"{"id":"x","button":"red","gesture":"double","at":5,"battery":null}"#);
        assert_eq!(p.battery, None);
    }

    /// Table of every rule: payload, reason, exact message, whether the id is echoed.
    #[test]
    fn every_rule_has_a_precise_reason() {
        let long_id = "i".repeat(65);
        let max_id = "i".repeat(64);
        let long_button = "b".repeat(33);
        let cases: Vec<(String, RejectReason, &str, Option<&str>)> = vec![
            (
                "[1,2]".into(),
                RejectReason::NotObject,
                "payload must be a JSON object",
                None,
            ),
            (
                "\"press\"".into(),
                RejectReason::NotObject,
                "payload must be a JSON object",
                None,
            ),
            (
                r#"{"button":"main","gesture":"single","at":1}"#.into(),
                RejectReason::MissingField,
                "id is required",
                None,
            ),
            (
                r#"{"id":null,"button":"main","gesture":"single","at":1}"#.into(),
                RejectReason::MissingField,
                "id is required",
                None,
            ),
            (
                r#"{"id":7,"button":"main","gesture":"single","at":1}"#.into(),
                RejectReason::WrongType,
                "id must be a string",
                None,
            ),
            (
                r#"{"id":"","button":"main","gesture":"single","at":1}"#.into(),
                RejectReason::InvalidId,
                "id must not be empty",
                None,
            ),
            (
                format!(r#"{{"id":"{long_id}","button":"main","gesture":"single","at":1}}"#),
                RejectReason::InvalidId,
                "id longer than 64 characters",
                None,
            ),
            (
                "{\"id\":\"a\\u0007b\",\"button\":\"main\",\"gesture\":\"single\",\"at\":1}".into(),
                RejectReason::InvalidId,
                "id must not contain control characters",
                None,
            ),
            (
                r#"{"id":"p1","gesture":"single","at":1}"#.into(),
                RejectReason::MissingField,
                "button is required",
                Some("p1"),
            ),
            (
                r#"{"id":"p1","button":["main"],"gesture":"single","at":1}"#.into(),
                RejectReason::WrongType,
                "button must be a string",
                Some("p1"),
            ),
            (
                r#"{"id":"p1","button":"","gesture":"single","at":1}"#.into(),
                RejectReason::InvalidButton,
                "button must not be empty",
                Some("p1"),
            ),
            (
                format!(r#"{{"id":"p1","button":"{long_button}","gesture":"single","at":1}}"#),
                RejectReason::InvalidButton,
                "button longer than 32 characters",
                Some("p1"),
            ),
            (
                r#"{"id":"p1","button":"Main","gesture":"single","at":1}"#.into(),
                RejectReason::InvalidButton,
                "button may contain only a-z, 0-9, '_' and '-'",
                Some("p1"),
            ),
            (
                r#"{"id":"p1","button":"main","at":1}"#.into(),
                RejectReason::MissingField,
                "gesture is required",
                Some("p1"),
            ),
            (
                r#"{"id":"p1","button":"main","gesture":1,"at":1}"#.into(),
                RejectReason::WrongType,
                "gesture must be a string",
                Some("p1"),
            ),
            (
                r#"{"id":"p1","button":"main","gesture":"tap","at":1}"#.into(),
                RejectReason::InvalidGesture,
                "gesture must be one of single|double|triple|long",
                Some("p1"),
            ),
            (
                r#"{"id":"p1","button":"main","gesture":"SINGLE","at":1}"#.into(),
                RejectReason::InvalidGesture,
                "gesture must be one of single|double|triple|long",
                Some("p1"),
            ),
            (
                r#"{"id":"p1","button":"main","gesture":"single"}"#.into(),
                RejectReason::MissingField,
                "at is required",
                Some("p1"),
            ),
            (
                r#"{"id":"p1","button":"main","gesture":"single","at":"1764324000123"}"#.into(),
                RejectReason::WrongType,
                "at must be an integer (epoch milliseconds)",
                Some("p1"),
            ),
            (
                r#"{"id":"p1","button":"main","gesture":"single","at":1.5}"#.into(),
                RejectReason::WrongType,
                "at must be an integer (epoch milliseconds)",
                Some("p1"),
            ),
            (
                r#"{"id":"p1","button":"main","gesture":"single","at":-1}"#.into(),
                RejectReason::InvalidAt,
                "at must be epoch milliseconds between 1970 and 2100",
                Some("p1"),
            ),
            (
                r#"{"id":"p1","button":"main","gesture":"single","at":1764324000123000}"#.into(),
                RejectReason::InvalidAt,
                "at must be epoch milliseconds between 1970 and 2100",
                Some("p1"),
            ),
            (
                r#"{"id":"p1","button":"main","gesture":"single","at":18446744073709551615}"#
                    .into(),
                RejectReason::InvalidAt,
                "at must be epoch milliseconds between 1970 and 2100",
                Some("p1"),
            ),
            (
                r#"{"id":"p1","button":"main","gesture":"single","at":1,"battery":101}"#.into(),
                RejectReason::InvalidBattery,
                "battery must be an integer from 0 to 100",
                Some("p1"),
            ),
            (
                r#"{"id":"p1","button":"main","gesture":"single","at":1,"battery":-3}"#.into(),
                RejectReason::InvalidBattery,
                "battery must be an integer from 0 to 100",
                Some("p1"),
            ),
            (
                r#"{"id":"p1","button":"main","gesture":"single","at":1,"battery":"full"}"#.into(),
                RejectReason::WrongType,
                "battery must be an integer from 0 to 100",
                Some("p1"),
            ),
        ];
        for (payload, reason, message, id) in cases {
            let r = reject(payload.as_bytes());
            assert_eq!(
                (r.reason, r.message.as_str()),
                (reason, message),
                "payload {payload}"
            );
            assert_eq!(r.press_id.as_deref(), id, "echoed id for {payload}");
        }
        // The longest allowed id and the edge of the `at` range are accepted.
        ok(&format!(
            r#"{{"id":"{max_id}","button":"main","gesture":"single","at":{MAX_AT_MS}}}"#
        ));
    }

    #[test]
    fn byte_level_failures() {
        let r = reject(&[b'{', 0xff, 0xfe, b'}']);
        assert_eq!(
            (r.reason, r.message.as_str()),
            (RejectReason::NotUtf8, "payload is not UTF-8")
        );
        let r = reject(b"not json");
        assert_eq!(r.reason, RejectReason::NotJson);
        assert!(
            r.message.starts_with("payload is not JSON: "),
            "{}",
            r.message
        );
        let r = reject(b"");
        assert_eq!(r.reason, RejectReason::NotJson);
        let big = format!(
            r#"{{"id":"p","button":"main","gesture":"single","at":1,"pad":"{}"}}"#,
            "x".repeat(MAX_PAYLOAD_BYTES)
        );
        let r = reject(big.as_bytes());
        assert_eq!(
            (r.reason, r.message.as_str()),
            (RejectReason::TooLarge, "payload larger than 4096 bytes")
        );
    }

    #[test]
    fn status_rules() {
        let (s, unknown) = decode_status(
            br#"{"online":true,"battery":87,"rssi":-61,"fw":"1.4.2","at":1764324000123}"#,
        )
        .unwrap();
        assert_eq!(
            s,
            Status {
                online: true,
                battery: Some(87),
                rssi: Some(-61),
                fw: Some("1.4.2".into()),
                at: Some(1_764_324_000_123)
            }
        );
        assert_eq!(unknown, 0);
        let (s, _) = decode_status(br#"{"online":false}"#).unwrap();
        assert!(!s.online);
        let cases: [(&[u8], RejectReason, &str); 7] = [
            (br#"{}"#, RejectReason::MissingField, "online is required"),
            (
                br#"{"online":"yes"}"#,
                RejectReason::WrongType,
                "online must be a boolean",
            ),
            (
                br#"{"online":true,"battery":200}"#,
                RejectReason::InvalidStatus,
                "battery must be an integer from 0 to 100",
            ),
            (
                br#"{"online":true,"rssi":12}"#,
                RejectReason::InvalidStatus,
                "rssi must be an integer from -200 to 0 (dBm)",
            ),
            (
                br#"{"online":true,"fw":3}"#,
                RejectReason::WrongType,
                "fw must be a string",
            ),
            (
                br#"{"online":true,"at":-5}"#,
                RejectReason::InvalidAt,
                "at must be epoch milliseconds between 1970 and 2100",
            ),
            (
                br#"[true]"#,
                RejectReason::NotObject,
                "payload must be a JSON object",
            ),
        ];
        for (payload, reason, message) in cases {
            let r = decode_status(payload).unwrap_err();
            assert_eq!(
                (r.reason, r.message.as_str()),
                (reason, message),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn reason_labels_are_unique() {
        let mut labels: Vec<_> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), RejectReason::ALL.len());
    }
}
