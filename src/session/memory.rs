//! In-memory session store.
//!
//! Expiry follows tokio's mini-redis: a background task keeps the deadlines in a
//! `BTreeSet<(Instant, key)>`, sleeps until the earliest, and is woken through a
//! `Notify` when an earlier one arrives. No request ever scans all sessions.
//! Idle timeouts are checked when a session is used; an idle session nobody asks
//! about again is removed at its hard deadline.
//!
//! Each user's live sessions are also kept oldest first, so the per-user bound of
//! SPEC §9 revokes the oldest in O(1) instead of searching.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use tokio::sync::Notify;

use super::{
    Created, Revoke, Session, SessionError, SessionInfo, SessionLimits, SessionRecord, TokenHash,
    token,
};

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
    /// Each user's live sessions, oldest first.
    by_user: HashMap<Arc<str>, VecDeque<TokenHash>>,
    shutdown: bool,
}

impl State {
    /// Add a session to every index; whether it is now the earliest deadline (then
    /// the purge task must be woken).
    fn insert(&mut self, hash: TokenHash, entry: Entry) -> bool {
        let earliest = self.expirations.first().map(|(w, _)| *w);
        let deadline = entry.deadline;
        self.expirations.insert((deadline, hash));
        self.by_user
            .entry(entry.info.user.clone())
            .or_default()
            .push_back(hash);
        self.entries.insert(hash, entry);
        earliest.is_none_or(|e| deadline < e)
    }

    /// Remove a session from every index; its entry if it was there.
    fn remove(&mut self, hash: &TokenHash) -> Option<Entry> {
        let e = self.entries.remove(hash)?;
        self.expirations.remove(&(e.deadline, *hash));
        if let Some(list) = self.by_user.get_mut(&e.info.user) {
            // Sessions of one TTL expire oldest first: usually the front, in O(1);
            // otherwise a scan of at most `max_sessions_per_user` hashes.
            if list.front() == Some(hash) {
                list.pop_front();
            } else {
                list.retain(|h| h != hash);
            }
            if list.is_empty() {
                self.by_user.remove(&e.info.user);
            }
        }
        Some(e)
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    idle_timeout: Option<Duration>,
    limits: SessionLimits,
}

pub struct MemoryStore {
    shared: Arc<Shared>,
}

impl MemoryStore {
    /// Create the store and its purge task; must be called inside a tokio runtime.
    pub fn new(idle_timeout: Option<Duration>) -> Self {
        Self::with_limits(idle_timeout, SessionLimits::default())
    }

