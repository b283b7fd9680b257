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
//!
//! Along the way a token travels: [`settings`] (the section and its modes),
//! [`discovery`] (which endpoints), [`jwks`] and `jwt` (local validation),
//! `introspection` (RFC 7662 for opaque tokens), `userinfo` (claims it lacked, and
//! OpenShift's user API), [`claims`] (user and groups); [`provider`] is the HTTP
//! client they share and [`cache`] what is remembered between logins.
//!
//! With trusted issuers (`security.issuers`, [`issuers`]) a token is first routed by
//! the `iss` of its payload: an issuer's tokens to that issuer, security.oidc's (and
//! tokens that name no issuer, e.g. opaque ones) to security.oidc as above, any other
//! `iss` refused (401 `unknown_issuer`) without contacting anything.

pub mod cache;
pub mod claims;
pub mod discovery;
mod introspection;
pub mod issuers;
pub mod jwks;
mod jwt;
pub mod provider;
pub mod settings;
mod userinfo;

pub use settings::{
    IssuerAlgorithm, IssuerSettings, Mode, Settings, configured, insecure_endpoints,
    introspection_configured, missing_settings,
};

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use serde_json::Value;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use super::{
    AuthError, Authenticator, BoxFuture, Credentials, Identity, LoginContext, Mechanism, Outcome,
    Secret, valid_username,
};
use crate::logsafe::Untrusted;
use cache::{Flights, TokenCache};
use discovery::Endpoints;
use issuers::{Issuer, Issuers};
use jwks::{Keys, RETRY_FLOOR};
use provider::Unreachable;

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
    /// What a JWT must satisfy besides its signature, by algorithm.
    validations: jwt::Validations,
    /// Introspection answers (`introspection_cache_ttl`).
    cache: TokenCache<Arc<Value>>,
    /// Opaque tokens the IdP refused, with the refusal to repeat.
    refused: TokenCache<AuthError>,
    in_flight: Flights<Verdict>,
    idp_calls: Semaphore,
}

pub struct OidcAuthenticator {
    /// `security.oidc`; `None` when only trusted issuers are configured.
    inner: Option<Arc<Inner>>,
    /// `security.issuers`; when there are any, tokens are routed by their `iss`.
    issuers: Arc<Issuers>,
}

/// Who checks a bearer token.
enum Route<'a> {
    Oidc(&'a Inner),
    Issuer(&'a Issuer),
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
    /// `security.oidc` alone.
    pub fn new(settings: Settings) -> Result<Self, String> {
        Self::with_issuers(Some(settings), Issuers::default())
    }

    /// `security.oidc` (if configured) and the trusted issuers; at least one of them.
    pub fn with_issuers(settings: Option<Settings>, issuers: Issuers) -> Result<Self, String> {
        if settings.is_none() && issuers.is_empty() {
            return Err("the oidc mechanism needs security.oidc or security.issuers".into());
        }
        Ok(OidcAuthenticator {
            inner: settings.map(Self::oidc).transpose()?.map(Arc::new),
            issuers: Arc::new(issuers),
        })
    }

    fn oidc(settings: Settings) -> Result<Inner, String> {
        let mode = settings.validation_mode;
        let http = provider::http_client(settings.ca_cert.as_deref())?;
        let explicit = Endpoints::configured(&settings);
        let inner = Inner {
            mode,
            opaque_allowed: mode != Mode::Auto || introspection_configured(&settings),
            http,
            endpoints: ArcSwapOption::empty(),
            discovery_attempt: tokio::sync::Mutex::new(None),
            keys: Keys::new(Duration::from_secs(settings.jwks_refetch_interval.max(1))),
            validations: jwt::Validations::new(
                settings.issuer.as_deref().unwrap_or_default(),
                &[settings.audience.as_deref().unwrap_or_default()],
            ),
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
        Ok(inner)
    }

    /// Keep discovery and the JWKS (security.oidc's and each issuer's) fresh in the
    /// background; a failed refresh keeps what is known.
    pub fn spawn_refresh(&self) {
        self.issuers.spawn_refresh();
        let Some(inner) = &self.inner else { return };
        let weak = Arc::downgrade(inner);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let ok = inner.refresh().await;
                drop(inner);
                tokio::time::sleep(if ok { REFRESH_EVERY } else { RETRY_FLOOR * 2 }).await;
            }
        });
    }

    /// Which configuration checks `token` (SPEC §11): the issuer its unverified `iss`
    /// names, else security.oidc for its own `iss` or a token naming none (an opaque
    /// token); any other `iss` is refused here, before anything is contacted. A
    /// security.oidc without `issuer` (introspection by URL, OpenShift) cannot be told
    /// by `iss`, so it keeps every token no issuer claims.
    fn route(&self, token: &str) -> Result<Route<'_>, AuthError> {
        // Without trusted issuers, security.oidc sees every token, exactly as before.
        if self.issuers.is_empty()
            && let Some(inner) = self.inner.as_deref()
        {
            return Ok(Route::Oidc(inner));
        }
        let iss = issuers::unverified_iss(token);
        if let Some(i) = iss.as_deref().and_then(|iss| self.issuers.get(iss)) {
            return Ok(Route::Issuer(i));
        }
        match (self.inner.as_deref(), iss) {
            (Some(inner), None) => Ok(Route::Oidc(inner)),
            (Some(inner), Some(iss))
                if inner
                    .settings
                    .issuer
                    .as_deref()
                    .is_none_or(|own| own == iss) =>
            {
                Ok(Route::Oidc(inner))
            }
            (_, Some(iss)) => {
                tracing::info!(iss = %Untrusted(&iss), "bearer token refused: its iss is neither security.oidc.issuer nor a trusted issuer (security.issuers)");
                Err(rejected("unknown_issuer"))
            }
            (None, None) => {
                tracing::info!(
                    "bearer token refused: not a JWT naming its issuer (iss), and security.oidc is not configured"
                );
                Err(rejected("unknown_issuer"))
            }
        }
    }
}

