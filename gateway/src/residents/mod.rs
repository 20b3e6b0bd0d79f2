//! Residents: the people behind the devices. Their record travels in every request to the
//! backend (DESIGN §4's `resident` block); their attributes and home time zone feed the rules.
//!
//! ```text
//! residents import FILE ──▶ journal `residents` (id, data JSON, updated_at)
//!                                │
//!             intake ◀── cache ──┤  (attributes, time zone: rules)
//!           dispatch ◀── read  ──┘  (the backend body; contacts for notifications)
//! ```
//!
//! Files: [`import`] reads CSV and TOML with line numbers, [`csv`] is the small CSV reader it
//! uses, [`cache`] is what intake asks on the hot path.

pub mod cache;
pub mod csv;
pub mod import;

pub use cache::{ResidentInfo, Residents};

use crate::rules::AttrValue;
use crate::store::StoreError;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Tag added to a request whose device is bound to no known resident: the backend gets
/// `"resident": null` and must ask the caller where to go.
pub const RESIDENT_UNKNOWN_TAG: &str = "resident_unknown";

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

impl Resident {
    /// Every problem with this record, in words that say how to fix it; empty when valid.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(why) = id_problem(&self.id) {
            p.push(why);
        }
        text(&mut p, "name", Some(&self.name), 128, true);
        phone(&mut p, "phone", self.phone.as_deref());
        text(&mut p, "address", self.address.as_deref(), 256, false);
        text(
            &mut p,
            "preferred_hospital",
            self.preferred_hospital.as_deref(),
            128,
            false,
        );
        // Notes are free text for rescuers: line breaks are fine there.
        if let Some(n) = &self.notes {
            if n.chars().count() > 2000
                || n.chars().any(|c| c.is_control() && c != '\n' && c != '\r')
            {
                p.push("notes must be at most 2000 characters without control characters".into());
            }
        }
        if let Some(l) = self.location {
            if !(l.lat.is_finite() && (-90.0..=90.0).contains(&l.lat)) {
                p.push(format!(
                    "location: lat {} must be between -90 and 90",
                    l.lat
                ));
            }
            if !(l.lon.is_finite() && (-180.0..=180.0).contains(&l.lon)) {
                p.push(format!(
                    "location: lon {} must be between -180 and 180",
                    l.lon
                ));
            }
        }
        if self.contacts.len() > 10 {
            p.push(format!("at most 10 contacts, not {}", self.contacts.len()));
        }
        for (i, c) in self.contacts.iter().enumerate() {
            let n = i + 1;
            text(
                &mut p,
                &format!("contact {n} name"),
                Some(&c.name),
                128,
                true,
            );
            if c.phone.trim().is_empty() {
                p.push(format!(
                    "contact {n} phone is missing: a contact is someone to call"
                ));
            } else {
                phone(&mut p, &format!("contact {n} phone"), Some(&c.phone));
            }
            text(
                &mut p,
                &format!("contact {n} relation"),
                c.relation.as_deref(),
                64,
                false,
            );
        }
        for (name, value) in &self.attributes {
            if !crate::rules::attribute_name_ok(name) {
                p.push(format!(
                    "attribute name {name:?} must be 1-64 characters of A-Z, a-z, 0-9, _ and -"
                ));
            }
            if let AttrValue::Text(s) = value {
                if s.chars().count() > 128 || s.chars().any(char::is_control) {
                    p.push(format!(
                        "attribute {name}: the value must be at most 128 printable characters"
                    ));
                }
            }
        }
        if let Some(tz) = &self.time_zone {
            if jiff::tz::TimeZone::get(tz).is_err() {
                p.push(format!(
                    "time_zone {tz:?} is not a known IANA time zone (e.g. Asia/Shanghai, UTC)"
                ));
            }
        }
        p
    }

    /// The `resident` block of the backend contract (DESIGN §4). Attributes and the time zone
    /// are routing inputs, not for backends: what a backend must know reaches it as tags.
    pub fn backend_block(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "phone": self.phone,
            "address": self.address,
            "location": self.location,
            "notes": self.notes,
            "contacts": self.contacts,
            "preferred_hospital": self.preferred_hospital,
        })
    }
}

/// Why `id` cannot be a resident id, if it cannot.
pub fn id_problem(id: &str) -> Option<String> {
    let ok = !id.is_empty()
        && id.chars().count() <= 64
        && !id.chars().any(|c| c.is_control() || c.is_whitespace());
    (!ok).then(|| format!("resident id {id:?} must be 1-64 characters without spaces"))
}

