//! What happens after a request is out: the resident cancels (and the backend that took it is
//! told), a rescue already on its way is flagged instead of called off, and an escalation to
//! the desk notifies the resident's contacts — journaled, retried, and kept across a restart.

use anyhow::Result;
use serde_json::{json, Value};
use std::time::Duration;
use yijian_device_sim::MockBackends;
use yijian_gateway::store::FLAGGED_REASON;
use yijian_tests::*;

/// The resident with two contacts that most tests use.
const RESIDENTS: &str = r#"
[[resident]]
id = "r-2001"
name = "Chen Guiying"
phone = "+86 138 0000 2001"
address = "Flat 4, 9 Lane 200, Jing'an"

[[resident.contacts]]
name = "Chen Jun"
phone = "+86 139 0000 2002"
relation = "son"

[[resident.contacts]]
name = "Neighbour Sun"
phone = "021 5555 2003"
relation = "neighbour"
"#;

fn has(v: &Value, kind: &str) -> bool {
    history_kinds(v).iter().any(|k| k == kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_inside_the_window_reaches_the_backend_that_took_the_request() -> Result<()> {
    let mock = MockBackends::start_local(MockOptions::default()).await?;
    // The backend's first answer to the cancellation is a 503: it is retried with the same key.
    mock.script_cancel("taxi", [Behaviour::Status(503, None)]);
    let gw = TestGateway::start(|c| {
        backend(c, &mock, "taxi");
        route(c, "taxi", &["taxi"], 2000, 20);
    })
    .await?;
    let mut dev = gw.device("cancel-1", "one-button").await?;
    let press = dev.press("main", Gesture::Double).await?;
    let heard = dev
        .wait_for(&press, FeedbackState::Dispatched, WAIT)
        .await?;
    let rid = heard[0].feedback.request.clone().expect("request id");

    let cancel = dev.press("main", Gesture::Long).await?;
    let heard = dev
        .wait_for(&cancel, FeedbackState::Cancelled, WAIT)
        .await?;
    assert_eq!(heard.last().unwrap().feedback.request.as_ref(), Some(&rid));

    let got = eventually("the taxi backend's cancellation", || {
        mock.cancels().into_iter().next()
    })
    .await?;
    assert_eq!(got.backend, "taxi");
    assert_eq!(got.key, format!("{rid}:cancel"));
    assert_eq!(got.body["request_id"], json!(rid));
    assert_eq!(got.body["reason"], "cancelled_by_resident");
    assert_eq!(got.attempt, Some(2), "the 503 was retried");
    let hits = mock.cancel_hits();
    assert!(
        hits.iter().all(|h| h.key == format!("{rid}:cancel")),
        "one key on every attempt: {hits:?}"
    );

    let v = gw
        .wait_request(&rid, "the cancellation's outcome", |v| {
            has(v, "backend_cancelled")
        })
        .await?;
    assert_eq!(v["state"], "cancelled");
    let kinds = history_kinds(&v);
    let at = |k: &str| kinds.iter().position(|x| x == k).unwrap_or(usize::MAX);
    assert!(
        at("dispatched") < at("cancelled") && at("cancelled") < at("backend_cancel_queued"),
        "{kinds:?}"
    );
    assert_eq!(mock.cancels().len(), 1);

    // A cancel with nothing open left: nothing more reaches the backend.
    let again = dev.press("main", Gesture::Long).await?;
    let heard = dev.wait_for(&again, FeedbackState::Cancelled, WAIT).await?;
    assert_eq!(
        heard.last().unwrap().feedback.reason.as_deref(),
        Some("no open request to cancel")
    );
    gw.stop().await;
    assert_eq!(mock.cancels().len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_after_the_window_leaves_the_request_alone() -> Result<()> {
    let mock = MockBackends::start_local(MockOptions::default()).await?;
    let gw = TestGateway::start(|c| {
        c.rules.cancel_window_s = 1;
        backend(c, &mock, "hospital");
        route(c, "hospital", &["hospital"], 2000, 20);
    })
    .await?;
    let mut dev = gw.device("late-1", "one-button").await?;
    let press = dev.press("main", Gesture::Triple).await?;
    let heard = dev
        .wait_for(&press, FeedbackState::Dispatched, WAIT)
        .await?;
    let rid = heard[0].feedback.request.clone().expect("request id");
    let created = gw.request(&rid).await?["created_at"]
        .as_str()
        .expect("created_at")
        .to_owned();
    let created = created.parse::<jiff::Timestamp>()?.as_millisecond();
    // The window is what is under test: wait until the request is older than it.
    while yijian_gateway::clock::now_ms() <= created + 1000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancel = dev.press("main", Gesture::Long).await?;
    let heard = dev
        .wait_for(&cancel, FeedbackState::Cancelled, WAIT)
        .await?;
    let fb = &heard.last().unwrap().feedback;
    assert_eq!(fb.request, None, "nothing was cancelled: {fb:?}");
    assert_eq!(fb.reason.as_deref(), Some("no open request to cancel"));
    let v = gw.request(&rid).await?;
    assert_eq!(v["state"], "dispatched");
    assert!(!has(&v, "backend_cancel_queued"), "{v}");
    gw.stop().await;
    assert!(mock.cancels().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_of_a_rescue_on_its_way_is_flagged_for_an_operator() -> Result<()> {
    let mock = MockBackends::start_local(MockOptions::default()).await?;
    let gw = TestGateway::start(|c| {
        backend(c, &mock, "rescue");
        route(c, "rescue", &["rescue"], 2000, 20);
    })
    .await?;
    gw.import_residents("residents.toml", RESIDENTS)?;
    let mut dev = gw.device_of("flag-1", "one-button", "r-2001").await?;
    let press = dev.press("main", Gesture::Single).await?;
    let heard = dev
        .wait_for(&press, FeedbackState::Dispatched, WAIT)
        .await?;
    let rid = heard[0].feedback.request.clone().expect("request id");
    let (status, v) = gw
        .callback(&rid, "rescue", json!({"state": "en_route", "eta_s": 300}))
        .await?;
    assert_eq!(status, 200, "{v}");

    // The resident presses cancel: the ambulance is not called off by a button alone.
    let cancel = dev.press("main", Gesture::Long).await?;
    let heard = dev.wait_for(&cancel, FeedbackState::EnRoute, WAIT).await?;
    let fb = &heard.last().unwrap().feedback;
    assert_eq!(fb.request.as_ref(), Some(&rid));
    assert_eq!(
        fb.reason.as_deref(),
        Some(FLAGGED_REASON),
        "the device is told the truth"
    );
    assert_eq!(fb.eta_s, Some(300));
    let v = gw.request(&rid).await?;
    assert_eq!(v["state"], "en_route");
    assert!(v["cancel_requested_at"].is_string(), "{v}");
    assert!(
        has(&v, "cancel_requested") && !has(&v, "backend_cancel_queued"),
        "{v}"
    );
    assert_eq!(
        v["resident"]["phone"], "+86 138 0000 2001",
        "the operator has the number to call"
    );
    let (_, flagged) = gw.get("/api/v1/requests?cancel_requested=true").await?;
    let ids: Vec<&str> = flagged["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    assert_eq!(ids, vec![rid.as_str()]);
    // The same cancel press retransmitted gets the same truthful answer.
    dev.press_payload(
        &cancel,
        serde_json::to_vec(&json!({"id": cancel, "button": "main", "gesture": "long", "at": 1}))?,
    )
    .await?;
    let again = dev.wait_for(&cancel, FeedbackState::EnRoute, WAIT).await?;
    assert_eq!(
        again.last().unwrap().feedback.reason.as_deref(),
        Some(FLAGGED_REASON)
    );

    // The operator calls, the resident confirms: the operator cancels, and the backend is told.
    let (status, v) = gw
        .post(&format!("/api/v1/requests/{rid}/cancel"), json!({}))
        .await?;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "cancelled");
    dev.wait_for(&press, FeedbackState::Cancelled, WAIT).await?;
    let got = eventually("the rescue backend's cancellation", || {
        mock.cancels().into_iter().next()
    })
    .await?;
    assert_eq!(got.key, format!("{rid}:cancel"));
    assert_eq!(got.body["reason"], "cancelled_by_operator");
    let (status, _) = gw
        .post(&format!("/api/v1/requests/{rid}/cancel"), json!({}))
        .await?;
    assert_eq!(status, 409, "already cancelled");
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalated_rescue_notifies_the_contacts_even_across_a_restart() -> Result<()> {
    let mock = MockBackends::start_local(MockOptions::default()).await?;
    // The rescue centre refuses (4xx: to the desk at once); the SMS gateway is down for now.
    mock.set("rescue", Behaviour::Status(422, None));
    mock.set("taxi", Behaviour::Status(422, None));
    mock.set("sms", Behaviour::Status(503, None));
    let dir = tempfile::tempdir()?;
    let mut config = test_config(dir.path());
    for b in ["rescue", "taxi", "sms"] {
        backend(&mut config, &mock, b);
    }
    route(&mut config, "rescue", &["rescue"], 2000, 20);
    route(&mut config, "taxi", &["taxi"], 2000, 20);
    config.notify.backend = Some("sms".into());
    let gw = TestGateway::start_with(config.clone()).await?;
    gw.import_residents("residents.toml", RESIDENTS)?;
    let mut dev = gw.device_of("sos-1", "one-button", "r-2001").await?;
    let mut stranger = gw.device("sos-2", "one-button").await?;

    let press = dev.press("main", Gesture::Single).await?;
    let heard = dev.wait_for(&press, FeedbackState::Escalated, WAIT).await?;
    let rid = heard[0].feedback.request.clone().expect("request id");
    let v = gw.request(&rid).await?;
    assert!(has(&v, "contacts_notify_queued"), "{v}");
    // Both notifications were tried and failed; stop the gateway with them still owed.
    eventually("both notifications tried", || {
        let keys: std::collections::HashSet<String> = mock
            .hits()
            .into_iter()
            .filter(|h| h.backend == "sms")
            .map(|h| h.key)
            .collect();
        (keys.len() == 2).then_some(())
    })
    .await?;
    // A taxi going to the desk notifies nobody (the default policy is rescue only); a rescue
    // from a device with no resident says why nobody was notified.
    let taxi = dev.press("main", Gesture::Double).await?;
    let taxi_rid = dev.wait_for(&taxi, FeedbackState::Escalated, WAIT).await?[0]
        .feedback
        .request
        .clone()
        .unwrap();
    let t = gw.request(&taxi_rid).await?;
    assert!(
        !has(&t, "contacts_notify_queued") && !has(&t, "contacts_not_notified"),
        "{t}"
    );
    let lone = stranger.press("main", Gesture::Single).await?;
    let lone_rid = stranger
        .wait_for(&lone, FeedbackState::Escalated, WAIT)
        .await?[0]
        .feedback
        .request
        .clone()
        .unwrap();
    let l = gw.request(&lone_rid).await?;
    let reason = l["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "contacts_not_notified")
        .map(|e| e["detail"]["reason"].clone());
    assert_eq!(
        reason,
        Some(json!("the device is bound to no resident on record")),
        "{l}"
    );
    gw.stop().await;
    assert!(mock.received_by("sms").is_empty());

    // The SMS gateway recovers; a new gateway on the same journal delivers what was owed.
    mock.set("sms", Behaviour::Accept);
    let gw = TestGateway::start_with(config).await?;
    let v = gw
        .wait_request(&rid, "both contacts notified", |v| {
            history_kinds(v)
                .iter()
                .filter(|k| *k == "contact_notified")
                .count()
                == 2
        })
        .await?;
    let sms = mock.received_by("sms");
    assert_eq!(sms.len(), 2, "{sms:?}");
    let mut keys: Vec<&str> = sms.iter().map(|r| r.key.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![format!("{rid}:notify:1"), format!("{rid}:notify:2")]
    );
    assert!(
        sms.iter().all(|r| r.attempt.unwrap_or(0) > 1),
        "attempt numbers continue after the restart: {sms:?}"
    );
    let son = sms.iter().find(|r| r.key.ends_with(":notify:1")).unwrap();
    assert_eq!(
        son.body["to"],
        json!({"name": "Chen Jun", "phone": "+86 139 0000 2002", "relation": "son"})
    );
    assert_eq!(son.body["resident"]["name"], "Chen Guiying");
    assert_eq!(son.body["reason"], "refused");
    assert!(
        son.body["message"]
            .as_str()
            .unwrap()
            .starts_with("Chen Guiying (Flat 4, 9 Lane 200, Jing'an) pressed the rescue button"),
        "{}",
        son.body
    );
    let mut notified: Vec<&str> = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "contact_notified")
        .filter_map(|e| e["detail"]["to"]["name"].as_str())
        .collect();
    notified.sort();
    assert_eq!(
        notified,
        vec!["Chen Jun", "Neighbour Sun"],
        "the history names who was told"
    );
    assert_eq!(
        v["state"], "escalated",
        "notifications do not change the request"
    );
    gw.stop().await;
    Ok(())
}

/// The event of `kind` in a request's history (the last one).
fn event(v: &Value, kind: &str) -> Option<Value> {
    v["history"]
        .as_array()?
        .iter()
        .rev()
        .find(|e| e["kind"] == kind)
        .cloned()
}

/// README, cancellation contract: "If a request is cancelled while an attempt to dispatch it is
/// in flight and the backend accepts it after all, that backend gets the cancellation too."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_an_attempt_the_backend_then_accepts_reaches_that_backend() -> Result<()> {
    let mock = MockBackends::start_local(MockOptions::default()).await?;
    // Takes the request at once, answers 200 only after a while: the attempt is in flight
    // when the resident cancels.
    mock.script("taxi", [Behaviour::SlowAccept(Duration::from_millis(1500))]);
    let gw = TestGateway::start(|c| {
        backend(c, &mock, "taxi");
        route(c, "taxi", &["taxi"], 10_000, 60);
    })
    .await?;
    let mut dev = gw.device("inflight-1", "one-button").await?;
    let press = dev.press("main", Gesture::Double).await?;
    let rid = dev.wait_for(&press, FeedbackState::Received, WAIT).await?[0]
        .feedback
        .request
        .clone()
        .expect("request id");
    eventually("the attempt to reach the backend", || {
        mock.hits().iter().any(|h| h.key == rid).then_some(())
    })
    .await?;
    let cancel = dev.press("main", Gesture::Long).await?;
    let heard = dev
        .wait_for(&cancel, FeedbackState::Cancelled, WAIT)
        .await?;
    assert_eq!(heard.last().unwrap().feedback.request.as_ref(), Some(&rid));

    let got = eventually("the backend's cancellation", || {
        mock.cancels()
            .into_iter()
            .find(|c| c.key == format!("{rid}:cancel"))
    })
    .await?;
    assert_eq!(got.backend, "taxi");
    assert_eq!(got.body["request_id"], json!(rid));
    assert_eq!(got.body["reason"], "cancelled_by_resident");
    let v = gw
        .wait_request(&rid, "the cancellation's outcome", |v| {
            has(v, "backend_cancelled")
        })
        .await?;
    assert_eq!(v["state"], "cancelled", "it stays cancelled: {v}");
    let kinds = history_kinds(&v);
    let at = |k: &str| kinds.iter().position(|x| x == k).unwrap_or(usize::MAX);
    assert!(
        at("cancelled") < at("dispatched_late") && at("dispatched_late") < at("backend_cancelled"),
        "{kinds:?}"
    );
    assert!(!has(&v, "dispatched"), "never dispatched: {kinds:?}");
    assert_eq!(
        mock.received_by("taxi").len(),
        1,
        "the backend took it once"
    );
    gw.stop().await;
    Ok(())
}

/// A backend that refuses the cancellation (a 4xx other than 404): given up at once, and an
/// operator sees `backend_cancel_failed` with the status in the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_refusing_the_cancellation_is_recorded_for_an_operator() -> Result<()> {
    let mock = MockBackends::start_local(MockOptions::default()).await?;
    mock.script_cancel("taxi", [Behaviour::Status(422, None)]);
    let gw = TestGateway::start(|c| {
        backend(c, &mock, "taxi");
        route(c, "taxi", &["taxi"], 2000, 20);
    })
    .await?;
    let mut dev = gw.device("refuse-1", "one-button").await?;
    let press = dev.press("main", Gesture::Double).await?;
    let rid = dev
        .wait_for(&press, FeedbackState::Dispatched, WAIT)
        .await?[0]
        .feedback
        .request
        .clone()
        .expect("request id");
    let cancel = dev.press("main", Gesture::Long).await?;
    dev.wait_for(&cancel, FeedbackState::Cancelled, WAIT)
        .await?;
    let v = gw
        .wait_request(&rid, "the cancellation's outcome", |v| {
            has(v, "backend_cancel_failed")
        })
        .await?;
    let failed = event(&v, "backend_cancel_failed").expect("the event");
    assert_eq!(failed["detail"]["backend"], "taxi", "{failed}");
    assert_eq!(failed["detail"]["result"], "refused", "{failed}");
    assert_eq!(failed["detail"]["status"], 422, "{failed}");
    assert!(!has(&v, "backend_cancelled"), "{v}");
    let hits = mock.cancel_hits();
    assert_eq!(
        hits.iter().map(|h| h.status).collect::<Vec<_>>(),
        [422],
        "a refusal is not retried: {hits:?}"
    );
    assert_eq!(v["state"], "cancelled");
    gw.stop().await;
    Ok(())
}

/// A backend that answers every cancellation attempt 5xx: retried with the same key until
/// `followup_deadline_s`, then given up (`expired`), in the history for an operator. (Real
/// time, one second: the deliverer's deadline arithmetic on the driven clock is
/// dispatch::followup's; this is the whole path, journal to history.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_the_backend_never_takes_is_given_up_at_the_followup_deadline() -> Result<()>
{
    let mock = MockBackends::start_local(MockOptions::default()).await?;
    mock.script_cancel(
        "taxi",
        std::iter::repeat_n(Behaviour::Status(503, None), 10_000),
    );
    let gw = TestGateway::start(|c| {
        backend(c, &mock, "taxi");
        route(c, "taxi", &["taxi"], 2000, 20);
        c.dispatch.followup_deadline_s = 1;
    })
    .await?;
    let mut dev = gw.device("expire-1", "one-button").await?;
    let press = dev.press("main", Gesture::Double).await?;
    let rid = dev
        .wait_for(&press, FeedbackState::Dispatched, WAIT)
        .await?[0]
        .feedback
        .request
        .clone()
        .expect("request id");
    let cancel = dev.press("main", Gesture::Long).await?;
    dev.wait_for(&cancel, FeedbackState::Cancelled, WAIT)
        .await?;
    let v = gw
        .wait_request(&rid, "the cancellation given up", |v| {
            has(v, "backend_cancel_failed")
        })
        .await?;
    let failed = event(&v, "backend_cancel_failed").expect("the event");
    assert_eq!(failed["detail"]["result"], "expired", "{failed}");
    let queued = event(&v, "backend_cancel_queued").expect("queued");
    let (queued_at, given_up_at) = (
        queued["at"]
            .as_str()
            .unwrap_or_default()
            .parse::<jiff::Timestamp>()?
            .as_millisecond(),
        failed["at"]
            .as_str()
            .unwrap_or_default()
            .parse::<jiff::Timestamp>()?
            .as_millisecond(),
    );
    assert!(
        given_up_at >= queued_at + 1000,
        "given up {} ms after it was queued, before the 1 s deadline",
        given_up_at - queued_at
    );
    let hits = mock.cancel_hits();
    assert!(hits.len() >= 2, "retried: {hits:?}");
    assert!(
        hits.iter()
            .all(|h| h.key == format!("{rid}:cancel") && h.status == 503),
        "one key on every attempt: {hits:?}"
    );
    assert!(
        failed["detail"]["attempts"].as_u64() >= Some(2),
        "the history counts the attempts: {failed}"
    );
    // Given up for good: nothing more reaches the backend.
    let n = hits.len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mock.cancel_hits().len(), n);
    gw.stop().await;
    Ok(())
}
