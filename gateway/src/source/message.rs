//! What flows through a source: incoming messages and connection events, the publisher, errors.

/// Why a connection could not be made or used. The client's errors are boxed: they are large,
/// and an [`Incoming`] carries one only when a connection fails.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The broker could not be reached (or refused the gateway) on every attempt.
    #[error("the gateway could not connect to its own broker: {0}")]
    Connect(#[source] Box<rumqttc::ConnectionError>),
    /// An established connection failed; the next read reconnects.
    #[error(transparent)]
    Lost(Box<rumqttc::ConnectionError>),
    /// A publish or ack could not be queued: the connection's task is gone (or its queue full).
    #[error(transparent)]
    Client(Box<rumqttc::ClientError>),
}

impl From<rumqttc::ConnectionError> for SourceError {
    fn from(e: rumqttc::ConnectionError) -> Self {
        SourceError::Lost(Box::new(e))
    }
}

impl From<rumqttc::ClientError> for SourceError {
    fn from(e: rumqttc::ClientError) -> Self {
        SourceError::Client(Box::new(e))
    }
}

/// What a [`Connection`](super::Connection) yields.
#[derive(Debug)]
pub enum Incoming {
    /// A publish on one of the connection's filters; ack it with [`Connection::ack`](super::Connection::ack), in order.
    Message(Message),
    /// The connection came back (its filters are subscribed again when the session was lost).
    Reconnected {
        /// The broker kept the session (and with it the subscriptions and unread messages).
        session_present: bool,
    },
    /// The connection failed; the next read reconnects, paced.
    Lost(SourceError),
}

/// One incoming publish. Owned as the client delivered it: no copy of topic or payload.
#[derive(Debug)]
pub struct Message(pub(super) rumqttc::Publish);

impl Message {
    /// What acknowledging this message takes, to keep after the message itself is gone (an
    /// ack sent once the message is durable, in receive order, by another task).
    pub fn ack_token(&self) -> AckToken {
        let mut p = rumqttc::Publish::new("", self.0.qos, Vec::new());
        p.pkid = self.0.pkid;
        AckToken(p)
    }

    /// The topic it was published on.
    pub fn topic(&self) -> &str {
        &self.0.topic
    }

    /// Its payload.
    pub fn payload(&self) -> &[u8] {
        &self.0.payload
    }
}

/// One message's acknowledgement, detached from the message (no topic, no payload).
#[derive(Debug, Clone)]
pub struct AckToken(pub(super) rumqttc::Publish);

/// Acknowledges messages of one connection from any task; cheap to clone. Acks must be sent in
/// the order the messages arrived.
#[derive(Clone)]
pub struct Acker {
    pub(super) client: rumqttc::AsyncClient,
}

impl Acker {
    /// Queue the acknowledgement; never waits (the broker has at most its window of messages
    /// unacknowledged, far below the request queue's capacity).
    pub fn ack(&self, token: &AckToken) -> Result<(), SourceError> {
        self.client.try_ack(&token.0)?;
        Ok(())
    }
}

/// Publishes on one of the gateway's connections; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    pub(super) client: rumqttc::AsyncClient,
}

impl Publisher {
    /// Queue `payload` for `topic` at QoS 1, not retained. Waits only when the connection's
    /// request queue is full.
    pub async fn publish(&self, topic: String, payload: Vec<u8>) -> Result<(), SourceError> {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
            .await?;
        Ok(())
    }
}
