//! Configuration: JSON files and `-D key=value` overrides, merged left to right into
//! one typed, immutable [`Config`] (SPEC §3).
//!
//! Loading runs in three steps, each reporting every problem it finds so an
//! administrator fixes a file in one pass instead of one error per restart:
//!
//! 1. merge: files and `-D` into a flat `key → value` map, each key checked against
//!    the registry ([`keys`]: its kind, "did you mean" for unknown keys, the origin
//!    named in each message); the defaults SPEC §3 calls derived are filled in from
//!    what the machine says ([`Env`]), so `check-config` prints what the daemon does;
//! 2. type: the flat map, nested, deserialized into the section structs of [`types`];
//! 3. validate: rules between keys and against the machine ([`validate::validate`]).
//!
//! `config` depends on `auth` for the types its sections hold ([`Mechanism`], the OIDC
//! settings, the certificate's user field) and for the environment probes; `auth`
//! never depends on `config`, so each authenticator is handed its own settings.

pub mod keys;
pub mod types;
pub mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use keys::{KEYS, Kind};
pub use types::{
    ClientAuth, Config, Log, LogFormat, Security, SessionFormat, SessionStoreKind, Ssl, System,
    TlsVersion,
};
pub use validate::{Env, pam_service_installed};

pub const DEFAULT_CONFIG_FILE: &str = "/etc/portcullis/portcullis.conf";
pub const DEV_STATE_DIR: &str = "var/portcullis";

/// One `-c FILE` or `-D key=value`, in command-line order.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Define(String),
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
        nest(&self.effective, true)
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
    load_in(sources, dev, &Env::detect())
}

