//! The decision table, row by row, on instants and a seeded RNG the tests choose.

use super::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::cell::RefCell;

const DEADLINE: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_secs(3);
const INITIAL: Duration = Duration::from_millis(200);
const MAX: Duration = Duration::from_millis(5000);

/// Scripted breakers: closed unless listed in `open` (with when they would let a probe
/// through); every report is kept.
struct Fake {
    t0: Instant,
    open: RefCell<HashMap<String, Instant>>,
    unknown: Vec<&'static str>,
    reports: RefCell<Vec<(String, bool)>>,
}

impl Fake {
    fn new(t0: Instant) -> Self {
        Fake {
            t0,
            open: RefCell::new(HashMap::new()),
            unknown: Vec::new(),
            reports: RefCell::new(Vec::new()),
        }
    }
    fn reports(&self) -> Vec<(String, bool)> {
        self.reports.borrow().clone()
    }
}

impl Gates for Fake {
    fn known(&self, b: &str) -> bool {
        !self.unknown.contains(&b)
    }
    fn allow(&self, b: &str) -> bool {
        !self.open.borrow().contains_key(b)
    }
    fn retry_at(&self, b: &str) -> Instant {
        self.open.borrow().get(b).copied().unwrap_or(self.t0)
    }
    fn report(&self, b: &str, alive: bool) {
        self.reports.borrow_mut().push((b.to_owned(), alive));
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn policy(backends: &[String], attempts: u32) -> Policy<'_> {
    Policy {
        backends,
        attempts_per_backend: attempts,
        attempt_timeout: TIMEOUT,
        backoff_initial: INITIAL,
        backoff_max: MAX,
    }
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

fn accepted() -> AttemptResult {
    AttemptResult::Accepted {
        reference: Some("TX-8812".into()),
        eta_s: Some(600),
    }
}

fn failed(label: &'static str) -> AttemptResult {
    AttemptResult::Failed {
        label,
        retry_after: None,
    }
}

fn attempt(b: &str) -> Step<'_> {
    Step::Attempt {
        backend: b,
        timeout: TIMEOUT,
    }
}

#[test]
fn desk_first_goes_to_the_desk_without_an_attempt() {
    let t0 = Instant::now();
    let (list, g) = (names(&["desk", "a"]), Fake::new(t0));
    let mut p = Plan::new(policy(&list, 3), t0 + DEADLINE);
    assert_eq!(p.next(t0, &g, &mut rng()), Step::Escalate(reason::ROUTED));
    assert!(g.reports().is_empty());
}

/// Every HTTP outcome, on the first backend of `[a, b, desk]` with two attempts each, at its
/// first and its last attempt: what the plan does next.
#[test]
fn each_outcome_at_each_attempt_leads_to_its_step() {
    #[derive(Debug, PartialEq)]
    enum Next {
        Accepted,
        RetrySameAfterBackoff,
        FailOver,
    }
    use Next::*;
    let rows: Vec<(AttemptResult, Next, Next)> = vec![
        (accepted(), Accepted, Accepted),
        (AttemptResult::Conflict, Accepted, Accepted),
        (AttemptResult::Refused(400), FailOver, FailOver),
        (AttemptResult::Refused(404), FailOver, FailOver),
        (failed("http_500"), RetrySameAfterBackoff, FailOver),
        (failed("http_503"), RetrySameAfterBackoff, FailOver),
        (failed("http_429"), RetrySameAfterBackoff, FailOver),
        (failed("timeout"), RetrySameAfterBackoff, FailOver),
        (failed("connect_error"), RetrySameAfterBackoff, FailOver),
    ];
    let list = names(&["a", "b", "desk"]);
    for (result, at_first, at_last) in rows {
        for (tries, want) in [(1, at_first), (2, at_last)] {
            let t0 = Instant::now();
            let g = Fake::new(t0);
            let mut r = rng();
            let mut p = Plan::new(policy(&list, 2), t0 + DEADLINE);
            let mut now = t0;
            // Fail the attempts before the one under test.
            for _ in 1..tries {
                assert_eq!(p.next(now, &g, &mut r), attempt("a"));
                assert_eq!(p.record(now, failed("http_503"), &g, &mut r), None);
                let Step::Wait { until } = p.next(now, &g, &mut r) else {
                    panic!("a failure before the last attempt waits")
                };
                now = until;
            }
            assert_eq!(p.next(now, &g, &mut r), attempt("a"));
            let got = match p.record(now, result.clone(), &g, &mut r) {
                Some(a) => {
                    assert_eq!(a.backend, "a");
                    if let AttemptResult::Accepted { reference, eta_s } = &result {
                        assert_eq!((&a.reference, &a.eta_s), (reference, eta_s));
                    } else {
                        assert_eq!((a.reference, a.eta_s), (None, None));
                    }
                    Accepted
                }
                None => match p.next(now, &g, &mut r) {
                    Step::Wait { until } => {
                        assert!(until > now, "a retry waits");
                        assert_eq!(p.next(until, &g, &mut r), attempt("a"));
                        RetrySameAfterBackoff
                    }
                    s if s == attempt("b") => FailOver,
                    s => panic!("{result:?} at try {tries}: unexpected {s:?}"),
                },
            };
            assert_eq!(got, want, "{result:?} at try {tries}");
            // The breaker hears "alive" for any answer, "failed" for 5xx and the like.
            let alive = !matches!(result, AttemptResult::Failed { .. });
            assert_eq!(g.reports().last(), Some(&("a".to_owned(), alive)));
        }
    }
}

#[test]
fn failing_over_onto_desk_escalates_as_failover() {
    let t0 = Instant::now();
    let (list, g, mut r) = (names(&["a", "b", "desk"]), Fake::new(t0), rng());
    let mut p = Plan::new(policy(&list, 3), t0 + DEADLINE);
    assert_eq!(p.next(t0, &g, &mut r), attempt("a"));
    assert_eq!(p.record(t0, AttemptResult::Refused(422), &g, &mut r), None);
    assert_eq!(
        p.next(t0, &g, &mut r),
        attempt("b"),
        "a refusal fails over at once"
    );
    assert_eq!(p.record(t0, AttemptResult::Refused(403), &g, &mut r), None);
    assert_eq!(p.next(t0, &g, &mut r), Step::Escalate(reason::FAILOVER));
    assert_eq!(
        g.reports(),
        vec![("a".into(), true), ("b".into(), true)],
        "a refusing backend is alive"
    );
}

#[test]
fn every_backend_refusing_escalates_as_refused() {
    let t0 = Instant::now();
    let (list, g, mut r) = (names(&["a", "b"]), Fake::new(t0), rng());
    let mut p = Plan::new(policy(&list, 3), t0 + DEADLINE);
    for b in ["a", "b"] {
        assert_eq!(p.next(t0, &g, &mut r), attempt(b));
        assert_eq!(p.record(t0, AttemptResult::Refused(400), &g, &mut r), None);
    }
    assert_eq!(p.next(t0, &g, &mut r), Step::Escalate(reason::REFUSED));
}

#[test]
fn retries_back_off_exponentially_then_fail_over_then_rounds_back_off_longer() {
    let t0 = Instant::now();
    let (list, g, mut r) = (names(&["a", "b"]), Fake::new(t0), rng());
    // The same seed replays the jitter the plan draws, in the same order.
    let mut twin = rng();
    let mut p = Plan::new(policy(&list, 2), t0 + DEADLINE);
    let mut now = t0;
    for (round, b) in [(0u32, "a"), (0, "b"), (1, "a"), (1, "b")] {
        assert_eq!(p.next(now, &g, &mut r), attempt(b), "round {round}");
        p.record(now, failed("http_502"), &g, &mut r);
        // Retry number `round * attempts + 0` of this round on this backend.
        let wait = backoff::delay(round * 2, INITIAL, MAX, &mut twin);
        assert_eq!(p.next(now, &g, &mut r), Step::Wait { until: now + wait });
        now += wait;
        assert_eq!(p.next(now, &g, &mut r), attempt(b));
        p.record(now, failed("timeout"), &g, &mut r);
        if b == "b" {
            // End of the round: every backend failed; the next round backs off longer.
            let wait = backoff::delay(round + 1, INITIAL, MAX, &mut twin);
            assert_eq!(p.next(now, &g, &mut r), Step::Wait { until: now + wait });
            now += wait;
        }
    }
    assert_eq!(p.next(now, &g, &mut r), attempt("a"), "round 2 starts over");
    assert!(g.reports().iter().all(|(_, alive)| !alive));
}

#[test]
fn retry_after_sets_the_wait_and_holds_the_backend_into_the_next_round() {
    let t0 = Instant::now();
    let (list, g, mut r) = (names(&["a", "b"]), Fake::new(t0), rng());
    let mut twin = rng();
    let ra = Duration::from_secs(20);
    let mut p = Plan::new(policy(&list, 2), t0 + DEADLINE);
    assert_eq!(p.next(t0, &g, &mut r), attempt("a"));
    let busy = AttemptResult::Failed {
        label: "http_503",
        retry_after: Some(ra),
    };
    p.record(t0, busy.clone(), &g, &mut r);
    assert_eq!(
        p.next(t0, &g, &mut r),
        Step::Wait { until: t0 + ra },
        "Retry-After replaces the backoff"
    );
    let now = t0 + ra;
    assert_eq!(p.next(now, &g, &mut r), attempt("a"));
    p.record(now, busy, &g, &mut r);
    // Last attempt on a: fail over without waiting; b fails twice.
    assert_eq!(p.next(now, &g, &mut r), attempt("b"));
    p.record(now, failed("http_500"), &g, &mut r);
    let w = backoff::delay(0, INITIAL, MAX, &mut twin);
    assert_eq!(p.next(now, &g, &mut r), Step::Wait { until: now + w });
    let now = now + w;
    assert_eq!(p.next(now, &g, &mut r), attempt("b"));
    p.record(now, failed("http_500"), &g, &mut r);
    // The round's backoff is short, but b is free, so the round starts after it...
    let w = backoff::delay(1, INITIAL, MAX, &mut twin);
    assert_eq!(p.next(now, &g, &mut r), Step::Wait { until: now + w });
    let now = now + w;
    // ... and skips a, whose Retry-After has not passed.
    assert_eq!(p.next(now, &g, &mut r), attempt("b"));
    p.record(now, AttemptResult::Refused(410), &g, &mut r);
    // Only a is left: the round waits for its Retry-After, no backoff (nothing failed).
    assert_eq!(
        p.next(now, &g, &mut r),
        Step::Wait {
            until: t0 + ra + ra
        }
    );
    assert_eq!(p.next(t0 + ra + ra, &g, &mut r), attempt("a"));
}

#[test]
fn an_open_circuit_is_skipped_and_the_round_waits_for_its_probe() {
    let t0 = Instant::now();
    let (list, g, mut r) = (names(&["a", "b"]), Fake::new(t0), rng());
    let probe = t0 + Duration::from_secs(30);
    g.open.borrow_mut().insert("a".into(), probe);
    let mut p = Plan::new(policy(&list, 1), t0 + DEADLINE);
    assert_eq!(p.next(t0, &g, &mut r), attempt("b"), "a's circuit is open");
    p.record(t0, AttemptResult::Refused(400), &g, &mut r);
    assert_eq!(p.next(t0, &g, &mut r), Step::Wait { until: probe });
    g.open.borrow_mut().clear();
    assert_eq!(p.next(probe, &g, &mut r), attempt("a"));
}

#[test]
fn an_idle_round_waits_at_least_a_little() {
    let t0 = Instant::now();
    let (list, g, mut r) = (names(&["a"]), Fake::new(t0), rng());
    // A circuit that refuses yet says "look again now" must not spin the loop.
    g.open.borrow_mut().insert("a".into(), t0);
    let mut p = Plan::new(policy(&list, 1), t0 + DEADLINE);
    assert_eq!(
        p.next(t0, &g, &mut r),
        Step::Wait {
            until: t0 + Duration::from_millis(10)
        }
    );
}

#[test]
fn the_deadline_shortens_the_last_attempt_then_escalates() {
    let t0 = Instant::now();
    let (list, g, mut r) = (names(&["a", "b"]), Fake::new(t0), rng());
    let deadline = t0 + DEADLINE;
    let mut p = Plan::new(policy(&list, 1), deadline);
    let now = deadline - Duration::from_secs(1);
    assert_eq!(
        p.next(now, &g, &mut r),
        Step::Attempt {
            backend: "a",
            timeout: Duration::from_secs(1)
        }
    );
    p.record(deadline, failed("timeout"), &g, &mut r);
    assert_eq!(
        p.next(deadline, &g, &mut r),
        Step::Escalate(reason::DEADLINE),
        "no attempt starts at the deadline"
    );
}

#[test]
fn a_wait_never_passes_the_deadline_and_waking_there_escalates() {
    let t0 = Instant::now();
    let (list, g, mut r) = (names(&["a", "desk"]), Fake::new(t0), rng());
    let deadline = t0 + DEADLINE;
    let mut p = Plan::new(policy(&list, 3), deadline);
    assert_eq!(p.next(t0, &g, &mut r), attempt("a"));
    let busy = AttemptResult::Failed {
        label: "http_503",
        retry_after: Some(Duration::from_secs(120)),
    };
    p.record(t0, busy, &g, &mut r);
    assert_eq!(p.next(t0, &g, &mut r), Step::Wait { until: deadline });
    assert_eq!(
        p.next(deadline, &g, &mut r),
        Step::Escalate(reason::DEADLINE),
        "the deadline, not the failover to desk"
    );
}

#[test]
fn desk_in_the_list_is_failover_even_past_the_deadline() {
    let t0 = Instant::now();
    let (list, g, mut r) = (names(&["a", "desk"]), Fake::new(t0), rng());
    g.open.borrow_mut().insert("a".into(), t0 + DEADLINE * 2);
    let mut p = Plan::new(policy(&list, 3), t0 + DEADLINE);
    assert_eq!(
        p.next(t0 + DEADLINE * 2, &g, &mut r),
        Step::Escalate(reason::FAILOVER)
    );
}

#[test]
fn unknown_backends_are_skipped_and_never_count_as_refusing() {
    let t0 = Instant::now();
    let (list, mut g, mut r) = (names(&["ghost", "a"]), Fake::new(t0), rng());
    g.unknown.push("ghost");
    let deadline = t0 + DEADLINE;
    let mut p = Plan::new(policy(&list, 1), deadline);
    assert_eq!(p.next(t0, &g, &mut r), attempt("a"));
    p.record(t0, AttemptResult::Refused(400), &g, &mut r);
    // Not "refused" (the ghost never answered) and nobody to wait for: the deadline decides.
    assert_eq!(p.next(t0, &g, &mut r), Step::Wait { until: deadline });
    assert_eq!(
        p.next(deadline, &g, &mut r),
        Step::Escalate(reason::DEADLINE)
    );
}

/// The table's third axis, the deadline: every outcome of an attempt whose answer comes back
/// when the deadline has come. A backend that took the request keeps it (2xx, 409: never
/// escalated on top of an acceptance); anything else starts no new attempt — the request goes
/// to the desk at once, as refused when every backend refused, else for the deadline.
#[test]
fn each_outcome_that_comes_back_at_the_deadline() {
    let rows: Vec<(AttemptResult, &[&str], Option<&str>)> = vec![
        (accepted(), &["a", "b"], None),
        (AttemptResult::Conflict, &["a", "b"], None),
        (
            AttemptResult::Refused(400),
            &["a", "b"],
            Some(reason::DEADLINE),
        ),
        (AttemptResult::Refused(400), &["a"], Some(reason::REFUSED)),
        (failed("http_503"), &["a", "b"], Some(reason::DEADLINE)),
        (failed("timeout"), &["a"], Some(reason::DEADLINE)),
        (failed("connect_error"), &["a", "b"], Some(reason::DEADLINE)),
        (
            AttemptResult::Failed {
                label: "http_429",
                retry_after: Some(Duration::from_secs(1)),
            },
            &["a", "b"],
            Some(reason::DEADLINE),
        ),
    ];
    for (result, backends, want) in rows {
        let t0 = Instant::now();
        let (list, g, mut r) = (names(backends), Fake::new(t0), rng());
        let deadline = t0 + DEADLINE;
        let mut p = Plan::new(policy(&list, 2), deadline);
        // Started with a second left; answered as the deadline comes.
        let started = deadline - Duration::from_secs(1);
        assert_eq!(
            p.next(started, &g, &mut r),
            Step::Attempt {
                backend: "a",
                timeout: Duration::from_secs(1)
            }
        );
        let taken = p.record(deadline, result.clone(), &g, &mut r);
        match want {
            None => assert_eq!(
                taken.map(|a| a.backend),
                Some("a"),
                "{result:?} at the deadline is accepted"
            ),
            Some(why) => {
                assert!(taken.is_none(), "{result:?}");
                let mut now = deadline;
                let mut steps = 0;
                let step = loop {
                    steps += 1;
                    assert!(steps < 4, "{result:?}: still waiting at the deadline");
                    match p.next(now, &g, &mut r) {
                        Step::Wait { until } => {
                            assert!(until <= deadline, "{result:?}: waits past the deadline");
                            now = until;
                        }
                        s => break s,
                    }
                };
                assert_eq!(step, Step::Escalate(why), "{result:?} with {backends:?}");
            }
        }
    }
}
