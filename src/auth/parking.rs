//! Where PAM conversations wait for the client's next answer (SPEC §9): at most
//! `security.pam_max_conversations` at once, and at most [`PER_ADDRESS`] per client
//! address, so nobody can park the PAM pool's threads on prompts they never answer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::throttle::peer_key;

/// Conversations one client address (IPv6: its /64) may have waiting at once.
pub const PER_ADDRESS: usize = 2;

pub struct Parking {
    max: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    total: usize,
    by_peer: HashMap<IpAddr, usize>,
}

/// One waiting conversation's place; given back when dropped.
pub struct Slot {
    parking: Arc<Parking>,
    peer: IpAddr,
}

impl Parking {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Parking {
            max,
            state: Mutex::new(State::default()),
        })
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
        if s.total >= self.max || mine >= PER_ADDRESS {
            return None;
        }
        s.total += 1;
        *s.by_peer.entry(peer).or_default() += 1;
        Some(Slot {
            parking: self.clone(),
            peer,
        })
    }

    pub fn waiting(&self) -> usize {
        self.lock().total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.parking.lock();
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
        let p = Parking::new(3);
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
        assert_eq!(p.waiting(), 3);
    }
}
