//! `residents import|show|list` and `devices bind|unbind`: the resident registry, kept in the
//! same journal a running gateway reads (it notices changes within a second).

use super::AdminError;
use crate::clock::{now_ms, rfc3339_ms};
use crate::config::Config;
use crate::residents::{import, Resident};
use crate::rules::AttrValue;
use crate::store;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// `residents import FILE`: every problem with its line, and nothing written unless the whole
/// file is good; then all residents in one transaction (existing ids are replaced whole).
pub fn residents_import(cfg: &Config, file: &Path, out: &mut dyn Write) -> Result<(), AdminError> {
    let list = match import::read_file(file) {
        Ok(list) => list,
        Err(problems) => {
            for p in &problems {
                writeln!(out, "{p}")?;
            }
            return Err(AdminError::Refused(format!(
                "{}: {} problem(s); nothing was imported",
                file.display(),
                problems.len()
            )));
        }
    };
    let journal = store::open_engine(&cfg.db_path())?;
    let mut known = 0;
    for r in &list {
        known += usize::from(journal.resident(&r.id)?.is_some());
    }
    journal.upsert_residents(&list, now_ms())?;
    writeln!(
        out,
        "imported {} resident(s) from {} ({} new, {} replaced)",
        list.len(),
        file.display(),
        list.len() - known,
        known
    )?;
    Ok(())
}

/// `residents show ID [--json]`: the record, its devices, and the zone its presses are judged in.
pub fn residents_show(
    cfg: &Config,
    id: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let journal = super::open_existing(cfg)?;
    let Some(r) = journal.resident(id)? else {
        return Err(AdminError::Refused(format!(
            "resident {id} is not on record"
        )));
    };
    let devices = journal.devices_of(id)?;
    let updated = journal.resident_updated_at(id)?.unwrap_or(0);
    if json {
        let mut v = serde_json::to_value(&r).expect("residents serialize");
        v["devices"] = serde_json::json!(devices);
        v["updated_at"] = serde_json::json!(rfc3339_ms(updated));
        writeln!(out, "{v}")?;
        return Ok(());
    }
    write_resident(cfg, &r, &devices, updated, out)
}

fn write_resident(
    cfg: &Config,
    r: &Resident,
    devices: &[String],
    updated: i64,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let dash = |v: Option<&str>| v.map(str::to_owned).unwrap_or_else(|| "-".into());
    writeln!(out, "resident {}: {}", r.id, r.name)?;
    writeln!(out, "  phone:       {}", dash(r.phone.as_deref()))?;
    writeln!(out, "  address:     {}", dash(r.address.as_deref()))?;
    let location = r.location.map(|l| format!("{}, {}", l.lat, l.lon));
    writeln!(out, "  location:    {}", dash(location.as_deref()))?;
    let zone = match (&r.time_zone, cfg.rules.time_zone.as_str()) {
        (Some(tz), _) => tz.clone(),
        (None, "") => "unknown (no [rules] time_zone): rules with `time` do not match".into(),
        (None, d) => format!("{d} (the default)"),
    };
    writeln!(out, "  time zone:   {zone}")?;
    writeln!(
        out,
        "  hospital:    {}",
        dash(r.preferred_hospital.as_deref())
    )?;
    writeln!(
        out,
        "  notes:       {}",
        dash(
            r.notes
                .as_deref()
                .map(|n| n.replace('\n', " / "))
                .as_deref()
        )
    )?;
    writeln!(out, "  attributes:  {}", attributes(&r.attributes))?;
    if r.contacts.is_empty() {
        writeln!(
            out,
            "  contacts:    - (nobody is notified when a request goes to the desk)"
        )?;
    }
    for (i, c) in r.contacts.iter().enumerate() {
        let label = if i == 0 { "contacts:" } else { "" };
        let relation = c
            .relation
            .as_deref()
            .map(|x| format!(" ({x})"))
            .unwrap_or_default();
        writeln!(out, "  {label:<12} {}{relation}, {}", c.name, c.phone)?;
    }
    let devices = if devices.is_empty() {
        "- (bind one: yijian-gateway devices bind DEVICE RESIDENT)".into()
    } else {
        devices.join(", ")
    };
    writeln!(out, "  devices:     {devices}")?;
    writeln!(out, "  updated:     {}", rfc3339_ms(updated))?;
    Ok(())
}

/// `lives_alone = true, mobility = "wheelchair"`, as a rule would write them; `-` for none.
pub fn attributes(attrs: &BTreeMap<String, AttrValue>) -> String {
    if attrs.is_empty() {
        return "-".into();
    }
    let all: Vec<String> = attrs
        .iter()
        .map(|(k, v)| match v {
            AttrValue::Text(s) => format!("{k} = {s:?}"),
            other => format!("{k} = {other}"),
        })
        .collect();
    all.join(", ")
}

/// `residents list [--json]`.
pub fn residents_list(cfg: &Config, json: bool, out: &mut dyn Write) -> Result<(), AdminError> {
    let journal = super::open_existing(cfg)?;
    let list = journal.residents()?;
    if json {
        writeln!(out, "{}", serde_json::json!({"residents": list}))?;
        return Ok(());
    }
    if list.is_empty() {
        writeln!(
            out,
            "no residents on record (import them: yijian-gateway residents import FILE)"
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<16} {:<24} {:<20} {:<9} DEVICES",
        "RESIDENT", "NAME", "TIME ZONE", "CONTACTS"
    )?;
    for r in list {
        let devices = journal.devices_of(&r.id)?;
        writeln!(
            out,
            "{:<16} {:<24} {:<20} {:<9} {}",
            r.id,
            r.name,
            r.time_zone.as_deref().unwrap_or("(default)"),
            r.contacts.len(),
            if devices.is_empty() {
                "-".into()
            } else {
                devices.join(",")
            }
        )?;
    }
    Ok(())
}

/// `devices bind DEVICE RESIDENT` / `devices unbind DEVICE`: the resident must be on record.
pub fn devices_bind(
    cfg: &Config,
    device_id: &str,
    resident_id: Option<&str>,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    super::open_existing(cfg)?.bind_device(device_id, resident_id, now_ms())?;
    match resident_id {
        Some(r) => writeln!(out, "device {device_id} is bound to resident {r}")?,
        None => writeln!(
            out,
            "device {device_id} is bound to no resident: its presses are dispatched as resident_unknown"
        )?,
    }
    Ok(())
}
