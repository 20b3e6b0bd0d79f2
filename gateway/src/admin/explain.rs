//! `rules explain`: which rule decides a press, and why every earlier rule did not — with the
//! same inputs the gateway would use (the device's profile, its resident's attributes and
//! local time) or inputs given by hand, against the rules the gateway is configured with.

use super::residents::attributes;
use super::AdminError;
use crate::config::Config;
use crate::residents::{self, ResidentInfo};
use crate::rules::{local_minutes_in, Action, AttrValue, PressContext, RuleSet};

use jiff::tz::TimeZone;
use std::collections::BTreeMap;
use std::io::Write;
use yijian_wire::Gesture;

/// What to explain. `device` supplies the profile and the resident; the rest override or stand
/// in for them.
#[derive(Debug, Clone, Default)]
pub struct ExplainArgs {
    /// A registered device: its profile, its resident's attributes and time zone.
    pub device: Option<String>,
    /// The profile, when no device is given.
    pub profile: Option<String>,
    /// The button label (default `main`).
    pub button: Option<String>,
    /// The gesture (default `single`).
    pub gesture: Option<Gesture>,
    /// When: RFC 3339 (`2026-11-28T22:30:00+08:00`) or the resident's local `HH:MM`; now
    /// when absent.
    pub at: Option<String>,
    /// A resident on record whose attributes and zone to use (without a device).
    pub resident: Option<String>,
    /// Attributes given by hand (`name=value`), over the resident's.
    pub attrs: Vec<String>,
    /// A zone over the resident's / the default one.
    pub time_zone: Option<String>,
}

/// Where the press's local time came from, for the report.
enum LocalTime {
    /// Given as `HH:MM`.
    Given(u16),
    /// An instant seen in a zone.
    Zoned {
        minutes: u16,
        zone: String,
        instant: jiff::Timestamp,
        now: bool,
    },
    /// No zone is known.
    Unknown { why: String },
}

/// `rules explain`: prints the inputs, then the explanation. `now_ms` is the clock for a
/// press without `--at`.
pub fn rules_explain(
    cfg: &Config,
    args: &ExplainArgs,
    now_ms: i64,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let (set, source) = load(cfg, out)?;
    let mut profile = args.profile.clone();
    let mut resident_id = args.resident.clone();
    let mut device_line = None;
    let mut resident: Option<residents::Resident> = None;
    if args.device.is_some() || args.resident.is_some() {
        let journal = super::open_existing(cfg)?;
        if let Some(d) = &args.device {
            let id = d.clone();
            let Some(rec) = journal.device(&id)? else {
                return Err(AdminError::Refused(format!("device {d} is not registered")));
            };
            if let Some(p) = &args.profile {
                if *p != rec.profile {
                    return Err(AdminError::Refused(format!(
                        "device {d} has profile {}, not {p}: leave --profile out to use the device's",
                        rec.profile
                    )));
                }
            }
            profile = Some(rec.profile.clone());
            if resident_id.is_none() {
                resident_id = rec.resident_id.clone();
            }
            device_line = Some(match &rec.resident_id {
                Some(r) => format!("{d} (resident {r})"),
                None => format!("{d} (bound to no resident)"),
            });
        }
        if let Some(r) = &resident_id {
            resident = journal.resident(r)?;
            if resident.is_none() && args.resident.is_some() {
                return Err(AdminError::Refused(format!(
                    "resident {r} is not on record"
                )));
            }
        }
    }
    let Some(profile) = profile else {
        return Err(AdminError::Refused(
            "give --device ID, or --profile P (with --button and --gesture)".into(),
        ));
    };
    let button = args.button.clone().unwrap_or_else(|| "main".into());
    let gesture = args.gesture.unwrap_or(Gesture::Single);

    let info = resident.as_ref().map(ResidentInfo::from);
    let mut attrs: BTreeMap<String, AttrValue> = info
        .as_ref()
        .map(|i| i.attributes.clone())
        .unwrap_or_default();
    for a in &args.attrs {
        let (k, v) = a.split_once('=').ok_or_else(|| {
            AdminError::Refused(format!(
                "--attr {a:?} must look like name=value (e.g. lives_alone=true)"
            ))
        })?;
        attrs.insert(k.trim().to_owned(), attr_value(v.trim()));
    }
    let zone = zone(cfg, args, info.as_ref())?;
    let local = local_time(args.at.as_deref(), zone, now_ms)?;

    writeln!(
        out,
        "press:      profile {profile}, button {button}, gesture {gesture}"
    )?;
    if let Some(d) = device_line {
        writeln!(out, "device:     {d}")?;
    }
    match (&resident, &resident_id) {
        (Some(r), _) => writeln!(
            out,
            "resident:   {} ({}): {}",
            r.id,
            r.name,
            attributes(&attrs)
        )?,
        (None, Some(r)) => writeln!(
            out,
            "resident:   {r} is not on record: no attributes, presses are tagged resident_unknown"
        )?,
        (None, None) if !attrs.is_empty() => {
            writeln!(out, "resident:   (given) {}", attributes(&attrs))?
        }
        (None, None) => writeln!(
            out,
            "resident:   none: no attributes, presses are tagged resident_unknown"
        )?,
    }
    let minutes = match &local {
        LocalTime::Given(m) => {
            writeln!(out, "local time: {} (given)", clock(*m))?;
            Some(*m)
        }
        LocalTime::Zoned {
            minutes,
            zone,
            instant,
            now,
        } => {
            let when = if *now { "now" } else { "at" };
            writeln!(
                out,
                "local time: {} in {zone} ({when} {})",
                clock(*minutes),
                instant.strftime("%Y-%m-%dT%H:%M:%SZ")
            )?;
            Some(*minutes)
        }
        LocalTime::Unknown { why } => {
            writeln!(
                out,
                "local time: unknown ({why}): rules with `time` do not match"
            )?;
            None
        }
    };
    writeln!(out, "rules:      {source}")?;
    writeln!(out)?;
    let explained = set.explain(&PressContext {
        profile: &profile,
        button: &button,
        gesture,
        local_minutes: minutes,
        attributes: &attrs,
    });
    write!(out, "{explained}")?;
    if explained.decision.action == Action::Cancel {
        writeln!(
            out,
            "\nA cancel applies to the device's most recent open request of the last {} s ([rules] cancel_window_s).",
            cfg.rules.cancel_window_s
        )?;
    }
    Ok(())
}

