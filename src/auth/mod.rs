//! Authenticators: each proves one kind of credential and knows nothing of HTTP.
//!
//! The shape follows Kanidm's resolver: a step either authenticates, or asks for
//! more (`Outcome::Challenge`, the PAM conversation), and errors are named by what
//! the caller must do — refuse (401), deny the account (403), or report a broken
//! dependency (503) — so a down KDC can never look like a wrong password.

pub mod certificate;
pub mod kerberos;
pub mod oidc;
pub mod password;
pub mod shadow;
pub mod spnego;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The four kinds of login. Defined here, not in `config`, because it is what an
/// authenticator is; `config` names these types in its sections (config depends on
/// auth, never the other way round).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mechanism {
    Password,
    Kerberos,
    Certificate,
    Oidc,
}

impl Mechanism {
    pub const ALL: [Mechanism; 4] = [
        Mechanism::Password,
        Mechanism::Kerberos,
        Mechanism::Certificate,
        Mechanism::Oidc,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Password => "password",
            Mechanism::Kerberos => "kerberos",
            Mechanism::Certificate => "certificate",
            Mechanism::Oidc => "oidc",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Mechanism::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A password, token or answer: zeroed on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(Zeroizing::new(s))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<Zeroizing<String>> for Secret {
    fn from(s: Zeroizing<String>) -> Self {
        Secret(s)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// What the client presented, extracted from headers, body or the TLS session.
#[derive(Debug)]
pub enum Credentials {
    Password {
        username: String,
        password: Secret,
    },
    Negotiate(Vec<u8>),
    Bearer(Secret),
    /// The chain the client presented (leaf first), already checked at this login
    /// against `ssl.client_ca_file` and the CRLs.
    Certificate(Vec<CertificateDer<'static>>),
    /// Answers to a PAM conversation's prompts (`POST /v1/login/{conversation}`).
    Continue {
        conversation: String,
        answers: Vec<Secret>,
    },
}

impl Credentials {
    pub fn mechanism(&self) -> Mechanism {
        match self {
            Credentials::Password { .. } | Credentials::Continue { .. } => Mechanism::Password,
            Credentials::Negotiate(_) => Mechanism::Kerberos,
            Credentials::Bearer(_) => Mechanism::Oidc,
            Credentials::Certificate(_) => Mechanism::Certificate,
        }
    }
}

/// Facts about the request an authenticator may need (PAM_RHOST, throttling).
#[derive(Debug, Clone)]
pub struct LoginContext {
    pub peer: SocketAddr,
    /// Hash of the peer address and client certificate: a PAM conversation may only
    /// be continued by the client that started it.
    pub binding: [u8; 32],
    /// The trusted issuer (`security.issuers.<name>`) that checked a bearer token,
    /// set by the oidc authenticator for the audit line.
    pub issuer: std::sync::OnceLock<std::sync::Arc<str>>,
}

/// Who the client proved to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub mechanism: Mechanism,
    /// Groups the mechanism itself vouches for (OIDC claims); `None` means ask NSS.
    pub groups: Option<Vec<String>>,
    /// A token for the client to verify the server (Kerberos mutual authentication).
    pub response_token: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptStyle {
    EchoOff,
    EchoOn,
    Info,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Prompt {
    pub style: PromptStyle,
    pub text: String,
}

/// The mechanism needs another round trip (a PAM prompt beyond the password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub conversation: String,
    pub prompts: Vec<Prompt>,
}

#[derive(Debug)]
pub enum Outcome {
    Authenticated(Identity),
    Challenge(Challenge),
}

/// Why a login did not succeed. `reason` is a stable code for the audit log and
/// metrics; `message` is what the client is told and never names which part of a
/// credential was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The request itself is malformed (400).
    #[error("{message}")]
    Malformed {
        reason: &'static str,
        message: String,
    },
    /// Credentials missing or wrong (401).
    #[error("{message}")]
    Rejected {
        reason: &'static str,
        message: String,
    },
    /// Credentials right, account not usable: expired, locked, unknown locally (403).
    #[error("{message}")]
    AccountUnavailable {
        reason: &'static str,
        message: String,
    },
    /// Too many failures for this user or address (429).
    #[error("too many failed attempts; retry in {retry_after} s")]
    TooManyAttempts { retry_after: u64 },
    /// Right password, but PAM demands a new one first (PAM_NEW_AUTHTOK_REQD, 403).
    #[error("the password has expired and must be changed before logging in")]
    PasswordExpired,
    /// No live conversation with this id for this client (404).
    #[error("unknown or expired conversation")]
    UnknownConversation,
    /// The conversation id was made by another daemon (or before a restart): a load
    /// balancer that does not keep a client on one daemon (404, README "Several daemons").
    #[error(
        "unknown conversation: it was started by another portcullis daemon or before a restart; a load balancer in front of several daemons must send each client to the same one"
    )]
    ConversationElsewhere,
    /// A dependency (IdP, KDC, NSS source, the blocking pool) is down or saturated (503).
    #[error("{message}")]
    Unavailable {
        reason: &'static str,
        message: String,
    },
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Malformed { reason, .. }
            | AuthError::Rejected { reason, .. }
            | AuthError::AccountUnavailable { reason, .. }
            | AuthError::Unavailable { reason, .. } => reason,
            AuthError::TooManyAttempts { .. } => "throttled",
            AuthError::PasswordExpired => "password_expired",
            AuthError::UnknownConversation => "unknown_conversation",
            AuthError::ConversationElsewhere => "conversation_elsewhere",
        }
    }

