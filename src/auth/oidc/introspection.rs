//! RFC 7662 token introspection for opaque tokens: one IdP round for identical
//! tokens in flight, refusals remembered, answers optionally cached, and the checks
//! RFC 7662 leaves to the resource server.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::cache::{TokenKey, token_key};
use super::provider::{self, Unreachable};
use super::{Inner, LEEWAY, Mode, REFUSED_TTL, Verdict, rejected, unavailable};
use crate::auth::AuthError;
use crate::logsafe::Untrusted;

impl Inner {
    /// An opaque token: a refusal remembered from the last [`REFUSED_TTL`] is repeated
    /// without asking the IdP; otherwise one IdP round for all identical tokens in
    /// flight, and a refusal is remembered.
    pub(super) async fn opaque(&self, token: &str) -> Result<Value, AuthError> {
        let key = token_key(token);
        if let Some(e) = self.refused.get(&key) {
            tracing::info!(
                reason = e.reason(),
                "bearer token refused again (remembered; the IdP was not asked)"
            );
            return Err(e);
        }
        self.in_flight.run(key, self.ask_idp(token, key)).await
    }

    async fn ask_idp(&self, token: &str, key: TokenKey) -> Verdict {
        // A call that finished between our first look and joining the flights may
        // have just refused this token.
        if let Some(e) = self.refused.get(&key) {
            return Err(e);
        }
        let verdict = match self.mode {
            Mode::Introspection => self.introspect(token, key).await,
            Mode::OpenshiftUserapi => self.openshift(token).await,
            _ => self.introspect_then_userinfo(token, key).await,
        };
        if let Err(e @ AuthError::Rejected { .. }) = &verdict {
            self.refused.insert(key, e.clone(), REFUSED_TTL);
        }
        verdict
    }

    /// Keep an introspection answer for `introspection_cache_ttl`, never past the
    /// token's own `exp`.
    fn remember(&self, key: TokenKey, claims: &Arc<Value>) {
        let ttl = self.settings.introspection_cache_ttl;
        if ttl == 0 {
            return;
        }
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let left = claims["exp"]
            .as_u64()
            .map_or(ttl, |exp| exp.saturating_sub(now_unix).min(ttl));
        if left > 0 {
            self.cache
                .insert(key, claims.clone(), Duration::from_secs(left));
        }
    }

    pub(super) async fn introspect(&self, token: &str, key: TokenKey) -> Result<Value, AuthError> {
        if let Some(hit) = self.cache.get(&key) {
            return Ok((*hit).clone());
        }
        let endpoints = self.endpoints().await?;
        let uri = endpoints.introspection.clone().ok_or_else(|| {
            unavailable(Unreachable(
                "the IdP publishes no introspection_endpoint".into(),
            ))
        })?;
        let s = &self.settings;
        let secret = s
            .introspection_client_secret
            .as_ref()
            .map(|z| z.as_str().to_string());
        let _slot = self.idp_call().await?;
        let resp = self
            .http
            .post(&uri)
            .basic_auth(
                s.introspection_client_id.clone().unwrap_or_default(),
                secret,
            )
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .map_err(|e| unavailable(Unreachable(format!("POST {uri}: {e}"))))?;
        if !resp.status().is_success() {
            // 401 here means our introspection credentials are wrong: a server problem.
            return Err(unavailable(Unreachable(format!(
                "POST {uri}: HTTP {}",
                resp.status()
            ))));
        }
        let claims = provider::read_json(resp, &format!("POST {uri}"))
            .await
            .map_err(unavailable)?;
        if claims["active"] != Value::Bool(true) {
            tracing::info!("bearer token refused: introspection says it is not active");
            return Err(rejected("introspection_inactive"));
        }
        self.check_introspected(&claims)?;
        let claims = Arc::new(claims);
        self.remember(key, &claims);
        Ok((*claims).clone())
    }

    /// RFC 7662 leaves checks to the resource server: expiry, issuer, audience.
    fn check_introspected(&self, c: &Value) -> Result<(), AuthError> {
        let s = &self.settings;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if c["exp"].as_u64().is_some_and(|exp| exp + LEEWAY < now) {
            tracing::info!("bearer token refused: introspection shows it expired");
            return Err(rejected("token_expired"));
        }
        if let (Some(iss), Some(want)) = (c["iss"].as_str(), s.issuer.as_deref())
            && iss.trim_end_matches('/') != want.trim_end_matches('/')
        {
            tracing::info!(
                iss = %Untrusted(iss),
                "bearer token refused: introspection shows another issuer"
            );
            return Err(rejected("wrong_issuer"));
        }
        let wanted: Vec<&str> = [s.audience.as_deref(), s.client_id.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        // The audience we are, as xGT: `audience`, else our `client_id` (Keycloak puts
        // the client in `aud` when no audience mapper is set).
        let ours = s.audience.as_deref().or(s.client_id.as_deref());
        let is_ours = |a: &Value| ours.is_some_and(|want| a.as_str() == Some(want));
        let ok = match &c["aud"] {
            a @ Value::String(_) => is_ours(a),
            Value::Array(list) => list.iter().any(is_ours),
            // No audience in the answer: the token must at least belong to our client.
            _ => c["client_id"]
                .as_str()
                .is_some_and(|id| wanted.contains(&id)),
        };
        if !ok {
            tracing::info!(
                aud = %Untrusted(&c["aud"].to_string()),
                client_id = %Untrusted(&c["client_id"].to_string()),
                "bearer token refused: not for this audience"
            );
            return Err(rejected("wrong_audience"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::{OidcAuthenticator, Settings};
    use super::*;

    fn checker(audience: Option<&str>) -> OidcAuthenticator {
        OidcAuthenticator::new(Settings {
            validation_mode: Mode::Introspection,
            issuer: Some("https://idp.example.com".into()),
            client_id: Some("pc-client".into()),
            audience: audience.map(str::to_string),
            introspection_uri: Some("https://idp.example.com/introspect".into()),
            jwks_refetch_interval: 60,
            ..Settings::default()
        })
        .unwrap()
    }

    fn verdict(a: &OidcAuthenticator, answer: Value) -> Result<(), &'static str> {
        a.inner
            .as_ref()
            .unwrap()
            .check_introspected(&answer)
            .map_err(|e| e.reason())
    }

    #[test]
    fn introspected_aud_may_be_the_client_id_when_no_audience_is_set() {
        let a = checker(None);
        assert_eq!(
            verdict(&a, json!({"active": true, "aud": "pc-client"})),
            Ok(())
        );
        assert_eq!(
            verdict(&a, json!({"active": true, "aud": ["account", "pc-client"]})),
            Ok(())
        );
        assert_eq!(
            verdict(&a, json!({"active": true, "aud": "account"})),
            Err("wrong_audience")
        );
        // A non-string entry never matches an unset setting.
        assert_eq!(
            verdict(&a, json!({"active": true, "aud": [7]})),
            Err("wrong_audience")
        );
        assert_eq!(
            verdict(&a, json!({"active": true, "client_id": "pc-client"})),
            Ok(())
        );
    }

    #[test]
    fn a_configured_audience_is_the_one_wanted() {
        let a = checker(Some("api"));
        assert_eq!(verdict(&a, json!({"active": true, "aud": "api"})), Ok(()));
        assert_eq!(
            verdict(&a, json!({"active": true, "aud": "pc-client"})),
            Err("wrong_audience")
        );
        assert_eq!(
            verdict(
                &a,
                json!({"active": true, "aud": "api", "iss": "https://other.example.com"})
            ),
            Err("wrong_issuer")
        );
    }
}
