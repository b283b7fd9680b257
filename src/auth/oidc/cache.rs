//! What the daemon remembers about opaque tokens, keyed by their SHA-256 (never the
//! token itself): answers that may be reused, refusals that must not cost another IdP
//! call, and the calls in flight that identical concurrent tokens share (SPEC §9).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// A token's cache key.
pub type TokenKey = [u8; 32];

pub fn token_key(token: &str) -> TokenKey {
    Sha256::digest(token.as_bytes()).into()
}

/// How often a full cache may sweep out its lapsed entries: the sweep is O(n), so a
/// flood of distinct tokens must not make every request pay for one.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// A bounded map from token hash to a value that lapses. When full (and a sweep is
/// not due or freed nothing) new entries are not stored: the cost of that is one more
/// IdP call, never unbounded memory or O(n) work per request.
pub struct TokenCache<V> {
    inner: Mutex<Entries<V>>,
    max: usize,
}

struct Entries<V> {
    map: HashMap<TokenKey, (Instant, V)>,
    last_prune: Option<Instant>,
}

impl<V: Clone> TokenCache<V> {
    pub fn new(max: usize) -> Self {
        TokenCache {
            inner: Mutex::new(Entries {
                map: HashMap::new(),
                last_prune: None,
            }),
            max,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries<V>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &TokenKey) -> Option<V> {
        let mut e = self.lock();
        match e.map.get(key) {
            Some((until, v)) if *until > Instant::now() => Some(v.clone()),
            Some(_) => {
                e.map.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, key: TokenKey, value: V, ttl: Duration) {
        let now = Instant::now();
        let mut e = self.lock();
        if e.map.len() >= self.max && !e.map.contains_key(&key) {
            if e.last_prune.is_some_and(|at| now - at < PRUNE_EVERY) {
                return;
            }
            e.last_prune = Some(now);
            e.map.retain(|_, (until, _)| *until > now);
            if e.map.len() >= self.max {
                return;
            }
        }
        e.map.insert(key, (now + ttl, value));
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

type Cell<T> = Arc<OnceCell<T>>;

/// Calls in flight by token hash: identical tokens arriving together wait for the
/// first one's IdP call and get its outcome, so a burst of one junk token costs one
/// call. An entry lives only while someone waits on it.
pub struct Flights<T> {
    map: Mutex<HashMap<TokenKey, Cell<T>>>,
}

impl<T: Clone> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone> Flights<T> {
    /// The outcome of `call` for `key`, run once for all concurrent callers. If the
    /// caller running it is cancelled, a waiting one runs its own `call` instead.
    pub async fn run<F: Future<Output = T>>(&self, key: TokenKey, call: F) -> T {
        let cell = {
            let mut map = self.lock();
            map.entry(key).or_default().clone()
        };
        let guard = Leave {
            flights: self,
            key,
            cell: Some(cell),
        };
        let cell = guard.cell.as_ref().expect("set above");
        cell.get_or_init(|| call).await.clone()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TokenKey, Cell<T>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drops a caller's hold on a flight; the last one out removes the entry. Clones and
/// drops of the cell happen under the map's lock, so the count is exact.
struct Leave<'a, T: Clone> {
    flights: &'a Flights<T>,
    key: TokenKey,
    cell: Option<Cell<T>>,
}

impl<T: Clone> Drop for Leave<'_, T> {
    fn drop(&mut self) {
        let mut map = self.flights.lock();
        let mine = self.cell.take();
        let last = match (map.get(&self.key), &mine) {
            (Some(entry), Some(mine)) => Arc::ptr_eq(entry, mine) && Arc::strong_count(mine) == 2,
            _ => false,
        };
        drop(mine);
        if last {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn entries_lapse_and_a_full_cache_sweeps_at_most_once_a_second() {
        let c = TokenCache::new(2);
        c.insert(token_key("a"), 1, Duration::from_secs(10));
        c.insert(token_key("b"), 2, Duration::from_secs(60));
        assert_eq!(c.get(&token_key("a")), Some(1));
        c.insert(token_key("c"), 3, Duration::from_secs(60));
        assert_eq!(
            c.get(&token_key("c")),
            None,
            "full, nothing lapsed: not stored"
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(c.get(&token_key("a")), None, "lapsed");
        c.insert(token_key("c"), 3, Duration::from_secs(60));
        assert_eq!(c.get(&token_key("c")), Some(3), "room again");
        c.insert(token_key("d"), 4, Duration::from_secs(60));
        assert_eq!(c.len(), 2, "the bound holds");
    }

    #[tokio::test]
    async fn identical_concurrent_calls_share_one_run() {
        let flights: Arc<Flights<u32>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (flights, runs) = (flights.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                flights
                    .run(token_key("same"), async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        7
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 7);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(flights.is_empty(), "no entry outlives its callers");
    }

    #[tokio::test]
    async fn a_cancelled_first_caller_hands_over() {
        let flights: Arc<Flights<u32>> = Arc::default();
        let first = {
            let f = flights.clone();
            tokio::spawn(async move {
                f.run(token_key("t"), async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    1
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = {
            let f = flights.clone();
            tokio::spawn(async move { f.run(token_key("t"), async { 2 }).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        first.abort();
        assert_eq!(second.await.unwrap(), 2);
        assert!(flights.is_empty());
    }
}
