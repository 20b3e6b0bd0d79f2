//! The CLI's subcommands other than `serve`: device registration, rule checks, configuration;
//! [`residents`] (import, show, bind) and [`explain`] (`rules explain`) beside this file.
//! They work on the same data directory as a running gateway (SQLite WAL allows it).

pub mod explain;
pub mod requests;
pub mod residents;

use crate::clock::{now_ms, rfc3339_ms};
use crate::config::{Config, ConfigError};
use crate::devices::{self, DEFAULT_PROFILE};
use crate::rules::{CheckFailed, RuleSet};
use crate::store::{self, Engine, NewDevice, StoreError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use yijian_wire::topic;

/// A CLI failure: its message is printed as is; the error underneath, if any, is its source.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// What was asked cannot be done (an unknown device, a bad argument, no journal): the
    /// message says why.
    #[error("{0}")]
    Refused(String),
    /// An argument does not parse; the message says what is expected.
    #[error("{message}")]
    Argument {
        /// What the user is told.
        message: String,
        /// What the parser said.
        #[source]
        source: jiff::Error,
    },
    /// The journal failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The output could not be written.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    /// The configuration file is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The rules do not pass their check (the errors are printed before this).
    #[error("{}: {} error(s){hint}", .dir.display(), .failed.errors.len())]
    Rules {
        /// The rules directory.
        dir: PathBuf,
        /// What to do about it, after the count (may be empty).
        hint: &'static str,
        /// Every error and warning.
        #[source]
        failed: CheckFailed,
    },
    /// The gateway's clock gives no valid time.
    #[error("clock: {0}")]
    Clock(#[source] jiff::Error),
}

/// The journal, which must exist already (commands that only read or change what is there
/// should not leave an empty journal behind a typo in `--data-dir`).
pub(crate) fn open_existing(cfg: &Config) -> Result<Arc<dyn Engine>, AdminError> {
    let path = cfg.db_path();
    if !path.exists() {
        return Err(AdminError::Refused(format!(
            "no journal at {} (wrong --data-dir? `devices add` or the gateway creates it)",
            path.display()
        )));
    }
    Ok(store::open_engine(&path)?)
}

fn profile_problem(p: &str) -> Option<&'static str> {
    let ok = !p.is_empty()
        && p.len() <= 64
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    (!ok).then_some("profile must be 1-64 characters of a-z, 0-9, '-' and '_'")
}

/// Refuses a profile the configured rules do not know (a typo such as `three-buttons`), naming
/// the ones they do. Rules that name no profile at all decide every profile alike: any goes.
///
/// NOTE: only `devices add`, a person typing: a profile no rule names is not an error in
/// itself (its presses go to the fallback), and bulk provisioning keeps its own contract.
fn known_profile(cfg: &Config, profile: &str) -> Result<(), AdminError> {
    let set = match crate::rules_source(cfg) {
        Some(dir) => match RuleSet::load_dir(&dir) {
            Ok(loaded) => loaded.set,
            // The gateway would refuse these rules anyway; `rules check` says why.
            Err(_) => return Ok(()),
        },
        None => RuleSet::default_set(),
    };
    let known = set.profiles();
    if known.is_empty() || known.iter().any(|k| k == profile) {
        return Ok(());
    }
    Err(AdminError::Refused(format!(
        "profile {profile:?} is not one the rules know ({}); a device of an unknown profile would send every press to the fallback rule",
        known.join(", ")
    )))
}

/// `devices add ID [--profile P] [--resident R] [--json]`: register a device and print its new
/// secret once.
pub fn devices_add(
    cfg: &Config,
    device_id: &str,
    profile: Option<&str>,
    resident: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    if let Some(p) = topic::device_id_problem(device_id) {
        return Err(AdminError::Refused(p));
    }
    let profile = profile.unwrap_or(DEFAULT_PROFILE);
    if let Some(p) = profile_problem(profile) {
        return Err(AdminError::Refused(p.into()));
    }
    known_profile(cfg, profile)?;
    if let Some(r) = resident {
        if r.is_empty() || r.len() > 64 || r.chars().any(char::is_control) {
            return Err(AdminError::Refused(
                "resident id must be 1-64 printable characters".into(),
            ));
        }
    }
    let journal = store::open_engine(&cfg.db_path())?;
    let secret = devices::new_secret();
    journal.add_devices(
        &[NewDevice {
            device_id: device_id.to_owned(),
            secret_sha256: devices::digest(&secret).to_vec(),
            profile: profile.to_owned(),
            resident_id: resident.map(str::to_owned),
        }],
        now_ms(),
    )?;
    let unknown_resident = match resident {
        Some(r) => journal.resident(r)?.is_none(),
        None => false,
    };
    if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"device_id": device_id, "secret": secret, "profile": profile, "resident_id": resident})
        )?;
    } else {
        writeln!(
            out,
            "registered device {device_id} (profile {profile}{})",
            resident
                .map(|r| format!(", resident {r}"))
                .unwrap_or_default()
        )?;
        writeln!(out, "secret: {secret}")?;
        writeln!(
            out,
            "The secret is shown only this once; it is stored as a SHA-256 digest."
        )?;
        writeln!(out, "The device connects with client id and username {device_id} and this secret as password.")?;
        if let (true, Some(r)) = (unknown_resident, resident) {
            writeln!(out, "Note: resident {r} is not on record yet; until it is imported (residents import FILE) presses are dispatched as resident_unknown.")?;
        }
    }
    Ok(())
}

