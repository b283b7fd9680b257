//! The oidc mechanism: an IdP access token presented as `Authorization: Bearer`,
//! checked in one of the five validation modes of SPEC §3 (`jwt`, `introspection`,
//! `introspection_userinfo`, `openshift_userapi`, `auto`).
//!
//! What the IdP says is cached: discovery and the JWKS are refreshed in the
//! background and kept when a refresh fails (so known keys keep working through an
//! IdP outage); an unknown `kid` triggers at most one refetch per
//! [`MIN_REFETCH`]; introspection answers may be cached (`introspection_cache_ttl`),
//! never past the token's `exp`. Every failure is logged with its real reason; the
//! client gets a 401 that does not help an attacker tune a forgery, or a 503 when the
//! IdP cannot be asked.

pub mod claims;
pub mod provider;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Validation, decode, decode_header};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{
    AuthError, Authenticator, BoxFuture, Credentials, Identity, LoginContext, Outcome, Secret,
    valid_username,
};
use crate::config::{Mechanism, Oidc};
use provider::{Endpoints, Keys, Unreachable};

/// The least time between two JWKS fetches caused by unknown `kid`s.
pub const MIN_REFETCH: Duration = Duration::from_secs(5);
/// Background refresh of discovery and JWKS.
const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// Clock skew allowed on `exp` and `nbf` (issue 6).
const LEEWAY: u64 = 60;
/// Bound on cached introspection answers.
const CACHE_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Jwt,
    Introspection,
    IntrospectionUserinfo,
    OpenshiftUserapi,
    Auto,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "jwt" => Mode::Jwt,
            "introspection" => Mode::Introspection,
            "introspection_userinfo" => Mode::IntrospectionUserinfo,
            "openshift_userapi" => Mode::OpenshiftUserapi,
            "auto" => Mode::Auto,
            _ => return None,
        })
    }

    fn uses_jwt(self) -> bool {
        matches!(self, Mode::Jwt | Mode::Auto)
    }
    fn uses_introspection(self) -> bool {
        matches!(
            self,
            Mode::Introspection | Mode::IntrospectionUserinfo | Mode::Auto
        )
    }
    fn uses_userinfo(self) -> bool {
        matches!(self, Mode::IntrospectionUserinfo | Mode::Auto)
    }
}

/// The settings a mode cannot work without, as config key names (for the startup
/// error that lists everything missing at once).
pub fn missing_settings(o: &Oidc) -> Vec<&'static str> {
    let Some(mode) = Mode::parse(&o.validation_mode) else {
        return vec![];
    };
    let mut missing = Vec::new();
    let mut need = |ok: bool, key: &'static str| {
        if !ok && !missing.contains(&key) {
            missing.push(key);
        }
    };
    if mode.uses_jwt() {
        need(o.issuer.is_some(), "security.oidc.issuer");
        need(o.audience.is_some(), "security.oidc.audience");
    }
    if mode.uses_introspection() {
        need(
            o.issuer.is_some() || o.introspection_uri.is_some(),
            "security.oidc.issuer (or security.oidc.introspection_uri)",
        );
        need(
            o.introspection_client_id.is_some(),
            "security.oidc.introspection_client_id",
        );
        need(
            o.introspection_client_secret.is_some(),
            "security.oidc.introspection_client_secret",
        );
        need(
            o.audience.is_some() || o.client_id.is_some(),
            "security.oidc.audience",
        );
    }
    if mode.uses_userinfo() {
        need(
            o.issuer.is_some() || o.userinfo_uri.is_some(),
            "security.oidc.issuer (or security.oidc.userinfo_uri)",
        );
    }
    if mode == Mode::OpenshiftUserapi {
        need(
            o.openshift_user_api_uri.is_some(),
            "security.oidc.openshift_user_api_uri",
        );
    }
    missing
}

/// Introspection answers by SHA-256 of the token, with the instant they lapse.
type IntrospectionCache = HashMap<[u8; 32], (Instant, Arc<Value>)>;

struct Inner {
    settings: Oidc,
    mode: Mode,
    http: reqwest::Client,
    endpoints: ArcSwapOption<Endpoints>,
    discovery_attempt: tokio::sync::Mutex<Option<(Instant, Option<Unreachable>)>>,
    keys: Keys,
    cache: Mutex<IntrospectionCache>,
}

