//! What `yijian-sim press` makes of the answers it hears: which answer ends a press, and for
//! `--repeat N` the medians, each with how many samples it has, and whether the presses became
//! requests of their own or joined one that was still open.

use std::collections::HashSet;
use yijian_wire::FeedbackState;

/// Whether `state` answers a press for good. Everything after `received` does: a new request
/// goes on to `dispatched` or `escalated`, a press that joined an open request hears where that
/// request stands (`en_route`, `arrived`, ...), and a cancel press on a rescue already on its
/// way hears `en_route` or `arrived` with the reason that an operator will call.
pub fn is_final(state: FeedbackState) -> bool {
    state != FeedbackState::Received
}

/// The measurements of a `press --repeat N` run.
#[derive(Debug, Default)]
pub struct Tally {
    /// Press → `received`, in milliseconds, one per press that heard it.
    to_received: Vec<f64>,
    /// Press → its final answer, in milliseconds.
    to_final: Vec<f64>,
    /// Presses sent.
    presses: u32,
    /// The request each answered press was put in, in press order (`None`: no request, e.g.
    /// rejected or a cancel with nothing to cancel).
    requests: Vec<Option<String>>,
}

impl Tally {
    /// A press was sent.
    pub fn sent(&mut self) {
        self.presses += 1;
    }

    /// The press just sent heard `received` after `ms`.
    pub fn received(&mut self, ms: f64) {
        self.to_received.push(ms);
    }

    /// The press just sent heard its final answer after `ms`, naming `request`.
    pub fn answered(&mut self, ms: f64, request: Option<&str>) {
        self.to_final.push(ms);
        self.requests.push(request.map(str::to_owned));
    }

    /// How many presses joined a request an earlier press of this run had opened.
    pub fn joined(&self) -> usize {
        let mut seen = HashSet::new();
        self.requests
            .iter()
            .flatten()
            .filter(|r| !seen.insert(r.as_str()))
            .count()
    }

    /// The summary printed after the presses: medians with their sample counts (never `NaN`),
    /// and a note when presses joined an open request instead of opening their own.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} presses: press → received {}, press → final answer {}",
            self.presses,
            median_text(&self.to_received),
            median_text(&self.to_final)
        );
        let joined = self.joined();
        if joined > 0 {
            let distinct = self.requests.iter().flatten().collect::<HashSet<_>>().len();
            out.push_str(&format!(
                "\nnote: {joined} of {} presses joined a request that was still open ({distinct} request{} in all): \
                 the gateway's [flood] attach_window_s (default 1800 s) joins a device's presses of one service \
                 to its open request, so these presses measured the answer to a repeated press, not a new request. \
                 To measure separate requests, run the gateway with attach_window_s = 0 (as the bench scripts do) \
                 or close each request (`yijian-gateway requests close ID`) before the next press.",
                self.presses,
                if distinct == 1 { "" } else { "s" },
            ));
        }
        out
    }
}

/// `median 2.7 ms of 20 samples`, or `no samples`.
fn median_text(v: &[f64]) -> String {
    match median(v) {
        Some(m) => format!(
            "median {m:.1} ms of {} sample{}",
            v.len(),
            if v.len() == 1 { "" } else { "s" }
        ),
        None => "no samples".to_owned(),
    }
}

/// The median (the upper one of an even count), or `None` for no values.
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_after_received_is_final() {
        assert!(!is_final(FeedbackState::Received));
        for s in [
            FeedbackState::Dispatched,
            FeedbackState::Escalated,
            FeedbackState::EnRoute,
            FeedbackState::Arrived,
            FeedbackState::Cancelled,
            FeedbackState::Closed,
            FeedbackState::Rejected,
        ] {
            assert!(is_final(s), "{s} ends a press");
        }
    }

    #[test]
    fn medians_name_their_samples_and_are_never_nan() {
        let mut t = Tally::default();
        t.sent();
        t.sent();
        t.received(2.0);
        t.received(4.0);
        t.answered(3.0, Some("rq_1"));
        let s = t.summary();
        assert_eq!(
            s,
            "2 presses: press → received median 4.0 ms of 2 samples, press → final answer median 3.0 ms of 1 sample"
        );
        let empty = Tally::default().summary();
        assert!(!empty.contains("NaN"), "{empty}");
        assert!(empty.contains("press → received no samples"), "{empty}");
    }

    #[test]
    fn presses_that_joined_an_open_request_are_pointed_out() {
        let mut t = Tally::default();
        for _ in 0..3 {
            t.sent();
            t.received(1.0);
            t.answered(2.0, Some("rq_same"));
        }
        assert_eq!(t.joined(), 2);
        let s = t.summary();
        assert!(
            s.contains(
                "note: 2 of 3 presses joined a request that was still open (1 request in all)"
            ),
            "{s}"
        );
        assert!(s.contains("attach_window_s = 0"), "{s}");

        let mut separate = Tally::default();
        for rid in ["rq_a", "rq_b"] {
            separate.sent();
            separate.answered(2.0, Some(rid));
        }
        assert_eq!(separate.joined(), 0);
        assert!(!separate.summary().contains("note:"));
    }
}
