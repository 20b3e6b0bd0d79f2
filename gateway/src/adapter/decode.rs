//! The adapter port: what an adapter is asked, and what a decoded message is.

use yijian_wire::{Press, RejectReason, Status};

/// A device protocol carried over MQTT.
pub trait Adapter: Send + Sync + 'static {
    /// The filters the gateway subscribes to for this adapter's devices.
    fn filters(&self) -> Filters;

    /// What the message `payload` on `topic` says. Borrows the device id from the topic: a
    /// press costs no copy of it until the journal needs one.
    fn decode<'t>(&self, topic: &'t str, payload: &[u8]) -> Decoded<'t>;

    /// Where `device_id` hears feedback, or `None` when its protocol has no way to answer
    /// (a third-party button knows only the broker's PUBACK).
    fn feedback_topic(&self, device_id: &str) -> Option<String>;
}

/// An adapter's topic filters, by what they carry. Presses and statuses are read on separate
/// connections (see [`crate::source`]), so the two never share a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filters {
    /// Filters carrying presses.
    pub presses: Vec<String>,
    /// Filters carrying statuses (heartbeats, last wills).
    pub statuses: Vec<String>,
}

/// One decoded message.
#[derive(Debug, PartialEq)]
pub enum Decoded<'t> {
    /// A valid press from `device_id`.
    Press {
        /// The device the topic names.
        device_id: &'t str,
        /// The press.
        press: Press,
        /// How many fields the adapter did not know and ignored (counted).
        unknown_fields: usize,
    },
    /// A valid status from `device_id`.
    Status {
        /// The device the topic names.
        device_id: &'t str,
        /// The status.
        status: Status,
    },
    /// An invalid message: counted under `reason`, and answered with `message` when the topic
    /// names a device.
    Rejected {
        /// The device the topic names, when it names one.
        device_id: Option<&'t str>,
        /// The press id, when the payload carried a usable one (the device matches the answer
        /// to the press it keeps retransmitting).
        press_id: Option<String>,
        /// Bounded reason, for metrics.
        reason: RejectReason,
        /// Precise human-readable reason, sent back to the device.
        message: String,
    },
    /// Nothing to record (an empty retained message clearing a status).
    Ignore,
}
