//! Bad input, end to end: every kind of malformed press and status a device can send over real
//! MQTT through the embedded broker, misaddressed and oversized packets the broker must refuse,
//! a device revoked while connected, and bad HTTP on every API endpoint.
//!
//! What a user checks: each bad message is answered `rejected` with its reason (when its topic
//! names a device), counted by reason in `/metrics`, creates no request, and the gateway keeps
//! serving valid presses during and after. The API answers bad HTTP with a 4xx and a JSON
//! `{"error": ...}`, never a 500.

mod common;

use anyhow::{Context, Result};
use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use yijian_device_sim::MockBackends;
use yijian_tests::*;
use yijian_wire::topic::Kind;
use yijian_wire::{RejectReason, MAX_AT_MS, MAX_PAYLOAD_BYTES};

const PRESS_REJECTED: &str = "yijian_press_rejected_total";
const STATUS_REJECTED: &str = "yijian_status_rejected_total";
const CLOCK_SKEW: &str = "yijian_press_clock_skew_total";
const MQTT_REFUSED: &str = "yijian_mqtt_refused_total";

/// Every service routed to one accepting mock backend, so a valid press ends `dispatched`.
async fn gateway(mock: &MockBackends) -> Result<TestGateway> {
    TestGateway::start(|c| {
        backend(c, mock, "ok");
        for s in ["rescue", "taxi", "hospital"] {
            route(c, s, &["ok"], 2000, 20);
        }
        // Each valid press here must become its own request: flood control would join a
        // repeated press of the same service from one device to the request already open.
        c.flood.attach_window_s = 0;
        // One device sends every malformed case back to back (and acks each answer): more
        // than a real device's burst allowance, which security.rs tests on its own.
        c.flood.device_burst = 10_000;
    })
    .await
}

