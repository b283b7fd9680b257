//! The oidc mechanism: an IdP access token presented as `Authorization: Bearer`,
//! checked in one of the five validation modes of SPEC §3 (`jwt`, `introspection`,
//! `introspection_userinfo`, `openshift_userapi`, `auto`).
//!
//! What the IdP says is cached: discovery and the JWKS are refreshed in the
//! background and kept when a refresh fails (so known keys keep working through an
//! IdP outage); an unknown `kid` triggers at most one refetch per
//! `jwks_refetch_interval`; introspection answers may be cached
//! (`introspection_cache_ttl`), never past the token's `exp`. Every failure is logged
//! with its real reason; the client gets a 401 that does not help an attacker tune a
//! forgery, or a 503 when the IdP cannot be asked.
//!
//! People without credentials must not be able to turn the daemon against the IdP
//! (SPEC §9): outbound calls are bounded ([`IDP_CALLS`]), a refused opaque token is
//! remembered by hash for [`REFUSED_TTL`] so repeating it costs nothing, identical
//! tokens in flight share one call, and every endpoint is `https://` (or loopback)
//! with answers bounded to [`provider::MAX_ANSWER`].

pub mod cache;
pub mod claims;
pub mod provider;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Validation, decode, decode_header};
use serde_json::Value;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use super::{
    AuthError, Authenticator, BoxFuture, Credentials, Identity, LoginContext, Mechanism, Outcome,
    Secret, valid_username,
};
use crate::logsafe::Untrusted;
use cache::{Flights, TokenCache, TokenKey, token_key};
use provider::{Endpoints, Keys, RETRY_FLOOR, Unreachable};

/// Background refresh of discovery and JWKS.
const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// Clock skew allowed on `exp` and `nbf` (issue 6).
const LEEWAY: u64 = 60;
/// Bound on cached introspection answers.
const CACHE_MAX: usize = 10_000;
/// How long a refused opaque token is answered from memory, without asking the IdP.
/// Short: a token the IdP refused does not turn valid, but the map must stay small.
pub const REFUSED_TTL: Duration = Duration::from_secs(60);
/// Bound on remembered refusals.
const REFUSED_MAX: usize = 50_000;
/// Outbound calls to the IdP (introspection, userinfo, user API) at once, so a flood
/// of junk tokens cannot open thousands of connections to the IdP.
pub const IDP_CALLS: usize = 16;
/// How long a login waits for one of the [`IDP_CALLS`] before it is told 503.
const IDP_CALL_WAIT: Duration = Duration::from_secs(2);

/// `security.oidc.validation_mode` (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The default, as in xGT.
    #[default]
    Jwt,
    Introspection,
    IntrospectionUserinfo,
    OpenshiftUserapi,
    Auto,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Jwt => "jwt",
            Mode::Introspection => "introspection",
            Mode::IntrospectionUserinfo => "introspection_userinfo",
            Mode::OpenshiftUserapi => "openshift_userapi",
            Mode::Auto => "auto",
        }
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

/// The `security.oidc` section of the configuration, exactly xGT's settings.
///
/// It lives with the mechanism that reads it; `config` deserializes it as one of its
/// sections (so the field names are the key names, and an unknown one is refused).
#[derive(Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub introspection_cache_ttl: u64,
    /// Least time between two JWKS fetches caused by an unknown `kid`.
    pub jwks_refetch_interval: u64,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub audience: Option<String>,
    pub validation_mode: Mode,
    pub username_claim: String,
    pub groups_claim: String,
    pub scopes: String,
    pub jwks_uri: Option<String>,
    pub introspection_uri: Option<String>,
    pub introspection_client_id: Option<String>,
    pub introspection_client_secret: Option<zeroize::Zeroizing<String>>,
    pub userinfo_uri: Option<String>,
    pub openshift_user_api_uri: Option<String>,
    pub ca_cert: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("issuer", &self.issuer)
            .field("validation_mode", &self.validation_mode)
            .field("introspection_client_secret", &"***")
            .finish_non_exhaustive()
    }
}

