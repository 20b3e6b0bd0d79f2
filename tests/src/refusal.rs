//! A refused MQTT connection, asserted as the refusal it is: the broker answers the CONNECT
//! with a CONNACK carrying a refusal code (MQTT 3.1.1 §3.2.2.3: 4 bad user name or password,
//! 5 not authorized, ...), or it closes the connection (or the TLS handshake) before any
//! CONNACK. Nothing else passes: not an accepted connection, and not a client that gave up
//! waiting — a broker that hangs is not refusing.

use crate::WAIT;
use anyhow::{anyhow, bail, Result};
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet};
use std::net::SocketAddr;
use std::sync::Arc;

/// How the broker refused a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A CONNACK with this refusal code.
    ConnAck(ConnectReturnCode),
    /// The server closed the connection before any CONNACK; what the client saw.
    Closed(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::ConnAck(code) => write!(f, "a CONNACK refusing with {code:?}"),
            Refusal::Closed(why) => write!(f, "the server closing first ({why})"),
        }
    }
}

/// MQTT options for a one-shot connection as `client_id` (clean session), with these
/// credentials and, when given, TLS.
pub fn mqtt_options(
    addr: SocketAddr,
    client_id: &str,
    creds: Option<(&str, &str)>,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    if let Some((u, p)) = creds {
        o.set_credentials(u, p);
    }
    if let Some(tls) = tls {
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    o
}

/// Connect with `opts` and return how the broker refused the connection; an error when it
/// accepted it, when nothing was answered within [`WAIT`] (or rumqttc's own connect timeout),
/// or when there was no listener to refuse anything.
pub async fn refusal(opts: MqttOptions) -> Result<Refusal> {
    let (_client, mut events) = AsyncClient::new(opts, 8);
    let first = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return match ack.code {
                        ConnectReturnCode::Success => Err(anyhow!("the broker accepted it")),
                        code => Ok(Refusal::ConnAck(code)),
                    }
                }
                Ok(_) => {}
                Err(e) => return classify(e),
            }
        }
    };
    tokio::time::timeout(WAIT, first)
        .await
        .map_err(|_| anyhow!("neither refused nor accepted within {WAIT:?}"))?
}

/// A connection error as a refusal, or why it is none.
fn classify(e: ConnectionError) -> Result<Refusal> {
    use std::io::ErrorKind;
    match e {
        ConnectionError::ConnectionRefused(code) => Ok(Refusal::ConnAck(code)),
        ConnectionError::Io(io) if io.kind() == ErrorKind::ConnectionRefused => {
            bail!("no listener to refuse it: {io}")
        }
        ConnectionError::Io(io) => Ok(Refusal::Closed(io.to_string())),
        ConnectionError::MqttState(s @ rumqttc::StateError::Io(_))
        | ConnectionError::MqttState(s @ rumqttc::StateError::ConnectionAborted)
        // TLS 1.3: the handshake completes on the client's side, and the server's alert (a
        // client certificate refused) arrives as the first read, where the CONNACK was due.
        | ConnectionError::MqttState(
            s @ rumqttc::StateError::Deserialization(rumqttc::mqttbytes::Error::Io(_)),
        ) => Ok(Refusal::Closed(s.to_string())),
        ConnectionError::Tls(t) => Ok(Refusal::Closed(format!("TLS: {t}"))),
        ConnectionError::NetworkTimeout => bail!("no CONNACK before the client's own timeout"),
        other => bail!("not a refusal: {other}"),
    }
}

/// [`refusal`], for the assertions of a test: the refusal, printed with `what` (a test's
/// output then records which it was), or an error naming `what`.
pub async fn assert_refused(what: &str, opts: MqttOptions) -> Result<Refusal> {
    match refusal(opts).await {
        Ok(r) => {
            eprintln!("{what}: refused by {r}");
            Ok(r)
        }
        Err(e) => Err(e.context(format!("{what} must be refused"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn only_a_refusal_code_or_the_server_closing_first_is_a_refusal() {
        assert_eq!(
            classify(ConnectionError::ConnectionRefused(
                ConnectReturnCode::NotAuthorized
            ))
            .ok(),
            Some(Refusal::ConnAck(ConnectReturnCode::NotAuthorized))
        );
        assert!(matches!(
            classify(ConnectionError::MqttState(rumqttc::StateError::Io(
                io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "connection closed by peer"
                )
            ))),
            Ok(Refusal::Closed(_))
        ));
        assert!(matches!(
            classify(ConnectionError::Io(io::ErrorKind::ConnectionReset.into())),
            Ok(Refusal::Closed(_))
        ));
        assert!(
            classify(ConnectionError::NetworkTimeout).is_err(),
            "a timeout"
        );
        assert!(
            classify(ConnectionError::Io(io::ErrorKind::ConnectionRefused.into())).is_err(),
            "nobody listening"
        );
        assert!(classify(ConnectionError::RequestsDone).is_err());
    }
}
