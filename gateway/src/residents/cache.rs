//! What intake asks about a resident for every press — attributes and home time zone — cached
//! in front of the journal like [`crate::devices::Directory`] caches devices.
//!
//! The CLI imports residents and binds devices from another process, so the cache cannot be
//! told; instead [`watch`] polls the residents' change stamp (one indexed `max()`) and empties
//! this cache and the device directory when it moves. Time zones are resolved once per
//! resident, never per press.

use crate::devices::Directory;
use crate::rules::AttrValue;
use crate::store::Resident;
use crate::store::Store;
use jiff::tz::TimeZone;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The routing view of one resident.
#[derive(Debug)]
pub struct ResidentInfo {
    /// What rules match with `resident = { ... }`.
    pub attributes: BTreeMap<String, AttrValue>,
    /// The resident's own zone, resolved; `None` means the default zone applies.
    pub time_zone: Option<TimeZone>,
}

impl From<&Resident> for ResidentInfo {
    fn from(r: &Resident) -> Self {
        let time_zone = r.time_zone.as_deref().and_then(|tz| match TimeZone::get(tz) {
            Ok(z) => Some(z),
            Err(_) => {
                // Import refuses unknown zones; this is a newer zone name than this build knows.
                tracing::warn!(resident_id = %r.id, time_zone = tz, "unknown time zone on record; using the default");
                None
            }
        });
        ResidentInfo {
            attributes: r.attributes.clone(),
            time_zone,
        }
    }
}

/// Residents by id, cached; cheap to clone. A resident not on record is cached as such too, so
/// a device bound to a missing resident costs one lookup, not one per press.
#[derive(Clone)]
pub struct Residents {
    store: Store,
    cache: Arc<RwLock<HashMap<String, Option<Arc<ResidentInfo>>>>>,
    /// `[rules] time_zone`, resolved; `None` when configured empty.
    default_zone: Option<TimeZone>,
}

impl Residents {
    /// A cache over the journal. `default_zone` is an IANA name, or empty for none.
    pub fn new(store: Store, default_zone: &str) -> Self {
        // The configuration check has already refused an unknown zone.
        let default_zone = (!default_zone.is_empty())
            .then(|| TimeZone::get(default_zone).ok())
            .flatten();
        Residents {
            store,
            cache: Arc::new(RwLock::new(HashMap::new())),
            default_zone,
        }
    }

    /// The routing view of resident `id`; `None` when not on record (or the journal failed).
    pub fn info(&self, id: &str) -> Option<Arc<ResidentInfo>> {
        if let Some(hit) = self
            .cache
            .read()
            .expect("residents lock is never poisoned")
            .get(id)
        {
            return hit.clone();
        }
        match self.store.engine().resident(id) {
            Ok(r) => {
                let info = r.as_ref().map(|r| Arc::new(ResidentInfo::from(r)));
                self.cache
                    .write()
                    .expect("residents lock is never poisoned")
                    .insert(id.to_owned(), info.clone());
                info
            }
            Err(e) => {
                tracing::error!(resident_id = id, error = %e, "resident lookup failed");
                None
            }
        }
    }

    /// The zone a press is judged in: the resident's own, else the default.
    pub fn zone<'a>(&'a self, resident: Option<&'a ResidentInfo>) -> Option<&'a TimeZone> {
        resident
            .and_then(|r| r.time_zone.as_ref())
            .or(self.default_zone.as_ref())
    }

    /// Forget everything (the journal changed under us).
    pub fn clear(&self) {
        self.cache
            .write()
            .expect("residents lock is never poisoned")
            .clear();
    }
}

/// Poll the residents' change stamp every `every` until `shutdown`; on a change, empty the
/// resident cache and the device directory (a binding may have moved).
pub fn watch(
    residents: Residents,
    directory: Directory,
    every: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = residents.store.residents_version().await.ok();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            match residents.store.residents_version().await {
                Ok(v) if Some(v) != seen => {
                    seen = Some(v);
                    residents.clear();
                    directory.clear();
                    tracing::info!("residents or device bindings changed; caches refreshed");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the residents' change stamp"),
            }
        }
    })
}
