//! The device registry as the running gateway sees it: secrets and their digests, and a cache
//! of registered devices in front of the journal's `devices` table.
//!
//! Secrets are random 128-bit tokens stored as SHA-256 digests: a slow password hash would melt
//! the CPU in a reconnect storm of 100k devices, and a 128-bit random token does not need one.

use crate::store::{self, DeviceRecord, Store};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use subtle::ConstantTimeEq;

/// Profile given to a device registered without one.
pub const DEFAULT_PROFILE: &str = "one-button";

/// A new random 128-bit secret, hex-encoded (32 characters).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// SHA-256 of a secret.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Constant-time check of `secret` against a stored digest.
pub fn verify(secret: &str, stored_digest: &[u8]) -> bool {
    stored_digest.len() == 32 && bool::from(digest(secret).ct_eq(stored_digest))
}

/// What intake needs to know about a device, cached.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// The model's profile, matched by rules.
    pub profile: Arc<str>,
    /// The resident it belongs to.
    pub resident_id: Option<Arc<str>>,
}

impl From<&DeviceRecord> for DeviceInfo {
    fn from(r: &DeviceRecord) -> Self {
        DeviceInfo {
            profile: r.profile.as_str().into(),
            resident_id: r.resident_id.as_deref().map(Into::into),
        }
    }
}

/// Registered devices, cached in front of the journal. The CLI registers devices straight into
/// the journal from another process; the cache is refreshed at every connect (the broker reads
/// the row to authenticate anyway) and on a miss.
#[derive(Clone)]
pub struct Directory {
    store: Store,
    cache: Arc<RwLock<HashMap<String, DeviceInfo>>>,
}

impl Directory {
    /// A directory over the journal.
    pub fn new(store: Store) -> Self {
        Directory {
            store,
            cache: Arc::new(RwLock::new(HashMap::new())),
        }
    }

    /// The journal row for `device_id`, refreshing the cache. `None` when not registered
    /// (or revoked).
    pub fn load(&self, device_id: &str) -> Result<Option<DeviceRecord>, store::StoreError> {
        let rec = self.store.engine().device(device_id)?;
        let mut cache = self
            .cache
            .write()
            .expect("directory lock is never poisoned");
        match &rec {
            Some(r) if r.revoked_at.is_none() => {
                cache.insert(device_id.to_owned(), DeviceInfo::from(r));
            }
            _ => {
                cache.remove(device_id);
            }
        }
        Ok(rec.filter(|r| r.revoked_at.is_none()))
    }

    /// Whether `device_id` is registered and revoked (to tell a refused device why; a
    /// journal failure says no).
    pub fn is_revoked(&self, device_id: &str) -> bool {
        matches!(self.store.engine().device(device_id), Ok(Some(r)) if r.revoked_at.is_some())
    }

    /// Forget every cached device (a binding changed in the journal).
    pub fn clear(&self) {
        self.cache
            .write()
            .expect("directory lock is never poisoned")
            .clear();
    }

    /// What intake needs about `device_id`: from the cache, else the journal.
    pub fn info(&self, device_id: &str) -> Option<DeviceInfo> {
        if let Some(i) = self
            .cache
            .read()
            .expect("directory lock is never poisoned")
            .get(device_id)
        {
            return Some(i.clone());
        }
        match self.load(device_id) {
            Ok(Some(r)) => Some(DeviceInfo::from(&r)),
            Ok(None) => None,
            Err(e) => {
                tracing::error!(device_id, error = %e, "device lookup failed");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_verify_by_digest() {
        let a = new_secret();
        let b = new_secret();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        let d = digest(&a);
        assert!(verify(&a, &d));
        assert!(!verify(&b, &d));
        assert!(!verify("", &d));
        assert!(!verify(&a, &d[..31]));
    }
}
