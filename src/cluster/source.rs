//! Where this node's Redis is: one address (plain TCP, TLS or a Unix socket), or the primary
//! that Sentinel names. Every task that connects (publisher, subscriber, presence) asks this
//! for a client at every (re)connect, so with Sentinel a failover is followed without a
//! restart: the dead primary's connections fail, the tasks reconnect, and Sentinel names the
//! promoted replica (checked with `ROLE` before it is used).

use std::sync::{Arc, Mutex};

use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, TlsCertificates, TlsMode};

use super::link::REDIS_TIMEOUT;
use crate::config::{RedisTarget, TlsMaterial};
use crate::telemetry::metrics::{BackplaneOp, Metrics};

/// Hands out clients for the backplane's Redis.
pub(crate) struct Source {
    kind: Kind,
    /// What the start log line says about the target (no secrets).
    description: String,
    /// The primary last handed out (`host:port`), so a switch is counted and logged once.
    primary: Mutex<String>,
    metrics: Arc<Metrics>,
}

enum Kind {
    Direct(redis::Client),
    /// Asked under a lock: the three tasks reconnecting at once ask one after another, and
    /// the Sentinel client keeps its connections to the Sentinels between lookups.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

fn certificates(tls: &TlsMaterial) -> TlsCertificates {
    TlsCertificates {
        client_tls: tls.client.as_ref().map(|(cert, key)| ClientTlsConfig {
            client_cert: cert.clone(),
            client_key: key.clone(),
        }),
        root_cert: Some(tls.roots_pem.clone()),
    }
}

impl Source {
    /// Builds the clients (no connection yet). `target` is validated at load.
    pub fn new(target: RedisTarget, metrics: Arc<Metrics>) -> redis::RedisResult<Self> {
        let mut info = target.url.as_str().into_connection_info()?;
        if let Some(password) = &target.password {
            let redis = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(redis);
        }
        let scheme = if target.tls.is_some() { "TLS" } else { "plain" };
        let roots = target.tls.as_ref().map_or(String::new(), |t| {
            format!(
                ", {} system and {} configured root certificates{}",
                t.system_roots,
                t.file_roots,
                if t.client.is_some() {
                    ", client certificate"
                } else {
                    ""
                }
            )
        });
        let user = info
            .redis_settings()
            .username()
            .map_or(String::new(), |u| format!(", user {u}"));
        let (kind, description, primary) = match target.sentinel {
            None => {
                let client = match &target.tls {
                    Some(tls) => redis::Client::build_with_tls(info, certificates(tls))?,
                    None => redis::Client::open(info)?,
                };
                let address = client.get_connection_info().addr().to_string();
                let description = format!("{address} ({scheme}{user}{roots})");
                (Kind::Direct(client), description, address)
            }
            Some(sentinel) => {
                let tls = target.tls.is_some();
                let addresses = sentinel.addresses.iter().map(|(host, port)| {
                    if tls {
                        ConnectionAddr::TcpTls {
                            host: host.clone(),
                            port: *port,
                            insecure: false,
                            tls_params: None,
                        }
                    } else {
                        ConnectionAddr::Tcp(host.clone(), *port)
                    }
                });
                let redis = info.redis_settings();
                let mut builder = SentinelClientBuilder::new(
                    addresses,
                    &sentinel.master,
                    SentinelServerType::Master,
                )?
                .set_client_to_redis_db(redis.db());
                if let Some(user) = redis.username() {
                    builder = builder.set_client_to_redis_username(user);
                }
                if let Some(password) = redis.password() {
                    builder = builder.set_client_to_redis_password(password);
                }
                if let Some(material) = &target.tls {
                    builder = builder
                        .set_client_to_redis_tls_mode(TlsMode::Secure)
                        .set_client_to_redis_certificates(certificates(material))
                        .set_client_to_sentinel_tls_mode(TlsMode::Secure)
                        .set_client_to_sentinel_certificates(certificates(material));
                }
                let description = format!(
                    "the primary {:?} named by {} Sentinel(s) ({scheme}{user}{roots})",
                    sentinel.master,
                    sentinel.addresses.len()
                );
                let client = tokio::sync::Mutex::new(builder.build()?);
                (Kind::Sentinel(client), description, String::new())
            }
        };
        Ok(Self {
            kind,
            description,
            primary: Mutex::new(primary),
            metrics,
        })
    }

    /// Whether the primary is found through Sentinel (and may change).
    pub fn follows_failover(&self) -> bool {
        matches!(self.kind, Kind::Sentinel(_))
    }

    /// What the node connects to, for its start log line.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// A client for the primary, asked of Sentinel when there is one (a failed lookup is
    /// counted as a `sentinel` error).
    pub async fn client(&self) -> redis::RedisResult<redis::Client> {
        let sentinel = match &self.kind {
            Kind::Direct(client) => return Ok(client.clone()),
            Kind::Sentinel(sentinel) => sentinel,
        };
        let lookup = async { sentinel.lock().await.async_get_client().await };
        let client = match tokio::time::timeout(REDIS_TIMEOUT * 2, lookup).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                self.metrics.backplane_error(BackplaneOp::Sentinel);
                return Err(e);
            }
            Err(_) => {
                self.metrics.backplane_error(BackplaneOp::Sentinel);
                return Err(super::link::timeout_error("Sentinel lookup"));
            }
        };
        self.note_primary(client.get_connection_info().addr().to_string());
        Ok(client)
    }

    /// Counts and logs a primary other than the last one handed out (the first is logged
    /// only).
    fn note_primary(&self, address: String) {
        let mut primary = self.primary.lock().unwrap_or_else(|p| p.into_inner());
        if *primary == address {
            return;
        }
        if primary.is_empty() {
            tracing::info!(target: "wsmon", primary = %address, "backplane: Sentinel names the primary");
        } else {
            self.metrics.backplane_primary_switches.increment(1);
            tracing::warn!(
                target: "wsmon",
                previous = %primary,
                primary = %address,
                "backplane: Sentinel names a new primary; publishing, subscribing and presence \
                 move to it"
            );
        }
        *primary = address;
    }
}
