//! Gauges sampled from the journal on a timer, for what no single event can tell: how long the
//! oldest escalated request has been waiting for an operator. An alert on that age fires while
//! a request is still unanswered, not after someone finally takes it. And memory: what the
//! engine holds, and the whole heap (`telemetry::sampler`'s probe, when the binary set one), so
//! a soak (or an operator) can tell a leak from caches filling and from allocator retention.

use super::Store;
use crate::clock::now_ms;
use crate::telemetry;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the journal is sampled. Small against the 60 s answer target; the query reads
/// one row of the `(state, created_at)` index.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Sample every [`INTERVAL`] until `shutdown`.
pub fn start(store: Store, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            telemetry::store_memory(store.engine().memory_used());
            telemetry::sampler::sample_heap();
            match store.oldest_escalated().await {
                Ok(oldest) => telemetry::desk_oldest_waiting(waiting_secs(oldest, now_ms())),
                // The journal's own errors are counted and logged where they happen.
                Err(e) => tracing::debug!(error = %e, "desk sample failed"),
            }
        }
    })
}

/// Seconds the oldest escalated request (created at `oldest_ms`) has waited by `now`.
fn waiting_secs(oldest_ms: Option<i64>, now: i64) -> f64 {
    oldest_ms
        .map(|t| (now - t).max(0) as f64 / 1000.0)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_waiting_is_zero_and_ages_never_go_negative() {
        assert_eq!(waiting_secs(None, 10_000), 0.0);
        assert_eq!(waiting_secs(Some(4_000), 10_000), 6.0);
        assert_eq!(waiting_secs(Some(12_000), 10_000), 0.0);
    }
}