pub struct OidcAuthenticator {
    inner: Arc<Inner>,
}

fn rejected(reason: &'static str) -> AuthError {
    AuthError::rejected(reason, "the bearer token was not accepted")
}

fn unavailable(e: Unreachable) -> AuthError {
    tracing::warn!(error = %e, "identity provider unreachable");
    AuthError::Unavailable {
        reason: "idp_unreachable",
        message: "the identity provider cannot be reached; try again later".into(),
    }
}

impl OidcAuthenticator {
    pub fn new(settings: Oidc) -> Result<Self, String> {
        let mode = Mode::parse(&settings.validation_mode).ok_or_else(|| {
            format!(
                "unknown security.oidc.validation_mode {}",
                settings.validation_mode
            )
        })?;
        let http = provider::http_client(settings.ca_cert.as_deref())?;
        let explicit = Endpoints {
            jwks_uri: settings.jwks_uri.clone(),
            introspection: settings.introspection_uri.clone(),
            userinfo: settings.userinfo_uri.clone(),
        };
        let inner = Inner {
            mode,
            http,
            endpoints: ArcSwapOption::empty(),
            discovery_attempt: tokio::sync::Mutex::new(None),
            keys: Keys::new(MIN_REFETCH),
            cache: Mutex::new(HashMap::new()),
            settings,
        };
        // When every endpoint the mode needs is configured, discovery is never tried.
        if !inner.needs_discovery(&explicit) {
            inner.endpoints.store(Some(Arc::new(explicit)));
        }
        Ok(OidcAuthenticator {
            inner: Arc::new(inner),
        })
    }

    /// Keep discovery and the JWKS fresh in the background; a failed refresh keeps
    /// what is known.
    pub fn spawn_refresh(&self) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let ok = inner.refresh().await;
                drop(inner);
                tokio::time::sleep(if ok { REFRESH_EVERY } else { MIN_REFETCH * 2 }).await;
            }
        });
    }
}

impl Inner {
    fn needs_discovery(&self, e: &Endpoints) -> bool {
        (self.mode.uses_jwt() && e.jwks_uri.is_none())
            || (self.mode.uses_introspection() && e.introspection.is_none())
            || (self.mode.uses_userinfo() && e.userinfo.is_none())
    }

    fn merged(&self, found: Endpoints) -> Endpoints {
        let s = &self.settings;
        Endpoints {
            jwks_uri: s.jwks_uri.clone().or(found.jwks_uri),
            introspection: s.introspection_uri.clone().or(found.introspection),
            userinfo: s.userinfo_uri.clone().or(found.userinfo),
        }
    }

    async fn refresh(&self) -> bool {
        let mut ok = true;
        if self.needs_discovery(&Endpoints {
            jwks_uri: self.settings.jwks_uri.clone(),
            introspection: self.settings.introspection_uri.clone(),
            userinfo: self.settings.userinfo_uri.clone(),
        }) && let Some(issuer) = &self.settings.issuer
        {
            match provider::discover(&self.http, issuer).await {
                Ok(found) => self.endpoints.store(Some(Arc::new(self.merged(found)))),
                Err(e) => {
                    tracing::warn!(error = %e, "OIDC discovery refresh failed; keeping what is known");
                    ok = false;
                }
            }
        }
        if self.mode.uses_jwt()
            && let Some(uri) = self
                .endpoints
                .load()
                .as_ref()
                .and_then(|e| e.jwks_uri.clone())
            && let Err(e) = self.keys.fetch(&self.http, &uri).await
        {
            tracing::warn!(error = %e, "JWKS refresh failed; keeping the known keys");
            ok = false;
        }
        ok
    }