/// The configured rules (or the built-in ones), refusing to explain with a set the gateway
/// would refuse.
fn load(cfg: &Config, out: &mut dyn Write) -> Result<(RuleSet, String), AdminError> {
    match crate::rules_source(cfg) {
        Some(dir) => match RuleSet::load_dir(&dir) {
            Ok(loaded) => {
                let files: Vec<&str> = loaded
                    .set
                    .files()
                    .iter()
                    .map(|f| f.rsplit('/').next().unwrap_or(f))
                    .collect();
                Ok((
                    loaded.set.clone(),
                    format!("{} ({})", dir.display(), files.join(", ")),
                ))
            }
            Err(e) => {
                writeln!(out, "{e}")?;
                Err(AdminError::Rules {
                    dir,
                    hint: "; fix them first (rules check)",
                    failed: e,
                })
            }
        },
        None => Ok((
            RuleSet::default_set(),
            "built-in (no rules directory)".into(),
        )),
    }
}

fn zone(
    cfg: &Config,
    args: &ExplainArgs,
    info: Option<&ResidentInfo>,
) -> Result<Option<(TimeZone, String)>, AdminError> {
    let named = |name: &str| -> Result<(TimeZone, String), AdminError> {
        TimeZone::get(name)
            .map(|z| (z, name.to_owned()))
            .map_err(|source| AdminError::Argument {
                message: format!(
                    "unknown time zone {name:?} (expected an IANA name such as Asia/Shanghai)"
                ),
                source,
            })
    };
    if let Some(tz) = &args.time_zone {
        return named(tz).map(Some);
    }
    if let Some(z) = info.and_then(|i| i.time_zone.clone()) {
        let name = z.iana_name().unwrap_or("the resident's zone").to_owned();
        return Ok(Some((z, name)));
    }
    if cfg.rules.time_zone.is_empty() {
        return Ok(None);
    }
    named(&cfg.rules.time_zone).map(Some)
}

fn local_time(
    at: Option<&str>,
    zone: Option<(TimeZone, String)>,
    now_ms: i64,
) -> Result<LocalTime, AdminError> {
    if let Some(text) = at {
        if let Some(m) = hh_mm(text) {
            return Ok(LocalTime::Given(m));
        }
    }
    let (instant, now) = match at {
        Some(text) => {
            let t = text
                .parse::<jiff::Timestamp>()
                .map_err(|source| AdminError::Argument {
                    message: format!(
                    "--at {text:?} must be RFC 3339 (2026-11-28T22:30:00+08:00) or the local HH:MM"
                ),
                    source,
                })?;
            (t, false)
        }
        None => (
            jiff::Timestamp::from_millisecond(now_ms).map_err(AdminError::Clock)?,
            true,
        ),
    };
    let Some((z, name)) = zone else {
        return Ok(LocalTime::Unknown {
            why: "no time zone: the resident has none and [rules] time_zone is empty".into(),
        });
    };
    let minutes = local_minutes_in(instant.as_millisecond(), &z).unwrap_or_default();
    Ok(LocalTime::Zoned {
        minutes,
        zone: name,
        instant,
        now,
    })
}

/// `HH:MM` on a 24-hour clock, as minutes since midnight.
fn hh_mm(text: &str) -> Option<u16> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

fn clock(m: u16) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// `true`/`false`, an integer, else text (quotes around text are dropped).
fn attr_value(v: &str) -> AttrValue {
    match v {
        "true" => AttrValue::Bool(true),
        "false" => AttrValue::Bool(false),
        _ => match v.parse::<i64>() {
            Ok(i) => AttrValue::Int(i),
            Err(_) => AttrValue::Text(v.trim_matches('"').to_owned()),
        },
    }
}
