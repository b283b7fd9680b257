//! Configuration: JSON files and `-D key=value` overrides, merged left to right into
//! one typed, immutable [`Config`] (SPEC §3).
//!
//! Every problem is collected before reporting, so an administrator fixes a file in
//! one pass instead of one error per restart.

pub mod keys;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use keys::{KEYS, Kind};

pub const DEFAULT_CONFIG_FILE: &str = "/etc/portcullis/portcullis.conf";
pub const DEV_STATE_DIR: &str = "var/portcullis";

/// One `-c FILE` or `-D key=value`, in command-line order.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Define(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mechanism {
    Password,
    Kerberos,
    Certificate,
    Oidc,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Password => "password",
            Mechanism::Kerberos => "kerberos",
            Mechanism::Certificate => "certificate",
            Mechanism::Oidc => "oidc",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "password" => Mechanism::Password,
            "kerberos" => Mechanism::Kerberos,
            "certificate" => Mechanism::Certificate,
            "oidc" => Mechanism::Oidc,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    Optional,
    Required,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PkiUserField {
    Uid,
    Cn,
    Email,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub dev: bool,
    pub system: System,
    pub ssl: Ssl,
    pub security: Security,
    pub log: Log,
}

#[derive(Debug, Clone)]
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

#[derive(Debug, Clone)]
pub struct Ssl {
    pub enabled: bool,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub crl_files: Vec<PathBuf>,
    /// `true` when TLS 1.3 is the floor (`ssl.min_version = "1.3"`).
    pub tls13_only: bool,
    /// Accept certificate logins although a CRL is past its nextUpdate.
    pub crl_allow_expired: bool,
}

#[derive(Debug, Clone)]
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
    pub max_sessions_per_user: usize,
    pub max_sessions: usize,
    pub oidc: Oidc,
}

#[derive(Clone, Default)]
pub struct Oidc {
    pub introspection_cache_ttl: u64,
    /// Least time between two JWKS fetches caused by an unknown `kid`.
    pub jwks_refetch_interval: u64,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub audience: Option<String>,
    pub validation_mode: String,
    pub username_claim: String,
    pub groups_claim: String,
    pub scopes: String,
    pub jwks_uri: Option<String>,
    pub introspection_uri: Option<String>,
    pub introspection_client_id: Option<String>,
    pub introspection_client_secret: Option<zeroize::Zeroizing<String>>,
    pub userinfo_uri: Option<String>,
    pub openshift_user_api_uri: Option<String>,
    pub ca_cert: Option<PathBuf>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.issuer)
            .field("validation_mode", &self.validation_mode)
            .field("introspection_client_secret", &"***")
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct Log {
    pub format: LogFormat,
    pub level: String,
}

/// Every problem found while loading, one sentence each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "configuration error: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The result of loading: the typed config plus the effective flat key map that
/// `check-config` prints.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub effective: BTreeMap<String, Value>,
    /// Settings that work but probably not as meant; `check-config` prints them and
    /// `serve` logs them.
    pub warnings: Vec<String>,
}

impl Loaded {
    /// The effective configuration as nested JSON with secrets masked.
    pub fn to_masked_json(&self) -> Value {
        let mut root = Map::new();
        for (name, value) in &self.effective {
            let masked = match keys::lookup(name) {
                Some(k) if k.secret && !value.is_null() => Value::String("***".into()),
                _ => value.clone(),
            };
            let mut node = &mut root;
            let parts: Vec<&str> = name.split('.').collect();
            for part in &parts[..parts.len() - 1] {
                node = node
                    .entry(part.to_string())
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
                    .expect("sections are objects");
            }
            node.insert(parts[parts.len() - 1].to_string(), masked);
        }
        Value::Object(root)
    }
}

/// Resolve which sources apply: with no `-c` at all, the default file if it exists,
/// otherwise the embedded dev defaults (SPEC §2).
pub fn resolve_sources(mut sources: Vec<Source>, dev: bool) -> (Vec<Source>, bool) {
    let has_file = sources.iter().any(|s| matches!(s, Source::File(_)));
    if dev || has_file {
        return (sources, dev);
    }
    if Path::new(DEFAULT_CONFIG_FILE).exists() {
        sources.insert(0, Source::File(DEFAULT_CONFIG_FILE.into()));
        (sources, false)
    } else {
        (sources, true)
    }
}

