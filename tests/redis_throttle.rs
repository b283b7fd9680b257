//! SPEC §10: with the redis store the failed-attempt counters (§9) are in Redis, so
//! several daemons together allow no more guesses than one. Two `Throttle`s on one
//! real redis-server, each with its own client (connection), stand for two daemons.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use portcullis::redis_client::RedisClient;
use portcullis::throttle::{Attempt, Throttle, ThrottleError};

const MAX: u64 = 5;
const WINDOW: Duration = Duration::from_secs(60);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// One daemon's throttle on `redis`.
fn daemon(redis: &RedisServer, prefix: &str) -> Arc<Throttle> {
    let client = RedisClient::open(&redis.url(), None, prefix).expect("redis client");
    Arc::new(Throttle::shared(MAX, WINDOW, client))
}

/// Two daemons sharing `redis`.
fn daemons(redis: &RedisServer, prefix: &str) -> [Arc<Throttle>; 2] {
    [daemon(redis, prefix), daemon(redis, prefix)]
}

fn retry_after(r: Result<Attempt, ThrottleError>) -> u64 {
    match r {
        Err(ThrottleError::Refused { retry_after }) => retry_after,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, the attempt was let through"),
    }
}

/// Settling is written by a task of its own: wait (briefly) until `cond` holds.
async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !cond().await {
        assert!(Instant::now() < deadline, "not within 3 s: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn members(redis: &RedisServer, key: &str) -> Vec<String> {
    redis
        .cli(&["ZRANGE", key, "0", "-1"])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn failures(redis: &RedisServer, key: &str) -> usize {
    members(redis, key)
        .iter()
        .filter(|m| m.starts_with("f:"))
        .count()
}

#[tokio::test]
async fn guesses_on_two_daemons_share_one_budget() {
    let redis = RedisServer::start();
    let t = daemons(&redis, "portcullis:");
    let a = ip("192.0.2.1");
    for i in 0..MAX as usize {
        t[i % 2]
            .reserve("alice", a)
            .await
            .unwrap_or_else(|e| panic!("guess {i}: {e}"))
            .failed();
    }
    for (n, t) in t.iter().enumerate() {
        let s = retry_after(t.reserve("alice", a).await);
        assert!((1..=60).contains(&s), "daemon {n}: retry_after {s}");
        let s = retry_after(t.reserve("ALICE@example.com", ip("192.0.2.2")).await);
        assert!(
            (1..=60).contains(&s),
            "daemon {n}, same user elsewhere: {s}"
        );
    }
    eventually("five failures recorded", async || {
        failures(&redis, "portcullis:fail:u:alice") == MAX as usize
    })
    .await;
    assert!(
        members(&redis, "portcullis:fail:u:alice")
            .iter()
            .all(|m| m.starts_with("f:")),
        "no reservation left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_on_two_daemons_get_exactly_max_places() {
    let redis = RedisServer::start();
    let t = daemons(&redis, "portcullis:");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64u32 {
        let t = t[i as usize % 2].clone();
        // One user from 64 addresses: only the user's budget limits them.
        let peer = IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]);
        tasks.spawn(async move { t.reserve("alice", peer).await });
    }
    let (mut held, mut refused) = (Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(attempt) => held.push(attempt),
            Err(ThrottleError::Refused { .. }) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((held.len(), refused), (MAX as usize, 64 - MAX as usize));
    assert_eq!(
        redis.cli(&["ZCARD", "portcullis:fail:u:alice"]),
        MAX.to_string(),
        "one reservation per place"
    );
    // Still nothing more on either daemon while they are in flight.
    for t in &t {
        retry_after(t.reserve("alice", ip("10.1.0.1")).await);
    }
}

#[tokio::test]
async fn a_success_clears_the_user_but_not_the_address() {
    let redis = RedisServer::start();
    let t = daemons(&redis, "portcullis:");
    let (a, b) = (ip("192.0.2.1"), ip("198.51.100.1"));
    for i in 0..MAX as usize - 1 {
        t[i % 2].reserve("alice", a).await.unwrap().failed();
    }
    // Each daemon writes outcomes on its own connection: let the failures land first
    // (one landing after the success would rightly stay counted).
    eventually("four failures recorded", async || {
        failures(&redis, "portcullis:fail:u:alice") == MAX as usize - 1
    })
    .await;
    t[0].reserve("alice", a).await.unwrap().succeeded();
    eventually("the user's failures forgotten", async || {
        redis.cli(&["EXISTS", "portcullis:fail:u:alice"]) == "0"
    })
    .await;
    assert_eq!(
        failures(&redis, "portcullis:fail:a:192.0.2.1"),
        MAX as usize - 1,
        "the address keeps its failures"
    );
    // The address has one guess left, on either daemon; then it is refused.
    t[1].reserve("bob", a).await.unwrap().failed();
    for t in &t {
        retry_after(t.reserve("carol", a).await);
    }
    // Alice's own budget is whole again from elsewhere.
    for _ in 0..MAX {
        t[1].reserve("alice", b).await.unwrap().neutral();
    }
}

#[tokio::test]
async fn the_address_limit_spans_users_mechanisms_and_daemons() {
    let redis = RedisServer::start();
    let t = daemons(&redis, "portcullis:");
    let (a, b) = (ip("192.0.2.7"), ip("192.0.2.8"));
    // Three wrong passwords for three names, two failed logins of other mechanisms.
    for i in 0..3usize {
        t[i % 2]
            .reserve(&format!("user{i}"), a)
            .await
            .unwrap()
            .failed();
    }
    t[0].peer_failure(a);
    t[1].peer_failure(a);
    for (n, t) in t.iter().enumerate() {
        eventually(&format!("daemon {n} refuses the address"), async || {
            matches!(
                t.check_peer(a).await,
                Err(ThrottleError::Refused {
                    retry_after: 1..=60
                })
            )
        })
        .await;
        retry_after(t.reserve("someone", a).await);
        assert_eq!(t.check_peer(b).await, Ok(()), "another address is not held");
        t.reserve("someone", b).await.unwrap().neutral();
    }
    assert_eq!(
        failures(&redis, "portcullis:fail:a:192.0.2.7"),
        MAX as usize
    );
}

#[tokio::test]
async fn redis_down_is_unavailable_and_recovers_without_a_restart() {
    let mut redis = RedisServer::start();
    let t = daemon(&redis, "portcullis:");
    let a = ip("192.0.2.1");
    t.reserve("alice", a).await.unwrap().neutral();
    redis.stop();
    for round in 0..2 {
        let started = Instant::now();
        match t.reserve("alice", a).await {
            Err(ThrottleError::Unavailable(_)) => {}
            Err(e) => panic!("round {round}: expected unavailable, got {e}"),
            Ok(_) => panic!("round {round}: a guess let through while Redis is down"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "round {round}: took {:?}",
            started.elapsed()
        );
        assert!(
            matches!(t.check_peer(a).await, Err(ThrottleError::Unavailable(_))),
            "round {round}: check_peer"
        );
    }
    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match t.reserve("alice", a).await {
            Ok(attempt) => {
                attempt.failed();
                break;
            }
            Err(ThrottleError::Unavailable(e)) if Instant::now() < deadline => {
                eprintln!("not yet back: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no recovery within 5 s of Redis coming back: {e}"),
        }
    }
    assert_eq!(t.check_peer(a).await, Ok(()));
}

#[tokio::test]
async fn keys_carry_the_prefix_and_expire_within_the_window() {
    let redis = RedisServer::start();
    let t = daemon(&redis, "pc-test:");
    // Two hosts of one /64, one user under two spellings.
    t.reserve("EXAMPLE\\Alice", ip("2001:db8:1:2:aaaa::1"))
        .await
        .unwrap()
        .failed();
    let user = "pc-test:fail:u:alice";
    let addr = "pc-test:fail:a:2001:db8:1:2::";
    eventually("the first failure recorded", async || {
        failures(&redis, user) == 1 && failures(&redis, addr) == 1
    })
    .await;
    let held = t
        .reserve("alice@EXAMPLE.COM", ip("2001:db8:1:2:bbbb::9"))
        .await
        .unwrap();
    let mut keys: Vec<String> = redis.cli(&["KEYS", "*"]).lines().map(Into::into).collect();
    keys.sort();
    assert_eq!(keys, [addr, user]);
    for key in [user, addr] {
        let ms: i64 = redis.cli(&["PTTL", key]).parse().unwrap();
        assert!(
            ms > 0 && ms <= WINDOW.as_millis() as i64,
            "{key}: PTTL {ms}"
        );
        assert_eq!(
            members(&redis, key)
                .iter()
                .filter(|m| m.starts_with("r:"))
                .count(),
            1,
            "{key}: one reservation in flight"
        );
    }
    held.neutral();
    eventually("the neutral attempt returned", async || {
        members(&redis, user).len() == 1
    })
    .await;
    for key in [user, addr] {
        let ms: i64 = redis.cli(&["PTTL", key]).parse().unwrap();
        assert!(
            ms > 0 && ms <= WINDOW.as_millis() as i64,
            "{key}: PTTL {ms}"
        );
    }
}