/// How the `reason` of a `rejected` feedback must read.
enum Says {
    Exactly(&'static str),
    StartsWith(&'static str),
}

/// One malformed message: what it is, its bytes, and what the device must hear.
struct Case {
    what: &'static str,
    payload: Vec<u8>,
    reason: RejectReason,
    says: Says,
    /// The press id echoed in the feedback (the device stops retransmitting that press).
    press: Option<&'static str>,
}

fn case(
    what: &'static str,
    payload: impl Into<Vec<u8>>,
    reason: RejectReason,
    says: Says,
    press: Option<&'static str>,
) -> Case {
    Case {
        what,
        payload: payload.into(),
        reason,
        says,
        press,
    }
}

fn press_json(fields: Value) -> Vec<u8> {
    serde_json::to_vec(&fields).expect("json")
}

fn press_cases() -> Vec<Case> {
    use RejectReason::*;
    use Says::*;
    let now = 1_764_324_000_123i64;
    let oversize = format!(
        r#"{{"id":"big-1","button":"main","gesture":"single","at":{now},"pad":"{}"}}"#,
        "x".repeat(MAX_PAYLOAD_BYTES)
    );
    let deep = format!(
        r#"{{"id":"deep-1","x":{}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    vec![
        case(
            "not JSON",
            "not json at all",
            NotJson,
            StartsWith("payload is not JSON: "),
            None,
        ),
        case(
            "empty payload",
            "",
            NotJson,
            StartsWith("payload is not JSON: "),
            None,
        ),
        case(
            "truncated JSON",
            r#"{"id":"p-trunc","button":"ma"#,
            NotJson,
            StartsWith("payload is not JSON: "),
            None,
        ),
        case(
            "nested too deep",
            deep,
            NotJson,
            StartsWith("payload is not JSON: "),
            None,
        ),
        case(
            "JSON array",
            r#"[{"id":"p-arr","button":"main","gesture":"single","at":1}]"#,
            NotObject,
            Exactly("payload must be a JSON object"),
            None,
        ),
        case(
            "JSON string",
            r#""press""#,
            NotObject,
            Exactly("payload must be a JSON object"),
            None,
        ),
        case(
            "JSON number",
            "42",
            NotObject,
            Exactly("payload must be a JSON object"),
            None,
        ),
        case(
            "non-UTF-8 bytes",
            [b'{', b'"', b'i', b'd', b'"', b':', 0xff, 0xfe, b'}'].to_vec(),
            NotUtf8,
            Exactly("payload is not UTF-8"),
            None,
        ),
        case(
            "over 4096 bytes, under the broker's limit",
            oversize,
            TooLarge,
            Exactly("payload larger than 4096 bytes"),
            None,
        ),
        case(
            "id missing",
            press_json(json!({"button": "main", "gesture": "single", "at": now})),
            MissingField,
            Exactly("id is required"),
            None,
        ),
        case(
            "id null",
            press_json(json!({"id": null, "button": "main", "gesture": "single", "at": now})),
            MissingField,
            Exactly("id is required"),
            None,
        ),
        case(
            "id a number",
            press_json(json!({"id": 7, "button": "main", "gesture": "single", "at": now})),
            WrongType,
            Exactly("id must be a string"),
            None,
        ),
        case(
            "id empty",
            press_json(json!({"id": "", "button": "main", "gesture": "single", "at": now})),
            InvalidId,
            Exactly("id must not be empty"),
            None,
        ),
        case(
            "id 65 characters",
            press_json(
                json!({"id": "i".repeat(65), "button": "main", "gesture": "single", "at": now}),
            ),
            InvalidId,
            Exactly("id longer than 64 characters"),
            None,
        ),
        case(
            "id with a control character",
            press_json(json!({"id": "a\u{7}b", "button": "main", "gesture": "single", "at": now})),
            InvalidId,
            Exactly("id must not contain control characters"),
            None,
        ),
        case(
            "button missing",
            press_json(json!({"id": "p-nob", "gesture": "single", "at": now})),
            MissingField,
            Exactly("button is required"),
            Some("p-nob"),
        ),
        case(
            "button an array",
            press_json(json!({"id": "p-arrb", "button": ["main"], "gesture": "single", "at": now})),
            WrongType,
            Exactly("button must be a string"),
            Some("p-arrb"),
        ),
        case(
            "button empty",
            press_json(json!({"id": "p-emptyb", "button": "", "gesture": "single", "at": now})),
            InvalidButton,
            Exactly("button must not be empty"),
            Some("p-emptyb"),
        ),
        case(
            "button with capitals and a space",
            press_json(
                json!({"id": "p-capb", "button": "Main Button", "gesture": "single", "at": now}),
            ),
            InvalidButton,
            Exactly("button may contain only a-z, 0-9, '_' and '-'"),
            Some("p-capb"),
        ),
        case(
            "button 33 characters",
            press_json(
                json!({"id": "p-longb", "button": "b".repeat(33), "gesture": "single", "at": now}),
            ),
            InvalidButton,
            Exactly("button longer than 32 characters"),
            Some("p-longb"),
        ),
        case(
            "gesture missing",
            press_json(json!({"id": "p-nog", "button": "main", "at": now})),
            MissingField,
            Exactly("gesture is required"),
            Some("p-nog"),
        ),
        case(
            "gesture unknown",
            press_json(json!({"id": "p-tap", "button": "main", "gesture": "tap", "at": now})),
            InvalidGesture,
            Exactly("gesture must be one of single|double|triple|long"),
            Some("p-tap"),
        ),
        case(
            "gesture in capitals",
            press_json(json!({"id": "p-caps", "button": "main", "gesture": "SINGLE", "at": now})),
            InvalidGesture,
            Exactly("gesture must be one of single|double|triple|long"),
            Some("p-caps"),
        ),
        case(
            "gesture a number",
            press_json(json!({"id": "p-gnum", "button": "main", "gesture": 1, "at": now})),
            WrongType,
            Exactly("gesture must be a string"),
            Some("p-gnum"),
        ),
        case(
            "at missing",
            press_json(json!({"id": "p-noat", "button": "main", "gesture": "single"})),
            MissingField,
            Exactly("at is required"),
            Some("p-noat"),
        ),
        case(
            "at a string",
            press_json(
                json!({"id": "p-sat", "button": "main", "gesture": "single", "at": "1764324000123"}),
            ),
            WrongType,
            Exactly("at must be an integer (epoch milliseconds)"),
            Some("p-sat"),
        ),
        case(
            "at a fraction",
            press_json(
                json!({"id": "p-fat", "button": "main", "gesture": "single", "at": 1764324000123.5}),
            ),
            WrongType,
            Exactly("at must be an integer (epoch milliseconds)"),
            Some("p-fat"),
        ),
        case(
            "at before 1970",
            press_json(json!({"id": "p-past", "button": "main", "gesture": "single", "at": -1})),
            InvalidAt,
            Exactly("at must be epoch milliseconds between 1970 and 2100"),
            Some("p-past"),
        ),
        case(
            "at after 2100",
            press_json(
                json!({"id": "p-2100", "button": "main", "gesture": "single", "at": MAX_AT_MS + 1}),
            ),
            InvalidAt,
            Exactly("at must be epoch milliseconds between 1970 and 2100"),
            Some("p-2100"),
        ),
        case(
            "at in microseconds",
            press_json(
                json!({"id": "p-us", "button": "main", "gesture": "single", "at": now * 1000}),
            ),
            InvalidAt,
            Exactly("at must be epoch milliseconds between 1970 and 2100"),
            Some("p-us"),
        ),
        case(
            "at beyond i64",
            r#"{"id":"p-u64","button":"main","gesture":"single","at":18446744073709551615}"#,
            InvalidAt,
            Exactly("at must be epoch milliseconds between 1970 and 2100"),
            Some("p-u64"),
        ),
        case(
            "battery 101",
            press_json(
                json!({"id": "p-b101", "button": "main", "gesture": "single", "at": now, "battery": 101}),
            ),
            InvalidBattery,
            Exactly("battery must be an integer from 0 to 100"),
            Some("p-b101"),
        ),
        case(
            "battery negative",
            press_json(
                json!({"id": "p-bneg", "button": "main", "gesture": "single", "at": now, "battery": -3}),
            ),
            InvalidBattery,
            Exactly("battery must be an integer from 0 to 100"),
            Some("p-bneg"),
        ),
        case(
            "battery a string",
            press_json(
                json!({"id": "p-bstr", "button": "main", "gesture": "single", "at": now, "battery": "full"}),
            ),
            WrongType,
            Exactly("battery must be an integer from 0 to 100"),
            Some("p-bstr"),
        ),
    ]
}

fn status_cases() -> Vec<Case> {
    use RejectReason::*;
    use Says::*;
    let oversize = format!(
        r#"{{"online":true,"fw":"1","pad":"{}"}}"#,
        "x".repeat(MAX_PAYLOAD_BYTES)
    );
    vec![
        case(
            "not JSON",
            "online",
            NotJson,
            StartsWith("status: payload is not JSON: "),
            None,
        ),
        case(
            "JSON array",
            "[true]",
            NotObject,
            Exactly("status: payload must be a JSON object"),
            None,
        ),
        case(
            "non-UTF-8 bytes",
            vec![0xc3, 0x28, 0xa0, 0xa1],
            NotUtf8,
            Exactly("status: payload is not UTF-8"),
            None,
        ),
        case(
            "over 4096 bytes",
            oversize,
            TooLarge,
            Exactly("status: payload larger than 4096 bytes"),
            None,
        ),
        case(
            "online missing",
            r#"{"battery":50}"#,
            MissingField,
            Exactly("status: online is required"),
            None,
        ),
        case(
            "online a string",
            r#"{"online":"yes"}"#,
            WrongType,
            Exactly("status: online must be a boolean"),
            None,
        ),
        case(
            "battery 200",
            r#"{"online":true,"battery":200}"#,
            InvalidStatus,
            Exactly("status: battery must be an integer from 0 to 100"),
            None,
        ),
        case(
            "rssi positive",
            r#"{"online":true,"rssi":12}"#,
            InvalidStatus,
            Exactly("status: rssi must be an integer from -200 to 0 (dBm)"),
            None,
        ),
        case(
            "rssi a string",
            r#"{"online":true,"rssi":"-60"}"#,
            WrongType,
            Exactly("status: rssi must be an integer (dBm)"),
            None,
        ),
        case(
            "fw too long",
            format!(r#"{{"online":true,"fw":"{}"}}"#, "v".repeat(33)),
            InvalidStatus,
            Exactly("status: fw must be at most 32 printable characters"),
            None,
        ),
        case(
            "fw a number",
            r#"{"online":true,"fw":3}"#,
            WrongType,
            Exactly("status: fw must be a string"),
            None,
        ),
        case(
            "at negative",
            r#"{"online":true,"at":-5}"#,
            InvalidAt,
            Exactly("status: at must be epoch milliseconds between 1970 and 2100"),
            None,
        ),
        case(
            "at after 2100",
            format!(r#"{{"online":true,"at":{}}}"#, MAX_AT_MS + 1),
            InvalidAt,
            Exactly("status: at must be epoch milliseconds between 1970 and 2100"),
            None,
        ),
    ]
}

/// Send each case from `bad` while `good` presses a valid button, and check both answers.
/// Returns how many of each reason were sent.
async fn run_cases(
    kind: Kind,
    cases: &[Case],
    bad: &mut yijian_device_sim::SimDevice,
    good: &mut yijian_device_sim::SimDevice,
) -> Result<HashMap<RejectReason, u32>> {
    let mut sent = HashMap::new();
    for c in cases {
        bad.publish_raw(kind, c.payload.clone()).await?;
        let valid = good.press("main", Gesture::Single).await?;
        let h = bad
            .next_feedback(WAIT)
            .await
            .with_context(|| format!("the answer to {kind:?} {}", c.what))?;
        let f = &h.feedback;
        let reason = f.reason.clone().unwrap_or_default();
        assert_eq!(
            f.state,
            FeedbackState::Rejected,
            "{kind:?} {}: {f:?}",
            c.what
        );
        match c.says {
            Says::Exactly(m) => assert_eq!(reason, m, "{kind:?} {}", c.what),
            Says::StartsWith(m) => {
                assert!(reason.starts_with(m), "{kind:?} {}: {reason:?}", c.what)
            }
        }
        assert_eq!(
            f.press.as_deref(),
            c.press,
            "{kind:?} {}: echoed press id",
            c.what
        );
        assert_eq!(
            (f.request.as_ref(), f.service),
            (None, None),
            "{kind:?} {}: no request",
            c.what
        );
        // The gateway kept serving while it refused.
        good.wait_for(&valid, FeedbackState::Dispatched, WAIT)
            .await?;
        *sent.entry(c.reason).or_insert(0) += 1;
    }
    Ok(sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_press_and_status_is_rejected_counted_and_creates_nothing() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mock = MockBackends::start_local(MockOptions::default()).await?;
    let gw = gateway(&mock).await?;
    let mut bad = gw.device("bad-in-1", "one-button").await?;
    let mut good = gw.device("good-in-1", "one-button").await?;
    let before = Metrics::scrape(&gw).await?;

    let presses = press_cases();
    let statuses = status_cases();
    let sent_presses = run_cases(Kind::Press, &presses, &mut bad, &mut good).await?;
    let sent_statuses = run_cases(Kind::Status, &statuses, &mut bad, &mut good).await?;

    // A device clock that is merely wrong is not a reason to refuse an emergency: accepted,
    // dispatched, counted as skewed. Only an `at` that cannot be epoch ms is refused (above).
    for (id, at) in [
        ("skew-1990", 631_152_000_000i64),
        ("skew-2090", 3_786_912_000_000i64),
    ] {
        let payload =
            press_json(json!({"id": id, "button": "main", "gesture": "single", "at": at}));
        bad.press_payload(id, payload).await?;
        let heard = bad.wait_for(id, FeedbackState::Dispatched, WAIT).await?;
        let rid = heard[0]
            .feedback
            .request
            .clone()
            .expect("received names the request");
        let v = gw.request(&rid).await?;
        assert_eq!(
            epoch_ms(v["press"]["at"].as_str().unwrap_or_default())?,
            at,
            "the device's own time is kept: {v}"
        );
    }
    // And the device that sent all that is still served.
    let last = bad.press("main", Gesture::Double).await?;
    bad.wait_for(&last, FeedbackState::Dispatched, WAIT).await?;

    let after = Metrics::scrape(&gw).await?;
    for r in RejectReason::ALL {
        if *r == RejectReason::UnknownDevice {
            continue; // another test of this binary counts those; they wait for SERIAL too
        }
        let label = [("reason", r.as_str())];
        let want = sent_presses.get(r).copied().unwrap_or(0) as f64;
        assert_eq!(
            before.delta(&after, PRESS_REJECTED, &label),
            want,
            "{PRESS_REJECTED}{{reason={}}}",
            r.as_str()
        );
        let want = sent_statuses.get(r).copied().unwrap_or(0) as f64;
        assert_eq!(
            before.delta(&after, STATUS_REJECTED, &label),
            want,
            "{STATUS_REJECTED}{{reason={}}}",
            r.as_str()
        );
    }
    assert_eq!(
        before.delta(&after, CLOCK_SKEW, &[]),
        2.0,
        "both skewed presses counted"
    );

    // Nothing but the three valid presses of `bad` became a request or reached a backend.
    let (_, list) = gw.get("/api/v1/requests?device=bad-in-1&limit=100").await?;
    let presses_of_requests: Vec<&str> = list["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["press"]["id"].as_str())
        .collect();
    assert_eq!(presses_of_requests.len(), 3, "{list}");
    assert!(
        presses_of_requests.contains(&"skew-1990") && presses_of_requests.contains(&"skew-2090")
    );
    let reached: Vec<_> = mock
        .received()
        .into_iter()
        .filter(|r| r.device_id == "bad-in-1")
        .collect();
    assert_eq!(
        reached.len(),
        3,
        "only valid presses reach a backend: {reached:?}"
    );
    let valid_of_good = presses.len() + statuses.len();
    assert_eq!(
        mock.received()
            .iter()
            .filter(|r| r.device_id == "good-in-1")
            .count(),
        valid_of_good
    );
    assert_eq!(mock.duplicates(), 0);
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_closes_connections_that_leave_their_own_topics_or_exceed_its_packet_limit(
) -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mock = MockBackends::start_local(MockOptions::default()).await?;
    let gw = gateway(&mock).await?;
    let secret = gw.add_device("acl-1", "one-button")?;
    // A neighbour whose topics acl-1 will try to use; it must hear nothing of it.
    let mut neighbour = gw.device("acl-2", "one-button").await?;
    let before = Metrics::scrape(&gw).await?;

    let publishes = [
        "yijian/v1/devices/acl-2/press",       // another device's press topic
        "yijian/v1/devices/acl-1/feedback",    // its own feedback: only the gateway writes there
        "yijian/v1/devices/acl-1/press/extra", // below its own topic
        "yijian/v1/devices/acl-1/light",       // not a v1 topic
        "yijian/v2/devices/acl-1/press",       // another protocol version
        "elsewhere/acl-1",                     // outside the tree
    ];
    let valid_press = |id: &str| {
        press_json(
            json!({"id": id, "button": "main", "gesture": "single", "at": 1_764_324_000_123i64}),
        )
    };
    for (n, t) in publishes.iter().enumerate() {
        let (client, mut events) = raw_device(&gw, "acl-1", &secret, 64 * 1024).await?;
        client
            .publish(
                *t,
                rumqttc::QoS::AtLeastOnce,
                false,
                valid_press(&format!("acl-p{n}")),
            )
            .await?;
        let closed = wait_closed(&mut events)
            .await
            .map_err(|e| anyhow::anyhow!("publish on {t}: {e}"))?;
        assert!(!closed.is_empty());
        // The gateway serves the device's neighbour right after.
        let p = neighbour.press("main", Gesture::Single).await?;
        neighbour
            .wait_for(&p, FeedbackState::Dispatched, WAIT)
            .await?;
    }
    let subscribes = [
        "yijian/v1/devices/+/feedback",
        "yijian/v1/devices/acl-2/feedback",
        "#",
    ];
    for f in subscribes {
        let (client, mut events) = raw_device(&gw, "acl-1", &secret, 64 * 1024).await?;
        client.subscribe(f, rumqttc::QoS::AtLeastOnce).await?;
        wait_closed(&mut events)
            .await
            .map_err(|e| anyhow::anyhow!("subscribe to {f}: {e}"))?;
    }

    // Over the broker's own packet limit (16 KB by default), even on its own press topic: the
    // broker closes the connection before the gateway sees a byte of it.
    let limit = gw.config.mqtt.max_payload_size;
    let huge = format!(
        r#"{{"id":"acl-huge","button":"main","gesture":"single","at":1764324000123,"pad":"{}"}}"#,
        "x".repeat(limit + 1024)
    );
    let (client, mut events) = raw_device(&gw, "acl-1", &secret, 4 * limit).await?;
    client
        .publish(
            yijian_wire::topic::topic("acl-1", Kind::Press),
            rumqttc::QoS::AtLeastOnce,
            false,
            huge,
        )
        .await?;
    wait_closed(&mut events)
        .await
        .map_err(|e| anyhow::anyhow!("oversize publish: {e}"))?;

    // The device itself, behaving again, is served.
    let mut dev = yijian_device_sim::SimDevice::connect(yijian_device_sim::DeviceConfig::new(
        "acl-1", &secret, gw.mqtt,
    ))
    .await?;
    let p = dev.press("main", Gesture::Double).await?;
    let heard = dev.wait_for(&p, FeedbackState::Dispatched, WAIT).await?;
    assert_eq!(heard[0].feedback.state, FeedbackState::Received);

    let after = Metrics::scrape(&gw).await?;
    assert_eq!(
        before.delta(&after, MQTT_REFUSED, &[("reason", "publish_topic")]),
        publishes.len() as f64
    );
    assert_eq!(
        before.delta(&after, MQTT_REFUSED, &[("reason", "subscribe_topic")]),
        subscribes.len() as f64
    );
    for r in RejectReason::ALL {
        let label = [("reason", r.as_str())];
        assert_eq!(
            before.delta(&after, PRESS_REJECTED, &label),
            0.0,
            "refused at the broker, not by intake: {}",
            r.as_str()
        );
    }
    // None of the misaddressed presses became a request, for either device.
    let (_, list) = gw.get("/api/v1/requests?device=acl-1").await?;
    assert_eq!(
        list["requests"].as_array().map(Vec::len),
        Some(1),
        "only the valid press: {list}"
    );
    let (_, list) = gw.get("/api/v1/requests?device=acl-2&limit=100").await?;
    assert_eq!(
        list["requests"].as_array().map(Vec::len),
        Some(publishes.len()),
        "only the neighbour's own presses: {list}"
    );
    assert!(mock
        .received()
        .iter()
        .all(|r| !r.press_id.starts_with("acl-p") && r.press_id != "acl-huge"));
    gw.stop().await;
    Ok(())
}

/// Decommissioned while its connection is up, the way an installer does it: `devices revoke`
/// (the CLI, in another process, on the same journal). The gateway notices from the journal's
/// credential log, drops the live connection, and takes nothing more from the device — not the
/// press it sends meanwhile, not its reconnection — while other devices are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_revoked_while_connected_is_cut_off_and_nothing_more_is_taken() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mock = MockBackends::start_local(MockOptions::default()).await?;
    let gw = gateway(&mock).await?;
    let secret = gw.add_device("gone-1", "one-button")?;
    let mut gone = yijian_device_sim::SimDevice::connect(yijian_device_sim::DeviceConfig::new(
        "gone-1", &secret, gw.mqtt,
    ))
    .await?;
    let mut other = gw.device("still-1", "one-button").await?;
    let first = gone.press("main", Gesture::Single).await?;
    gone.wait_for(&first, FeedbackState::Dispatched, WAIT)
        .await?;
    let before = Metrics::scrape(&gw).await?;

    let mut out = Vec::new();
    yijian_gateway::lifecycle::cli_revoke(&gw.config, "gone-1", &mut out)?;
    let printed = String::from_utf8(out)?;
    assert!(printed.starts_with("revoked device gone-1"), "{printed}");
    assert!(
        gone.wait_disconnected(WAIT).await,
        "the revoked device's live connection is dropped"
    );
    // What it sends from now on goes nowhere: it keeps the press (nobody answered it) and
    // cannot come back to deliver it.
    let late = gone.press("main", Gesture::Single).await?;
    assert_refused(
        "the revoked device reconnecting",
        mqtt_options(gw.mqtt, "gone-1", Some(("gone-1", &secret)), None),
    )
    .await?;
    drop(gone);

    // Other devices are served throughout.
    let q = other.press("main", Gesture::Triple).await?;
    other.wait_for(&q, FeedbackState::Dispatched, WAIT).await?;
    gw.gw.store.flush().await;

    let after = Metrics::scrape(&gw).await?;
    assert_eq!(
        before.delta(
            &after,
            "yijian_devices_evictions_total",
            &[("change", "revoked")]
        ),
        1.0,
        "one live connection dropped for the revocation"
    );
    let (_, list) = gw.get("/api/v1/requests?device=gone-1").await?;
    let presses: Vec<&str> = list["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["press"]["id"].as_str())
        .collect();
    assert_eq!(
        presses,
        [first.as_str()],
        "only the press before the revocation ({late} came after): {list}"
    );
    assert_eq!(
        mock.received()
            .iter()
            .filter(|r| r.device_id == "gone-1")
            .count(),
        1
    );
    let (_, d) = gw
        .call("GET", "/api/v1/devices/gone-1", Some(&gw.admin_token), None)
        .await?;
    assert!(d["revoked_at"].is_i64(), "the registry says so: {d}");
    gw.stop().await;
    Ok(())
}

/// Bad HTTP on every endpoint: a 4xx with a JSON `{"error": "..."}` body, never a 500, and
/// nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_gets_a_json_4xx_on_every_endpoint_and_changes_nothing() -> Result<()> {
    // A backend that is declared (so its callback token exists) but routed nowhere: the
    // request stays with the desk, and the bad callbacks below are judged on their bodies.
    let mock = MockBackends::start_local(MockOptions::default()).await?;
    let gw = TestGateway::start(|c| backend(c, &mock, "cb")).await?;
    let cb_token = backend_token("cb");
    let mut dev = gw.device("http-1", "one-button").await?;
    let press = dev.press("main", Gesture::Single).await?;
    let heard = dev.wait_for(&press, FeedbackState::Escalated, WAIT).await?;
    let rid = heard[0]
        .feedback
        .request
        .clone()
        .expect("received names the request");
    let history_before = history_kinds(&gw.request(&rid).await?);

    const JSON: Option<&str> = Some("application/json");
    let events = format!("/api/v1/requests/{rid}/events");
    let long_id = "r".repeat(8 * 1024);
    let big_body = serde_json::to_vec(&json!({"state": "en_route", "ref": "x".repeat(70 * 1024)}))?;
    // method, path, content type, body, expected status
    type HttpCase<'a> = (&'a str, String, Option<&'a str>, Vec<u8>, u16);
    #[rustfmt::skip]
    let cases: Vec<HttpCase> = vec![
        // GET /api/v1/requests: every bad query parameter.
        ("GET", "/api/v1/requests?state=bogus".into(), None, vec![], 400),
        ("GET", "/api/v1/requests?state=ESCALATED".into(), None, vec![], 400),
        ("GET", "/api/v1/requests?state=".into(), None, vec![], 400),
        ("GET", "/api/v1/requests?service=spaceship".into(), None, vec![], 400),
        ("GET", "/api/v1/requests?limit=0".into(), None, vec![], 400),
        ("GET", "/api/v1/requests?limit=1001".into(), None, vec![], 400),
        ("GET", "/api/v1/requests?limit=-1".into(), None, vec![], 400),
        ("GET", "/api/v1/requests?limit=ten".into(), None, vec![], 400),
        ("GET", "/api/v1/requests?limit=99999999999999999999999".into(), None, vec![], 400),
        ("GET", "/api/v1/requests?cancel_requested=maybe".into(), None, vec![], 400),
        ("GET", "/api/v1/requests?colour=red".into(), None, vec![], 400),
        ("GET", "/api/v1/requests?state=%FF%FE".into(), None, vec![], 400),
        // GET /api/v1/requests/{id}: unknown, huge and odd ids.
        ("GET", "/api/v1/requests/rq_nope".into(), None, vec![], 404),
        ("GET", format!("/api/v1/requests/{long_id}"), None, vec![], 404),
        ("GET", "/api/v1/requests/%27%20OR%201=1--".into(), None, vec![], 404),
        ("GET", "/api/v1/requests/%E8%AF%B7%E6%B1%82".into(), None, vec![], 404),
        ("GET", "/api/v1/requests/%00".into(), None, vec![], 404),
        ("GET", "/api/v1/requests/%FF%FE".into(), None, vec![], 400),
        // Unknown paths.
        ("GET", "/".into(), None, vec![], 404),
        ("GET", "/nope".into(), None, vec![], 404),
        ("GET", "/api/v2/requests".into(), None, vec![], 404),
        ("GET", format!("/api/v1/requests/{rid}/history/all"), None, vec![], 404),
        ("POST", "/api/v1/requests/rq_nope/teleport".into(), JSON, b"{}".to_vec(), 404),
        // Wrong methods on every route.
        ("POST", "/healthz".into(), None, vec![], 405),
        ("POST", "/readyz".into(), None, vec![], 405),
        ("POST", "/metrics".into(), None, vec![], 405),
        ("DELETE", "/metrics".into(), None, vec![], 405),
        ("POST", "/api/v1/requests".into(), JSON, b"{}".to_vec(), 405),
        ("DELETE", format!("/api/v1/requests/{rid}"), None, vec![], 405),
        ("GET", format!("/api/v1/requests/{rid}/ack"), None, vec![], 405),
        ("PUT", format!("/api/v1/requests/{rid}/close"), None, vec![], 405),
        ("GET", format!("/api/v1/requests/{rid}/cancel"), None, vec![], 405),
        ("GET", events.clone(), None, vec![], 405),
        // Operator actions on requests that do not exist, whatever the body.
        ("POST", "/api/v1/requests/rq_nope/ack".into(), None, vec![], 404),
        ("POST", "/api/v1/requests/rq_nope/close".into(), Some("text/plain"), b"please".to_vec(), 404),
        ("POST", "/api/v1/requests/rq_nope/cancel".into(), JSON, b"not json".to_vec(), 404),
        ("POST", format!("/api/v1/requests/{long_id}/ack"), None, vec![], 404),
        ("POST", "/api/v1/requests/%FF/close".into(), None, vec![], 400),
        // Backend callbacks: every way a body can be wrong.
        ("POST", "/api/v1/requests/rq_nope/events".into(), JSON, br#"{"state":"en_route"}"#.to_vec(), 404),
        ("POST", events.clone(), JSON, b"not json".to_vec(), 400),
        ("POST", events.clone(), JSON, vec![], 400),
        ("POST", events.clone(), JSON, vec![0xff, 0xfe, 0x00], 400),
        ("POST", events.clone(), Some("text/plain"), br#"{"state":"en_route"}"#.to_vec(), 415),
        ("POST", events.clone(), None, br#"{"state":"en_route"}"#.to_vec(), 415),
        ("POST", events.clone(), Some("application/x-www-form-urlencoded"), b"state=en_route".to_vec(), 415),
        // NOTE: serde also reads a struct from a JSON array in field order, so `["en_route"]`
        // is taken as a callback; only arrays that do not fit are refused.
        ("POST", events.clone(), JSON, b"[]".to_vec(), 400),
        ("POST", events.clone(), JSON, br#"[5]"#.to_vec(), 400),
        ("POST", events.clone(), JSON, b"{}".to_vec(), 400),
        ("POST", events.clone(), JSON, br#"{"state":"en_route","colour":"red"}"#.to_vec(), 400),
        ("POST", events.clone(), JSON, br#"{"state":"teleported"}"#.to_vec(), 400),
        ("POST", events.clone(), JSON, br#"{"state":"EN_ROUTE"}"#.to_vec(), 400),
        ("POST", events.clone(), JSON, br#"{"state":"received"}"#.to_vec(), 400),
        ("POST", events.clone(), JSON, br#"{"state":"escalated"}"#.to_vec(), 400),
        ("POST", events.clone(), JSON, br#"{"state":5}"#.to_vec(), 400),
        ("POST", events.clone(), JSON, br#"{"state":"en_route","eta_s":-5}"#.to_vec(), 400),
        ("POST", events.clone(), JSON, br#"{"state":"en_route","eta_s":"soon"}"#.to_vec(), 400),
        ("POST", events.clone(), JSON, br#"{"state":"en_route","eta_s":1e20}"#.to_vec(), 400),
        ("POST", events.clone(), JSON, br#"{"state":"en_route","eta_s":4294967296}"#.to_vec(), 400),
        ("POST", events.clone(), JSON, format!(r#"{{"state":"en_route","ref":"{}"}}"#, "x".repeat(200)).into_bytes(), 400),
        ("POST", events.clone(), JSON, big_body, 413),
    ];
    for (method, path, ct, body, want) in cases {
        let shown = if path.len() > 80 {
            format!("{}…({} bytes)", &path[..80], path.len())
        } else {
            path.clone()
        };
        let sent = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        // Each caller with the role its endpoint needs (tokens themselves are tested in
        // security.rs): backends call back on /events, operators use the rest.
        // A wrong method is asked as admin, who may call every route: the answer is then
        // about the method, not the role.
        let token = match (want, path.ends_with("/events")) {
            (405, _) => gw.admin_token.as_str(),
            (_, true) => cb_token.as_str(),
            _ => OPERATOR_TOKEN,
        };
        let (status, content_type, text) = http(&gw, Some(token), method, &path, ct, body).await?;
        assert_eq!(status, want, "{method} {shown} {ct:?} {sent:?}: {text}");
        assert!(
            content_type.starts_with("application/json"),
            "{method} {shown}: {status} with content type {content_type:?}: {text:?}"
        );
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {shown}: body is not JSON ({e}): {text:?}"));
        let error = v["error"].as_str().unwrap_or_default();
        assert!(
            !error.is_empty(),
            "{method} {shown}: no error message in {v}"
        );
    }

    // Nothing changed, and everything still works.
    let v = gw.request(&rid).await?;
    assert_eq!(v["state"], "escalated", "{v}");
    assert_eq!(
        history_kinds(&v),
        history_before,
        "no bad call left a trace in the history"
    );
    for path in [
        "/healthz",
        "/readyz",
        "/api/v1/requests?state=escalated&service=rescue&limit=1000&cancel_requested=false",
    ] {
        let (status, _) = gw.get(path).await?;
        assert_eq!(status, 200, "{path}");
    }
    let (status, _, text) = http(&gw, None, "GET", "/metrics", None, vec![]).await?;
    assert_eq!(status, 200);
    assert!(text.contains("yijian_press_rejected_total"));
    let (status, v) = gw
        .post(&format!("/api/v1/requests/{rid}/ack"), json!({}))
        .await?;
    assert_eq!(
        (status, v["state"].as_str()),
        (200, Some("acknowledged")),
        "{v}"
    );
    gw.stop().await;
    Ok(())
}
