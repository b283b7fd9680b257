//! Local validation of a JWT access token: signature by a key of the IdP's JWKS,
//! `iss`, `aud`, `exp` and `nbf`. The checks themselves ([`validation`], [`verify`])
//! are shared with the trusted issuers (`security.issuers`, [`super::issuers`]).

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation, decode};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::jwks::VerifyKey;
use super::provider::Unreachable;
use super::{Inner, LEEWAY, rejected, unavailable};
use crate::auth::AuthError;
use crate::logsafe::Untrusted;

/// What choosing a key needs of a JWS header.
pub(super) struct KeyHint {
    pub alg: Algorithm,
    pub kid: Option<String>,
}

/// The algorithm and key id of a compact JWS's header, found where
/// `jsonwebtoken::decode_header` finds the header; `alg: none` and unknown
/// algorithms are refused here (jsonwebtoken has no such variant). Read into a
/// struct of its own rather than `jsonwebtoken::Header`, whose dozen optional
/// fields (certificate chains, an embedded JWK) cost allocations on every login;
/// `decode` still reads the whole header when it verifies the token.
pub(super) fn header(token: &str) -> Result<KeyHint, AuthError> {
    #[derive(Deserialize)]
    struct Fields<'a> {
        alg: Algorithm,
        #[serde(borrow, default)]
        kid: Option<Cow<'a, str>>,
    }
    let refuse = |why: &str| {
        // The reason may quote the client's header, so it is cleaned for the log.
        tracing::info!(error = %Untrusted(why), "bearer token refused: not a usable JWT");
        rejected("token_malformed")
    };
    let Some(encoded) = token
        .rsplit_once('.')
        .and_then(|(message, _)| message.rsplit_once('.'))
        .map(|(header, _)| header)
    else {
        return Err(refuse("not three dot-separated parts"));
    };
    let json = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|e| refuse(&e.to_string()))?;
    // A JOSE header is a JSON object (RFC 7515 §4); serde would also fill the
    // struct from an array.
    if json.trim_ascii_start().first() != Some(&b'{') {
        return Err(refuse("the header is not a JSON object"));
    }
    let f: Fields = serde_json::from_slice(&json).map_err(|e| refuse(&e.to_string()))?;
    Ok(KeyHint {
        alg: f.alg,
        kid: f.kid.map(Cow::into_owned),
    })
}

/// What a token must satisfy besides its signature: `exp` and `iss` always, `nbf`
/// when present, with [`LEEWAY`]; `aud` must be one of `audience`. With no
/// `audience`, `aud` is not required, but a token that carries one is refused.
pub(super) fn validation(alg: Algorithm, issuer: &str, audience: &[&str]) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = LEEWAY;
    v.validate_nbf = true;
    if audience.is_empty() {
        v.set_required_spec_claims(&["exp", "iss"]);
    } else {
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.set_audience(audience);
    }
    v.set_issuer(&[issuer]);
    v
}

/// [`validation`] for every algorithm jsonwebtoken knows, made once: the issuer
/// and audience do not change while the daemon runs, and making one costs a few
/// allocations per login.
pub(super) struct Validations(Vec<Validation>);

impl Validations {
    pub(super) fn new(issuer: &str, audience: &[&str]) -> Validations {
        let families = [
            AlgorithmFamily::Hmac,
            AlgorithmFamily::Rsa,
            AlgorithmFamily::Ec,
            AlgorithmFamily::Ed,
        ];
        Validations(
            families
                .iter()
                .flat_map(|f| f.algorithms())
                .map(|alg| validation(*alg, issuer, audience))
                .collect(),
        )
    }

    /// The validation for `alg`, which allows that algorithm only.
    pub(super) fn get(&self, alg: Algorithm) -> &Validation {
        self.0
            .iter()
            .find(|v| v.algorithms == [alg])
            .expect("a validation for every algorithm")
    }
}

