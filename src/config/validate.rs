//! What the configuration means on this machine: the derived defaults of SPEC §3 and
//! the rules between keys, both against an [`Env`] gathered once at load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::DEV_STATE_DIR;
use super::types::{ClientAuth, Config};
use crate::auth::Mechanism;
use crate::auth::certificate::PkiUserField;
use crate::auth::oidc::{self, Mode};

/// The facts about the machine that defaults and checks depend on. Probes that touch
/// libraries or files for one configured name are functions, called only when needed.
pub struct Env {
    /// The machine's name (`system.hostname` default).
    pub hostname: String,
    /// CPU cores (`system.blocking_threads` default: twice this).
    pub cores: usize,
    /// Where `--dev` keeps its state (`./var/portcullis`).
    pub cwd: PathBuf,
    /// `KRB5_KTNAME` (`security.krb_keytab` default).
    pub krb5_ktname: Option<String>,
    /// The default realm of krb5.conf (`security.krb_realms` default).
    pub default_realm: fn() -> Option<String>,
    /// Whether PAM has a configuration for a service name.
    pub pam_service_installed: fn(&str) -> bool,
    /// `PORTCULLIS_<SECTION>__<KEY>` variables (SPEC §12), sorted by name.
    pub config_vars: Vec<(String, String)>,
}

