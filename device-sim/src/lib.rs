//! Yijian's device simulator: simulated home call devices ([`device`]) and mock dispatch
//! backends ([`backends`]). The `yijian-sim` binary and the end-to-end tests both use them.

pub mod backends;
pub mod device;
pub mod load;
pub mod press;

pub use backends::{Behaviour, MockBackends, MockOptions, Received};
pub use device::{tls_client_config, DeviceConfig, DeviceError, Heard, SimDevice};
