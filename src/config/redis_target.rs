//! How to reach the backplane's Redis, resolved from `cluster.*`: the URL (or the file holding
//! it), a password file, TLS material for `rediss://` (the system roots plus
//! `cluster.redis_ca_file`, an optional client certificate) and Sentinel. Files are read and
//! certificates parsed here, once at load (so `--check-config` catches a bad one) and once when
//! the cluster starts and builds its clients from the result.

use std::path::Path;

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::ClusterSettings;

/// Where the backplane's Redis is and how to reach it. Holds secrets: no `Debug`.
pub struct RedisTarget {
    /// The URL: scheme, user, password, db, and (without Sentinel) host and port.
    pub url: String,
    /// From `cluster.redis_password_file`; replaces the URL's password.
    pub password: Option<String>,
    /// For `rediss://`: what to trust and what to present.
    pub tls: Option<TlsMaterial>,
    /// The primary is the one Sentinel names.
    pub sentinel: Option<SentinelTarget>,
}

/// Sentinel addresses and the primary's name in them.
pub struct SentinelTarget {
    pub addresses: Vec<(String, u16)>,
    pub master: String,
}

/// Certificates for `rediss://`, as PEM.
pub struct TlsMaterial {
    /// The system roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` when set), then `redis_ca_file`'s.
    pub roots_pem: Vec<u8>,
    pub system_roots: usize,
    pub file_roots: usize,
    /// Client certificate chain and key, for mutual TLS.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

/// A key and what is wrong with it.
type Invalid = (String, String);

fn invalid(key: &str, message: impl Into<String>) -> Invalid {
    (format!("cluster.{key}"), message.into())
}

fn read(key: &str, path: &str) -> Result<Vec<u8>, Invalid> {
    std::fs::read(Path::new(path)).map_err(|e| invalid(key, format!("cannot read {path}: {e}")))
}

/// A secret from a file: the first line, without its line ending.
fn read_secret(key: &str, path: &str) -> Result<String, Invalid> {
    let bytes = read(key, path)?;
    let text = String::from_utf8(bytes).map_err(|_| invalid(key, "not UTF-8"))?;
    let line = text.lines().next().unwrap_or("").trim().to_owned();
    if line.is_empty() {
        return Err(invalid(key, format!("{path} is empty")));
    }
    Ok(line)
}

fn certificates(key: &str, pem: &[u8]) -> Result<usize, Invalid> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(key, "holds no PEM certificate"));
    }
    Ok(certs.len())
}

