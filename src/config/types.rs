//! The typed configuration: one `serde` struct per section of SPEC §3.
//!
//! Field names are the key names of the registry ([`super::keys`]); every struct
//! refuses unknown fields, so a key registered without a field (or the reverse) fails
//! the first load (the unit tests load the defaults). Values reach these structs only
//! after the registry checked their kind, so a deserialization error here is a bug.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::auth::Mechanism;
use crate::auth::certificate::PkiUserField;
use crate::auth::oidc;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `--dev` (or no configuration file at all): not a key.
    #[serde(skip)]
    pub dev: bool,
    pub system: System,
    pub ssl: Ssl,
    pub security: Security,
    pub log: Log,
    /// The policy front (SPEC §12): `/v1/authorize` and the browser login.
    pub forward: Forward,
}

/// `forward.*` (SPEC §12).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    /// `"<regex>:<VERBS>"` (verbs comma-separated or `*`): no identity needed.
    pub public_uris: Vec<String>,
    /// `<label or group>: r:<resource regex>:<verbs>` / `h:<header>:<value>` lines.
    pub rules_file: Option<PathBuf>,
    /// The user header's value on a public URI without identity.
    pub anonymous_value: String,
    pub header_user: String,
    pub header_groups: String,
    pub header_labels: String,
    /// The daemon's URL as browsers reach it (the OIDC callback, redirects);
    /// from the request's `Host` when unset.
    pub public_url: Option<String>,
    /// `Domain` of the `portcullis_session` cookie (host-only when unset).
    pub cookie_domain: Option<String>,
    /// Hosts `rd` may send a browser back to after a login; anything else goes to `/`.
    pub allowed_redirect_hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct System {
    pub listen: Vec<SocketAddr>,
    pub hostname: String,
    pub state_dir: PathBuf,
    pub max_connections: usize,
    pub blocking_threads: usize,
    pub blocking_queue_timeout: u64,
    pub handshake_timeout: u64,
    pub request_timeout: u64,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub shutdown_timeout: u64,
    /// Close a connection with no request in progress after this long (SPEC §9).
    pub idle_timeout: u64,
    /// Connections one client address (IPv6: its /64) may hold open at once.
    pub max_connections_per_address: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    None,
    Optional,
    Required,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ssl {
    pub enabled: bool,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub crl_files: Vec<PathBuf>,
    /// The floor; `1.3` refuses TLS 1.2 clients.
    pub min_version: TlsVersion,
    /// Accept certificate logins although a CRL is past its nextUpdate.
    pub crl_allow_expired: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Security {
    pub mechanisms: Vec<Mechanism>,
    pub pam_service: String,
    pub use_kerberos: bool,
    pub server_krb_principal: Option<String>,
    pub krb_keytab: String,
    pub krb_realms: Vec<String>,
    pub krb_allow_instances: bool,
    pub pki_user_field: PkiUserField,
    /// With `pki_user_field = email`: the domains whose addresses may log in.
    pub pki_email_domains: Vec<String>,
    pub session_ttl: u64,
    pub session_idle_timeout: u64,
    pub labelfile: Option<PathBuf>,
    pub grouplabelfile: Option<PathBuf>,
    pub default_labels: Vec<String>,
    pub group_cache_ttl: u64,
    pub max_failed_attempts: u64,
    pub failed_attempt_window: u64,
    pub pam_conversation_timeout: u64,
    /// PAM conversations that may wait for an answer at once (2 per address).
    pub pam_max_conversations: usize,
    /// Relay `pam_chauthtok` when PAM says the password must change (SPEC §5).
    pub pam_password_change: bool,
    /// Refuse (403) a PAM-authenticated user NSS does not know; false: no groups.
    pub require_local_account: bool,
    /// Origins besides the daemon's own that may POST logins (SPEC §9).
    pub allowed_origins: Vec<String>,
    /// Addresses or CIDRs whose X-Original-*/X-Forwarded-* headers are believed (SPEC §12).
    pub trusted_proxies: Vec<String>,
    pub max_sessions_per_user: usize,
    pub max_sessions: usize,
    /// Where sessions live (SPEC §10): this process only, or a crash-safe file.
    pub session_store: SessionStoreKind,
    /// The file of the `file` store; `<state_dir>/sessions.db` when unset.
    pub session_store_path: Option<PathBuf>,
    /// `redis://` or `rediss://host:port/db` of the `redis` store.
    pub session_redis_url: Option<String>,
    /// CA certificates (PEM) that sign the Redis server's certificate (`rediss://`).
    pub session_redis_ca_cert: Option<PathBuf>,
    /// Every key the daemon writes to Redis starts with this.
    pub session_redis_prefix: String,
    /// `opaque` (`pcs_` tokens) or `jwt` (signed by the daemon, SPEC §11).
    pub session_format: SessionFormat,
    /// How the daemon signs the JWTs it issues.
    pub token: TokenSettings,
    pub oidc: oidc::Settings,
    /// Trusted issuers besides `security.oidc` (SPEC §11), by name.
    pub issuers: std::collections::BTreeMap<String, oidc::IssuerSettings>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionFormat {
    Opaque,
    Jwt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TokenAlgorithm {
    EdDSA,
    ES256,
    /// Not in SPEC: for verifiers that know only RSA keys in a JWKS (Inmanta).
    RS256,
    HS256,
}

/// `security.token.*`: the daemon's own JWTs (sessions with `session_format = jwt`,
/// and service tokens from `portcullis token`).
#[derive(Debug, Clone, Deserialize)]
pub struct TokenSettings {
    pub algorithm: TokenAlgorithm,
    /// HS256 only: URL-safe base64 without padding, at least 256 bits.
    pub secret: Option<zeroize::Zeroizing<String>>,
    /// EdDSA/ES256: the private key (PKCS#8 PEM), made on first start when missing;
    /// `<state_dir>/token-key.pem` when unset.
    pub key_file: Option<PathBuf>,
    /// `iss`; `https://<system.hostname>:<first listen port>` when unset.
    pub issuer: Option<String>,
    pub audience: String,
    /// Prefix of the client-type (`ct`) and environment (`env`) claims.
    pub claim_prefix: String,
    /// `portcullis token create --ttl 0` (a token that never expires) is allowed.
    pub allow_non_expiring: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionStoreKind {
    Memory,
    File,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub format: LogFormat,
    pub level: String,
}
