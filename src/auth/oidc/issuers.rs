//! Trusted issuers besides `security.oidc` (`security.issuers.<name>`, SPEC §11):
//! Inmanta's own HS256 tokens, a second Keycloak, an Auth0 tenant.
//!
//! A token is routed by the `iss` of its payload, read unverified and used for
//! nothing else; it is then verified with that issuer's settings alone. The
//! algorithm is the issuer's, never the token's: a token whose header names another
//! one is refused before any key is looked at, so an HS256 token cannot claim an
//! RS256 issuer (with the public key as the HMAC secret) and an HS256 issuer accepts
//! nothing but HMACs with its own secret. Then `client_types` and `required_claims`
//! (a mismatch is a 403: the token is genuine, the server does not accept it), and
//! the user and groups from the issuer's claims, as for `security.oidc`.
//!
//! The JWKS of an issuer is fetched with its own `ca_cert` and
//! `jwks_request_timeout`, cached and refreshed like the one of `security.oidc`
//! ([`Keys`]: an unknown `kid` refetches at most once per
//! `security.oidc.jwks_refetch_interval`, at most one fetch per 5 s while none has
//! worked). An `iss` no issuer has is refused without contacting anything.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::DecodingKey;
use serde_json::{Value, json};

use super::jwks::{Keys, RETRY_FLOOR, VerifyKey};
use super::settings::{IssuerAlgorithm, IssuerSettings};
use super::{REFRESH_EVERY, claims, jwt, provider, rejected, unavailable};
use crate::auth::{AuthError, Identity};
use crate::logsafe::Untrusted;

/// The `iss` of a compact JWS's payload, unverified: only for choosing which issuer
/// verifies it. `None` for anything else (an opaque token, no `iss`).
pub fn unverified_iss(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(payload).ok()?;
    match serde_json::from_slice::<Value>(&raw).ok()?.get("iss")? {
        Value::String(iss) => Some(iss.clone()),
        _ => None,
    }
}

/// How an issuer's signatures are checked.
enum Verifier {
    /// HS256 with the issuer's `secret` (its decoded bytes, as Inmanta keys HMAC).
    Secret(VerifyKey),
    Jwks {
        uri: String,
        http: reqwest::Client,
        keys: Keys,
    },
}

/// One `security.issuers.<name>`.
pub struct Issuer {
    /// `<name>`, for logs and the audit line.
    pub name: Arc<str>,
    settings: IssuerSettings,
    verifier: Verifier,
    /// What its tokens must satisfy besides the signature.
    validation: jsonwebtoken::Validation,
    /// `<security.token.claim_prefix>ct`: the client types claim.
    ct_claim: String,
    /// Every claim path its logins read (username, groups, client types, required
    /// claims): what is kept of a verified token.
    claim_paths: Vec<String>,
}

/// Every trusted issuer, by the `iss` of its tokens.
#[derive(Default)]
pub struct Issuers {
    by_iss: HashMap<String, Arc<Issuer>>,
}

impl Issuers {
    /// The configured issuers (already validated by the configuration check).
    /// `claim_prefix` is `security.token.claim_prefix`; `refetch_interval` bounds
    /// JWKS refetches for unknown `kid`s, as for `security.oidc`.
    pub fn new(
        configured: &BTreeMap<String, IssuerSettings>,
        claim_prefix: &str,
        refetch_interval: Duration,
    ) -> Result<Issuers, String> {
        let mut by_iss = HashMap::new();
        for (name, s) in configured {
            let key = |k: &str| format!("security.issuers.{name}.{k}");
            let iss = s
                .issuer
                .clone()
                .ok_or_else(|| format!("{} is not set", key("issuer")))?;
            let verifier = match (s.algorithm, s.secret.as_deref(), s.jwks_uri.as_deref()) {
                (IssuerAlgorithm::HS256, Some(secret), None) => {
                    let raw = zeroize::Zeroizing::new(
                        URL_SAFE_NO_PAD
                            .decode(secret.trim())
                            .map_err(|e| format!("{}: {e}", key("secret")))?,
                    );
                    Verifier::Secret(VerifyKey {
                        key: Arc::new(DecodingKey::from_secret(&raw)),
                        algorithms: Arc::from([jsonwebtoken::Algorithm::HS256]),
                    })
                }
                (IssuerAlgorithm::HS256, _, _) | (_, Some(_), _) | (_, None, None) => {
                    return Err(format!(
                        "security.issuers.{name}: HS256 takes a secret, the other algorithms a jwks_uri"
                    ));
                }
                (_, None, Some(uri)) => Verifier::Jwks {
                    uri: uri.to_string(),
                    http: provider::http_client_with(
                        s.ca_cert.as_deref(),
                        &key("ca_cert"),
                        Duration::from_secs(s.jwks_request_timeout.max(1)),
                    )?,
                    keys: Keys::new(refetch_interval),
                },
            };
            let ct_claim = format!("{claim_prefix}ct");
            let validation = jwt::validation(
                s.algorithm.jwt(),
                &iss,
                &s.audience.iter().map(String::as_str).collect::<Vec<_>>(),
            );
            by_iss.insert(
                iss,
                Arc::new(Issuer {
                    name: Arc::from(name.as_str()),
                    settings: s.clone(),
                    validation,
                    verifier,
                    claim_paths: [&s.username_claim, &s.groups_claim, &ct_claim]
                        .into_iter()
                        .chain(s.required_claims.keys())
                        .cloned()
                        .collect(),
                    ct_claim,
                }),
            );
        }
        Ok(Issuers { by_iss })
    }

