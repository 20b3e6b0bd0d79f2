//! What can go wrong in the journal, whatever engine keeps it.

use std::sync::Arc;

/// The cause of a journal error, kept whole (engines put their own error type here) and
/// shared: one failed commit answers every caller of its batch with the same error.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Journal errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database engine said no.
    #[error("database: {0}")]
    Db(#[source] Cause),
    /// The journal cannot be written (disk full, read-only, injected failure). Carries what
    /// was being done; the cause, when there is one, is the engine's error.
    #[error("journal unavailable: {what}")]
    Unavailable {
        /// What failed, in words.
        what: String,
        /// Why, when the engine said.
        #[source]
        cause: Option<Cause>,
    },
    /// A row holds something this build does not understand.
    #[error("journal holds an unexpected value: {0}")]
    Corrupt(String),
    /// The writer is gone (shutting down).
    #[error("the journal writer has stopped")]
    Closed,
    /// Opening the journal or its data directory failed.
    #[error("{what}")]
    Setup {
        /// What failed, in words (with the path).
        what: String,
        /// Why.
        #[source]
        cause: Option<Cause>,
    },
    /// The caller asked for something the journal refuses (a device id already taken, a
    /// resident that is not on record): the message says what to do.
    #[error("{0}")]
    Refused(String),
    /// Another gateway holds the data directory.
    #[error("data directory {dir} is in use by another gateway{}", .pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    InUse {
        /// The data directory.
        dir: String,
        /// The holder's process id, as it wrote it in the lock file.
        pid: Option<u32>,
    },
}

impl StoreError {
    /// A setup failure with its cause.
    pub fn setup(
        what: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Setup {
            what: what.into(),
            cause: Some(Arc::new(cause)),
        }
    }

    /// The journal cannot be written: `what`, with no further cause.
    pub fn unavailable(what: impl Into<String>) -> Self {
        StoreError::Unavailable {
            what: what.into(),
            cause: None,
        }
    }
}
