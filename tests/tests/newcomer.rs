//! A newcomer's first hour (issue 14), end to end: a refused device is told why and the log
//! says so (without flooding), the desk works from the shell, the metric table matches a real
//! scrape, and the shutdown log tells the truth.

use anyhow::{bail, Context, Result};
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet};
use serde_json::json;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use yijian_gateway::telemetry::LogFormat;
use yijian_tests::*;

fn logs() {
    capture_logs(LogFormat::Human);
}

/// What the broker answered a CONNECT: its CONNACK code, or the error that ended the try.
async fn connack(
    addr: SocketAddr,
    client_id: &str,
    user: &str,
    pass: &str,
) -> Result<ConnectReturnCode> {
    let mut o = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_credentials(user, pass);
    let (_client, mut events) = AsyncClient::new(o, 8);
    let first = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => return Ok(a.code),
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => return Ok(code),
                Err(e) => bail!("no CONNACK, the connection ended: {e}"),
            }
        }
    };
    tokio::time::timeout(WAIT, first)
        .await
        .context("no answer")?
}

/// The captured log lines at `level` that contain every one of `needles`.
fn log_lines(level: &str, needles: &[&str]) -> Vec<String> {
    captured_log_text()
        .lines()
        .filter(|l| l.contains(level) && needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_device_hears_the_connack_code_and_the_log_says_why_once() -> Result<()> {
    logs();
    let gw = TestGateway::start(|_| {}).await?;
    let secret = gw.add_device("nc-auth-1", "one-button")?;
    let other = gw.add_device("nc-auth-2", "one-button")?;
    gw.add_device("nc-revoked", "one-button")?;
    yijian_gateway::lifecycle::cli_revoke(&gw.config, "nc-revoked", &mut Vec::new())?;
    let m = gw.mqtt;
    let wrong = "0".repeat(32);
    use ConnectReturnCode::*;
    let cases = [
        (
            "wrong secret",
            "nc-auth-1",
            "nc-auth-1",
            wrong.as_str(),
            BadUserNamePassword,
            "bad_credentials",
        ),
        (
            "unknown device",
            "nc-nobody",
            "nc-nobody",
            secret.as_str(),
            BadUserNamePassword,
            "unknown_device",
        ),
        (
            "client id is not the username",
            "nc-auth-1",
            "nc-auth-2",
            other.as_str(),
            NotAuthorized,
            "client_id_mismatch",
        ),
        (
            "revoked",
            "nc-revoked",
            "nc-revoked",
            secret.as_str(),
            NotAuthorized,
            "revoked",
        ),
    ];
    for (what, id, user, pass, want, reason) in cases {
        let got = connack(m, id, user, pass)
            .await
            .with_context(|| what.to_owned())?;
        assert_eq!(got, want, "{what}");
        let lines = eventually(&format!("a WARN line for {what}"), || {
            let l = log_lines("WARN", &["MQTT connection refused", id, reason]);
            (!l.is_empty()).then_some(l)
        })
        .await?;
        assert!(
            !lines[0].contains(pass),
            "no secret in the log: {}",
            lines[0]
        );
    }
    assert_eq!(
        connack(m, "nc-auth-1", "nc-auth-1", &secret).await?,
        Success
    );

    // A device reconnecting in a loop with a wrong secret: refused every time, logged once in
    // the window (the next line says how many were held back; telemetry::limit's tests).
    for _ in 0..50 {
        assert_eq!(
            connack(m, "nc-auth-2", "nc-auth-2", &wrong).await?,
            BadUserNamePassword
        );
    }
    let lines = log_lines(
        "WARN",
        &["MQTT connection refused", "nc-auth-2", "bad_credentials"],
    );
    assert_eq!(lines.len(), 1, "one line for 50 refusals: {lines:#?}");
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_press_is_a_warning_naming_device_press_and_reason() -> Result<()> {
    logs();
    let gw = TestGateway::start(|_| {}).await?;
    let mut dev = gw.device("nc-bad-press", "one-button").await?;
    dev.press_payload(
        "nc-p-tap",
        br#"{"id":"nc-p-tap","button":"main","gesture":"tap","at":1764324000123}"#.to_vec(),
    )
    .await?;
    dev.wait_for("nc-p-tap", FeedbackState::Rejected, WAIT)
        .await?;
    let lines = log_lines(
        "WARN",
        &["press rejected", "nc-bad-press", "nc-p-tap", "gesture"],
    );
    assert_eq!(lines.len(), 1, "{lines:#?}");
    // An ordinary goodbye right after a press is not an error.
    let p = dev.press("main", Gesture::Single).await?;
    dev.wait_for(&p, FeedbackState::Received, WAIT).await?;
    dev.disconnect().await;
    for i in 0..20 {
        let mut d = gw.device(&format!("nc-bye-{i}"), "one-button").await?;
        d.press("main", Gesture::Double).await?;
        d.disconnect().await;
    }
    let mut last = gw.device("nc-bye-last", "one-button").await?;
    let p = last.press("main", Gesture::Single).await?;
    last.wait_for(&p, FeedbackState::Escalated, WAIT).await?;
    let errors = log_lines("ERROR", &["already gone"]);
    assert!(errors.is_empty(), "{errors:#?}");
    gw.stop().await;
    Ok(())
}

/// `yijian-gateway --http-listen ADDR ARGS...` (the release binary), with `token`.
fn cli(addr: SocketAddr, token: &str, args: &[&str]) -> Result<String> {
    let bin = child::gateway_binary()?;
    let out = Command::new(bin)
        .arg("--http-listen")
        .arg(addr.to_string())
        .args(args)
        .env("YIJIAN_TOKEN", token)
        .env_remove("YIJIAN_CONFIG")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("{args:?}: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_works_the_desk_from_the_shell() -> Result<()> {
    let gw = TestGateway::start(|_| {}).await?;
    let mut dev = gw.device("nc-desk-1", "one-button").await?;
    let p = dev.press("main", Gesture::Single).await?;
    let heard = dev.wait_for(&p, FeedbackState::Escalated, WAIT).await?;
    let rid = heard[0].feedback.request.clone().context("request id")?;
    let addr = gw.gw.http_addr;

    let list = tokio::task::block_in_place(|| {
        cli(
            addr,
            OPERATOR_TOKEN,
            &[
                "requests",
                "list",
                "--state",
                "escalated",
                "--service",
                "rescue",
            ],
        )
    })?;
    let line = list
        .lines()
        .find(|l| l.starts_with(&rid))
        .with_context(|| format!("{rid} in:\n{list}"))?;
    assert!(
        line.contains("escalated") && line.contains("nc-desk-1"),
        "{line}"
    );
    let shown =
        tokio::task::block_in_place(|| cli(addr, OPERATOR_TOKEN, &["requests", "show", &rid]))?;
    assert!(
        shown.contains("escalated") && shown.contains("history"),
        "{shown}"
    );

    let acked = tokio::task::block_in_place(|| {
        cli(
            addr,
            OPERATOR_TOKEN,
            &["requests", "ack", &rid, "--note", "calling her daughter"],
        )
    })?;
    assert_eq!(acked, format!("request {rid} is acknowledged\n"));
    let closed = tokio::task::block_in_place(|| {
        cli(
            addr,
            OPERATOR_TOKEN,
            &["requests", "close", &rid, "--note", "she is fine"],
        )
    })?;
    assert_eq!(closed, format!("request {rid} is closed\n"));
    // The gateway committed it: the device hears it from the change feed.
    dev.wait_for(&p, FeedbackState::Closed, WAIT).await?;
    let v = gw.request(&rid).await?;
    let notes: Vec<(String, String)> = v["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["detail"]["operator"].as_str()?.to_owned(),
                e["detail"]["note"].as_str()?.to_owned(),
            ))
        })
        .collect();
    assert_eq!(
        notes,
        [
            (
                "test-operator".to_owned(),
                "calling her daughter".to_owned()
            ),
            ("test-operator".to_owned(), "she is fine".to_owned())
        ]
    );
    // A second close is refused with the API's reason.
    let again =
        tokio::task::block_in_place(|| cli(addr, OPERATOR_TOKEN, &["requests", "close", &rid]));
    let e = again.expect_err("already closed").to_string();
    assert!(e.contains("request is already closed (HTTP 409)"), "{e}");
    let bad =
        tokio::task::block_in_place(|| cli(addr, "not-a-token-0123456789", &["requests", "list"]));
    assert!(bad
        .expect_err("a bad token")
        .to_string()
        .contains("the gateway refused the token"));
    gw.stop().await;
    Ok(())
}

/// Every metric in dashboards/README.md's table.
fn metric_table() -> Result<BTreeSet<String>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/README.md");
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("| `yijian_"))
        .filter_map(|l| l.split('`').next())
        .map(|n| format!("yijian_{n}"))
        .collect())
}

