//! A journal that cannot commit (a full disk, a read-only mount; injected here with
//! `Store::inject_commit_failure`). What a user checks: the device hears nothing — no
//! `received` for a press that is not on disk — and keeps retransmitting; `/readyz` says the
//! store is down; the failure is counted in `/metrics` and logged; once the journal works
//! again the next retransmission is served: one request, `received` then its final state, and
//! `/readyz` is 200 again.

mod common;

use anyhow::{ensure, Context, Result};
use common::*;
use std::time::Duration;
use yijian_device_sim::{DeviceConfig, MockBackends, SimDevice};
use yijian_gateway::telemetry::LogFormat;
use yijian_tests::*;

const PRESS_RECEIVED: &str = "yijian_press_received_total";
const STORE_ERRORS: &str = "yijian_store_errors_total";

/// Every log line of this test binary (installed once, before any gateway starts).
fn logs() {
    capture_logs(LogFormat::Human);
}

fn log_text() -> String {
    captured_log_text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_that_cannot_commit_answers_nothing_until_it_can() -> Result<()> {
    logs();
    let mock = MockBackends::start_local(MockOptions::default()).await?;
    let gw = TestGateway::start(|c| {
        backend(c, &mock, "rescue");
        route(c, "rescue", &["rescue"], 2000, 60);
    })
    .await?;
    let secret = gw.add_device("sf-1", "one-button")?;
    let mut cfg = DeviceConfig::new("sf-1", secret, gw.mqtt);
    // The contract's 5 s, shortened: each retransmission is another failed write to observe.
    cfg.retransmit = Duration::from_millis(300);
    let mut dev = SimDevice::connect(cfg).await?;
    let (status, _) = gw.call("GET", "/readyz", None, None).await?;
    ensure!(status == 200, "/readyz before the failure: {status}");

    let before = Metrics::scrape(&gw).await?;
    gw.gw.store.inject_commit_failure(true);
    let press = dev.press("main", Gesture::Single).await?;
    let failed = [("gesture", "single"), ("outcome", "store_error")];
    // The press and at least one retransmission of it reached the journal, and failed.
    let during = metrics_until(&gw, "two failed journal writes of the press", |m| {
        before.delta(m, PRESS_RECEIVED, &failed) >= 2.0
    })
    .await?;
    ensure!(
        before.delta(&during, STORE_ERRORS, &[("op", "commit")]) >= 2.0,
        "failed commits not counted"
    );
    ensure!(
        before.delta(
            &during,
            PRESS_RECEIVED,
            &[("gesture", "single"), ("outcome", "request")]
        ) == 0.0
    );

    // Nothing was answered: the device still owes itself the press, and heard nothing at all.
    if let Ok(h) = dev.next_feedback(Duration::ZERO).await {
        anyhow::bail!(
            "the device heard {:?} while the journal was failing",
            h.feedback
        );
    }
    ensure!(
        dev.unanswered() == 1,
        "the device must keep retransmitting its press"
    );
    ensure!(
        mock.hits().is_empty(),
        "a press that is not journaled reached a backend: {:?}",
        mock.hits()
    );
    // Nothing half-written: no trace of the press in any table of the journal.
    ensure!(
        journal_rows(&gw, "sf-1")? == [0, 0, 0, 0],
        "a failed commit left rows behind (presses, requests, events, outbox): {:?}",
        journal_rows(&gw, "sf-1")?
    );
    let (status, ready) = gw.call("GET", "/readyz", None, None).await?;
    ensure!(
        status == 503 && ready["store"] == false && ready["broker"] == true,
        "/readyz while failing: {status} {ready}"
    );
    let log = log_text();
    ensure!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("journal write failed")
            && l.contains("commit")),
        "the failed commit is not logged as an error:\n{log}"
    );
    ensure!(
        log.contains("press not journaled; the device will retransmit"),
        "the unanswered press is not logged:\n{log}"
    );

    // The disk is back: the next retransmission is journaled and answered.
    gw.gw.store.inject_commit_failure(false);
    let heard = dev
        .wait_for(&press, FeedbackState::Dispatched, WAIT)
        .await
        .context("the press after the journal recovered")?;
    let states: Vec<_> = heard.iter().map(|h| h.feedback.state).collect();
    ensure!(
        states[0] == FeedbackState::Received,
        "the first answer must be `received`: {states:?}"
    );
    let rid = heard[0]
        .feedback
        .request
        .clone()
        .context("received names the request")?;
    ensure!(
        heard
            .iter()
            .all(|h| h.feedback.request.as_deref() == Some(rid.as_str())),
        "answers name other requests: {states:?}"
    );
    let taken = mock.received();
    ensure!(
        taken.len() == 1 && taken[0].key == rid && taken[0].press_id == press,
        "the backends took {taken:?}"
    );
    ensure!(
        mock.hits().len() == 1,
        "the backend was asked {} times",
        mock.hits().len()
    );
    let (status, list) = gw.get("/api/v1/requests?device=sf-1").await?;
    ensure!(
        status == 200 && list["requests"].as_array().map(Vec::len) == Some(1),
        "{list}"
    );
    let (status, ready) = gw.call("GET", "/readyz", None, None).await?;
    ensure!(
        status == 200,
        "/readyz after the recovery: {status} {ready}"
    );
    // Once, whole: one press row, one request with its history, and its outbox row gone.
    gw.gw.store.flush().await;
    let [presses, requests, events, outbox] = journal_rows(&gw, "sf-1")?;
    ensure!(
        presses == 1 && requests == 1 && events >= 3 && outbox == 0,
        "after the recovery: {presses} presses, {requests} requests, {events} events, {outbox} in the outbox"
    );
    gw.stop().await;
    Ok(())
}

