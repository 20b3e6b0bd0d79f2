//! Properties of the device protocol's decoding that must hold for every input, not merely
//! "does not panic". Shared by the fuzz target (`fuzz_targets/wire.rs`) and the plain
//! regression test `wire/tests/fuzz_regressions.rs`, so an input the fuzzer once broke stays
//! checked in CI without cargo-fuzz.
//!
//! The checks restate each rule of DESIGN §2 independently of the decoder (by chars, where the
//! decoder works on bytes), so a decoder bug cannot hide behind its own helper.

use serde_json::{Map, Value};
use yijian_wire::topic::{self, Kind};
use yijian_wire::{
    decode_press, decode_status, RejectReason, Rejection, MAX_AT_MS, MAX_BUTTON_CHARS,
    MAX_PAYLOAD_BYTES, MAX_PRESS_ID_CHARS,
};

/// A rejection message goes back to the device verbatim: keep it short.
const MAX_MESSAGE_BYTES: usize = 256;

/// Feed `data` to every decoder and check every property. Panics on a violation.
pub fn check(data: &[u8]) {
    check_press(data);
    check_status(data);
    if let Ok(text) = std::str::from_utf8(data) {
        check_topic(text);
        check_device_id(text);
    }
}

/// `id`: 1–64 characters, no control characters.
fn press_id_ok(id: &str) -> bool {
    let n = id.chars().count();
    (1..=MAX_PRESS_ID_CHARS).contains(&n) && !id.chars().any(char::is_control)
}

/// `button`: 1–32 characters of `[a-z0-9_-]`.
fn button_ok(b: &str) -> bool {
    let n = b.chars().count();
    (1..=MAX_BUTTON_CHARS).contains(&n)
        && b.chars()
            .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
}