impl Env {
    /// The running machine.
    pub fn detect() -> Env {
        Env {
            hostname: hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into()),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            krb5_ktname: std::env::var("KRB5_KTNAME").ok(),
            default_realm: crate::auth::kerberos::default_realm,
            pam_service_installed,
            config_vars: {
                let mut v: Vec<(String, String)> = std::env::vars()
                    .filter(|(k, _)| k.starts_with(super::ENV_PREFIX) && k.contains("__"))
                    .collect();
                v.sort();
                v
            },
        }
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

/// Fill in the defaults SPEC §3 calls derived, in the flat map, so `check-config`
/// shows what the daemon will really do. Every key is present (registry defaults).
pub(super) fn derive_defaults(eff: &mut BTreeMap<String, Value>, dev: bool, env: &Env) {
    fn set_if_null(eff: &mut BTreeMap<String, Value>, k: &str, v: impl FnOnce() -> Value) {
        if eff.get(k).is_none_or(Value::is_null) {
            eff.insert(k.to_string(), v());
        }
    }
    let text = |eff: &BTreeMap<String, Value>, k: &str| {
        eff.get(k).and_then(Value::as_str).map(str::to_string)
    };
    let flag = |eff: &BTreeMap<String, Value>, k: &str| eff.get(k).and_then(Value::as_bool);
    set_if_null(eff, "system.hostname", || {
        Value::String(env.hostname.clone())
    });
    set_if_null(eff, "system.blocking_threads", || {
        Value::from(2 * env.cores)
    });
    if dev {
        let state =
            PathBuf::from(text(eff, "system.state_dir").unwrap_or_else(|| DEV_STATE_DIR.into()));
        for (k, file) in [
            ("ssl.cert_file", "server.pem"),
            ("ssl.key_file", "server.key"),
            ("ssl.client_ca_file", "ca.pem"),
        ] {
            set_if_null(eff, k, || {
                Value::String(state.join(file).display().to_string())
            });
        }
    }
    let has_ca = text(eff, "ssl.client_ca_file").is_some();
    set_if_null(eff, "ssl.client_auth", || {
        Value::String(if has_ca { "optional" } else { "none" }.into())
    });
    set_if_null(eff, "security.krb_keytab", || {
        Value::String(
            env.krb5_ktname
                .clone()
                .unwrap_or_else(|| "FILE:/etc/portcullis/portcullis.keytab".into()),
        )
    });
    let use_kerberos = flag(eff, "security.use_kerberos").unwrap_or(false);
    if use_kerberos
        && eff
            .get("security.krb_realms")
            .and_then(Value::as_array)
            .is_none_or(|a| a.is_empty())
        && let Some(realm) = (env.default_realm)()
    {
        eff.insert(
            "security.krb_realms".into(),
            Value::Array(vec![Value::String(realm)]),
        );
    }
    if eff.get("security.mechanisms").is_none_or(Value::is_null) {
        let client_auth = text(eff, "ssl.client_auth").unwrap_or_default();
        let tls = flag(eff, "ssl.enabled").unwrap_or(true);
        let service = text(eff, "security.pam_service").unwrap_or_default();
        let mut wanted = Vec::new();
        // Password logins are on by default only where their PAM service is installed.
        if (env.pam_service_installed)(&service) {
            wanted.push(Mechanism::Password);
        }
        if tls && client_auth != "none" {
            wanted.push(Mechanism::Certificate);
        }
        if use_kerberos {
            wanted.push(Mechanism::Kerberos);
        }
        // A trusted issuer (security.issuers.<name>) is an oidc login too.
        let issuers = eff
            .keys()
            .any(|k| super::keys::split_issuer_key(k).is_some_and(|(_, key)| !key.is_empty()));
        if text(eff, "security.oidc.issuer").is_some()
            || text(eff, "security.oidc.openshift_user_api_uri").is_some()
            || issuers
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

/// The rules between keys and against the machine, one sentence per problem.
pub fn validate(config: &Config, env: &Env) -> Vec<String> {
    let mut errors = Vec::new();
    let (sys, ssl, sec) = (&config.system, &config.ssl, &config.security);
    let mechanisms = &sec.mechanisms;

    if sys.listen.is_empty() {
        errors.push("\"system.listen\" must name at least one address".into());
    }
    if !ssl.enabled {
        for a in &sys.listen {
            if !a.ip().is_loopback() {
                errors.push(format!(
                    "\"ssl.enabled\" is false but \"system.listen\" has {a}, which is not loopback; plaintext is only allowed on 127.0.0.1 or ::1"
                ));
            }
        }
    } else {
        for (k, v) in [
            ("ssl.cert_file", &ssl.cert_file),
            ("ssl.key_file", &ssl.key_file),
        ] {
            if v.is_none() {
                errors.push(format!("\"{k}\" is required when \"ssl.enabled\" is true"));
            }
        }
    }
    if ssl.client_auth != ClientAuth::None && ssl.client_ca_file.is_none() {
        errors.push(
            "\"ssl.client_auth\" needs \"ssl.client_ca_file\" to verify client certificates".into(),
        );
    }
    if !ssl.crl_files.is_empty() && ssl.client_ca_file.is_none() {
        errors.push("\"ssl.crl_files\" is set but \"ssl.client_ca_file\" is not; CRLs only apply to client certificates".into());
    }

    if mechanisms.is_empty() {
        errors.push("no authentication mechanism is enabled; set \"security.mechanisms\" (for certificates also \"ssl.client_ca_file\")".into());
    }
    if mechanisms.contains(&Mechanism::Certificate) {
        if !ssl.enabled {
            errors.push("the certificate mechanism needs \"ssl.enabled\": true".into());
        } else if ssl.client_auth == ClientAuth::None {
            errors.push("the certificate mechanism needs \"ssl.client_ca_file\" and \"ssl.client_auth\" optional or required".into());
        }
    }
    if mechanisms.contains(&Mechanism::Password) {
        let service = &sec.pam_service;
        if service.is_empty() || service.contains('/') || service.starts_with('.') {
            errors.push(format!(
                "\"security.pam_service\": \"{service}\" is not a PAM service name"
            ));
        } else if !(env.pam_service_installed)(service) {
            // Without its file PAM silently falls back to the "other" service.
            errors.push(format!(
                "\"security.pam_service\": /etc/pam.d/{service} does not exist (install pam.d/portcullis there)"
            ));
        }
    }
    if mechanisms.contains(&Mechanism::Kerberos) && sec.krb_realms.is_empty() {
        errors.push("kerberos is enabled but no realm is allowed: set \"security.krb_realms\" or default_realm in krb5.conf".into());
    }
    if mechanisms.contains(&Mechanism::Kerberos) && !sec.use_kerberos {
        errors.push(
            "\"security.mechanisms\" lists kerberos but \"security.use_kerberos\" is false".into(),
        );
    }

    if sec.session_ttl == 0 {
        errors.push("\"security.session_ttl\" must be at least 1 second".into());
    }
    for (k, v) in [
        ("system.max_connections", sys.max_connections as u64),
        ("system.blocking_threads", sys.blocking_threads as u64),
        ("system.handshake_timeout", sys.handshake_timeout),
        ("system.request_timeout", sys.request_timeout),
        ("system.idle_timeout", sys.idle_timeout),
        (
            "system.max_connections_per_address",
            sys.max_connections_per_address as u64,
        ),
        (
            "security.max_sessions_per_user",
            sec.max_sessions_per_user as u64,
        ),
        ("security.max_sessions", sec.max_sessions as u64),
    ] {
        if v == 0 {
            errors.push(format!("\"{k}\" must be at least 1"));
        }
    }
    errors.extend(redis_settings(sec));
    errors.extend(token_settings(&sec.token));
    if sys.max_header_bytes < 8192 {
        errors.push("\"system.max_header_bytes\" must be at least 8192".into());
    }
    if mechanisms.contains(&Mechanism::Certificate)
        && sec.pki_user_field == PkiUserField::Email
        && sec.pki_email_domains.is_empty()
    {
        errors.push("\"security.pki_user_field\" is email but \"security.pki_email_domains\" is empty; list the domains whose addresses may log in (e.g. [\"example.com\"])".into());
    }
    for o in &sec.allowed_origins {
        if !valid_origin(o) {
            errors.push(format!(
                "\"security.allowed_origins\": \"{o}\" is not an origin (scheme://host[:port], no path), e.g. https://app.example.com"
            ));
        }
    }
    for l in &sec.default_labels {
        if let Err(e) = crate::labels::check_label(l) {
            errors.push(format!("\"security.default_labels\": {e}"));
        }
    }

    errors.extend(issuer_settings(sec));
    if !sec.issuers.is_empty() && !mechanisms.contains(&Mechanism::Oidc) {
        errors.push("\"security.issuers\" is set but \"security.mechanisms\" does not list oidc; add oidc (trusted issuers' tokens are oidc logins)".into());
    }
    // With trusted issuers the oidc mechanism may run without security.oidc.
    if mechanisms.contains(&Mechanism::Oidc)
        && (sec.issuers.is_empty() || oidc::configured(&sec.oidc))
    {
        let o = &sec.oidc;
        let missing = oidc::missing_settings(o);
        if !missing.is_empty() {
            errors.push(format!(
                "security.oidc.validation_mode \"{}\" needs: {}",
                o.validation_mode.as_str(),
                missing.join(", ")
            ));
        }
        errors.extend(oidc::insecure_endpoints(o));
    }
    if mechanisms.contains(&Mechanism::Oidc) && sec.oidc.jwks_refetch_interval == 0 {
        errors.push("\"security.oidc.jwks_refetch_interval\" must be at least 1".into());
    }
    errors
}

/// The rules of `security.issuers.<name>` (SPEC §11), each message naming the key.
fn issuer_settings(sec: &crate::config::types::Security) -> Vec<String> {
    use crate::auth::oidc::IssuerAlgorithm;
    let mut errors = Vec::new();
    // `iss` values compare without a trailing slash here, so two sections cannot
    // claim what is in practice one issuer.
    let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for (name, i) in &sec.issuers {
        let key = |k: &str| format!("security.issuers.{name}.{k}");
        match i.issuer.as_deref() {
            None | Some("") => errors.push(format!(
                "\"{}\" is required: the iss of the tokens this issuer signs",
                key("issuer")
            )),
            Some(iss) => {
                if let Some((other, _)) = seen.iter().find(|(_, o)| same(o, iss)) {
                    errors.push(format!(
                        "\"{}\" is \"{iss}\", the issuer of security.issuers.{other} too; a token's iss must name one issuer",
                        key("issuer")
                    ));
                }
                if sec.oidc.issuer.as_deref().is_some_and(|o| same(o, iss)) {
                    errors.push(format!(
                        "\"{}\" is \"{iss}\", which is security.oidc.issuer; its tokens are checked by security.oidc, remove this issuer",
                        key("issuer")
                    ));
                }
                seen.push((name, iss));
            }
        }
        match (i.jwks_uri.as_deref(), i.secret.as_deref()) {
            (Some(_), Some(_)) => errors.push(format!(
                "\"{}\" and \"{}\" are both set; set jwks_uri for RS256, ES256 or EdDSA, or secret for HS256",
                key("jwks_uri"),
                key("secret")
            )),
            (None, None) => errors.push(format!(
                "security.issuers.{name} needs \"{}\" (RS256, ES256, EdDSA) or \"{}\" (HS256)",
                key("jwks_uri"),
                key("secret")
            )),
            _ => {}
        }
        match (i.algorithm, i.secret.as_deref()) {
            (IssuerAlgorithm::HS256, None) => errors.push(format!(
                "\"{}\" is HS256 but \"{}\" is not set; HS256 tokens are only checked against an explicit secret, never against a JWKS",
                key("algorithm"),
                key("secret")
            )),
            (IssuerAlgorithm::HS256, Some(secret)) => {
                if let Some(p) = hs256_secret_problem(secret) {
                    errors.push(format!("\"{}\" {p}", key("secret")));
                }
            }
            (alg, Some(_)) => errors.push(format!(
                "\"{}\" is set but \"{}\" is {}; a secret is only for HS256",
                key("secret"),
                key("algorithm"),
                alg.as_str()
            )),
            (_, None) => {}
        }
        if let Some(uri) = i.jwks_uri.as_deref()
            && !crate::auth::oidc::provider::endpoint_allowed(uri)
        {
            errors.push(format!(
                "\"{}\" is \"{uri}\": it must be an https:// URL (plain http:// only to localhost, 127.0.0.0/8 or ::1)",
                key("jwks_uri")
            ));
        }
        if let Some(path) = &i.ca_cert {
            match std::fs::read(path) {
                Err(e) => errors.push(format!(
                    "\"{}\": cannot read {}: {e}",
                    key("ca_cert"),
                    path.display()
                )),
                Ok(pem) => match reqwest::Certificate::from_pem_bundle(&pem) {
                    Ok(certs) if !certs.is_empty() => {}
                    Ok(_) => errors.push(format!(
                        "\"{}\": {} holds no PEM certificate",
                        key("ca_cert"),
                        path.display()
                    )),
                    Err(e) => {
                        errors.push(format!("\"{}\": {}: {e}", key("ca_cert"), path.display()))
                    }
                },
            }
        }
        if i.jwks_request_timeout == 0 {
            errors.push(format!(
                "\"{}\" must be at least 1",
                key("jwks_request_timeout")
            ));
        }
        if i.username_claim.is_empty() {
            errors.push(format!(
                "\"{}\" must name a claim (e.g. sub)",
                key("username_claim")
            ));
        }
    }
    errors
}

/// The `redis` store needs a `redis://` or `rediss://` URL; a CA file only makes
/// sense with TLS. The URL is never repeated in a message: it may hold a password.
fn redis_settings(sec: &crate::config::types::Security) -> Vec<String> {
    use crate::config::types::SessionStoreKind;
    let mut errors = Vec::new();
    let url = sec.session_redis_url.as_deref();
    if sec.session_store == SessionStoreKind::Redis {
        match url {
            None => errors.push("\"security.session_store\" is redis but \"security.session_redis_url\" is not set (e.g. redis://127.0.0.1:6379/0 or rediss://redis.example.com:6380/0)".into()),
            Some(u) if !(u.starts_with("redis://") || u.starts_with("rediss://")) => errors.push("\"security.session_redis_url\" must start with redis:// or rediss://".into()),
            Some(u) if redis::IntoConnectionInfo::into_connection_info(u).is_err() => errors.push("\"security.session_redis_url\" is not a valid Redis URL (redis[s]://[[user]:password@]host[:port][/db])".into()),
            Some(_) => {}
        }
    }
    if sec.session_redis_ca_cert.is_some() && !url.is_some_and(|u| u.starts_with("rediss://")) {
        errors.push("\"security.session_redis_ca_cert\" is set but \"security.session_redis_url\" is not a rediss:// URL".into());
    }
    if sec.session_redis_prefix.is_empty() {
        errors.push("\"security.session_redis_prefix\" must not be empty".into());
    }
    errors
}

/// An HS256 secret as SPEC §11 (and Inmanta) writes it: URL-safe base64 without
/// padding, at least 256 bits. `None` when it is one; else what is wrong.
pub fn hs256_secret_problem(secret: &str) -> Option<String> {
    use base64::Engine;
    match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(secret.trim()) {
        Err(_) => Some("is not URL-safe base64 without padding (e.g. the output of `openssl rand 32 | basenc --base64url | tr -d =`)".into()),
        Ok(raw) if raw.len() < 32 => Some(format!(
            "is {} bits; an HS256 secret needs at least 256",
            raw.len() * 8
        )),
        Ok(_) => None,
    }
}

fn token_settings(t: &crate::config::types::TokenSettings) -> Vec<String> {
    use crate::config::types::TokenAlgorithm;
    let mut errors = Vec::new();
    match (t.algorithm, t.secret.as_deref()) {
        (TokenAlgorithm::HS256, None) => errors.push(
            "\"security.token.algorithm\" is HS256 but \"security.token.secret\" is not set".into(),
        ),
        (TokenAlgorithm::HS256, Some(secret)) => {
            if let Some(p) = hs256_secret_problem(secret) {
                errors.push(format!("\"security.token.secret\" {p}"));
            }
        }
        (_, Some(_)) => errors.push(
            "\"security.token.secret\" is set but \"security.token.algorithm\" is not HS256 (EdDSA and ES256 use security.token.key_file)".into(),
        ),
        (_, None) => {}
    }
    if t.claim_prefix.is_empty() {
        errors.push("\"security.token.claim_prefix\" must not be empty (e.g. urn:inmanta:)".into());
    }
    if t.audience.is_empty() {
        errors.push("\"security.token.audience\" must not be empty".into());
    }
    errors
}

/// Settings that work but probably not as meant.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let o = &config.security.oidc;
    if config.security.mechanisms.contains(&Mechanism::Oidc)
        && !oidc::introspection_configured(o)
        && o.validation_mode == Mode::Auto
    {
        out.push("security.oidc.validation_mode is auto but introspection is not configured (security.oidc.introspection_client_id / introspection_client_secret): JWTs are validated locally, opaque tokens will be refused (401, \"introspection not configured\" in the log)".into());
    }
    for (name, i) in &config.security.issuers {
        if i.audience.is_empty() {
            out.push(format!("security.issuers.{name}.audience is not set: tokens of this issuer that carry an aud claim are refused (set it to the aud the issuer writes; Inmanta's tokens always carry one)"));
        }
        if i.secret.is_some() && i.ca_cert.is_some() {
            out.push(format!("security.issuers.{name}.ca_cert is set but unused: an HS256 issuer has no jwks_uri to fetch"));
        }
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
