//! Backend faults, end to end: mock backends told to fail (500, 503 with Retry-After, hanging
//! past the attempt timeout, refusing connections, accepting too slowly, flapping) while real
//! presses travel the whole path. What a user checks: failover in the configured order,
//! exponential backoff with jitter, Retry-After honoured within the deadline, one request per
//! press whatever the retries, the circuit breaker opening and closing (as `/metrics` shows
//! it), escalation to the desk at the service deadline, and no request left without an owner.
//!
//! Timeouts, backoffs, deadlines and cooldowns are short so the file runs in seconds. Waits
//! are on feedback, the API or the mock's hit log, each with a deadline; never a bare sleep.

mod common;

use anyhow::{ensure, Context, Result};
use common::*;
use serde_json::Value;
use yijian_device_sim::backends::Hit;
use yijian_device_sim::MockBackends;
use yijian_gateway::config::{BackendConfig, Config};
use yijian_tests::*;

const ATTEMPTS: &str = "yijian_dispatch_attempts_total";
const CIRCUIT: &str = "yijian_backend_circuit_open";

/// Retries quick, the breaker out of the way unless a test wants it.
fn fast(c: &mut Config) {
    c.dispatch.backoff_initial_ms = 10;
    c.dispatch.backoff_max_ms = 40;
    c.dispatch.attempts_per_backend = 2;
    c.dispatch.breaker_failures = 1000;
    c.dispatch.breaker_cooldown_ms = 500;
    // Each press here must become its own request: flood control would join a repeated press
    // of the same service from one device to the request already open.
    c.flood.attach_window_s = 0;
}

