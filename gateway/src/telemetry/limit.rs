//! Rate limits for warnings about devices: one line per device per window, and a ceiling on
//! all of them together, so a storm of bad connects or malformed presses (10,000 a second from
//! a misconfigured fleet) shows as a few lines that say how many were held back, not a flood.
//!
//! NOTE: counting is the metrics' job (every event is counted whether or not it is logged);
//! these lines are for the integrator looking for why *their* device is refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most keys remembered; past it, keys whose window is over are forgotten first.
const MAX_KEYS: usize = 4096;

/// Decides which warnings are written.
#[derive(Debug)]
pub struct LogLimiter {
    /// One line per key per `window`; the ceiling counts per `window` too.
    window: Duration,
    /// Lines allowed per window over all keys.
    ceiling: u32,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Per key: when its last line was written, and how many were held back since.
    keys: HashMap<String, (Instant, u64)>,
    /// Start of the ceiling's current window and the lines written in it.
    window_start: Option<Instant>,
    written: u32,
    /// Lines held back by the ceiling (any key) since the last line written.
    over_ceiling: u64,
}

/// A line to write: how many were held back before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// Lines about this key held back since its last one.
    pub suppressed: u64,
    /// Lines about other keys held back by the ceiling since the last line written.
    pub others_suppressed: u64,
}

impl LogLimiter {
    /// At most one line per key per `window`, and `ceiling` lines per `window` in all.
    pub fn new(window: Duration, ceiling: u32) -> Self {
        LogLimiter {
            window,
            ceiling,
            state: Mutex::new(State {
                keys: HashMap::new(),
                window_start: None,
                written: 0,
                over_ceiling: 0,
            }),
        }
    }

    /// Whether a line about `key` may be written at `now`, and what it should say was held
    /// back; `None` holds it back (and counts it).
    pub fn admit(&self, key: &str, now: Instant) -> Option<Admitted> {
        let mut s = self
            .state
            .lock()
            .expect("log limiter lock is never poisoned");
        let window = self.window;
        if s.window_start
            .is_none_or(|t| now.saturating_duration_since(t) >= window)
        {
            s.window_start = Some(now);
            s.written = 0;
        }
        if let Some((last, suppressed)) = s.keys.get_mut(key) {
            if now.saturating_duration_since(*last) < window {
                *suppressed += 1;
                return None;
            }
        }
        if s.written >= self.ceiling {
            s.over_ceiling += 1;
            // Remembered as held back, so its next line says so.
            let e = s.keys.entry(key.to_owned()).or_insert((now, 0));
            e.1 += 1;
            return None;
        }
        if s.keys.len() >= MAX_KEYS && !s.keys.contains_key(key) {
            s.keys
                .retain(|_, (last, n)| now.saturating_duration_since(*last) < window || *n > 0);
            if s.keys.len() >= MAX_KEYS {
                s.keys.clear();
            }
        }
        s.written += 1;
        let others_suppressed = std::mem::take(&mut s.over_ceiling);
        let suppressed = match s.keys.insert(key.to_owned(), (now, 0)) {
            Some((_, n)) => n,
            None => 0,
        };
        Some(Admitted {
            suppressed,
            others_suppressed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_window_saying_how_many_were_held_back() {
        let l = LogLimiter::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        assert_eq!(
            l.admit("a", t0),
            Some(Admitted {
                suppressed: 0,
                others_suppressed: 0
            })
        );
        for i in 1..10_000u64 {
            assert_eq!(l.admit("a", t0 + Duration::from_micros(i)), None);
        }
        assert!(l.admit("b", t0).is_some(), "another key is not held back");
        let next = l
            .admit("a", t0 + Duration::from_secs(10))
            .expect("a new window");
        assert_eq!(next.suppressed, 9_999);
    }

    #[test]
    fn a_storm_of_many_keys_is_capped_and_summed() {
        let l = LogLimiter::new(Duration::from_secs(10), 20);
        let t0 = Instant::now();
        let written = (0..10_000)
            .filter(|i| l.admit(&format!("dev-{i}"), t0).is_some())
            .count();
        assert_eq!(written, 20);
        let next = l
            .admit("late", t0 + Duration::from_secs(10))
            .expect("a new window");
        assert_eq!(next.others_suppressed, 9_980);
    }
}
