//! Time, beside the path: the [`Clock`] that the stages with timers read (dispatch's
//! deadlines, backoff, `Retry-After` and circuit breakers today; supervision and SLA timers
//! next), epoch milliseconds and their RFC 3339 spelling.
//!
//! A deadline in the journal is wall-clock (a request's `created_at` outlives a restart), while
//! the waiting is done with tokio timers. [`Clock`] reads both from one source, so a test can
//! pause tokio's time, `advance` it, and see epoch milliseconds move with it: a 60-second
//! service deadline is then tested in a few real milliseconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// The time a stage reads; cheap to clone, passed in where a stage starts.
///
/// **NOTE** `now()` is `tokio::time::Instant::now()` in both variants: tokio's timers and
/// `sleep_until` only understand tokio's instants, and under a paused runtime they are the
/// ones that move. What differs is `now_ms()`.
#[derive(Debug, Clone)]
pub enum Clock {
    /// Production: epoch ms from the system's wall clock.
    System,
    /// Tests: epoch ms that follow tokio's (pausable) time from an anchor, so
    /// `tokio::time::advance` moves `now_ms()` and `now()` together.
    Tokio {
        /// Epoch ms at `base`.
        base_ms: i64,
        /// The tokio instant at which the epoch read `base_ms`.
        base: Instant,
    },
}

impl Clock {
    /// The system clock: what the gateway runs on.
    pub fn system() -> Clock {
        Clock::System
    }

    /// A clock that reads `epoch_ms` now and then moves with tokio's time (pause it with
    /// `tokio::time::pause()` or `#[tokio::test(start_paused = true)]` to drive it).
    pub fn tokio_at(epoch_ms: i64) -> Clock {
        Clock::Tokio {
            base_ms: epoch_ms,
            base: Instant::now(),
        }
    }

    /// Epoch milliseconds.
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => now_ms(),
            Clock::Tokio { base_ms, base } => {
                base_ms + Instant::now().saturating_duration_since(*base).as_millis() as i64
            }
        }
    }

    /// The monotonic instant that timers and `sleep_until` take.
    pub fn now(&self) -> Instant {
        Instant::now()
    }

    /// The instant at which this clock will read `epoch_ms` (now, if that is past): how a
    /// wall-clock deadline from the journal becomes something to sleep until.
    pub fn instant_at(&self, epoch_ms: i64) -> Instant {
        let left = epoch_ms.saturating_sub(self.now_ms()).max(0) as u64;
        self.now() + Duration::from_millis(left)
    }
}

/// Epoch milliseconds from the system clock.
///
/// **NOTE** Kept for the code that has no [`Clock`] handed to it yet (journal timestamps,
/// feedback `at`); a stage whose timers matter reads its `Clock` instead.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `2026-11-28T10:00:00.125Z` for epoch milliseconds `ms` (UTC, millisecond precision).
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Howard Hinnant's days → (year, month, day) for the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_764_324_000_123), "2025-11-28T10:00:00.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_moves_epoch_ms_with_paused_time() {
        let c = Clock::tokio_at(1_764_324_000_000);
        let start = c.now();
        assert_eq!(c.now_ms(), 1_764_324_000_000);
        tokio::time::advance(Duration::from_millis(60_250)).await;
        assert_eq!(c.now_ms(), 1_764_324_060_250);
        assert_eq!(c.now() - start, Duration::from_millis(60_250));
        // A deadline in epoch ms becomes the instant the clock reads it; a past one is now.
        let at = c.instant_at(1_764_324_090_250);
        assert_eq!(at - c.now(), Duration::from_secs(30));
        assert_eq!(c.instant_at(0), c.now());
        // Clones read the same time.
        let c2 = c.clone();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(c2.now_ms(), c.now_ms());
        assert_eq!(c2.now_ms(), 1_764_324_061_250);
    }

    #[test]
    fn the_system_clock_reads_the_wall_clock() {
        let c = Clock::system();
        let (a, b, z) = (now_ms(), c.now_ms(), now_ms());
        assert!(a <= b && b <= z, "{a} <= {b} <= {z}");
    }
}
