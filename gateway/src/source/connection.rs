//! One of the gateway's own connections as an MQTT client (rumqttc): connect with retry,
//! subscribe, re-subscribe after a reconnect without session, read, ack.

use super::message::{Acker, Incoming, Message, Publisher, SourceError};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Attempts while the broker's listener comes up (it binds asynchronously), and the pause
/// between them.
const CONNECT_ATTEMPTS: u32 = 100;
const CONNECT_PAUSE: Duration = Duration::from_millis(50);
/// Pause before reconnecting a lost connection, so a dead broker is not spun on.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// Where the gateway's own connections go and how they log in.
#[derive(Clone)]
pub struct Source {
    /// Broker host, as the MQTT client wants it.
    host: String,
    /// Broker port.
    port: u16,
    /// The gateway's password (its client ids are its user names).
    secret: Arc<str>,
    /// Largest packet either way: room for the largest a device may send, or one oversized
    /// press would make the client drop the connection, forever.
    max_packet: usize,
}

impl Source {
    /// The embedded broker listening on `listen`, which admits devices' packets up to
    /// `max_payload_size` bytes; the gateway logs in with `secret`.
    pub fn embedded(listen: SocketAddr, max_payload_size: usize, secret: Arc<str>) -> Self {
        let host = if listen.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            listen.ip().to_string()
        };
        Source {
            host,
            port: listen.port(),
            secret,
            max_packet: max_payload_size + 1024,
        }
    }

    /// Connect `client_id` with a persistent session and subscribe to `filters` at QoS 1,
    /// retrying briefly while the broker comes up. Returns once every subscription exists (so
    /// devices may be admitted). `capacity` is the connection's request queue (publishes and
    /// acks waiting to be written).
    pub async fn connect(
        &self,
        client_id: &str,
        filters: Vec<String>,
        capacity: usize,
    ) -> Result<Connection, SourceError> {
        let mut last = None;
        for _ in 0..CONNECT_ATTEMPTS {
            match self.try_connect(client_id, &filters, capacity).await {
                Ok((client, events)) => {
                    return Ok(Connection {
                        client,
                        events,
                        filters,
                        pace: false,
                    })
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(CONNECT_PAUSE).await;
                }
            }
        }
        Err(SourceError::Connect(Box::new(last.expect(
            "CONNECT_ATTEMPTS is not zero: an attempt was made",
        ))))
    }

    async fn try_connect(
        &self,
        client_id: &str,
        filters: &[String],
        capacity: usize,
    ) -> Result<(AsyncClient, EventLoop), rumqttc::ConnectionError> {
        let (client, mut events) = self.client(client_id, capacity);
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = events.poll().await? {
                break;
            }
        }
        for f in filters {
            let _ = client.try_subscribe(f, QoS::AtLeastOnce);
        }
        let mut subacks = 0;
        while subacks < filters.len() {
            if let Event::Incoming(Packet::SubAck(_)) = events.poll().await? {
                subacks += 1;
            }
        }
        Ok((client, events))
    }

    /// Persistent session, manual acks, TCP_NODELAY (small messages must not wait ~40 ms for
    /// Nagle and delayed ACKs), and room for the largest packet the broker lets a device send.
    fn client(&self, client_id: &str, capacity: usize) -> (AsyncClient, EventLoop) {
        let mut o = MqttOptions::new(client_id, self.host.clone(), self.port);
        o.set_credentials(client_id, &*self.secret);
        o.set_clean_session(false);
        o.set_manual_acks(true);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(self.max_packet, self.max_packet);
        o.set_inflight(500);
        let (client, mut events) = AsyncClient::new(o, capacity);
        events.network_options.set_tcp_nodelay(true);
        (client, events)
    }
}

/// A connection: its publisher side, and the event loop its single reader drives.
pub struct Connection {
    client: AsyncClient,
    events: EventLoop,
    /// Subscribed at connect, and again after a reconnect that lost the session.
    filters: Vec<String>,
    /// The last read ended in an error: pause before the next one reconnects.
    pace: bool,
}

impl Connection {
    /// The next thing that happens on the connection; `None` once `shutdown` is cancelled.
    /// Cancel-safe: a message is never lost to a cancelled read.
    pub async fn next(&mut self, shutdown: &CancellationToken) -> Option<Incoming> {
        if std::mem::take(&mut self.pace) {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
            }
        }
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return None,
                ev = self.events.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    return Some(Incoming::Message(Message(p)))
                }
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if !ack.session_present {
                        for f in &self.filters {
                            let _ = self.client.try_subscribe(f, QoS::AtLeastOnce);
                        }
                    }
                    return Some(Incoming::Reconnected {
                        session_present: ack.session_present,
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    // rumqttc reconnects on the next poll; `pace` spaces it out.
                    self.pace = true;
                    return Some(Incoming::Lost(e.into()));
                }
            }
        }
    }

    /// Acknowledge `message` to the broker. Call it for every message, in the order they
    /// arrived. Never waits: fails instead when the connection's request queue is full.
    /// An acker for this connection's messages, to ack from another task (in receive order).
    pub fn acker(&self) -> Acker {
        Acker {
            client: self.client.clone(),
        }
    }

    pub fn ack(&self, message: &Message) -> Result<(), SourceError> {
        self.client.try_ack(&message.0)?;
        Ok(())
    }

    /// A handle publishing on this connection (its reader must keep calling [`Self::next`]).
    pub fn publisher(&self) -> Publisher {
        Publisher {
            client: self.client.clone(),
        }
    }
}
