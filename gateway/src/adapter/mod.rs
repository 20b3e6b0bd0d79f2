//! Stage 2 of the path — adapters: what a device's MQTT messages mean. An adapter owns the topic
//! filters its devices publish on, decodes a message to a [`Decoded::Press`] or
//! [`Decoded::Status`] (or a rejection with a precise reason), and knows how to answer its device
//! (DESIGN §11). [`YijianV1`] speaks the native protocol (DESIGN §2); third-party formats
//! (Zigbee2MQTT, Shelly, Tasmota) are further implementations of [`Adapter`].
//!
//! An adapter is pure: no I/O, no state, nothing to await. Whether a device is registered, and
//! what a press becomes, is intake's business.

mod decode;
mod yijian_v1;

pub use decode::{Adapter, Decoded, Filters};
pub use yijian_v1::YijianV1;
