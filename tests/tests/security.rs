//! Attacks on the gateway, end to end (SECURITY.md lists them with their results): devices
//! stepping outside their own topics, bad credentials, revoked and rotated devices, TLS with
//! and without client certificates, the HTTP API without a token or with the wrong role, a
//! stuck button, a flooding device, oversized messages.

use anyhow::{anyhow, Result};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;
use yijian_device_sim::{DeviceConfig, SimDevice};
use yijian_gateway::config::TlsSettings;
use yijian_gateway::lifecycle;
use yijian_tests::*;
use yijian_wire::topic::{self, Kind};

/// Options of a bare MQTT client (clean session, no reconnect).
fn raw_opts(
    addr: SocketAddr,
    client_id: &str,
    creds: Option<(&str, &str)>,
    will: Option<LastWill>,
) -> MqttOptions {
    let mut o = mqtt_options(addr, client_id, creds, None);
    if let Some(w) = will {
        o.set_last_will(w);
    }
    o
}

/// Connect a bare MQTT client and report whether the broker accepted it.
async fn connect_raw(
    addr: SocketAddr,
    client_id: &str,
    creds: Option<(&str, &str)>,
    will: Option<LastWill>,
) -> Result<(), String> {
    let (_client, mut events) = AsyncClient::new(raw_opts(addr, client_id, creds, will), 8);
    let first = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    tokio::time::timeout(WAIT, first)
        .await
        .map_err(|_| "no answer".to_owned())?
}

/// Assert that the broker refuses this connection (a CONNACK refusal code, or closing first).
async fn refused(
    what: &str,
    addr: SocketAddr,
    client_id: &str,
    creds: Option<(&str, &str)>,
    will: Option<LastWill>,
) -> Result<Refusal> {
    assert_refused(what, raw_opts(addr, client_id, creds, will)).await
}

fn press_json(id: &str) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"id": id, "button": "main", "gesture": "single", "at": 1_764_324_000_123i64}),
    )
    .unwrap()
}

async fn all_requests(gw: &TestGateway) -> Result<Vec<Value>> {
    let (status, v) = gw.get("/api/v1/requests?limit=1000").await?;
    anyhow::ensure!(status == 200, "list: {status} {v}");
    Ok(v["requests"].as_array().cloned().unwrap_or_default())
}

