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

use crate::store::AttrValue;
pub use crate::store::{Contact, Location, Resident};

pub use crate::store::RESIDENT_UNKNOWN_TAG;

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
