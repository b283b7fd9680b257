//! The login pipeline of SPEC §1, minus HTTP: credentials → authenticator →
//! identity → groups → labels → session, with one audit event and one metric per
//! attempt whatever the outcome.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::Instrument;

use crate::audit;
use crate::auth::Mechanism;
use crate::auth::{
    AuthError, Authenticator, Challenge, Credentials, Identity, LoginContext, Outcome,
};
use crate::directory::{Directory, DirectoryError};
use crate::labels::LabelMap;
use crate::metrics::Metrics;
use crate::session::{Session, SessionError, SessionInfo, SessionStore, Token};
use crate::throttle::Throttle;

pub enum LoginResult {
    Session {
        token: Token,
        session: Session,
        /// For the client to authenticate the server (Kerberos mutual auth).
        response_token: Option<Vec<u8>>,
    },
    Challenge(Challenge),
}

/// What the administrator decided about sessions and accounts.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub session_ttl: Duration,
    /// `security.require_local_account`: false lets a password login PAM accepted
    /// but NSS does not know (pam_permit, RADIUS) have a session without groups.
    pub require_local_account: bool,
}

pub struct Pipeline {
    authenticators: HashMap<Mechanism, Box<dyn Authenticator>>,
    enabled: Vec<Mechanism>,
    pub directory: Directory,
    pub labels: ArcSwap<LabelMap>,
    pub sessions: Arc<dyn SessionStore>,
    pub metrics: Arc<Metrics>,
    policy: Policy,
    /// Set with `security.session_format = jwt`: the session handed out is a JWT
    /// whose `jti` names the stored session.
    pub jwt_sessions: Option<Arc<crate::issued::TokenIssuer>>,
    /// Failed logins of every mechanism count against the client's address (SPEC §9);
    /// the password mechanism also reserves per user name through the same throttle.
    throttle: Arc<Throttle>,
}

impl Pipeline {
    pub fn new(
        authenticators: Vec<Box<dyn Authenticator>>,
        directory: Directory,
        labels: LabelMap,
        sessions: Arc<dyn SessionStore>,
        metrics: Arc<Metrics>,
        policy: Policy,
        throttle: Arc<Throttle>,
    ) -> Self {
        let enabled = authenticators.iter().map(|a| a.mechanism()).collect();
        Pipeline {
            authenticators: authenticators
                .into_iter()
                .map(|a| (a.mechanism(), a))
                .collect(),
            enabled,
            directory,
            labels: ArcSwap::from_pointee(labels),
            sessions,
            metrics,
            policy,
            throttle,
            jwt_sessions: None,
        }
    }

    /// A mechanism's own status for `admin status` (`null` if disabled or silent).
    pub fn mechanism_status(&self, m: Mechanism) -> serde_json::Value {
        self.authenticators
            .get(&m)
            .map_or(serde_json::Value::Null, |a| a.status())
    }

    pub fn enabled(&self) -> &[Mechanism] {
        &self.enabled
    }

    pub async fn login(
        &self,
        credentials: Option<Credentials>,
        ctx: &LoginContext,
    ) -> Result<LoginResult, AuthError> {
        let started = Instant::now();
        let mechanism = credentials
            .as_ref()
            .map_or("none", |c| c.mechanism().as_str());
        // The name a password login claims is audited even when the login fails.
        let claimed = match &credentials {
            Some(Credentials::Password { username, .. })
                if crate::auth::valid_username(username) =>
            {
                Some(username.clone())
            }
            _ => None,
        };
        let span = tracing::info_span!("login", mechanism, peer = %ctx.peer);
        let (result, given) = self.run(credentials, ctx).instrument(span).await;
        // The account's own name (NSS's pw_name) once the login succeeded.
        let canonical = match &result {
            Ok(LoginResult::Session { session, .. }) => Some(session.info.user.to_string()),
            _ => None,
        };
        let given = given.or(claimed);
        if let (Some(given), Some(user), None) = (&given, &canonical, ctx.issuer.get())
            && given != user
        {
            audit::login_as(ctx.peer, mechanism, given, user, "ok");
            self.metrics
                .login(mechanism, "success", started.elapsed().as_secs_f64());
            return result;
        }
        let user = canonical.or(given);
        let (outcome, reason) = match &result {
            Ok(LoginResult::Session { .. }) => ("success", "ok"),
            Ok(LoginResult::Challenge(_)) => ("challenge", "more_input_needed"),
            Err(e) => (outcome_of(e), e.reason()),
        };
        match ctx.issuer.get() {
            Some(issuer) => audit::issuer_login(
                ctx.peer,
                mechanism,
                issuer,
                user.as_deref(),
                outcome,
                reason,
            ),
            None => audit::login(ctx.peer, mechanism, user.as_deref(), outcome, reason),
        }
        self.metrics
            .login(mechanism, outcome, started.elapsed().as_secs_f64());
        result
    }

