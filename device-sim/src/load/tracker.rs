//! Per-press bookkeeping for a load run: what was sent, what each device heard, latency
//! histograms, and the integrity check (nothing lost, nothing doubled).

use hdrhistogram::Histogram;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use yijian_wire::{Feedback, FeedbackState, Service};

/// One press as the simulator remembers it.
struct PressRec {
    sent: Instant,
    sent_us: i64,
    received: bool,
    final_state: Option<FeedbackState>,
    requests: Vec<String>,
}

/// A press still waiting for its first feedback (retransmitted until answered).
pub struct Unanswered {
    pub device: u32,
    pub payload: Vec<u8>,
    pub next_send: Instant,
}

/// Latency histograms, in microseconds.
pub struct Histograms {
    pub received: Histogram<u64>,
    pub dispatched: Histogram<u64>,
}

impl Histograms {
    fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
        Histograms {
            received: h(),
            dispatched: h(),
        }
    }
}

/// Counters of one run (or one step of `--max-rate`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub sent: u64,
    pub received: u64,
    pub dispatched: u64,
    pub escalated: u64,
    pub other_final: u64,
    pub rejected: u64,
    pub retransmits: u64,
    pub publish_errors: u64,
    pub feedback_heard: u64,
}

struct Inner {
    presses: HashMap<String, PressRec>,
    unanswered: HashMap<String, Unanswered>,
    hist: Histograms,
    counts: Counts,
}

/// Shared by the press generator, every device's event loop and the retransmitter.
pub struct Tracker {
    inner: Mutex<Inner>,
    retransmit: Duration,
}

fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    d.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
}

impl Tracker {
    /// A tracker whose presses are retransmitted every `retransmit` (jittered) until answered.
    pub fn new(retransmit: Duration) -> Self {
        Tracker {
            inner: Mutex::new(Inner {
                presses: HashMap::new(),
                unanswered: HashMap::new(),
                hist: Histograms::new(),
                counts: Counts::default(),
            }),
            retransmit,
        }
    }

    /// Record a press just before it is published.
    pub fn sent(&self, id: &str, device: u32, sent_us: i64, payload: Vec<u8>) {
        let now = Instant::now();
        let mut i = self.inner.lock().expect("tracker lock");
        i.presses.insert(
            id.to_owned(),
            PressRec {
                sent: now,
                sent_us,
                received: false,
                final_state: None,
                requests: Vec::new(),
            },
        );
        i.unanswered.insert(
            id.to_owned(),
            Unanswered {
                device,
                payload,
                next_send: now + jitter(self.retransmit),
            },
        );
        i.counts.sent += 1;
    }

    /// A publish could not be queued; the retransmitter will try again.
    pub fn publish_error(&self) {
        self.inner
            .lock()
            .expect("tracker lock")
            .counts
            .publish_errors += 1;
    }

    /// A device heard a feedback message.
    pub fn heard(&self, payload: &[u8], at: Instant) {
        let Ok(f) = serde_json::from_slice::<Feedback>(payload) else {
            return;
        };
        let Some(id) = f.press.as_deref() else { return };
        let mut guard = self.inner.lock().expect("tracker lock");
        let i = &mut *guard;
        i.counts.feedback_heard += 1;
        i.unanswered.remove(id);
        let Some(p) = i.presses.get_mut(id) else {
            return;
        };
        if let Some(r) = &f.request {
            if !p.requests.contains(r) {
                p.requests.push(r.clone());
            }
        }
        let us = at.saturating_duration_since(p.sent).as_micros() as u64;
        if !p.received && f.state != FeedbackState::Rejected {
            p.received = true;
            i.counts.received += 1;
            let _ = i.hist.received.record(us.max(1));
        }
        if p.final_state.is_none() {
            match f.state {
                FeedbackState::Dispatched => {
                    i.counts.dispatched += 1;
                    let _ = i.hist.dispatched.record(us.max(1));
                }
                FeedbackState::Escalated => i.counts.escalated += 1,
                FeedbackState::Rejected => i.counts.rejected += 1,
                FeedbackState::Cancelled
                | FeedbackState::Closed
                | FeedbackState::EnRoute
                | FeedbackState::Arrived => i.counts.other_final += 1,
                FeedbackState::Received => return,
            }
            p.final_state = Some(f.state);
        }
    }