/// A device id: `[A-Za-z0-9_-]{1,64}`.
fn device_id_ok(id: &str) -> bool {
    let n = id.chars().count();
    (1..=topic::MAX_DEVICE_ID_CHARS).contains(&n)
        && id
            .chars()
            .all(|c| matches!(c, 'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '-'))
}

/// The payload as a JSON object, judged independently of the decoder; `None` for anything the
/// decoder must refuse before looking at fields.
fn reference_object(data: &[u8]) -> Option<Map<String, Value>> {
    if data.len() > MAX_PAYLOAD_BYTES {
        return None;
    }
    match serde_json::from_str::<Value>(std::str::from_utf8(data).ok()?).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// A JSON integer, whatever its size (serde_json keeps large ones as u64).
fn is_integer(v: &Value) -> bool {
    v.as_i64().is_some() || v.as_u64().is_some()
}

/// Absent, null, or of the expected type.
fn optional(v: Option<&Value>, ok: fn(&Value) -> bool) -> bool {
    v.is_none_or(|v| v.is_null() || ok(v))
}

/// Every field of a press has the right JSON type (its value may still break a rule).
fn press_types_ok(o: &Map<String, Value>) -> bool {
    ["id", "button", "gesture"]
        .iter()
        .all(|f| o.get(*f).is_some_and(Value::is_string))
        && o.get("at").is_some_and(is_integer)
        && optional(o.get("battery"), is_integer)
}

/// Every field of a status has the right JSON type.
fn status_types_ok(o: &Map<String, Value>) -> bool {
    o.get("online").is_some_and(Value::is_boolean)
        && optional(o.get("battery"), is_integer)
        && optional(o.get("rssi"), is_integer)
        && optional(o.get("fw"), Value::is_string)
        && optional(o.get("at"), is_integer)
}

/// The reason label says what is wrong: with every field present and of its type, the problem
/// is a value out of its range, never `wrong_type` or `missing_field`.
fn check_reason_matches_types(r: &Rejection, types_ok: bool, what: &str) {
    if types_ok {
        assert!(
            !matches!(
                r.reason,
                RejectReason::WrongType | RejectReason::MissingField
            ),
            "{what} with every field of its type rejected as {}: {}",
            r.reason.as_str(),
            r.message
        );
    }
}

/// Every rejection: a reason from the bounded set that decoding can give, a short non-empty
/// printable message, and `Display` is the message.
fn check_rejection(r: &Rejection, data: &[u8]) {
    assert!(
        RejectReason::ALL.contains(&r.reason),
        "reason {:?} outside the bounded set",
        r.reason
    );
    assert!(
        !matches!(
            r.reason,
            RejectReason::UnknownDevice | RejectReason::BadTopic
        ),
        "decoding alone gave the gateway-side reason {:?}",
        r.reason
    );
    let label = r.reason.as_str();
    assert!(
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "label {label:?}"
    );
    assert!(
        !r.message.trim().is_empty(),
        "empty rejection message ({label})"
    );
    assert!(
        r.message.len() <= MAX_MESSAGE_BYTES,
        "message of {} bytes: {}",
        r.message.len(),
        r.message
    );
    assert!(
        !r.message.chars().any(char::is_control),
        "control character in message {:?}",
        r.message
    );
    assert_eq!(r.to_string(), r.message);
    if data.len() > MAX_PAYLOAD_BYTES {
        assert_eq!(
            r.reason,
            RejectReason::TooLarge,
            "oversize payload rejected as {label}"
        );
    }
}

fn check_press(data: &[u8]) {
    let result = decode_press(data);
    assert_eq!(result, decode_press(data), "decoding is deterministic");
    let object = reference_object(data);
    match result {
        Ok((press, unknown)) => {
            let obj = object.expect("an accepted press is a JSON object of at most 4096 bytes");
            assert!(press_id_ok(&press.id), "accepted id {:?}", press.id);
            assert_eq!(
                obj.get("id").and_then(Value::as_str),
                Some(press.id.as_str())
            );
            assert!(
                button_ok(&press.button),
                "accepted button {:?}",
                press.button
            );
            assert_eq!(
                obj.get("button").and_then(Value::as_str),
                Some(press.button.as_str())
            );
            assert_eq!(
                obj.get("gesture").and_then(Value::as_str),
                Some(press.gesture.as_str())
            );
            assert!(
                (0..=MAX_AT_MS).contains(&press.at),
                "accepted at {}",
                press.at
            );
            assert_eq!(obj.get("at").and_then(Value::as_i64), Some(press.at));
            assert!(
                press.battery.is_none_or(|b| b <= 100),
                "accepted battery {:?}",
                press.battery
            );
            let known = ["id", "button", "gesture", "at", "battery"];
            assert_eq!(
                unknown,
                obj.keys().filter(|k| !known.contains(&k.as_str())).count(),
                "unknown fields miscounted"
            );

            // What the gateway journals and forwards must mean the same thing when read again.
            let bytes = serde_json::to_vec(&press).expect("a press serializes");
            let (again, unknown_again) = decode_press(&bytes).unwrap_or_else(|r| {
                panic!(
                    "re-serialized press rejected ({}): {}",
                    r.message,
                    String::from_utf8_lossy(&bytes)
                )
            });
            assert_eq!(again, press, "press changed in a round trip");
            assert_eq!(unknown_again, 0);
        }
        Err(r) => {
            check_rejection(&r, data);
            // The device needs the id to match the `rejected` feedback to the press it keeps
            // retransmitting: echoed whenever the payload carried a usable one, never otherwise.
            let usable = object
                .as_ref()
                .and_then(|o| o.get("id"))
                .and_then(Value::as_str)
                .filter(|id| press_id_ok(id));
            assert_eq!(
                r.press_id.as_deref(),
                usable,
                "echoed press id for a {} rejection",
                r.reason.as_str()
            );
            if r.press_id.is_some() {
                assert_ne!(
                    r.reason,
                    RejectReason::InvalidId,
                    "an invalid id was echoed"
                );
            }
            if let Some(o) = &object {
                check_reason_matches_types(&r, press_types_ok(o), "press");
            }
        }
    }
}

fn check_status(data: &[u8]) {
    let result = decode_status(data);
    assert_eq!(result, decode_status(data), "decoding is deterministic");
    let object = reference_object(data);
    match result {
        Ok((status, unknown)) => {
            let obj = object.expect("an accepted status is a JSON object of at most 4096 bytes");
            assert_eq!(
                obj.get("online").and_then(Value::as_bool),
                Some(status.online)
            );
            assert!(
                status.battery.is_none_or(|b| b <= 100),
                "battery {:?}",
                status.battery
            );
            assert!(
                status.rssi.is_none_or(|r| (-200..=0).contains(&r)),
                "rssi {:?}",
                status.rssi
            );
            assert!(
                status
                    .fw
                    .as_deref()
                    .is_none_or(|f| f.chars().count() <= 32 && !f.chars().any(char::is_control)),
                "fw {:?}",
                status.fw
            );
            assert!(
                status.at.is_none_or(|at| (0..=MAX_AT_MS).contains(&at)),
                "at {:?}",
                status.at
            );
            let known = ["online", "battery", "rssi", "fw", "at"];
            assert_eq!(
                unknown,
                obj.keys().filter(|k| !known.contains(&k.as_str())).count()
            );

            let bytes = serde_json::to_vec(&status).expect("a status serializes");
            let (again, unknown_again) = decode_status(&bytes).unwrap_or_else(|r| {
                panic!(
                    "re-serialized status rejected ({}): {}",
                    r.message,
                    String::from_utf8_lossy(&bytes)
                )
            });
            assert_eq!(again, status, "status changed in a round trip");
            assert_eq!(unknown_again, 0);
        }
        Err(r) => {
            check_rejection(&r, data);
            assert_eq!(r.press_id, None, "a status has no press id to echo");
            if let Some(o) = &object {
                check_reason_matches_types(&r, status_types_ok(o), "status");
            }
        }
    }
}

/// `topic::parse` accepts exactly the canonical `yijian/v1/devices/{id}/{press|status|feedback}`
/// with a valid id, and never an id that breaks `[A-Za-z0-9_-]{1,64}`.
fn check_topic(t: &str) {
    match topic::parse(t) {
        Some((id, kind)) => {
            assert!(device_id_ok(id), "parse accepted device id {id:?} in {t:?}");
            assert_eq!(
                topic::topic(id, kind),
                t,
                "parse accepted a non-canonical topic"
            );
        }
        None => {
            // Not accepted: then it is not the canonical topic of any valid id.
            if let Some(rest) = t.strip_prefix(topic::PREFIX) {
                for kind in [Kind::Press, Kind::Status, Kind::Feedback] {
                    if let Some(id) = rest
                        .strip_suffix(kind.suffix())
                        .and_then(|r| r.strip_suffix('/'))
                    {
                        assert!(!device_id_ok(id), "parse refused the valid topic {t:?}");
                    }
                }
            }
        }
    }
}

/// The same text as a device id: every id rule agrees, and a topic built from it parses back
/// exactly when the id is valid.
fn check_device_id(id: &str) {
    let valid = device_id_ok(id);
    assert_eq!(
        topic::is_valid_device_id(id),
        valid,
        "is_valid_device_id({id:?})"
    );
    match topic::device_id_problem(id) {
        None => assert!(valid, "no problem reported for invalid id {id:?}"),
        Some(p) => {
            assert!(!valid, "problem {p:?} reported for valid id {id:?}");
            assert!(!p.is_empty());
        }
    }
    for kind in [Kind::Press, Kind::Status, Kind::Feedback] {
        let t = topic::topic(id, kind);
        assert_eq!(
            topic::parse(&t),
            valid.then_some((id, kind)),
            "parse(topic({id:?}, {kind:?}))"
        );
    }
}
