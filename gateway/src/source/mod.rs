//! Stage 1 of the path — the source: the gateway's own MQTT connections, over which device
//! messages come in and feedback goes out. Today they are rumqttc clients of the embedded broker
//! on loopback ([`Source::embedded`]); an external broker (DESIGN §7: `$share/yijian/...`
//! filters, a stable client id per replica) and rumqttd's in-process link are further
//! constructors of the same [`Source`], and nothing after this stage names the MQTT client.
//!
//! A [`Connection`] connects (retrying while the broker comes up), subscribes, re-subscribes
//! after a reconnect that lost its session, and yields what arrives as [`Incoming`]; its reader
//! acks each [`Message`] in receive order. A [`Publisher`] is a cloneable handle for publishing
//! on a connection (feedback).
//!
//! NOTE: rumqttd's outgoing QoS 1 window is fixed at 100 per connection and it requires acks in
//! the order it sent the messages (DESIGN §6): a reader must ack every message, in order, on the
//! connection that delivered it, and kinds of message that must not wait for each other (presses
//! behind a journal commit, heartbeats) need connections of their own.

mod connection;
mod message;

pub use connection::{Connection, Source};
pub use message::{AckToken, Acker, Incoming, Message, Publisher, SourceError};