    /// Presses due for retransmission now (their next send is rescheduled).
    pub fn due(&self) -> Vec<(u32, Vec<u8>)> {
        let now = Instant::now();
        let mut i = self.inner.lock().expect("tracker lock");
        let mut out = Vec::new();
        for u in i.unanswered.values_mut().filter(|u| u.next_send <= now) {
            u.next_send = now + jitter(self.retransmit);
            out.push((u.device, u.payload.clone()));
        }
        i.counts.retransmits += out.len() as u64;
        out
    }

    /// Unanswered presses of one device (resent after it reconnects).
    pub fn unanswered_of(&self, device: u32) -> Vec<Vec<u8>> {
        let i = self.inner.lock().expect("tracker lock");
        i.unanswered
            .values()
            .filter(|u| u.device == device)
            .map(|u| u.payload.clone())
            .collect()
    }

    /// Current counters.
    pub fn counts(&self) -> Counts {
        self.inner.lock().expect("tracker lock").counts
    }

    /// Whether every press sent has a final answer.
    pub fn settled(&self) -> bool {
        let i = self.inner.lock().expect("tracker lock");
        i.presses.values().all(|p| p.final_state.is_some())
    }

    /// Take the histograms and counters (for a step), leaving fresh ones and forgetting
    /// settled presses' latency data but keeping their ids for the integrity check.
    pub fn take_step(&self) -> (Histograms, Counts) {
        let mut i = self.inner.lock().expect("tracker lock");
        let h = std::mem::replace(&mut i.hist, Histograms::new());
        let c = std::mem::take(&mut i.counts);
        (h, c)
    }

    /// The integrity check against what the backends received.
    pub fn integrity(&self, arrivals: &[(String, String, i64)]) -> Integrity {
        // arrivals: (request id, press id, arrival epoch µs), one per unique Idempotency-Key.
        let i = self.inner.lock().expect("tracker lock");
        let mut report = Integrity::default();
        let mut backend_latency =
            Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
        let mut presses_at_backend: HashMap<&str, HashSet<&str>> = HashMap::new();
        let mut keys = HashSet::new();
        for (key, press, arrived_us) in arrivals {
            keys.insert(key.as_str());
            presses_at_backend
                .entry(press.as_str())
                .or_default()
                .insert(key.as_str());
            if let Some(p) = i.presses.get(press) {
                let _ = backend_latency.record((arrived_us - p.sent_us).max(1) as u64);
            }
        }
        report.unique_requests_at_backends = keys.len() as u64;
        let mut request_owner: HashMap<&str, &str> = HashMap::new();
        for (id, p) in &i.presses {
            report.presses += 1;
            if !p.received {
                report.without_received += 1;
            }
            if p.final_state.is_none() {
                report.without_final += 1;
            }
            let mut requests: HashSet<&str> = p.requests.iter().map(String::as_str).collect();
            if let Some(at_backend) = presses_at_backend.get(id.as_str()) {
                requests.extend(at_backend.iter().copied());
            }
            if requests.len() > 1 {
                report.doubled += 1;
            }
            for r in requests {
                if let Some(other) = request_owner.insert(r, id.as_str()) {
                    if other != id.as_str() {
                        report.merged += 1;
                    }
                }
            }
        }
        report.backend_latency = Some(backend_latency);
        report
    }
}

/// The end-of-run integrity check.
#[derive(Default)]
pub struct Integrity {
    pub presses: u64,
    pub unique_requests_at_backends: u64,
    pub without_received: u64,
    pub without_final: u64,
    /// Presses answered or dispatched under two different request ids.
    pub doubled: u64,
    /// Presses that joined another press's open request (flood control's "pressed again").
    pub merged: u64,
    /// Press sent → arrival at a backend, µs.
    pub backend_latency: Option<Histogram<u64>>,
}

