//! The spine, end to end: simulated devices → embedded broker → gateway → journal → mock HTTP
//! backends, and feedback back to the device. Everything in one process on loopback ports.

mod common;

use anyhow::Result;
use common::{Metrics, SERIAL};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use yijian_device_sim::{DeviceConfig, SimDevice};
use yijian_tests::*;
use yijian_wire::topic::Kind;

/// Rescue, taxi and hospital each routed to their own mock backend.
async fn gateway_with_backends(mock: &yijian_device_sim::MockBackends) -> Result<TestGateway> {
    TestGateway::start(|c| {
        for (svc, b) in [
            ("rescue", "rescue"),
            ("taxi", "taxi"),
            ("hospital", "hospital"),
        ] {
            backend(c, mock, b);
            route(c, svc, &[b], 2000, 20);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gesture_of_both_profiles_reaches_the_right_backend_once() -> Result<()> {
    let mock = yijian_device_sim::MockBackends::start_local(MockOptions::default()).await?;
    let gw = gateway_with_backends(&mock).await?;

    let mut one = gw.device("one-1", "one-button").await?;
    let mut three = gw.device("three-1", "three-button").await?;
    let cases = [
        ("one-1", "main", Gesture::Single, "rescue"),
        ("one-1", "main", Gesture::Double, "taxi"),
        ("one-1", "main", Gesture::Triple, "hospital"),
        ("three-1", "red", Gesture::Single, "rescue"),
        ("three-1", "green", Gesture::Single, "taxi"),
        ("three-1", "yellow", Gesture::Double, "hospital"),
    ];
    let mut expected = Vec::new();
    for (dev_id, button, gesture, service) in cases {
        let dev = if dev_id == "one-1" {
            &mut one
        } else {
            &mut three
        };
        let press = dev.press(button, gesture).await?;
        let heard = dev
            .wait_for(&press, FeedbackState::Dispatched, WAIT)
            .await?;
        let states: Vec<_> = heard.iter().map(|h| h.feedback.state).collect();
        assert_eq!(
            states,
            vec![FeedbackState::Received, FeedbackState::Dispatched],
            "{dev_id} {button} {gesture}"
        );
        let received = &heard[0].feedback;
        let dispatched = &heard[1].feedback;
        assert_eq!(received.service.map(|s| s.as_str()), Some(service));
        let request_id = received
            .request
            .clone()
            .expect("received names the request");
        assert_eq!(dispatched.request.as_ref(), Some(&request_id));
        assert!(
            dispatched
                .reference
                .as_deref()
                .unwrap_or("")
                .starts_with(&service.to_uppercase()),
            "ref relayed: {dispatched:?}"
        );
        assert_eq!(dispatched.eta_s, Some(600));
        expected.push((request_id, dev_id, press, service, button, gesture));
    }

    // Each backend got exactly its requests, once each, with the contract's body.
    for service in ["rescue", "taxi", "hospital"] {
        let got = mock.received_by(service);
        let want: Vec<_> = expected.iter().filter(|e| e.3 == service).collect();
        assert_eq!(got.len(), want.len(), "{service}: {got:?}");
        for (rid, dev_id, press, _, button, gesture) in want {
            let r = got
                .iter()
                .find(|r| &r.key == rid)
                .unwrap_or_else(|| panic!("{service} did not get {rid}"));
            assert_eq!(r.body["request_id"], json!(rid));
            assert_eq!(r.body["service"], json!(service));
            assert_eq!(r.body["device"]["id"], json!(dev_id));
            assert_eq!(r.body["press"]["id"], json!(press));
            assert_eq!(r.body["press"]["button"], json!(button));
            assert_eq!(r.body["press"]["gesture"], json!(gesture.as_str()));
            assert!(r.body["callback_url"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/api/v1/requests/{rid}/events")));
            assert_eq!(r.attempt, Some(1));
        }
    }
    assert_eq!(mock.duplicates(), 0);

    // The one-button long press cancels the device's most recent open request.
    let cancel = one.press("main", Gesture::Long).await?;
    let heard = one
        .wait_for(&cancel, FeedbackState::Cancelled, WAIT)
        .await?;
    let hospital_rid = &expected[2].0;
    assert_eq!(
        heard.last().unwrap().feedback.request.as_ref(),
        Some(hospital_rid)
    );
    let (status, v) = gw.get(&format!("/api/v1/requests/{hospital_rid}")).await?;
    assert_eq!(status, 200);
    assert_eq!(v["state"], "cancelled");
    // A long press on the three-button panel cancels too.
    let cancel3 = three.press("red", Gesture::Long).await?;
    let heard = three
        .wait_for(&cancel3, FeedbackState::Cancelled, WAIT)
        .await?;
    assert_eq!(
        heard.last().unwrap().feedback.request.as_ref(),
        Some(&expected[5].0)
    );
    // Nothing else reached a backend.
    assert_eq!(mock.received().len(), 6);
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_press_sent_five_times_is_one_request() -> Result<()> {
    let mock = yijian_device_sim::MockBackends::start_local(MockOptions::default()).await?;
    let gw = gateway_with_backends(&mock).await?;
    let mut dev = gw.device("dup-1", "one-button").await?;
    let payload = serde_json::to_vec(
        &json!({"id": "dup-1-p1", "button": "main", "gesture": "double", "at": 1_764_324_000_123i64}),
    )?;
    for _ in 0..5 {
        dev.press_payload("dup-1-p1", payload.clone()).await?;
    }
    // Copies that reach the journal are answered with the same request; copies arriving while
    // the original is still queued for its commit are answered by the original's `received`.
    // Either way: one request, and every answer names it.
    let mut requests = HashSet::new();
    let mut states = Vec::new();
    while !states.contains(&FeedbackState::Dispatched) {
        let h = dev.next_feedback(WAIT).await?;
        assert_eq!(h.feedback.press.as_deref(), Some("dup-1-p1"));
        requests.insert(
            h.feedback
                .request
                .clone()
                .expect("answers name the request"),
        );
        states.push(h.feedback.state);
    }
    assert_eq!(
        requests.len(),
        1,
        "one request for five copies: {requests:?}"
    );
    assert_eq!(states[0], FeedbackState::Received, "{states:?}");
    assert!(
        states.len() <= 6,
        "at most one answer per copy plus the dispatch: {states:?}"
    );
    let rid = requests.into_iter().next().unwrap();
    // A retransmission after dispatch gets the current state again, not a second request.
    dev.press_payload("dup-1-p1", payload.clone()).await?;
    let h = dev.next_feedback(WAIT).await?;
    assert_eq!(h.feedback.state, FeedbackState::Dispatched);
    assert_eq!(h.feedback.request.as_ref(), Some(&rid));
    let (status, list) = gw.get("/api/v1/requests?device=dup-1").await?;
    assert_eq!(status, 200);
    assert_eq!(list["requests"].as_array().unwrap().len(), 1);
    assert_eq!(list["requests"][0]["backend"], "taxi");
    assert_eq!(mock.received_by("taxi").len(), 1);
    assert_eq!(mock.hits().len(), 1, "the backend was asked once");
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_returning_500_fails_over_to_the_next() -> Result<()> {
    let mock = yijian_device_sim::MockBackends::start_local(MockOptions::default()).await?;
    mock.set("rescue-a", Behaviour::Status(500, None));
    let gw = TestGateway::start(|c| {
        backend(c, &mock, "rescue-a");
        backend(c, &mock, "rescue-b");
        route(c, "rescue", &["rescue-a", "rescue-b"], 2000, 20);
    })
    .await?;
    let mut dev = gw.device("fo-1", "one-button").await?;
    let press = dev.press("main", Gesture::Single).await?;
    let heard = dev
        .wait_for(&press, FeedbackState::Dispatched, WAIT)
        .await?;
    let rid = heard[0].feedback.request.clone().unwrap();
    assert_eq!(mock.received_by("rescue-a").len(), 0);
    assert_eq!(mock.received_by("rescue-b").len(), 1);
    let hits = mock.hits();
    let a_hits: Vec<_> = hits.iter().filter(|h| h.backend == "rescue-a").collect();
    assert_eq!(
        a_hits.len(),
        3,
        "attempts_per_backend on the failing backend first"
    );
    assert!(a_hits.iter().all(|h| h.key == rid && h.status == 500));
    let b = hits.iter().find(|h| h.backend == "rescue-b").unwrap();
    assert_eq!(
        b.attempt,
        Some(4),
        "attempt numbers continue across backends"
    );
    let (_, v) = gw.get(&format!("/api/v1/requests/{rid}")).await?;
    assert_eq!(v["backend"], "rescue-b");
    let attempts: Vec<_> = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "attempt")
        .collect();
    assert_eq!(attempts.len(), 4, "every attempt is in the history: {v}");
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_escalates_to_the_desk_where_operators_ack_and_close() -> Result<()> {
    let mock = yijian_device_sim::MockBackends::start_local(MockOptions::default()).await?;
    mock.set("taxi", Behaviour::Status(503, None));
    let gw = TestGateway::start(|c| {
        backend(c, &mock, "taxi");
        route(c, "taxi", &["taxi"], 500, 1);
    })
    .await?;
    let mut dev = gw.device("esc-1", "one-button").await?;
    let press = dev.press("main", Gesture::Double).await?;
    let heard = dev.wait_for(&press, FeedbackState::Escalated, WAIT).await?;
    let states: Vec<_> = heard.iter().map(|h| h.feedback.state).collect();
    assert_eq!(
        states,
        vec![FeedbackState::Received, FeedbackState::Escalated]
    );
    let rid = heard[0].feedback.request.clone().unwrap();
    assert!(!mock.hits().is_empty(), "the backend was tried first");

    let (status, list) = gw.get("/api/v1/requests?state=escalated").await?;
    assert_eq!(status, 200);
    let ids: Vec<_> = list["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec![rid.clone()]);
    assert_eq!(list["requests"][0]["press"]["id"], json!(press));
    assert_eq!(list["requests"][0]["backend"], "desk");

    let (status, v) = gw
        .post(&format!("/api/v1/requests/{rid}/ack"), json!({}))
        .await?;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "acknowledged");
    let (status, v) = gw
        .post(&format!("/api/v1/requests/{rid}/ack"), json!({}))
        .await?;
    assert_eq!(status, 409, "a second ack conflicts: {v}");
    assert!(v["error"].as_str().unwrap().contains("acknowledged"));
    let (status, v) = gw
        .post(&format!("/api/v1/requests/{rid}/close"), json!({}))
        .await?;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "closed");
    let heard = dev.wait_for(&press, FeedbackState::Closed, WAIT).await?;
    assert_eq!(heard.last().unwrap().feedback.request.as_ref(), Some(&rid));
    let (status, _) = gw.post("/api/v1/requests/rq_nope/ack", json!({})).await?;
    assert_eq!(status, 404);
    let kinds: Vec<_> = {
        let (_, v) = gw.get(&format!("/api/v1/requests/{rid}")).await?;
        v["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(kinds.first().map(String::as_str), Some("created"));
    assert!(
        kinds.ends_with(&["escalated".into(), "acknowledged".into(), "closed".into()]),
        "{kinds:?}"
    );
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_configuration_sends_every_press_to_the_desk() -> Result<()> {
    let gw = TestGateway::start(|_| {}).await?;
    let mut dev = gw.device("desk-1", "one-button").await?;
    let press = dev.press("main", Gesture::Single).await?;
    let heard = dev.wait_for(&press, FeedbackState::Escalated, WAIT).await?;
    assert_eq!(heard[0].feedback.state, FeedbackState::Received);
    let (_, list) = gw
        .get("/api/v1/requests?state=escalated&service=rescue")
        .await?;
    assert_eq!(list["requests"].as_array().unwrap().len(), 1);
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_press_is_rejected_with_its_reason_and_the_gateway_carries_on() -> Result<()> {
    let gw = TestGateway::start(|_| {}).await?;
    let mut dev = gw.device("bad-1", "one-button").await?;
    dev.press_payload(
        "bad-1-p1",
        br#"{"id":"bad-1-p1","button":"main","gesture":"tap","at":1764324000123}"#.to_vec(),
    )
    .await?;
    let heard = dev
        .wait_for("bad-1-p1", FeedbackState::Rejected, WAIT)
        .await?;
    assert_eq!(heard.len(), 1);
    assert_eq!(
        heard[0].feedback.reason.as_deref(),
        Some("gesture must be one of single|double|triple|long")
    );
    assert_eq!(heard[0].feedback.request, None);
    dev.publish_raw(Kind::Press, b"not json at all".to_vec())
        .await?;
    let h = dev.next_feedback(WAIT).await?;
    assert_eq!(h.feedback.state, FeedbackState::Rejected);
    assert!(h
        .feedback
        .reason
        .unwrap()
        .starts_with("payload is not JSON"));
    // A valid press right after is served.
    let press = dev.press("main", Gesture::Single).await?;
    dev.wait_for(&press, FeedbackState::Escalated, WAIT).await?;
    let (_, list) = gw.get("/api/v1/requests?limit=10").await?;
    assert_eq!(
        list["requests"].as_array().unwrap().len(),
        1,
        "rejected presses create no request"
    );
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_clients_and_wrong_secrets_are_refused_at_connect() -> Result<()> {
    let gw = TestGateway::start(|_| {}).await?;
    let secret = gw.add_device("known-1", "one-button")?;
    // Refused as a refusal: a CONNACK refusal code or the broker closing first, never a
    // connection that merely timed out.
    assert_refused(
        "an unknown device",
        mqtt_options(gw.mqtt, "stranger", Some(("stranger", &secret)), None),
    )
    .await?;
    let zeros = "0".repeat(32);
    assert_refused(
        "a wrong secret",
        mqtt_options(gw.mqtt, "known-1", Some(("known-1", &zeros)), None),
    )
    .await?;
    let ok = SimDevice::connect(DeviceConfig::new("known-1", &secret, gw.mqtt)).await;
    assert!(ok.is_ok(), "the right secret connects: {:?}", ok.err());
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_is_replayed_after_a_restart() -> Result<()> {
    let mock = yijian_device_sim::MockBackends::start_local(MockOptions::default()).await?;
    mock.set("hospital", Behaviour::Status(503, None));
    let dir = tempfile::tempdir()?;
    let mut config = test_config(dir.path());
    backend(&mut config, &mock, "hospital");
    route(&mut config, "hospital", &["hospital"], 500, 300);
    let gw = TestGateway::start_with(config.clone()).await?;
    let mut dev = gw.device("replay-1", "one-button").await?;
    let press = dev.press("main", Gesture::Triple).await?;
    let heard = dev.wait_for(&press, FeedbackState::Received, WAIT).await?;
    let rid = heard[0].feedback.request.clone().unwrap();
    // Wait until a failed attempt is journaled (not merely seen by the backend: the gateway
    // records it only once the answer is in), then stop the gateway.
    gw.wait_request(&rid, "a failed attempt in its history", |v| {
        history_kinds(v).iter().any(|k| k == "attempt")
    })
    .await?;
    gw.stop().await;
    assert!(mock.received().is_empty());

    // The backend recovers; a new gateway on the same journal dispatches what was owed.
    mock.set("hospital", Behaviour::Accept);
    let gw = TestGateway::start_with(config).await?;
    gw.wait_request(&rid, "dispatched after the restart", |v| {
        v["state"] == "dispatched"
    })
    .await?;
    let got = mock.received_by("hospital");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key, rid);
    assert!(
        got[0].attempt.unwrap() > 1,
        "attempt numbers continue after the restart: {:?}",
        got[0].attempt
    );
    // The device, back on the new gateway's broker (which knows nothing of its session), is
    // told: the dispatch may well have happened before it reconnected.
    let heard = dev
        .wait_for(&press, FeedbackState::Dispatched, WAIT)
        .await?;
    assert_eq!(heard.last().unwrap().feedback.request.as_ref(), Some(&rid));
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_was_away_hears_where_its_request_stands_when_it_subscribes() -> Result<()> {
    // The resumed-feedback counter is process-wide: no other test moves it meanwhile.
    let _serial = SERIAL.lock().await;
    let mock = yijian_device_sim::MockBackends::start_local(MockOptions::default()).await?;
    let gw = gateway_with_backends(&mock).await?;
    let secret = gw.add_device("away-1", "one-button")?;
    let mut dev = SimDevice::connect(DeviceConfig::new("away-1", &secret, gw.mqtt)).await?;
    let press = dev.press("main", Gesture::Single).await?;
    let heard = dev
        .wait_for(&press, FeedbackState::Dispatched, WAIT)
        .await?;
    let rid = heard[0].feedback.request.clone().expect("request id");
    dev.disconnect().await;

    // While the device is away (its power cut, say), the ambulance sets off.
    let (status, v) = gw
        .callback(&rid, "rescue", json!({"state": "en_route", "eta_s": 300}))
        .await?;
    assert_eq!(status, 200, "{v}");
    let v = gw
        .wait_request(&rid, "en_route", |v| v["state"] == "en_route")
        .await?;
    assert_eq!(v["eta_s"], 300);

    // It comes back with a clean session: the broker has nothing for it. Subscribing is enough
    // for the gateway to tell it, from the journal.
    let before = Metrics::scrape(&gw).await?;
    let mut o = rumqttc::MqttOptions::new("away-1", gw.mqtt.ip().to_string(), gw.mqtt.port());
    o.set_credentials("away-1", &secret);
    o.set_clean_session(true);
    let (client, mut events) = rumqttc::AsyncClient::new(o, 16);
    client
        .subscribe(
            yijian_wire::topic::topic("away-1", Kind::Feedback),
            rumqttc::QoS::AtLeastOnce,
        )
        .await?;
    let fb = tokio::time::timeout(WAIT, async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = events.poll().await? {
                return anyhow::Ok(serde_json::from_slice::<yijian_wire::Feedback>(&p.payload)?);
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("the device heard nothing after it subscribed"))??;
    assert_eq!(fb.press.as_deref(), Some(press.as_str()));
    assert_eq!(fb.request.as_ref(), Some(&rid));
    assert_eq!(fb.state, FeedbackState::EnRoute);
    assert_eq!(fb.eta_s, Some(300));
    let resumed = before.delta(
        &Metrics::scrape(&gw).await?,
        "yijian_feedback_resumed_total",
        &[("state", "en_route")],
    );
    assert_eq!(
        resumed, 1.0,
        "the en_route told again from the journal, once"
    );
    gw.stop().await;
    Ok(())
}

/// A device whose persistent session outlived its absence reads on where it left off — but the
/// broker keeps only a device's last ~2 KB of feedback. When more than that was published while
/// it was away, what fell out is lost to it, and the gateway tells it again from the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_session_dropped_feedback_hears_it_from_the_journal() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mock = yijian_device_sim::MockBackends::start_local(MockOptions::default()).await?;
    let gw = TestGateway::start(|c| {
        backend(c, &mock, "rescue");
        route(c, "rescue", &["rescue"], 2000, 20);
        c.flood.attach_window_s = 0;
    })
    .await?;
    let secret = gw.add_device("away-2", "one-button")?;
    let cfg = DeviceConfig::new("away-2", &secret, gw.mqtt);
    let mut dev = SimDevice::connect(cfg.clone()).await?;
    let mut requests = Vec::new();
    for _ in 0..8 {
        let press = dev.press("main", Gesture::Single).await?;
        let heard = dev
            .wait_for(&press, FeedbackState::Dispatched, WAIT)
            .await?;
        requests.push((
            press,
            heard[0].feedback.request.clone().expect("request id"),
        ));
    }
    dev.disconnect().await;

    // While it is away: the first request's ambulance sets off, and then so much happens to the
    // others that the first notice no longer fits in the device's feedback log.
    let (first_press, first) = requests[0].clone();
    for (state, eta) in [("en_route", Some(300)), ("arrived", None)] {
        for (_, rid) in &requests {
            if state == "arrived" && *rid == first {
                continue;
            }
            let body = match eta {
                Some(eta) => json!({"state": state, "eta_s": eta}),
                None => json!({"state": state}),
            };
            let (status, v) = gw.callback(rid, "rescue", body).await?;
            assert_eq!(status, 200, "{v}");
            gw.wait_request(rid, state, |v| v["state"] == state).await?;
        }
    }

    // Back with the same persistent session: it hears where every request stands, the first
    // one's en_route included, which the broker no longer held for it.
    let before = Metrics::scrape(&gw).await?;
    let mut dev = SimDevice::connect(cfg).await?;
    let mut owed: HashMap<&str, FeedbackState> = requests
        .iter()
        .map(|(p, rid)| {
            let state = if *rid == first {
                FeedbackState::EnRoute
            } else {
                FeedbackState::Arrived
            };
            (p.as_str(), state)
        })
        .collect();
    while !owed.is_empty() {
        let h = dev
            .next_feedback(WAIT)
            .await
            .map_err(|e| anyhow::anyhow!("{e}; still owed {owed:?}"))?;
        let Some(press) = h.feedback.press.as_deref() else {
            continue;
        };
        if owed.get(press) == Some(&h.feedback.state) {
            if press == first_press {
                assert_eq!(h.feedback.request.as_ref(), Some(&first));
                assert_eq!(h.feedback.eta_s, Some(300));
            }
            owed.remove(press);
        }
    }
    // The en_route came from the journal (the only request still en_route is the first, and
    // this gateway told it again once), not from what the broker's session still held.
    let resumed = before.delta(
        &Metrics::scrape(&gw).await?,
        "yijian_feedback_resumed_total",
        &[("state", "en_route")],
    );
    assert_eq!(
        resumed, 1.0,
        "the first request's en_route, told again from the journal"
    );
    gw.stop().await;
    Ok(())
}