/// The attempts of a request's history: (backend, attempt number, result, started at, elapsed ms).
fn attempts(v: &Value) -> Vec<(String, u64, String, i64, u64)> {
    v["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "attempt")
        .map(|e| {
            let d = &e["detail"];
            (
                d["backend"].as_str().unwrap_or_default().to_owned(),
                d["attempt"].as_u64().unwrap_or_default(),
                d["result"].as_str().unwrap_or_default().to_owned(),
                epoch_ms(e["at"].as_str().unwrap_or_default()).unwrap_or_default(),
                d["elapsed_ms"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// The hits of one request (its Idempotency-Key) on `backend`, in arrival order.
fn hits_of(mock: &MockBackends, key: &str, backend: &str) -> Vec<Hit> {
    mock.hits()
        .into_iter()
        .filter(|h| h.key == key && h.backend == backend)
        .collect()
}

/// Milliseconds between consecutive hits.
fn gaps(hits: &[Hit]) -> Vec<i64> {
    hits.windows(2)
        .map(|w| w[1].arrived_ms - w[0].arrived_ms)
        .collect()
}

/// Every request is owned: a backend has it (`dispatched`) or a human does (`escalated`), and
/// the journal owes no dispatch (the outbox is empty).
async fn every_request_has_an_owner(gw: &TestGateway) -> Result<()> {
    let (status, list) = gw.get("/api/v1/requests?limit=1000").await?;
    ensure!(status == 200, "list: {status} {list}");
    for r in list["requests"].as_array().into_iter().flatten() {
        let state = r["state"].as_str().unwrap_or_default();
        ensure!(
            matches!(state, "dispatched" | "escalated"),
            "request {} is {state}: {r}",
            r["request_id"]
        );
        let backend = r["backend"].as_str().unwrap_or_default();
        ensure!(
            !backend.is_empty(),
            "request {} has no backend: {r}",
            r["request_id"]
        );
        ensure!((state == "escalated") == (backend == "desk"), "{r}");
    }
    let outbox = gw.gw.store.outbox().await?;
    let owed: Vec<_> = outbox.iter().map(|r| r.id.as_str()).collect();
    ensure!(
        owed.is_empty(),
        "the outbox still owes dispatches: {owed:?}"
    );
    Ok(())
}

/// Press and wait until the request is dispatched or escalated; returns the request id and
/// the request as the API shows it then.
async fn press_until(
    gw: &TestGateway,
    dev: &mut yijian_device_sim::SimDevice,
    gesture: Gesture,
    state: FeedbackState,
) -> Result<(String, Value)> {
    let press = dev.press("main", gesture).await?;
    let heard = dev
        .wait_for(&press, state, WAIT)
        .await
        .with_context(|| format!("{state} for {press}"))?;
    let states: Vec<_> = heard.iter().map(|h| h.feedback.state).collect();
    assert_eq!(
        states,
        vec![FeedbackState::Received, state],
        "the device hears each step once"
    );
    let rid = heard[0]
        .feedback
        .request
        .clone()
        .context("received names the request")?;
    Ok((rid.clone(), gw.request(&rid).await?))
}

/// Wait until every press in `presses` has reached `state` (or one of `states`), keeping what
/// was heard for each: several presses are in flight at once, and `wait_for` would drop the
/// feedback of the others. Returns each press's request id.
async fn request_ids_once(
    dev: &mut yijian_device_sim::SimDevice,
    presses: &[(&str, FeedbackState)],
) -> Result<std::collections::HashMap<String, String>> {
    let mut done = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while done.len() < presses.len() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let h = dev
            .next_feedback(left)
            .await
            .with_context(|| format!("feedback for {presses:?}; done {done:?}"))?;
        let Some(press) = h.feedback.press.clone() else {
            continue;
        };
        if let Some((_, want)) = presses.iter().find(|(p, _)| *p == press) {
            if h.feedback.state == *want {
                done.insert(
                    press,
                    h.feedback
                        .request
                        .clone()
                        .context("the answer names the request")?,
                );
            }
        }
    }
    Ok(done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_follows_the_configured_order_through_every_kind_of_failure() -> Result<()> {
    let mock = MockBackends::start_local(MockOptions::default()).await?;
    mock.set("fo-500", Behaviour::Status(500, None));
    mock.set(
        "fo-hang",
        Behaviour::Hang(std::time::Duration::from_secs(5)),
    );
    mock.set("fo-503", Behaviour::Status(503, None));
    // A reserved loopback port nobody listens on: connection refused.
    let refused_url = format!("http://127.0.0.1:{}/fo-refused", free_port());
    let order = ["fo-500", "fo-refused", "fo-hang", "fo-503", "fo-ok"];
    let gw = TestGateway::start(|c| {
        fast(c);
        for b in ["fo-500", "fo-hang", "fo-503", "fo-ok"] {
            backend(c, &mock, b);
        }
        c.backends.insert(
            "fo-refused".into(),
            BackendConfig {
                url: refused_url.clone(),
                token_env: None,
            },
        );
        route(c, "rescue", &order, 150, 20);
    })
    .await?;
    let before = Metrics::scrape(&gw).await?;
    let mut dev = gw.device("fo-dev", "one-button").await?;
    let (rid, v) = press_until(&gw, &mut dev, Gesture::Single, FeedbackState::Dispatched).await?;
    assert_eq!(v["backend"], "fo-ok", "{v}");
    assert_eq!(
        v["ref"], "FO-OK-1",
        "the accepting backend's reference is kept: {v}"
    );

    // The history: two attempts per backend, in the configured order, numbered across backends.
    let tried = attempts(&v);
    let got: Vec<(&str, u64, &str)> = tried
        .iter()
        .map(|(b, n, r, ..)| (b.as_str(), *n, r.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("fo-500", 1, "http_500"),
            ("fo-500", 2, "http_500"),
            ("fo-refused", 3, "connect_error"),
            ("fo-refused", 4, "connect_error"),
            ("fo-hang", 5, "timeout"),
            ("fo-hang", 6, "timeout"),
            ("fo-503", 7, "http_503"),
            ("fo-503", 8, "http_503"),
            ("fo-ok", 9, "accepted"),
        ]
    );
    // A timeout never fires early (how late it may fire on a busy machine is not this test's
    // business: the attempt loop's timing is tested on the driven clock, dispatch/attempt).
    for (b, n, _, _, elapsed) in tried.iter().filter(|t| t.2 == "timeout") {
        assert!(
            *elapsed >= 150,
            "{b} attempt {n}: timed out after {elapsed} ms, before its 150 ms"
        );
    }
    // The backends' own view: every attempt that reached one carried the same key, in order.
    let hits: Vec<_> = mock.hits().into_iter().filter(|h| h.key == rid).collect();
    let seen: Vec<(&str, Option<u32>)> = hits
        .iter()
        .map(|h| (h.backend.as_str(), h.attempt))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("fo-500", Some(1)),
            ("fo-500", Some(2)),
            ("fo-hang", Some(5)),
            ("fo-hang", Some(6)),
            ("fo-503", Some(7)),
            ("fo-503", Some(8)),
            ("fo-ok", Some(9)),
        ]
    );
    assert_eq!(
        mock.received().len(),
        1,
        "one request reached a backend, once"
    );

    let after = Metrics::scrape(&gw).await?;
    for (b, result, n) in [
        ("fo-500", "http_500", 2.0),
        ("fo-refused", "connect_error", 2.0),
        ("fo-hang", "timeout", 2.0),
        ("fo-503", "http_503", 2.0),
        ("fo-ok", "accepted", 1.0),
    ] {
        assert_eq!(
            before.delta(&after, ATTEMPTS, &[("backend", b), ("result", result)]),
            n,
            "{ATTEMPTS}{{{b},{result}}}"
        );
    }
    every_request_has_an_owner(&gw).await?;
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_exponentially_with_jitter() -> Result<()> {
    let mock = MockBackends::start_local(MockOptions::default()).await?;
    // Three services, three backends, three requests in flight at once; each backend fails
    // its request five times, then accepts.
    let services = [
        ("rescue", "bo-r", Gesture::Single),
        ("taxi", "bo-t", Gesture::Double),
        ("hospital", "bo-h", Gesture::Triple),
    ];
    for (_, b, _) in services {
        mock.script(b, std::iter::repeat_n(Behaviour::Status(503, None), 5));
    }
    let initial = 40i64;
    let gw = TestGateway::start(|c| {
        fast(c);
        c.dispatch.backoff_initial_ms = initial as u64;
        c.dispatch.backoff_max_ms = 10_000;
        c.dispatch.attempts_per_backend = 6;
        for (svc, b, _) in services {
            backend(c, &mock, b);
            route(c, svc, &[b], 1000, 30);
        }
    })
    .await?;
    let mut dev = gw.device("bo-dev", "one-button").await?;
    let mut presses = Vec::new();
    for (_, _, g) in services {
        presses.push(dev.press("main", g).await?);
    }
    let wanted: Vec<(&str, FeedbackState)> = presses
        .iter()
        .map(|p| (p.as_str(), FeedbackState::Dispatched))
        .collect();
    let rids = request_ids_once(&mut dev, &wanted).await?;
    let mut sequences = Vec::new();
    for ((_, b, _), p) in services.iter().zip(&presses) {
        let rid = &rids[p];
        let hits = hits_of(&mock, rid, b);
        let statuses: Vec<u16> = hits.iter().map(|h| h.status).collect();
        assert_eq!(statuses, vec![503, 503, 503, 503, 503, 200], "{b}");
        sequences.push((b, gaps(&hits)));
    }

    // Retry n waits at least half of initial·2ⁿ ("equal jitter"), whatever the load: a lower
    // bound is an ordering (the retry did not come before its time). The upper bound, the growth
    // and the jitter are the decision table's, checked exactly on instants and a seeded RNG
    // (dispatch/decide/tests.rs: retries_back_off_exponentially_then_fail_over_then_rounds_back_off_longer;
    // dispatch/backoff.rs), where a loaded machine cannot stretch a wait.
    for (b, g) in &sequences {
        for (n, gap) in g.iter().enumerate() {
            let base = initial << n;
            assert!(
                *gap >= base / 2 - 1,
                "{b} retry {n}: {gap} ms, under half of {base}: {g:?}"
            );
        }
    }
    every_request_has_an_owner(&gw).await?;
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_but_never_past_the_deadline() -> Result<()> {
    let mock = MockBackends::start_local(MockOptions::default()).await?;
    // rescue: three 503s asking for a second each, then accepted — across a round of
    // attempts, so the last Retry-After of a round counts too.
    mock.script(
        "ra-1s",
        std::iter::repeat_n(Behaviour::Status(503, Some(1)), 3),
    );
    // taxi: 503 asking for 30 s against a 2 s deadline.
    mock.set("ra-30s", Behaviour::Status(503, Some(30)));
    let gw = TestGateway::start(|c| {
        fast(c);
        c.dispatch.attempts_per_backend = 2;
        backend(c, &mock, "ra-1s");
        backend(c, &mock, "ra-30s");
        route(c, "rescue", &["ra-1s"], 1000, 20);
        route(c, "taxi", &["ra-30s"], 1000, 2);
    })
    .await?;
    let mut dev = gw.device("ra-dev", "one-button").await?;
    let rescue = dev.press("main", Gesture::Single).await?;
    let taxi = dev.press("main", Gesture::Double).await?;

    let rids = request_ids_once(
        &mut dev,
        &[
            (&taxi, FeedbackState::Escalated),
            (&rescue, FeedbackState::Dispatched),
        ],
    )
    .await?;
    let taxi_rid = rids[&taxi].clone();
    let v = gw.request(&taxi_rid).await?;
    let created = epoch_ms(v["created_at"].as_str().unwrap_or_default())?;
    let escalated = epoch_ms(v["escalated_at"].as_str().unwrap_or_default())?;
    // Not before the deadline; that it is not after it either (a 30 s Retry-After waits only
    // until the deadline) is checked on the driven clock (dispatch/decide/tests.rs:
    // a_wait_never_passes_the_deadline_and_waking_there_escalates) — here the single hit says
    // nothing was sent in between.
    assert!(
        escalated - created >= 2000,
        "escalated {} ms after creation, before the 2 s deadline",
        escalated - created
    );
    assert_eq!(
        hits_of(&mock, &taxi_rid, "ra-30s").len(),
        1,
        "nothing was sent before the backend's Retry-After"
    );

    let hits = hits_of(&mock, &rids[&rescue], "ra-1s");
    assert_eq!(
        hits.iter().map(|h| h.status).collect::<Vec<_>>(),
        vec![503, 503, 503, 200]
    );
    for (n, gap) in gaps(&hits).into_iter().enumerate() {
        assert!(
            gap >= 995,
            "retry {n} came {gap} ms after a `Retry-After: 1`, before its time"
        );
    }
    every_request_has_an_owner(&gw).await?;
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_accepts_too_slowly_gets_the_retry_with_the_same_key_and_keeps_one_request(
) -> Result<()> {
    let mock = MockBackends::start_local(MockOptions::default()).await?;
    // Takes the request at once but answers only after 800 ms: the gateway's 150 ms attempt
    // times out, and its retry (same Idempotency-Key) is answered 409.
    mock.script(
        "slow",
        [Behaviour::SlowAccept(std::time::Duration::from_millis(800))],
    );
    let gw = TestGateway::start(|c| {
        fast(c);
        backend(c, &mock, "slow");
        route(c, "hospital", &["slow"], 150, 20);
    })
    .await?;
    let mut dev = gw.device("slow-dev", "one-button").await?;
    let (rid, v) = press_until(&gw, &mut dev, Gesture::Triple, FeedbackState::Dispatched).await?;
    assert_eq!(v["backend"], "slow");

    let hits = hits_of(&mock, &rid, "slow");
    let seen: Vec<(Option<u32>, u16)> = hits.iter().map(|h| (h.attempt, h.status)).collect();
    assert_eq!(
        seen,
        vec![(Some(1), 200), (Some(2), 409)],
        "the retry carried the same key: {hits:?}"
    );
    let results: Vec<String> = attempts(&v).into_iter().map(|a| a.2).collect();
    assert_eq!(results, vec!["timeout", "conflict"]);
    assert_eq!(
        mock.received_by("slow").len(),
        1,
        "the backend holds one request"
    );
    assert_eq!(mock.duplicates(), 1);
    let (_, list) = gw.get("/api/v1/requests?device=slow-dev").await?;
    assert_eq!(list["requests"].as_array().map(Vec::len), Some(1));
    // The device heard nothing more about it.
    assert!(
        dev.next_feedback(std::time::Duration::from_millis(300))
            .await
            .is_err(),
        "no second answer"
    );
    every_request_has_an_owner(&gw).await?;
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_backend_gets_each_request_once_and_its_breaker_stays_closed() -> Result<()> {
    let mock = MockBackends::start_local(MockOptions::default()).await?;
    // Fails, succeeds, fails, succeeds...: never two failures in a row.
    let rounds = 5;
    mock.script(
        "flap",
        (0..rounds).flat_map(|_| [Behaviour::Status(500, None), Behaviour::Accept]),
    );
    let gw = TestGateway::start(|c| {
        fast(c);
        c.dispatch.breaker_failures = 2;
        backend(c, &mock, "flap");
        route(c, "rescue", &["flap"], 500, 20);
    })
    .await?;
    let mut dev = gw.device("flap-dev", "one-button").await?;
    for n in 0..rounds {
        let (rid, v) =
            press_until(&gw, &mut dev, Gesture::Single, FeedbackState::Dispatched).await?;
        assert_eq!(v["backend"], "flap");
        let statuses: Vec<u16> = hits_of(&mock, &rid, "flap")
            .iter()
            .map(|h| h.status)
            .collect();
        assert_eq!(statuses, vec![500, 200], "press {n}");
        let m = Metrics::scrape(&gw).await?;
        assert_eq!(
            m.value(CIRCUIT, &[("backend", "flap")]),
            0.0,
            "one failure at a time never opens the circuit"
        );
    }
    assert_eq!(mock.received_by("flap").len(), rounds);
    assert_eq!(mock.duplicates(), 0);
    every_request_has_an_owner(&gw).await?;
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_breaker_opens_spares_the_backend_and_closes_after_a_good_probe() -> Result<()>
{
    let mock = MockBackends::start_local(MockOptions::default()).await?;
    mock.set("cb", Behaviour::Status(503, None));
    let cooldown = 500i64;
    let gw = TestGateway::start(|c| {
        fast(c);
        c.dispatch.attempts_per_backend = 3;
        c.dispatch.breaker_failures = 3;
        c.dispatch.breaker_cooldown_ms = cooldown as u64;
        backend(c, &mock, "cb");
        route(c, "rescue", &["cb", "desk"], 500, 20);
        route(c, "taxi", &["cb"], 500, 20);
    })
    .await?;
    let m = Metrics::scrape(&gw).await?;
    assert!(
        m.has(CIRCUIT, &[("backend", "cb")]),
        "the gauge exists from the start"
    );
    assert_eq!(m.value(CIRCUIT, &[("backend", "cb")]), 0.0);
    let mut dev = gw.device("cb-dev", "one-button").await?;

    // Three failures open the circuit; the request fails over to the desk.
    let (rid1, v) = press_until(&gw, &mut dev, Gesture::Single, FeedbackState::Escalated).await?;
    assert_eq!(attempts(&v).len(), 3);
    let m = Metrics::scrape(&gw).await?;
    assert_eq!(
        m.value(CIRCUIT, &[("backend", "cb")]),
        1.0,
        "open after 3 failures"
    );
    let opened_at = mock.hits().last().context("hits")?.arrived_ms;

    // While it is open the backend is spared: the next request goes straight to the desk.
    let (rid2, v) = press_until(&gw, &mut dev, Gesture::Single, FeedbackState::Escalated).await?;
    assert!(
        attempts(&v).is_empty(),
        "no attempt while the circuit is open: {v}"
    );
    assert!(hits_of(&mock, &rid2, "cb").is_empty());
    let escalated2 = epoch_ms(v["escalated_at"].as_str().unwrap_or_default())?;
    assert!(
        escalated2 < opened_at + cooldown,
        "failed over at once, not after the cooldown"
    );

    // A taxi request (cb only) waits for the cooldown; its probe still fails and reopens the
    // circuit; after another cooldown the next probe succeeds and closes it.
    let taxi = dev.press("main", Gesture::Double).await?;
    let probe1 = eventually("the first probe", || {
        mock.hits().into_iter().find(|h| h.key != rid1)
    })
    .await?;
    assert_eq!(probe1.status, 503);
    assert!(
        probe1.arrived_ms >= opened_at + cooldown - 5,
        "probe {} ms after opening",
        probe1.arrived_ms - opened_at
    );
    mock.set("cb", Behaviour::Accept);
    let m = Metrics::scrape(&gw).await?;
    assert_eq!(
        m.value(CIRCUIT, &[("backend", "cb")]),
        1.0,
        "a failed probe keeps it open"
    );
    let heard = dev
        .wait_for(&taxi, FeedbackState::Dispatched, WAIT)
        .await
        .context("taxi dispatched")?;
    let taxi_rid = heard[0].feedback.request.clone().context("request id")?;
    let probes = hits_of(&mock, &taxi_rid, "cb");
    assert_eq!(
        probes.iter().map(|h| h.status).collect::<Vec<_>>(),
        vec![503, 200],
        "one probe per cooldown"
    );
    let gap = probes[1].arrived_ms - probes[0].arrived_ms;
    assert!(
        gap >= cooldown - 5,
        "second probe {gap} ms after the first, cooldown {cooldown}"
    );
    let m = metrics_until(&gw, "the circuit to close", |m| {
        m.value(CIRCUIT, &[("backend", "cb")]) == 0.0
    })
    .await?;
    assert_eq!(m.value(CIRCUIT, &[("backend", "cb")]), 0.0);

    // Closed again: the next rescue request goes to the backend first, not the desk.
    let (_, v) = press_until(&gw, &mut dev, Gesture::Single, FeedbackState::Dispatched).await?;
    assert_eq!(v["backend"], "cb");
    // Every attempt that reached cb, in all: 3 + 0 + 2 + 1.
    assert_eq!(mock.hits().len(), 6, "{:?}", mock.hits());
    every_request_has_an_owner(&gw).await?;
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_no_backend_takes_goes_to_the_desk_at_its_service_deadline() -> Result<()> {
    let mock = MockBackends::start_local(MockOptions::default()).await?;
    mock.set("dl", Behaviour::Hang(std::time::Duration::from_secs(10)));
    let gw = TestGateway::start(|c| {
        fast(c);
        c.dispatch.attempts_per_backend = 100;
        backend(c, &mock, "dl");
        route(c, "rescue", &["dl"], 300, 1);
    })
    .await?;
    let mut dev = gw.device("dl-dev", "one-button").await?;
    let (rid, v) = press_until(&gw, &mut dev, Gesture::Single, FeedbackState::Escalated).await?;
    assert_eq!(v["backend"], "desk");
    let created = epoch_ms(v["created_at"].as_str().unwrap_or_default())?;
    let escalation = v["history"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["kind"] == "escalated")
        .cloned()
        .context("an escalated event")?;
    assert_eq!(escalation["detail"]["reason"], "deadline");
    let at = epoch_ms(escalation["at"].as_str().unwrap_or_default())?;
    assert!(
        at - created >= 1000,
        "escalated {} ms after creation, before its 1000 ms deadline",
        at - created
    );
    // Every attempt started before the deadline and ended before the escalation (the last one
    // cut to the time left: exact on the driven clock in dispatch/attempt/tests.rs,
    // a_dead_backend_escalates_at_the_service_deadline_on_the_driven_clock).
    let tried = attempts(&v);
    assert!(tried.len() >= 3, "it kept trying until then: {tried:?}");
    for (_, n, result, started, elapsed) in &tried {
        assert_eq!(result, "timeout", "attempt {n}");
        assert!(
            *started < created + 1000,
            "attempt {n} started at the deadline or after"
        );
        assert!(
            started + *elapsed as i64 <= at + 1,
            "attempt {n} ended after the escalation (1 ms for rounding)"
        );
    }
    assert_eq!(hits_of(&mock, &rid, "dl").len(), tried.len());
    every_request_has_an_owner(&gw).await?;
    gw.stop().await;
    Ok(())
}
