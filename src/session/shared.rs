//! The `redis` session store (SPEC §10): several daemons behind a load balancer
//! share one Redis, so a session made on one is valid on every other and a logout
//! on one ends it everywhere.
//!
//! Keys (all under `security.session_redis_prefix`): `s:<token sha-256 hex>` holds
//! the session as JSON (the file store's row format) and expires with the key's
//! TTL: at the session's end, or earlier at its idle deadline; `u:<user>` is a
//! sorted set of the user's sessions by creation time (for the per-user bound and
//! `revoke --user`); `all` is a sorted set of every session by expiry (for
//! `max_sessions` and the gauge). Every write that touches more than one key is one
//! Lua script, so two daemons never see half a login or half a logout.
//!
//! Checks are cached in this process for at most [`CACHE_FOR`], and only while a
//! subscription to the `revoked` channel is up: every logout, revoke or eviction
//! publishes there and every daemon drops the entry at once. If the subscription
//! drops (Redis restarted or unreachable), the cache is emptied and bypassed until
//! it is back, so a revoked session is never answered from a stale cache and a dead
//! Redis gives `503`, never a cached "valid". A lost message can leave an entry at
//! most [`CACHE_FOR`] old, inside the "refused everywhere within 1 s" of SPEC §10.
//!
//! The idle deadline is pushed forward in Redis whenever a check reaches it, i.e.
//! at most [`CACHE_FOR`] late. Durability of a logout is Redis's own: the `DEL` is
//! acknowledged before the `204`; run Redis with `appendonly yes` if a logout must
//! also survive a Redis crash.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::{AsyncCommands, Script};

use super::file::Stored;
use super::{
    Created, Revoke, Session, SessionError, SessionInfo, SessionLimits, SessionRecord,
    SessionStore, TokenHash, token,
};
use crate::redis_client::{RedisClient, Unavailable};

/// How long a check answered by Redis may be answered again from memory.
pub const CACHE_FOR: Duration = Duration::from_millis(1000);
/// Sessions cached at most; beyond it the cache starts over (it refills in [`CACHE_FOR`]).
const CACHE_MAX: usize = 100_000;
/// How often the gauge's count of live sessions is read from Redis.
const COUNT_EVERY: Duration = Duration::from_secs(5);
/// Pause before subscribing again after the subscription dropped.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(250);

/// Create: refuse at `max_sessions`, store the session, evict the user's oldest
/// live sessions beyond `max_sessions_per_user`.
/// KEYS: session, user index, all. ARGV: value, end (ms), first deadline (ms),
/// now (ms), per-user bound, total bound, hash hex, key prefix, channel.
/// Returns the evicted hashes, or nil when the store is full.
const CREATE: &str = r#"
local prefix = ARGV[8]
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[4])
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[6]) then
  -- Sessions ended by their idle deadline are still counted: drop a few.
  for _, m in ipairs(redis.call('ZRANGE', KEYS[3], 0, 999)) do
    if redis.call('EXISTS', prefix .. 's:' .. m) == 0 then redis.call('ZREM', KEYS[3], m) end
  end
  if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[6]) then return false end
end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[7])
-- Over the bound: drop the entries of ended sessions (logged out, idle), then evict
-- the oldest live ones. This scan only runs for a user at the bound, and leaves the
-- index no longer than the bound.
local evicted = {}
if redis.call('ZCARD', KEYS[2]) > tonumber(ARGV[5]) then
  for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    if redis.call('EXISTS', prefix .. 's:' .. m) == 0 then
      redis.call('ZREM', KEYS[2], m)
      redis.call('ZREM', KEYS[3], m)
    end
  end
  while redis.call('ZCARD', KEYS[2]) > tonumber(ARGV[5]) do
    local oldest = redis.call('ZPOPMIN', KEYS[2])[1]
    redis.call('DEL', prefix .. 's:' .. oldest)
    redis.call('ZREM', KEYS[3], oldest)
    redis.call('PUBLISH', ARGV[9], 'h:' .. oldest)
    table.insert(evicted, oldest)
  end
end
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) - tonumber(ARGV[4]) then
  redis.call('PEXPIREAT', KEYS[2], ARGV[2])
end
return evicted
"#;