/// `devices add-many --prefix P --count N [--profile P]`: register `{P}{1..=N}` in one
/// transaction and print one JSON line `{"device_id", "secret"}` per device (for simulators
/// and bulk provisioning; the secrets are shown only this once).
pub fn devices_add_many(
    cfg: &Config,
    prefix: &str,
    count: u32,
    profile: Option<&str>,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let profile = profile.unwrap_or(DEFAULT_PROFILE);
    if let Some(p) = profile_problem(profile) {
        return Err(AdminError::Refused(p.into()));
    }
    let last = format!("{prefix}{count}");
    if let Some(p) = topic::device_id_problem(&last) {
        return Err(AdminError::Refused(format!(
            "prefix gives invalid ids ({last}): {p}"
        )));
    }
    let journal = store::open_engine(&cfg.db_path())?;
    let mut lines = String::new();
    let mut new = Vec::with_capacity(count as usize);
    for i in 1..=count {
        let id = format!("{prefix}{i}");
        let secret = devices::new_secret();
        new.push(NewDevice {
            device_id: id.clone(),
            secret_sha256: devices::digest(&secret).to_vec(),
            profile: profile.to_owned(),
            resident_id: None,
        });
        lines.push_str(&serde_json::json!({"device_id": id, "secret": secret}).to_string());
        lines.push('\n');
    }
    journal.add_devices(&new, now_ms())?;
    out.write_all(lines.as_bytes())?;
    Ok(())
}

/// `devices list [--json]`.
pub fn devices_list(cfg: &Config, json: bool, out: &mut dyn Write) -> Result<(), AdminError> {
    let list = store::open_engine(&cfg.db_path())?.devices()?;
    if json {
        writeln!(out, "{}", serde_json::json!({"devices": list}))?;
        return Ok(());
    }
    if list.is_empty() {
        writeln!(
            out,
            "no devices registered in {} (add one with `yijian-gateway devices add ID`)",
            cfg.db_path().display()
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<24} {:<14} {:<12} {:<8} {:<24} REGISTERED",
        "DEVICE", "PROFILE", "RESIDENT", "ONLINE", "LAST SEEN"
    )?;
    for d in list {
        let online = match (d.revoked_at, d.online) {
            (Some(_), _) => "revoked",
            (None, Some(true)) => "yes",
            (None, Some(false)) => "no",
            (None, None) => "never",
        };
        writeln!(
            out,
            "{:<24} {:<14} {:<12} {:<8} {:<24} {}",
            d.device_id,
            d.profile,
            d.resident_id.as_deref().unwrap_or("-"),
            online,
            d.last_seen_at.map(rfc3339_ms).unwrap_or_else(|| "-".into()),
            rfc3339_ms(d.created_at)
        )?;
    }
    Ok(())
}

/// `rules check DIR`: every error with file:line:column; non-zero exit (Err) on any error.
pub fn rules_check(dir: &Path, out: &mut dyn Write) -> Result<(), AdminError> {
    match RuleSet::load_dir(dir) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                writeln!(out, "{w}")?;
            }
            writeln!(
                out,
                "{}: {} rules in {} file(s), fallback present{}",
                dir.display(),
                loaded.set.len(),
                loaded.set.files().len(),
                if loaded.warnings.is_empty() {
                    String::new()
                } else {
                    format!(", {} warning(s)", loaded.warnings.len())
                }
            )?;
            Ok(())
        }
        Err(e) => {
            writeln!(out, "{e}")?;
            Err(AdminError::Rules {
                dir: dir.to_owned(),
                hint: "",
                failed: e,
            })
        }
    }
}

/// `config check FILE`.
///
/// Also reports what `serve` would only find when it starts: a `token_env` variable that is
/// not set in this environment (check with the environment the gateway will have).
pub fn config_check(path: &Path, out: &mut dyn Write) -> Result<(), AdminError> {
    let cfg = Config::load(path)?;
    let missing = cfg.environment_problems(&|v| std::env::var(v).ok());
    if !missing.is_empty() {
        return Err(AdminError::Config(ConfigError {
            source_name: Some(format!(
                "{} (as `serve` would find it in this environment)",
                path.display()
            )),
            problems: missing,
        }));
    }
    writeln!(out, "{}: valid", path.display())?;
    let zone = if cfg.rules.time_zone.is_empty() {
        "none (local time unknown without a resident's own)"
    } else {
        &cfg.rules.time_zone
    };
    writeln!(
        out,
        "  rules: default time zone {zone}, cancel window {} s",
        cfg.rules.cancel_window_s
    )?;
    writeln!(
        out,
        "  contacts notified through: {}",
        cfg.notify
            .backend
            .as_deref()
            .unwrap_or("nobody ([notify] backend not set)")
    )?;
    for s in yijian_wire::Service::ALL {
        let r = cfg.route(*s);
        writeln!(
            out,
            "  {s}: {} (attempt timeout {} ms, deadline {} s)",
            r.backends.join(" → "),
            r.attempt_timeout.as_millis(),
            r.deadline.as_secs()
        )?;
    }
    Ok(())
}