    /// Audit and count a login refused before it reached an authenticator
    /// (malformed request, refused client certificate).
    pub fn record_refusal(&self, mechanism: &'static str, e: &AuthError, ctx: &LoginContext) {
        if counts_as_guess(e) {
            self.throttle.peer_failure(ctx.peer.ip());
        }
        let outcome = outcome_of(e);
        audit::login(ctx.peer, mechanism, None, outcome, e.reason());
        self.metrics.login(mechanism, outcome, 0.0);
    }

    /// Returns the user name whenever it became known, so failures are audited with it.
    async fn run(
        &self,
        credentials: Option<Credentials>,
        ctx: &LoginContext,
    ) -> (Result<LoginResult, AuthError>, Option<String>) {
        let Some(credentials) = credentials else {
            return (
                Err(AuthError::rejected(
                    "no_credentials",
                    format!(
                        "no credentials were presented; this server accepts: {}",
                        self.enabled_list()
                    ),
                )),
                None,
            );
        };
        let mechanism = credentials.mechanism();
        let Some(authenticator) = self.authenticators.get(&mechanism) else {
            return (
                Err(AuthError::rejected(
                    "mechanism_disabled",
                    format!(
                        "the {mechanism} mechanism is not enabled on this server; it accepts: {}",
                        self.enabled_list()
                    ),
                )),
                None,
            );
        };
        // The password mechanism reserves per user and address itself (exact under
        // concurrency); the others are refused once their address used its failures.
        let per_address = mechanism != Mechanism::Password;
        if per_address && let Err(e) = self.throttle.check_peer(ctx.peer.ip()).await {
            return (Err(e.into()), None);
        }
        let identity = match authenticator.authenticate(credentials, ctx).await {
            Ok(Outcome::Authenticated(identity)) => identity,
            Ok(Outcome::Challenge(c)) => return (Ok(LoginResult::Challenge(c)), None),
            Err(e) => {
                if per_address && counts_as_guess(&e) {
                    self.throttle.peer_failure(ctx.peer.ip());
                }
                return (Err(e), None);
            }
        };
        let user = identity.user.clone();
        (self.issue(identity, ctx).await, Some(user))
    }

    /// Who a bearer token (an IdP's or a trusted issuer's JWT, an opaque IdP token)
    /// names, with groups and labels, without making a session: `/v1/authorize`
    /// checks such a token on every call (SPEC §12). Not throttled per address:
    /// behind a proxy that address is the proxy's.
    pub async fn identify_bearer(
        &self,
        token: crate::auth::Secret,
        ctx: &LoginContext,
    ) -> Result<Arc<SessionInfo>, AuthError> {
        let Some(authenticator) = self.authenticators.get(&Mechanism::Oidc) else {
            return Err(AuthError::rejected(
                "mechanism_disabled",
                "bearer tokens of an IdP are not accepted here (oidc is not enabled)",
            ));
        };
        match authenticator
            .authenticate(Credentials::Bearer(token), ctx)
            .await?
        {
            Outcome::Authenticated(identity) => self.resolve(identity, ctx).await,
            Outcome::Challenge(_) => Err(AuthError::rejected(
                "no_credentials",
                "the token asks for more than a forward-auth check can give",
            )),
        }
    }

