//! What a journal engine implements (SQLite today, under `sqlite/`; PostgreSQL next): this
//! trait of typed reads and registry writes, and the write protocol ([`super::command`]) applied
//! with [`super::lifecycle`]'s decisions, publishing every committed transition on the change
//! feed ([`super::changes`]). Nothing outside the engine's folder names its database crate.
//!
//! NOTE: the methods block (SQLite is a library call on the caller's thread); [`super::Store`]
//! runs them off the async runtime. Registry writes (devices, residents, credentials) come from
//! the CLI and the admin API, in whatever process, beside a running gateway: they are their own
//! transactions, not the writer's commands.

use super::error::StoreError;
use super::followup::Followup;
use super::model::{Change, Notice, Request};
use super::records::{CredentialChange, CredentialEntry, DeviceRecord, NewDevice, Resident};
use super::views::{ListFilter, RequestView};

/// Typed reads and registry writes of one journal.
pub trait Engine: Send + Sync + 'static {
    // --- requests ---

    /// Requests matching `filter`, newest first.
    fn requests(&self, filter: &ListFilter) -> Result<Vec<RequestView>, StoreError>;
    /// One request with its history, resident record and latency breakdown.
    fn request(&self, request_id: &str) -> Result<Option<RequestView>, StoreError>;
    /// Every request still owed a dispatch, oldest first (replayed at start).
    fn outbox(&self) -> Result<Vec<Request>, StoreError>;
    /// Creation time of the oldest request waiting at the desk, epoch ms.
    fn oldest_escalated(&self) -> Result<Option<i64>, StoreError>;
    /// Where each device's recent requests stand, as the feedback it would hear now, newest
    /// first per device: created since `created_since`, still open or ended since
    /// `ended_since`; at most `limit` per device (what a device that was away is told again).
    fn recent_for_devices(
        &self,
        device_ids: &[String],
        created_since: i64,
        ended_since: i64,
        limit: u32,
    ) -> Result<Vec<Notice>, StoreError>;
    /// The change feed's transitions after `seq`, oldest first, at most `limit`.
    fn changes_since(&self, seq: i64, limit: u32) -> Result<Vec<Change>, StoreError>;
    /// Every follow-up still pending, oldest first.
    fn pending_followups(&self) -> Result<Vec<Followup>, StoreError>;

    // --- devices ---

    /// One device.
    fn device(&self, device_id: &str) -> Result<Option<DeviceRecord>, StoreError>;
    /// Every device, by id.
    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError>;
    /// Register devices, all or none ([`StoreError::Refused`] when an id is taken).
    fn add_devices(&self, devices: &[NewDevice], at: i64) -> Result<(), StoreError>;
    /// Revoke a device: it may never connect again.
    fn revoke(&self, device_id: &str, at: i64) -> Result<CredentialChange, StoreError>;
    /// Replace a device's secret digest.
    fn rotate(
        &self,
        device_id: &str,
        secret_sha256: &[u8],
        at: i64,
    ) -> Result<CredentialChange, StoreError>;
    /// Credential changes after `seq`, oldest first.
    fn credential_changes(&self, since: i64) -> Result<Vec<CredentialEntry>, StoreError>;
    /// The credential log's newest position (0 when empty).
    fn last_credential_change(&self) -> Result<i64, StoreError>;

    // --- residents ---

    /// One resident.
    fn resident(&self, resident_id: &str) -> Result<Option<Resident>, StoreError>;
    /// When a resident's record (or a binding to it) last changed, epoch ms.
    fn resident_updated_at(&self, resident_id: &str) -> Result<Option<i64>, StoreError>;
    /// Every resident, by id.
    fn residents(&self) -> Result<Vec<Resident>, StoreError>;
    /// The residents' change stamp: moves whenever a resident or a device binding changes.
    fn residents_version(&self) -> Result<i64, StoreError>;
    /// Insert or replace residents, all or none.
    fn upsert_residents(&self, residents: &[Resident], at: i64) -> Result<(), StoreError>;
    /// Bind a device to a resident (or to nobody); the resident must be on record.
    fn bind_device(
        &self,
        device_id: &str,
        resident_id: Option<&str>,
        at: i64,
    ) -> Result<(), StoreError>;
    /// Devices bound to a resident.
    fn devices_of(&self, resident_id: &str) -> Result<Vec<String>, StoreError>;

    // --- the engine itself ---

    /// Bytes of heap the engine holds now (a gauge; 0 when it cannot tell).
    fn memory_used(&self) -> i64;
}