    /// A store that applies SPEC §9's bounds (`max_sessions_per_user`, `max_sessions`).
    pub fn with_limits(idle_timeout: Option<Duration>, limits: SessionLimits) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            idle_timeout: idle_timeout.filter(|d| !d.is_zero()),
            limits,
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
        while let Some(&(when, hash)) = state.expirations.first() {
            if when > now {
                return Some(when);
            }
            state.remove(&hash);
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

/// Synchronous: everything is answered from memory (the file store also writes
/// its file), so these never wait on the network. The async [`SessionStore`]
/// impl calls them.
impl MemoryStore {
    pub fn create(&self, info: Arc<SessionInfo>, ttl: Duration) -> Result<Created, SessionError> {
        let token = token::generate();
        let now = Instant::now();
        let deadline = now + ttl;
        let expires_at = SystemTime::now() + ttl;
        let limits = self.shared.limits;
        let mut evicted = Vec::new();
        let notify = {
            let mut state = self.shared.lock();
            // The user's oldest sessions make room first; they count toward the total too.
            while state
                .by_user
                .get(&info.user)
                .is_some_and(|l| l.len() >= limits.per_user.max(1))
            {
                let oldest = state
                    .by_user
                    .get(&info.user)
                    .and_then(|l| l.front().copied());
                match oldest {
                    Some(h) if state.remove(&h).is_some() => evicted.push(h),
                    Some(h) => {
                        if let Some(l) = state.by_user.get_mut(&info.user) {
                            l.retain(|x| *x != h);
                        }
                    }
                    None => break,
                }
            }
            if state.entries.len() >= limits.total {
                return Err(SessionError::Full);
            }
            state.insert(
                token.hash,
                Entry {
                    info: info.clone(),
                    expires_at,
                    deadline,
                    last_used: now,
                },
            )
        };
        if notify {
            self.shared.wake.notify_one();
        }
        Ok(Created {
            token,
            session: Session { info, expires_at },
            evicted,
        })
    }

    pub fn get(&self, hash: &TokenHash) -> Option<Session> {
        let now = Instant::now();
        let mut state = self.shared.lock();
        let entry = state.entries.get_mut(hash)?;
        if entry.deadline <= now {
            return None;
        }
        if let Some(idle) = self.shared.idle_timeout
            && now.duration_since(entry.last_used) >= idle
        {
            state.remove(hash);
            return None;
        }
        entry.last_used = now;
        Some(Session {
            info: entry.info.clone(),
            expires_at: entry.expires_at,
        })
    }

    pub fn revoke(&self, hash: &TokenHash) -> bool {
        let mut state = self.shared.lock();
        match state.remove(hash) {
            Some(e) => e.deadline > Instant::now(),
            None => false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.shared.lock().entries.len()
    }

    pub fn list(&self, user: Option<&str>) -> Vec<SessionRecord> {
        let state = self.shared.lock();
        let now = Instant::now();
        let record = |hash: &TokenHash, e: &Entry| SessionRecord {
            id: hash.short_id(),
            info: e.info.clone(),
            expires_at: e.expires_at,
        };
        let mut out: Vec<SessionRecord> = match user {
            Some(u) => state
                .by_user
                .get(u)
                .into_iter()
                .flatten()
                .filter_map(|h| state.entries.get(h).map(|e| (h, e)))
                .filter(|(_, e)| e.deadline > now)
                .map(|(h, e)| record(h, e))
                .collect(),
            None => state
                .entries
                .iter()
                .filter(|(_, e)| e.deadline > now)
                .map(|(h, e)| record(h, e))
                .collect(),
        };
        out.sort_by_key(|r| r.info.created_at);
        out
    }

    pub fn revoke_where(&self, which: &Revoke) -> usize {
        self.revoke_hashes(which).len()
    }
}

impl MemoryStore {
    /// End the sessions `which` names; their hashes (for a store that mirrors them).
    pub fn revoke_hashes(&self, which: &Revoke) -> Vec<TokenHash> {
        let mut state = self.shared.lock();
        let doomed: Vec<TokenHash> = match which {
            Revoke::User(u) => state
                .by_user
                .get(u.as_str())
                .map(|l| l.iter().copied().collect())
                .unwrap_or_default(),
            Revoke::Id(id) => state
                .entries
                .keys()
                .filter(|h| h.matches_id(id))
                .copied()
                .collect(),
            Revoke::All => state.entries.keys().copied().collect(),
        };
        doomed
            .into_iter()
            .filter(|h| state.remove(h).is_some())
            .collect()
    }

    /// Put back a session read from a durable store at startup, with its own hash,
    /// expiry and last use; `false` if it has already expired or gone idle. Limits are
    /// not applied: these sessions were within them when they were made.
    pub fn restore(
        &self,
        hash: TokenHash,
        info: Arc<SessionInfo>,
        expires_at: SystemTime,
        last_used: SystemTime,
    ) -> bool {
        let wall = SystemTime::now();
        let Ok(left) = expires_at.duration_since(wall) else {
            return false;
        };
        let idle_for = wall.duration_since(last_used).unwrap_or_default();
        if self
            .shared
            .idle_timeout
            .is_some_and(|idle| idle_for >= idle)
        {
            return false;
        }
        let now = Instant::now();
        let deadline = now + left;
        let notify = self.shared.lock().insert(
            hash,
            Entry {
                info,
                expires_at,
                deadline,
                last_used: now.checked_sub(idle_for).unwrap_or(now),
            },
        );
        if notify {
            self.shared.wake.notify_one();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Mechanism;

    fn info() -> Arc<SessionInfo> {
        Arc::new(SessionInfo {
            user: "alice".into(),
            mechanism: Mechanism::Certificate,
            groups: vec![Arc::from("alice")].into(),
            labels: vec![].into(),
            created_at: SystemTime::now(),
            peer: None,
        })
    }

    #[tokio::test]
    async fn a_session_is_found_by_its_token_and_revoked_once() {
        let store = MemoryStore::new(None);
        let token = store.create(info(), Duration::from_secs(60)).unwrap().token;
        let hash = token::parse(&token.text).unwrap();
        assert_eq!(store.get(&hash).unwrap().info.user.as_ref(), "alice");
        assert!(store.revoke(&hash));
        assert!(store.get(&hash).is_none());
        assert!(!store.revoke(&hash));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_sessions_are_purged_by_the_background_task() {
        let store = MemoryStore::new(None);
        let long = store.create(info(), Duration::from_secs(60)).unwrap().token;
        let short = store.create(info(), Duration::from_secs(1)).unwrap().token;
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
        let used = store
            .create(info(), Duration::from_secs(100))
            .unwrap()
            .token;
        let idle = store
            .create(info(), Duration::from_secs(100))
            .unwrap()
            .token;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            assert!(store.get(&used.hash).is_some());
        }
        assert!(store.get(&idle.hash).is_none());
        assert_eq!(store.len(), 1);
    }

    #[tokio::test]
    async fn the_oldest_session_of_a_user_makes_room_and_the_total_is_bounded() {
        let store = MemoryStore::with_limits(
            None,
            SessionLimits {
                per_user: 3,
                total: 4,
            },
        );
        let ttl = Duration::from_secs(60);
        let first: Vec<_> = (0..3).map(|_| store.create(info(), ttl).unwrap()).collect();
        assert!(first.iter().all(|c| c.evicted.is_empty()));
        let fourth = store.create(info(), ttl).unwrap();
        assert_eq!(fourth.evicted, vec![first[0].token.hash]);
        assert!(store.get(&first[0].token.hash).is_none(), "the oldest went");
        assert!(store.get(&first[1].token.hash).is_some());
        assert_eq!(store.len(), 3);
        let bob = Arc::new(SessionInfo {
            user: "bob".into(),
            ..(*info()).clone()
        });
        store.create(bob.clone(), ttl).unwrap();
        assert_eq!(
            store.create(bob, ttl).err(),
            Some(SessionError::Full),
            "4 live sessions in all"
        );
        assert!(store.revoke(&fourth.token.hash));
        assert_eq!(store.len(), 3);
    }

    #[tokio::test]
    async fn the_operator_lists_and_revokes_by_user_id_or_all() {
        let store = MemoryStore::new(None);
        let ttl = Duration::from_secs(60);
        let a1 = store.create(info(), ttl).unwrap().token;
        let _a2 = store.create(info(), ttl).unwrap().token;
        let bob = Arc::new(SessionInfo {
            user: "bob".into(),
            ..(*info()).clone()
        });
        let b = store.create(bob, ttl).unwrap().token;
        assert_eq!(store.list(Some("alice")).len(), 2);
        assert_eq!(store.list(None).len(), 3);
        let id = b.hash.short_id();
        assert_eq!(id.len(), 12);
        assert_eq!(store.list(Some("bob"))[0].id, id);
        assert_eq!(
            store.revoke_where(&Revoke::Id("abc".into())),
            0,
            "too short"
        );
        assert_eq!(store.revoke_where(&Revoke::Id(id)), 1);
        assert!(store.get(&b.hash).is_none());
        assert_eq!(store.revoke_where(&Revoke::User("alice".into())), 2);
        assert!(store.get(&a1.hash).is_none());
        assert_eq!(store.len(), 0);
        store.create(info(), ttl).unwrap();
        assert_eq!(store.revoke_where(&Revoke::All), 1);
    }
}

super::local_store!(MemoryStore);
