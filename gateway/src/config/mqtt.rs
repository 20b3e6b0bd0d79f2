//! `[mqtt]` and `[mqtt.tls]`: where devices reach the embedded broker. The TLS handshake
//! built from these settings is the broker's (`broker::tls`); only the settings live here.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// `[mqtt]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Where the embedded broker listens.
    #[serde(default = "default_mqtt_listen")]
    pub listen: SocketAddr,
    /// Largest MQTT packet accepted; larger ones close the connection.
    #[serde(default = "default_max_payload")]
    pub max_payload_size: usize,
    /// Most simultaneous connections.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time allowed between TCP accept and MQTT CONNECT, in milliseconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u16,
    /// The optional TLS listener for devices.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
}

fn default_mqtt_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1883))
}
fn default_max_payload() -> usize {
    16 * 1024
}
fn default_max_connections() -> usize {
    200_000
}
fn default_connect_timeout() -> u16 {
    10_000
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: default_mqtt_listen(),
            max_payload_size: default_max_payload(),
            max_connections: default_max_connections(),
            connect_timeout_ms: default_connect_timeout(),
            tls: None,
        }
    }
}

/// `[mqtt.tls]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// Where the TLS listener listens (8883 by convention).
    pub listen: SocketAddr,
    /// PEM file: the broker's certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file: the broker's private key.
    pub key: PathBuf,
    /// PEM file: the CA certificate(s) that sign device certificates. When set, a presented
    /// client certificate is verified, and its subject CN must equal the device id.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: refuse a device that presents no certificate.
    #[serde(default)]
    pub require_client_cert: bool,
    /// Devices may still use the plain listener (`[mqtt] listen`), which then serves only the
    /// gateway's own connections when false.
    #[serde(default)]
    pub plaintext_devices: bool,
}

impl TlsSettings {
    /// Every problem with these settings, checked without reading the files.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.require_client_cert && self.client_ca.is_none() {
            p.push("[mqtt.tls]: require_client_cert needs client_ca (the CA that signs device certificates)".into());
        }
        p
    }
}
