//! Device lifecycle after registration: show, rotate the secret, revoke. Shared by the CLI
//! (`yijian-gateway devices show|rotate|revoke ID`) and the admin API (`/api/v1/devices`).
//!
//! Both write the journal directly (the CLI from another process); the change is logged in
//! `device_changes` in the same transaction, and a running gateway drops the device's live
//! connection within a poll interval ([`crate::broker::evict`]). A new secret is shown once and
//! stored only as its SHA-256 digest.

use crate::clock::{now_ms, rfc3339_ms};
use crate::config::Config;
use crate::devices;
use crate::store::{self, CredentialChange, DeviceRecord, StoreError};
use std::io::Write;
use std::path::Path;

/// Why a lifecycle command failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// No such device.
    #[error("device {0} is not registered")]
    NotFound(String),
    /// Revoked devices stay revoked.
    #[error("device {0} is revoked; a revoked device cannot be changed (register a new id)")]
    Revoked(String),
    /// The journal said no.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Output could not be written.
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
}

fn outcome(c: CredentialChange, id: &str) -> Result<(), LifecycleError> {
    match c {
        CredentialChange::Done => Ok(()),
        CredentialChange::NotFound => Err(LifecycleError::NotFound(id.to_owned())),
        CredentialChange::Revoked => Err(LifecycleError::Revoked(id.to_owned())),
    }
}

/// Revoke `id` in the journal at `db`.
pub fn revoke(db: &Path, id: &str) -> Result<(), LifecycleError> {
    outcome(store::open_engine(db)?.revoke(id, now_ms())?, id)
}

/// Give `id` a new secret; returns it (the only time it is seen).
pub fn rotate(db: &Path, id: &str) -> Result<String, LifecycleError> {
    let secret = devices::new_secret();
    outcome(
        store::open_engine(db)?.rotate(id, &devices::digest(&secret), now_ms())?,
        id,
    )?;
    Ok(secret)
}

/// The registry's row for `id`.
pub fn show(db: &Path, id: &str) -> Result<DeviceRecord, LifecycleError> {
    store::open_engine(db)?
        .device(id)?
        .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))
}

/// `devices revoke ID`.
pub fn cli_revoke(cfg: &Config, id: &str, out: &mut dyn Write) -> Result<(), LifecycleError> {
    revoke(&cfg.db_path(), id)?;
    writeln!(
        out,
        "revoked device {id}: it can no longer connect, and a running gateway drops its connection"
    )?;
    Ok(())
}

/// `devices rotate ID [--json]`.
pub fn cli_rotate(
    cfg: &Config,
    id: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), LifecycleError> {
    let secret = rotate(&cfg.db_path(), id)?;
    if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"device_id": id, "secret": secret})
        )?;
    } else {
        writeln!(out, "new secret for device {id}: {secret}")?;
        writeln!(
            out,
            "The secret is shown only this once; it is stored as a SHA-256 digest."
        )?;
        writeln!(out, "The old secret no longer works, and a running gateway drops a connection made with it.")?;
    }
    Ok(())
}

/// `devices show ID [--json]`.
pub fn cli_show(
    cfg: &Config,
    id: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), LifecycleError> {
    let d = show(&cfg.db_path(), id)?;
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(&d).expect("records serialize")
        )?;
        return Ok(());
    }
    let time = |t: Option<i64>| t.map(rfc3339_ms).unwrap_or_else(|| "-".into());
    writeln!(out, "device      {}", d.device_id)?;
    writeln!(out, "profile     {}", d.profile)?;
    writeln!(
        out,
        "resident    {}",
        d.resident_id.as_deref().unwrap_or("-")
    )?;
    writeln!(out, "registered  {}", rfc3339_ms(d.created_at))?;
    writeln!(out, "revoked     {}", time(d.revoked_at))?;
    writeln!(
        out,
        "online      {}",
        match d.online {
            Some(true) => "yes",
            Some(false) => "no",
            None => "never seen",
        }
    )?;
    writeln!(out, "last seen   {}", time(d.last_seen_at))?;
    Ok(())
}
