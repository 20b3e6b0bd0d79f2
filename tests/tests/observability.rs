//! What an operator sees of real presses: the `/metrics` scrape (complete, described, bounded,
//! and holding every metric the dashboard and alerts use), each request's latency breakdown,
//! and the logs (the press's ids on every line, never a secret).
//!
//! With `YIJIAN_CHECK_OUT=DIR` the scrape and the dashboard's queries (wrapped as recording
//! rules) are left in DIR for `dashboards/check.sh` to hand to promtool.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use yijian_device_sim::MockBackends;
use yijian_gateway::telemetry::{self, LogFormat};
use yijian_tests::*;

// ---------------------------------------------------------------------------------------------
// Helpers: captured logs, the scrape and its parts, the dashboards' files.

/// Every log line of this test binary (installed once, before any gateway starts).
fn logs() {
    capture_logs(LogFormat::Json);
}

fn log_text() -> String {
    captured_log_text()
}

async fn scrape(gw: &TestGateway) -> Result<String> {
    let r = gw.http.get(format!("{}/metrics", gw.base)).send().await?;
    assert_eq!(r.status().as_u16(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        ct.starts_with("text/plain; version=0.0.4"),
        "content type {ct}"
    );
    Ok(r.text().await?)
}

/// One sample line: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if key.is_empty() {
            return Ok(out);
        }
        if chars.next() != Some('=') || chars.next() != Some('"') {
            bail!("bad labels {s:?}");
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => value.push(chars.next().context("escape")?),
                Some('"') => break,
                Some(c) => value.push(c),
                None => bail!("unterminated label value in {s:?}"),
            }
        }
        out.insert(key.trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

/// The samples of a text-format scrape.
fn samples(text: &str) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').context("sample line")?;
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (
                n,
                parse_labels(rest.strip_suffix('}').context("closing brace")?)?,
            ),
            None => (series, BTreeMap::new()),
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().with_context(|| format!("value in {line}"))?,
        };
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// Sum of the samples called `name` whose labels include `want`.
fn value(s: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    s.iter()
        .filter(|x| {
            x.name == name
                && want
                    .iter()
                    .all(|(k, v)| x.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|x| x.value)
        .sum()
}

fn dashboards_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

fn read_dashboard(file: &str) -> Result<String> {
    let p = dashboards_dir().join(file);
    std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
}

/// Metrics only the release binary exports (its allocator's statistics).
const BINARY_ONLY: &[&str] = &["yijian_heap_allocated_bytes", "yijian_heap_resident_bytes"];

/// Every `yijian_*` name in a text (PromQL, YAML, JSON).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("yijian_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // Not the tail of a longer identifier (`x_yijian_...`), a bare prefix, or a Rust path
        // (`yijian_gateway::telemetry` in a RUST_LOG example).
        let name = &tail[..end];
        let longer = i > 0 && rest[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
        if !name.ends_with('_') && !longer && !tail[end..].starts_with("::") {
            out.insert(name.to_owned());
        }
        rest = &tail[end..];
    }
    out
}

/// Every panel of a dashboard, rows' nested panels included.
fn panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// A panel query made plain PromQL: Grafana's variables replaced by what they stand for.
fn plain_promql(expr: &str) -> Result<String> {
    let e = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("${instance}", ".*")
        .replace("$instance", ".*");
    if e.contains('$') {
        bail!("unknown Grafana variable in {expr}");
    }
    Ok(e)
}

// ---------------------------------------------------------------------------------------------
// The dashboard file itself.

#[test]
fn the_dashboard_is_current_grafana_on_the_datasource_variable() -> Result<()> {
    let dash: Value = serde_json::from_str(&read_dashboard("yijian-overview.json")?)
        .context("the dashboard is JSON")?;
    assert!(
        dash["schemaVersion"].as_u64().unwrap_or(0) >= 39,
        "schemaVersion {}",
        dash["schemaVersion"]
    );
    assert_eq!(dash["uid"], "yijian-overview");
    let vars = dash["templating"]["list"]
        .as_array()
        .context("templating.list")?;
    let ds = vars
        .iter()
        .find(|v| v["name"] == "datasource")
        .context("a `datasource` variable")?;
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let want = json!({"type": "prometheus", "uid": "${datasource}"});
    let mut queries = 0;
    for p in panels(&dash) {
        let title = p["title"].as_str().unwrap_or("?");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"], want,
            "panel {title:?} must use ${{datasource}}"
        );
        assert!(
            p["description"].as_str().is_some_and(|d| !d.is_empty()),
            "panel {title:?} says what it means"
        );
        let targets = p["targets"]
            .as_array()
            .with_context(|| format!("panel {title:?} has targets"))?;
        assert!(!targets.is_empty(), "panel {title:?} queries something");
        for t in targets {
            assert!(
                t["datasource"].is_null() || t["datasource"] == want,
                "a query of {title:?} names another datasource"
            );
            plain_promql(
                t["expr"]
                    .as_str()
                    .with_context(|| format!("{title:?}: expr"))?,
            )?;
            queries += 1;
        }
    }
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(
            v["datasource"], want,
            "variable {} must use ${{datasource}}",
            v["name"]
        );
    }
    // No datasource is ever pinned by uid: the only uid in the file is the variable.
    let text = read_dashboard("yijian-overview.json")?;
    for (i, _) in text.match_indices("\"uid\"") {
        let tail = &text[i..];
        assert!(
            tail.starts_with("\"uid\": \"${datasource}\"")
                || tail.starts_with("\"uid\": \"yijian-overview\""),
            "hard-coded uid: {}",
            &tail[..tail.len().min(60)]
        );
    }
    assert!(queries >= 20, "only {queries} queries");
    let titles: Vec<_> = panels(&dash)
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for want in [
        "gesture",
        "service",
        "Press → received",
        "Press → dispatched",
        "Dispatch attempts",
        "Circuit",
        "Escalations",
        "Open requests",
        "Devices connected",
        "Operator answer",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no panel about {want:?}: {titles:?}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The scrape after real presses.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_real_presses_is_complete_and_has_every_metric_the_dashboards_use(
) -> Result<()> {
    logs();
    let mock = MockBackends::start_local(MockOptions::default()).await?;
    mock.set("obs-rescue-a", Behaviour::Status(500, None));
    mock.set("obs-hospital", Behaviour::Status(503, None));
    let gw = TestGateway::start(|c| {
        for b in ["obs-rescue-a", "obs-rescue-b", "obs-taxi", "obs-hospital"] {
            backend(c, &mock, b);
        }
        route(c, "rescue", &["obs-rescue-a", "obs-rescue-b"], 2000, 20);
        route(c, "taxi", &["obs-taxi"], 2000, 20);
        route(c, "hospital", &["obs-hospital", "desk"], 500, 20);
        c.dispatch.breaker_failures = 2;
    })
    .await?;
    let before = samples(&scrape(&gw).await?)?;
    let mut dev = gw.device("obs-dev-1", "one-button").await?;

    // Rescue fails over from a backend answering 500 (whose circuit opens); taxi goes through;
    // hospital fails, its circuit opens and the desk gets it, where an operator takes it.
    let rescue = dev.press("main", Gesture::Single).await?;
    let heard = dev
        .wait_for(&rescue, FeedbackState::Dispatched, WAIT)
        .await?;
    let rescue_rid = heard[0].feedback.request.clone().context("request id")?;
    let taxi = dev.press("main", Gesture::Double).await?;
    dev.wait_for(&taxi, FeedbackState::Dispatched, WAIT).await?;
    let hospital = dev.press("main", Gesture::Triple).await?;
    let heard = dev
        .wait_for(&hospital, FeedbackState::Escalated, WAIT)
        .await?;
    let hospital_rid = heard[0].feedback.request.clone().context("request id")?;
    let (status, v) = gw
        .post(&format!("/api/v1/requests/{hospital_rid}/ack"), json!({}))
        .await?;
    assert_eq!(status, 200, "{v}");
    // A retransmission (from a second device: the first already has a taxi open, and a second
    // taxi press would join it as "pressed again"), a malformed press and a cancel.
    let mut dev2 = gw.device("obs-dev-2", "one-button").await?;
    let payload = serde_json::to_vec(
        &json!({"id": "obs-p-dup", "button": "main", "gesture": "double", "at": 1_764_324_000_123i64}),
    )?;
    dev2.press_payload("obs-p-dup", payload.clone()).await?;
    dev2.wait_for("obs-p-dup", FeedbackState::Received, WAIT)
        .await?;
    dev2.press_payload("obs-p-dup", payload).await?;
    dev2.wait_for("obs-p-dup", FeedbackState::Dispatched, WAIT)
        .await?;
    dev.press_payload(
        "obs-p-bad",
        br#"{"id":"obs-p-bad","button":"main","gesture":"tap","at":1764324000123}"#.to_vec(),
    )
    .await?;
    dev.wait_for("obs-p-bad", FeedbackState::Rejected, WAIT)
        .await?;
    let cancel = dev.press("main", Gesture::Long).await?;
    dev.wait_for(&cancel, FeedbackState::Cancelled, WAIT)
        .await?;
    // The desk sampler has run at least once since the gateway started, and the cancel press
    // is counted: the device hears `cancelled` from the change feed, which may run before
    // intake's responder counts the press (seen on a loaded machine).
    let cancels = [("gesture", "long"), ("outcome", "cancel")];
    let cancels_before = value(&before, "yijian_press_received_total", &cancels);
    let deadline = tokio::time::Instant::now() + WAIT;
    let text = loop {
        let t = scrape(&gw).await?;
        let counted =
            value(&samples(&t)?, "yijian_press_received_total", &cancels) > cancels_before;
        if t.contains("yijian_store_batch_size_bucket") && counted {
            break t;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for yijian_store_batch_size_bucket and the cancel press's count in /metrics"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let after = samples(&text)?;
    let delta =
        |name: &str, want: &[(&str, &str)]| value(&after, name, want) - value(&before, name, want);

    // Every family is described, typed and named with its unit.
    let mut help = BTreeMap::new();
    let mut kinds = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, h) = rest.split_once(' ').context("help text")?;
            help.insert(name.to_owned(), h.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, k) = rest.split_once(' ').context("type")?;
            kinds.insert(name.to_owned(), k.to_owned());
        }
    }
    for s in &after {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| {
                s.name
                    .strip_suffix(suf)
                    .filter(|f| kinds.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(&s.name);
        assert!(
            family.starts_with("yijian_"),
            "{family} is not a yijian metric"
        );
        assert!(
            help.get(family).is_some_and(|h| h.len() > 10),
            "{family} has no HELP"
        );
        let kind = kinds
            .get(family)
            .with_context(|| format!("{family} has no TYPE"))?;
        match kind.as_str() {
            "counter" => assert!(
                family.ends_with("_total"),
                "counter {family} must end in _total"
            ),
            "histogram" => assert!(
                family.ends_with("_seconds") || family.ends_with("_size"),
                "histogram {family} must name its unit"
            ),
            _ => {}
        }
    }
    // Histograms are real Prometheus histograms, latency buckets from 0.5 ms to 60 s.
    for (family, kind) in &kinds {
        if kind != "histogram" {
            continue;
        }
        let les: BTreeSet<&str> = after
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
            .filter_map(|s| s.labels.get("le").map(String::as_str))
            .collect();
        assert!(les.contains("+Inf"), "{family} has no +Inf bucket");
        if family.ends_with("_seconds") && family != telemetry::OPERATOR_ANSWER_SECONDS {
            assert!(
                les.contains("0.0005") && les.contains("60"),
                "{family} buckets: {les:?}"
            );
        }
    }
    assert!(
        value(
            &after,
            "yijian_operator_answer_seconds_bucket",
            &[("le", "180")]
        ) >= 1.0,
        "a 180 s bucket for the 99% target"
    );
    // Bounded labels: no device, press or request id anywhere in the scrape.
    for id in ["obs-dev-1", "obs-p-", &rescue_rid, &hospital_rid, "rq_"] {
        assert!(!text.contains(id), "the scrape names {id}");
    }

    // What happened is counted where it happened, with the right labels.
    assert_eq!(
        delta(
            "yijian_dispatch_attempts_total",
            &[("backend", "obs-rescue-a"), ("result", "http_500")]
        ),
        2.0
    );
    assert_eq!(
        delta(
            "yijian_dispatch_attempts_total",
            &[("backend", "obs-rescue-b"), ("result", "accepted")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "yijian_dispatch_attempt_seconds_count",
            &[("backend", "obs-hospital")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &after,
            "yijian_backend_circuit_open",
            &[("backend", "obs-hospital")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "yijian_backend_circuit_open",
            &[("backend", "obs-taxi")]
        ),
        0.0
    );
    assert!(
        delta(
            "yijian_escalations_total",
            &[("service", "hospital"), ("reason", "failover")]
        ) >= 1.0
    );
    assert!(
        delta(
            "yijian_requests_created_total",
            &[("service", "rescue"), ("priority", "emergency")]
        ) >= 1.0
    );
    assert!(
        delta(
            "yijian_requests_created_total",
            &[("service", "taxi"), ("priority", "routine")]
        ) >= 2.0
    );
    assert!(
        delta(
            "yijian_press_received_total",
            &[("gesture", "double"), ("outcome", "duplicate")]
        ) >= 1.0
    );
    assert!(
        delta(
            "yijian_press_received_total",
            &[("gesture", "long"), ("outcome", "cancel")]
        ) >= 1.0
    );
    assert!(delta("yijian_press_duplicates_total", &[]) >= 1.0);
    assert!(
        delta(
            "yijian_press_rejected_total",
            &[("reason", "invalid_gesture")]
        ) >= 1.0
    );
    assert!(
        delta(
            "yijian_press_to_received_seconds_count",
            &[("service", "taxi")]
        ) >= 1.0
    );
    assert!(
        delta(
            "yijian_press_to_dispatched_seconds_count",
            &[("service", "rescue")]
        ) >= 1.0
    );
    assert!(delta("yijian_intake_to_received_seconds_count", &[]) >= 4.0);
    assert!(delta("yijian_operator_answer_seconds_count", &[]) >= 1.0);
    assert!(delta("yijian_feedback_sent_total", &[("state", "rejected")]) >= 1.0);
    assert!(delta("yijian_store_commit_seconds_count", &[]) >= 1.0);
    assert_eq!(
        value(
            &after,
            "yijian_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // Every metric a panel, an alert or an alert test uses is one this scrape shows.
    // (A histogram counts by its family name and its `_bucket`, `_sum` and `_count` series.)
    // The heap gauges come from the release binary's allocator (jemalloc), which an in-process
    // gateway does not have: tests/tests/storm.rs checks them on the binary.
    let exported: BTreeSet<&str> = after
        .iter()
        .map(|s| s.name.as_str())
        .chain(kinds.keys().map(String::as_str))
        .chain(BINARY_ONLY.iter().copied())
        .collect();
    for file in [
        "yijian-overview.json",
        "alerts.yml",
        "alerts_test.yml",
        "README.md",
    ] {
        let used = metric_names(&read_dashboard(file)?);
        assert!(!used.is_empty(), "{file} uses no metric");
        let missing: Vec<_> = used
            .iter()
            .filter(|n| !exported.contains(n.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics the gateway does not export: {missing:?}"
        );
    }

    if let Some(dir) = std::env::var_os("YIJIAN_CHECK_OUT") {
        write_check_files(&PathBuf::from(dir), &text)?;
    }
    gw.stop().await;
    Ok(())
}

/// For `dashboards/check.sh`: the scrape (for `promtool check metrics`) and every panel query
/// as a recording rule (for `promtool check rules`).
fn write_check_files(dir: &std::path::Path, scrape: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("scrape.prom"), scrape)?;
    let dash: Value = serde_json::from_str(&read_dashboard("yijian-overview.json")?)?;
    let mut rules = String::from("# Generated by tests/tests/observability.rs: every query of dashboards/yijian-overview.json.\ngroups:\n  - name: yijian-overview-panels\n    rules:\n");
    for p in panels(&dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = plain_promql(t["expr"].as_str().context("expr")?)?;
            let record = format!(
                "dashboard:panel_{}_{}",
                p["id"],
                t["refId"].as_str().unwrap_or("A")
            );
            rules.push_str(&format!(
                "      - record: {record}\n        expr: {}\n",
                serde_json::to_string(&expr)?
            ));
        }
    }
    std::fs::write(dir.join("dashboard-queries.rules.yml"), rules)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// One request's latency breakdown.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_of_a_press_is_timed_in_its_request_view() -> Result<()> {
    logs();
    let mock = MockBackends::start_local(MockOptions::default()).await?;
    mock.set("st-a", Behaviour::Status(500, None));
    let gw = TestGateway::start(|c| {
        backend(c, &mock, "st-a");
        backend(c, &mock, "st-b");
        route(c, "rescue", &["st-a", "st-b"], 2000, 20);
    })
    .await?;
    let mut dev = gw.device("st-dev-1", "one-button").await?;
    let press = dev.press("main", Gesture::Single).await?;
    let heard = dev
        .wait_for(&press, FeedbackState::Dispatched, WAIT)
        .await?;
    let rid = heard[0].feedback.request.clone().context("request id")?;
    let (status, v) = gw.get(&format!("/api/v1/requests/{rid}")).await?;
    assert_eq!(status, 200);
    let stages = v["stages"]
        .as_object()
        .with_context(|| format!("no stages in {v}"))?;
    let names: Vec<&str> = stages.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "press",
            "intake",
            "journaled",
            "received_sent",
            "attempt_1",
            "attempt_2",
            "attempt_3",
            "attempt_4",
            "dispatched"
        ],
        "{v}"
    );
    // They read as a breakdown: times in path order, counted from the press.
    let ms: Vec<i64> = stages
        .values()
        .map(|s| s["since_press_ms"].as_i64().expect("since_press_ms"))
        .collect();
    assert_eq!(ms[0], 0);
    assert!(
        ms.windows(2).all(|w| w[0] <= w[1]),
        "stages out of order: {stages:?}"
    );
    assert_eq!(stages["press"]["at"], v["press"]["at"]);
    assert_eq!(stages["intake"]["at"], v["created_at"]);
    assert_eq!(stages["dispatched"]["at"], v["dispatched_at"]);
    assert_eq!(stages["attempt_1"]["backend"], "st-a");
    assert_eq!(stages["attempt_1"]["result"], "http_500");
    assert_eq!(stages["attempt_4"]["backend"], "st-b");
    assert_eq!(stages["attempt_4"]["result"], "accepted");
    assert!(stages["attempt_4"]["elapsed_ms"].is_u64());
    // The press was answered before any backend was tried (speed is the benchmarks' to
    // measure; here the order is what counts).
    assert!(
        stages["received_sent"]["since_press_ms"].as_i64()
            <= stages["attempt_1"]["since_press_ms"].as_i64(),
        "received after the first attempt: {stages:?}"
    );
    // The history shows the received stage too; the list view stays lean.
    let kinds: Vec<_> = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds[..2],
        ["created".to_owned(), "received".to_owned()],
        "{kinds:?}"
    );
    let (_, list) = gw.get("/api/v1/requests?device=st-dev-1").await?;
    assert!(list["requests"][0].get("stages").is_none());
    gw.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Logs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_line_about_a_press_carries_its_ids_and_none_a_secret() -> Result<()> {
    logs();
    let gw = TestGateway::start(|_| {}).await?;
    let secret = gw.add_device("log-dev-1", "one-button")?;
    let mut dev = yijian_device_sim::SimDevice::connect(yijian_device_sim::DeviceConfig::new(
        "log-dev-1",
        &secret,
        gw.mqtt,
    ))
    .await?;
    let press = dev.press("main", Gesture::Single).await?;
    let heard = dev.wait_for(&press, FeedbackState::Escalated, WAIT).await?;
    let rid = heard[0].feedback.request.clone().context("request id")?;
    let (status, _) = gw
        .post(&format!("/api/v1/requests/{rid}/ack"), json!({}))
        .await?;
    assert_eq!(status, 200);

    // A second CONNECT on an open connection, naming the gateway's own client: refused before
    // the broker sees it (it would switch the topic ACL and rumqttd would log the packet).
    // Another device, so that no session takeover closes the connection for another reason.
    let secret2 = gw.add_device("log-dev-2", "one-button")?;
    let refused_before = value(
        &samples(&scrape(&gw).await?)?,
        "yijian_mqtt_refused_total",
        &[("reason", "second_connect")],
    );
    let mut s = tokio::net::TcpStream::connect(gw.mqtt).await?;
    s.write_all(&connect_packet("log-dev-2", &secret2)).await?;
    let mut ack = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut ack)).await??;
    assert_eq!(ack, [0x20, 2, 0, 0], "first CONNECT accepted");
    s.write_all(&connect_packet("yijian.gateway.press", &secret2))
        .await?;
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(WAIT, s.read(&mut buf)).await?;
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "the connection must be closed, got {closed:?}"
    );
    let refused_after = value(
        &samples(&scrape(&gw).await?)?,
        "yijian_mqtt_refused_total",
        &[("reason", "second_connect")],
    );
    assert_eq!(refused_after - refused_before, 1.0);
    dev.disconnect().await;
    let (base, mqtt) = (gw.base.clone(), gw.mqtt.to_string());
    gw.stop().await;

    let text = log_text();
    assert!(
        !text.contains(&secret) && !text.contains(&secret2),
        "a device secret reached the logs"
    );
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| l.contains(&rid))
        .map(|l| serde_json::from_str(l).expect("JSON log line"))
        .collect();
    let messages: Vec<&str> = lines.iter().filter_map(|l| l["message"].as_str()).collect();
    for want in [
        "request created",
        "request escalated to the desk",
        "operator action",
    ] {
        assert!(messages.contains(&want), "no {want:?} line: {messages:?}");
    }
    for l in &lines {
        let id = |k: &str| {
            l[k].as_str()
                .or_else(|| l["span"][k].as_str())
                .map(str::to_owned)
        };
        assert_eq!(id("request_id").as_deref(), Some(rid.as_str()), "{l}");
        assert_eq!(id("device_id").as_deref(), Some("log-dev-1"), "{l}");
        assert_eq!(id("press_id").as_deref(), Some(press.as_str()), "{l}");
    }
    // The startup summary says where this gateway listens, and where each service goes.
    let summary: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    assert!(
        summary.iter().any(|l| l["message"] == "listening"
            && l["http"] == base.as_str()
            && l["mqtt"] == mqtt.as_str()),
        "no listening line for {base}"
    );
    for want in [
        "journal",
        "rules loaded",
        "route",
        "backend",
        "yijian gateway ready",
    ] {
        assert!(
            summary
                .iter()
                .any(|l| l["message"].as_str().is_some_and(|m| m.starts_with(want))),
            "no startup line {want:?}"
        );
    }
    assert!(summary
        .iter()
        .any(|l| l["message"] == "route" && l["service"] == "rescue" && l["backends"] == "desk"));
    Ok(())
}

/// An MQTT 3.1.1 CONNECT with client id = username = `client_id`.
fn connect_packet(client_id: &str, password: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0b1100_0010, 0, 60];
    for s in [client_id, client_id, password] {
        body.extend((s.len() as u16).to_be_bytes());
        body.extend(s.as_bytes());
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
}
