//! Local validation of a JWT access token: signature by a key of the IdP's JWKS,
//! `iss`, `aud`, `exp` and `nbf`. The checks themselves ([`validation`], [`verify`])
//! are shared with the trusted issuers (`security.issuers`, [`super::issuers`]).

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation, decode, decode_header};
use serde_json::Value;

use super::jwks::VerifyKey;
use super::provider::Unreachable;
use super::{Inner, LEEWAY, rejected, unavailable};
use crate::auth::AuthError;
use crate::logsafe::Untrusted;

/// The header of a compact JWS; `alg: none` and unknown algorithms are refused here
/// (jsonwebtoken has no such variant).
pub(super) fn header(token: &str) -> Result<jsonwebtoken::Header, AuthError> {
    decode_header(token).map_err(|e| {
        // The error quotes the client's header, so it is cleaned for the log.
        tracing::info!(error = %Untrusted(&e.to_string()), "bearer token refused: not a usable JWT");
        rejected("token_malformed")
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

/// The claims of `token` if one of `candidates` verifies it under `v`; otherwise a
/// 401 whose reason (logged) says what failed.
pub(super) fn verify(
    token: &str,
    candidates: &[VerifyKey],
    v: &Validation,
) -> Result<Value, AuthError> {
    let mut last = None;
    for k in candidates {
        match decode::<Value>(token, &k.key, v) {
            Ok(data) => return Ok(data.claims),
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
        let v = validation(
            header.alg,
            s.issuer.as_deref().unwrap_or_default(),
            &[s.audience.as_deref().unwrap_or_default()],
        );
        verify(token, &candidates, &v)
    }
}
