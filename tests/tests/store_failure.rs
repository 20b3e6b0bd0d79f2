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
    gw.stop().await;
    Ok(())
}