/// Check: the session, its idle deadline pushed to min(end, now + idle).
/// KEYS: session. ARGV: idle (ms, 0 = off), now (ms).
const GET: &str = r#"
local v = redis.call('GET', KEYS[1])
if v and tonumber(ARGV[1]) > 0 then
  local e = string.match(v, '"expires":(%d+)')
  local t = tonumber(ARGV[2]) + tonumber(ARGV[1])
  if e and tonumber(e) * 1000 < t then t = tonumber(e) * 1000 end
  redis.call('PEXPIREAT', KEYS[1], t)
end
return v
"#;

/// Logout. KEYS: session, all. ARGV: hash hex, channel. Returns 1 if it existed.
const REVOKE: &str = r#"
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], 'h:' .. ARGV[1])
return n
"#;

/// Every session of a user. KEYS: user index, all. ARGV: prefix, user, channel.
const REVOKE_USER: &str = r#"
local n = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  n = n + redis.call('DEL', ARGV[1] .. 's:' .. m)
  redis.call('ZREM', KEYS[2], m)
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[3], 'u:' .. ARGV[2])
return n
"#;

struct Cache {
    /// Whether the `revoked` subscription is up; no caching without it.
    subscribed: bool,
    /// Bumped by every invalidation: a fetch that started before one is not cached.
    epoch: u64,
    entries: HashMap<TokenHash, (Session, Instant)>,
}

struct Scripts {
    create: Script,
    get: Script,
    revoke: Script,
    revoke_user: Script,
}

struct Inner {
    redis: RedisClient,
    idle: Option<Duration>,
    limits: SessionLimits,
    cache: Mutex<Cache>,
    count: AtomicUsize,
    scripts: Scripts,
    channel: String,
}

pub struct RedisStore {
    inner: Arc<Inner>,
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn from_hex(s: &str) -> Option<TokenHash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(TokenHash(out))
}