pub fn load(sources: &[Source], dev: bool) -> Result<Loaded, ConfigErrors> {
    let mut errors = Vec::new();
    let mut merged: BTreeMap<String, Value> = BTreeMap::new();
    for source in sources {
        match source {
            Source::File(path) => merge_file(path, &mut merged, &mut errors),
            Source::Define(def) => merge_define(def, &mut merged, &mut errors),
        }
    }
    let mut effective: BTreeMap<String, Value> = KEYS
        .iter()
        .map(|k| {
            (
                k.name.to_string(),
                serde_json::from_str(k.default).expect("registry defaults are JSON"),
            )
        })
        .collect();
    if dev {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        effective.insert(
            "system.state_dir".into(),
            Value::String(cwd.join(DEV_STATE_DIR).display().to_string()),
        );
    }
    for (k, v) in merged {
        if !v.is_null() {
            effective.insert(k, v);
        }
    }
    derive_defaults(&mut effective, dev);
    let config = build(&effective, dev, &mut errors);
    match config {
        Some(config) if errors.is_empty() => {
            let warnings = warnings(&config);
            Ok(Loaded {
                config,
                effective,
                warnings,
            })
        }
        _ => Err(ConfigErrors(errors)),
    }
}

fn merge_file(path: &Path, out: &mut BTreeMap<String, Value>, errors: &mut Vec<String>) {
    let origin = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            errors.push(format!("cannot read {origin}: {e}"));
            return;
        }
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => flatten(&origin, "", map, out, errors),
        Ok(_) => errors.push(format!("{origin}: the top level must be a JSON object")),
        Err(e) => errors.push(format!("{origin}: invalid JSON: {e}")),
    }
}

fn merge_define(def: &str, out: &mut BTreeMap<String, Value>, errors: &mut Vec<String>) {
    let origin = format!("-D {def}");
    let Some((name, raw)) = def.split_once('=') else {
        errors.push(format!("{origin}: expected key=value"));
        return;
    };
    let name = name.trim();
    let Some(k) = keys::lookup(name) else {
        errors.push(unknown_key(&origin, name));
        return;
    };
    // A -D value is JSON when it parses as JSON, otherwise a plain string; lists may be
    // given comma-separated so shells need no quoting gymnastics.
    let value = match serde_json::from_str::<Value>(raw) {
        Ok(v) => v,
        Err(_) if k.kind == Kind::StrList => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.into()))
                .collect(),
        ),
        Err(_) => Value::String(raw.to_string()),
    };
    insert_checked(&origin, name, value, out, errors);
}

fn flatten(
    origin: &str,
    prefix: &str,
    map: Map<String, Value>,
    out: &mut BTreeMap<String, Value>,
    errors: &mut Vec<String>,
) {
    for (k, v) in map {
        let name = if prefix.is_empty() {
            k
        } else {
            format!("{prefix}.{k}")
        };
        if keys::lookup(&name).is_some() {
            insert_checked(origin, &name, v, out, errors);
        } else if keys::is_section(&name) {
            match v {
                Value::Object(inner) => flatten(origin, &name, inner, out, errors),
                _ => errors.push(format!(
                    "{origin}: \"{name}\" is a section and must be an object"
                )),
            }
        } else {
            errors.push(unknown_key(origin, &name));
        }
    }
}

fn unknown_key(origin: &str, name: &str) -> String {
    format!(
        "{origin}: unknown key \"{name}\" (did you mean \"{}\"?)",
        keys::closest(name)
    )
}

fn insert_checked(
    origin: &str,
    name: &str,
    value: Value,
    out: &mut BTreeMap<String, Value>,
    errors: &mut Vec<String>,
) {
    let def = keys::lookup(name).expect("caller checked the key");
    match normalize(def.kind, value) {
        Ok(v) => {
            out.insert(name.to_string(), v);
        }
        Err(expected) => errors.push(format!("{origin}: \"{name}\" must be {expected}")),
    }
}

