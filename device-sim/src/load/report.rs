//! The load run's report: printed for people, written as JSON for scripts.

use super::tracker::Integrity;
use super::RunOptions;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// Latency quantiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Quantiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Quantiles {
    /// From a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Quantiles {
        if h.is_empty() {
            return Quantiles::default();
        }
        let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
        Quantiles {
            count: h.len(),
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

/// One constant-rate phase.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub rate_offered: f64,
    pub seconds: f64,
    pub sent: u64,
    pub received: u64,
    pub dispatched: u64,
    pub escalated: u64,
    /// Presses of this step without a final answer after the drain.
    pub lost: u64,
    pub retransmits: u64,
    /// Final answers per second of pressing.
    pub throughput: f64,
    pub press_to_received: Quantiles,
    pub press_to_dispatched: Quantiles,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub devices: usize,
    pub heartbeat_s: f64,
    pub connect_seconds: Option<f64>,
    pub connected_at_end: usize,
    pub connection_drops: u64,
    pub failed_connect_attempts: u64,
    pub steps: Vec<StepReport>,
    pub presses_sent: u64,
    pub unique_requests_at_backends: u64,
    pub backend_attempts: u64,
    pub backend_duplicates_409: u64,
    pub without_received: u64,
    pub without_final_answer: u64,
    pub doubled: u64,
    pub merged_into_open_request: u64,
    pub press_to_backend: Quantiles,
    pub pressing_seconds: f64,
    /// Highest step rate that held (`--max-rate`).
    pub max_rate_held: Option<f64>,
    pub gateway_rss_kb_after_connect: Option<u64>,
    pub gateway_rss_kb_at_end: Option<u64>,
    pub gateway_peak_rss_kb: Option<u64>,
    /// Gateway CPU seconds (user + system) spent while pressing and draining.
    pub gateway_cpu_seconds: Option<f64>,
    /// Gateway CPU seconds per 1,000 presses sent.
    pub gateway_cpu_s_per_1000_presses: Option<f64>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn build(
        opts: &RunOptions,
        devices: usize,
        connect: Option<Duration>,
        connected_at_end: usize,
        drops: u64,
        failed: u64,
        steps: Vec<StepReport>,
        integrity: Integrity,
        duplicates: u64,
        attempts: u64,
        pressing: Duration,
        rss_connect: Option<u64>,
        rss_end: Option<u64>,
        rss_peak: Option<u64>,
        cpu_seconds: Option<f64>,
    ) -> Report {
        let max_rate_held = opts.max_rate.and_then(|limit| {
            steps
                .iter()
                .filter(|s| {
                    s.lost == 0 && s.press_to_dispatched.p99_ms <= limit.as_secs_f64() * 1000.0
                })
                .map(|s| s.rate_offered)
                .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))))
        });
        Report {
            devices,
            heartbeat_s: opts.heartbeat.as_secs_f64(),
            connect_seconds: connect.map(|d| d.as_secs_f64()),
            connected_at_end,
            connection_drops: drops,
            failed_connect_attempts: failed,
            presses_sent: integrity.presses,
            unique_requests_at_backends: integrity.unique_requests_at_backends,
            backend_attempts: attempts,
            backend_duplicates_409: duplicates,
            without_received: integrity.without_received,
            without_final_answer: integrity.without_final,
            doubled: integrity.doubled,
            merged_into_open_request: integrity.merged,
            press_to_backend: integrity
                .backend_latency
                .as_ref()
                .map(Quantiles::of)
                .unwrap_or_default(),
            pressing_seconds: pressing.as_secs_f64(),
            steps,
            max_rate_held,
            gateway_rss_kb_after_connect: rss_connect,
            gateway_rss_kb_at_end: rss_end,
            gateway_peak_rss_kb: rss_peak,
            gateway_cpu_seconds: cpu_seconds,
            gateway_cpu_s_per_1000_presses: cpu_seconds
                .filter(|_| integrity.presses > 0)
                .map(|c| c * 1000.0 / integrity.presses as f64),
        }
    }

    /// Nothing lost, nothing doubled.
    pub fn ok(&self) -> bool {
        self.without_received == 0 && self.without_final_answer == 0 && self.doubled == 0
    }
}

