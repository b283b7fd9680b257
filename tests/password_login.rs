//! Password logins through real PAM (`/etc/pam.d/portcullis*` and the local users
//! of scripts/prepare-env), including a real second factor (pam_oath + oathtool).

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::*;
use portcullis::cli::client::{Client, Reply};
use serde_json::{Value, json};

const TEST_SERVICE: &str = "security.pam_service=portcullis-test";
const OTP_SERVICE: &str = "security.pam_service=portcullis-test-otp";

fn password(user: &str, pass: &str) -> Value {
    json!({"mechanism": "password", "username": user, "password": pass})
}

async fn login(c: &Client, user: &str, pass: &str) -> Reply {
    post_login(c, Some(password(user, pass))).await.unwrap()
}

async fn basic(c: &Client, user: &str, pass: &str) -> Reply {
    use base64::Engine;
    let cred = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let auth = format!("Basic {cred}");
    c.request(
        hyper::Method::POST,
        "/v1/login",
        &[("authorization", &auth)],
        None,
    )
    .await
    .unwrap()
}

fn local(ip: &str) -> IpAddr {
    ip.parse().unwrap()
}

#[tokio::test]
async fn right_password_gives_a_session_with_nss_groups_and_labels() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("gl.csv"),
        "pcanalysts,apple\npcops,cherry\n",
    )
    .unwrap();
    let gl = format!(
        "security.grouplabelfile={}",
        dir.path().join("gl.csv").display()
    );
    let d = Daemon::start(dir.path(), &[TEST_SERVICE, &gl]);
    let r = login(&d.client(None), "pcalice", "alice-Secret-1").await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let v = r.json();
    assert_eq!(v["user"], "pcalice");
    assert_eq!(v["mechanism"], "password");
    assert_eq!(strings(&v["groups"]), ["pcalice", "pcanalysts", "pcops"]);
    assert_eq!(strings(&v["labels"]), ["apple", "cherry"]);
    // The same through Authorization: Basic.
    let r = basic(&d.client(None), "pcbob", "bob-Secret-2").await;
    assert_eq!(r.status, 200);
    assert_eq!(strings(&r.json()["labels"]), ["apple"]);
    assert_eq!(
        methods(&d).await["mechanisms"],
        json!(["password", "certificate"])
    );
}

#[tokio::test]
async fn wrong_password_and_unknown_user_look_the_same() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &[TEST_SERVICE]);
    let wrong = login(&d.client(None), "pcalice", "not-her-password").await;
    let unknown = login(&d.client(None), "nosuchuser-pc", "whatever").await;
    assert_eq!(wrong.status, 401);
    assert_eq!(unknown.status, 401);
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(wrong.json()["error"], "authentication_failed");
    let challenge: Vec<_> = wrong.headers.get_all("www-authenticate").iter().collect();
    assert_eq!(challenge, ["Basic realm=\"portcullis\""]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = d.log();
    assert!(
        !log.contains("not-her-password") && !log.contains("whatever"),
        "a password reached the log"
    );
}

#[tokio::test]
async fn locked_expired_and_must_change_accounts_are_403() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &[TEST_SERVICE]);
    let c = d.client(None);
    let r = login(&c, "pclocked", "locked-Secret-6").await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (403, json!("account_unavailable")),
        "{:?}",
        r.json()
    );
    // A wrong password for a locked account reveals nothing.
    let r = login(&c, "pclocked", "guess").await;
    assert_eq!(r.status, 401);
    let r = login(&c, "pcexpired", "expired-Secret-7").await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (403, json!("account_unavailable")),
        "{:?}",
        r.json()
    );
    // A password that must change starts the change over the conversation
    // (security.pam_password_change, tests/xgt.rs follows it through).
    let r = login(&c, "pcchange", "change-Secret-8").await;
    assert_eq!(r.status, 401, "{:?}", r.json());
    let last = r.json()["prompts"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert_eq!(last["style"], "echo_off", "{:?}", r.json());
    assert!(last["text"].as_str().unwrap().contains("New password"));
}

