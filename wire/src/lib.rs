//! The Yijian device protocol, version 1 (DESIGN §2): topics, payload types and validation.
//!
//! This crate does no I/O. The gateway, the device simulator and the fuzz target all decode
//! through the same functions, so a press is judged the same way everywhere.
//!
//! ```
//! use yijian_wire::{decode_press, Gesture};
//! let (press, unknown) = decode_press(br#"{"id":"b7-1","button":"main","gesture":"single","at":1764324000123}"#).unwrap();
//! assert_eq!(press.gesture, Gesture::Single);
//! assert_eq!(unknown, 0);
//! ```

mod decode;
mod feedback;
mod kinds;
pub mod os;
pub mod topic;

pub use decode::{decode_press, decode_status, Press, RejectReason, Rejection, Status};
pub use feedback::{Feedback, FeedbackState};
pub use kinds::{Gesture, Priority, Service};

/// Largest press or status payload the gateway reads, in bytes. Larger payloads are rejected
/// (the broker's own, higher `max_payload_size` closes the connection outright).
pub const MAX_PAYLOAD_BYTES: usize = 4096;

/// Longest press id, in characters.
pub const MAX_PRESS_ID_CHARS: usize = 64;

/// Longest button label, in characters.
pub const MAX_BUTTON_CHARS: usize = 32;

/// Latest plausible `at`: 2100-01-01T00:00:00Z in epoch milliseconds. A larger value is almost
/// certainly not epoch milliseconds at all (microseconds, nanoseconds, garbage).
pub const MAX_AT_MS: i64 = 4_102_444_800_000;
