//! JWTs the daemon issues (SPEC §11): sessions with `security.session_format = jwt`
//! and service tokens (`portcullis token create`), for verifiers that check them
//! offline with `/.well-known/jwks.json` — Inmanta's servers among them.
//!
//! A JWT session is still a session in the store: its `jti` is the store's key (the
//! SHA-256 a `pcs_` token would have), so a logout, an eviction, an idle timeout or
//! `admin revoke` ends it for `GET /v1/session` exactly like an opaque one (this is
//! the "revocation list" of SPEC §11, kept as the list of live sessions), and a
//! shared Redis shares it. Offline verifiers accept it until `exp`. Service tokens
//! are not sessions: they are verified offline only, never by `GET /v1/session`.

pub mod keys;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Header, Validation};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::config::types::TokenSettings;
use crate::session::{Session, TokenHash};
pub use keys::KeyError;
use keys::KeySet;

/// The client type of a session from a login (as Inmanta calls its API clients).
pub const SESSION_CLIENT_TYPE: &str = "api";
/// Every client type Inmanta knows; `portcullis token bootstrap` grants them all.
pub const ALL_CLIENT_TYPES: [&str; 3] = ["api", "compiler", "agent"];
/// `mech` of a service token.
const SERVICE_MECH: &str = "token";
/// Verified session JWTs remembered (by the token's SHA-256) so a repeated check
/// skips the signature; the revocation check (the store) is never skipped.
const VERIFIED_MAX: usize = 100_000;

/// What a presented JWT is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// A session: look its `jti` up in the store.
    Session(TokenHash),
    /// A valid service token: not a session.
    Service,
    /// Not ours, or not valid (reason for the log).
    Invalid(&'static str),
}

/// A service token to sign (`portcullis token create`).
#[derive(Debug, Clone, Default)]
pub struct ServiceToken {
    pub client_types: Vec<String>,
    pub env: Option<String>,
    /// `None`: never expires (only with `security.token.allow_non_expiring`).
    pub ttl: Option<Duration>,
    pub user: Option<String>,
    pub labels: Vec<String>,
}

/// A signed service token and what the audit line says of it.
pub struct Signed {
    pub token: zeroize::Zeroizing<String>,
    pub jti: String,
    pub expires: Option<u64>,
}

