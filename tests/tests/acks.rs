//! A PUBACK means "in the journal" (DESIGN §2, §5), for any QoS 1 client, not only ours: the
//! embedded broker withholds a press's PUBACK until intake has journaled it (rumqttd patch 14).
//! What a user checks, with plain MQTT clients that — like any MQTT client — forget a message
//! once it is acknowledged and never retransmit it: a press whose journal cannot commit gets no
//! PUBACK until it can, and then exactly one request; and across a SIGKILL of the gateway under
//! load, every press a client saw acknowledged is a request after the restart.

mod common;

use anyhow::{ensure, Context, Result};
use common::*;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use serde_json::json;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use yijian_tests::child::ChildGateway;
use yijian_tests::*;
use yijian_wire::topic::{self, Kind};

const PRESS_RECEIVED: &str = "yijian_press_received_total";

fn press_json(id: &str) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"id": id, "button": "main", "gesture": "single", "at": 1_764_324_000_123i64}),
    )
    .expect("a press serializes")
}

/// Which publishes of one client were acknowledged: the event loop is driven in a task, each
/// outgoing PUBLISH is matched (in order) to the press id queued for it, each PUBACK to its
/// packet id.
#[derive(Default)]
struct Acks {
    /// Press ids queued for publishing, in order, not yet seen going out.
    queued: VecDeque<String>,
    /// Packet id → press id of publishes sent and not yet acknowledged.
    sent: HashMap<u16, String>,
    /// Press ids acknowledged, in the order their PUBACKs came.
    acked: Vec<String>,
    /// Why the connection ended, if it did.
    closed: Option<String>,
}

fn drive(mut events: EventLoop, acks: Arc<Mutex<Acks>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let ev = events.poll().await;
            let mut a = acks.lock().expect("acks lock");
            match ev {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(id) = a.queued.pop_front() {
                        a.sent.insert(pkid, id);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(id) = a.sent.remove(&ack.pkid) {
                        a.acked.push(id);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    a.closed = Some(e.to_string());
                    return;
                }
            }
        }
    })
}

/// A plain QoS 1 client as device `id`: clean session, no retransmission of its own.
async fn plain_client(
    addr: std::net::SocketAddr,
    id: &str,
    secret: &str,
) -> Result<(AsyncClient, Arc<Mutex<Acks>>, tokio::task::JoinHandle<()>)> {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_credentials(id, secret);
    o.set_clean_session(true);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(100);
    let (client, mut events) = AsyncClient::new(o, 64);
    tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(anyhow::anyhow!("{id} could not connect: {e}")),
            }
        }
    })
    .await
    .context("CONNACK")??;
    let acks = Arc::new(Mutex::new(Acks::default()));
    let task = drive(events, acks.clone());
    Ok((client, acks, task))
}

