//! The registry of every configuration key of SPEC §3.
//!
//! One table drives merging, type checking, "did you mean" suggestions, the
//! effective-config printout and secret masking, so a key added here is known
//! everywhere at once.

/// How a key's JSON value is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Bool,
    /// A non-negative integer (seconds, counts).
    UInt,
    /// One string or a list of strings; a `-D` value may be comma-separated.
    StrList,
    /// Like `StrList`, but a string is comma-separated in files too, as Inmanta
    /// writes its client types (`agent,compiler,api`).
    CommaList,
    /// One of a fixed set of strings.
    Enum(&'static [&'static str]),
    /// A list of `Enum` values; the first field names one item in errors.
    EnumList(&'static str, &'static [&'static str]),
    /// One or more `address:port`.
    AddrList,
    /// A JSON object of claim → value or list of values (`required_claims`); values
    /// are strings, numbers or booleans.
    ClaimMap,
}

impl Kind {
    /// A `-D` value of a list kind may be comma-separated.
    pub fn is_list(self) -> bool {
        matches!(
            self,
            Kind::StrList | Kind::CommaList | Kind::EnumList(..) | Kind::AddrList
        )
    }
}

pub struct KeyDef {
    pub name: &'static str,
    pub kind: Kind,
    /// Default as JSON text; `null` means "derived at load time" or "unset".
    pub default: &'static str,
    /// Masked in `check-config` output and never logged.
    pub secret: bool,
}

const fn key(name: &'static str, kind: Kind, default: &'static str) -> KeyDef {
    KeyDef {
        name,
        kind,
        default,
        secret: false,
    }
}

pub const MECHANISMS: &[&str] = &["password", "kerberos", "certificate", "oidc"];
pub const OIDC_MODES: &[&str] = &[
    "jwt",
    "introspection",
    "introspection_userinfo",
    "openshift_userapi",
    "auto",
];

pub static KEYS: &[KeyDef] = &[
    key("system.listen", Kind::AddrList, r#"["127.0.0.1:4367"]"#),
    key("system.hostname", Kind::Str, "null"),
    key("system.state_dir", Kind::Str, r#""/var/lib/portcullis""#),
    key("system.max_connections", Kind::UInt, "10000"),
    key("system.blocking_threads", Kind::UInt, "null"),
    key("system.blocking_queue_timeout", Kind::UInt, "5"),
    // Not in SPEC §3: the bounds every network daemon needs (README lists them).
    key("system.handshake_timeout", Kind::UInt, "10"),
    key("system.request_timeout", Kind::UInt, "30"),
    key("system.max_header_bytes", Kind::UInt, "16384"),
    key("system.max_body_bytes", Kind::UInt, "65536"),
    key("system.shutdown_timeout", Kind::UInt, "30"),
    // SPEC §9: hostile clients.
    key("system.idle_timeout", Kind::UInt, "60"),
    key("system.max_connections_per_address", Kind::UInt, "256"),
    key("ssl.enabled", Kind::Bool, "true"),
    key("ssl.cert_file", Kind::Str, "null"),
    key("ssl.key_file", Kind::Str, "null"),
    key("ssl.client_ca_file", Kind::Str, "null"),
    key(
        "ssl.client_auth",
        Kind::Enum(&["none", "optional", "required"]),
        "null",
    ),
    key("ssl.crl_files", Kind::StrList, "[]"),
    key("ssl.min_version", Kind::Enum(&["1.2", "1.3"]), r#""1.2""#),
    key("ssl.crl_allow_expired", Kind::Bool, "false"),
    key(
        "security.mechanisms",
        Kind::EnumList("mechanism", MECHANISMS),
        "null",
    ),
    key("security.pam_service", Kind::Str, r#""portcullis""#),
    key("security.use_kerberos", Kind::Bool, "false"),
    key("security.server_krb_principal", Kind::Str, "null"),
    key("security.krb_keytab", Kind::Str, "null"),
    key("security.krb_realms", Kind::StrList, "[]"),
    // Not in SPEC §3: lets `user/instance@REALM` log in as `user` (off by default).
    key("security.krb_allow_instances", Kind::Bool, "false"),
    key(
        "security.pki_user_field",
        Kind::Enum(&["uid", "cn", "email"]),
        r#""uid""#,
    ),
    key("security.pki_email_domains", Kind::StrList, "[]"),
    key("security.session_ttl", Kind::UInt, "3600"),
    key("security.session_idle_timeout", Kind::UInt, "0"),
    key("security.labelfile", Kind::Str, "null"),
    key("security.grouplabelfile", Kind::Str, "null"),
    key("security.default_labels", Kind::StrList, "[]"),
    key("security.group_cache_ttl", Kind::UInt, "60"),
    key("security.max_failed_attempts", Kind::UInt, "5"),
    key("security.failed_attempt_window", Kind::UInt, "60"),
    key("security.pam_conversation_timeout", Kind::UInt, "120"),
    key("security.pam_max_conversations", Kind::UInt, "32"),
    key("security.pam_password_change", Kind::Bool, "true"),
    key("security.require_local_account", Kind::Bool, "true"),
    key("security.allowed_origins", Kind::StrList, "[]"),
    key("security.max_sessions_per_user", Kind::UInt, "100"),
    key("security.max_sessions", Kind::UInt, "1000000"),
    key(
        "security.session_store",
        Kind::Enum(&["memory", "file", "redis"]),
        r#""file""#,
    ),
    key("security.session_store_path", Kind::Str, "null"),
    // May carry a password (`redis://:secret@host`): masked like the other secrets.
    KeyDef {
        name: "security.session_redis_url",
        kind: Kind::Str,
        default: "null",
        secret: true,
    },
    key("security.session_redis_ca_cert", Kind::Str, "null"),
    key(
        "security.session_redis_prefix",
        Kind::Str,
        r#""portcullis:""#,
    ),
    key(
        "security.session_format",
        Kind::Enum(&["opaque", "jwt"]),
        r#""opaque""#,
    ),
    key(
        "security.token.algorithm",
        Kind::Enum(&["EdDSA", "ES256", "RS256", "HS256"]),
        r#""EdDSA""#,
    ),
    KeyDef {
        name: "security.token.secret",
        kind: Kind::Str,
        default: "null",
        secret: true,
    },
    key("security.token.key_file", Kind::Str, "null"),
    key("security.token.issuer", Kind::Str, "null"),
    key("security.token.audience", Kind::Str, r#""portcullis""#),
    key(
        "security.token.claim_prefix",
        Kind::Str,
        r#""urn:portcullis:""#,
    ),
    key("security.token.allow_non_expiring", Kind::Bool, "false"),
    key(
        "security.trusted_proxies",
        Kind::StrList,
        r#"["127.0.0.0/8", "::1/128"]"#,
    ),
    KeyDef {
        name: "security.oidc.client_secret",
        kind: Kind::Str,
        default: "null",
        secret: true,
    },
    key("forward.public_uris", Kind::StrList, "[]"),
    key("forward.rules_file", Kind::Str, "null"),
    key("forward.anonymous_value", Kind::Str, r#""anonymous""#),
    key("forward.header_user", Kind::Str, r#""X-Forwarded-User""#),
    key(
        "forward.header_groups",
        Kind::Str,
        r#""X-Forwarded-Groups""#,
    ),
    key(
        "forward.header_labels",
        Kind::Str,
        r#""X-Forwarded-Labels""#,
    ),
    key("forward.public_url", Kind::Str, "null"),
    key("forward.cookie_domain", Kind::Str, "null"),
    key("forward.allowed_redirect_hosts", Kind::StrList, "[]"),
    key("security.oidc.jwks_refetch_interval", Kind::UInt, "60"),
    key("security.oidc.introspection_cache_ttl", Kind::UInt, "0"),
    key("security.oidc.issuer", Kind::Str, "null"),
    key("security.oidc.client_id", Kind::Str, "null"),
    key("security.oidc.audience", Kind::Str, "null"),
    key(
        "security.oidc.validation_mode",
        Kind::Enum(OIDC_MODES),
        r#""jwt""#,
    ),
    key(
        "security.oidc.username_claim",
        Kind::Str,
        r#""preferred_username""#,
    ),
    key("security.oidc.groups_claim", Kind::Str, r#""groups""#),
    key(
        "security.oidc.scopes",
        Kind::Str,
        r#""openid profile email""#,
    ),
    key("security.oidc.jwks_uri", Kind::Str, "null"),
    key("security.oidc.introspection_uri", Kind::Str, "null"),
    key("security.oidc.introspection_client_id", Kind::Str, "null"),
    KeyDef {
        name: "security.oidc.introspection_client_secret",
        kind: Kind::Str,
        default: "null",
        secret: true,
    },
    key("security.oidc.userinfo_uri", Kind::Str, "null"),
    key("security.oidc.openshift_user_api_uri", Kind::Str, "null"),
    key("security.oidc.ca_cert", Kind::Str, "null"),
    key("log.format", Kind::Enum(&["text", "json"]), r#""text""#),
    key(
        "log.level",
        Kind::Enum(&["trace", "debug", "info", "warn", "error"]),
        r#""info""#,
    ),
];

/// The section of the trusted issuers (SPEC §11): `security.issuers.<name>.<key>`.
pub const ISSUERS: &str = "security.issuers";

pub const ISSUER_ALGORITHMS: &[&str] = &["RS256", "ES256", "EdDSA", "HS256"];

/// The keys of one trusted issuer; `name` is the key inside `security.issuers.<name>`.
pub static ISSUER_KEYS: &[KeyDef] = &[
    key("issuer", Kind::Str, "null"),
    key("audience", Kind::StrList, "[]"),
    key("algorithm", Kind::Enum(ISSUER_ALGORITHMS), r#""RS256""#),
    key("jwks_uri", Kind::Str, "null"),
    KeyDef {
        name: "secret",
        kind: Kind::Str,
        default: "null",
        secret: true,
    },
    key("client_types", Kind::CommaList, "[]"),
    key("required_claims", Kind::ClaimMap, "{}"),
    key("username_claim", Kind::Str, r#""sub""#),
    key("groups_claim", Kind::Str, r#""groups""#),
    key("ca_cert", Kind::Str, "null"),
    key("jwks_request_timeout", Kind::UInt, "5"),
];

/// Whether `name` may name a trusted issuer (`security.issuers.<name>`).
pub fn valid_issuer_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `security.issuers.<name>.<rest>` split into `(name, rest)`; `rest` may be empty
/// (the issuer's section itself) or hold further dots (an unknown key).
pub fn split_issuer_key(name: &str) -> Option<(&str, &str)> {
    let tail = name.strip_prefix(ISSUERS)?.strip_prefix('.')?;
    Some(tail.split_once('.').unwrap_or((tail, "")))
}

/// The registry entry of a key. For `security.issuers.<name>.<key>` it is the entry
/// of [`ISSUER_KEYS`], whose `name` is the key inside the issuer's section.
pub fn lookup(name: &str) -> Option<&'static KeyDef> {
    if let Some((issuer, key)) = split_issuer_key(name) {
        if !valid_issuer_name(issuer) {
            return None;
        }
        return ISSUER_KEYS.iter().find(|k| k.name == key);
    }
    KEYS.iter().find(|k| k.name == name)
}

/// True when `prefix` is a section that holds known keys (`security`, `security.oidc`,
/// `security.issuers`, `security.issuers.<name>`).
pub fn is_section(prefix: &str) -> bool {
    if prefix == ISSUERS {
        return true;
    }
    if let Some((issuer, rest)) = split_issuer_key(prefix) {
        return rest.is_empty() && valid_issuer_name(issuer);
    }
    KEYS.iter().any(|k| {
        k.name.len() > prefix.len()
            && k.name.starts_with(prefix)
            && k.name.as_bytes()[prefix.len()] == b'.'
    })
}

/// The known key closest to `name`, for "did you mean" in error messages. Inside an
/// issuer's section the suggestion is a key of the same issuer.
pub fn closest(name: &str) -> String {
    let last = name.rsplit('.').next().unwrap_or(name);
    let score = |candidate: &str| {
        let whole = strsim::normalized_levenshtein(name, candidate);
        let tail = strsim::normalized_levenshtein(last, candidate.rsplit('.').next().unwrap_or(""));
        whole.max(tail * 0.95)
    };
    if let Some((issuer, rest)) = split_issuer_key(name)
        && !rest.is_empty()
    {
        return ISSUER_KEYS
            .iter()
            .map(|k| format!("{ISSUERS}.{issuer}.{}", k.name))
            .map(|n| (score(&n), n))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, n)| n)
            .expect("issuers have keys");
    }
    KEYS.iter()
        .map(|k| (score(k.name), k.name))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, n)| n)
        .unwrap_or("system.listen")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_json() {
        for k in KEYS.iter().chain(ISSUER_KEYS) {
            serde_json::from_str::<serde_json::Value>(k.default)
                .unwrap_or_else(|e| panic!("{}: {e}", k.name));
        }
    }

    #[test]
    fn suggestions_find_the_intended_key() {
        assert_eq!(closest("security.sesion_ttl"), "security.session_ttl");
        assert_eq!(closest("ssl.certfile"), "ssl.cert_file");
        assert_eq!(closest("security.oidc.isuer"), "security.oidc.issuer");
        assert_eq!(closest("system.lisen"), "system.listen");
        assert_eq!(
            closest("security.issuers.inmanta.secert"),
            "security.issuers.inmanta.secret"
        );
        assert_eq!(
            closest("security.issuers.x.client_type"),
            "security.issuers.x.client_types"
        );
    }

    #[test]
    fn issuer_keys_are_found_by_pattern() {
        assert_eq!(
            lookup("security.issuers.inmanta.secret").map(|k| k.secret),
            Some(true)
        );
        assert!(lookup("security.issuers.a-b_1.jwks_uri").is_some());
        assert!(lookup("security.issuers.bad name.issuer").is_none());
        assert!(lookup("security.issuers.x.nope").is_none());
        assert!(lookup("security.issuers.x").is_none());
        assert!(is_section("security.issuers"));
        assert!(is_section("security.issuers.inmanta"));
        assert!(!is_section("security.issuers.in manta"));
        assert!(!is_section("security.issuers.x.issuer"));
    }

    #[test]
    fn sections_are_recognised() {
        assert!(is_section("security"));
        assert!(is_section("security.oidc"));
        assert!(is_section("security.issuers"));
        assert!(!is_section("security.session_ttl"));
        assert!(!is_section("secur"));
    }
}
