//! The registry the journal keeps beside the requests: devices and the residents behind them.
//! Validation and import live with their users ([`crate::residents`], [`crate::devices`]); these
//! are the records as stored.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Tag added to a request whose device is bound to no known resident: the backend gets
/// `"resident": null` and must ask the caller where to go.
pub const RESIDENT_UNKNOWN_TAG: &str = "resident_unknown";

/// A resident attribute value, as stored with the resident and written in rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttrValue {
    Bool(bool),
    Int(i64),
    Text(String),
}

/// One resident, as imported and as stored (the `data` JSON of the `residents` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resident {
    /// The id devices are bound with (`devices add --resident`, `devices bind`).
    pub id: String,
    /// Full name, as the operator says it on the phone.
    pub name: String,
    /// The resident's own phone number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Home address: where the ambulance or the taxi goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Home coordinates, for backends that dispatch by map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// Medical and access notes for the rescuers ("diabetic", "key with neighbour in 302").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// Family and neighbours to call; notified when a rescue request goes to the desk.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contacts: Vec<Contact>,
    /// Where hospital registrations are booked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_hospital: Option<String>,
    /// What rules match with `resident = { ... }` (e.g. `lives_alone`, `mobility`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, AttrValue>,
    /// IANA zone of the resident's home; `[rules] time_zone` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// Latitude and longitude in degrees (WGS 84).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
}

/// Someone to call about the resident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    pub name: String,
    pub phone: String,
    /// `daughter`, `neighbour`, `community care advisor`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation: Option<String>,
}

/// A registered device.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceRecord {
    /// The id, equal to its MQTT client id and username.
    pub device_id: String,
    /// SHA-256 of the secret.
    #[serde(skip)]
    pub secret_sha256: Vec<u8>,
    /// The device model's profile (how many buttons).
    pub profile: String,
    /// The resident it belongs to.
    pub resident_id: Option<String>,
    /// Registration time, epoch ms.
    pub created_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
    /// Last time a status arrived, epoch ms.
    pub last_seen_at: Option<i64>,
    /// Whether the latest status said online.
    pub online: Option<bool>,
}

/// A device to register.
#[derive(Debug, Clone)]
pub struct NewDevice {
    /// The id, equal to its MQTT client id and username.
    pub device_id: String,
    /// SHA-256 of its secret.
    pub secret_sha256: Vec<u8>,
    /// The device model's profile.
    pub profile: String,
    /// The resident it belongs to, if known.
    pub resident_id: Option<String>,
}

/// What a credential change is.
pub const REVOKED: &str = "revoked";
/// See [`REVOKED`].
pub const ROTATED: &str = "rotated";

/// How a revoke or rotate went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialChange {
    /// Done and logged.
    Done,
    /// No such device.
    NotFound,
    /// The device is revoked: nothing more can be done to it.
    Revoked,
}

/// One entry of the credential change log (revocations and rotations, made by whatever
/// process): a running gateway drops the live connection of a device named here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialEntry {
    /// Position in the log.
    pub seq: i64,
    /// The device.
    pub device_id: String,
    /// [`REVOKED`] or [`ROTATED`].
    pub change: String,
}