/// Weights of the three services in the press mix.
#[derive(Debug, Clone)]
pub struct Mix {
    pub weights: Vec<(Service, f64)>,
}

impl Mix {
    /// Parse `rescue=1,taxi=2,hospital=1`.
    pub fn parse(s: &str) -> Result<Mix, String> {
        let mut weights = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("mix entry {part:?} must be service=weight"))?;
            let service: Service = k.trim().parse()?;
            if !matches!(service, Service::Rescue | Service::Taxi | Service::Hospital) {
                return Err(format!(
                    "mix service must be rescue, taxi or hospital (got {k})"
                ));
            }
            let w: f64 = v
                .trim()
                .parse()
                .map_err(|_| format!("mix weight {v:?} is not a number"))?;
            if !(w >= 0.0 && w.is_finite()) {
                return Err(format!("mix weight {v:?} must be a non-negative number"));
            }
            weights.push((service, w));
        }
        if weights.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
            return Err("mix needs at least one positive weight".into());
        }
        Ok(Mix { weights })
    }

    /// Draw a service.
    pub fn pick(&self, rng: &mut impl rand::Rng) -> Service {
        let total: f64 = self.weights.iter().map(|(_, w)| w).sum();
        let mut x = rng.gen_range(0.0..total);
        for (s, w) in &self.weights {
            if x < *w {
                return *s;
            }
            x -= w;
        }
        self.weights
            .last()
            .map(|(s, _)| *s)
            .unwrap_or(Service::Rescue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_draws_by_weight() {
        let m = Mix::parse("rescue=1,taxi=3,hospital=0").unwrap();
        let mut rng = rand::thread_rng();
        let mut n = HashMap::new();
        for _ in 0..4000 {
            *n.entry(m.pick(&mut rng)).or_insert(0) += 1;
        }
        assert_eq!(n.get(&Service::Hospital), None);
        let (r, t) = (n[&Service::Rescue] as f64, n[&Service::Taxi] as f64);
        assert!((2.5..3.5).contains(&(t / r)), "taxi/rescue ratio {}", t / r);
        assert!(Mix::parse("rescue=x").is_err());
        assert!(Mix::parse("welfare_check=1").is_err());
        assert!(Mix::parse("rescue=0").is_err());
    }

    #[test]
    fn integrity_finds_lost_and_doubled_presses() {
        let t = Tracker::new(Duration::from_secs(5));
        t.sent("a", 0, 1_000, b"{}".to_vec());
        t.sent("b", 0, 1_000, b"{}".to_vec());
        t.sent("c", 1, 1_000, b"{}".to_vec());
        let now = Instant::now();
        let fb = |press: &str, req: &str, state: &str| {
            format!(r#"{{"press":"{press}","request":"{req}","state":"{state}","at":1}}"#)
                .into_bytes()
        };
        t.heard(&fb("a", "r1", "received"), now);
        t.heard(&fb("a", "r1", "dispatched"), now);
        t.heard(&fb("b", "r2", "received"), now);
        t.heard(&fb("b", "r3", "dispatched"), now); // doubled: two requests for one press
        let arrivals = vec![
            ("r1".to_owned(), "a".to_owned(), 3_000),
            ("r2".to_owned(), "b".to_owned(), 3_000),
        ];
        let i = t.integrity(&arrivals);
        assert_eq!(i.presses, 3);
        assert_eq!(i.without_received, 1, "c never heard back");
        assert_eq!(i.without_final, 1);
        assert_eq!(i.doubled, 1);
        assert_eq!(i.unique_requests_at_backends, 2);
        assert_eq!(i.backend_latency.unwrap().len(), 2);
        assert_eq!(t.unanswered_of(1).len(), 1, "c is still owed an answer");
    }
}