    /// The endpoints, discovering them now if that has not worked yet (at most once
    /// per [`MIN_REFETCH`]; meanwhile logins get 503).
    async fn endpoints(&self) -> Result<Arc<Endpoints>, AuthError> {
        if let Some(e) = self.endpoints.load_full() {
            return Ok(e);
        }
        let mut attempt = self.discovery_attempt.lock().await;
        if let Some(e) = self.endpoints.load_full() {
            return Ok(e);
        }
        if let Some((at, Some(err))) = attempt.as_ref()
            && at.elapsed() < MIN_REFETCH
        {
            return Err(unavailable(err.clone()));
        }
        let issuer = self.settings.issuer.clone().unwrap_or_default();
        match provider::discover(&self.http, &issuer).await {
            Ok(found) => {
                let e = Arc::new(self.merged(found));
                self.endpoints.store(Some(e.clone()));
                *attempt = Some((Instant::now(), None));
                Ok(e)
            }
            Err(err) => {
                *attempt = Some((Instant::now(), Some(err.clone())));
                Err(unavailable(err))
            }
        }
    }

    async fn validate(&self, token: &str) -> Result<Value, AuthError> {
        match self.mode {
            Mode::Jwt => self.jwt(token).await,
            Mode::Introspection => self.introspect(token).await,
            Mode::IntrospectionUserinfo => self.introspect_then_userinfo(token).await,
            Mode::OpenshiftUserapi => self.openshift(token).await,
            // Compact JWS has exactly two dots; anything else is an opaque token.
            Mode::Auto if token.matches('.').count() == 2 => self.jwt(token).await,
            Mode::Auto => self.introspect_then_userinfo(token).await,
        }
    }

    async fn jwt(&self, token: &str) -> Result<Value, AuthError> {
        let header = decode_header(token).map_err(|e| {
            // `alg: none` and unknown algorithms fail here: there is no such variant.
            tracing::info!(error = %e, "bearer token refused: not a usable JWT");
            rejected("token_malformed")
        })?;
        let endpoints = self.endpoints().await?;
        let uri = endpoints
            .jwks_uri
            .clone()
            .ok_or_else(|| unavailable(Unreachable("the IdP publishes no jwks_uri".into())))?;
        let set = match self.keys.current() {
            Some(s) => s,
            None => self
                .keys
                .fetch(&self.http, &uri)
                .await
                .map_err(unavailable)?,
        };
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
            tracing::info!(kid = ?header.kid, alg = ?header.alg, "bearer token refused: no IdP key for this kid and algorithm");
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
        tracing::info!(reason, error = %e, "bearer token refused");
        Err(rejected(reason))
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Arc<Value>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|(until, _)| *until > Instant::now())
            .map(|(_, v)| v.clone())
    }

    fn remember(&self, key: [u8; 32], claims: &Arc<Value>) {
        let ttl = self.settings.introspection_cache_ttl;
        if ttl == 0 {
            return;
        }
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        // Never past the token's own expiry.
        let left = claims["exp"]
            .as_u64()
            .map_or(ttl, |exp| exp.saturating_sub(now_unix).min(ttl));
        if left == 0 {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            let now = Instant::now();
            cache.retain(|_, (until, _)| *until > now);
            if cache.len() >= CACHE_MAX {
                return;
            }
        }
        cache.insert(
            key,
            (Instant::now() + Duration::from_secs(left), claims.clone()),
        );
    }

    async fn introspect(&self, token: &str) -> Result<Value, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.cached(&key) {
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
        let claims: Value = resp
            .json()
            .await
            .map_err(|e| unavailable(Unreachable(format!("POST {uri}: not JSON: {e}"))))?;
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
                iss,
                "bearer token refused: introspection shows another issuer"
            );
            return Err(rejected("wrong_issuer"));
        }
        let wanted: Vec<&str> = [s.audience.as_deref(), s.client_id.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        let ok = match &c["aud"] {
            Value::String(a) => s.audience.as_deref() == Some(a.as_str()),
            Value::Array(list) => list.iter().any(|a| a.as_str() == s.audience.as_deref()),
            // No audience in the answer: the token must at least belong to our client.
            _ => c["client_id"]
                .as_str()
                .is_some_and(|id| wanted.contains(&id)),
        };
        if !ok {
            tracing::info!(aud = %c["aud"], client_id = %c["client_id"], "bearer token refused: not for this audience");
            return Err(rejected("wrong_audience"));
        }
        Ok(())
    }

    async fn bearer_get(&self, uri: &str, token: &str) -> Result<Value, AuthError> {
        let resp = self
            .http
            .get(uri)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| unavailable(Unreachable(format!("GET {uri}: {e}"))))?;
        match resp.status().as_u16() {
            200..=299 => resp
                .json()
                .await
                .map_err(|e| unavailable(Unreachable(format!("GET {uri}: not JSON: {e}")))),
            401 | 403 => {
                tracing::info!(
                    uri,
                    status = resp.status().as_u16(),
                    "bearer token refused by the IdP"
                );
                Err(rejected("token_refused_by_idp"))
            }
            status => Err(unavailable(Unreachable(format!(
                "GET {uri}: HTTP {status}"
            )))),
        }
    }

    async fn introspect_then_userinfo(&self, token: &str) -> Result<Value, AuthError> {
        let mut claims = self.introspect(token).await?;
        let s = &self.settings;
        let missing_user = claims::username(&claims, &s.username_claim).is_none();
        let missing_groups =
            !s.groups_claim.is_empty() && claims::groups(&claims, &s.groups_claim).is_none();
        if missing_user || missing_groups {
            let endpoints = self.endpoints().await?;
            let uri = endpoints.userinfo.clone().ok_or_else(|| {
                unavailable(Unreachable("the IdP publishes no userinfo_endpoint".into()))
            })?;
            let info = self.bearer_get(&uri, token).await?;
            if let (Value::Object(c), Value::Object(i)) = (&mut claims, info) {
                for (k, v) in i {
                    c.entry(k).or_insert(v);
                }
            }
        }
        Ok(claims)
    }

    async fn openshift(&self, token: &str) -> Result<Value, AuthError> {
        let uri = self
            .settings
            .openshift_user_api_uri
            .clone()
            .unwrap_or_default();
        self.bearer_get(&uri, token).await
    }

    fn identity(&self, claims: &Value) -> Result<Identity, AuthError> {
        let s = &self.settings;
        let Some(user) = claims::username(claims, &s.username_claim) else {
            tracing::info!(claim = %s.username_claim, "bearer token refused: the username claim is missing");
            return Err(rejected("username_claim_missing"));
        };
        if !valid_username(&user) {
            tracing::info!(claim = %s.username_claim, "bearer token refused: the username claim is not a valid user name");
            return Err(rejected("username_invalid"));
        }
        // Groups come from the token and replace NSS; an empty groups_claim turns them off.
        let groups = if s.groups_claim.is_empty() {
            Vec::new()
        } else {
            claims::groups(claims, &s.groups_claim).unwrap_or_default()
        };
        Ok(Identity {
            user,
            mechanism: Mechanism::Oidc,
            groups: Some(groups),
            response_token: None,
        })
    }
}