fn row(f: &mut fmt::Formatter<'_>, name: &str, q: &Quantiles) -> fmt::Result {
    writeln!(
        f,
        "  {name:<22} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9}",
        q.p50_ms, q.p90_ms, q.p99_ms, q.p999_ms, q.max_ms, q.count
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "devices: {} (heartbeat every {:.0} s)",
            self.devices, self.heartbeat_s
        )?;
        match self.connect_seconds {
            Some(s) => writeln!(f, "connect: all {} connected in {:.1} s", self.devices, s)?,
            None => writeln!(
                f,
                "connect: NOT all connected ({} at the end)",
                self.connected_at_end
            )?,
        }
        writeln!(
            f,
            "connections dropped after being established: {} (failed attempts: {})",
            self.connection_drops, self.failed_connect_attempts
        )?;
        for s in &self.steps {
            writeln!(
                f,
                "\nrate {:.0} presses/s for {:.1} s: sent {}, dispatched {}, escalated {}, unanswered {}, throughput {:.1}/s, retransmits {}",
                s.rate_offered, s.seconds, s.sent, s.dispatched, s.escalated, s.lost, s.throughput, s.retransmits
            )?;
            writeln!(
                f,
                "  {:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "latency (ms)", "p50", "p90", "p99", "p99.9", "max", "count"
            )?;
            row(f, "press → received", &s.press_to_received)?;
            row(f, "press → dispatched", &s.press_to_dispatched)?;
        }
        writeln!(
            f,
            "\nall steps: press → arrival at the mock backend (backend side):"
        )?;
        writeln!(
            f,
            "  {:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "p50", "p90", "p99", "p99.9", "max", "count"
        )?;
        row(f, "press → backend", &self.press_to_backend)?;
        if let Some(r) = self.max_rate_held {
            writeln!(f, "\nhighest rate that held: {r:.0} presses/s")?;
        }
        writeln!(f, "\nintegrity:")?;
        writeln!(f, "  presses sent                 {}", self.presses_sent)?;
        writeln!(
            f,
            "  unique requests at backends  {} ({} attempts, {} repeated keys answered 409)",
            self.unique_requests_at_backends, self.backend_attempts, self.backend_duplicates_409
        )?;
        writeln!(
            f,
            "  presses without received     {}",
            self.without_received
        )?;
        writeln!(
            f,
            "  presses without final answer {}",
            self.without_final_answer
        )?;
        writeln!(f, "  doubled presses              {}", self.doubled)?;
        writeln!(
            f,
            "  merged into an open request  {}",
            self.merged_into_open_request
        )?;
        if let (Some(a), Some(e), Some(p)) = (
            self.gateway_rss_kb_after_connect,
            self.gateway_rss_kb_at_end,
            self.gateway_peak_rss_kb,
        ) {
            writeln!(
                f,
                "gateway RSS: {:.1} MiB after connect, {:.1} MiB at end, peak {:.1} MiB",
                a as f64 / 1024.0,
                e as f64 / 1024.0,
                p as f64 / 1024.0
            )?;
        }
        if let (Some(c), Some(k)) = (
            self.gateway_cpu_seconds,
            self.gateway_cpu_s_per_1000_presses,
        ) {
            writeln!(
                f,
                "gateway CPU: {c:.1} s while pressing and draining, {k:.3} s per 1,000 presses"
            )?;
        }
        write!(
            f,
            "result: {}",
            if self.ok() {
                "OK — nothing lost, nothing doubled"
            } else {
                "FAILED — presses lost or doubled"
            }
        )
    }
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `f` summed over several processes; None when there are none or one cannot be read. (A sum
/// of peak RSS is an upper bound: the processes need not have peaked at the same moment.)
pub fn sum_over<T: std::iter::Sum<T>>(pids: &[u32], f: impl Fn(u32) -> Option<T>) -> Option<T> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| f(p)).sum()
}

/// User + system CPU seconds a process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Resident memory of a process, KiB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS:")
}

/// Peak resident memory of a process, KiB.
pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmHWM:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_processes_are_summed_and_a_missing_one_spoils_the_sum() {
        let me = std::process::id();
        assert_eq!(sum_over(&[], rss_kb), None);
        let one = sum_over(&[me], |_| Some(5u64)).unwrap();
        assert_eq!(sum_over(&[me, me], |_| Some(5u64)), Some(2 * one));
        assert!(
            sum_over(&[me], rss_kb).is_some(),
            "this process's RSS is readable"
        );
        assert_eq!(sum_over(&[me, u32::MAX], rss_kb), None, "no such process");
    }
}
