//! SPEC §10, `security.session_store = redis`: several daemons on one real Redis
//! (`redis-server` from Debian, one per test, stopped by pid).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::*;
use serde_json::Value;

/// A daemon of its own (state directory, certificates) on the shared Redis.
fn daemon(dir: &std::path::Path, redis: &RedisServer, extra: &[&str]) -> Daemon {
    let mut defines = redis.defines("pctest:");
    defines.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = defines.iter().map(String::as_str).collect();
    let d = Daemon::start(dir, &refs);
    d.dev_certs(&["pcalice", "pcbob"]);
    d
}

/// Poll `GET /v1/session` on `d` until it answers `status`; how long it took.
async fn until_status(d: &Daemon, token: &str, status: u16, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let r = get_session(&d.client(None), token).await;
        if r.status == status {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "still {} after {limit:?} (waiting for {status}): {:?}",
            r.status,
            r.json()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_login_on_one_daemon_is_valid_on_another_and_a_logout_anywhere_ends_it_everywhere() {
    let redis = RedisServer::start();
    let (da, db) = (tempdir(), tempdir());
    let a = daemon(da.path(), &redis, &[]);
    let b = daemon(db.path(), &redis, &[]);

    let token = a.cert_session("pcalice").await;
    let on_b = get_session(&b.client(None), &token).await;
    assert_eq!(on_b.status, 200, "{:?}", on_b.json());
    assert_eq!(on_b.json()["user"], "pcalice");
    assert_eq!(
        strings(&on_b.json()["groups"]),
        ["pcalice", "pcanalysts", "pcops"]
    );
    // A has answered it once, so A holds it in its cache when B logs it out.
    assert_eq!(get_session(&a.client(None), &token).await.status, 200);
    assert_eq!(delete_session(&b.client(None), &token).await.status, 204);
    let took = until_status(&a, &token, 401, Duration::from_secs(1)).await;
    eprintln!("logout on B refused by A after {took:?}");
    let r = get_session(&b.client(None), &token).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "authentication_failed");

    // Only the token's hash is in Redis, under the configured prefix, with a TTL.
    let other = b.cert_session("pcbob").await;
    let keys = redis.cli(&["--scan", "--pattern", "*"]);
    let secret = other.trim_start_matches("pcs_");
    assert!(!keys.contains(secret), "{keys}");
    let session_keys: Vec<&str> = keys
        .lines()
        .filter(|k| k.starts_with("pctest:s:"))
        .collect();
    assert_eq!(session_keys.len(), 1, "{keys}");
    assert_eq!(session_keys[0].len(), "pctest:s:".len() + 64);
    assert!(keys.lines().all(|k| k.starts_with("pctest:")), "{keys}");
    let value = redis.cli(&["GET", session_keys[0]]);
    assert!(
        !value.contains(secret) && value.contains("pcbob"),
        "{value}"
    );
    let ttl: i64 = redis.cli(&["TTL", session_keys[0]]).parse().unwrap();
    assert!((3500..=3600).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn redis_down_or_hung_is_503_for_logins_and_checks_and_recovers_without_a_restart() {
    let mut redis = RedisServer::start();
    let dir = tempdir();
    let d = daemon(dir.path(), &redis, &[]);
    let token = d.cert_session("pcalice").await;
    assert_eq!(get_session(&d.client(None), &token).await.status, 200);

    redis.stop();
    let took = until_status(&d, &token, 503, Duration::from_secs(3)).await;
    eprintln!("checks answered 503 {took:?} after redis-server was killed");
    let r = get_session(&d.client(None), &token).await;
    assert_eq!(
        r.json()["error"],
        "dependency_unavailable",
        "{:?}",
        r.json()
    );
    let r = d
        .client(Some("pcbob"))
        .request(hyper::Method::POST, "/v1/login", &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{:?}", r.json());
    assert_eq!(r.json()["error"], "dependency_unavailable");
    let r = delete_session(&d.client(None), &token).await;
    assert_eq!(r.status, 503, "a logout that cannot be stored is not a 204");
    let cookie = format!("portcullis_session={token}");
    let r = d
        .client(None)
        .request(
            hyper::Method::GET,
            "/v1/authorize",
            &[("cookie", &cookie)],
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 503, "the policy front cannot decide either");

    redis.resume();
    until_status(&d, &token, 200, Duration::from_secs(5)).await;
    let again = d.cert_session("pcbob").await;
    assert_eq!(get_session(&d.client(None), &again).await.status, 200);

    // A Redis that accepts connections but never answers.
    redis.pause(true);
    let started = Instant::now();
    let r = get_session(&d.client(None), &again).await;
    if r.status == 200 {
        // Answered from the cache (at most 1 s old); the next miss must wait.
        until_status(&d, &again, 503, Duration::from_secs(5)).await;
    }
    eprintln!("hung redis → 503 after {:?}", started.elapsed());
    redis.pause(false);
    until_status(&d, &again, 200, Duration::from_secs(5)).await;
    assert!(
        d.log().contains("session store unavailable"),
        "the outage is logged"
    );
}

#[tokio::test]
async fn per_user_and_total_bounds_hold_across_daemons() {
    let redis = RedisServer::start();
    let (da, db) = (tempdir(), tempdir());
    let bounds = [
        "security.max_sessions_per_user=2",
        "security.max_sessions=3",
    ];
    let a = daemon(da.path(), &redis, &bounds);
    let b = daemon(db.path(), &redis, &bounds);
    let first = a.cert_session("pcalice").await;
    let second = b.cert_session("pcalice").await;
    let third = a.cert_session("pcalice").await;
    for d in [&a, &b] {
        let c = d.client(None);
        assert_eq!(get_session(&c, &first).await.status, 401, "oldest evicted");
        assert_eq!(get_session(&c, &second).await.status, 200);
        assert_eq!(get_session(&c, &third).await.status, 200);
    }
    wait_for_log(&a, "reason=\"max_sessions_per_user\"").await;
    // A logged-out session makes room: the next login evicts nobody.
    assert_eq!(delete_session(&a.client(None), &third).await.status, 204);
    let fourth = b.cert_session("pcalice").await;
    for d in [&a, &b] {
        let c = d.client(None);
        assert_eq!(get_session(&c, &second).await.status, 200, "not evicted");
        assert_eq!(get_session(&c, &fourth).await.status, 200);
    }
    let _bob = b.cert_session("pcbob").await;
    // Three live sessions in all: the next login anywhere is refused.
    let r = a
        .client(Some("pcbob"))
        .request(hyper::Method::POST, "/v1/login", &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{:?}", r.json());
    assert_eq!(r.json()["error"], "dependency_unavailable");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("maximum number of sessions")
    );
    // A logout makes room again.
    assert_eq!(delete_session(&b.client(None), &second).await.status, 204);
    assert_eq!(
        a.client(Some("pcbob"))
            .request(hyper::Method::POST, "/v1/login", &[], None)
            .await
            .unwrap()
            .status,
        200
    );
}

fn admin(d: &Daemon, args: &[&str]) -> Value {
    let o = Command::new(BIN)
        .arg("admin")
        .args(args)
        .arg("--json")
        .arg("--socket")
        .arg(d.dir.join("admin.sock"))
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!(
            "admin {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

#[tokio::test]
async fn the_operator_lists_and_revokes_sessions_of_every_daemon() {
    let redis = RedisServer::start();
    let (da, db) = (tempdir(), tempdir());
    let a = daemon(da.path(), &redis, &[]);
    let b = daemon(db.path(), &redis, &[]);
    let alice_a = a.cert_session("pcalice").await;
    let alice_b = b.cert_session("pcalice").await;
    let bob = b.cert_session("pcbob").await;
    for t in [&alice_a, &alice_b, &bob] {
        assert_eq!(get_session(&a.client(None), t).await.status, 200);
    }

    let listed = admin(&a, &["sessions"]);
    let rows = listed["sessions"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{listed}");
    let alice = admin(&b, &["sessions", "--user", "pcalice"]);
    assert_eq!(alice["sessions"].as_array().unwrap().len(), 2, "{alice}");

    // Ended from B's socket; A had all of them cached.
    let r = admin(&b, &["revoke", "--user", "pcalice"]);
    assert_eq!(r["revoked"], 2, "{r}");
    until_status(&a, &alice_a, 401, Duration::from_secs(1)).await;
    until_status(&a, &alice_b, 401, Duration::from_secs(1)).await;
    assert_eq!(get_session(&a.client(None), &bob).await.status, 200);

    let id = admin(&a, &["sessions"])["sessions"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = admin(&a, &["revoke", "--id", &id]);
    assert_eq!(r["revoked"], 1, "{r}");
    until_status(&b, &bob, 401, Duration::from_secs(1)).await;

    let again = a.cert_session("pcbob").await;
    assert_eq!(admin(&b, &["revoke", "--all"])["revoked"], 1);
    until_status(&a, &again, 401, Duration::from_secs(1)).await;
    assert_eq!(
        admin(&a, &["sessions"])["sessions"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn rediss_with_the_configured_ca_and_not_without_it() {
    let redis = RedisServer::start_tls();
    let (da, db) = (tempdir(), tempdir());
    let a = daemon(da.path(), &redis, &[]);
    let b = daemon(db.path(), &redis, &[]);
    let token = a.cert_session("pcalice").await;
    let r = get_session(&b.client(None), &token).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(delete_session(&a.client(None), &token).await.status, 204);
    until_status(&b, &token, 401, Duration::from_secs(1)).await;

    // The same server, but trusting only the system's roots: no session is ever
    // made or accepted over a connection that could not be verified.
    let dc = tempdir();
    let url = format!("security.session_redis_url={}", redis.url());
    let c = Daemon::start(
        dc.path(),
        &[
            "security.session_store=redis",
            &url,
            "security.session_redis_prefix=pctest:",
        ],
    );
    c.dev_certs(&["pcalice"]);
    let r = c
        .client(Some("pcalice"))
        .request(hyper::Method::POST, "/v1/login", &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{:?}", r.json());
    assert_eq!(r.json()["error"], "dependency_unavailable");
}

#[tokio::test]
async fn bad_redis_settings_are_refused_at_startup_without_repeating_the_url() {
    let dir = tempdir();
    for (defines, expect) in [
        (
            vec!["security.session_store=redis"],
            "security.session_redis_url\" is not set",
        ),
        (
            vec![
                "security.session_store=redis",
                "security.session_redis_url=http://:hunter2@127.0.0.1:6379",
            ],
            "must start with redis:// or rediss://",
        ),
        (
            vec![
                "security.session_store=redis",
                "security.session_redis_url=redis://:hunter2@127.0.0.1:6379",
                "security.session_redis_ca_cert=/nonexistent.pem",
            ],
            "is not a rediss:// URL",
        ),
    ] {
        let err = Daemon::try_start(dir.path(), &defines)
            .err()
            .expect("must not start");
        assert!(err.contains(expect), "{defines:?}: {err}");
        assert!(!err.contains("hunter2"), "the password leaked: {err}");
    }
}

#[tokio::test]
async fn sessions_outlive_a_daemon_and_idle_ones_end_everywhere() {
    let redis = RedisServer::start();
    let (da, db) = (tempdir(), tempdir());
    // Margins of a second and more: a loaded CI machine must not make this flaky.
    let idle = ["security.session_idle_timeout=3"];
    let a = daemon(da.path(), &redis, &idle);
    let used = a.cert_session("pcalice").await;
    let unused = a.cert_session("pcbob").await;
    assert!(a.stop().success());
    let b = daemon(db.path(), &redis, &idle);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let r = get_session(&b.client(None), &used).await;
        assert_eq!(
            r.status,
            200,
            "used within the idle timeout: {:?}",
            r.json()
        );
    }
    let r = get_session(&b.client(None), &unused).await;
    assert_eq!(r.status, 401, "4.5 s unused with a 3 s idle timeout");
    let a = daemon(da.path(), &redis, &idle);
    assert_eq!(
        get_session(&a.client(None), &used).await.status,
        200,
        "kept across a restart"
    );
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(get_session(&a.client(None), &used).await.status, 401);
}

const OTP_SERVICE: &str = "security.pam_service=portcullis-test-otp";

#[tokio::test]
async fn a_conversation_answered_at_another_daemon_is_refused_there_and_goes_on_where_it_began() {
    let _turn = OTP_COUNTER.lock().await;
    let redis = RedisServer::start();
    let (da, db) = (tempdir(), tempdir());
    let a = daemon(da.path(), &redis, &[OTP_SERVICE]);
    let b = daemon(db.path(), &redis, &[OTP_SERVICE]);
    let r = password(&a.client(None), "pcotp", "otp-Secret-5").await;
    assert_eq!(r.status, 401, "{:?}", r.json());
    let id = r.json()["conversation"].as_str().unwrap().to_string();

    let stray = answer(&b.client(None), &id, serde_json::json!([next_otp()])).await;
    assert_eq!(stray.status, 404, "{:?}", stray.json());
    assert_eq!(stray.json()["error"], "not_found");
    let message = stray.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("another portcullis daemon"), "{message}");
    wait_for_log(&b, "reason=\"conversation_elsewhere\"").await;

    // The stray answer neither reached PAM nor ended the conversation.
    let r = answer(&a.client(None), &id, serde_json::json!([next_otp()])).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let token = r.json()["session"].as_str().unwrap().to_string();
    assert_eq!(get_session(&b.client(None), &token).await.status, 200);
}

/// `curl` from `source` (a loopback address) trusting `cafile`; status and JSON.
fn curl(source: &str, cafile: &std::path::Path, url: &str, body: &Value) -> (u16, Value) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--interface", source, "--cacert"])
        .arg(cafile)
        .args(["-H", "content-type: application/json", "-d"])
        .arg(body.to_string())
        .args(["-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "curl from {source} to {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (json, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(json).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn behind_a_balancer_that_keeps_each_client_on_one_daemon_conversations_complete() {
    let _turn = OTP_COUNTER.lock().await;
    let redis = RedisServer::start();
    let (da, db) = (tempdir(), tempdir());
    let a = daemon(da.path(), &redis, &[OTP_SERVICE]);
    // One server certificate for both, as behind any balancer.
    let tls = [
        format!("ssl.cert_file={}", a.dir.join("server.pem").display()),
        format!("ssl.key_file={}", a.dir.join("server.key").display()),
        format!("ssl.client_ca_file={}", a.ca().display()),
    ];
    let b = daemon(db.path(), &redis, &[OTP_SERVICE, &tls[0], &tls[1], &tls[2]]);
    // The README's recipe: a TCP (stream) balancer, so TLS and client certificates
    // end at portcullis, choosing the daemon by the client's address.
    let lb = common::nginx::Nginx::start(&format!(
        "load_module {}/ngx_stream_module.so;\nevents {{}}\nstream {{\n  upstream portcullis {{\n    hash $remote_addr consistent;\n    server 127.0.0.1:{};\n    server 127.0.0.1:{};\n  }}\n  server {{\n    listen 127.0.0.1:{{port}};\n    proxy_pass portcullis;\n  }}\n}}",
        common::nginx::MODULES,
        a.port,
        b.port
    ));
    let bundle = a.ca();
    let base = format!("https://127.0.0.1:{}", lb.port);
    let successes = |d: &Daemon| d.log().matches("user=\"pcotp\" result=\"success\"").count();
    let mut clients = 0;
    for n in 1..=24 {
        let source = format!("127.0.0.{n}");
        let (status, v) = curl(
            &source,
            &bundle,
            &format!("{base}/v1/login"),
            &serde_json::json!({"mechanism": "password", "username": "pcotp", "password": "otp-Secret-5"}),
        );
        assert_eq!(status, 401, "{source}: {v}");
        let id = v["conversation"].as_str().unwrap();
        let (status, v) = curl(
            &source,
            &bundle,
            &format!("{base}/v1/login/{id}"),
            &serde_json::json!({"answers": [next_otp()]}),
        );
        assert_eq!(status, 200, "{source}: {v}");
        clients += 1;
        if clients >= 4 && successes(&a) > 0 && successes(&b) > 0 {
            break;
        }
    }
    eprintln!(
        "{clients} clients through nginx: {} on A, {} on B",
        successes(&a),
        successes(&b)
    );
    assert!(
        successes(&a) > 0 && successes(&b) > 0,
        "the balancer used both daemons"
    );
}

#[tokio::test]
async fn guesses_alternating_between_two_daemons_get_no_more_than_one_daemons_limit() {
    let mut redis = RedisServer::start();
    let (da, db) = (tempdir(), tempdir());
    let limits = [
        "security.pam_service=portcullis-test",
        "security.max_failed_attempts=3",
    ];
    let a = daemon(da.path(), &redis, &limits);
    let b = daemon(db.path(), &redis, &limits);
    let (ca, cb) = (a.client(None), b.client(None));
    for (i, c) in [&ca, &cb, &ca].into_iter().enumerate() {
        let r = password(c, "pcbob", &format!("wrong-{i}")).await;
        assert_eq!(r.status, 401, "guess {i}: {:?}", r.json());
    }
    for c in [&cb, &ca] {
        let r = password(c, "PCBOB", "wrong-again").await;
        assert_eq!(r.status, 429, "{:?}", r.json());
        assert_eq!(r.json()["error"], "too_many_attempts");
        // Not even the right password is tried while the budget is spent.
        let r = password(c, "pcbob", "bob-Secret-2").await;
        assert_eq!(r.status, 429, "{:?}", r.json());
    }

    // No Redis, no verdict: 503, never a 401 that would count or a pass.
    redis.stop();
    let r = password(&ca, "pcalice", "alice-Secret-1").await;
    assert_eq!(r.status, 503, "{:?}", r.json());
    assert_eq!(r.json()["error"], "dependency_unavailable");
}