/// [`load`] against a given environment (tests pass a fixed one).
pub fn load_in(sources: &[Source], dev: bool, env: &Env) -> Result<Loaded, ConfigErrors> {
    let mut errors = Vec::new();
    let mut merged: BTreeMap<String, Value> = BTreeMap::new();
    // The environment comes after the files and before the -D that follow them.
    let env_at = sources
        .iter()
        .rposition(|s| matches!(s, Source::File(_)))
        .map_or(0, |i| i + 1);
    for (i, source) in sources.iter().enumerate() {
        if i == env_at {
            merge_env(&env.config_vars, &mut merged, &mut errors);
        }
        match source {
            Source::File(path) => merge_file(path, &mut merged, &mut errors),
            Source::Define(def) => merge_define(def, &mut merged, &mut errors),
        }
    }
    if env_at == sources.len() {
        merge_env(&env.config_vars, &mut merged, &mut errors);
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
    // Each trusted issuer named anywhere gets every key of its section, with the
    // defaults; with none, the empty section is shown so check-config mentions it.
    let issuers: std::collections::BTreeSet<String> = merged
        .keys()
        .filter_map(|k| keys::split_issuer_key(k).map(|(name, _)| name.to_string()))
        .collect();
    if issuers.is_empty() {
        effective.insert(keys::ISSUERS.into(), Value::Object(Map::new()));
    }
    for name in &issuers {
        for k in keys::ISSUER_KEYS {
            effective.insert(
                format!("{}.{name}.{}", keys::ISSUERS, k.name),
                serde_json::from_str(k.default).expect("registry defaults are JSON"),
            );
        }
    }
    if dev {
        effective.insert(
            "system.state_dir".into(),
            Value::String(env.cwd.join(DEV_STATE_DIR).display().to_string()),
        );
    }
    for (k, v) in merged {
        if !v.is_null() {
            effective.insert(k, v);
        }
    }
    validate::derive_defaults(&mut effective, dev, env);
    let config = match serde_json::from_value::<Config>(nest(&effective, false)) {
        Ok(mut c) => {
            c.dev = dev;
            c
        }
        Err(e) => {
            // The registry checked every value, so this is a registry/struct mismatch.
            errors.push(format!(
                "internal: the checked configuration does not fit its types: {e}"
            ));
            return Err(ConfigErrors(errors));
        }
    };
    errors.extend(validate::validate(&config, env));
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let warnings = validate::warnings(&config);
    Ok(Loaded {
        config,
        effective,
        warnings,
    })
}

/// A flat `a.b.c → value` map as nested JSON objects; `mask` hides secrets.
fn nest(flat: &BTreeMap<String, Value>, mask: bool) -> Value {
    let mut root = Map::new();
    for (name, value) in flat {
        let value = match keys::lookup(name) {
            Some(k) if mask && k.secret && !value.is_null() => Value::String("***".into()),
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
        node.insert(parts[parts.len() - 1].to_string(), value);
    }
    Value::Object(root)
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

/// Environment variables that set keys: `PORTCULLIS_SECURITY__SESSION_TTL=60`.
pub const ENV_PREFIX: &str = "PORTCULLIS_";

/// `PORTCULLIS_A__B__C` → `a.b.c`.
fn env_key(var: &str) -> Option<String> {
    let rest = var.strip_prefix(ENV_PREFIX)?;
    let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    (parts.len() >= 2 && parts.iter().all(|p| !p.is_empty())).then(|| parts.join("."))
}

fn merge_env(
    vars: &[(String, String)],
    out: &mut BTreeMap<String, Value>,
    errors: &mut Vec<String>,
) {
    for (var, raw) in vars {
        let Some(name) = env_key(var) else {
            errors.push(format!(
                "{var}: not a configuration variable (PORTCULLIS_<SECTION>__<KEY>, e.g. PORTCULLIS_SECURITY__SESSION_TTL)"
            ));
            continue;
        };
        merge_value(var, &name, raw, out, errors);
    }
}

fn merge_define(def: &str, out: &mut BTreeMap<String, Value>, errors: &mut Vec<String>) {
    let origin = format!("-D {def}");
    let Some((name, raw)) = def.split_once('=') else {
        errors.push(format!("{origin}: expected key=value"));
        return;
    };
    merge_value(&origin, name.trim(), raw, out, errors);
}

/// One `key=value` of `-D` or the environment, named by `origin` in errors.
fn merge_value(
    origin: &str,
    name: &str,
    raw: &str,
    out: &mut BTreeMap<String, Value>,
    errors: &mut Vec<String>,
) {
    let origin = origin.to_string();
    let Some(k) = keys::lookup(name) else {
        errors.push(unknown_key(&origin, name));
        return;
    };
    // A -D value is JSON when it parses as JSON, otherwise a plain string; lists may be
    // given comma-separated so shells need no quoting gymnastics.
    let value = match serde_json::from_str::<Value>(raw) {
        Ok(v) => v,
        Err(_) if k.kind.is_list() => Value::Array(
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
    if let Some((issuer, rest)) = keys::split_issuer_key(name) {
        if !keys::valid_issuer_name(issuer) {
            return format!(
                "{origin}: \"{name}\": an issuer's name (security.issuers.<name>) may only use letters, digits, _ and -"
            );
        }
        if rest.is_empty() {
            return format!(
                "{origin}: \"{name}\" is a section; set its keys (e.g. \"{name}.issuer\")"
            );
        }
    }
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
    match normalize(name, def.kind, value) {
        Ok(v) => {
            out.insert(name.to_string(), v);
        }
        Err(problem) => errors.push(format!("{origin}: {problem}")),
    }
}

/// Check a value against its kind, accepting the forms people write by hand
/// (`"min_version": 1.3`, a single string where a list is expected). The error is
/// the whole sentence after the origin.
fn normalize(name: &str, kind: Kind, value: Value) -> Result<Value, String> {
    if value.is_null() {
        return Ok(value);
    }
    let must_be = |expected: &str| format!("\"{name}\" must be {expected}");
    let scalar_string = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let strings = |value: Value| -> Result<Vec<String>, String> {
        match value {
            Value::String(s) => Ok(vec![s]),
            Value::Array(items) => items
                .iter()
                .map(|item| {
                    scalar_string(item).ok_or_else(|| must_be("a string or a list of strings"))
                })
                .collect(),
            _ => Err(must_be("a string or a list of strings")),
        }
    };
    let list = |items: Vec<String>| Value::Array(items.into_iter().map(Value::String).collect());
    match kind {
        Kind::Str => scalar_string(&value)
            .map(Value::String)
            .ok_or_else(|| must_be("a string")),
        Kind::Bool => match &value {
            Value::Bool(_) => Ok(value),
            Value::String(s) if s == "true" || s == "false" => Ok(Value::Bool(s == "true")),
            _ => Err(must_be("true or false")),
        },
        Kind::UInt => match &value {
            Value::Number(n) if n.as_u64().is_some() => Ok(value),
            Value::String(s) if s.parse::<u64>().is_ok() => {
                Ok(Value::from(s.parse::<u64>().expect("checked")))
            }
            _ => Err(must_be("a non-negative integer")),
        },
        Kind::StrList => strings(value).map(list),
        Kind::CommaList => strings(value).map(|items| {
            list(
                items
                    .iter()
                    .flat_map(|s| s.split(','))
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            )
        }),
        Kind::Enum(allowed) => match scalar_string(&value) {
            Some(s) if allowed.contains(&s.as_str()) => Ok(Value::String(s)),
            _ => Err(must_be(&format!("one of {}", allowed.join(", ")))),
        },
        Kind::EnumList(what, allowed) => {
            let mut out: Vec<String> = Vec::new();
            for item in strings(value)? {
                if !allowed.contains(&item.as_str()) {
                    return Err(format!(
                        "\"{name}\": unknown {what} \"{item}\" (known: {})",
                        allowed.join(", ")
                    ));
                }
                if !out.contains(&item) {
                    out.push(item);
                }
            }
            Ok(list(out))
        }
        Kind::ClaimMap => {
            let problem = || {
                must_be(
                    "an object of claim names to a value or a list of values (strings, numbers or booleans), e.g. {\"urn:inmanta:env\": \"42\"}",
                )
            };
            let Value::Object(map) = &value else {
                return Err(problem());
            };
            let scalar =
                |v: &Value| matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_));
            for (claim, v) in map {
                let ok = !claim.is_empty()
                    && match v {
                        Value::Array(items) => !items.is_empty() && items.iter().all(scalar),
                        v => scalar(v),
                    };
                if !ok {
                    return Err(problem());
                }
            }
            Ok(value)
        }
        Kind::AddrList => {
            let items = strings(value)?;
            if let Some(bad) = items
                .iter()
                .find(|a| a.parse::<std::net::SocketAddr>().is_err())
            {
                return Err(format!(
                    "\"{name}\": \"{bad}\" is not an address:port (e.g. 127.0.0.1:4367 or [::1]:4367)"
                ));
            }
            Ok(list(items))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Mechanism;

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
    fn the_environment_sits_between_the_files_and_the_defines() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.json", BASE);
        let b = write(
            dir.path(),
            "b.json",
            r#"{"security":{"session_ttl":20,"max_sessions":7}}"#,
        );
        let mut env = fixed_env();
        env.config_vars = vec![
            ("PORTCULLIS_SECURITY__MAX_SESSIONS".into(), "9".into()),
            ("PORTCULLIS_SECURITY__SESSION_TTL".into(), "60".into()),
            (
                "PORTCULLIS_FORWARD__PUBLIC_URIS".into(),
                "/a:GET,/b:*".into(),
            ),
            ("PORTCULLIS_SECURITY__OIDC__SCOPES".into(), "openid".into()),
        ];
        let l = load_in(&[a.clone(), b, d("security.session_ttl=5")], false, &env).unwrap();
        assert_eq!(l.config.security.session_ttl, 5, "-D wins");
        assert_eq!(
            l.config.security.max_sessions, 9,
            "the environment beats the file"
        );
        assert_eq!(l.config.forward.public_uris, ["/a:GET", "/b:*"]);
        assert_eq!(l.config.security.oidc.scopes, "openid");

        env.config_vars = vec![
            ("PORTCULLIS_SECURITY__SESION_TTL".into(), "60".into()),
            ("PORTCULLIS_SECURITY__MAX_SESSIONS".into(), "many".into()),
        ];
        let e = load_in(&[a], false, &env).unwrap_err().to_string();
        assert!(
            e.contains("PORTCULLIS_SECURITY__SESION_TTL: unknown key \"security.sesion_ttl\" (did you mean \"security.session_ttl\"?)"),
            "{e}"
        );
        assert!(e.contains("PORTCULLIS_SECURITY__MAX_SESSIONS:"), "{e}");
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

    fn fixed_env() -> Env {
        Env {
            hostname: "pc.example.com".into(),
            cores: 3,
            cwd: PathBuf::from("/srv"),
            krb5_ktname: Some("FILE:/k.keytab".into()),
            default_realm: || Some("EXAMPLE.COM".into()),
            pam_service_installed: |s| s == "portcullis",
            config_vars: Vec::new(),
        }
    }

    #[test]
    fn derived_defaults_come_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.json", BASE);
        let l = load_in(&[a, d("security.use_kerberos=true")], false, &fixed_env()).unwrap();
        let (sys, sec) = (&l.config.system, &l.config.security);
        assert_eq!(sys.hostname, "pc.example.com");
        assert_eq!(sys.blocking_threads, 6);
        assert_eq!(sec.krb_keytab, "FILE:/k.keytab");
        assert_eq!(sec.krb_realms, ["EXAMPLE.COM"]);
        assert_eq!(
            sec.mechanisms,
            [
                Mechanism::Password,
                Mechanism::Certificate,
                Mechanism::Kerberos
            ]
        );
        assert_eq!(
            l.effective["security.krb_realms"],
            serde_json::json!(["EXAMPLE.COM"])
        );
        let l = load_in(&[], true, &fixed_env()).unwrap();
        assert_eq!(
            l.config.system.state_dir,
            PathBuf::from("/srv/var/portcullis")
        );
    }

    #[test]
    fn every_registry_key_is_a_typed_field() {
        // deny_unknown_fields refuses a registered key without a field; a field
        // without a registered key is missing from the map.
        let l = load_in(&[d("security.mechanisms=password")], true, &fixed_env()).unwrap();
        // Every registry key, and the (empty) section of the trusted issuers.
        assert_eq!(l.effective.len(), keys::KEYS.len() + 1);
        assert!(l.config.security.issuers.is_empty());
        assert_eq!(l.config.ssl.min_version, TlsVersion::Tls12);
        assert_eq!(l.config.log.format, LogFormat::Text);
        assert_eq!(
            l.config.security.oidc.validation_mode,
            crate::auth::oidc::Mode::Jwt
        );
    }

    #[test]
    fn bad_addresses_and_duplicate_mechanisms() {
        let err = load_in(
            &[d("system.listen=127.0.0.1:1,nowhere")],
            true,
            &fixed_env(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(r#"-D system.listen=127.0.0.1:1,nowhere: "system.listen": "nowhere" is not an address:port"#),
            "{err}"
        );
        let l = load_in(
            &[d("security.mechanisms=password,certificate,password")],
            true,
            &fixed_env(),
        )
        .unwrap();
        assert_eq!(
            l.config.security.mechanisms,
            [Mechanism::Password, Mechanism::Certificate]
        );
    }

    const SECRET: &str = "-W1DXzhbT012uyHpMpSIXlMMHWm5jth83q-Sw8R-EAE";

    #[test]
    fn trusted_issuers_from_files_and_defines_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(
            dir.path(),
            "a.json",
            &format!(
                r#"{{"security":{{"issuers":{{"inmanta":{{"issuer":"https://inmanta.example:8888/","algorithm":"HS256","secret":"{SECRET}","client_types":"agent,api","audience":"https://inmanta.example:8888/","required_claims":{{"urn:inmanta:env":["e1","e2"],"org.team":"ops"}}}}}}}}}}"#
            ),
        );
        let l = load_in(
            &[
                a,
                d("security.issuers.kc.issuer=https://kc.example/realms/corp"),
                d("security.issuers.kc.jwks_uri=https://kc.example/realms/corp/certs"),
                d("security.issuers.kc.client_types=api,agent"),
                d("security.issuers.kc.audience=portcullis"),
            ],
            true,
            &fixed_env(),
        )
        .unwrap();
        let sec = &l.config.security;
        assert!(
            sec.mechanisms.contains(&Mechanism::Oidc),
            "issuers imply oidc"
        );
        assert!(
            !crate::auth::oidc::configured(&sec.oidc),
            "and security.oidc stays unset"
        );
        let i = &sec.issuers["inmanta"];
        assert_eq!(i.algorithm, crate::auth::oidc::IssuerAlgorithm::HS256);
        assert_eq!(i.username_claim, "sub");
        assert_eq!(i.groups_claim, "groups");
        assert_eq!(i.jwks_request_timeout, 5);
        assert_eq!(
            i.client_types,
            ["agent", "api"],
            "split as Inmanta writes them"
        );
        assert_eq!(i.required_claims["org.team"], "ops");
        let kc = &sec.issuers["kc"];
        assert_eq!(kc.algorithm, crate::auth::oidc::IssuerAlgorithm::RS256);
        assert_eq!(
            kc.client_types,
            ["api", "agent"],
            "-D lists split on commas"
        );
        assert_eq!(kc.audience, ["portcullis"]);
        let shown = l.to_masked_json();
        assert_eq!(shown["security"]["issuers"]["inmanta"]["secret"], "***");
        assert_eq!(shown["security"]["issuers"]["kc"]["secret"], Value::Null);
        assert_eq!(shown["security"]["issuers"]["kc"]["username_claim"], "sub");
        assert!(!shown.to_string().contains(SECRET));
        assert!(!format!("{:?}", l.config).contains(SECRET));
        assert!(
            l.warnings.is_empty(),
            "audiences set, no unused ca_cert: {:?}",
            l.warnings
        );
    }

    #[test]
    fn trusted_issuer_rules_name_the_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("missing-ca.pem");
        let err = load_in(
            &[
                d("security.oidc.issuer=https://idp.example"),
                d("security.oidc.audience=pc"),
                d("security.issuers.short.issuer=https://short.example"),
                d("security.issuers.short.algorithm=HS256"),
                d("security.issuers.short.secret=HcAbjC3R19_Y6YdZpysp5A"),
                d("security.issuers.both.issuer=https://both.example"),
                d(&format!("security.issuers.both.secret={SECRET}")),
                d("security.issuers.both.jwks_uri=https://both.example/jwks"),
                d("security.issuers.nosecret.issuer=https://nosecret.example"),
                d("security.issuers.nosecret.algorithm=HS256"),
                d("security.issuers.nosecret.jwks_uri=https://nosecret.example/jwks"),
                d("security.issuers.dup.issuer=https://short.example/"),
                d("security.issuers.dup.jwks_uri=http://dup.example/jwks"),
                d("security.issuers.same.issuer=https://idp.example"),
                d("security.issuers.same.jwks_uri=https://idp.example/jwks"),
                d(&format!("security.issuers.same.ca_cert={}", ca.display())),
                d("security.issuers.none.audience=x"),
            ],
            true,
            &fixed_env(),
        )
        .unwrap_err();
        let all = err.to_string();
        for needle in [
            r#""security.issuers.short.secret" is 128 bits; an HS256 secret needs at least 256"#,
            r#""security.issuers.both.jwks_uri" and "security.issuers.both.secret" are both set"#,
            r#""security.issuers.both.secret" is set but "security.issuers.both.algorithm" is RS256"#,
            r#""security.issuers.nosecret.algorithm" is HS256 but "security.issuers.nosecret.secret" is not set"#,
            r#""security.issuers.short.issuer" is "https://short.example", the issuer of security.issuers.dup too"#,
            r#""security.issuers.dup.jwks_uri" is "http://dup.example/jwks": it must be an https:// URL"#,
            r#""security.issuers.same.issuer" is "https://idp.example", which is security.oidc.issuer"#,
            r#""security.issuers.same.ca_cert": cannot read"#,
            r#""security.issuers.none.issuer" is required"#,
            r#"security.issuers.none needs "security.issuers.none.jwks_uri" (RS256, ES256, EdDSA) or "security.issuers.none.secret" (HS256)"#,
        ] {
            assert!(all.contains(needle), "missing {needle}:\n{all}");
        }
        assert_eq!(err.0.len(), 10, "{all}");
    }

    #[test]
    fn unknown_issuer_keys_bad_names_and_claim_maps() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(
            dir.path(),
            "a.json",
            r#"{"security":{"issuers":{"inmanta":{"issuer":"i","secert":"x"},"in manta":{"issuer":"j"}}}}"#,
        );
        let err = load_in(
            &[
                a,
                d("security.issuers.kc.client_type=api"),
                d("security.issuers.kc.required_claims=team"),
                d(r#"security.issuers.kc.required_claims={"a":{"b":1}}"#),
                d("security.issuers.kc=x"),
                d("security.issuers.kc.algorithm=HS512"),
            ],
            true,
            &fixed_env(),
        )
        .unwrap_err();
        let all = err.to_string();
        for needle in [
            r#"unknown key "security.issuers.inmanta.secert" (did you mean "security.issuers.inmanta.secret"?)"#,
            r#"unknown key "security.issuers.kc.client_type" (did you mean "security.issuers.kc.client_types"?)"#,
            r#""security.issuers.in manta": an issuer's name (security.issuers.<name>) may only use letters, digits, _ and -"#,
            r#""security.issuers.kc.required_claims" must be an object of claim names"#,
            r#""security.issuers.kc" is a section; set its keys"#,
            r#""security.issuers.kc.algorithm" must be one of RS256, ES256, EdDSA, HS256"#,
        ] {
            assert!(all.contains(needle), "missing {needle}:\n{all}");
        }
        assert_eq!(err.0.len(), 8, "{all}");
    }

    #[test]
    fn issuers_need_the_oidc_mechanism_and_security_oidc_still_checks_itself() {
        let issuer = [
            d("security.issuers.x.issuer=https://x.example"),
            d("security.issuers.x.jwks_uri=https://x.example/jwks"),
            d("security.issuers.x.audience=pc"),
        ];
        let mut only_certs = issuer.to_vec();
        only_certs.push(d("security.mechanisms=certificate"));
        let err = load_in(&only_certs, true, &fixed_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not list oidc"), "{err}");
        let mut half_oidc = issuer.to_vec();
        half_oidc.push(d("security.oidc.issuer=https://idp.example"));
        let err = load_in(&half_oidc, true, &fixed_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs: security.oidc.audience"), "{err}");
        let l = load_in(&issuer, true, &fixed_env()).unwrap();
        assert_eq!(
            l.effective["security.issuers.x.jwks_request_timeout"],
            serde_json::json!(5)
        );
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