/// Every metric name the gateway's source declares (names.rs and security.rs).
fn declared_metrics() -> Result<BTreeSet<String>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/src/telemetry");
    let mut out = BTreeSet::new();
    for f in ["names.rs", "security.rs"] {
        let text = std::fs::read_to_string(dir.join(f))?;
        for part in text.split("\"yijian_").skip(1) {
            if let Some(name) = part.split('"').next() {
                out.insert(format!("yijian_{name}"));
            }
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metric_table_lists_every_metric_a_real_scrape_shows() -> Result<()> {
    let gw = TestGateway::start(|_| {}).await?;
    let mut dev = gw.device("nc-metrics-1", "one-button").await?;
    let p = dev.press("main", Gesture::Single).await?;
    dev.wait_for(&p, FeedbackState::Escalated, WAIT).await?;
    // Events behind the metrics the table missed: a bad API token, a rules reload.
    let (status, _) = gw
        .call(
            "GET",
            "/api/v1/requests",
            Some("wrong-token-0123456789"),
            None,
        )
        .await?;
    assert_eq!(status, 401);
    gw.gw.reload_rules("test").await;
    let text = gw
        .http
        .get(format!("{}/metrics", gw.base))
        .send()
        .await?
        .text()
        .await?;
    let table = metric_table()?;
    let mut scraped = BTreeSet::new();
    for l in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        scraped.insert(l.split(' ').next().unwrap_or_default().to_owned());
    }
    assert!(scraped.contains("yijian_api_auth_total"), "{scraped:?}");
    let missing: Vec<_> = scraped.difference(&table).collect();
    assert!(
        missing.is_empty(),
        "scraped but not in dashboards/README.md's table: {missing:?}"
    );
    let undeclared: Vec<_> = declared_metrics()?
        .into_iter()
        .filter(|m| !table.contains(m))
        .collect();
    assert!(
        undeclared.is_empty(),
        "declared in telemetry but not in the table: {undeclared:?}"
    );
    let stale: Vec<_> = table
        .iter()
        .filter(|m| !declared_metrics().is_ok_and(|d| d.contains(*m)))
        .collect();
    assert!(
        stale.is_empty(),
        "in the table but exported by nothing: {stale:?}"
    );
    let _ = json!({});
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_log_claims_no_dispatches_in_flight_when_there_are_none() -> Result<()> {
    logs();
    let gw = TestGateway::start(|_| {}).await?;
    let mut dev = gw.device("nc-stop-1", "one-button").await?;
    let p = dev.press("main", Gesture::Single).await?;
    dev.wait_for(&p, FeedbackState::Escalated, WAIT).await?;
    // The dispatch's own last word: after it, nothing of it is in flight.
    eventually("the dispatch's escalation warning", || {
        let l = log_lines("WARN", &["request escalated to the desk", "nc-stop-1"]);
        (!l.is_empty()).then_some(())
    })
    .await?;
    gw.stop().await;
    let lines = log_lines("INFO", &["letting dispatches in flight finish"]);
    assert!(lines.is_empty(), "nothing was in flight: {lines:#?}");
    Ok(())
}