/// Rows the journal holds for `device`: [presses, requests, request events, outbox], read on a
/// connection of the test's own (a committed transaction is all another reader can see).
fn journal_rows(gw: &TestGateway, device: &str) -> Result<[i64; 4]> {
    let conn = rusqlite::Connection::open_with_flags(
        gw.config.db_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mut out = [0; 4];
    for (i, sql) in [
        "SELECT count(*) FROM presses WHERE device_id = ?1",
        "SELECT count(*) FROM requests WHERE device_id = ?1",
        "SELECT count(*) FROM request_events e JOIN requests r USING (request_id) WHERE r.device_id = ?1",
        "SELECT count(*) FROM outbox o JOIN requests r USING (request_id) WHERE r.device_id = ?1",
    ]
    .into_iter()
    .enumerate()
    {
        out[i] = conn.query_row(sql, [device], |r| r.get(0))?;
    }
    Ok(out)
}

/// DESIGN §2, guarantee 1: `received` is sent only after the press is durably journaled. The
/// press's commit is held open (`Store::hold_commits`): its statements have run in the writer's
/// transaction, nothing is committed. For as long as that lasts the device hears nothing and
/// no reader sees the request; `received` comes only after the commit, which came only after
/// the hold was lifted (ordering, read from the request's own stages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_is_sent_only_after_the_press_is_committed() -> Result<()> {
    let gw = TestGateway::start(|_| {}).await?;
    let mut dev = gw.device("hold-1", "one-button").await?;
    gw.gw.store.hold_commits(true);
    let press = dev.press("main", Gesture::Single).await?;
    eventually("the press held in the writer, before its commit", || {
        (gw.gw.store.held_presses() >= 1).then_some(())
    })
    .await?;
    if let Ok(h) = dev.next_feedback(Duration::from_millis(500)).await {
        anyhow::bail!(
            "the device heard {:?} while its press's commit was held",
            h.feedback
        );
    }
    ensure!(
        dev.unanswered() == 1,
        "the device still owes itself the press"
    );
    let (status, list) = gw.get("/api/v1/requests?device=hold-1").await?;
    ensure!(
        status == 200 && list["requests"].as_array().is_some_and(Vec::is_empty),
        "an uncommitted request is visible: {list}"
    );
    ensure!(
        journal_rows(&gw, "hold-1")? == [0, 0, 0, 0],
        "uncommitted rows visible to a reader"
    );
    ensure!(
        gw.gw.store.held_presses() >= 1,
        "the commit is still held when the device has heard nothing"
    );

    let released_at = jiff::Timestamp::now().as_millisecond();
    gw.gw.store.hold_commits(false);
    let heard = dev.wait_for(&press, FeedbackState::Received, WAIT).await?;
    ensure!(heard.len() == 1, "received came first: {heard:?}");
    let rid = heard[0]
        .feedback
        .request
        .clone()
        .context("received names its request")?;
    let v = gw
        .wait_request(&rid, "the received stage", |v| {
            v["stages"]["received_sent"]["at"].is_string()
        })
        .await?;
    let stage = |name: &str| epoch_ms(v["stages"][name]["at"].as_str().unwrap_or_default());
    let (journaled, received) = (stage("journaled")?, stage("received_sent")?);
    ensure!(
        released_at <= journaled && journaled <= received,
        "hold lifted at {released_at}, committed at {journaled}, received sent at {received}"
    );
    gw.stop().await;
    Ok(())
}

/// The same guarantee for the broker's PUBACK (DESIGN §5: a PUBACK means "in the journal"):
/// while a press's commit is held, its QoS 1 PUBLISH is not acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_press_is_not_pubacked_before_its_commit() -> Result<()> {
    let gw = TestGateway::start(|_| {}).await?;
    let secret = gw.add_device("hold-2", "one-button")?;
    let (client, mut events) = raw_device(&gw, "hold-2", &secret, 4096).await?;
    gw.gw.store.flush().await;
    gw.gw.store.hold_commits(true);
    let body = serde_json::json!({"id": "hold-2-p1", "button": "main", "gesture": "single", "at": jiff::Timestamp::now().as_millisecond()});
    client
        .publish(
            yijian_wire::topic::topic("hold-2", yijian_wire::topic::Kind::Press),
            rumqttc::QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&body)?,
        )
        .await?;
    let mut acked = false;
    let held = tokio::time::timeout(WAIT, async {
        loop {
            if gw.gw.store.held_presses() >= 1 {
                return anyhow::Ok(());
            }
            tokio::select! {
                e = events.poll() => {
                    if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = e? {
                        acked = true;
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    })
    .await;
    held.context("the press never reached the writer")??;
    // Give a PUBACK every chance to arrive while the commit is held.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = events.poll().await {
                acked = true;
                return;
            }
        }
    })
    .await;
    ensure!(!acked, "the press was PUBACKed while its commit was held");
    gw.gw.store.hold_commits(false);
    tokio::time::timeout(WAIT, async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = events.poll().await? {
                return anyhow::Ok(());
            }
        }
    })
    .await
    .context("no PUBACK after the commit")??;
    gw.stop().await;
    Ok(())
}