/// The system's trusted roots as PEM, and how many; a root store that cannot be read is logged
/// by the caller through the count (0), never a reason to trust less than what was read.
fn system_roots_pem() -> (Vec<u8>, usize) {
    let loaded = rustls_native_certs::load_native_certs();
    let mut pem = Vec::new();
    for cert in &loaded.certs {
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        let encoded = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        for line in encoded.as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    (pem, loaded.certs.len())
}

impl ClusterSettings {
    /// Resolves how to reach Redis: reads the files and checks what they hold.
    pub fn redis_target(&self) -> Result<RedisTarget, Invalid> {
        let url = match (self.redis_url.is_empty(), self.redis_url_file.is_empty()) {
            (false, false) => {
                return Err(invalid(
                    "redis_url_file",
                    "set cluster.redis_url or cluster.redis_url_file, not both",
                ))
            }
            (true, false) => read_secret("redis_url_file", &self.redis_url_file)?,
            (false, true) => self.redis_url.clone(),
            // Sentinel alone: plain TCP, no user, db 0.
            (true, true) => "redis://sentinel-primary".to_owned(),
        };
        let key = if self.redis_url_file.is_empty() {
            "redis_url"
        } else {
            "redis_url_file"
        };
        let tls = url.starts_with("rediss://");
        if !(tls || url.starts_with("redis://") || url.starts_with("redis+unix://")) {
            return Err(invalid(
                key,
                "must start with redis://, rediss:// or redis+unix:// (or be empty for a single node)",
            ));
        }
        if let Err(e) = redis::Client::open(url.as_str()) {
            return Err(invalid(key, format!("not a Redis URL: {e}")));
        }
        let password = match self.redis_password_file.as_str() {
            "" => None,
            path => Some(read_secret("redis_password_file", path)?),
        };
        let tls_files = [
            ("redis_ca_file", &self.redis_ca_file),
            ("redis_client_cert_file", &self.redis_client_cert_file),
            ("redis_client_key_file", &self.redis_client_key_file),
        ];
        if !tls {
            if let Some((key, _)) = tls_files.iter().find(|(_, v)| !v.is_empty()) {
                return Err(invalid(key, "only with a rediss:// URL"));
            }
        }
        let tls = tls.then(|| self.tls_material()).transpose()?;
        let sentinel = self.sentinel_target(&url)?;
        Ok(RedisTarget {
            url,
            password,
            tls,
            sentinel,
        })
    }

    fn tls_material(&self) -> Result<TlsMaterial, Invalid> {
        let (mut roots_pem, system_roots) = system_roots_pem();
        let mut file_roots = 0;
        if !self.redis_ca_file.is_empty() {
            let pem = read("redis_ca_file", &self.redis_ca_file)?;
            file_roots = certificates("redis_ca_file", &pem)?;
            roots_pem.extend_from_slice(&pem);
        }
        if system_roots + file_roots == 0 {
            return Err(invalid(
                "redis_ca_file",
                "no trusted root certificates: the system has none, so name the CA here",
            ));
        }
        let client = match (
            self.redis_client_cert_file.as_str(),
            self.redis_client_key_file.as_str(),
        ) {
            ("", "") => None,
            ("", _) | (_, "") => {
                return Err(invalid(
                    "redis_client_cert_file",
                    "set cluster.redis_client_cert_file and cluster.redis_client_key_file together",
                ))
            }
            (cert, key) => {
                let cert = read("redis_client_cert_file", cert)?;
                certificates("redis_client_cert_file", &cert)?;
                let key_pem = read("redis_client_key_file", key)?;
                PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| invalid("redis_client_key_file", format!("no PEM key: {e}")))?;
                Some((cert, key_pem))
            }
        };
        Ok(TlsMaterial {
            roots_pem,
            system_roots,
            file_roots,
            client,
        })
    }

    fn sentinel_target(&self, url: &str) -> Result<Option<SentinelTarget>, Invalid> {
        if self.sentinels.is_empty() {
            if !self.sentinel_master.is_empty() {
                return Err(invalid("sentinel_master", "only with cluster.sentinels"));
            }
            return Ok(None);
        }
        if url.starts_with("redis+unix://") {
            return Err(invalid(
                "sentinels",
                "Sentinel names TCP addresses, not a socket",
            ));
        }
        if self.sentinel_master.is_empty() {
            return Err(invalid(
                "sentinel_master",
                "required with cluster.sentinels: the name Sentinel monitors the primary under",
            ));
        }
        let addresses = self
            .sentinels
            .iter()
            .map(|a| {
                let (host, port) = a.rsplit_once(':').unwrap_or((a, ""));
                match port.parse::<u16>() {
                    Ok(port) if !host.is_empty() && port > 0 => {
                        Ok((host.trim_matches(['[', ']']).to_owned(), port))
                    }
                    _ => Err(invalid("sentinels", format!("{a:?} is not host:port"))),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(SentinelTarget {
            addresses,
            master: self.sentinel_master.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(f: impl FnOnce(&mut ClusterSettings)) -> ClusterSettings {
        let mut s = ClusterSettings::default();
        f(&mut s);
        s
    }

    fn key_of(s: &ClusterSettings) -> String {
        match s.redis_target() {
            Ok(_) => "ok".into(),
            Err((key, _)) => key,
        }
    }

    #[test]
    fn each_mistake_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        let cases: Vec<(ClusterSettings, &str)> = vec![
            (
                settings(|s| s.redis_url = "http://x".into()),
                "cluster.redis_url",
            ),
            (
                settings(|s| {
                    s.redis_url = "redis://a".into();
                    s.redis_url_file = path(&empty);
                }),
                "cluster.redis_url_file",
            ),
            (
                settings(|s| s.redis_url_file = path(&empty)),
                "cluster.redis_url_file",
            ),
            (
                settings(|s| s.redis_url_file = "/nonexistent/url".into()),
                "cluster.redis_url_file",
            ),
            (
                settings(|s| {
                    s.redis_url = "redis://a".into();
                    s.redis_ca_file = path(&not_pem);
                }),
                "cluster.redis_ca_file",
            ),
            (
                settings(|s| {
                    s.redis_url = "rediss://a".into();
                    s.redis_ca_file = path(&not_pem);
                }),
                "cluster.redis_ca_file",
            ),
            (
                settings(|s| {
                    s.redis_url = "rediss://a".into();
                    s.redis_client_key_file = path(&not_pem);
                }),
                "cluster.redis_client_cert_file",
            ),
            (
                settings(|s| {
                    s.redis_url = "redis://a".into();
                    s.redis_password_file = path(&empty);
                }),
                "cluster.redis_password_file",
            ),
            (
                settings(|s| s.sentinels = vec!["127.0.0.1:26379".into()]),
                "cluster.sentinel_master",
            ),
            (
                settings(|s| {
                    s.sentinels = vec!["no-port".into()];
                    s.sentinel_master = "m".into();
                }),
                "cluster.sentinels",
            ),
            (
                settings(|s| {
                    s.redis_url = "redis://a".into();
                    s.sentinel_master = "m".into();
                }),
                "cluster.sentinel_master",
            ),
            (settings(|s| s.redis_url = "redis://a:1/2".into()), "ok"),
            (
                settings(|s| {
                    s.sentinels = vec!["127.0.0.1:26379".into(), "[::1]:26380".into()];
                    s.sentinel_master = "m".into();
                }),
                "ok",
            ),
        ];
        for (s, expected) in cases {
            assert_eq!(key_of(&s), expected, "{s:?}");
        }
    }

    #[test]
    fn secrets_come_from_their_files_and_the_ca_adds_to_the_system_roots() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("url");
        std::fs::write(&url, "rediss://wsmon:from-file@redis.internal:6380/2\n").unwrap();
        let password = dir.path().join("password");
        std::fs::write(&password, "s3cret\r\n").unwrap();
        let ca = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["ca".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&ca, cert.pem()).unwrap();
        let s = settings(|s| {
            s.redis_url_file = url.to_str().unwrap().into();
            s.redis_password_file = password.to_str().unwrap().into();
            s.redis_ca_file = ca.to_str().unwrap().into();
        });
        let target = s.redis_target().unwrap();
        assert_eq!(target.url, "rediss://wsmon:from-file@redis.internal:6380/2");
        assert_eq!(target.password.as_deref(), Some("s3cret"));
        let tls = target.tls.unwrap();
        assert_eq!(tls.file_roots, 1);
        let parsed = CertificateDer::pem_slice_iter(&tls.roots_pem).count();
        assert_eq!(parsed, tls.system_roots + 1);
    }
}