impl Authenticator for OidcAuthenticator {
    fn mechanism(&self) -> Mechanism {
        Mechanism::Oidc
    }

    fn authenticate<'a>(
        &'a self,
        credentials: Credentials,
        _ctx: &'a LoginContext,
    ) -> BoxFuture<'a, Result<Outcome, AuthError>> {
        Box::pin(async move {
            let Credentials::Bearer(token) = credentials else {
                return Err(rejected("wrong_mechanism"));
            };
            let token: Secret = token;
            let text = token.expose();
            if text.len() > 16 * 1024 || !text.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(rejected("token_malformed"));
            }
            let claims = self.inner.validate(text).await?;
            Ok(Outcome::Authenticated(self.inner.identity(&claims)?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_lists_what_it_misses() {
        let mut o = Oidc {
            validation_mode: "jwt".into(),
            ..Oidc::default()
        };
        assert_eq!(
            missing_settings(&o),
            ["security.oidc.issuer", "security.oidc.audience"]
        );
        o.validation_mode = "introspection".into();
        let m = missing_settings(&o);
        assert!(
            m.contains(&"security.oidc.introspection_client_secret"),
            "{m:?}"
        );
        o.validation_mode = "openshift_userapi".into();
        assert_eq!(
            missing_settings(&o),
            ["security.oidc.openshift_user_api_uri"]
        );
        o.openshift_user_api_uri = Some("https://api/apis/user.openshift.io/v1/users/~".into());
        assert!(missing_settings(&o).is_empty());
    }
}
