//! Time of day for rules: `HH:MM-HH:MM` windows and the resident's local clock.
//!
//! Rules never read a clock themselves: the caller turns the press's `at` into minutes since
//! the resident's local midnight with [`local_minutes`] and passes that in, so evaluation is a
//! pure function and tests pick any time they like.

use std::fmt;

/// Minutes in a day; `24:00` is allowed as the end of a window and means midnight.
pub(super) const DAY: u16 = 24 * 60;

/// Minutes since the resident's local midnight for epoch milliseconds `at_ms` in IANA zone `tz`.
///
/// **NOTE**: the zone database is compiled into the binary (jiff `tzdb-bundle-always`), so the
/// answer does not depend on the host's `/usr/share/zoneinfo`.
pub fn local_minutes(at_ms: i64, tz: &str) -> Result<u16, String> {
    let zone = jiff::tz::TimeZone::get(tz).map_err(|_| {
        format!("unknown time zone {tz:?} (expected an IANA name such as Asia/Shanghai or UTC)")
    })?;
    let at = jiff::Timestamp::from_millisecond(at_ms)
        .map_err(|_| format!("timestamp {at_ms} ms is outside the supported range"))?;
    let local = zone.to_datetime(at);
    // hour() is 0..=23 and minute() 0..=59, so this is below DAY and the casts cannot truncate.
    Ok(local.hour() as u16 * 60 + local.minute() as u16)
}

/// Minutes since local midnight in an already resolved zone: the hot path's version of
/// [`local_minutes`] (no zone lookup). `None` only for a timestamp outside jiff's range.
pub fn local_minutes_in(at_ms: i64, zone: &jiff::tz::TimeZone) -> Option<u16> {
    let at = jiff::Timestamp::from_millisecond(at_ms).ok()?;
    let local = zone.to_datetime(at);
    Some(local.hour() as u16 * 60 + local.minute() as u16)
}

/// One window: start inclusive, end exclusive; `start > end` crosses midnight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Window {
    pub(super) start: u16,
    pub(super) end: u16,
}

impl Window {
    /// Parses `HH:MM-HH:MM` (24-hour clock, two digits each; `24:00` only as an end).
    pub(super) fn parse(text: &str) -> Result<Window, String> {
        let shape = || {
            format!("time {text:?} must look like \"HH:MM-HH:MM\" (24-hour clock), e.g. \"22:00-06:00\"")
        };
        let (a, b) = text.split_once('-').ok_or_else(shape)?;
        let start = parse_clock(a.trim()).ok_or_else(shape)?;
        let end = parse_clock(b.trim()).ok_or_else(shape)?;
        if start == DAY {
            return Err(format!("time {text:?} starts at 24:00; write 00:00"));
        }
        if start == end || (start == 0 && end == DAY) {
            return Err(format!(
                "time {text:?} is {}; leave `time` out to match at any hour",
                if start == end {
                    "empty"
                } else {
                    "the whole day"
                }
            ));
        }
        Ok(Window { start, end })
    }

    pub(super) fn contains(self, minute: u16) -> bool {
        if self.start < self.end {
            self.start <= minute && minute < self.end
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", Clock(self.start), Clock(self.end))
    }
}

/// Formats minutes since midnight as `HH:MM`.
pub(super) struct Clock(pub(super) u16);

impl fmt::Display for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

fn parse_clock(text: &str) -> Option<u16> {
    let b = text.as_bytes();
    if b.len() != 5 || b[2] != b':' || ![0, 1, 3, 4].iter().all(|&i| b[i].is_ascii_digit()) {
        return None;
    }
    let hour = u16::from(b[0] - b'0') * 10 + u16::from(b[1] - b'0');
    let minute = u16::from(b[3] - b'0') * 10 + u16::from(b[4] - b'0');
    match (hour, minute) {
        (0..=23, 0..=59) => Some(hour * 60 + minute),
        (24, 0) => Some(DAY),
        _ => None,
    }
}

/// The union of a rule's windows as one bit per minute of the day: a lookup on the hot path
/// and a subset test for shadowing, whatever the windows look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct TimeSet {
    pub(super) windows: Box<[Window]>,
    bits: [u64; 23],
}

impl TimeSet {
    pub(super) fn new(windows: Vec<Window>) -> TimeSet {
        let mut bits = [0u64; 23];
        for minute in 0..DAY {
            if windows.iter().any(|w| w.contains(minute)) {
                bits[usize::from(minute / 64)] |= 1 << (minute % 64);
            }
        }
        TimeSet {
            windows: windows.into_boxed_slice(),
            bits,
        }
    }

