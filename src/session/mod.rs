//! Sessions (SPEC §6): issued after a login, checked by other services, ended by TTL,
//! idle timeout or logout.
//!
//! The store is a trait so a persistent or shared (Redis) store can replace the
//! in-memory one without touching the routes (SPEC §9).

pub mod file;
pub mod memory;
pub mod shared;
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
        let mut id = self.hex();
        id.truncate(12);
        id
    }

    /// The hash in lower-case hex (the shared store's keys; on every uncached check).
    pub fn hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(DIGITS[usize::from(b >> 4)] as char);
            s.push(DIGITS[usize::from(b & 15)] as char);
        }
        s
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
    /// The shared store (Redis) did not answer: the caller gets `503`, never a
    /// "no such session" that would log a user out or let a revoked one in.
    #[error("the shared session store is unavailable; try again later")]
    Unavailable,
}

/// Where sessions live. Async because the shared store (Redis) answers over the
/// network; the local stores answer at once.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Issue a new session; the token's plaintext is not kept.
    async fn create(&self, info: Arc<SessionInfo>, ttl: Duration) -> Result<Created, SessionError>;
    /// The live session for a presented token hash, refreshing its idle timer.
    async fn get(&self, hash: &TokenHash) -> Result<Option<Session>, SessionError>;
    /// End a session; `false` if it did not exist (or had already ended).
    async fn revoke(&self, hash: &TokenHash) -> Result<bool, SessionError>;
    /// Live sessions, for the `portcullis_active_sessions` gauge (the shared store
    /// answers with its last count, refreshed in the background).
    fn len(&self) -> usize;
    /// Live sessions, of one user or all, for the operator (a scan: not for requests).
    async fn list(&self, user: Option<&str>) -> Result<Vec<SessionRecord>, SessionError>;
    /// End the sessions `which` names; how many ended.
    async fn revoke_where(&self, which: &Revoke) -> Result<usize, SessionError>;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The [`SessionStore`] impl of a store whose synchronous methods of the same
/// names answer from memory.
macro_rules! local_store {
    ($t:ty) => {
        #[async_trait::async_trait]
        impl super::SessionStore for $t {
            async fn create(
                &self,
                info: std::sync::Arc<super::SessionInfo>,
                ttl: std::time::Duration,
            ) -> Result<super::Created, super::SessionError> {
                <$t>::create(self, info, ttl)
            }
            async fn get(
                &self,
                hash: &super::TokenHash,
            ) -> Result<Option<super::Session>, super::SessionError> {
                Ok(<$t>::get(self, hash))
            }
            async fn revoke(&self, hash: &super::TokenHash) -> Result<bool, super::SessionError> {
                Ok(<$t>::revoke(self, hash))
            }
            fn len(&self) -> usize {
                <$t>::len(self)
            }
            async fn list(
                &self,
                user: Option<&str>,
            ) -> Result<Vec<super::SessionRecord>, super::SessionError> {
                Ok(<$t>::list(self, user))
            }
            async fn revoke_where(
                &self,
                which: &super::Revoke,
            ) -> Result<usize, super::SessionError> {
                Ok(<$t>::revoke_where(self, which))
            }
        }
    };
}
use local_store;