#[tokio::test]
async fn a_second_factor_completes_through_the_conversation() {
    let _turn = OTP_COUNTER.lock().await;
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &[OTP_SERVICE]);
    let c = d.client(None);

    // Wrong code first: the conversation ends in a 401.
    let r = basic(&c, "pcotp", "otp-Secret-5").await;
    assert_eq!(r.status, 401);
    let v = r.json();
    let id = v["conversation"]
        .as_str()
        .expect("a conversation")
        .to_string();
    assert_eq!(v["prompts"][0]["style"], "echo_off");
    assert!(
        v["prompts"][0]["text"]
            .as_str()
            .unwrap()
            .contains("One-time password"),
        "{v}"
    );
    let r = answer(&c, &id, json!(["000000"])).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, json!("authentication_failed"))
    );
    assert!(r.json().get("conversation").is_none());

    // Right code, from the JSON body this time.
    let r = login(&c, "pcotp", "otp-Secret-5").await;
    let id = r.json()["conversation"].as_str().unwrap().to_string();
    // Another host cannot continue it, and that does not end it for its owner.
    let other = d.client(None).bind_local(local("127.0.0.2"));
    let r = answer(&other, &id, json!([next_otp()])).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (404, json!("not_found"))
    );
    // Wrong number of answers: 400, conversation still alive.
    let r = answer(&c, &id, json!([])).await;
    assert_eq!(r.status, 400);
    let r = answer(&c, &id, json!([next_otp()])).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["user"], "pcotp");
    assert_eq!(strings(&r.json()["groups"]), ["pcotp", "pcanalysts"]);
    // An id works once.
    let r = answer(&c, &id, json!(["123456"])).await;
    assert_eq!(r.status, 404);
    // And cannot be made up.
    let r = answer(
        &c,
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        json!(["1"]),
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn an_abandoned_conversation_frees_its_place_and_counts_as_a_failure() {
    let dir = tempdir();
    let d = Daemon::start(
        dir.path(),
        &[
            OTP_SERVICE,
            "system.blocking_threads=1",
            "security.pam_conversation_timeout=1",
            "security.pam_max_conversations=1",
        ],
    );
    let c = d.client(None);
    let r = login(&c, "pcotp", "otp-Secret-5").await;
    let abandoned = r.json()["conversation"].as_str().unwrap().to_string();
    // The only place for a waiting conversation is taken: another one is refused at
    // once instead of parking another thread.
    let other = d.client(None).bind_local(local("127.0.0.5"));
    let r = login(&other, "pcotp", "otp-Secret-5").await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (429, json!("too_many_attempts")),
        "{:?}",
        r.json()
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = login(&other, "pcotp", "otp-Secret-5").await;
    assert_eq!(r.status, 401);
    assert!(
        r.json()["conversation"].is_string(),
        "the abandoned conversation gave its place back: {:?}",
        r.json()
    );
    let r = answer(&c, &abandoned, json!(["123456"])).await;
    assert_eq!(r.status, 404, "an abandoned conversation is gone");
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains("conversation_abandoned") && l.contains("pcotp")),
        "the abandonment is audited as a failed login:\n{log}"
    );
}

#[tokio::test]
async fn parked_conversations_do_not_hold_up_other_logins() {
    // One thread for working PAM transactions; two conversations park beside it.
    let dir = tempdir();
    let d = Daemon::start(
        dir.path(),
        &[
            OTP_SERVICE,
            "system.blocking_threads=1",
            "system.blocking_queue_timeout=1",
            "security.pam_max_conversations=2",
        ],
    );
    let c = d.client(None);
    for _ in 0..2 {
        let r = login(&c, "pcotp", "otp-Secret-5").await;
        assert!(r.json()["conversation"].is_string(), "{:?}", r.json());
    }
    let other = d.client(None).bind_local(local("127.0.0.6"));
    let r = login(&other, "pcotp", "otp-Secret-5").await;
    assert_eq!(r.status, 429, "no third place: {:?}", r.json());
    // A user whose stack asks nothing more logs in at once (the old shared pool of
    // one thread answered 503 after the queue timeout).
    let started = Instant::now();
    let r = login(&other, "pcalice", "alice-Secret-1").await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn malformed_user_names_are_400() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &[TEST_SERVICE]);
    let c = d.client(None);
    let long = "a".repeat(10 * 1024);
    for bad in ["pc\u{0}alice", "pcalice\nroot", long.as_str(), ""] {
        let r = login(&c, bad, "x").await;
        assert_eq!(r.status, 400, "{bad:?}");
        assert_eq!(r.json()["error"], "bad_request");
    }
}

