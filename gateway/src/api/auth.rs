//! Who is calling the HTTP API: the table of known bearer tokens, each with its role
//! (`config::Role`). Which role each endpoint needs is [`super::access`]'s.
//!
//! Tokens come from the configuration (`[[api.tokens]]`, each a SHA-256 digest or the name of
//! an environment variable holding the token) and from the admin token file the default
//! configuration generates on first start. Only digests are kept in memory, every presented
//! token is hashed and compared with every known digest in constant time, and no token is ever
//! logged.

use crate::config::{ApiConfig, Role};
use crate::devices;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// One known token: its digest and who holds it.
struct Known {
    digest: [u8; 32],
    caller: Caller,
}

/// Who is calling, once their token checked out. Handlers read it from request extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name.
    pub name: Arc<str>,
    /// Its role.
    pub role: Role,
    /// For role `backend`: the backend it speaks for.
    pub backend: Option<Arc<str>>,
}

/// The token table and the open/closed switches; built once at start.
pub struct Auth {
    known: Vec<Known>,
    metrics_open: bool,
}

/// Where the generated admin token lives.
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.token")
}

impl Auth {
    /// Resolve the configured tokens (reading `token_env` variables) and the admin token file.
    /// Every problem is reported at once.
    pub fn load(cfg: &ApiConfig, data_dir: &Path) -> Result<Auth, Vec<String>> {
        let mut known = Vec::new();
        let mut problems = Vec::new();
        for t in &cfg.tokens {
            let digest = match (&t.sha256, &t.token_env) {
                (Some(h), _) => match hex::decode(h)
                    .ok()
                    .and_then(|d| <[u8; 32]>::try_from(d).ok())
                {
                    Some(d) => d,
                    None => {
                        problems.push(format!(
                            "[[api.tokens]] {:?}: sha256 must be 64 hex digits",
                            t.name
                        ));
                        continue;
                    }
                },
                (None, Some(var)) => {
                    match std::env::var(var) {
                        Ok(v) if v.len() >= 16 => devices::digest(&v),
                        Ok(_) => {
                            problems.push(format!("[[api.tokens]] {:?}: the token in {var} is shorter than 16 characters", t.name));
                            continue;
                        }
                        Err(_) => {
                            problems.push(format!("[[api.tokens]] {:?}: environment variable {var} (token_env) is not set", t.name));
                            continue;
                        }
                    }
                }
                (None, None) => continue,
            };
            known.push(Known {
                digest,
                caller: Caller {
                    name: t.name.as_str().into(),
                    role: t.role,
                    backend: t.backend.as_deref().map(Into::into),
                },
            });
        }
        if cfg.admin_token_file {
            match ensure_admin_token(&admin_token_path(data_dir)) {
                Ok(token) => known.push(Known {
                    digest: devices::digest(&token),
                    caller: Caller {
                        name: "admin.token".into(),
                        role: Role::Admin,
                        backend: None,
                    },
                }),
                Err(e) => problems.push(e),
            }
        }
        if problems.is_empty() {
            Ok(Auth {
                known,
                metrics_open: cfg.metrics_open,
            })
        } else {
            Err(problems)
        }
    }

    /// Whether `/metrics` takes no token (`[api] metrics_open`).
    pub fn metrics_open(&self) -> bool {
        self.metrics_open
    }

    /// Who holds `token`, if anyone. Hashes once and compares with every digest, without an
    /// early exit, so the time taken does not tell which entry matched or how many bytes did.
    pub fn identify(&self, token: &str) -> Option<&Caller> {
        let d = devices::digest(token);
        let mut found = None;
        for k in &self.known {
            if bool::from(k.digest.ct_eq(&d)) {
                found = Some(&k.caller);
            }
        }
        found
    }
}

/// Read the admin token file, creating it (mode 0600, a fresh 128-bit token) when absent.
/// Logs where it is, never what it holds.
fn ensure_admin_token(path: &Path) -> Result<String, String> {
    use std::io::Write;
    match std::fs::read_to_string(path) {
        Ok(t) => {
            check_private(path);
            let t = t.trim().to_owned();
            if t.len() < 16 {
                return Err(format!(
                    "{}: the admin token must be at least 16 characters",
                    path.display()
                ));
            }
            tracing::info!(path = %path.display(), "admin API token read from file");
            return Ok(t);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!(
                "cannot read the admin token file {}: {e}",
                path.display()
            ))
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let token = devices::new_secret();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| format!("cannot create the admin token file {}: {e}", path.display()))?;
    writeln!(f, "{token}")
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write the admin token file {}: {e}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        "generated an admin API token (file mode 0600); use it as `Authorization: Bearer <token>`"
    );
    Ok(token)
}

/// Warn when the token file is readable by others.
fn check_private(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path) {
            if m.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the admin token file is readable by other users; chmod 600 it");
            }
        }
    }
}

/// A new random API token and its digest, for `yijian-gateway tokens new`.
pub fn new_token() -> (String, String) {
    let t = devices::new_secret();
    let d = hex::encode(devices::digest(&t));
    (t, d)
}

/// The configuration snippet declaring a token (by digest).
pub fn token_snippet(name: &str, role: Role, backend: Option<&str>, sha256: &str) -> String {
    let mut s = format!(
        "[[api.tokens]]\nname = {name:?}\nrole = {:?}\n",
        role.as_str()
    );
    if let Some(b) = backend {
        s.push_str(&format!("backend = {b:?}\n"));
    }
    s.push_str(&format!("sha256 = {sha256:?}\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth_with(tokens: &[(&str, Role, Option<&str>, &str)]) -> Auth {
        Auth {
            known: tokens
                .iter()
                .map(|(n, r, b, t)| Known {
                    digest: devices::digest(t),
                    caller: Caller {
                        name: (*n).into(),
                        role: *r,
                        backend: b.map(Into::into),
                    },
                })
                .collect(),
            metrics_open: true,
        }
    }

    #[test]
    fn tokens_identify_their_holder_only() {
        let a = auth_with(&[
            ("desk", Role::Operator, None, "op-token-0123456789"),
            ("rc", Role::Backend, Some("rescue"), "be-token-0123456789"),
        ]);
        assert_eq!(
            a.identify("op-token-0123456789").unwrap().name.as_ref(),
            "desk"
        );
        assert_eq!(
            a.identify("be-token-0123456789")
                .unwrap()
                .backend
                .as_deref(),
            Some("rescue")
        );
        assert!(a.identify("op-token-012345678").is_none());
        assert!(a.identify("").is_none());
    }

    #[test]
    fn the_admin_token_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = admin_token_path(dir.path());
        let t1 = ensure_admin_token(&path).unwrap();
        let t2 = ensure_admin_token(&path).unwrap();
        assert_eq!(t1, t2, "generated once, then read");
        assert_eq!(t1.len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
