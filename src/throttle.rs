//! Failed-login throttling per user name and per peer address (SPEC §3:
//! `security.max_failed_attempts` within `security.failed_attempt_window`).
//!
//! Counted by the name as typed, whether or not such a user exists, so a 429 tells an
//! attacker nothing about which accounts are real. A success clears the user's count
//! (not the address's: one right password must not buy another thousand guesses).
//! This complements `pam_faillock`, which locks accounts; this bounds guessing before
//! PAM is even asked.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Peer(IpAddr),
}

pub struct Throttle {
    max: usize,
    window: Duration,
    failures: Mutex<HashMap<Key, VecDeque<Instant>>>,
}

/// Above this many tracked keys, stale ones are pruned before adding more.
const PRUNE_AT: usize = 65_536;

impl Throttle {
    pub fn new(max: u64, window: Duration) -> Self {
        Throttle {
            max: max as usize,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, VecDeque<Instant>>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err(seconds)` when the user or the address has used up its failures.
    pub fn check(&self, user: &str, peer: IpAddr) -> Result<(), u64> {
        if self.max == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let map = self.lock();
        let mut wait = Duration::ZERO;
        for key in [Key::User(user.to_string()), Key::Peer(peer)] {
            if let Some(times) = map.get(&key) {
                let recent: Vec<&Instant> = times
                    .iter()
                    .filter(|t| now.duration_since(**t) < self.window)
                    .collect();
                if recent.len() >= self.max {
                    let oldest = recent[recent.len() - self.max];
                    wait = wait.max(self.window - now.duration_since(*oldest));
                }
            }
        }
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait.as_millis().div_ceil(1000).max(1) as u64)
        }
    }

    pub fn failure(&self, user: &str, peer: IpAddr) {
        if self.max == 0 {
            return;
        }
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= PRUNE_AT {
            let window = self.window;
            map.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < window)
            });
        }
        for key in [Key::User(user.to_string()), Key::Peer(peer)] {
            let times = map.entry(key).or_default();
            times.push_back(now);
            while times.len() > self.max {
                times.pop_front();
            }
        }
    }

    pub fn success(&self, user: &str) {
        self.lock().remove(&Key::User(user.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[tokio::test(start_paused = true)]
    async fn the_sixth_failure_in_the_window_is_refused_until_it_passes() {
        let t = Throttle::new(5, Duration::from_secs(60));
        for _ in 0..5 {
            assert!(t.check("alice", A).is_ok());
            t.failure("alice", A);
        }
        assert_eq!(t.check("alice", B), Err(60), "per user, from any address");
        assert_eq!(t.check("bob", A), Err(60), "per address, for any user");
        assert!(t.check("bob", B).is_ok());
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(t.check("alice", A).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn success_clears_the_user_but_not_the_address() {
        let t = Throttle::new(2, Duration::from_secs(60));
        t.failure("alice", A);
        t.failure("alice", A);
        t.success("alice");
        assert!(t.check("alice", B).is_ok());
        assert!(t.check("alice", A).is_err());
    }

    #[test]
    fn zero_disables() {
        let t = Throttle::new(0, Duration::from_secs(60));
        t.failure("alice", A);
        assert!(t.check("alice", A).is_ok());
    }
}
