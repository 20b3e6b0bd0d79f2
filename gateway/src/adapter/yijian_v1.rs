//! The native protocol, `yijian/v1` (DESIGN §2): topics under `yijian/v1/devices/{id}/`, JSON
//! payloads decoded and validated by `yijian_wire`.

use super::decode::{Adapter, Decoded, Filters};
use yijian_wire::{decode_press, decode_status, topic, RejectReason};

/// The `yijian/v1` adapter.
#[derive(Debug, Clone, Copy, Default)]
pub struct YijianV1;

impl Adapter for YijianV1 {
    fn filters(&self) -> Filters {
        Filters {
            presses: vec![topic::PRESS_FILTER.to_owned()],
            statuses: vec![topic::STATUS_FILTER.to_owned()],
        }
    }

    fn decode<'t>(&self, t: &'t str, payload: &[u8]) -> Decoded<'t> {
        match topic::parse(t) {
            Some((device_id, topic::Kind::Press)) => match decode_press(payload) {
                Ok((press, unknown_fields)) => Decoded::Press {
                    device_id,
                    press,
                    unknown_fields,
                },
                Err(r) => Decoded::Rejected {
                    device_id: Some(device_id),
                    press_id: r.press_id,
                    reason: r.reason,
                    message: r.message,
                },
            },
            // An empty retained message clears the retained status; nothing to record.
            Some((_, topic::Kind::Status)) if payload.is_empty() => Decoded::Ignore,
            Some((device_id, topic::Kind::Status)) => match decode_status(payload) {
                Ok((status, _)) => Decoded::Status { device_id, status },
                Err(r) => Decoded::Rejected {
                    device_id: Some(device_id),
                    press_id: None,
                    reason: r.reason,
                    message: format!("status: {}", r.message),
                },
            },
            // The ACL makes these unreachable for devices (they may publish only on their own
            // press and status topics), and the gateway does not subscribe to feedback.
            _ => Decoded::Rejected {
                device_id: None,
                press_id: None,
                reason: RejectReason::BadTopic,
                message: if t.ends_with("/status") {
                    "topic outside yijian/v1/devices/{id}/status".to_owned()
                } else {
                    "topic outside yijian/v1/devices/{id}/press".to_owned()
                },
            },
        }
    }

    fn feedback_topic(&self, device_id: &str) -> Option<String> {
        Some(topic::topic(device_id, topic::Kind::Feedback))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yijian_wire::Gesture;

    #[test]
    fn a_press_names_its_device_and_counts_unknown_fields() {
        let d = YijianV1.decode(
            "yijian/v1/devices/b7/press",
            br#"{"id":"p1","button":"main","gesture":"single","at":1764324000123,"x":1}"#,
        );
        let Decoded::Press {
            device_id,
            press,
            unknown_fields,
        } = d
        else {
            panic!("{d:?}");
        };
        assert_eq!((device_id, press.id.as_str()), ("b7", "p1"));
        assert_eq!(press.gesture, Gesture::Single);
        assert_eq!(unknown_fields, 1);
    }

    #[test]
    fn a_bad_press_is_rejected_with_its_id_and_the_reason() {
        let d = YijianV1.decode(
            "yijian/v1/devices/b7/press",
            br#"{"id":"p1","button":"main","gesture":"wave","at":1764324000123}"#,
        );
        let Decoded::Rejected {
            device_id,
            press_id,
            reason,
            message,
        } = d
        else {
            panic!("{d:?}");
        };
        assert_eq!(device_id, Some("b7"));
        assert_eq!(press_id.as_deref(), Some("p1"));
        assert_eq!(reason, RejectReason::InvalidGesture);
        assert_eq!(message, "gesture must be one of single|double|triple|long");
    }

    #[test]
    fn statuses_decode_and_their_rejections_say_status() {
        let d = YijianV1.decode("yijian/v1/devices/b7/status", br#"{"online":true}"#);
        assert!(matches!(d, Decoded::Status { device_id: "b7", ref status } if status.online));
        assert_eq!(
            YijianV1.decode("yijian/v1/devices/b7/status", b""),
            Decoded::Ignore
        );
        let Decoded::Rejected {
            device_id, message, ..
        } = YijianV1.decode("yijian/v1/devices/b7/status", br#"{"online":1}"#)
        else {
            panic!("a status with a non-boolean online is refused");
        };
        assert_eq!(device_id, Some("b7"));
        assert!(message.starts_with("status: "), "{message}");
    }

    #[test]
    fn a_topic_outside_the_layout_names_no_device() {
        for t in [
            "yijian/v1/devices/b.7/press",
            "other/press",
            "yijian/v1/devices/b7/feedback",
        ] {
            let d = YijianV1.decode(t, b"{}");
            assert!(
                matches!(
                    d,
                    Decoded::Rejected {
                        device_id: None,
                        reason: RejectReason::BadTopic,
                        ..
                    }
                ),
                "{t}: {d:?}"
            );
        }
    }

    #[test]
    fn native_devices_hear_feedback_on_their_own_topic() {
        assert_eq!(
            YijianV1.feedback_topic("b7").as_deref(),
            Some("yijian/v1/devices/b7/feedback")
        );
    }
}
