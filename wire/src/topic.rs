//! Topics: everything lives under `yijian/v1/devices/{device_id}/`.

/// Prefix of every device topic.
pub const PREFIX: &str = "yijian/v1/devices/";

/// Filter the gateway subscribes to for presses.
pub const PRESS_FILTER: &str = "yijian/v1/devices/+/press";

/// Filter the gateway subscribes to for heartbeats and last wills.
pub const STATUS_FILTER: &str = "yijian/v1/devices/+/status";

/// Longest device id, in characters.
pub const MAX_DEVICE_ID_CHARS: usize = 64;

/// What a device topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Device → gateway: a press.
    Press,
    /// Device → gateway: heartbeat, state, last will.
    Status,
    /// Gateway → device: acknowledgement and progress.
    Feedback,
}

impl Kind {
    /// The topic suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            Kind::Press => "press",
            Kind::Status => "status",
            Kind::Feedback => "feedback",
        }
    }
}

/// `true` when `id` matches `[A-Za-z0-9_-]{1,64}`.
pub fn is_valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DEVICE_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Why a device id is not acceptable, or `None` when it is.
pub fn device_id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        Some("device id must not be empty".into())
    } else if id.chars().count() > MAX_DEVICE_ID_CHARS {
        Some(format!(
            "device id longer than {MAX_DEVICE_ID_CHARS} characters"
        ))
    } else if !is_valid_device_id(id) {
        Some("device id may contain only A-Z, a-z, 0-9, '_' and '-'".into())
    } else {
        None
    }
}

/// The topic of `kind` for device `device_id`.
pub fn topic(device_id: &str, kind: Kind) -> String {
    let mut t = String::with_capacity(PREFIX.len() + device_id.len() + 9);
    t.push_str(PREFIX);
    t.push_str(device_id);
    t.push('/');
    t.push_str(kind.suffix());
    t
}

/// Split a topic into its device id and kind. `None` for anything outside the v1 layout,
/// including a device id that breaks the id rule.
pub fn parse(topic: &str) -> Option<(&str, Kind)> {
    let rest = topic.strip_prefix(PREFIX)?;
    let (device, suffix) = rest.split_once('/')?;
    let kind = match suffix {
        "press" => Kind::Press,
        "status" => Kind::Status,
        "feedback" => Kind::Feedback,
        _ => return None,
    };
    is_valid_device_id(device).then_some((device, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_parse() {
        let t = topic("b7", Kind::Press);
        assert_eq!(t, "yijian/v1/devices/b7/press");
        assert_eq!(parse(&t), Some(("b7", Kind::Press)));
        assert_eq!(
            parse("yijian/v1/devices/b7/status"),
            Some(("b7", Kind::Status))
        );
        assert_eq!(
            parse("yijian/v1/devices/b7/feedback"),
            Some(("b7", Kind::Feedback))
        );
    }

    #[test]
    fn rejects_other_layouts() {
        for bad in [
            "yijian/v1/devices/b7/press/extra",
            "yijian/v1/devices//press",
            "yijian/v2/devices/b7/press",
            "yijian/v1/devices/b.7/press",
            "yijian/v1/devices/b7/light",
            "yijian/v1/devices/b7",
            "other",
            "",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        let long = "a".repeat(65);
        assert_eq!(parse(&format!("yijian/v1/devices/{long}/press")), None);
        let max = "a".repeat(64);
        assert!(parse(&format!("yijian/v1/devices/{max}/press")).is_some());
    }

    #[test]
    fn device_id_rules() {
        assert!(is_valid_device_id("Ab-9_z"));
        assert_eq!(
            device_id_problem(""),
            Some("device id must not be empty".into())
        );
        assert!(device_id_problem(&"x".repeat(65))
            .unwrap()
            .contains("longer than 64"));
        assert!(device_id_problem("a/b").unwrap().contains("only"));
        assert!(device_id_problem("a+b").is_some());
        assert!(device_id_problem("设备").is_some());
        assert_eq!(device_id_problem("b7"), None);
    }
}