/// The claims of `token` that `paths` reach (see [`super::claims::reachable`]) if
/// one of `candidates` verifies it under `v`; otherwise a 401 whose reason (logged)
/// says what failed.
pub(super) fn verify<P: AsRef<str>>(
    token: &str,
    candidates: &[VerifyKey],
    v: &Validation,
    paths: &[P],
) -> Result<Value, AuthError> {
    let mut last = None;
    for k in candidates {
        match decode::<Box<RawValue>>(token, &k.key, v) {
            Ok(data) => {
                return super::claims::reachable(&data.claims, paths).map_err(|e| {
                    tracing::info!(error = %Untrusted(&e.to_string()), "bearer token refused: its claims are not a JSON object");
                    rejected("token_invalid")
                });
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(e) = last else {
        return Err(rejected("unknown_key"));
    };
    let reason = match e.kind() {
        ErrorKind::ExpiredSignature => "token_expired",
        ErrorKind::ImmatureSignature => "token_not_yet_valid",
        ErrorKind::InvalidIssuer => "wrong_issuer",
        ErrorKind::InvalidAudience => "wrong_audience",
        ErrorKind::InvalidSignature => "bad_signature",
        ErrorKind::MissingRequiredClaim(_) => "missing_claim",
        ErrorKind::InvalidAlgorithm => "algorithm_mismatch",
        _ => "token_invalid",
    };
    tracing::info!(reason, error = %Untrusted(&e.to_string()), "bearer token refused");
    Err(rejected(reason))
}

impl Inner {
    pub(super) async fn jwt(&self, token: &str) -> Result<Value, AuthError> {
        let header = header(token)?;
        let endpoints = self.endpoints().await?;
        let uri = endpoints
            .jwks_uri
            .clone()
            .ok_or_else(|| unavailable(Unreachable("the IdP publishes no jwks_uri".into())))?;
        let candidates = self
            .keys
            .for_token(&self.http, &uri, header.kid.as_deref(), header.alg)
            .await
            .map_err(unavailable)?;
        if candidates.is_empty() {
            tracing::info!(kid = %Untrusted(header.kid.as_deref().unwrap_or("")), alg = ?header.alg, "bearer token refused: no IdP key for this kid and algorithm");
            return Err(rejected("unknown_key"));
        }
        let s = &self.settings;
        verify(
            token,
            &candidates,
            self.validations.get(header.alg),
            &[s.username_claim.as_str(), s.groups_claim.as_str()],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    /// The header reader takes and refuses what `jsonwebtoken::decode_header`
    /// takes and refuses, and reads the same algorithm and key id.
    #[test]
    fn headers_are_read_and_refused_as_jsonwebtoken_does() {
        let tokens = [
            format!(
                "{}.e30.c2ln",
                b64(r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#)
            ),
            format!("{}.e30.c2ln", b64(r#"{"alg":"ES384"}"#)),
            format!("{}.e30.c2ln", b64(r#"{"kid":"k\u0031","alg":"PS256"}"#)),
            format!("{}.e30.", b64(r#"{"alg":"HS256","kid":null}"#)),
            format!("{}.e30.c2ln", b64(r#"{"alg":"none"}"#)),
            format!("{}.e30.c2ln", b64(r#"{"alg":"RS257"}"#)),
            format!("{}.e30.c2ln", b64(r#"{"kid":"k1"}"#)),
            format!("{}.e30.c2ln", b64(r#"{"alg":"RS256","alg":"HS256"}"#)),
            format!("{}.e30.c2ln", b64(r#"["RS256"]"#)),
            format!("{}.e30.c2ln", b64(r#"[null,"RS256"]"#)),
            format!("{}.e30", b64(r#"{"alg":"RS256"}"#)),
            format!("x.{}.e30.c2ln", b64(r#"{"alg":"RS256"}"#)),
            "not a token".to_string(),
            "%%%.e30.c2ln".to_string(),
            String::new(),
        ];
        for t in &tokens {
            let ours = header(t);
            match jsonwebtoken::decode_header(t) {
                Ok(h) => {
                    let k = ours.unwrap_or_else(|_| panic!("refused what jsonwebtoken reads: {t}"));
                    assert_eq!((k.alg, k.kid), (h.alg, h.kid), "{t}");
                }
                Err(_) => assert!(ours.is_err(), "read what jsonwebtoken refuses: {t}"),
            }
        }
        // The valid ones above are read, not all refused.
        assert_eq!(tokens.iter().filter(|t| header(t).is_ok()).count(), 4);
    }
}