#[tokio::test]
async fn the_sixth_wrong_password_in_a_minute_is_429_per_user_and_per_address() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &[TEST_SERVICE]);
    let c = d.client(None).bind_local(local("127.0.0.3"));
    for _ in 0..5 {
        assert_eq!(login(&c, "pcbob", "wrong").await.status, 401);
    }
    // Even the right password is refused now, and a made-up user looks the same.
    let r = login(&c, "pcbob", "bob-Secret-2").await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (429, json!("too_many_attempts"))
    );
    let retry: u64 = r
        .headers
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Another user from another address still logs in.
    let other = d.client(None).bind_local(local("127.0.0.4"));
    assert_eq!(login(&other, "pcalice", "alice-Secret-1").await.status, 200);
    // pcbob is throttled from everywhere.
    assert_eq!(login(&other, "pcbob", "bob-Secret-2").await.status, 429);
    // The address 127.0.0.3 is throttled for every user.
    assert_eq!(login(&c, "pccarol", "carol-Secret-3").await.status, 429);
    // Unknown users are counted like real ones (no hint which exist).
    let third = d.client(None).bind_local(local("127.0.0.5"));
    for _ in 0..5 {
        assert_eq!(login(&third, "nosuchuser-pc", "x").await.status, 401);
    }
    assert_eq!(login(&third, "nosuchuser-pc", "x").await.status, 429);
}

#[tokio::test]
async fn twenty_concurrent_logins_are_all_answered_correctly() {
    let dir = tempdir();
    let d = Daemon::start(
        dir.path(),
        &[TEST_SERVICE, "security.max_failed_attempts=0"],
    );
    let cases = [
        ("pcalice", "alice-Secret-1", 200),
        ("pcbob", "bob-Secret-2", 200),
        ("pccarol", "carol-Secret-3", 200),
        ("pcbob", "wrong", 401),
        ("pclocked", "locked-Secret-6", 403),
    ];
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (user, pass, want) = cases[i % cases.len()];
        let c = d.client(None);
        tasks.push(tokio::spawn(async move {
            (user, want, login(&c, user, pass).await)
        }));
    }
    for t in tasks {
        let (user, want, r) = t.await.unwrap();
        assert_eq!(r.status, want, "{user}: {:?}", r.json());
        if want == 200 {
            assert_eq!(r.json()["user"], user);
        }
    }
}

#[tokio::test]
async fn pam_fail_delay_does_not_pin_the_pool() {
    // The shipped service file keeps pam_unix's ~2 s failure delay. With one pool
    // thread, three concurrent failures take ~2 s if the delay is served off the
    // thread, and ~6 s if PAM slept on it.
    let dir = tempdir();
    let d = Daemon::start(
        dir.path(),
        &[
            "system.blocking_threads=1",
            "security.max_failed_attempts=0",
        ],
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let c = d.client(None);
        tasks.push(tokio::spawn(async move {
            login(&c, "pccarol", "wrong").await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "no failure delay at all: {took:?}"
    );
    assert!(
        took < Duration::from_millis(4500),
        "failure delays were served on the pool thread: {took:?}"
    );
}

#[tokio::test]
async fn curl_basic_and_the_cli_log_in_with_a_password() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &[TEST_SERVICE]);
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail-with-body", "--cacert"])
        .arg(d.ca())
        .args([
            "-u",
            "pcalice:alice-Secret-1",
            "-X",
            "POST",
            &format!("{}/v1/login", d.url),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["user"], "pcalice");

    let run = tempdir();
    let cli = |input: &str, args: &[&str]| {
        use std::io::Write;
        let mut child = std::process::Command::new(BIN)
            .args(args)
            .env("XDG_RUNTIME_DIR", run.path())
            .env("PORTCULLIS_CA", d.ca())
            .env("PORTCULLIS_URL", &d.url)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let o = cli(
        "bob-Secret-2\n",
        &["login", "--user", "pcbob", "--password-stdin", "--json"],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["user"], "pcbob");
    let o = cli("", &["whoami", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let o = cli("nope\n", &["login", "--user", "pcbob", "--password-stdin"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[tokio::test]
async fn the_cli_answers_a_second_prompt_from_stdin() {
    let _turn = OTP_COUNTER.lock().await;
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &[OTP_SERVICE]);
    let run = tempdir();
    use std::io::Write;
    let mut child = std::process::Command::new(BIN)
        .args([
            "login",
            "--user",
            "pcotp",
            "--password-stdin",
            "--server",
            &d.url,
            "--ca",
        ])
        .arg(d.ca())
        .env("XDG_RUNTIME_DIR", run.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input = format!("otp-Secret-5\n{}\n", next_otp());
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("user:      pcotp"));
}

#[tokio::test]
async fn plaintext_on_loopback_serves_password_logins() {
    let dir = tempdir();
    let d = Daemon::start(
        dir.path(),
        &[
            TEST_SERVICE,
            "ssl.enabled=false",
            "security.mechanisms=password",
        ],
    );
    assert!(d.url.starts_with("http://127.0.0.1:"), "{}", d.url);
    let c = Client::new(&d.url, None, None).unwrap();
    assert_eq!(login(&c, "pcalice", "alice-Secret-1").await.status, 200);
}