async fn publish(
    client: &AsyncClient,
    acks: &Mutex<Acks>,
    device: &str,
    press: &str,
) -> Result<()> {
    acks.lock()
        .expect("acks lock")
        .queued
        .push_back(press.to_owned());
    client
        .publish(
            topic::topic(device, Kind::Press),
            QoS::AtLeastOnce,
            false,
            press_json(press),
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_press_is_acknowledged_only_once_it_is_in_the_journal() -> Result<()> {
    let gw = TestGateway::start(|_| {}).await?;
    let secret = gw.add_device("ack-1", "one-button")?;
    let (client, acks, _task) = plain_client(gw.mqtt, "ack-1", &secret).await?;

    let before = Metrics::scrape(&gw).await?;
    gw.gw.store.inject_commit_failure(true);
    publish(&client, &acks, "ack-1", "ack-1-p1").await?;
    // The press reached the journal and failed, and was handed to it again and failed again
    // (the gateway retries every 200 ms): time enough for a PUBACK to have come if the broker
    // sent one when the press arrived.
    let failed = [("gesture", "single"), ("outcome", "store_error")];
    if let Err(e) = metrics_until(&gw, "two failed journal writes of the press", |m| {
        before.delta(m, PRESS_RECEIVED, &failed) >= 2.0
    })
    .await
    {
        let text = gw
            .http
            .get(format!("{}/metrics", gw.base))
            .send()
            .await?
            .text()
            .await?;
        let lines: Vec<_> = text
            .lines()
            .filter(|l| l.contains("press_") && !l.starts_with('#'))
            .collect();
        anyhow::bail!("{e}: {lines:#?} acks sent {:?}", acks.lock().unwrap().sent);
    }
    {
        let a = acks.lock().expect("acks lock");
        ensure!(
            a.acked.is_empty(),
            "PUBACK for {:?} while the journal could not commit it",
            a.acked
        );
        ensure!(a.sent.len() == 1, "the press went out: {:?}", a.sent);
    }

    gw.gw.store.inject_commit_failure(false);
    let acked_at = eventually("the PUBACK once the journal commits", || {
        let a = acks.lock().expect("acks lock");
        (a.acked == ["ack-1-p1"]).then(Instant::now)
    })
    .await?;
    // Acknowledged means journaled: the request is there, once.
    let (status, v) = gw.get("/api/v1/requests?device=ack-1").await?;
    ensure!(status == 200, "list: {status} {v}");
    let list = v["requests"].as_array().context("requests")?;
    ensure!(list.len() == 1, "one request for the press: {v}");
    ensure!(list[0]["press"]["id"] == "ack-1-p1", "{v}");
    let _ = acked_at;
    gw.stop().await;
    Ok(())
}

/// Every press a plain QoS 1 client saw acknowledged is journaled, though the gateway was
/// SIGKILLed while presses were arriving and the clients never send a press again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_press_survives_a_sigkill() -> Result<()> {
    let devices = env_count("YIJIAN_ACK_KILL_DEVICES", 50u32)?;
    let mut gw = ChildGateway::new(|c| {
        // Every press its own request: the check counts presses, not requests.
        c.flood.attach_window_s = 0;
        c.flood.device_messages_per_s = 100_000.0;
        c.flood.device_burst = 100_000;
    })?;
    let creds = gw.add_devices("kill-", devices, "one-button")?;
    gw.start().await?;

    let mut clients = Vec::new();
    for c in &creds {
        clients.push((
            c.device_id.clone(),
            plain_client(gw.mqtt, &c.device_id, &c.secret).await?,
        ));
    }
    // Each client presses as fast as its window lets it until its connection dies.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut pressers = Vec::new();
    for (device, (client, acks, _)) in &clients {
        let (device, client, acks, stop) =
            (device.clone(), client.clone(), acks.clone(), stop.clone());
        pressers.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.is_cancelled() {
                n += 1;
                let id = format!("{device}-{n}");
                let sent = tokio::select! {
                    r = publish(&client, &acks, &device, &id) => r,
                    _ = stop.cancelled() => break,
                };
                if sent.is_err() {
                    break;
                }
            }
        }));
    }
    let all_acks: Vec<Arc<Mutex<Acks>>> = clients.iter().map(|(_, (_, a, _))| a.clone()).collect();
    let total_acked = || -> usize {
        all_acks
            .iter()
            .map(|a| a.lock().expect("acks lock").acked.len())
            .sum()
    };
    // Kill once a good number were acknowledged, with the clients pressing faster than the
    // gateway journals: an acknowledgement that ran ahead of the journal would be lost now.
    let target = env_count("YIJIAN_ACK_KILL_AFTER", 3000usize)?;
    let deadline = Instant::now() + WAIT;
    while total_acked() < target {
        ensure!(
            Instant::now() < deadline,
            "{target} presses were not acknowledged in time"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.kill()?;
    stop.cancel();
    for p in pressers {
        let _ = p.await;
    }
    // What each client was told, frozen now that its broker is gone.
    let mut acked: HashSet<String> = HashSet::new();
    let deadline = Instant::now() + WAIT;
    for (_, (_, a, task)) in &clients {
        while !task.is_finished() {
            ensure!(
                Instant::now() < deadline,
                "a client did not see its connection end"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        acked.extend(a.lock().expect("acks lock").acked.iter().cloned());
    }
    ensure!(
        acked.len() >= target,
        "{} presses acknowledged",
        acked.len()
    );

    gw.start().await?;
    gw.stop(Duration::from_secs(20)).await?;
    let journal = gw.journal()?;
    let mut stmt = journal.prepare("SELECT press_id FROM presses")?;
    let journaled: HashSet<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<_, _>>()?;
    let lost: Vec<_> = acked.difference(&journaled).collect();
    ensure!(
        lost.is_empty(),
        "{} of {} acknowledged presses are not in the journal after the restart, e.g. {:?}",
        lost.len(),
        acked.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    eprintln!(
        "acks: {} presses acknowledged before the kill, all {} in the journal ({} journaled in all)",
        acked.len(),
        acked.len(),
        journaled.len()
    );
    Ok(())
}
