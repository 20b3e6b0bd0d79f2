//! Metrics of the security controls (SECURITY.md): flood control, device lifecycle, API auth.
//! Same rules as the rest of [`crate::telemetry`]: names here, units in the name, no device id
//! or token name as a label.

use metrics::{counter, Unit};

/// Device connections closed for exceeding the per-connection message rate.
pub const DEVICES_FLOOD_DISCONNECTS_TOTAL: &str = "yijian_devices_flood_disconnects_total";
/// `{change}`: live device connections dropped after a revoke or rotate.
pub const DEVICES_EVICTIONS_TOTAL: &str = "yijian_devices_evictions_total";
/// `{backend,result}`: "pressed again" updates sent to backends.
pub const BACKEND_UPDATES_TOTAL: &str = "yijian_backend_updates_total";
/// `{result}`: HTTP API authorisation decisions (`ok`, `missing`, `invalid`, `forbidden`).
pub const API_AUTH_TOTAL: &str = "yijian_api_auth_total";

pub(super) fn describe() {
    use metrics::describe_counter as c;
    c!(
        DEVICES_FLOOD_DISCONNECTS_TOTAL,
        Unit::Count,
        "Device MQTT connections closed for exceeding the message rate limit."
    );
    c!(DEVICES_EVICTIONS_TOTAL, Unit::Count, "Live device connections dropped after the device was revoked or its secret rotated, by change.");
    c!(
        BACKEND_UPDATES_TOTAL,
        Unit::Count,
        "Pressed-again updates sent to the backend holding a request, by backend and result."
    );
    c!(
        API_AUTH_TOTAL,
        Unit::Count,
        "HTTP API authorisation decisions, by result (ok, missing, invalid, forbidden)."
    );
    counter!(DEVICES_FLOOD_DISCONNECTS_TOTAL).absolute(0);
    for c in ["revoked", "rotated"] {
        counter!(DEVICES_EVICTIONS_TOTAL, "change" => c).increment(0);
    }
    for r in ["ok", "missing", "invalid", "forbidden"] {
        counter!(API_AUTH_TOTAL, "result" => r).absolute(0);
    }
}

/// A device exceeded its message rate and its connection is being closed. Logged at warn: a
/// stuck button or a hostile device.
pub fn flood_disconnect(client_id: &str) {
    counter!(DEVICES_FLOOD_DISCONNECTS_TOTAL).increment(1);
    tracing::warn!(
        client_id,
        "MQTT connection closed: message rate limit exceeded"
    );
}

/// A device's live connection was dropped after a credential change: `revoked`, else its
/// secret was rotated. The caller reads the change from the journal; a bool keeps the label
/// set bounded without telemetry knowing the journal's spelling.
pub fn eviction(revoked: bool, device_id: &str) {
    let change = if revoked { "revoked" } else { "rotated" };
    counter!(DEVICES_EVICTIONS_TOTAL, "change" => change).increment(1);
    tracing::info!(
        device_id,
        change,
        "device connection dropped after a credential change"
    );
}

/// Register `backend`'s pressed-again update series at zero (it is configured), so the
/// scrape shows them before the first update.
pub fn backend_updates_known(backend: &str) {
    for r in ["accepted", "refused", "failed"] {
        counter!(BACKEND_UPDATES_TOTAL, "backend" => backend.to_owned(), "result" => r)
            .increment(0);
    }
}

/// A pressed-again update ended (`accepted`, `refused`, `failed`, `unknown_backend`).
pub fn backend_update(backend: &str, result: &'static str) {
    counter!(BACKEND_UPDATES_TOTAL, "backend" => backend.to_owned(), "result" => result)
        .increment(1);
}

/// An API request was authorised or refused. Refusals are logged at debug (a scanner could
/// otherwise flood the log); the token itself is never logged.
pub fn api_auth(result: &'static str, path: &str) {
    counter!(API_AUTH_TOTAL, "result" => result).increment(1);
    if result != "ok" {
        tracing::debug!(result, path, "API request refused");
    }
}
