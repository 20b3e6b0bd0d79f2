//! Exponential backoff with jitter ("equal jitter": half fixed, half random), so retries from
//! many requests spread out instead of arriving at a recovering backend together.

use rand::Rng;
use std::time::Duration;

/// Delay before retry number `n` (0 for the first retry).
pub fn delay(n: u32, initial: Duration, max: Duration, rng: &mut impl Rng) -> Duration {
    let base = initial
        .saturating_mul(1u32.checked_shl(n.min(20)).unwrap_or(u32::MAX))
        .min(max);
    let half = base / 2;
    let jitter_ms = rng.gen_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn grows_exponentially_within_bounds_with_jitter() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (i, m) = (Duration::from_millis(200), Duration::from_millis(5000));
        for n in 0..10 {
            let base = (200u64 << n).min(5000);
            for _ in 0..50 {
                let d = delay(n, i, m, &mut rng).as_millis() as u64;
                assert!(
                    d >= base / 2 && d <= base,
                    "retry {n}: {d} ms outside [{}, {base}]",
                    base / 2
                );
            }
        }
        let samples: std::collections::HashSet<_> =
            (0..50).map(|_| delay(3, i, m, &mut rng)).collect();
        assert!(
            samples.len() > 10,
            "jitter spreads retries: {} distinct delays",
            samples.len()
        );
        assert!(delay(40, i, m, &mut rng) <= m);
    }
}
