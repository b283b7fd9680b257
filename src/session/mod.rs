//! Sessions (SPEC §6): issued after a login, checked by other services, ended by TTL,
//! idle timeout or logout.
//!
//! The store is a trait so a persistent or shared (Redis) store can replace the
//! in-memory one without touching the routes (SPEC §9).

pub mod file;
pub mod memory;
pub mod token;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::auth::Mechanism;

pub use file::FileStore;
pub use memory::MemoryStore;
pub use token::{Token, TokenHash};

/// What a session carries; shared by reference so a million sessions of the same
/// few users do not copy their group lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub user: Arc<str>,
    pub mechanism: Mechanism,
    pub groups: Arc<[Arc<str>]>,
    pub labels: Arc<[Arc<str>]>,
    /// When the login happened and from where, for the operator (`admin sessions`).
    pub created_at: SystemTime,
    pub peer: Option<IpAddr>,
}

/// A live session as the operator sees it: never the token, only a short id (the
/// first 12 hex characters of the token's SHA-256) that names it for `revoke --id`.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub id: String,
    pub info: Arc<SessionInfo>,
    pub expires_at: SystemTime,
}

/// Which sessions an operator ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoke {
    User(String),
    /// A [`SessionRecord::id`] (or a longer prefix of the hash, in hex).
    Id(String),
    All,
}

impl TokenHash {
    /// The operator's name for a session.
    pub fn short_id(&self) -> String {
        self.0[..6].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `id` (at least 12 hex characters) names this session.
    pub fn matches_id(&self, id: &str) -> bool {
        id.len() >= 12 && self.hex().starts_with(&id.to_ascii_lowercase())
    }
}

/// A live session as seen by a caller.
#[derive(Debug, Clone)]
pub struct Session {
    pub info: Arc<SessionInfo>,
    pub expires_at: SystemTime,
}

impl Session {
    pub fn expires_in(&self, now: SystemTime) -> Duration {
        self.expires_at.duration_since(now).unwrap_or_default()
    }
}

/// Bounds of SPEC §9 on live sessions.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Live sessions of one user; the oldest is revoked to make room.
    pub per_user: usize,
    /// Live sessions in all; beyond it new logins get 503.
    pub total: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            per_user: usize::MAX,
            total: usize::MAX,
        }
    }
}

/// A new session, and how many of the user's oldest sessions made room for it.
pub struct Created {
    pub token: Token,
    pub session: Session,
    /// The user's oldest sessions revoked to make room (their hashes).
    pub evicted: Vec<TokenHash>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// `security.max_sessions` live sessions exist already.
    #[error("the server holds its maximum number of sessions; try again later")]
    Full,
}

pub trait SessionStore: Send + Sync + 'static {
    /// Issue a new session; the token's plaintext is not kept.
    fn create(&self, info: Arc<SessionInfo>, ttl: Duration) -> Result<Created, SessionError>;
    /// The live session for a presented token hash, refreshing its idle timer.
    fn get(&self, hash: &TokenHash) -> Option<Session>;
    /// End a session; `false` if it did not exist (or had already ended).
    fn revoke(&self, hash: &TokenHash) -> bool;
    /// Live sessions, for the `portcullis_active_sessions` gauge.
    fn len(&self) -> usize;
    /// Live sessions, of one user or all, for the operator (a scan: not for requests).
    fn list(&self, user: Option<&str>) -> Vec<SessionRecord>;
    /// End the sessions `which` names; how many ended.
    fn revoke_where(&self, which: &Revoke) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