fn text(p: &mut Vec<String>, what: &str, v: Option<&str>, max: usize, required: bool) {
    match v {
        None if required => p.push(format!("{what} is missing")),
        None => {}
        Some(s) if required && s.trim().is_empty() => p.push(format!("{what} is missing")),
        Some(s) if s.chars().count() > max => {
            p.push(format!("{what} is longer than {max} characters"))
        }
        Some(s) if s.chars().any(char::is_control) => p.push(format!(
            "{what} contains a line break or a control character"
        )),
        Some(_) => {}
    }
}

fn phone(p: &mut Vec<String>, what: &str, v: Option<&str>) {
    if let Some(s) = v {
        let digits = s.chars().filter(char::is_ascii_digit).count();
        let ok = s.len() <= 32
            && digits >= 3
            && s.chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | ' ' | '(' | ')'));
        if !ok {
            p.push(format!("{what} {s:?} must be a phone number: digits, spaces, + - ( ), at most 32 characters"));
        }
    }
}

/// One resident from the journal.
pub fn load(c: &Connection, id: &str) -> Result<Option<Resident>, StoreError> {
    let data: Option<String> = c
        .prepare_cached("SELECT data FROM residents WHERE resident_id = ?1")?
        .query_row(params![id], |r| r.get(0))
        .optional()?;
    data.map(|d| {
        serde_json::from_str(&d).map_err(|e| StoreError::Corrupt(format!("resident {id}: {e}")))
    })
    .transpose()
}

/// Every resident, by id.
pub fn list(c: &Connection) -> Result<Vec<Resident>, StoreError> {
    let mut stmt = c.prepare("SELECT resident_id, data FROM residents ORDER BY resident_id")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (id, data) = row?;
        out.push(
            serde_json::from_str(&data)
                .map_err(|e| StoreError::Corrupt(format!("resident {id}: {e}")))?,
        );
    }
    Ok(out)
}

/// The residents table's change stamp: the largest `updated_at` (indexed, so cheap to poll).
pub fn version(c: &Connection) -> Result<i64, StoreError> {
    Ok(
        c.prepare_cached("SELECT coalesce(max(updated_at), 0) FROM residents")?
            .query_row([], |r| r.get(0))?,
    )
}

/// A stamp later than every `updated_at` so far and not before `now`: watchers compare maxima,
/// so two changes in one millisecond must still differ.
fn next_stamp(c: &Connection, now: i64) -> Result<i64, StoreError> {
    Ok(now.max(version(c)? + 1))
}

/// Insert or replace `residents` in one transaction: all of them or none.
pub fn upsert_all(c: &mut Connection, residents: &[Resident], now: i64) -> Result<(), StoreError> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let stamp = next_stamp(&tx, now)?;
    {
        let mut stmt = tx.prepare(
            "INSERT INTO residents (resident_id, data, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (resident_id) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
        )?;
        for r in residents {
            stmt.execute(params![
                r.id,
                serde_json::to_string(r).expect("residents serialize"),
                stamp
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Bind `device_id` to `resident_id` (or to nobody). The resident must exist. Raises the
/// residents' change stamp so a running gateway re-reads the binding.
pub fn bind_device(
    c: &mut Connection,
    device_id: &str,
    resident_id: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let previous: Option<Option<String>> = tx
        .query_row(
            "SELECT resident_id FROM devices WHERE device_id = ?1",
            params![device_id],
            |r| r.get(0),
        )
        .optional()?;
    let Some(previous) = previous else {
        return Err(StoreError::Setup(format!(
            "device {device_id} is not registered"
        )));
    };
    if let Some(r) = resident_id {
        if load(&tx, r)?.is_none() {
            return Err(StoreError::Setup(format!(
                "resident {r} is not on record (import it first: yijian-gateway residents import FILE)"
            )));
        }
    }
    tx.execute(
        "UPDATE devices SET resident_id = ?2 WHERE device_id = ?1",
        params![device_id, resident_id],
    )?;
    let stamp = next_stamp(&tx, now)?;
    for r in [previous.as_deref(), resident_id].into_iter().flatten() {
        tx.execute(
            "UPDATE residents SET updated_at = ?2 WHERE resident_id = ?1",
            params![r, stamp],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Devices bound to a resident.
pub fn devices_of(c: &Connection, resident_id: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt =
        c.prepare("SELECT device_id FROM devices WHERE resident_id = ?1 ORDER BY device_id")?;
    let rows = stmt.query_map(params![resident_id], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}
