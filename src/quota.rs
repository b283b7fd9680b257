//! Counted places per client address with a global bound (SPEC §9): open
//! connections (`system.max_connections_per_address`) and PAM conversations waiting
//! for an answer (`security.pam_max_conversations`, 2 per address), so one client
//! cannot take what everybody shares. Addresses are keyed like the throttle's: IPv4,
//! or the IPv6 /64.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::throttle::peer_key;

pub struct Quota {
    total: usize,
    per_address: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    total: usize,
    by_peer: HashMap<IpAddr, usize>,
}

/// One taken place; given back when dropped.
pub struct Slot {
    quota: Arc<Quota>,
    peer: IpAddr,
}

impl Quota {
    pub fn new(total: usize, per_address: usize) -> Arc<Self> {
        Arc::new(Quota {
            total,
            per_address,
            state: Mutex::new(State::default()),
        })
    }

    pub fn per_address(&self) -> usize {
        self.per_address
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a conversation from `peer`, or `None` when the daemon or the
    /// address has no room.
    pub fn take(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let peer = peer_key(peer);
        let mut s = self.lock();
        let mine = s.by_peer.get(&peer).copied().unwrap_or(0);
        if s.total >= self.total || mine >= self.per_address {
            return None;
        }
        s.total += 1;
        *s.by_peer.entry(peer).or_default() += 1;
        Some(Slot {
            quota: self.clone(),
            peer,
        })
    }

    pub fn taken(&self) -> usize {
        self.lock().total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.quota.lock();
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                s.by_peer.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_per_address_and_a_global_bound() {
        let p = Quota::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let s1 = p.take(a).unwrap();
        let _s2 = p.take(a).unwrap();
        assert!(p.take(a).is_none(), "third from one address");
        let _s3 = p.take(b).unwrap();
        assert!(
            p.take("127.0.0.3".parse().unwrap()).is_none(),
            "global bound"
        );
        drop(s1);
        let again = p.take(a);
        assert!(again.is_some(), "a returned place can be taken again");
        assert_eq!(p.taken(), 3);
    }
}
