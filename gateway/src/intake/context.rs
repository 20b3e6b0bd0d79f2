//! What intake's readers share.

use crate::adapter::Adapter;
use crate::devices::Directory;
use crate::dispatch::DispatchHandle;
use crate::feedback::resume::Resume;
use crate::feedback::FeedbackSender;
use crate::residents::Residents;
use crate::rules::RuleSet;
use crate::store::Store;
use std::sync::{Arc, RwLock};

/// Everything intake needs; shared by both readers.
pub struct IntakeContext {
    /// The journal.
    pub store: Store,
    /// Registered devices.
    pub directory: Directory,
    /// Residents' attributes and time zones, for the rules.
    pub residents: Residents,
    /// The current rule set; swapped whole on reload, so a press sees one complete set.
    pub rules: Arc<RwLock<Arc<RuleSet>>>,
    /// What the devices' messages mean, and the filters they arrive on.
    pub adapter: Arc<dyn Adapter>,
    /// Feedback publisher.
    pub feedback: FeedbackSender,
    /// Told when a device comes online, for brokers that do not report subscriptions.
    pub resume: Arc<Resume>,
    /// Where new requests go.
    pub dispatch: DispatchHandle,
    /// Cancel window, in milliseconds.
    pub cancel_window_ms: i64,
    /// Flood control: a press joins the device's open request of its service created within
    /// this many milliseconds (0: never).
    pub attach_window_ms: i64,
}
