//! Failed-login throttling per user name and per client address (SPEC §3 and §9:
//! `security.max_failed_attempts` within `security.failed_attempt_window`).
//!
//! Exact under concurrency: a password attempt *reserves* a place before PAM is
//! asked and *settles* it afterwards, and attempts in flight count against the
//! limit, so 128 parallel guesses on one HTTP/2 connection get at most
//! `max_failed_attempts` answers that are not 429 (the check-then-record shape let
//! all of them through). Keys are normalised the way directories compare names:
//! `ALICE`, `alice@EXAMPLE.COM` and `EXAMPLE\alice` share one budget, and an IPv6
//! client is keyed by its /64 (one host gets a whole /64 from its router). Memory is
//! bounded by an LRU: the least recently touched keys go first, in O(1).
//!
//! Counted whether or not the user exists, so a 429 tells nothing about which
//! accounts are real. A success clears the user's count (not the address's: one
//! right password must not buy another thousand guesses). This complements
//! `pam_faillock`, which locks accounts; this bounds guessing before PAM is asked.
//!
//! Two backends: an LRU map in this process (`memory` and `file` stores), or Redis
//! (`redis` store, SPEC §10) so several daemons together allow no more guesses than
//! one. In Redis each key is a sorted set scored by Redis's own clock in unix ms
//! (daemons need not agree on the time), `<prefix>fail:u:<user>` and
//! `<prefix>fail:a:<address>`, whose members are `r:<id>` for an attempt in flight
//! and `f:<id>` for a failure. Reserving and settling are one Lua script each, so
//! both keys change together and parallel attempts on several daemons are counted
//! exactly. Every key expires one window after its newest member, so nothing lingers.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use tokio::time::Instant;

use crate::redis_client::RedisClient;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Peer(IpAddr),
}

#[derive(Default)]
struct Entry {
    /// Failures within the window, oldest first (at most `max` kept).
    failures: VecDeque<Instant>,
    /// Reserved attempts whose outcome is not known yet.
    in_flight: u32,
}

pub struct Throttle {
    max: usize,
    window: Duration,
    backend: Backend,
}

enum Backend {
    /// This process only.
    Local(Mutex<LruCache<Key, Entry>>),
    /// Shared by every daemon on the same Redis.
    Shared(RedisClient),
}

/// Why an attempt may not go ahead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThrottleError {
    /// The user or the address has used up its failures: `429` with this
    /// `Retry-After` (seconds).
    #[error("too many failed attempts; retry in {retry_after} s")]
    Refused { retry_after: u64 },
    /// The shared counters (Redis) could not be read: `503`, never a guess let
    /// through unchecked. Carries the Redis error for the log.
    #[error("the shared failed-attempt counters (Redis) are unavailable: {0}")]
    Unavailable(String),
}

/// Keys tracked at most; the least recently used go first. At ~150 bytes a key this
/// is ~40 MB in the worst case.
const CAPACITY: usize = 262_144;

/// The per-user key: lower case, without `@domain` or `DOMAIN\`.
pub fn user_key(name: &str) -> String {
    let name = name.rsplit_once('\\').map_or(name, |(_, u)| u);
    let name = name.split_once('@').map_or(name, |(u, _)| u);
    name.to_lowercase()
}

/// The per-address key: the IPv4 address (also when mapped into IPv6), or the /64.
pub fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

impl Throttle {
    /// Counters in this process (the `memory` and `file` session stores).
    pub fn new(max: u64, window: Duration) -> Self {
        Self::with_capacity(max, window, CAPACITY)
    }