    pub fn is_empty(&self) -> bool {
        self.by_iss.is_empty()
    }

    /// The issuer whose `issuer` is exactly `iss`.
    pub fn get(&self, iss: &str) -> Option<&Arc<Issuer>> {
        self.by_iss.get(iss)
    }

    /// For `admin status`: each issuer's algorithm and, with a JWKS, its age.
    pub fn status(&self) -> Value {
        let mut out = serde_json::Map::new();
        for i in self.by_iss.values() {
            let v = match &i.verifier {
                Verifier::Secret(_) => json!({"algorithm": i.settings.algorithm.as_str()}),
                Verifier::Jwks { keys, .. } => json!({
                    "algorithm": i.settings.algorithm.as_str(),
                    "jwks_age_s": keys.age().map(|a| a.as_secs()),
                    "keys": keys.current().map_or(0, |k| k.len()),
                }),
            };
            out.insert(i.name.to_string(), v);
        }
        Value::Object(out)
    }

    /// Fetch each issuer's JWKS now and keep it fresh in the background; a failed
    /// refresh keeps the known keys.
    pub fn spawn_refresh(self: &Arc<Self>) {
        for issuer in self.by_iss.values() {
            if !matches!(issuer.verifier, Verifier::Jwks { .. }) {
                continue;
            }
            let weak = Arc::downgrade(issuer);
            tokio::spawn(async move {
                loop {
                    let Some(issuer) = weak.upgrade() else { return };
                    let ok = issuer.refresh().await;
                    drop(issuer);
                    tokio::time::sleep(if ok { REFRESH_EVERY } else { RETRY_FLOOR * 2 }).await;
                }
            });
        }
    }
}

