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

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use tokio::time::Instant;

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
    keys: Mutex<LruCache<Key, Entry>>,
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
    pub fn new(max: u64, window: Duration) -> Self {
        Self::with_capacity(max, window, CAPACITY)
    }

    fn with_capacity(max: u64, window: Duration, capacity: usize) -> Self {
        Throttle {
            max: max as usize,
            window,
            keys: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity.max(2)).expect("at least 2"),
            )),
        }
    }

    pub fn enabled(&self) -> bool {
        self.max > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<Key, Entry>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Reserve a place for a password attempt by `user` from `peer`; `Err(seconds)`
    /// when the user or the address has used up its failures (reservations included).
    pub fn reserve(self: &Arc<Self>, user: &str, peer: IpAddr) -> Result<Attempt, u64> {
        let attempt = Attempt {
            throttle: self.clone(),
            user: Some(user_key(user)),
            peer,
            settled: !self.enabled(),
        };
        if !self.enabled() {
            return Ok(attempt);
        }
        let now = Instant::now();
        let mut map = self.lock();
        let mut wait = Duration::ZERO;
        for key in Self::keys(Some(user), peer) {
            wait = wait.max(self.wait(&mut map, &key, now, true));
        }
        if !wait.is_zero() {
            return Err(Self::retry_after(wait));
        }
        for key in Self::keys(Some(user), peer) {
            map.get_or_insert_mut(key, Entry::default).in_flight += 1;
        }
        Ok(attempt)
    }

    /// For mechanisms whose failures only count against the address (certificate,
    /// Kerberos, OIDC): `Err(seconds)` when the address has used up its failures.
    pub fn check_peer(&self, peer: IpAddr) -> Result<(), u64> {
        if !self.enabled() {
            return Ok(());
        }
        let wait = self.wait(
            &mut self.lock(),
            &Key::Peer(peer_key(peer)),
            Instant::now(),
            false,
        );
        if wait.is_zero() {
            Ok(())
        } else {
            Err(Self::retry_after(wait))
        }
    }

    /// A failed login of a mechanism without a reservation (counts for the address).
    pub fn peer_failure(&self, peer: IpAddr) {
        if self.enabled() {
            self.settle(None, peer, Settle::Failure, false);
        }
    }

    fn settle(&self, user: Option<&str>, peer: IpAddr, how: Settle, reserved: bool) {
        let now = Instant::now();
        let mut map = self.lock();
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
        self.lock().len()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
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
    settled: bool,
}

impl Attempt {
    fn finish(mut self, how: Settle) {
        self.settled = true;
        if self.throttle.enabled() {
            self.throttle
                .settle(self.user.as_deref(), self.peer, how, true);
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
        if !self.settled {
            self.settled = true;
            if self.throttle.enabled() {
                self.throttle
                    .settle(self.user.as_deref(), self.peer, Settle::Failure, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    fn t(max: u64) -> Arc<Throttle> {
        Arc::new(Throttle::new(max, Duration::from_secs(60)))
    }

    #[tokio::test(start_paused = true)]
    async fn the_sixth_failure_in_the_window_is_refused_until_it_passes() {
        let t = t(5);
        for _ in 0..5 {
            t.reserve("alice", A).unwrap().failed();
        }
        assert_eq!(
            t.reserve("alice", B).err(),
            Some(60),
            "per user, from any address"
        );
        assert_eq!(
            t.reserve("bob", A).err(),
            Some(60),
            "per address, for any user"
        );
        assert_eq!(t.check_peer(A), Err(60));
        assert!(t.reserve("bob", B).is_ok());
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(t.reserve("alice", A).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_in_flight_count_against_the_limit() {
        let t = t(5);
        let held: Vec<Attempt> = (0..5).map(|_| t.reserve("alice", A).unwrap()).collect();
        assert!(
            t.reserve("alice", B).is_err(),
            "five guesses already in flight"
        );
        assert!(t.reserve("carol", A).is_err(), "and from this address");
        for a in held {
            a.neutral();
        }
        assert!(
            t.reserve("alice", B).is_ok(),
            "neutral outcomes free the places"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn success_clears_the_user_but_not_the_address() {
        let t = t(2);
        t.reserve("alice", A).unwrap().failed();
        t.reserve("alice", A).unwrap().failed();
        assert!(t.reserve("alice", B).is_err());
        // A success from elsewhere before the limit was hit (simulated directly).
        t.settle(Some("alice"), B, Settle::Success, false);
        assert!(t.reserve("alice", B).is_ok());
        assert!(
            t.reserve("alice", A).is_err(),
            "the address keeps its failures"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_attempt_is_a_failure() {
        let t = t(1);
        drop(t.reserve("alice", A).unwrap());
        assert!(t.reserve("alice", B).is_err());
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
        t.reserve("ALICE", A).unwrap().failed();
        t.reserve("alice@EXAMPLE.COM", B).unwrap().failed();
        assert!(t.reserve("alice", "127.0.0.3".parse().unwrap()).is_err());
    }

    #[test]
    fn memory_is_bounded() {
        let t = Arc::new(Throttle::with_capacity(5, Duration::from_secs(60), 100));
        for i in 0..1000 {
            t.peer_failure(IpAddr::V4(std::net::Ipv4Addr::from(i as u32)));
        }
        assert_eq!(t.tracked(), 100);
    }

    #[test]
    fn zero_disables() {
        let t = t(0);
        t.reserve("alice", A).unwrap().failed();
        t.peer_failure(A);
        assert!(t.reserve("alice", A).is_ok());
        assert!(t.check_peer(A).is_ok());
    }
}