/// A `SCAN MATCH` pattern matching `literal` exactly (the prefix is the
/// administrator's and may hold glob characters).
fn glob_escape(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn unavailable(e: impl Into<Unavailable>) -> SessionError {
    let e: Unavailable = e.into();
    tracing::warn!(error = %e, "session store unavailable");
    SessionError::Unavailable
}

fn decode(value: &[u8]) -> Option<(Arc<SessionInfo>, SystemTime)> {
    serde_json::from_slice::<Stored>(value).ok()?.into_session()
}

impl RedisStore {
    /// The store and its background tasks (subscription, gauge); must be called
    /// inside the tokio runtime. Connects lazily: a daemon whose Redis is down
    /// starts and answers `503` until it is up.
    pub fn new(redis: RedisClient, idle: Option<Duration>, limits: SessionLimits) -> Self {
        let channel = redis.key("revoked");
        let inner = Arc::new(Inner {
            redis,
            idle: idle.filter(|d| !d.is_zero()),
            limits,
            cache: Mutex::new(Cache {
                subscribed: false,
                epoch: 0,
                entries: HashMap::new(),
            }),
            count: AtomicUsize::new(0),
            scripts: Scripts {
                create: Script::new(CREATE),
                get: Script::new(GET),
                revoke: Script::new(REVOKE),
                revoke_user: Script::new(REVOKE_USER),
            },
            channel,
        });
        tokio::spawn(subscribe(Arc::downgrade(&inner)));
        tokio::spawn(count(Arc::downgrade(&inner)));
        RedisStore { inner }
    }
}

impl Inner {
    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A message of the `revoked` channel: `h:<hash hex>`, `u:<user>` or `*`.
    fn invalidate(&self, message: &str) {
        let mut cache = self.cache();
        cache.epoch += 1;
        if let Some(h) = message.strip_prefix("h:") {
            if let Some(hash) = from_hex(h) {
                cache.entries.remove(&hash);
            }
        } else if let Some(user) = message.strip_prefix("u:") {
            cache
                .entries
                .retain(|_, (s, _)| s.info.user.as_ref() != user);
        } else {
            cache.entries.clear();
        }
    }

    fn set_subscribed(&self, up: bool) {
        let mut cache = self.cache();
        cache.subscribed = up;
        cache.epoch += 1;
        cache.entries.clear();
    }

    fn key_of(&self, hash: &TokenHash) -> String {
        let mut k = self.redis.key("s:");
        k.push_str(&hash.hex());
        k
    }

    /// Every session key, in batches (an operator's scan, not a request's).
    async fn scan_sessions(&self) -> Result<Vec<String>, SessionError> {
        let mut conn = self.redis.conn();
        let pattern = format!("{}s:*", glob_escape(self.redis.prefix()));
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// The sessions stored under `keys` (those still there).
    async fn fetch(&self, keys: &[String]) -> Result<Vec<SessionRecord>, SessionError> {
        let mut out = Vec::new();
        let mut conn = self.redis.conn();
        let strip = self.redis.key("s:");
        for chunk in keys.chunks(500) {
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(chunk)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            for (k, v) in chunk.iter().zip(values) {
                let (Some(v), Some(hash)) = (v, k.strip_prefix(&strip).and_then(from_hex)) else {
                    continue;
                };
                if let Some((info, expires_at)) = decode(&v) {
                    out.push(SessionRecord {
                        id: hash.short_id(),
                        info,
                        expires_at,
                    });
                }
            }
        }
        Ok(out)
    }

    async fn revoke_keys(&self, hashes: &[String]) -> Result<usize, SessionError> {
        let mut n = 0;
        let all = self.redis.key("all");
        for h in hashes {
            let mut conn = self.redis.conn();
            let removed: i64 = self
                .scripts
                .revoke
                .key(self.redis.key(&format!("s:{h}")))
                .key(&all)
                .arg(h)
                .arg(&self.channel)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            n += removed as usize;
        }
        Ok(n)
    }
}

/// Keep the `revoked` subscription up; caching is on only while it is.
async fn subscribe(weak: Weak<Inner>) {
    let mut failing_since: Option<Instant> = None;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let attempt = async {
            let mut ps = inner.redis.pubsub().await?;
            ps.subscribe(&inner.channel)
                .await
                .map_err(Unavailable::from)?;
            Ok::<_, Unavailable>(ps)
        }
        .await;
        match attempt {
            Ok(ps) => {
                if failing_since.take().is_some() {
                    tracing::info!("session store (Redis) reachable again");
                }
                inner.set_subscribed(true);
                drop(inner);
                let mut messages = ps.into_on_message();
                while let Some(msg) = messages.next().await {
                    let Some(inner) = weak.upgrade() else { return };
                    if let Ok(text) = msg.get_payload::<String>() {
                        inner.invalidate(&text);
                    }
                }
                let Some(inner) = weak.upgrade() else { return };
                inner.set_subscribed(false);
                tracing::warn!(
                    "lost the session store's (Redis) revocation channel; checks go to Redis until it is back"
                );
                failing_since = Some(Instant::now());
            }
            Err(e) => {
                inner.set_subscribed(false);
                if failing_since.is_none() {
                    tracing::warn!(error = %e, "cannot subscribe to the session store's (Redis) revocation channel; retrying");
                    failing_since = Some(Instant::now());
                }
            }
        }
        tokio::time::sleep(RESUBSCRIBE_AFTER).await;
    }
}

/// Refresh the gauge's count of live sessions.
async fn count(weak: Weak<Inner>) {
    loop {
        {
            let Some(inner) = weak.upgrade() else { return };
            let mut conn = inner.redis.conn();
            let now = millis(SystemTime::now());
            let n: Result<usize, _> = conn
                .zcount(inner.redis.key("all"), format!("({now}"), "+inf")
                .await;
            if let Ok(n) = n {
                inner.count.store(n, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(COUNT_EVERY).await;
    }
}

#[async_trait::async_trait]
impl SessionStore for RedisStore {
    async fn create(&self, info: Arc<SessionInfo>, ttl: Duration) -> Result<Created, SessionError> {
        let inner = &self.inner;
        let token = token::generate();
        let now = SystemTime::now();
        let expires_at = now + ttl;
        let end = millis(expires_at);
        let first_deadline = match inner.idle {
            Some(idle) => end.min(millis(now + idle)),
            None => end,
        };
        let value =
            serde_json::to_string(&Stored::new(&info, expires_at)).expect("a session serialises");
        let h = token.hash.hex();
        let mut conn = inner.redis.conn();
        let evicted: Option<Vec<String>> = inner
            .scripts
            .create
            .key(inner.key_of(&token.hash))
            .key(inner.redis.key(&format!("u:{}", info.user)))
            .key(inner.redis.key("all"))
            .arg(value)
            .arg(end)
            .arg(first_deadline)
            .arg(millis(now))
            .arg(inner.limits.per_user.min(i64::MAX as usize))
            .arg(inner.limits.total.min(i64::MAX as usize))
            .arg(&h)
            .arg(inner.redis.prefix())
            .arg(&inner.channel)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let Some(evicted) = evicted else {
            return Err(SessionError::Full);
        };
        Ok(Created {
            session: Session { info, expires_at },
            token,
            evicted: evicted.iter().filter_map(|h| from_hex(h)).collect(),
        })
    }

    async fn get(&self, hash: &TokenHash) -> Result<Option<Session>, SessionError> {
        let inner = &self.inner;
        let epoch = {
            let cache = inner.cache();
            if cache.subscribed
                && let Some((s, at)) = cache.entries.get(hash)
                && at.elapsed() < CACHE_FOR
                && s.expires_at > SystemTime::now()
            {
                return Ok(Some(s.clone()));
            }
            cache.epoch
        };
        let mut conn = inner.redis.conn();
        let value: Option<Vec<u8>> = match inner.idle {
            // The idle deadline moves with each check: read and extend in one script.
            Some(idle) => inner
                .scripts
                .get
                .key(inner.key_of(hash))
                .arg(idle.as_millis() as u64)
                .arg(millis(SystemTime::now()))
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?,
            None => conn.get(inner.key_of(hash)).await.map_err(unavailable)?,
        };
        let Some((info, expires_at)) = value.as_deref().and_then(decode) else {
            return Ok(None);
        };
        if expires_at <= SystemTime::now() {
            return Ok(None);
        }
        let session = Session { info, expires_at };
        let mut cache = inner.cache();
        if cache.subscribed && cache.epoch == epoch {
            if cache.entries.len() >= CACHE_MAX {
                cache.entries.clear();
            }
            cache
                .entries
                .insert(*hash, (session.clone(), Instant::now()));
        }
        Ok(Some(session))
    }

    async fn revoke(&self, hash: &TokenHash) -> Result<bool, SessionError> {
        // Dropped here first: this daemon must not answer from its cache even if
        // its own message comes back late.
        self.inner.invalidate(&format!("h:{}", hash.hex()));
        Ok(self.inner.revoke_keys(&[hash.hex()]).await? > 0)
    }

    fn len(&self) -> usize {
        self.inner.count.load(Ordering::Relaxed)
    }

    async fn list(&self, user: Option<&str>) -> Result<Vec<SessionRecord>, SessionError> {
        let inner = &self.inner;
        let keys = match user {
            Some(u) => {
                let mut conn = inner.redis.conn();
                let members: Vec<String> = conn
                    .zrange(inner.redis.key(&format!("u:{u}")), 0, -1)
                    .await
                    .map_err(unavailable)?;
                members
                    .iter()
                    .map(|m| inner.redis.key(&format!("s:{m}")))
                    .collect()
            }
            None => inner.scan_sessions().await?,
        };
        let mut out = inner.fetch(&keys).await?;
        out.sort_by_key(|r| r.info.created_at);
        Ok(out)
    }

    async fn revoke_where(&self, which: &Revoke) -> Result<usize, SessionError> {
        let inner = &self.inner;
        match which {
            Revoke::User(user) => {
                inner.invalidate(&format!("u:{user}"));
                let mut conn = inner.redis.conn();
                let n: i64 = inner
                    .scripts
                    .revoke_user
                    .key(inner.redis.key(&format!("u:{user}")))
                    .key(inner.redis.key("all"))
                    .arg(inner.redis.prefix())
                    .arg(user)
                    .arg(&inner.channel)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                Ok(n as usize)
            }
            Revoke::Id(id) => {
                let id = id.to_ascii_lowercase();
                if id.len() < 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Ok(0);
                }
                let strip = inner.redis.key("s:");
                let hashes: Vec<String> = inner
                    .scan_sessions()
                    .await?
                    .iter()
                    .filter_map(|k| k.strip_prefix(&strip))
                    .filter(|h| h.starts_with(&id))
                    .map(str::to_string)
                    .collect();
                inner.revoke_keys(&hashes).await
            }
            Revoke::All => {
                inner.invalidate("*");
                let strip = inner.redis.key("s:");
                let hashes: Vec<String> = inner
                    .scan_sessions()
                    .await?
                    .iter()
                    .filter_map(|k| k.strip_prefix(&strip).map(str::to_string))
                    .collect();
                let n = inner.revoke_keys(&hashes).await?;
                let mut conn = inner.redis.conn();
                let _: () = conn
                    .publish(&inner.channel, "*")
                    .await
                    .map_err(unavailable)?;
                Ok(n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_through_hex() {
        let h = token::generate().hash;
        assert_eq!(from_hex(&h.hex()), Some(h));
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn the_prefix_is_matched_literally_in_scans() {
        assert_eq!(glob_escape("pc:"), "pc:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
