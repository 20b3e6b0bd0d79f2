//! `[rules]`: where the routing rules come from, how often they are re-read, and the local
//! time their `time` windows are read in.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[rules]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Rules directory; `None` means `./rules` if present, else the built-in rules.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// How long after a request the cancel gesture may still cancel it, in seconds.
    #[serde(default = "default_cancel_window")]
    pub cancel_window_s: u64,
    /// IANA time zone of residents with none of their own (and of devices bound to no
    /// resident): rules' `time` windows are local times. Empty: such presses have no known
    /// local time, and no rule with `time` matches them.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// How often the rules directory is checked for changed files, in milliseconds; 0 turns
    /// watching off (SIGHUP still reloads).
    #[serde(default = "default_watch_interval")]
    pub watch_interval_ms: u64,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            dir: None,
            cancel_window_s: default_cancel_window(),
            time_zone: default_time_zone(),
            watch_interval_ms: default_watch_interval(),
        }
    }
}

fn default_cancel_window() -> u64 {
    120
}
fn default_time_zone() -> String {
    "Asia/Shanghai".to_owned()
}
fn default_watch_interval() -> u64 {
    1000
}