pub struct TokenIssuer {
    settings: TokenSettings,
    issuer: String,
    state_dir: PathBuf,
    session_ttl: u64,
    keys: RwLock<KeySet>,
    verified: Mutex<HashMap<[u8; 32], (TokenHash, u64)>>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

impl TokenIssuer {
    /// The keys of `security.token.*` (a key file made on the first start).
    pub fn new(
        settings: &TokenSettings,
        issuer: String,
        state_dir: PathBuf,
        session_ttl: u64,
    ) -> Result<TokenIssuer, KeyError> {
        let keys = KeySet::load(settings, &state_dir, session_ttl)?;
        Ok(TokenIssuer {
            settings: settings.clone(),
            issuer,
            state_dir,
            session_ttl,
            keys: RwLock::new(keys),
            verified: Mutex::new(HashMap::new()),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    fn keys(&self) -> std::sync::RwLockReadGuard<'_, KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    /// SIGHUP: read the key file again; a new key signs from now on and the old
    /// one stays published until its tokens have expired. On error the keys in
    /// force are kept.
    pub fn reload(&self) -> Result<String, KeyError> {
        let fresh = KeySet::load(&self.settings, &self.state_dir, self.session_ttl)?;
        let kid = fresh.signing.public.kid.clone();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(kid)
    }

    fn sign(&self, claims: &Value) -> String {
        let keys = self.keys();
        let mut header = Header::new(keys.signing.algorithm);
        header.kid = Some(keys.signing.public.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, &keys.signing.encoding)
            .expect("signing with a loaded key does not fail")
    }

    fn prefixed(&self, name: &str) -> String {
        format!("{}{name}", self.settings.claim_prefix)
    }

    /// The JWT handed out for a session whose store key is `hash`.
    pub fn sign_session(&self, session: &Session, hash: &TokenHash) -> String {
        let info = &session.info;
        let strings =
            |v: &[std::sync::Arc<str>]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.issuer));
        claims.insert("sub".into(), json!(info.user.as_ref()));
        claims.insert("aud".into(), json!(self.settings.audience));
        claims.insert("iat".into(), json!(unix(info.created_at)));
        claims.insert("exp".into(), json!(unix(session.expires_at)));
        claims.insert("jti".into(), json!(URL_SAFE_NO_PAD.encode(hash.0)));
        claims.insert("groups".into(), json!(strings(&info.groups)));
        claims.insert("labels".into(), json!(strings(&info.labels)));
        claims.insert("mech".into(), json!(info.mechanism.as_str()));
        claims.insert(self.prefixed("ct"), json!(SESSION_CLIENT_TYPE));
        self.sign(&Value::Object(claims))
    }

    /// A service token (`portcullis token create` / `bootstrap`).
    pub fn sign_service(&self, req: &ServiceToken) -> Result<Signed, String> {
        if req.ttl.is_none() && !self.settings.allow_non_expiring {
            return Err("a token that never expires (--ttl 0) needs security.token.allow_non_expiring = true".into());
        }
        if req.client_types.is_empty() {
            return Err(
                "name at least one client type (--client-type api|compiler|agent|…)".into(),
            );
        }
        for ct in &req.client_types {
            if ct.is_empty() || ct.contains(',') || ct.chars().any(char::is_control) {
                return Err(format!(
                    "\"{}\" is not a client type",
                    crate::logsafe::clean(ct)
                ));
            }
        }
        let now = unix(SystemTime::now());
        let expires = req.ttl.map(|t| now + t.as_secs().max(1));
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).expect("the kernel's CSPRNG is available");
        let jti = URL_SAFE_NO_PAD.encode(raw);
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.issuer));
        if let Some(u) = &req.user {
            claims.insert("sub".into(), json!(u));
        }
        claims.insert("aud".into(), json!(self.settings.audience));
        claims.insert("iat".into(), json!(now));
        if let Some(e) = expires {
            claims.insert("exp".into(), json!(e));
        }
        claims.insert("jti".into(), json!(jti));
        claims.insert("labels".into(), json!(req.labels));
        claims.insert("mech".into(), json!(SERVICE_MECH));
        claims.insert(self.prefixed("ct"), json!(req.client_types.join(",")));
        if let Some(env) = &req.env {
            claims.insert(self.prefixed("env"), json!(env));
        }
        let token = self.sign(&Value::Object(claims));
        // The key must stay published as long as this token lives.
        if let Err(e) = self
            .keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .signed_service_token(expires)
        {
            tracing::error!(error = %e, "could not record the lifetime of a service token");
        }
        Ok(Signed {
            token: zeroize::Zeroizing::new(token),
            jti,
            expires,
        })
    }

    /// Check a presented JWT: one of our keys, our issuer and audience, not expired.
    pub fn verify(&self, token: &str) -> Presented {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = unix(SystemTime::now());
        if let Some((hash, exp)) = self.lock_verified().get(&digest).copied() {
            return if exp > now {
                Presented::Session(hash)
            } else {
                Presented::Invalid("token_expired")
            };
        }
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return Presented::Invalid("token_malformed");
        };
        let keys = self.keys();
        if header.alg != keys.signing.algorithm {
            return Presented::Invalid("algorithm_mismatch");
        }
        let mut v = Validation::new(keys.signing.algorithm);
        v.leeway = 0;
        v.validate_exp = false;
        v.set_required_spec_claims(&["iss", "aud"]);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.settings.audience]);
        let mut claims = None;
        for k in keys.verifying() {
            if header.kid.as_deref().is_some_and(|kid| kid != k.kid) {
                continue;
            }
            if let Ok(data) = jsonwebtoken::decode::<Value>(token, &k.decoding, &v) {
                claims = Some(data.claims);
                break;
            }
        }
        drop(keys);
        let Some(claims) = claims else {
            return Presented::Invalid("bad_signature");
        };
        let exp = claims.get("exp").and_then(Value::as_u64);
        if exp.is_some_and(|e| e <= now) {
            return Presented::Invalid("token_expired");
        }
        if claims.get("mech").and_then(Value::as_str) == Some(SERVICE_MECH) {
            return Presented::Service;
        }
        let (Some(exp), Some(hash)) = (
            exp,
            claims
                .get("jti")
                .and_then(Value::as_str)
                .and_then(|j| URL_SAFE_NO_PAD.decode(j).ok())
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .map(TokenHash),
        ) else {
            return Presented::Invalid("token_malformed");
        };
        let mut cache = self.lock_verified();
        if cache.len() >= VERIFIED_MAX {
            cache.retain(|_, (_, e)| *e > now);
            if cache.len() >= VERIFIED_MAX {
                cache.clear();
            }
        }
        cache.insert(digest, (hash, exp));
        Presented::Session(hash)
    }

    fn lock_verified(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (TokenHash, u64)>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `GET /.well-known/jwks.json`.
    pub fn jwks(&self) -> Value {
        self.keys().jwks()
    }

    /// `GET /.well-known/openid-configuration`: enough for JWT libraries and
    /// Inmanta's `jwks_uri` discovery.
    pub fn openid_configuration(&self) -> Value {
        let alg = format!("{:?}", self.keys().signing.algorithm);
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/.well-known/jwks.json", self.issuer.trim_end_matches('/')),
            "id_token_signing_alg_values_supported": [alg],
            "token_endpoint_auth_methods_supported": [],
            "response_types_supported": [],
            "subject_types_supported": ["public"],
            "claims_supported": ["iss", "sub", "aud", "iat", "exp", "jti", "groups", "labels", "mech", self.prefixed("ct"), self.prefixed("env")],
        })
    }

    /// The kid signing now (for `admin status`).
    pub fn current_kid(&self) -> String {
        self.keys().signing.public.kid.clone()
    }
}
