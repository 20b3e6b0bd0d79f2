//! `[flood]`: the limits of flood control. The token bucket that applies them is the flood
//! stage's (`flood::TokenBucket`, and `FloodConfig::bucket` beside it); only the numbers and
//! their checks live here.

use serde::{Deserialize, Serialize};

/// `[flood]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FloodConfig {
    /// A press joins the device's open request of the same service when that request was
    /// created less than this many seconds ago; 0 turns joining off.
    #[serde(default = "default_attach_window")]
    pub attach_window_s: u64,
    /// MQTT packets per second a device connection may send, sustained.
    #[serde(default = "default_rate")]
    pub device_messages_per_s: f64,
    /// MQTT packets a device connection may send in one burst.
    #[serde(default = "default_burst")]
    pub device_burst: u32,
}

fn default_attach_window() -> u64 {
    1800
}
fn default_rate() -> f64 {
    10.0
}
fn default_burst() -> u32 {
    60
}

impl Default for FloodConfig {
    fn default() -> Self {
        FloodConfig {
            attach_window_s: default_attach_window(),
            device_messages_per_s: default_rate(),
            device_burst: default_burst(),
        }
    }
}

impl FloodConfig {
    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(self.device_messages_per_s.is_finite() && self.device_messages_per_s > 0.0) {
            p.push("[flood]: device_messages_per_s must be a number greater than 0".into());
        }
        if self.device_burst == 0 {
            p.push("[flood]: device_burst must be greater than 0".into());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_limits_are_reported() {
        let cfg = FloodConfig {
            attach_window_s: 0,
            device_messages_per_s: 0.0,
            device_burst: 0,
        };
        assert_eq!(cfg.problems().len(), 2);
    }
}