    pub fn rejected(reason: &'static str, message: impl Into<String>) -> Self {
        AuthError::Rejected {
            reason,
            message: message.into(),
        }
    }
}

/// The blocking pool being full is an outage of the login service, not a wrong password.
impl From<crate::blocking::PoolError> for AuthError {
    fn from(e: crate::blocking::PoolError) -> Self {
        let (reason, message) = match e {
            crate::blocking::PoolError::Busy => {
                ("busy", "too many logins in progress; try again shortly")
            }
            crate::blocking::PoolError::Panicked => {
                ("internal", "the login failed inside the server")
            }
        };
        AuthError::Unavailable {
            reason,
            message: message.into(),
        }
    }
}

/// Too many failures is a `429`; shared counters out of reach (Redis down) is an
/// outage, `503`: never a `401`, and never a guess let through unchecked.
impl From<crate::throttle::ThrottleError> for AuthError {
    fn from(e: crate::throttle::ThrottleError) -> Self {
        match e {
            crate::throttle::ThrottleError::Refused { retry_after } => {
                AuthError::TooManyAttempts { retry_after }
            }
            crate::throttle::ThrottleError::Unavailable(_) => AuthError::Unavailable {
                reason: "session_store_unavailable",
                message: "the shared session store (Redis) is unavailable; try again later".into(),
            },
        }
    }
}

pub trait Authenticator: Send + Sync {
    fn mechanism(&self) -> Mechanism;

    fn authenticate<'a>(
        &'a self,
        credentials: Credentials,
        ctx: &'a LoginContext,
    ) -> BoxFuture<'a, Result<Outcome, AuthError>>;

    /// What the operator's `admin status` should know about this mechanism's
    /// dependencies (e.g. the age of an IdP's key set); `null` when nothing.
    fn status(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// A user name we are willing to hand to NSS or PAM: no NUL, no control characters,
/// no path separators, bounded length.
pub fn valid_username(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@$".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2".into());
        let c = Credentials::Password {
            username: "alice".into(),
            password: s,
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn usernames_are_checked() {
        assert!(valid_username("alice"));
        assert!(valid_username("svc-backup$"));
        for bad in ["", "a\0b", "a\nb", "../etc", "-rf", &"x".repeat(300)] {
            assert!(!valid_username(bad), "{bad:?}");
        }
    }
}