    /// Groups and labels of a proven identity.
    async fn resolve(
        &self,
        identity: Identity,
        ctx: &LoginContext,
    ) -> Result<Arc<SessionInfo>, AuthError> {
        // The session's user is the account's own name when NSS knows it (SPEC §13):
        // `ALICE` and `alice@example.test` are `alice` wherever SSSD says so.
        let mut user: Arc<str> = Arc::from(identity.user.as_str());
        let groups: Arc<[Arc<str>]> = match identity.groups {
            Some(gs) => gs.iter().map(|g| Arc::from(g.as_str())).collect(),
            None => match self.directory.lookup(&identity.user).await {
                Ok(acct) => {
                    user = acct.name.clone();
                    acct.groups.clone()
                }
                Err(DirectoryError::NoSuchUser)
                    if identity.mechanism == Mechanism::Password
                        && !self.policy.require_local_account =>
                {
                    tracing::info!(user = %identity.user, "no local account; session without groups (security.require_local_account is false)");
                    Arc::from(Vec::<Arc<str>>::new())
                }
                Err(DirectoryError::NoSuchUser) => {
                    return Err(AuthError::AccountUnavailable {
                        reason: "unknown_user",
                        message: format!(
                            "\"{}\" has no local account on this server",
                            identity.user
                        ),
                    });
                }
                Err(DirectoryError::Unavailable(why)) => {
                    tracing::warn!(error = %why, "group lookup failed");
                    return Err(AuthError::Unavailable {
                        reason: "directory_unavailable",
                        message: "the account directory (NSS) is unavailable; try again later"
                            .into(),
                    });
                }
            },
        };
        let labels: Arc<[Arc<str>]> = self.labels.load().labels_for(&groups).into();
        Ok(Arc::new(SessionInfo {
            user,
            mechanism: identity.mechanism,
            groups,
            labels,
            created_at: std::time::SystemTime::now(),
            peer: Some(ctx.peer.ip()),
        }))
    }

    /// Groups, labels and the session for a proven identity.
    async fn issue(
        &self,
        identity: Identity,
        ctx: &LoginContext,
    ) -> Result<LoginResult, AuthError> {
        let response_token = identity.response_token.clone();
        let info = self.resolve(identity, ctx).await?;
        let created = match self.sessions.create(info, self.policy.session_ttl).await {
            Ok(c) => c,
            Err(e @ SessionError::Unavailable) => {
                return Err(AuthError::Unavailable {
                    reason: "session_store_unavailable",
                    message: e.to_string(),
                });
            }
            Err(SessionError::Full) => {
                tracing::error!("security.max_sessions live sessions exist; refusing new logins");
                return Err(AuthError::Unavailable {
                    reason: "sessions_full",
                    message: SessionError::Full.to_string(),
                });
            }
        };
        if !created.evicted.is_empty() {
            audit::sessions_evicted(&created.session.info.user, created.evicted.len());
            for _ in &created.evicted {
                self.metrics.session_evicted();
            }
        }
        let (mut token, session) = (created.token, created.session);
        if let Some(issuer) = &self.jwt_sessions {
            token.text = zeroize::Zeroizing::new(issuer.sign_session(&session, &token.hash));
        }
        Ok(LoginResult::Session {
            token,
            session,
            response_token,
        })
    }

    fn enabled_list(&self) -> String {
        self.enabled
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A refusal that says the client presented something wrong (a guess), as opposed
/// to presenting nothing yet (the first leg of Negotiate) or using a disabled scheme.
fn counts_as_guess(e: &AuthError) -> bool {
    matches!(e, AuthError::Rejected { reason, .. }
        if !matches!(*reason, "no_credentials" | "mechanism_disabled"))
}

fn outcome_of(e: &AuthError) -> &'static str {
    crate::error::refusal(e).outcome
}
