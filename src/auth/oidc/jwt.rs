//! Local validation of a JWT access token: signature by a key of the IdP's JWKS,
//! `iss`, `aud`, `exp` and `nbf`.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Validation, decode, decode_header};
use serde_json::Value;

use super::provider::Unreachable;
use super::{Inner, LEEWAY, rejected, unavailable};
use crate::auth::AuthError;
use crate::logsafe::Untrusted;

impl Inner {
    pub(super) async fn jwt(&self, token: &str) -> Result<Value, AuthError> {
        let header = decode_header(token).map_err(|e| {
            // `alg: none` and unknown algorithms fail here: there is no such variant.
            // The error quotes the client's header, so it is cleaned for the log.
            tracing::info!(error = %Untrusted(&e.to_string()), "bearer token refused: not a usable JWT");
            rejected("token_malformed")
        })?;
        let endpoints = self.endpoints().await?;
        let uri = endpoints
            .jwks_uri
            .clone()
            .ok_or_else(|| unavailable(Unreachable("the IdP publishes no jwks_uri".into())))?;
        let set = self
            .keys
            .get_or_fetch(&self.http, &uri)
            .await
            .map_err(unavailable)?;
        let mut candidates = set.candidates(header.kid.as_deref(), header.alg);
        if candidates.is_empty()
            && let Some(kid) = header.kid.as_deref()
            && !set.has_kid(kid)
        {
            // A key the IdP may have rotated in since the last fetch.
            match self.keys.refetch_for(&self.http, &uri, kid).await {
                Ok(Some(fresh)) => candidates = fresh.candidates(Some(kid), header.alg),
                Ok(None) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        if candidates.is_empty() {
            tracing::info!(kid = %Untrusted(header.kid.as_deref().unwrap_or("")), alg = ?header.alg, "bearer token refused: no IdP key for this kid and algorithm");
            return Err(rejected("unknown_key"));
        }
        let s = &self.settings;
        let mut v = Validation::new(header.alg);
        v.leeway = LEEWAY;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.set_issuer(&[s.issuer.as_deref().unwrap_or_default()]);
        v.set_audience(&[s.audience.as_deref().unwrap_or_default()]);
        let mut last = None;
        for k in &candidates {
            match decode::<Value>(token, &k.key, &v) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = Some(e),
            }
        }
        let e = last.expect("at least one candidate");
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
}