/// Whether RFC 7662 client credentials are set; `auto` starts without them and then
/// refuses opaque tokens (xGT's Keycloak block has none).
pub fn introspection_configured(o: &Settings) -> bool {
    o.introspection_client_id.is_some() && o.introspection_client_secret.is_some()
}

/// The settings a mode cannot work without, as config key names (for the startup
/// error that lists everything missing at once).
pub fn missing_settings(o: &Settings) -> Vec<&'static str> {
    let mode = o.validation_mode;
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
    // `auto` needs the introspection settings only to accept opaque tokens.
    if mode.uses_introspection() && (mode != Mode::Auto || introspection_configured(o)) {
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

/// Configured IdP endpoints that are neither `https://` nor loopback `http://`, as
/// configuration errors naming the key (SPEC §9).
pub fn insecure_endpoints(o: &Settings) -> Vec<String> {
    [
        ("security.oidc.issuer", &o.issuer),
        ("security.oidc.jwks_uri", &o.jwks_uri),
        ("security.oidc.introspection_uri", &o.introspection_uri),
        ("security.oidc.userinfo_uri", &o.userinfo_uri),
        ("security.oidc.openshift_user_api_uri", &o.openshift_user_api_uri),
    ]
    .into_iter()
    .filter_map(|(key, v)| v.as_deref().map(|url| (key, url)))
    .filter(|(_, url)| !provider::endpoint_allowed(url))
    .map(|(key, url)| {
        format!(
            "\"{key}\" is \"{url}\": IdP endpoints must be https:// URLs (plain http:// only to localhost, 127.0.0.0/8 or ::1)"
        )
    })
    .collect()
}

/// The outcome of asking the IdP about an opaque token, shared by identical tokens.
type Verdict = Result<Value, AuthError>;

struct Inner {
    settings: Settings,
    mode: Mode,
    /// `auto` without introspection credentials validates JWTs only.
    opaque_allowed: bool,
    http: reqwest::Client,
    endpoints: ArcSwapOption<Endpoints>,
    discovery_attempt: tokio::sync::Mutex<Option<(Instant, Option<Unreachable>)>>,
    keys: Keys,
    /// Introspection answers (`introspection_cache_ttl`).
    cache: TokenCache<Arc<Value>>,
    /// Opaque tokens the IdP refused, with the refusal to repeat.
    refused: TokenCache<AuthError>,
    in_flight: Flights<Verdict>,
    idp_calls: Semaphore,
}

pub struct OidcAuthenticator {
    inner: Arc<Inner>,
}

fn rejected(reason: &'static str) -> AuthError {
    AuthError::rejected(reason, "the bearer token was not accepted")
}

/// A `pcs_…` session token sent to log in: a client mistake, answered 400 without
/// asking the IdP (it would otherwise see our session tokens).
pub fn session_token_presented() -> AuthError {
    AuthError::Malformed {
        reason: "session_token_presented",
        message: "this is a portcullis session token; it is checked at GET /v1/session, not used to log in (send a token from the identity provider)".into(),
    }
}

fn unavailable(e: Unreachable) -> AuthError {
    tracing::warn!(error = %e, "identity provider unreachable");
    AuthError::Unavailable {
        reason: "idp_unreachable",
        message: "the identity provider cannot be reached; try again later".into(),
    }
}

impl OidcAuthenticator {
    pub fn new(settings: Settings) -> Result<Self, String> {
        let mode = settings.validation_mode;
        let http = provider::http_client(settings.ca_cert.as_deref())?;
        let explicit = Endpoints {
            jwks_uri: settings.jwks_uri.clone(),
            introspection: settings.introspection_uri.clone(),
            userinfo: settings.userinfo_uri.clone(),
        };
        let inner = Inner {
            mode,
            opaque_allowed: mode != Mode::Auto || introspection_configured(&settings),
            http,
            endpoints: ArcSwapOption::empty(),
            discovery_attempt: tokio::sync::Mutex::new(None),
            keys: Keys::new(Duration::from_secs(settings.jwks_refetch_interval.max(1))),
            cache: TokenCache::new(CACHE_MAX),
            refused: TokenCache::new(REFUSED_MAX),
            in_flight: Flights::default(),
            idp_calls: Semaphore::new(IDP_CALLS),
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
                tokio::time::sleep(if ok { REFRESH_EVERY } else { RETRY_FLOOR * 2 }).await;
            }
        });
    }
}