impl Issuer {
    async fn refresh(&self) -> bool {
        let Verifier::Jwks { uri, http, keys } = &self.verifier else {
            return true;
        };
        match keys.fetch(http, uri).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(issuer = %self.name, error = %e, "JWKS refresh failed; keeping the known keys");
                false
            }
        }
    }

    /// Verify `token` with this issuer's settings, apply its policy, and say who it
    /// names.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        let claims = self.verify(token).await?;
        self.check_client_types(&claims)?;
        self.check_required_claims(&claims)?;
        super::identity_from(
            &claims,
            &self.settings.username_claim,
            &self.settings.groups_claim,
        )
    }

    async fn verify(&self, token: &str) -> Result<Value, AuthError> {
        let header = jwt::header(token)?;
        let alg = self.settings.algorithm.jwt();
        if header.alg != alg {
            tracing::info!(issuer = %self.name, token_alg = ?header.alg, expected = self.settings.algorithm.as_str(), "bearer token refused: not signed with the issuer's algorithm");
            return Err(rejected("algorithm_mismatch"));
        }
        let candidates = match &self.verifier {
            Verifier::Secret(k) => vec![k.clone()],
            Verifier::Jwks { uri, http, keys } => keys
                .for_token(http, uri, header.kid.as_deref(), alg)
                .await
                .map_err(unavailable)?,
        };
        if candidates.is_empty() {
            tracing::info!(issuer = %self.name, kid = %Untrusted(header.kid.as_deref().unwrap_or("")), "bearer token refused: the issuer has no key for this kid and algorithm");
            return Err(rejected("unknown_key"));
        }
        jwt::verify(token, alg, &candidates, &self.validation, &self.claim_paths).inspect_err(|e| {
            if e.reason() == "wrong_audience" && self.settings.audience.is_empty() {
                tracing::info!(issuer = %self.name, "the token carries aud but security.issuers.{}.audience is not set", self.name);
            }
        })
    }

    /// With `client_types` set, the token's `<prefix>ct` (one comma-separated string
    /// as Inmanta writes it, or a list) must name at least one of them.
    fn check_client_types(&self, claims: &Value) -> Result<(), AuthError> {
        let wanted = &self.settings.client_types;
        if wanted.is_empty() {
            return Ok(());
        }
        let have: Vec<&str> = match claims.get(&self.ct_claim) {
            Some(Value::String(s)) => s.split(',').map(str::trim).collect(),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if have.iter().any(|ct| wanted.iter().any(|w| w == ct)) {
            return Ok(());
        }
        tracing::info!(issuer = %self.name, claim = %self.ct_claim, "bearer token refused: none of its client types is accepted (security.issuers.{}.client_types)", self.name);
        Err(AuthError::AccountUnavailable {
            reason: "client_type_not_allowed",
            message: format!(
                "the token's client types (claim \"{}\") include none this server accepts from its issuer",
                self.ct_claim
            ),
        })
    }

    /// Every `required_claims` entry: the claim (a dot path) equals the value or, for
    /// a list, one of the values; a claim that is itself a list matches when any of
    /// its elements does. The message names the claim, never a value.
    fn check_required_claims(&self, claims: &Value) -> Result<(), AuthError> {
        for (claim, wanted) in &self.settings.required_claims {
            let ok = claims::at(claims, claim).is_some_and(|have| claim_matches(have, wanted));
            if !ok {
                tracing::info!(issuer = %self.name, claim = %claim, "bearer token refused: a required claim is missing or has another value (security.issuers.{}.required_claims)", self.name);
                return Err(AuthError::AccountUnavailable {
                    reason: "required_claim_mismatch",
                    message: format!(
                        "the token's claim \"{claim}\" does not have a value this server requires"
                    ),
                });
            }
        }
        Ok(())
    }
}

fn claim_matches(have: &Value, wanted: &Value) -> bool {
    let wanted: &[Value] = match wanted {
        Value::Array(items) => items,
        one => std::slice::from_ref(one),
    };
    let have: &[Value] = match have {
        Value::Array(items) => items,
        one => std::slice::from_ref(one),
    };
    have.iter().any(|h| wanted.contains(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issuer_is_read_from_a_jws_payload_only() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"iss":"https://a.example","sub":"x"}"#);
        assert_eq!(
            unverified_iss(&format!("e30.{payload}.sig")).as_deref(),
            Some("https://a.example")
        );
        let no_iss = URL_SAFE_NO_PAD.encode(br#"{"sub":"x"}"#);
        let number = URL_SAFE_NO_PAD.encode(br#"{"iss":7}"#);
        for t in [
            "opaque-token".to_string(),
            format!("e30.{payload}"),
            format!("e30.{payload}.sig.more"),
            format!("e30.{no_iss}.sig"),
            format!("e30.{number}.sig"),
            "e30.!!!.sig".to_string(),
        ] {
            assert_eq!(unverified_iss(&t), None, "{t}");
        }
    }

    #[test]
    fn required_claims_match_a_value_or_one_of_a_list() {
        let s = |v: &str| Value::String(v.into());
        assert!(claim_matches(&s("a"), &s("a")));
        assert!(!claim_matches(&s("a"), &s("b")));
        assert!(claim_matches(&s("b"), &json!(["a", "b"])));
        assert!(claim_matches(&json!(["x", "b"]), &json!(["a", "b"])));
        assert!(claim_matches(&json!(["x", "a"]), &s("a")));
        assert!(!claim_matches(&json!([]), &s("a")));
        assert!(claim_matches(&json!(true), &json!(true)));
        assert!(claim_matches(&json!(42), &json!([41, 42])));
        assert!(!claim_matches(&s("42"), &json!(42)), "no type juggling");
    }
}