/// A scrape of `/metrics` with the metrics token.
async fn metrics_text(gw: &TestGateway) -> Result<String> {
    Ok(gw
        .http
        .get(format!("{}/metrics", gw.base))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await?
        .text()
        .await?)
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_publishing_outside_its_own_topics_is_disconnected_and_nothing_is_dispatched(
) -> Result<()> {
    let gw = TestGateway::start(|_| {}).await?;
    let mut victim = gw.device("iso-b", "one-button").await?;
    let forged = [
        "yijian/v1/devices/iso-b/press", // another device's press: would book its taxi
        "yijian/v1/devices/iso-b/status", // another device's status: would mark it offline
        "yijian/v1/devices/iso-a0/feedback", // its own feedback: only the gateway speaks there
        "yijian/v1/devices/iso-b/feedback", // another device's feedback: a false "help is coming"
        "yijian/v1/other",
    ];
    for (i, t) in forged.iter().enumerate() {
        let attacker = gw.device(&format!("iso-a{i}"), "one-button").await?;
        attacker
            .publish_to(t, press_json(&format!("forged-{i}")))
            .await?;
        assert!(
            attacker.wait_disconnected(WAIT).await,
            "publishing to {t} must close the connection"
        );
    }
    // The victim's own press still works, and it is the only request there is.
    let p = victim.press("main", yijian_wire::Gesture::Single).await?;
    let heard = victim.wait_for(&p, FeedbackState::Escalated, WAIT).await?;
    assert!(
        heard
            .iter()
            .all(|h| h.feedback.press.as_deref() == Some(p.as_str())),
        "the victim heard only its own press"
    );
    let reqs = all_requests(&gw).await?;
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0]["device_id"], "iso-b");
    assert_eq!(reqs[0]["press"]["id"], json!(p));
    let (_, d) = gw
        .call("GET", "/api/v1/devices/iso-b", Some(&gw.admin_token), None)
        .await?;
    assert_eq!(
        d["online"], true,
        "the forged status did not mark the victim offline: {d}"
    );
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_subscribing_beyond_its_own_feedback_is_disconnected() -> Result<()> {
    let gw = TestGateway::start(|_| {}).await?;
    for (i, filter) in [
        "yijian/v1/devices/+/feedback",
        "#",
        "yijian/v1/devices/sub-x/feedback",
        "yijian/v1/devices/+/press",
        "yijian/#",
    ]
    .iter()
    .enumerate()
    {
        let d = gw.device(&format!("sub-{i}"), "one-button").await?;
        d.subscribe_to(filter).await?;
        assert!(
            d.wait_disconnected(WAIT).await,
            "subscribing to {filter} must close the connection"
        );
    }
    // Its own feedback topic is fine (the simulator subscribes to it at every connect).
    let own = gw.device("sub-ok", "one-button").await?;
    own.subscribe_to(&topic::topic("sub-ok", Kind::Feedback))
        .await?;
    assert!(
        !own.wait_disconnected(Duration::from_millis(300)).await,
        "its own feedback topic is allowed"
    );
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_refused_at_connect() -> Result<()> {
    let gw = TestGateway::start(|_| {}).await?;
    let secret = gw.add_device("auth-1", "one-button")?;
    let other = gw.add_device("auth-2", "one-button")?;
    let m = gw.mqtt;
    let zeros = "0".repeat(32);
    let cases: Vec<(&str, MqttOptions)> = vec![
        (
            "wrong password",
            raw_opts(m, "auth-1", Some(("auth-1", &zeros)), None),
        ),
        (
            "unknown device",
            raw_opts(m, "nobody", Some(("nobody", &secret)), None),
        ),
        (
            "empty password",
            raw_opts(m, "auth-1", Some(("auth-1", "")), None),
        ),
        ("no credentials", raw_opts(m, "auth-1", None, None)),
        (
            "client id != username",
            raw_opts(m, "auth-1", Some(("auth-2", &other)), None),
        ),
        (
            "another device's secret",
            raw_opts(m, "auth-1", Some(("auth-1", &other)), None),
        ),
        (
            "gateway account with a device secret",
            raw_opts(
                m,
                "yijian.gateway.press",
                Some(("yijian.gateway.press", &secret)),
                None,
            ),
        ),
        (
            "evictor account with a device secret",
            raw_opts(m, "auth-1", Some(("yijian.gateway.evict", &secret)), None),
        ),
        (
            "invalid client id",
            raw_opts(m, "a/b", Some(("a/b", &secret)), None),
        ),
        (
            "last will on another device's topic",
            raw_opts(
                m,
                "auth-1",
                Some(("auth-1", &secret)),
                Some(LastWill::new(
                    topic::topic("auth-2", Kind::Status),
                    r#"{"online":false}"#,
                    QoS::AtLeastOnce,
                    true,
                )),
            ),
        ),
    ];
    for (what, opts) in cases {
        assert_refused(what, opts).await?;
    }
    connect_raw(m, "auth-1", Some(("auth-1", &secret)), None)
        .await
        .map_err(|e| anyhow!("the right secret connects: {e}"))?;
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_disconnected_and_refused() -> Result<()> {
    let gw = TestGateway::start(|_| {}).await?;
    let secret = gw.add_device("rev-1", "one-button")?;
    let mut dev = SimDevice::connect(DeviceConfig::new("rev-1", &secret, gw.mqtt)).await?;
    let p = dev.press("main", yijian_wire::Gesture::Single).await?;
    dev.wait_for(&p, FeedbackState::Escalated, WAIT).await?;

    // What `yijian-gateway devices revoke rev-1` does, against the running gateway's journal.
    let mut out = Vec::new();
    lifecycle::cli_revoke(&gw.config, "rev-1", &mut out)?;
    assert!(
        dev.wait_disconnected(WAIT).await,
        "the live connection is dropped"
    );
    drop(dev);
    refused(
        "the revoked device coming back",
        gw.mqtt,
        "rev-1",
        Some(("rev-1", &secret)),
        None,
    )
    .await?;
    assert!(
        lifecycle::cli_revoke(&gw.config, "rev-1", &mut out).is_err(),
        "revoking twice says so"
    );
    assert!(
        lifecycle::rotate(&gw.config.db_path(), "rev-1").is_err(),
        "a revoked device gets no new secret"
    );
    let (_, d) = gw
        .call("GET", "/api/v1/devices/rev-1", Some(&gw.admin_token), None)
        .await?;
    assert!(d["revoked_at"].is_i64(), "{d}");
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_replaces_the_old_one_at_once() -> Result<()> {
    let gw = TestGateway::start(|_| {}).await?;
    let old = gw.add_device("rot-1", "one-button")?;
    let dev = SimDevice::connect(DeviceConfig::new("rot-1", &old, gw.mqtt)).await?;
    let mut out = Vec::new();
    lifecycle::cli_rotate(&gw.config, "rot-1", true, &mut out)?;
    let new = serde_json::from_slice::<Value>(&out)?["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new, old);
    assert!(
        dev.wait_disconnected(WAIT).await,
        "the connection made with the old secret is dropped"
    );
    drop(dev);
    refused(
        "the old secret",
        gw.mqtt,
        "rot-1",
        Some(("rot-1", &old)),
        None,
    )
    .await?;
    let mut dev = SimDevice::connect(DeviceConfig::new("rot-1", &new, gw.mqtt)).await?;
    let p = dev.press("main", yijian_wire::Gesture::Single).await?;
    dev.wait_for(&p, FeedbackState::Escalated, WAIT).await?;
    // The admin API rotates the same way.
    let (status, v) = gw
        .call(
            "POST",
            "/api/v1/devices/rot-1/rotate",
            Some(&gw.admin_token),
            None,
        )
        .await?;
    assert_eq!(status, 200, "{v}");
    assert!(dev.wait_disconnected(WAIT).await);
    let newer = v["secret"].as_str().unwrap();
    refused(
        "the secret the admin API replaced",
        gw.mqtt,
        "rot-1",
        Some(("rot-1", &new)),
        None,
    )
    .await?;
    connect_raw(gw.mqtt, "rot-1", Some(("rot-1", newer)), None)
        .await
        .map_err(|e| anyhow!("newest secret: {e}"))?;
    gw.stop().await;
    Ok(())
}

/// A CA, a broker certificate for 127.0.0.1, and device certificates, written as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new() -> Result<Pki> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "Yijian test devices CA");
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = p.self_signed(&ca_key)?;
        let pki = Pki {
            dir: tempfile::tempdir()?,
            ca,
            ca_key,
        };
        std::fs::write(pki.path("ca.pem"), pki.ca.pem())?;
        let key = rcgen::KeyPair::generate()?;
        let mut s =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        s.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = s.signed_by(&key, &pki.ca, &pki.ca_key)?;
        std::fs::write(pki.path("server.pem"), cert.pem())?;
        std::fs::write(pki.path("server.key"), key.serialize_pem())?;
        Ok(pki)
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// A device certificate with subject CN `cn`: signed by the CA, or self-signed.
    fn device(&self, cn: &str, by_ca: bool) -> Result<(Vec<u8>, Vec<u8>)> {
        let key = rcgen::KeyPair::generate()?;
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = if by_ca {
            p.signed_by(&key, &self.ca, &self.ca_key)?
        } else {
            p.self_signed(&key)?
        };
        Ok((cert.pem().into_bytes(), key.serialize_pem().into_bytes()))
    }

    fn settings(&self, require_client_cert: bool) -> TlsSettings {
        TlsSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: Some(self.path("ca.pem")),
            require_client_cert,
            plaintext_devices: false,
        }
    }

    fn client(
        &self,
        cert: Option<&(Vec<u8>, Vec<u8>)>,
    ) -> Result<std::sync::Arc<rustls::ClientConfig>> {
        let ca = std::fs::read(self.path("ca.pem"))?;
        yijian_device_sim::tls_client_config(&ca, cert.map(|(c, k)| (c.as_slice(), k.as_slice())))
            .map_err(|e| anyhow!(e))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_and_without_a_valid_client_certificate() -> Result<()> {
    let pki = Pki::new()?;
    let gw = TestGateway::start(|c| c.mqtt.tls = Some(pki.settings(true))).await?;
    let tls_addr = gw.gw.mqtt_tls_addr.expect("TLS listener");
    let secret = gw.add_device("tls-1", "one-button")?;
    let own = pki.device("tls-1", true)?;

    // The device's own certificate and secret: connected, and its press is served.
    let mut dev = SimDevice::connect(
        DeviceConfig::new("tls-1", &secret, tls_addr).with_tls(pki.client(Some(&own))?),
    )
    .await?;
    let p = dev.press("main", yijian_wire::Gesture::Single).await?;
    dev.wait_for(&p, FeedbackState::Escalated, WAIT).await?;
    dev.disconnect().await;

    let refused = [
        ("no client certificate", pki.client(None)?),
        (
            "another device's certificate",
            pki.client(Some(&pki.device("tls-2", true)?))?,
        ),
        (
            "a certificate the CA did not sign",
            pki.client(Some(&pki.device("tls-1", false)?))?,
        ),
    ];
    let creds = Some(("tls-1", secret.as_str()));
    for (what, tls) in refused {
        assert_refused(what, mqtt_options(tls_addr, "tls-1", creds, Some(tls))).await?;
    }
    // The right certificate does not replace the secret.
    let zeros = "0".repeat(32);
    assert_refused(
        "a wrong secret with a valid certificate",
        mqtt_options(
            tls_addr,
            "tls-1",
            Some(("tls-1", &zeros)),
            Some(pki.client(Some(&own))?),
        ),
    )
    .await?;
    // TLS-only: the plain listener no longer takes devices.
    assert_refused("plaintext", mqtt_options(gw.mqtt, "tls-1", creds, None)).await?;
    // A TLS client that never speaks does not block others: the handshake runs per connection.
    let _silent = tokio::net::TcpStream::connect(tls_addr).await?;
    let dev = SimDevice::connect(
        DeviceConfig::new("tls-1", &secret, tls_addr).with_tls(pki.client(Some(&own))?),
    )
    .await?;
    dev.disconnect().await;
    gw.stop().await;

    // With client certificates optional, a device without one connects on its secret; one
    // that presents a certificate must present its own.
    let gw = TestGateway::start(|c| c.mqtt.tls = Some(pki.settings(false))).await?;
    let tls_addr = gw.gw.mqtt_tls_addr.expect("TLS listener");
    let secret = gw.add_device("tls-1", "one-button")?;
    SimDevice::connect(DeviceConfig::new("tls-1", &secret, tls_addr).with_tls(pki.client(None)?))
        .await?
        .disconnect()
        .await;
    assert_refused(
        "another device's certificate, optional certificates",
        mqtt_options(
            tls_addr,
            "tls-1",
            Some(("tls-1", &secret)),
            Some(pki.client(Some(&pki.device("tls-2", true)?))?),
        ),
    )
    .await?;
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_endpoint_checks_the_token_and_its_role() -> Result<()> {
    let mock = yijian_device_sim::MockBackends::start_local(MockOptions::default()).await?;
    let gw = TestGateway::start(|c| {
        backend(c, &mock, "taxi");
        backend(c, &mock, "rescue-centre");
        route(c, "taxi", &["taxi"], 2000, 20);
        c.api.metrics_open = false;
    })
    .await?;
    let mut dev = gw.device("api-1", "one-button").await?;
    gw.add_device("api-2", "one-button")?;
    let taxi_press = dev.press("main", yijian_wire::Gesture::Double).await?;
    let taxi_rid = dev
        .wait_for(&taxi_press, FeedbackState::Dispatched, WAIT)
        .await?[0]
        .feedback
        .request
        .clone()
        .unwrap();
    let desk_press = dev.press("main", yijian_wire::Gesture::Single).await?;
    let desk_rid = dev
        .wait_for(&desk_press, FeedbackState::Escalated, WAIT)
        .await?[0]
        .feedback
        .request
        .clone()
        .unwrap();

    // A third request, for the operator's cancel (hospital goes to the desk).
    let cancel_press = dev.press("main", yijian_wire::Gesture::Triple).await?;
    let cancel_rid = dev
        .wait_for(&cancel_press, FeedbackState::Escalated, WAIT)
        .await?[0]
        .feedback
        .request
        .clone()
        .unwrap();

    let admin = gw.admin_token.clone();
    let taxi = backend_token("taxi");
    let rescue = backend_token("rescue-centre");
    let en_route = json!({"state": "en_route", "eta_s": 300});
    let auth_counts = |text: &str| {
        ["missing", "invalid", "forbidden"]
            .map(|r| metric(text, &format!("yijian_api_auth_total{{result=\"{r}\"}}")))
    };
    let before = auth_counts(&metrics_text(&gw).await?);
    // Every route the router serves, with who may call it: (method, route, a path of it, body,
    // a token of the wrong role — `None`: open to anyone —, the right token, expected status).
    type Case<'a> = (
        &'a str,
        &'a str,
        String,
        Option<Value>,
        Option<&'a str>,
        Option<&'a str>,
        u16,
    );
    let cases: Vec<Case> = vec![
        ("GET", "/healthz", "/healthz".into(), None, None, None, 200),
        ("GET", "/readyz", "/readyz".into(), None, None, None, 200),
        (
            "GET",
            "/api/v1/requests",
            "/api/v1/requests".into(),
            None,
            Some(&taxi),
            Some(OPERATOR_TOKEN),
            200,
        ),
        (
            "GET",
            "/api/v1/requests/:id",
            format!("/api/v1/requests/{desk_rid}"),
            None,
            Some(METRICS_TOKEN),
            Some(OPERATOR_TOKEN),
            200,
        ),
        (
            "POST",
            "/api/v1/requests/:id/ack",
            format!("/api/v1/requests/{desk_rid}/ack"),
            Some(json!({})),
            Some(&taxi),
            Some(OPERATOR_TOKEN),
            200,
        ),
        (
            "POST",
            "/api/v1/requests/:id/close",
            format!("/api/v1/requests/{desk_rid}/close"),
            Some(json!({})),
            Some(METRICS_TOKEN),
            Some(&admin),
            200,
        ),
        (
            "POST",
            "/api/v1/requests/:id/events",
            format!("/api/v1/requests/{taxi_rid}/events"),
            Some(en_route.clone()),
            Some(OPERATOR_TOKEN),
            Some(&taxi),
            200,
        ),
        (
            "POST",
            "/api/v1/requests/:id/cancel",
            format!("/api/v1/requests/{cancel_rid}/cancel"),
            Some(json!({})),
            Some(&taxi),
            Some(OPERATOR_TOKEN),
            200,
        ),
        (
            "GET",
            "/api/v1/devices",
            "/api/v1/devices".into(),
            None,
            Some(OPERATOR_TOKEN),
            Some(&admin),
            200,
        ),
        (
            "GET",
            "/api/v1/devices/:id",
            "/api/v1/devices/api-1".into(),
            None,
            Some(&taxi),
            Some(&admin),
            200,
        ),
        (
            "GET",
            "/api/v1/config",
            "/api/v1/config".into(),
            None,
            Some(OPERATOR_TOKEN),
            Some(&admin),
            200,
        ),
        (
            "POST",
            "/api/v1/devices/:id/rotate",
            "/api/v1/devices/api-2/rotate".into(),
            None,
            Some(OPERATOR_TOKEN),
            Some(&admin),
            200,
        ),
        (
            "POST",
            "/api/v1/devices/:id/revoke",
            "/api/v1/devices/api-2/revoke".into(),
            None,
            Some(METRICS_TOKEN),
            Some(&admin),
            200,
        ),
        (
            "GET",
            "/metrics",
            "/metrics".into(),
            None,
            Some(&taxi),
            Some(METRICS_TOKEN),
            200,
        ),
    ];
    // By construction: the table is the router's own list of routes, no more and no less, so
    // a new endpoint fails here until it is given its expected status per role.
    let served: HashSet<(&str, &str)> = yijian_gateway::api::routes().collect();
    let tabled: HashSet<(&str, &str)> = cases.iter().map(|c| (c.0, c.1)).collect();
    let untested: Vec<_> = served.difference(&tabled).collect();
    assert!(
        untested.is_empty(),
        "routes the role table leaves out: {untested:?}"
    );
    let unserved: Vec<_> = tabled.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "the role table names routes the router does not serve: {unserved:?}"
    );
    let mut refusals = 0.0;
    for (method, _, path, body, wrong, right, want) in &cases {
        let Some(wrong) = wrong else {
            // Open: no token needed.
            let (s, v) = gw.call(method, path, None, body.clone()).await?;
            assert_eq!(s, *want, "{method} {path} without a token: {v}");
            continue;
        };
        refusals += 1.0;
        let (s, v) = gw.call(method, path, None, body.clone()).await?;
        assert_eq!(s, 401, "{method} {path} without a token: {v}");
        let (s, _) = gw
            .call(method, path, Some("not-a-token-at-all"), body.clone())
            .await?;
        assert_eq!(s, 401, "{method} {path} with an unknown token");
        let (s, v) = gw.call(method, path, Some(wrong), body.clone()).await?;
        assert_eq!(s, 403, "{method} {path} with the wrong role: {v}");
        let (s, v) = gw.call(method, path, *right, body.clone()).await?;
        assert_eq!(s, *want, "{method} {path} with the right role: {v}");
    }
    let (_, r) = gw.get(&format!("/api/v1/requests/{cancel_rid}")).await?;
    assert_eq!(r["state"], "cancelled", "the operator's cancel was applied");
    // Each refusal counted once, by kind (no other test of this binary calls the API with a
    // wrong or missing token).
    let after = auth_counts(&metrics_text(&gw).await?);
    assert_eq!(
        [0, 1, 2].map(|i| after[i] - before[i]),
        [refusals; 3],
        "yijian_api_auth_total{{result=missing|invalid|forbidden}} moved by"
    );
    // A backend may only report on requests dispatched to it.
    let (s, v) = gw
        .call(
            "POST",
            &format!("/api/v1/requests/{taxi_rid}/events"),
            Some(&rescue),
            Some(en_route.clone()),
        )
        .await?;
    assert_eq!(s, 403, "another backend's request: {v}");
    let (s, _) = gw
        .call(
            "POST",
            &format!("/api/v1/requests/{desk_rid}/events"),
            Some(&taxi),
            Some(en_route.clone()),
        )
        .await?;
    assert_eq!(s, 403, "a desk request is no backend's");
    // Admin config leaves token digests out.
    let (_, cfg) = gw.call("GET", "/api/v1/config", Some(&admin), None).await?;
    assert!(
        cfg["api"]["tokens"]
            .as_array()
            .is_some_and(|t| !t.is_empty() && t.iter().all(|t| t.get("sha256").is_none())),
        "{cfg}"
    );
    // Bodies over 64 KB are refused before anything else happens.
    let big = json!({"state": "arrived", "ref": "x".repeat(70 * 1024)});
    let (s, _) = gw
        .call(
            "POST",
            &format!("/api/v1/requests/{taxi_rid}/events"),
            Some(&taxi),
            Some(big),
        )
        .await?;
    assert_eq!(s, 413);
    let (_, r) = gw.get(&format!("/api/v1/requests/{taxi_rid}")).await?;
    assert_eq!(r["state"], "en_route");
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_presses_in_two_seconds_are_one_request_pressed_again_nineteen_times() -> Result<()>
{
    let mock = yijian_device_sim::MockBackends::start_local(MockOptions::default()).await?;
    let gw = TestGateway::start(|c| {
        backend(c, &mock, "taxi");
        route(c, "taxi", &["taxi"], 2000, 20);
    })
    .await?;
    let mut dev = gw.device("stuck-1", "one-button").await?;
    let first = dev.press("main", yijian_wire::Gesture::Double).await?;
    let rid = dev
        .wait_for(&first, FeedbackState::Dispatched, WAIT)
        .await?[0]
        .feedback
        .request
        .clone()
        .unwrap();
    // A stuck button: 19 more, one every 100 ms.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut again = Vec::new();
    for _ in 0..19 {
        tick.tick().await;
        again.push(dev.press("main", yijian_wire::Gesture::Double).await?);
    }
    // The pace is the test's own (a 100 ms tick); what matters to the gateway is that they
    // all fall inside the 30-minute attach window, which a slow machine cannot stretch them past.
    // Every press is answered with the open request's state.
    let mut answered: HashMap<String, Option<String>> = HashMap::new();
    while again.iter().any(|p| !answered.contains_key(p)) {
        let h = dev.next_feedback(WAIT).await?;
        if let Some(p) = h.feedback.press.clone() {
            if again.contains(&p) {
                assert_eq!(h.feedback.state, FeedbackState::Dispatched, "{h:?}");
                answered.insert(p, h.feedback.request.clone());
            }
        }
    }
    let requests: HashSet<_> = answered.values().cloned().collect();
    assert_eq!(requests, HashSet::from([Some(rid.clone())]));
    let (_, list) = gw.get("/api/v1/requests?device=stuck-1").await?;
    assert_eq!(
        list["requests"].as_array().unwrap().len(),
        1,
        "one request: {list}"
    );
    let (_, r) = gw.get(&format!("/api/v1/requests/{rid}")).await?;
    let events: Vec<_> = r["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "pressed_again")
        .collect();
    assert_eq!(events.len(), 19, "{r}");
    let counts: Vec<_> = events
        .iter()
        .map(|e| e["detail"]["count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, (2..=20).collect::<Vec<u64>>());
    // One booking at the backend, and an update per repeated press.
    assert_eq!(mock.received_by("taxi").len(), 1);
    let updates = mock
        .wait_updates(19, WAIT)
        .await
        .ok_or_else(|| anyhow!("updates: {:?}", mock.updates()))?;
    assert_eq!(updates.len(), 19);
    for u in &updates {
        assert_eq!(u.backend, "taxi");
        assert_eq!(u.body["request_id"], json!(rid));
        assert_eq!(u.body["event"], "pressed_again");
        assert!(
            u.key.starts_with(&format!("{rid}/")),
            "idempotency key {}",
            u.key
        );
    }
    // After the request is closed, the next press books anew.
    let (s, _) = gw
        .callback(&rid, "taxi", json!({"state": "closed"}))
        .await?;
    assert_eq!(s, 200);
    let next = dev.press("main", yijian_wire::Gesture::Double).await?;
    let heard = dev.wait_for(&next, FeedbackState::Dispatched, WAIT).await?;
    assert_ne!(heard[0].feedback.request.as_ref(), Some(&rid));
    assert_eq!(mock.received_by("taxi").len(), 2);
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_device_is_disconnected_and_others_are_unaffected() -> Result<()> {
    let gw = TestGateway::start(|_| {}).await?;
    let flooder = gw.device("flood-1", "one-button").await?;
    let mut calm = gw.device("calm-1", "one-button").await?;
    let status = serde_json::to_vec(&json!({"online": true, "battery": 50}))?;
    for _ in 0..200 {
        flooder.publish_raw(Kind::Status, status.clone()).await?;
    }
    assert!(
        flooder.wait_disconnected(WAIT).await,
        "the flood closes the connection"
    );
    let p = calm.press("main", yijian_wire::Gesture::Single).await?;
    calm.wait_for(&p, FeedbackState::Escalated, WAIT).await?;
    assert_eq!(
        calm.stats().disconnects,
        0,
        "the calm device never lost its connection"
    );
    let text = gw
        .http
        .get(format!("{}/metrics", gw.base))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metric(&text, "yijian_devices_flood_disconnects_total") >= 1.0,
        "{text}"
    );
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_mqtt_packet_closes_the_connection() -> Result<()> {
    let gw = TestGateway::start(|_| {}).await?;
    let secret = gw.add_device("big-1", "one-button")?;
    // A bare client that lets itself send more than the broker takes.
    let mut o = MqttOptions::new("big-1", gw.mqtt.ip().to_string(), gw.mqtt.port());
    o.set_credentials("big-1", &secret);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(o, 8);
    let mut payload = press_json("big-1-p1");
    payload.extend(std::iter::repeat_n(
        b' ',
        gw.config.mqtt.max_payload_size + 1,
    ));
    client
        .publish(
            topic::topic("big-1", Kind::Press),
            QoS::AtLeastOnce,
            false,
            payload,
        )
        .await?;
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return false,
                Ok(_) => {}
                Err(_) => return true,
            }
        }
    })
    .await?;
    assert!(
        closed,
        "a packet over max_payload_size closes the connection, unacknowledged"
    );
    drop(events);
    assert!(all_requests(&gw).await?.is_empty());
    // The device reconnects and is served normally.
    let mut dev = SimDevice::connect(DeviceConfig::new("big-1", &secret, gw.mqtt)).await?;
    let p = dev.press("main", yijian_wire::Gesture::Single).await?;
    dev.wait_for(&p, FeedbackState::Escalated, WAIT).await?;
    gw.stop().await;
    Ok(())
}