impl Inner {
    fn uses_introspection(&self) -> bool {
        self.mode.uses_introspection() && self.opaque_allowed
    }

    fn uses_userinfo(&self) -> bool {
        self.mode.uses_userinfo() && self.opaque_allowed
    }

    fn needs_discovery(&self, e: &Endpoints) -> bool {
        (self.mode.uses_jwt() && e.jwks_uri.is_none())
            || (self.uses_introspection() && e.introspection.is_none())
            || (self.uses_userinfo() && e.userinfo.is_none())
    }

    /// Discovered endpoints under the configured ones, keeping only those the mode
    /// uses. A discovered plain-`http://` endpoint off loopback makes the IdP unusable
    /// (logins get 503) rather than sending tokens and secrets in clear text.
    fn merged(&self, found: Endpoints) -> Result<Endpoints, Unreachable> {
        let s = &self.settings;
        let m = self.mode;
        let (introspection, userinfo) = (self.uses_introspection(), self.uses_userinfo());
        let pick = |configured: &Option<String>, found: Option<String>, used: bool| {
            used.then(|| configured.clone().or(found)).flatten()
        };
        let e = Endpoints {
            jwks_uri: pick(&s.jwks_uri, found.jwks_uri, m.uses_jwt()),
            introspection: pick(&s.introspection_uri, found.introspection, introspection),
            userinfo: pick(&s.userinfo_uri, found.userinfo, userinfo),
        };
        for url in [&e.jwks_uri, &e.introspection, &e.userinfo]
            .into_iter()
            .flatten()
        {
            if !provider::endpoint_allowed(url) {
                return Err(Unreachable(format!(
                    "discovery names the endpoint {url}, which is neither https:// nor loopback; refusing to use it"
                )));
            }
        }
        Ok(e)
    }

