//! Helpers shared by the fault tests (bad_input.rs, backend_faults.rs): reading `/metrics`,
//! raw MQTT clients that do what the simulated device never would, and raw HTTP.
//!
//! NOTE: metrics are process-global and every test in one binary shares them: assert deltas
//! (after − before), and hold [`SERIAL`] where a delta must be exact.

#![allow(dead_code)] // each test binary uses its own part of this module

use anyhow::{anyhow, Context, Result};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet};
use std::collections::BTreeMap;
use std::time::Duration;
use yijian_tests::{TestGateway, WAIT};

/// Tests that assert exact metric deltas take this first, so no other test of the same
/// binary moves the same counters meanwhile.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The labels of one sample.
type Labels = BTreeMap<String, String>;

/// One scrape of `/metrics`: sample name → every (labels, value) of it.
#[derive(Debug, Clone, Default)]
pub struct Metrics(BTreeMap<String, Vec<(Labels, f64)>>);

impl Metrics {
    /// GET /metrics and parse the Prometheus text format.
    pub async fn scrape(gw: &TestGateway) -> Result<Metrics> {
        let r = gw.http.get(format!("{}/metrics", gw.base)).send().await?;
        anyhow::ensure!(r.status() == 200, "/metrics answered {}", r.status());
        Ok(Metrics::parse(&r.text().await?))
    }

    /// Parse the Prometheus text exposition format (the subset the exporter writes).
    pub fn parse(text: &str) -> Metrics {
        let mut m = Metrics::default();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (series, value) = match line.rsplit_once(' ') {
                Some(p) => p,
                None => continue,
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            m.0.entry(name.to_owned())
                .or_default()
                .push((labels, value));
        }
        m
    }

    /// The sample of `name` with exactly `labels`; 0 when absent (a counter never touched).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0
            .get(name)
            .and_then(|s| s.iter().find(|(l, _)| *l == want))
            .map(|(_, v)| *v)
            .unwrap_or(0.0)
    }

    /// Whether a sample of `name` with exactly `labels` is present at all.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0
            .get(name)
            .is_some_and(|s| s.iter().any(|(l, _)| *l == want))
    }

    /// `after − self` for one sample.
    pub fn delta(&self, after: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
        after.value(name, labels) - self.value(name, labels)
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        if chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(o) => value.push(o),
                    None => break,
                },
                '"' => break,
                o => value.push(o),
            }
        }
        out.insert(key.trim().trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

/// Poll `/metrics` until `probe` holds for a scrape (or fail after [`WAIT`] naming `what`).
pub async fn metrics_until(
    gw: &TestGateway,
    what: &str,
    probe: impl Fn(&Metrics) -> bool,
) -> Result<Metrics> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = Metrics::scrape(gw).await?;
        if probe(&m) {
            return Ok(m);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(anyhow!("gave up waiting for {what} in /metrics"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A bare MQTT client authenticated as device `id`: no retransmission, no reconnect, clean
/// session, and packets up to `max_packet` bytes — what a broken device might do.
pub async fn raw_device(
    gw: &TestGateway,
    id: &str,
    secret: &str,
    max_packet: usize,
) -> Result<(AsyncClient, EventLoop)> {
    let mut o = MqttOptions::new(id, gw.mqtt.ip().to_string(), gw.mqtt.port());
    o.set_credentials(id, secret);
    o.set_clean_session(true);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(max_packet, max_packet);
    let (client, mut events) = AsyncClient::new(o, 16);
    let connected = tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(anyhow!("raw client {id} could not connect: {e}")),
            }
        }
    })
    .await
    .context("raw client CONNACK")?;
    connected?;
    Ok((client, events))
}

/// Drive `events` until the broker closes the connection; returns the error seen. Fails if
/// the connection is still up after [`WAIT`], or if a PUBACK/SUBACK shows the packet was taken.
pub async fn wait_closed(events: &mut EventLoop) -> Result<String> {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    return Err(anyhow!("the broker acknowledged the publish"))
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    return Err(anyhow!("the broker acknowledged the subscribe"))
                }
                Ok(_) => {}
                Err(e) => return Ok(e.to_string()),
            }
        }
    })
    .await
    .context("the broker did not close the connection")?
}

/// A raw HTTP exchange with the API: (status, content type, body text).
pub async fn http(
    gw: &TestGateway,
    token: Option<&str>,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Result<(u16, String, String)> {
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let mut rb = gw
        .http
        .request(method, format!("{}{}", gw.base, path))
        .body(body);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    if let Some(ct) = content_type {
        rb = rb.header(reqwest::header::CONTENT_TYPE, ct);
    }
    let r = rb.send().await?;
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Ok((status, ct, r.text().await?))
}

/// Epoch milliseconds of an RFC 3339 timestamp as the API writes them.
pub fn epoch_ms(rfc3339: &str) -> Result<i64> {
    let ts: jiff::Timestamp = rfc3339
        .parse()
        .with_context(|| format!("timestamp {rfc3339:?}"))?;
    Ok(ts.as_millisecond())
}
