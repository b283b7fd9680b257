//! In-memory session store.
//!
//! Expiry follows tokio's mini-redis: a background task keeps the deadlines in a
//! `BTreeSet<(Instant, key)>`, sleeps until the earliest, and is woken through a
//! `Notify` when an earlier one arrives. No request ever scans all sessions.
//! Idle timeouts are checked when a session is used; an idle session nobody asks
//! about again is removed at its hard deadline.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use tokio::sync::Notify;

use super::{Session, SessionInfo, SessionStore, Token, TokenHash, token};

struct Entry {
    info: Arc<SessionInfo>,
    expires_at: SystemTime,
    deadline: Instant,
    last_used: Instant,
}

#[derive(Default)]
struct State {
    entries: HashMap<TokenHash, Entry>,
    expirations: BTreeSet<(Instant, TokenHash)>,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    idle_timeout: Option<Duration>,
}

pub struct MemoryStore {
    shared: Arc<Shared>,
}

impl MemoryStore {
    /// Create the store and its purge task; must be called inside a tokio runtime.
    pub fn new(idle_timeout: Option<Duration>) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            idle_timeout: idle_timeout.filter(|d| !d.is_zero()),
        });
        tokio::spawn(purge_expired(shared.clone()));
        MemoryStore { shared }
    }
}

impl Drop for MemoryStore {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps inconsistent in a way
        // that matters more than losing every session, so keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remove what is due and return the next deadline.
    fn purge(&self) -> Option<Instant> {
        let mut state = self.lock();
        let now = Instant::now();
        let State {
            entries,
            expirations,
            ..
        } = &mut *state;
        while let Some(&(when, hash)) = expirations.first() {
            if when > now {
                return Some(when);
            }
            expirations.pop_first();
            entries.remove(&hash);
        }
        None
    }
}

async fn purge_expired(shared: Arc<Shared>) {
    loop {
        if shared.lock().shutdown {
            return;
        }
        match shared.purge() {
            Some(when) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(when) => {}
                    _ = shared.wake.notified() => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
}

impl SessionStore for MemoryStore {
    fn create(&self, info: Arc<SessionInfo>, ttl: Duration) -> (Token, Session) {
        let token = token::generate();
        let now = Instant::now();
        let deadline = now + ttl;
        let expires_at = SystemTime::now() + ttl;
        let notify = {
            let mut state = self.shared.lock();
            let earliest = state.expirations.first().map(|(w, _)| *w);
            state.expirations.insert((deadline, token.hash));
            state.entries.insert(
                token.hash,
                Entry {
                    info: info.clone(),
                    expires_at,
                    deadline,
                    last_used: now,
                },
            );
            earliest.is_none_or(|e| deadline < e)
        };
        if notify {
            self.shared.wake.notify_one();
        }
        (token, Session { info, expires_at })
    }

    fn get(&self, hash: &TokenHash) -> Option<Session> {
        let now = Instant::now();
        let mut state = self.shared.lock();
        let entry = state.entries.get_mut(hash)?;
        if entry.deadline <= now {
            return None;
        }
        if let Some(idle) = self.shared.idle_timeout
            && now.duration_since(entry.last_used) >= idle
        {
            let deadline = entry.deadline;
            state.entries.remove(hash);
            state.expirations.remove(&(deadline, *hash));
            return None;
        }
        entry.last_used = now;
        Some(Session {
            info: entry.info.clone(),
            expires_at: entry.expires_at,
        })
    }

    fn revoke(&self, hash: &TokenHash) -> bool {
        let mut state = self.shared.lock();
        match state.entries.remove(hash) {
            Some(e) => {
                state.expirations.remove(&(e.deadline, *hash));
                e.deadline > Instant::now()
            }
            None => false,
        }
    }

    fn len(&self) -> usize {
        self.shared.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mechanism;

    fn info() -> Arc<SessionInfo> {
        Arc::new(SessionInfo {
            user: "alice".into(),
            mechanism: Mechanism::Certificate,
            groups: vec![Arc::from("alice")].into(),
            labels: vec![].into(),
        })
    }

    #[tokio::test]
    async fn a_session_is_found_by_its_token_and_revoked_once() {
        let store = MemoryStore::new(None);
        let (token, _) = store.create(info(), Duration::from_secs(60));
        let hash = token::parse(&token.text).unwrap();
        assert_eq!(store.get(&hash).unwrap().info.user.as_ref(), "alice");
        assert!(store.revoke(&hash));
        assert!(store.get(&hash).is_none());
        assert!(!store.revoke(&hash));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_sessions_are_purged_by_the_background_task() {
        let store = MemoryStore::new(None);
        let (long, _) = store.create(info(), Duration::from_secs(60));
        let (short, _) = store.create(info(), Duration::from_secs(1));
        assert_eq!(store.len(), 2);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tokio::task::yield_now().await;
        assert!(store.get(&short.hash).is_none());
        assert!(store.get(&long.hash).is_some());
        assert_eq!(
            store.len(),
            1,
            "the expired session is gone without a lookup"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_sessions_end_but_used_ones_live() {
        let store = MemoryStore::new(Some(Duration::from_secs(10)));
        let (used, _) = store.create(info(), Duration::from_secs(100));
        let (idle, _) = store.create(info(), Duration::from_secs(100));
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            assert!(store.get(&used.hash).is_some());
        }
        assert!(store.get(&idle.hash).is_none());
        assert_eq!(store.len(), 1);
    }
}
