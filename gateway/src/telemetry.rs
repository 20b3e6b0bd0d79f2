//! Telemetry: every metric name in one place, one function per event that counts (and, where a
//! human should know, logs), the Prometheus recorder, and the tracing subscriber.
//!
//! NOTE: no device id, resident id or request id is ever a label: cardinality stays bounded.
//! Those ids travel in tracing spans instead ([`press_span`], [`request_span`]), so every log
//! line about one press carries them. The dashboards and alerts built on these names live in
//! `dashboards/`; a test checks that every name they use is one a real scrape shows.
//!
//! Beside the path, at its end: every stage reports here, so telemetry names no stage and
//! takes plain values (the journal's sampler lives in `store::sampler`; `sampler` here is only
//! the heap probe the binary registers). The
//! names are in `names`, the events in `events`, the recorder in `recorder`, the subscriber
//! and spans in `logging`; callers use them all as `telemetry::NAME`.

pub mod limit;
pub mod sampler;

pub mod security;

mod events;
mod logging;
mod names;
mod recorder;

pub use events::*;
pub use logging::{
    init_logging, init_logging_with, press_span, request_span, LogFormat, DEFAULT_LOG_FILTER,
};
pub use names::*;
pub use recorder::{backend_updates_at_zero, escalation_reasons, metrics_handle};