/// Check a value against its kind, accepting the forms people write by hand
/// (`"min_version": 1.3`, a single string where a list is expected).
fn normalize(kind: Kind, value: Value) -> Result<Value, String> {
    if value.is_null() {
        return Ok(value);
    }
    let scalar_string = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match kind {
        Kind::Str => scalar_string(&value)
            .map(Value::String)
            .ok_or_else(|| "a string".to_string()),
        Kind::Bool => match &value {
            Value::Bool(_) => Ok(value),
            Value::String(s) if s == "true" || s == "false" => Ok(Value::Bool(s == "true")),
            _ => Err("true or false".into()),
        },
        Kind::UInt => match &value {
            Value::Number(n) if n.as_u64().is_some() => Ok(value),
            Value::String(s) if s.parse::<u64>().is_ok() => {
                Ok(Value::from(s.parse::<u64>().expect("checked")))
            }
            _ => Err("a non-negative integer".into()),
        },
        Kind::StrList => match value {
            Value::String(_) => Ok(Value::Array(vec![value])),
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in &items {
                    out.push(Value::String(
                        scalar_string(item).ok_or("a string or a list of strings")?,
                    ));
                }
                Ok(Value::Array(out))
            }
            _ => Err("a string or a list of strings".into()),
        },
        Kind::Enum(allowed) => match scalar_string(&value) {
            Some(s) if allowed.contains(&s.as_str()) => Ok(Value::String(s)),
            _ => Err(format!("one of {}", allowed.join(", "))),
        },
    }
}

/// Fill in the defaults SPEC §3 calls derived, so `check-config` shows what the
/// daemon will really do.
fn derive_defaults(eff: &mut BTreeMap<String, Value>, dev: bool) {
    let set_if_null = |eff: &mut BTreeMap<String, Value>, k: &str, v: Value| {
        if eff.get(k).is_none_or(Value::is_null) {
            eff.insert(k.to_string(), v);
        }
    };
    let hostname = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    set_if_null(eff, "system.hostname", Value::String(hostname));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    set_if_null(eff, "system.blocking_threads", Value::from(2 * cores));
    if dev {
        let state = PathBuf::from(eff["system.state_dir"].as_str().unwrap_or(DEV_STATE_DIR));
        for (k, file) in [
            ("ssl.cert_file", "server.pem"),
            ("ssl.key_file", "server.key"),
            ("ssl.client_ca_file", "ca.pem"),
        ] {
            set_if_null(
                eff,
                k,
                Value::String(state.join(file).display().to_string()),
            );
        }
    }
    let has_ca = !eff["ssl.client_ca_file"].is_null();
    set_if_null(
        eff,
        "ssl.client_auth",
        Value::String(if has_ca { "optional" } else { "none" }.into()),
    );
    let keytab = std::env::var("KRB5_KTNAME")
        .unwrap_or_else(|_| "FILE:/etc/portcullis/portcullis.keytab".into());
    set_if_null(eff, "security.krb_keytab", Value::String(keytab));
    if eff["security.use_kerberos"].as_bool().unwrap_or(false)
        && eff["security.krb_realms"]
            .as_array()
            .is_none_or(|a| a.is_empty())
        && let Some(realm) = crate::auth::kerberos::default_realm()
    {
        eff.insert(
            "security.krb_realms".into(),
            Value::Array(vec![Value::String(realm)]),
        );
    }
    if eff["security.mechanisms"].is_null() {
        let client_auth = eff["ssl.client_auth"].as_str().unwrap_or("none");
        let tls = eff["ssl.enabled"].as_bool().unwrap_or(true);
        let service = eff["security.pam_service"].as_str().unwrap_or_default();
        let mut wanted = Vec::new();
        // Password logins are on by default only where their PAM service is installed.
        if pam_service_installed(service) {
            wanted.push(Mechanism::Password);
        }
        if tls && client_auth != "none" {
            wanted.push(Mechanism::Certificate);
        }
        if eff["security.use_kerberos"].as_bool().unwrap_or(false) {
            wanted.push(Mechanism::Kerberos);
        }
        if !eff["security.oidc.issuer"].is_null()
            || !eff["security.oidc.openshift_user_api_uri"].is_null()
        {
            wanted.push(Mechanism::Oidc);
        }
        let list = wanted
            .into_iter()
            .map(|m| Value::String(m.as_str().into()))
            .collect();
        eff.insert("security.mechanisms".into(), Value::Array(list));
    }
}

/// Whether PAM has a configuration for `service`; without one PAM silently uses the
/// "other" service, which on Debian denies everything.
pub fn pam_service_installed(service: &str) -> bool {
    // Linux-PAM ignores /etc/pam.conf whenever /etc/pam.d exists.
    let pam_d = Path::new("/etc/pam.d");
    !service.is_empty()
        && !service.contains('/')
        && (pam_d.join(service).exists()
            || (!pam_d.is_dir() && Path::new("/etc/pam.conf").exists()))
}

fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if config.security.mechanisms.contains(&Mechanism::Oidc)
        && !crate::auth::oidc::introspection_configured(&config.security.oidc)
        && config.security.oidc.validation_mode == "auto"
    {
        out.push("security.oidc.validation_mode is auto but introspection is not configured (security.oidc.introspection_client_id / introspection_client_secret): JWTs are validated locally, opaque tokens will be refused (401, \"introspection not configured\" in the log)".into());
    }
    out
}

/// An RFC 6454 serialized origin as browsers send it in `Origin`.
fn valid_origin(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
}

fn build(eff: &BTreeMap<String, Value>, dev: bool, errors: &mut Vec<String>) -> Option<Config> {
    let s = |k: &str| eff.get(k).and_then(Value::as_str).map(str::to_string);
    let path = |k: &str| s(k).map(PathBuf::from);
    let u = |k: &str| eff.get(k).and_then(Value::as_u64).unwrap_or(0);
    let b = |k: &str| eff.get(k).and_then(Value::as_bool).unwrap_or(false);
    let list = |k: &str| -> Vec<String> {
        eff.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };

    let mut listen = Vec::new();
    for addr in list("system.listen") {
        match addr.parse::<SocketAddr>() {
            Ok(a) => listen.push(a),
            Err(_) => errors.push(format!(
                "\"system.listen\": \"{addr}\" is not an address:port (e.g. 127.0.0.1:4367 or [::1]:4367)"
            )),
        }
    }
    if listen.is_empty() && errors.is_empty() {
        errors.push("\"system.listen\" must name at least one address".into());
    }

    let ssl_enabled = b("ssl.enabled");
    if !ssl_enabled {
        for a in &listen {
            if !a.ip().is_loopback() {
                errors.push(format!(
                    "\"ssl.enabled\" is false but \"system.listen\" has {a}, which is not loopback; plaintext is only allowed on 127.0.0.1 or ::1"
                ));
            }
        }
    } else {
        for k in ["ssl.cert_file", "ssl.key_file"] {
            if s(k).is_none() {
                errors.push(format!("\"{k}\" is required when \"ssl.enabled\" is true"));
            }
        }
    }

    let client_auth = match s("ssl.client_auth").as_deref() {
        Some("required") => ClientAuth::Required,
        Some("optional") => ClientAuth::Optional,
        _ => ClientAuth::None,
    };
    let client_ca_file = path("ssl.client_ca_file");
    if client_auth != ClientAuth::None && client_ca_file.is_none() {
        errors.push(
            "\"ssl.client_auth\" needs \"ssl.client_ca_file\" to verify client certificates".into(),
        );
    }
    let crl_files: Vec<PathBuf> = list("ssl.crl_files")
        .into_iter()
        .map(PathBuf::from)
        .collect();
    if !crl_files.is_empty() && client_ca_file.is_none() {
        errors.push("\"ssl.crl_files\" is set but \"ssl.client_ca_file\" is not; CRLs only apply to client certificates".into());
    }

    let mut mechanisms = Vec::new();
    for m in list("security.mechanisms") {
        match Mechanism::parse(&m) {
            None => errors.push(format!(
                "\"security.mechanisms\": unknown mechanism \"{m}\" (known: {})",
                keys::MECHANISMS.join(", ")
            )),
            Some(m) if !mechanisms.contains(&m) => mechanisms.push(m),
            Some(_) => {}
        }
    }
    if mechanisms.is_empty() && errors.is_empty() {
        errors.push("no authentication mechanism is enabled; set \"security.mechanisms\" (for certificates also \"ssl.client_ca_file\")".into());
    }
    if mechanisms.contains(&Mechanism::Certificate) {
        if !ssl_enabled {
            errors.push("the certificate mechanism needs \"ssl.enabled\": true".into());
        } else if client_auth == ClientAuth::None {
            errors.push("the certificate mechanism needs \"ssl.client_ca_file\" and \"ssl.client_auth\" optional or required".into());
        }
    }
    if mechanisms.contains(&Mechanism::Password) {
        let service = s("security.pam_service").unwrap_or_default();
        if service.is_empty() || service.contains('/') || service.starts_with('.') {
            errors.push(format!(
                "\"security.pam_service\": \"{service}\" is not a PAM service name"
            ));
        } else if !pam_service_installed(&service) {
            // Without its file PAM silently falls back to the "other" service.
            errors.push(format!(
                "\"security.pam_service\": /etc/pam.d/{service} does not exist (install pam.d/portcullis there)"
            ));
        }
    }
    if mechanisms.contains(&Mechanism::Kerberos) && list("security.krb_realms").is_empty() {
        errors.push("kerberos is enabled but no realm is allowed: set \"security.krb_realms\" or default_realm in krb5.conf".into());
    }
    if mechanisms.contains(&Mechanism::Kerberos) && !b("security.use_kerberos") {
        errors.push(
            "\"security.mechanisms\" lists kerberos but \"security.use_kerberos\" is false".into(),
        );
    }

    if u("security.session_ttl") == 0 {
        errors.push("\"security.session_ttl\" must be at least 1 second".into());
    }
    for k in [
        "system.max_connections",
        "system.blocking_threads",
        "system.handshake_timeout",
        "system.request_timeout",
        "system.idle_timeout",
        "system.max_connections_per_address",
        "security.max_sessions_per_user",
        "security.max_sessions",
    ] {
        if u(k) == 0 {
            errors.push(format!("\"{k}\" must be at least 1"));
        }
    }
    if u("system.max_header_bytes") < 8192 {
        errors.push("\"system.max_header_bytes\" must be at least 8192".into());
    }
    if mechanisms.contains(&Mechanism::Certificate)
        && s("security.pki_user_field").as_deref() == Some("email")
        && list("security.pki_email_domains").is_empty()
    {
        errors.push("\"security.pki_user_field\" is email but \"security.pki_email_domains\" is empty; list the domains whose addresses may log in (e.g. [\"example.com\"])".into());
    }
    for o in list("security.allowed_origins") {
        if !valid_origin(&o) {
            errors.push(format!(
                "\"security.allowed_origins\": \"{o}\" is not an origin (scheme://host[:port], no path), e.g. https://app.example.com"
            ));
        }
    }
    let default_labels = list("security.default_labels");
    for l in &default_labels {
        if let Err(e) = crate::labels::check_label(l) {
            errors.push(format!("\"security.default_labels\": {e}"));
        }
    }

    let oidc_secret = s("security.oidc.introspection_client_secret").map(zeroize::Zeroizing::new);
    let config = Config {
        dev,
        system: System {
            listen,
            hostname: s("system.hostname").unwrap_or_default(),
            state_dir: path("system.state_dir").unwrap_or_default(),
            max_connections: u("system.max_connections") as usize,
            blocking_threads: u("system.blocking_threads") as usize,
            blocking_queue_timeout: u("system.blocking_queue_timeout"),
            handshake_timeout: u("system.handshake_timeout"),
            request_timeout: u("system.request_timeout"),
            max_header_bytes: u("system.max_header_bytes") as usize,
            max_body_bytes: u("system.max_body_bytes") as usize,
            shutdown_timeout: u("system.shutdown_timeout"),
            idle_timeout: u("system.idle_timeout"),
            max_connections_per_address: u("system.max_connections_per_address") as usize,
        },
        ssl: Ssl {
            enabled: ssl_enabled,
            cert_file: path("ssl.cert_file"),
            key_file: path("ssl.key_file"),
            client_ca_file,
            client_auth,
            crl_files,
            tls13_only: s("ssl.min_version").as_deref() == Some("1.3"),
            crl_allow_expired: b("ssl.crl_allow_expired"),
        },
        security: Security {
            mechanisms,
            pam_service: s("security.pam_service").unwrap_or_default(),
            use_kerberos: b("security.use_kerberos"),
            server_krb_principal: s("security.server_krb_principal"),
            krb_keytab: s("security.krb_keytab").unwrap_or_default(),
            krb_realms: list("security.krb_realms"),
            krb_allow_instances: b("security.krb_allow_instances"),
            pki_user_field: match s("security.pki_user_field").as_deref() {
                Some("cn") => PkiUserField::Cn,
                Some("email") => PkiUserField::Email,
                _ => PkiUserField::Uid,
            },
            pki_email_domains: list("security.pki_email_domains")
                .into_iter()
                .map(|d| d.trim_start_matches('@').to_ascii_lowercase())
                .collect(),
            session_ttl: u("security.session_ttl"),
            session_idle_timeout: u("security.session_idle_timeout"),
            labelfile: path("security.labelfile"),
            grouplabelfile: path("security.grouplabelfile"),
            default_labels,
            group_cache_ttl: u("security.group_cache_ttl"),
            max_failed_attempts: u("security.max_failed_attempts"),
            failed_attempt_window: u("security.failed_attempt_window"),
            pam_conversation_timeout: u("security.pam_conversation_timeout"),
            pam_max_conversations: u("security.pam_max_conversations") as usize,
            pam_password_change: b("security.pam_password_change"),
            require_local_account: b("security.require_local_account"),
            allowed_origins: list("security.allowed_origins"),
            max_sessions_per_user: u("security.max_sessions_per_user") as usize,
            max_sessions: u("security.max_sessions") as usize,
            oidc: Oidc {
                introspection_cache_ttl: u("security.oidc.introspection_cache_ttl"),
                jwks_refetch_interval: u("security.oidc.jwks_refetch_interval"),
                issuer: s("security.oidc.issuer"),
                client_id: s("security.oidc.client_id"),
                audience: s("security.oidc.audience"),
                validation_mode: s("security.oidc.validation_mode").unwrap_or_default(),
                username_claim: s("security.oidc.username_claim").unwrap_or_default(),
                groups_claim: s("security.oidc.groups_claim").unwrap_or_default(),
                scopes: s("security.oidc.scopes").unwrap_or_default(),
                jwks_uri: s("security.oidc.jwks_uri"),
                introspection_uri: s("security.oidc.introspection_uri"),
                introspection_client_id: s("security.oidc.introspection_client_id"),
                introspection_client_secret: oidc_secret,
                userinfo_uri: s("security.oidc.userinfo_uri"),
                openshift_user_api_uri: s("security.oidc.openshift_user_api_uri"),
                ca_cert: path("security.oidc.ca_cert"),
            },
        },
        log: Log {
            format: if s("log.format").as_deref() == Some("json") {
                LogFormat::Json
            } else {
                LogFormat::Text
            },
            level: s("log.level").unwrap_or_else(|| "info".into()),
        },
    };
    if config.security.mechanisms.contains(&Mechanism::Oidc) {
        let missing = crate::auth::oidc::missing_settings(&config.security.oidc);
        if !missing.is_empty() {
            errors.push(format!(
                "security.oidc.validation_mode \"{}\" needs: {}",
                config.security.oidc.validation_mode,
                missing.join(", ")
            ));
        }
        errors.extend(crate::auth::oidc::insecure_endpoints(&config.security.oidc));
        if config.security.oidc.jwks_refetch_interval == 0 {
            errors.push("\"security.oidc.jwks_refetch_interval\" must be at least 1".into());
        }
    }
    Some(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> Source {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        Source::File(p)
    }

    fn d(s: &str) -> Source {
        Source::Define(s.into())
    }

    const BASE: &str =
        r#"{"ssl":{"cert_file":"/c.pem","key_file":"/k.pem","client_ca_file":"/ca.pem"}}"#;

    #[test]
    fn nested_dotted_and_mixed_keys_merge() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.json", BASE);
        let b = write(
            dir.path(),
            "b.json",
            r#"{"security.session_ttl": 10, "security": {"oidc.issuer": "https://idp", "oidc": {"audience": "pc", "validation_mode": "jwt"}}}"#,
        );
        let l = load(&[a, b], false).unwrap();
        assert_eq!(l.config.security.session_ttl, 10);
        assert_eq!(
            l.config.security.oidc.issuer.as_deref(),
            Some("https://idp")
        );
        assert_eq!(l.config.security.oidc.audience.as_deref(), Some("pc"));
    }

    #[test]
    fn last_value_wins_left_to_right() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.json", BASE);
        let b = write(dir.path(), "b.json", r#"{"security":{"session_ttl":20}}"#);
        let l = load(&[a.clone(), d("security.session_ttl=5"), b.clone()], false).unwrap();
        assert_eq!(l.config.security.session_ttl, 20);
        let l = load(&[a, b, d("security.session_ttl=5")], false).unwrap();
        assert_eq!(l.config.security.session_ttl, 5);
    }

    #[test]
    fn unknown_keys_name_the_closest_known_key_and_all_errors_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(
            dir.path(),
            "a.json",
            r#"{"security":{"sesion_ttl":5, "session_idle_timeout":"soon"}, "ssl": {"certfile": "x"}}"#,
        );
        let err = load(
            &[a, d("system.lisen=1.2.3.4:1"), d("ssl.min_version=1.1")],
            false,
        )
        .unwrap_err();
        let all = err.to_string();
        assert!(
            all.contains(
                r#"unknown key "security.sesion_ttl" (did you mean "security.session_ttl"?)"#
            ),
            "{all}"
        );
        assert!(
            all.contains(r#"unknown key "ssl.certfile" (did you mean "ssl.cert_file"?)"#),
            "{all}"
        );
        assert!(
            all.contains(r#"unknown key "system.lisen" (did you mean "system.listen"?)"#),
            "{all}"
        );
        assert!(
            all.contains(r#""security.session_idle_timeout" must be a non-negative integer"#),
            "{all}"
        );
        assert!(
            all.contains(r#""ssl.min_version" must be one of 1.2, 1.3"#),
            "{all}"
        );
        assert!(err.0.len() >= 5, "{all}");
    }

    #[test]
    fn invalid_json_reports_the_position() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.json", "{\n \"ssl\": {,}\n}");
        let err = load(&[a], false).unwrap_err().to_string();
        assert!(
            err.contains("invalid JSON") && err.contains("line 2"),
            "{err}"
        );
    }

    #[test]
    fn lists_accept_a_single_string_json_or_commas() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.json", BASE);
        let l = load(
            &[
                a.clone(),
                d("system.listen=127.0.0.1:1,[::1]:2"),
                d("security.default_labels=[\"x\",\"y\"]"),
            ],
            false,
        )
        .unwrap();
        assert_eq!(l.config.system.listen.len(), 2);
        assert_eq!(l.config.security.default_labels, vec!["x", "y"]);
        let l = load(&[a, d("system.listen=\"127.0.0.1:9\"")], false).unwrap();
        assert_eq!(l.config.system.listen[0].port(), 9);
    }

    #[test]
    fn plaintext_is_refused_off_loopback() {
        let err = load(
            &[
                d("ssl.enabled=false"),
                d("system.listen=0.0.0.0:4367"),
                d("security.mechanisms=certificate"),
            ],
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not loopback"), "{err}");
    }

    #[test]
    fn derived_defaults_follow_the_client_ca() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.json", BASE);
        let l = load(
            &[a.clone(), d("security.pam_service=no-such-service-pc")],
            false,
        )
        .unwrap();
        assert_eq!(l.config.ssl.client_auth, ClientAuth::Optional);
        assert_eq!(l.config.security.mechanisms, vec![Mechanism::Certificate]);
        let err = load(
            &[
                a,
                d("security.pam_service=no-such-service-pc"),
                d("security.mechanisms=password"),
            ],
            false,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("/etc/pam.d/no-such-service-pc does not exist"),
            "{err}"
        );
        assert!(l.config.system.blocking_threads >= 2);
    }

    #[test]
    fn unavailable_mechanisms_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.json", BASE);
        let err = load(&[a, d("security.mechanisms=certificate,pasword")], false).unwrap_err();
        assert!(
            err.to_string().contains("unknown mechanism \"pasword\""),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_masked_in_the_effective_config() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.json", BASE);
        let l = load(
            &[a, d("security.oidc.introspection_client_secret=hunter2")],
            false,
        )
        .unwrap();
        let text = l.to_masked_json().to_string();
        assert!(!text.contains("hunter2"));
        assert!(
            text.contains(r#""introspection_client_secret":"***""#),
            "{text}"
        );
        assert!(!format!("{:?}", l.config).contains("hunter2"));
    }

    #[test]
    fn dev_mode_points_tls_at_the_state_dir() {
        let l = load(&[d("system.state_dir=/tmp/pc-dev")], true).unwrap();
        assert_eq!(
            l.config.ssl.cert_file.unwrap(),
            PathBuf::from("/tmp/pc-dev/server.pem")
        );
        assert_eq!(
            l.config.ssl.client_ca_file.unwrap(),
            PathBuf::from("/tmp/pc-dev/ca.pem")
        );
        assert!(
            l.config
                .security
                .mechanisms
                .contains(&Mechanism::Certificate)
        );
    }
}