/// The user and groups of verified claims: `username_claim` must hold a valid user
/// name; groups from `groups_claim` (none when it is empty) replace NSS.
pub(crate) fn identity_from(
    claims: &Value,
    username_claim: &str,
    groups_claim: &str,
) -> Result<Identity, AuthError> {
    let Some(user) = claims::username(claims, username_claim) else {
        tracing::info!(claim = %username_claim, "bearer token refused: the username claim is missing");
        return Err(rejected("username_claim_missing"));
    };
    if !valid_username(&user) {
        tracing::info!(claim = %username_claim, "bearer token refused: the username claim is not a valid user name");
        return Err(rejected("username_invalid"));
    }
    // Groups come from the token and replace NSS; an empty groups_claim turns them off.
    let groups = if groups_claim.is_empty() {
        Vec::new()
    } else {
        claims::groups(claims, groups_claim).unwrap_or_default()
    };
    Ok(Identity {
        user,
        mechanism: Mechanism::Oidc,
        groups: Some(groups),
        response_token: None,
    })
}

impl Inner {
    fn uses_introspection(&self) -> bool {
        self.mode.uses_introspection() && self.opaque_allowed
    }

    fn uses_userinfo(&self) -> bool {
        self.mode.uses_userinfo() && self.opaque_allowed
    }

    async fn refresh(&self) -> bool {
        let mut ok = true;
        if self.needs_discovery(&Endpoints::configured(&self.settings))
            && let Some(issuer) = &self.settings.issuer
        {
            match discovery::discover(&self.http, issuer)
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
            // Boxed: the introspection future is ≈5 KB, and held inline it would be
            // copied into every login's future, JWT logins included.
            _ => Box::pin(self.opaque(token)).await,
        }
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

    fn identity(&self, claims: &Value) -> Result<Identity, AuthError> {
        let s = &self.settings;
        identity_from(claims, &s.username_claim, &s.groups_claim)
    }
}

impl Authenticator for OidcAuthenticator {
    fn mechanism(&self) -> Mechanism {
        Mechanism::Oidc
    }

    fn status(&self) -> serde_json::Value {
        let mut status = match &self.inner {
            Some(inner) => serde_json::json!({
                "configured": true,
                "uses_jwks": inner.mode.uses_jwt(),
                "jwks_age_s": inner.keys.age().map(|a| a.as_secs()),
                "keys": inner.keys.current().map_or(0, |k| k.len()),
            }),
            None => serde_json::json!({"configured": false, "uses_jwks": false}),
        };
        if !self.issuers.is_empty() {
            status["issuers"] = self.issuers.status();
        }
        status
    }

    fn authenticate<'a>(
        &'a self,
        credentials: Credentials,
        ctx: &'a LoginContext,
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
            let inner = match self.route(text)? {
                Route::Oidc(inner) => inner,
                Route::Issuer(issuer) => {
                    // Named in the audit line, success or not.
                    let _ = ctx.issuer.set(issuer.name.clone());
                    return Ok(Outcome::Authenticated(issuer.authenticate(text).await?));
                }
            };
            let claims = inner.validate(text).await?;
            Ok(Outcome::Authenticated(inner.identity(&claims)?))
        })
    }
}