    fn with_capacity(max: u64, window: Duration, capacity: usize) -> Self {
        Throttle {
            max: max as usize,
            window,
            backend: Backend::Local(Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity.max(2)).expect("at least 2"),
            ))),
        }
    }

    /// Counters in Redis, shared by every daemon using it (the `redis` session
    /// store, SPEC §10). An attempt a daemon reserved and never settled (it
    /// crashed, or Redis was unreachable when the outcome was known) stays in the
    /// set until it leaves the window: an abandoned attempt counts as a failure
    /// (SPEC §9), so a lost write never lets an extra guess through.
    pub fn shared(max: u64, window: Duration, redis: RedisClient) -> Self {
        Throttle {
            max: max as usize,
            window,
            backend: Backend::Shared(redis),
        }
    }

    pub fn enabled(&self) -> bool {
        self.max > 0
    }

    fn keys(user: Option<&str>, peer: IpAddr) -> impl Iterator<Item = Key> {
        user.map(|u| Key::User(user_key(u)))
            .into_iter()
            .chain(std::iter::once(Key::Peer(peer_key(peer))))
    }

    /// How long `key` must wait, counting reserved attempts when `in_flight` is set.
    fn wait(
        &self,
        map: &mut LruCache<Key, Entry>,
        key: &Key,
        now: Instant,
        in_flight: bool,
    ) -> Duration {
        let Some(e) = map.get_mut(key) else {
            return Duration::ZERO;
        };
        while e
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            e.failures.pop_front();
        }
        let pending = if in_flight { e.in_flight as usize } else { 0 };
        if e.failures.len() + pending < self.max {
            return Duration::ZERO;
        }
        // Full of reservations only: the answer is seconds away, say so.
        let oldest_needed = e
            .failures
            .len()
            .checked_sub(self.max.saturating_sub(pending));
        match oldest_needed.and_then(|i| e.failures.get(i)) {
            Some(t) => self.window.saturating_sub(now.duration_since(*t)),
            None => Duration::from_secs(1),
        }
    }

    fn retry_after(wait: Duration) -> u64 {
        wait.as_millis().div_ceil(1000).max(1) as u64
    }

    fn refused(wait: Duration) -> Result<(), ThrottleError> {
        if wait.is_zero() {
            Ok(())
        } else {
            Err(ThrottleError::Refused {
                retry_after: Self::retry_after(wait),
            })
        }
    }

    /// Reserve a place for a password attempt by `user` from `peer`; refused when
    /// the user or the address has used up its failures (reservations included),
    /// unavailable when the shared counters cannot be reached.
    pub async fn reserve(
        self: &Arc<Self>,
        user: &str,
        peer: IpAddr,
    ) -> Result<Attempt, ThrottleError> {
        let mut attempt = Attempt {
            throttle: self.clone(),
            user: Some(user_key(user)),
            peer,
            id: String::new(),
            settled: true,
        };
        if !self.enabled() {
            return Ok(attempt);
        }
        match &self.backend {
            Backend::Local(keys) => Self::refused(self.reserve_local(keys, user, peer))?,
            Backend::Shared(redis) => {
                attempt.id = random_id();
                let wait = shared::reserve(redis, self, &user_key(user), peer, &attempt.id)
                    .await
                    .map_err(|e| {
                        tracing::warn!(error = %e, "failed-attempt counters in Redis unavailable; login refused with 503");
                        ThrottleError::Unavailable(e.to_string())
                    })?;
                Self::refused(wait)?
            }
        }
        attempt.settled = false;
        Ok(attempt)
    }

    fn reserve_local(
        &self,
        keys: &Mutex<LruCache<Key, Entry>>,
        user: &str,
        peer: IpAddr,
    ) -> Duration {
        let now = Instant::now();
        let mut map = lock(keys);
        let mut wait = Duration::ZERO;
        for key in Self::keys(Some(user), peer) {
            wait = wait.max(self.wait(&mut map, &key, now, true));
        }
        if wait.is_zero() {
            for key in Self::keys(Some(user), peer) {
                map.get_or_insert_mut(key, Entry::default).in_flight += 1;
            }
        }
        wait
    }

    /// For mechanisms whose failures only count against the address (certificate,
    /// Kerberos, OIDC): refused when the address has used up its failures (attempts
    /// in flight not counted), unavailable when the shared counters cannot be reached.
    pub async fn check_peer(&self, peer: IpAddr) -> Result<(), ThrottleError> {
        if !self.enabled() {
            return Ok(());
        }
        let wait = match &self.backend {
            Backend::Local(keys) => self.wait(
                &mut lock(keys),
                &Key::Peer(peer_key(peer)),
                Instant::now(),
                false,
            ),
            Backend::Shared(redis) => shared::check_peer(redis, self, peer).await.map_err(|e| {
                tracing::warn!(error = %e, "failed-attempt counters in Redis unavailable; login refused with 503");
                ThrottleError::Unavailable(e.to_string())
            })?,
        };
        Self::refused(wait)
    }

    /// A failed login of a mechanism without a reservation (counts for the address).
    pub fn peer_failure(&self, peer: IpAddr) {
        if self.enabled() {
            self.settle(None, peer, Settle::Failure, None);
        }
    }

    /// Record an outcome; `reservation` is the reserved attempt's id (empty for the
    /// local backend), `None` when nothing was reserved. In Redis the write runs in
    /// a task of its own, so callers never wait for it.
    fn settle(&self, user: Option<&str>, peer: IpAddr, how: Settle, reservation: Option<&str>) {
        match &self.backend {
            Backend::Local(keys) => self.settle_local(keys, user, peer, how, reservation.is_some()),
            Backend::Shared(redis) => {
                let id = match reservation {
                    Some(id) => id.to_string(),
                    None => random_id(),
                };
                shared::spawn_settle(
                    redis.clone(),
                    self.window,
                    self.max,
                    user.map(user_key),
                    peer,
                    how,
                    id,
                    reservation.is_some(),
                );
            }
        }
    }

    fn settle_local(
        &self,
        keys: &Mutex<LruCache<Key, Entry>>,
        user: Option<&str>,
        peer: IpAddr,
        how: Settle,
        reserved: bool,
    ) {
        let now = Instant::now();
        let mut map = lock(keys);
        for key in Self::keys(user, peer) {
            let is_user = matches!(key, Key::User(_));
            let e = map.get_or_insert_mut(key.clone(), Entry::default);
            if reserved {
                e.in_flight = e.in_flight.saturating_sub(1);
            }
            match how {
                Settle::Failure => {
                    e.failures.push_back(now);
                    while e.failures.len() > self.max.max(1) {
                        e.failures.pop_front();
                    }
                }
                Settle::Success if is_user => e.failures.clear(),
                Settle::Success | Settle::Neutral => {}
            }
            if e.failures.is_empty() && e.in_flight == 0 {
                map.pop(&key);
            }
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        match &self.backend {
            Backend::Local(keys) => lock(keys).len(),
            Backend::Shared(_) => 0,
        }
    }
}

