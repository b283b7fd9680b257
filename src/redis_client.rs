//! The Redis that several daemons share (SPEC §10): sessions and failed-attempt
//! counters live there so a load balancer may send any request to any daemon.
//!
//! One multiplexed connection (the `redis` crate's `ConnectionManager`, which
//! reconnects by itself) carries every command; short timeouts make a dead or hung
//! Redis a quick `503` instead of requests piling up behind it. Nothing here ever
//! prints the URL: it may carry a password.

use std::path::Path;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::{Client, RedisError, TlsCertificates};

/// How long one command may take before the request it serves gets `503`.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a (re)connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// Redis could not answer; the request that needed it gets `503`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the shared session store (Redis) is unavailable: {0}")]
pub struct Unavailable(pub String);

impl From<RedisError> for Unavailable {
    fn from(e: RedisError) -> Self {
        Unavailable(e.to_string())
    }
}

#[derive(Clone)]
pub struct RedisClient {
    client: Client,
    conn: ConnectionManager,
    prefix: std::sync::Arc<str>,
}

impl RedisClient {
    /// A client for `url` (`redis://` or `rediss://`), trusting `ca_cert` for TLS
    /// when given (else the system's roots). Connects lazily, so a daemon whose
    /// Redis is down starts and answers `503` until it comes up. Must run inside
    /// the tokio runtime.
    pub fn open(url: &str, ca_cert: Option<&Path>, prefix: &str) -> Result<Self, String> {
        let client = match ca_cert {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    format!(
                        "security.session_redis_ca_cert {}: cannot read: {e}",
                        path.display()
                    )
                })?;
                let certs: Vec<_> = rustls_pki_types::pem::PemObject::pem_slice_iter(&pem)
                    .collect::<Result<Vec<rustls_pki_types::CertificateDer>, _>>()
                    .map_err(|e| {
                        format!(
                            "security.session_redis_ca_cert {}: not PEM certificates: {e}",
                            path.display()
                        )
                    })?;
                if certs.is_empty() {
                    return Err(format!(
                        "security.session_redis_ca_cert {}: no certificate in the file",
                        path.display()
                    ));
                }
                Client::build_with_tls(
                    url,
                    TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
            None => Client::open(url),
        }
        .map_err(|e| format!("security.session_redis_url: {}", e.kind_description()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = client
            .get_connection_manager_lazy(config)
            .map_err(|e| format!("security.session_redis_url: {}", e.kind_description()))?;
        Ok(RedisClient {
            client,
            conn,
            prefix: prefix.into(),
        })
    }

    /// The shared connection; cheap to clone, commands from clones are pipelined.
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// `security.session_redis_prefix` followed by `rest`.
    pub fn key(&self, rest: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + rest.len());
        k.push_str(&self.prefix);
        k.push_str(rest);
        k
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A dedicated connection for subscriptions (a subscribed connection can run
    /// no other command).
    pub async fn pubsub(&self) -> Result<PubSub, Unavailable> {
        let connect = self.client.get_async_pubsub();
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(Unavailable("connection timed out".into())),
        }
    }
}

trait KindDescription {
    fn kind_description(&self) -> String;
}

impl KindDescription for RedisError {
    /// The error without its detail, which for a URL parse error may quote the URL.
    fn kind_description(&self) -> String {
        format!("{:?}", self.kind())
    }
}