    pub(super) fn contains(&self, minute: u16) -> bool {
        minute < DAY && self.bits[usize::from(minute / 64)] & (1 << (minute % 64)) != 0
    }

    /// True when every minute of `other` is also in `self`.
    pub(super) fn covers(&self, other: &TimeSet) -> bool {
        self.bits
            .iter()
            .zip(other.bits.iter())
            .all(|(mine, theirs)| theirs & !mine == 0)
    }
}

impl fmt::Display for TimeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, w) in self.windows.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{w}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(h: u16, min: u16) -> u16 {
        h * 60 + min
    }

    #[test]
    fn windows_parse_and_bounds() {
        let night = Window::parse("22:00-06:00").expect("valid");
        assert_eq!((night.start, night.end), (m(22, 0), m(6, 0)));
        for (minute, inside) in [
            (m(21, 59), false),
            (m(22, 0), true), // start inclusive
            (m(23, 59), true),
            (0, true),
            (m(5, 59), true),
            (m(6, 0), false), // end exclusive
            (m(14, 5), false),
        ] {
            assert_eq!(
                night.contains(minute),
                inside,
                "22:00-06:00 at {}",
                Clock(minute)
            );
        }
        let evening = Window::parse("18:00-24:00").expect("24:00 as an end");
        assert!(evening.contains(m(23, 59)) && !evening.contains(0) && evening.contains(m(18, 0)));
        assert_eq!(evening.to_string(), "18:00-24:00");
        assert!(
            Window::parse(" 08:00 - 09:30 ").is_ok(),
            "spaces around the dash are fine"
        );
    }

    #[test]
    fn windows_reject_bad_text() {
        for bad in [
            "22:00",
            "8:00-9:00",
            "24:00-06:00",
            "23:60-01:00",
            "25:00-01:00",
            "ab:cd-01:00",
            "",
            "10:00-10:00",
            "00:00-24:00",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(
            Window::parse("10:00-10:00").unwrap_err(),
            "time \"10:00-10:00\" is empty; leave `time` out to match at any hour"
        );
    }

    #[test]
    fn time_set_union_and_cover() {
        let both = TimeSet::new(vec![
            Window::parse("22:00-06:00").expect("valid"),
            Window::parse("12:00-13:00").expect("valid"),
        ]);
        assert!(both.contains(m(12, 30)) && both.contains(m(2, 0)) && !both.contains(m(13, 0)));
        assert!(!both.contains(DAY), "an out-of-range minute never matches");
        let late = TimeSet::new(vec![Window::parse("23:00-01:00").expect("valid")]);
        assert!(both.covers(&late) && !late.covers(&both));
        assert_eq!(both.to_string(), "22:00-06:00, 12:00-13:00");
    }

    #[test]
    fn local_minutes_across_zones() {
        // 2026-07-01T12:00:00Z: summer, New York on EDT (UTC-4).
        let summer = 1_782_907_200_000;
        assert_eq!(local_minutes(summer, "UTC"), Ok(m(12, 0)));
        assert_eq!(local_minutes(summer, "Asia/Shanghai"), Ok(m(20, 0)));
        assert_eq!(local_minutes(summer, "America/New_York"), Ok(m(8, 0)));
        // 2026-01-15T03:30:00Z: winter, New York on EST (UTC-5), Shanghai already next morning.
        let winter = 1_768_447_800_000;
        assert_eq!(local_minutes(winter, "UTC"), Ok(m(3, 30)));
        assert_eq!(local_minutes(winter, "Asia/Shanghai"), Ok(m(11, 30)));
        assert_eq!(local_minutes(winter, "America/New_York"), Ok(m(22, 30)));
        // DST starts 2026-03-08 at 02:00 EST: one minute before is 01:59, one after is 03:00.
        let jump = 1_772_953_200_000; // 2026-03-08T07:00:00Z
        assert_eq!(
            local_minutes(jump - 60_000, "America/New_York"),
            Ok(m(1, 59))
        );
        assert_eq!(local_minutes(jump, "America/New_York"), Ok(m(3, 0)));
    }

    #[test]
    fn local_minutes_errors_are_clear() {
        let err = local_minutes(0, "Mars/Olympus_Mons").unwrap_err();
        assert!(
            err.contains("unknown time zone \"Mars/Olympus_Mons\""),
            "{err}"
        );
        assert!(local_minutes(i64::MAX, "UTC")
            .unwrap_err()
            .contains("outside"));
    }
}
