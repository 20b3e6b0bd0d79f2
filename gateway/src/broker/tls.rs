//! The optional MQTT TLS listener (`[mqtt.tls]`, port 8883 by convention): rustls 0.23 — the
//! same rustls as the HTTP client, so the tree holds one — run through the vendored rumqttd's
//! `Handshake` hook (vendor/rumqttd/YIJIAN-PATCH.md), inside each connection's own task and
//! under `connect_timeout_ms`.
//!
//! With `client_ca` set, client certificates are verified against it (and required with
//! `require_client_cert`). A verified certificate's subject common name is the connection's
//! identity: [`crate::broker::Acl`] closes a connection whose CONNECT client id differs, so a
//! device's certificate and its secret must both belong to the same device.
//!
//! NOTE: rumqttd's own `verify-client-cert` feature was not used: it is compile-time (every
//! TLS listener must then demand certificates), takes the identity from the subject's O field,
//! which must be alphanumeric (device ids contain `-` and `_`), and renames the client
//! `{tenant}.{client_id}`, which would split a device's session between listeners.

use crate::config::TlsSettings;
use rumqttd::{Handshake, HandshakeFuture, N};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// The TLS handshake handed to rumqttd.
pub struct TlsHandshake {
    acceptor: TlsAcceptor,
}

/// Why the TLS listener cannot be set up; each names the file or step, and keeps the error
/// that rustls gave.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file (`cert`, `key`, `client_ca`) cannot be read or holds no valid PEM.
    #[error("[mqtt.tls]: {what} {}: {source}", .path.display())]
    Pem {
        /// Which setting named the file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What reading it found.
        #[source]
        source: pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error("[mqtt.tls]: {what} {}: no certificate in the file", .path.display())]
    NoCertificate {
        /// Which setting named the file.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A `client_ca` certificate cannot be a trust anchor.
    #[error("[mqtt.tls]: client_ca {}: {source}", .path.display())]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// Why rustls refused it.
        #[source]
        source: rustls::Error,
    },
    /// The client certificate verifier cannot be built from `client_ca`.
    #[error("[mqtt.tls]: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// rustls offers none of its safe protocol versions with this crypto provider.
    #[error("[mqtt.tls]: {0}")]
    Protocols(#[source] rustls::Error),
    /// The certificate chain and the key do not go together (or rustls refused either).
    #[error("[mqtt.tls]: cert/key: {0}")]
    CertKey(#[source] rustls::Error),
}

fn certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Pem {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

impl TlsHandshake {
    /// Read the certificate, key and client CA, and build the rustls configuration once.
    pub fn new(s: &TlsSettings) -> Result<TlsHandshake, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certs(&s.cert, "cert")?;
        let key = PrivateKeyDer::from_pem_file(&s.key).map_err(|source| TlsError::Pem {
            what: "key",
            path: s.key.clone(),
            source,
        })?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Protocols)?;
        let builder = match &s.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in certs(ca, "client_ca")? {
                    roots.add(c).map_err(|source| TlsError::ClientCa {
                        path: ca.clone(),
                        source,
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if s.require_client_cert {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(verifier.build().map_err(TlsError::Verifier)?)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(TlsError::CertKey)?;
        Ok(TlsHandshake {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

impl Handshake for TlsHandshake {
    fn accept(&self, stream: tokio::net::TcpStream) -> HandshakeFuture {
        let acceptor = self.acceptor.clone();
        Box::pin(async move {
            let tls = acceptor.accept(stream).await?;
            // Only a certificate rustls verified against client_ca is here. One without a
            // usable CN gets an identity no client id can equal.
            let identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| subject_common_name(c).unwrap_or_default());
            Ok((Box::new(tls) as Box<dyn N>, identity))
        })
    }
}

/// One DER element: (tag, contents, rest). `None` on anything malformed.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, v, r) = element(input)?;
    (t == tag).then_some((v, r))
}

/// The subject common name (OID 2.5.4.3) of a DER certificate; `None` when it has none, has
/// more than one, or is not a UTF8/Printable/IA5 string.
pub fn subject_common_name(der: &[u8]) -> Option<String> {
    const SEQ: u8 = 0x30;
    let (cert, _) = expect(der, SEQ)?;
    let (tbs, _) = expect(cert, SEQ)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = expect(rest, 0xa0)?.1; // [0] version
    }
    rest = expect(rest, 0x02)?.1; // serial number
    rest = expect(rest, SEQ)?.1; // signature algorithm
    rest = expect(rest, SEQ)?.1; // issuer
    rest = expect(rest, SEQ)?.1; // validity
    let (mut rdns, _) = expect(rest, SEQ)?; // subject
    let mut cn = None;
    while !rdns.is_empty() {
        let (mut set, r) = expect(rdns, 0x31)?;
        rdns = r;
        while !set.is_empty() {
            let (atv, r) = expect(set, SEQ)?;
            set = r;
            let (oid, value) = expect(atv, 0x06)?;
            if oid == [0x55, 0x04, 0x03] {
                let (tag, v, _) = element(value)?;
                if cn.is_some() || !matches!(tag, 0x0c | 0x13 | 0x16) {
                    return None;
                }
                cn = Some(std::str::from_utf8(v).ok()?.to_owned());
            }
        }
    }
    cn
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(dn: &[(rcgen::DnType, &str)]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in dn {
            params.distinguished_name.push(t.clone(), *v);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_common_name_is_found_among_other_attributes() {
        let der = cert_with(&[
            (rcgen::DnType::CountryName, "CN"),
            (rcgen::DnType::OrganizationName, "Yijian devices"),
            (rcgen::DnType::CommonName, "grandma-1_b"),
        ]);
        assert_eq!(subject_common_name(&der).as_deref(), Some("grandma-1_b"));
    }

    #[test]
    fn no_common_name_is_none() {
        let der = cert_with(&[(rcgen::DnType::OrganizationName, "x")]);
        assert_eq!(subject_common_name(&der), None);
    }

    #[test]
    fn garbage_never_panics() {
        let der = cert_with(&[(rcgen::DnType::CommonName, "d1")]);
        for cut in 0..der.len() {
            let _ = subject_common_name(&der[..cut]);
        }
        let mut flipped = der.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = subject_common_name(&flipped);
            flipped[i] ^= 0xff;
        }
        assert_eq!(subject_common_name(&[]), None);
        assert_eq!(
            subject_common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }
}