    async fn refresh(&self) -> bool {
        let mut ok = true;
        if self.needs_discovery(&Endpoints {
            jwks_uri: self.settings.jwks_uri.clone(),
            introspection: self.settings.introspection_uri.clone(),
            userinfo: self.settings.userinfo_uri.clone(),
        }) && let Some(issuer) = &self.settings.issuer
        {
            match provider::discover(&self.http, issuer)
                .await
                .and_then(|found| self.merged(found))
            {
                Ok(e) => self.endpoints.store(Some(Arc::new(e))),
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
    /// per [`RETRY_FLOOR`], shared by every login waiting; meanwhile logins get 503).
    async fn endpoints(&self) -> Result<Arc<Endpoints>, AuthError> {
        if let Some(e) = self.endpoints.load_full() {
            return Ok(e);
        }
        let mut attempt = self.discovery_attempt.lock().await;
        if let Some(e) = self.endpoints.load_full() {
            return Ok(e);
        }
        if let Some((at, Some(err))) = attempt.as_ref()
            && at.elapsed() < RETRY_FLOOR
        {
            return Err(unavailable(err.clone()));
        }
        let issuer = self.settings.issuer.clone().unwrap_or_default();
        match provider::discover(&self.http, &issuer)
            .await
            .and_then(|found| self.merged(found))
        {
            Ok(e) => {
                let e = Arc::new(e);
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
            // Compact JWS has exactly two dots; anything else is an opaque token.
            Mode::Auto if token.matches('.').count() == 2 => self.jwt(token).await,
            Mode::Auto if !self.opaque_allowed => {
                tracing::info!(
                    "bearer token refused: an opaque token, and introspection not configured (security.oidc.introspection_client_id / introspection_client_secret)"
                );
                Err(rejected("introspection_not_configured"))
            }
            _ => self.opaque(token).await,
        }
    }

    /// An opaque token: a refusal remembered from the last [`REFUSED_TTL`] is repeated
    /// without asking the IdP; otherwise one IdP round for all identical tokens in
    /// flight, and a refusal is remembered.
    async fn opaque(&self, token: &str) -> Result<Value, AuthError> {
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

    /// One of the [`IDP_CALLS`] outbound slots, held for a whole IdP call (answer
    /// included); 503 when none frees up within [`IDP_CALL_WAIT`].
    async fn idp_call(&self) -> Result<SemaphorePermit<'_>, AuthError> {
        match tokio::time::timeout(IDP_CALL_WAIT, self.idp_calls.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                tracing::warn!(
                    limit = IDP_CALLS,
                    "every outbound IdP call slot stayed busy; refusing the login with 503"
                );
                Err(AuthError::Unavailable {
                    reason: "idp_busy",
                    message:
                        "too many logins are waiting for the identity provider; try again shortly"
                            .into(),
                })
            }
        }
    }

    async fn jwt(&self, token: &str) -> Result<Value, AuthError> {
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

    async fn introspect(&self, token: &str, key: TokenKey) -> Result<Value, AuthError> {
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
        let ok = match &c["aud"] {
            Value::String(a) => s.audience.as_deref() == Some(a.as_str()),
            Value::Array(list) => list.iter().any(|a| a.as_str() == s.audience.as_deref()),
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

    async fn bearer_get(&self, uri: &str, token: &str) -> Result<Value, AuthError> {
        let _slot = self.idp_call().await?;
        let resp = self
            .http
            .get(uri)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| unavailable(Unreachable(format!("GET {uri}: {e}"))))?;
        match resp.status().as_u16() {
            200..=299 => provider::read_json(resp, &format!("GET {uri}"))
                .await
                .map_err(unavailable),
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

    async fn introspect_then_userinfo(
        &self,
        token: &str,
        key: TokenKey,
    ) -> Result<Value, AuthError> {
        let mut claims = self.introspect(token, key).await?;
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
            // Also refused in the HTTP layer; here too so no other path can forward a
            // portcullis session token to the IdP.
            if text.starts_with(crate::session::token::PREFIX) {
                return Err(session_token_presented());
            }
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
    fn configured_plain_http_endpoints_are_named() {
        let o = Settings {
            validation_mode: Mode::Auto,
            issuer: Some("https://idp.example.com".into()),
            jwks_uri: Some("http://127.0.0.1:9000/jwks".into()),
            introspection_uri: Some("http://idp.example.com/introspect".into()),
            userinfo_uri: Some("http://[::1]/me".into()),
            openshift_user_api_uri: Some("http://api.example.com/users/~".into()),
            ..Settings::default()
        };
        let e = insecure_endpoints(&o);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("\"security.oidc.introspection_uri\""),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("\"security.oidc.openshift_user_api_uri\""),
            "{e:?}"
        );
    }

    #[test]
    fn discovered_plain_http_endpoints_make_the_idp_unusable() {
        let a = OidcAuthenticator::new(Settings {
            validation_mode: Mode::Jwt,
            issuer: Some("https://idp.example.com".into()),
            audience: Some("pc".into()),
            jwks_refetch_interval: 60,
            ..Settings::default()
        })
        .unwrap();
        let found = |jwks: &str| Endpoints {
            jwks_uri: Some(jwks.into()),
            // Not used by the jwt mode: neither kept nor checked.
            introspection: Some("http://idp.example.com/introspect".into()),
            userinfo: None,
        };
        let e = a
            .inner
            .merged(found("https://idp.example.com/jwks"))
            .unwrap();
        assert_eq!(e.introspection, None);
        assert!(
            a.inner
                .merged(found("http://idp.example.com/jwks"))
                .is_err()
        );
    }

    #[test]
    fn each_mode_lists_what_it_misses() {
        let mut o = Settings {
            validation_mode: Mode::Jwt,
            ..Settings::default()
        };
        assert_eq!(
            missing_settings(&o),
            ["security.oidc.issuer", "security.oidc.audience"]
        );
        o.validation_mode = Mode::Introspection;
        let m = missing_settings(&o);
        assert!(
            m.contains(&"security.oidc.introspection_client_secret"),
            "{m:?}"
        );
        o.validation_mode = Mode::OpenshiftUserapi;
        assert_eq!(
            missing_settings(&o),
            ["security.oidc.openshift_user_api_uri"]
        );
        o.openshift_user_api_uri = Some("https://api/apis/user.openshift.io/v1/users/~".into());
        assert!(missing_settings(&o).is_empty());
    }
}