fn lock(keys: &Mutex<LruCache<Key, Entry>>) -> std::sync::MutexGuard<'_, LruCache<Key, Entry>> {
    keys.lock().unwrap_or_else(|p| p.into_inner())
}

/// 96 random bits in hex: tells one attempt's members from another's.
fn random_id() -> String {
    let mut raw = [0u8; 12];
    getrandom::fill(&mut raw).expect("the kernel's CSPRNG is available");
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settle {
    Success,
    Failure,
    Neutral,
}

/// A reserved password attempt. Settle it with [`Attempt::succeeded`],
/// [`Attempt::failed`] or [`Attempt::neutral`]; dropped unsettled (the client went
/// away, a conversation was abandoned) it counts as a failure.
pub struct Attempt {
    throttle: Arc<Throttle>,
    user: Option<String>,
    peer: IpAddr,
    /// The reservation's id in Redis (empty for the local backend).
    id: String,
    settled: bool,
}

impl Attempt {
    fn finish(mut self, how: Settle) {
        self.settle(how);
    }

    fn settle(&mut self, how: Settle) {
        if !self.settled {
            self.settled = true;
            self.throttle
                .settle(self.user.as_deref(), self.peer, how, Some(&self.id));
        }
    }

    /// The right credentials: the user's failures are forgotten.
    pub fn succeeded(self) {
        self.finish(Settle::Success)
    }

    /// Wrong credentials (or an abandoned conversation).
    pub fn failed(self) {
        self.finish(Settle::Failure)
    }

    /// No verdict on the credentials (a dependency was down, the account is refused
    /// with the right password): the reservation is returned without a failure.
    pub fn neutral(self) {
        self.finish(Settle::Neutral)
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.settle(Settle::Failure);
    }
}

/// The Redis backend: one Lua script per operation, so both keys of an attempt
/// change together and no other daemon sees half of it.
mod shared {
    use std::net::IpAddr;
    use std::sync::LazyLock;
    use std::time::Duration;

    use redis::{RedisError, Script};

    use super::{Settle, Throttle, peer_key};
    use crate::redis_client::RedisClient;

    /// Shared by the scripts: Redis's clock in unix ms, and the wait (ms) before
    /// `key` has room for one more attempt (0: room now), counting reservations
    /// when `pending_counts`. Members older than the window are dropped first.
    /// Like the local backend, the wait runs until the failure that must leave
    /// does; if reservations alone fill the key, 1 s.
    const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local function wait(key, pending_counts)
  local all = redis.call('ZRANGEBYSCORE', key, '(' .. string.format('%d', now - window), '+inf', 'WITHSCORES')
  if #all / 2 < max then return 0 end
  local fails = {}
  local pending = 0
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'f:' then
      fails[#fails + 1] = tonumber(all[i + 1])
    else
      pending = pending + 1
    end
  end
  if not pending_counts then pending = 0 end
  if #fails + pending < max then return 0 end
  local need = max - pending
  if need <= 0 then return 1000 end
  local w = fails[#fails - need + 1] + window - now
  if w < 1 then w = 1 end
  return w
end
"#;

    /// KEYS: the address key, the user key. ARGV: window ms, max, id.
    /// Returns 0 with `r:<id>` added to both keys, or the wait in ms.
    static RESERVE: LazyLock<Script> = LazyLock::new(|| {
        Script::new(&format!(
            "{PRELUDE}{}",
            r#"
local longest = 0
for _, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%d', now - window))
  local w = wait(key, true)
  if w > longest then longest = w end
end
if longest > 0 then return longest end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, string.format('%d', now), 'r:' .. ARGV[3])
  redis.call('PEXPIRE', key, window)
end
return 0
"#
        ))
    });

    /// KEYS: the address key. ARGV: window ms, max. Failures only, read only.
    static CHECK_PEER: LazyLock<Script> =
        LazyLock::new(|| Script::new(&format!("{PRELUDE}return wait(KEYS[1], false)\n")));

    /// KEYS: the address key, then the user key if any. ARGV: window ms, max, id,
    /// outcome (`f` failure, `s` success, `n` neutral), `1` if `r:<id>` was reserved.
    /// A failure adds `f:<id>` (at most `max` failures are kept); a success drops
    /// the user's failures (KEYS[2]), never the address's.
    static SETTLE: LazyLock<Script> = LazyLock::new(|| {
        Script::new(&format!(
            "{PRELUDE}{}",
            r#"
local id, how, reserved = ARGV[3], ARGV[4], ARGV[5] == '1'
local keep = math.max(max, 1)
for i, key in ipairs(KEYS) do
  if reserved then redis.call('ZREM', key, 'r:' .. id) end
  if how == 'f' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%d', now - window))
    redis.call('ZADD', key, string.format('%d', now), 'f:' .. id)
    if redis.call('ZCARD', key) > keep then
      local members = redis.call('ZRANGE', key, 0, -1)
      local fails = 0
      for _, m in ipairs(members) do
        if string.sub(m, 1, 2) == 'f:' then fails = fails + 1 end
      end
      for _, m in ipairs(members) do
        if fails <= keep then break end
        if string.sub(m, 1, 2) == 'f:' then
          redis.call('ZREM', key, m)
          fails = fails - 1
        end
      end
    end
    redis.call('PEXPIRE', key, window)
  elseif how == 's' and i == 2 then
    for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do
      if string.sub(m, 1, 2) == 'f:' then redis.call('ZREM', key, m) end
    end
  end
end
return 0
"#
        ))
    });

    fn user_set(redis: &RedisClient, user: &str) -> String {
        redis.key(&format!("fail:u:{user}"))
    }

    fn peer_set(redis: &RedisClient, peer: IpAddr) -> String {
        redis.key(&format!("fail:a:{}", peer_key(peer)))
    }

    fn window_ms(window: Duration) -> u64 {
        (window.as_millis() as u64).max(1)
    }

    pub(super) async fn reserve(
        redis: &RedisClient,
        t: &Throttle,
        user: &str,
        peer: IpAddr,
        id: &str,
    ) -> Result<Duration, RedisError> {
        let ms: u64 = RESERVE
            .key(peer_set(redis, peer))
            .key(user_set(redis, user))
            .arg(window_ms(t.window))
            .arg(t.max)
            .arg(id)
            .invoke_async(&mut redis.conn())
            .await?;
        Ok(Duration::from_millis(ms))
    }

    pub(super) async fn check_peer(
        redis: &RedisClient,
        t: &Throttle,
        peer: IpAddr,
    ) -> Result<Duration, RedisError> {
        let ms: u64 = CHECK_PEER
            .key(peer_set(redis, peer))
            .arg(window_ms(t.window))
            .arg(t.max)
            .invoke_async(&mut redis.conn())
            .await?;
        Ok(Duration::from_millis(ms))
    }

    /// Write an outcome from a task of its own; a failed write is logged and
    /// otherwise harmless (a reservation left behind counts as a failure).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn spawn_settle(
        redis: RedisClient,
        window: Duration,
        max: usize,
        user: Option<String>,
        peer: IpAddr,
        how: Settle,
        id: String,
        reserved: bool,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                ?how,
                "login outcome not recorded in Redis (no runtime); a reservation counts as a failure until the window passes"
            );
            return;
        };
        runtime.spawn(async move {
            let mut script = SETTLE.key(peer_set(&redis, peer));
            if let Some(user) = &user {
                script.key(user_set(&redis, user));
            }
            let outcome = match how {
                Settle::Failure => "f",
                Settle::Success => "s",
                Settle::Neutral => "n",
            };
            let result: Result<i64, RedisError> = script
                .arg(window_ms(window))
                .arg(max)
                .arg(&id)
                .arg(outcome)
                .arg(if reserved { "1" } else { "0" })
                .invoke_async(&mut redis.conn())
                .await;
            if let Err(e) = result {
                tracing::warn!(
                    error = %e,
                    ?how,
                    "login outcome not recorded in Redis; a reservation counts as a failure until the window passes"
                );
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    fn refused(retry_after: u64) -> ThrottleError {
        ThrottleError::Refused { retry_after }
    }

    fn t(max: u64) -> Arc<Throttle> {
        Arc::new(Throttle::new(max, Duration::from_secs(60)))
    }

    #[tokio::test(start_paused = true)]
    async fn the_sixth_failure_in_the_window_is_refused_until_it_passes() {
        let t = t(5);
        for _ in 0..5 {
            t.reserve("alice", A).await.unwrap().failed();
        }
        assert_eq!(
            t.reserve("alice", B).await.err(),
            Some(refused(60)),
            "per user, from any address"
        );
        assert_eq!(
            t.reserve("bob", A).await.err(),
            Some(refused(60)),
            "per address, for any user"
        );
        assert_eq!(t.check_peer(A).await, Err(refused(60)));
        assert!(t.reserve("bob", B).await.is_ok());
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(t.reserve("alice", A).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_in_flight_count_against_the_limit() {
        let t = t(5);
        let mut held: Vec<Attempt> = Vec::new();
        for _ in 0..5 {
            held.push(t.reserve("alice", A).await.unwrap());
        }
        assert!(
            t.reserve("alice", B).await.is_err(),
            "five guesses already in flight"
        );
        assert!(
            t.reserve("carol", A).await.is_err(),
            "and from this address"
        );
        for a in held {
            a.neutral();
        }
        assert!(
            t.reserve("alice", B).await.is_ok(),
            "neutral outcomes free the places"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn success_clears_the_user_but_not_the_address() {
        let t = t(2);
        t.reserve("alice", A).await.unwrap().failed();
        t.reserve("alice", A).await.unwrap().failed();
        assert!(t.reserve("alice", B).await.is_err());
        // A success from elsewhere before the limit was hit (simulated directly).
        t.settle(Some("alice"), B, Settle::Success, None);
        assert!(t.reserve("alice", B).await.is_ok());
        assert!(
            t.reserve("alice", A).await.is_err(),
            "the address keeps its failures"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_attempt_is_a_failure() {
        let t = t(1);
        drop(t.reserve("alice", A).await.unwrap());
        assert!(t.reserve("alice", B).await.is_err());
    }

    #[test]
    fn names_and_addresses_are_normalised() {
        for n in ["ALICE", "alice@EXAMPLE.COM", "EXAMPLE\\Alice", "alice"] {
            assert_eq!(user_key(n), "alice", "{n}");
        }
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(peer_key(a), peer_key(b), "one /64");
        assert_ne!(peer_key(a), peer_key(c));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(peer_key(mapped), A);
    }

    #[tokio::test(start_paused = true)]
    async fn case_and_domain_variants_share_a_budget() {
        let t = t(2);
        t.reserve("ALICE", A).await.unwrap().failed();
        t.reserve("alice@EXAMPLE.COM", B).await.unwrap().failed();
        assert!(
            t.reserve("alice", "127.0.0.3".parse().unwrap())
                .await
                .is_err()
        );
    }

    #[test]
    fn memory_is_bounded() {
        let t = Arc::new(Throttle::with_capacity(5, Duration::from_secs(60), 100));
        for i in 0..1000 {
            t.peer_failure(IpAddr::V4(std::net::Ipv4Addr::from(i as u32)));
        }
        assert_eq!(t.tracked(), 100);
    }

    #[tokio::test]
    async fn zero_disables() {
        let t = t(0);
        t.reserve("alice", A).await.unwrap().failed();
        t.peer_failure(A);
        assert!(t.reserve("alice", A).await.is_ok());
        assert!(t.check_peer(A).await.is_ok());
    }
}
