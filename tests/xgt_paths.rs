//! Issue 10 item 6: paths xGT users rely on that no other test covers, each against
//! the real KDC (scripts/kdc), the real IdP (tests/idp) or real NSS groups.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::idp::Idp;
use common::*;
use serde_json::{Value, json};

const AUD: &str = "https://portcullis.test";
const DISCOVERY: (&str, &str) = ("GET", "/.well-known/openid-configuration");

/// Wait until `needle` appears at least `n` times in the daemon's log.
async fn wait_for_log_count(d: &Daemon, needle: &str, n: usize) {
    for _ in 0..200 {
        if d.log().matches(needle).count() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "\"{needle}\" did not appear {n} times in the log:\n{}",
        d.log()
    );
}

// ------------------------------------------------------------------ Kerberos

/// `security.krb_keytab` unset: the keytab is `KRB5_KTNAME` from the daemon's
/// environment (SPEC §3), not the built-in `/etc/portcullis/portcullis.keytab`.
#[tokio::test]
async fn krb5_ktname_is_the_keytab_when_krb_keytab_is_unset() {
    let kdc = krb::kdc_dir();
    let http_keytab = format!("FILE:{}/http.keytab", kdc.display());
    let other_keytab = format!("FILE:{}/other.keytab", kdc.display());
    assert!(
        !Path::new("/etc/portcullis/portcullis.keytab").exists(),
        "/etc/portcullis/portcullis.keytab exists: this test needs the built-in default to be missing"
    );

    // check-config shows the keytab the daemon will use.
    let out = Command::new(BIN)
        .args(["check-config", "--dev", "-D", "security.use_kerberos=true"])
        .env("KRB5_KTNAME", &http_keytab)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(r#""krb_keytab": "{http_keytab}""#)),
        "{stdout}"
    );

    // The daemon with KRB5_KTNAME = the keytab of HTTP/localhost: curl --negotiate works.
    let dir = tempdir();
    let d = Daemon::start_with_env(
        dir.path(),
        &["security.use_kerberos=true"],
        &[("KRB5_KTNAME", &http_keytab)],
    );
    let cache = krb::kinit(dir.path(), "pcalice", "alice-Secret-1");
    let (body, trace) = krb::curl_negotiate(&d, &cache);
    assert_eq!(body["user"], "pcalice", "{body}\n{trace}\n{}", d.log());
    assert_eq!(body["mechanism"], "kerberos", "{body}");
    drop(d);

    // KRB5_KTNAME really is what the acceptor reads: a keytab without HTTP/localhost
    // (other.keytab holds only HTTP/other.test) makes the same login fail.
    let dir = tempdir();
    let d = Daemon::start_with_env(
        dir.path(),
        &["security.use_kerberos=true"],
        &[("KRB5_KTNAME", &other_keytab)],
    );
    let cache = krb::kinit(dir.path(), "pcalice", "alice-Secret-1");
    let (body, trace) = krb::curl_negotiate(&d, &cache);
    assert_eq!(
        body["error"],
        "authentication_failed",
        "{body}\n{trace}\n{}",
        d.log()
    );
    drop(d);

    // An explicit security.krb_keytab wins over KRB5_KTNAME.
    let dir = tempdir();
    let key = format!("security.krb_keytab={http_keytab}");
    let d = Daemon::start_with_env(
        dir.path(),
        &["security.use_kerberos=true", &key],
        &[("KRB5_KTNAME", &other_keytab)],
    );
    let cache = krb::kinit(dir.path(), "pcalice", "alice-Secret-1");
    let (body, trace) = krb::curl_negotiate(&d, &cache);
    assert_eq!(body["user"], "pcalice", "{body}\n{trace}\n{}", d.log());
}

// ------------------------------------------------------------------ OIDC

fn oidc_defines(extra: &[String]) -> Vec<String> {
    let mut v = vec!["security.default_labels=[]".to_string()];
    v.extend_from_slice(extra);
    v
}

fn start(dir: &Path, defines: &[String]) -> Daemon {
    let all: Vec<&str> = defines.iter().map(String::as_str).collect();
    Daemon::start(dir, &all)
}

/// jwt mode with `jwks_uri` set: discovery is never attempted, neither at the real
/// IdP (its request log shows no discovery GET) nor at an issuer nobody answers for.
#[tokio::test]
async fn an_explicit_jwks_uri_means_no_discovery_at_all() {
    let dir = tempdir();
    let idp = Idp::start(dir.path());
    let jwks = format!("{}/jwks", idp.url);

    // 1. The issuer is the real IdP, which would answer discovery.
    let d = start(
        dir.path(),
        &oidc_defines(&[
            format!("security.oidc.issuer={}", idp.url),
            format!("security.oidc.audience={AUD}"),
            "security.oidc.validation_mode=jwt".into(),
            format!("security.oidc.jwks_uri={jwks}"),
            format!("security.oidc.ca_cert={}", idp.ca.display()),
        ]),
    );
    let t = idp
        .token("oidc-alice", &["pcanalysts"], Some(AUD), "RS256", 300)
        .await;
    let r = bearer(&d, &t).await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.json(), d.log());
    assert_eq!(r.json()["user"], "oidc-alice");
    // Give the background refresh time to run too.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        idp.requests("GET", "/jwks") >= 1,
        "the keys came from the configured jwks_uri:\n{}",
        idp.log()
    );
    assert_eq!(
        idp.requests(DISCOVERY.0, DISCOVERY.1),
        0,
        "discovery was attempted although jwks_uri is set:\n{}",
        idp.log()
    );
    drop(d);

    // 2. The issuer names a host where nothing answers (connection refused), so no
    // discovery document is reachable; tokens carry that issuer and are signed with
    // the IdP's key, published at the configured jwks_uri.
    let dead_issuer = "https://127.0.0.1:1/realms/xgt";
    let dir2 = tempdir();
    let d = start(
        dir2.path(),
        &oidc_defines(&[
            format!("security.oidc.issuer={dead_issuer}"),
            format!("security.oidc.audience={AUD}"),
            "security.oidc.validation_mode=jwt".into(),
            format!("security.oidc.jwks_uri={jwks}"),
            format!("security.oidc.ca_cert={}", idp.ca.display()),
        ]),
    );
    let claims = json!({"sub": "oidc-bob", "preferred_username": "oidc-bob",
        "groups": ["pcops"], "iss": dead_issuer, "aud": AUD,
        "iat": now(), "exp": now() + 300});
    let t = idp.sign(json!({"alg": "RS256"}), claims, "rsa").await;
    let r = bearer(&d, &t).await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.json(), d.log());
    assert_eq!(r.json()["user"], "oidc-bob");
    assert_eq!(strings(&r.json()["groups"]), ["pcops"]);
    assert_eq!(idp.requests(DISCOVERY.0, DISCOVERY.1), 0, "{}", idp.log());
    drop(d);

    // Controls, so the checks above can fail: without jwks_uri the daemon does ask
    // for discovery (and the IdP's log shows it), and at the dead issuer it gets
    // nothing, so the same token is a 503.
    let dir3 = tempdir();
    let d = start(
        dir3.path(),
        &oidc_defines(&[
            format!("security.oidc.issuer={}", idp.url),
            format!("security.oidc.audience={AUD}"),
            "security.oidc.validation_mode=jwt".into(),
            format!("security.oidc.ca_cert={}", idp.ca.display()),
        ]),
    );
    let good = idp
        .token("oidc-alice", &["pcanalysts"], Some(AUD), "RS256", 300)
        .await;
    assert_eq!(bearer(&d, &good).await.status, 200);
    assert!(idp.requests(DISCOVERY.0, DISCOVERY.1) >= 1, "{}", idp.log());
    drop(d);
    let dir4 = tempdir();
    let d = start(
        dir4.path(),
        &oidc_defines(&[
            format!("security.oidc.issuer={dead_issuer}"),
            format!("security.oidc.audience={AUD}"),
            "security.oidc.validation_mode=jwt".into(),
            format!("security.oidc.ca_cert={}", idp.ca.display()),
        ]),
    );
    let r = bearer(&d, &t).await;
    assert_eq!(r.status, 503, "{:?}", r.json());
}

/// introspection_userinfo with `introspection_uri` and `userinfo_uri` set: logins
/// work and discovery is never attempted, with the real IdP as issuer and with no
/// issuer at all (then there is no discovery document to find).
#[tokio::test]
async fn explicit_introspection_and_userinfo_uris_mean_no_discovery_at_all() {
    let dir = tempdir();
    let idp = Idp::start(dir.path());
    let endpoints = [
        format!(
            "security.oidc.introspection_uri={}/token/introspection",
            idp.url
        ),
        format!("security.oidc.userinfo_uri={}/me", idp.url),
        "security.oidc.validation_mode=introspection_userinfo".into(),
        "security.oidc.introspection_client_id=portcullis-introspect".into(),
        "security.oidc.introspection_client_secret=introspect-secret".into(),
        "security.oidc.client_id=portcullis-cli".into(),
        format!("security.oidc.ca_cert={}", idp.ca.display()),
    ];

    // 1. The issuer is the real IdP, which would answer discovery.
    let mut defs = endpoints.to_vec();
    defs.push(format!("security.oidc.issuer={}", idp.url));
    let d = start(dir.path(), &oidc_defines(&defs));
    let t = idp.opaque("oidc-carol", &["pcanalysts"]).await;
    let r = bearer(&d, &t).await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.json(), d.log());
    assert_eq!(r.json()["user"], "oidc-carol");
    assert_eq!(strings(&r.json()["groups"]), ["pcanalysts"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        idp.requests("POST", "/token/introspection") >= 1 && idp.requests("GET", "/me") >= 1,
        "the configured endpoints were used:\n{}",
        idp.log()
    );
    assert_eq!(
        idp.requests(DISCOVERY.0, DISCOVERY.1),
        0,
        "discovery was attempted although every endpoint is set:\n{}",
        idp.log()
    );
    drop(d);

    // 2. No issuer: nothing to discover from (OIDC enabled explicitly).
    let dir2 = tempdir();
    let mut defs = endpoints.to_vec();
    defs.push("security.mechanisms=oidc".into());
    let d = start(dir2.path(), &oidc_defines(&defs));
    let t = idp.opaque("oidc-dave", &["pcops"]).await;
    let r = bearer(&d, &t).await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.json(), d.log());
    assert_eq!(r.json()["user"], "oidc-dave");
    assert_eq!(strings(&r.json()["groups"]), ["pcops"]);
    assert_eq!(idp.requests(DISCOVERY.0, DISCOVERY.1), 0, "{}", idp.log());
    drop(d);

    // Control: one endpoint the mode needs left out (userinfo_uri), and discovery is
    // asked for; the IdP's log shows it.
    let dir3 = tempdir();
    let mut defs: Vec<String> = endpoints
        .iter()
        .filter(|d| !d.starts_with("security.oidc.userinfo_uri="))
        .cloned()
        .collect();
    defs.push(format!("security.oidc.issuer={}", idp.url));
    let d = start(dir3.path(), &oidc_defines(&defs));
    let t = idp.opaque("oidc-carol", &["pcanalysts"]).await;
    let r = bearer(&d, &t).await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.json(), d.log());
    assert!(idp.requests(DISCOVERY.0, DISCOVERY.1) >= 1, "{}", idp.log());
}

/// `/v1/auth/methods` gives `audience` as the `client_id` when `client_id` is unset
/// (xGT's GetOidcIssuer does the same).
#[tokio::test]
async fn auth_methods_fall_back_from_client_id_to_audience() {
    let dir = tempdir();
    let idp = Idp::start(dir.path());
    let d = start(
        dir.path(),
        &oidc_defines(&[
            format!("security.oidc.issuer={}", idp.url),
            format!("security.oidc.audience={AUD}"),
            "security.oidc.validation_mode=jwt".into(),
            format!("security.oidc.ca_cert={}", idp.ca.display()),
        ]),
    );
    let m = methods(&d).await;
    assert!(
        strings(&m["mechanisms"]).contains(&"oidc".to_string()),
        "{m}"
    );
    assert_eq!(m["oidc"]["issuer"], json!(idp.url), "{m}");
    assert_eq!(m["oidc"]["audience"], AUD, "{m}");
    assert_eq!(
        m["oidc"]["client_id"], AUD,
        "client_id unset: the audience stands in: {m}"
    );
    // And the configuration works: a token for that audience logs in.
    let t = idp
        .token("oidc-alice", &["pcanalysts"], Some(AUD), "RS256", 300)
        .await;
    assert_eq!(bearer(&d, &t).await.status, 200);
    drop(d);

    // Set, client_id is what clients are told (so the fallback is a fallback).
    let dir2 = tempdir();
    let d = start(
        dir2.path(),
        &oidc_defines(&[
            format!("security.oidc.issuer={}", idp.url),
            format!("security.oidc.audience={AUD}"),
            "security.oidc.client_id=portcullis-cli".into(),
            "security.oidc.validation_mode=jwt".into(),
            format!("security.oidc.ca_cert={}", idp.ca.display()),
        ]),
    );
    assert_eq!(methods(&d).await["oidc"]["client_id"], "portcullis-cli");
}

/// Introspection answers whose `aud` is our `client_id` are accepted when
/// `security.oidc.audience` is unset (Keycloak puts the client id in `aud`); other
/// audiences are still refused.
#[tokio::test]
async fn introspection_accepts_aud_equal_to_client_id_when_audience_is_unset() {
    // oidc-provider takes any absolute URL as a resource indicator, so the client id
    // is written as one; the token's `aud` is then exactly this string.
    const CLIENT: &str = "https://xgt-client.portcullis.test";
    let dir = tempdir();
    let idp = Idp::start(dir.path());
    let d = start(
        dir.path(),
        &oidc_defines(&[
            format!("security.oidc.issuer={}", idp.url),
            format!("security.oidc.client_id={CLIENT}"),
            "security.oidc.validation_mode=introspection".into(),
            "security.oidc.introspection_client_id=portcullis-introspect".into(),
            "security.oidc.introspection_client_secret=introspect-secret".into(),
            format!("security.oidc.ca_cert={}", idp.ca.display()),
            "security.max_failed_attempts=0".into(),
        ]),
    );
    let mint = |resource: &'static str| {
        let idp = &idp;
        async move {
            let v = idp
                .mint(&[
                    ("sub", "oidc-erin"),
                    ("groups", "pcanalysts"),
                    ("format", "opaque"),
                    ("resource", resource),
                ])
                .await;
            assert_eq!(v["aud"], resource, "{v}");
            v["access_token"].as_str().unwrap().to_string()
        }
    };

    // Another audience: refused by the audience check.
    let other = mint("https://other.test").await;
    let r = bearer(&d, &other).await;
    assert_eq!(r.status, 401, "{:?}", r.json());
    wait_for_log(&d, "wrong_audience").await;

    // aud == client_id: accepted.
    let ours = mint(CLIENT).await;
    let r = bearer(&d, &ours).await;
    assert_eq!(
        r.status,
        200,
        "aud equal to client_id (audience unset) must be accepted: {:?}\n{}",
        r.json(),
        d.log()
    );
    assert_eq!(r.json()["user"], "oidc-erin");
    assert_eq!(strings(&r.json()["groups"]), ["pcanalysts"]);
}

// ------------------------------------------------------------------ NSS groups

/// A local user and group made for one test and removed at its end (also when the
/// test panics), so fixture users other tests rely on keep their groups.
struct ThrowawayAccount {
    user: String,
    group: String,
}

impl ThrowawayAccount {
    fn create() -> ThrowawayAccount {
        let n = std::process::id() % 100_000;
        let acct = ThrowawayAccount {
            user: format!("pcttl{n}"),
            group: format!("pcttlg{n}"),
        };
        acct.remove();
        run(&["groupadd", &acct.group]);
        // --user-group: a primary group of the user's own name.
        run(&[
            "useradd",
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
            &acct.user,
        ]);
        acct
    }

    fn remove(&self) {
        let _ = Command::new("userdel").arg(&self.user).output();
        let _ = Command::new("groupdel").arg(&self.user).output();
        let _ = Command::new("groupdel").arg(&self.group).output();
    }
}

impl Drop for ThrowawayAccount {
    fn drop(&mut self) {
        self.remove();
    }
}

fn run(argv: &[&str]) {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (the tests run as root)", argv[0]));
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn cert_groups(d: &Daemon, user: &str) -> Vec<String> {
    let v = d.cert_login(user).await;
    assert_eq!(v["user"], user, "{v}");
    strings(&v["groups"])
}

/// `security.group_cache_ttl`: a membership change made with gpasswd shows in the
/// session's groups only once the cached entry is older than the TTL.
#[tokio::test]
async fn group_changes_are_seen_after_the_group_cache_ttl_not_before() {
    const TTL: Duration = Duration::from_secs(3);
    let acct = ThrowawayAccount::create();
    let (user, group) = (acct.user.as_str(), acct.group.as_str());
    let dir = tempdir();
    let ttl = format!("security.group_cache_ttl={}", TTL.as_secs());
    let d = Daemon::start(dir.path(), &[&ttl]);
    d.dev_certs(&[user]);

    // Added to the group.
    let cached_at = Instant::now();
    assert_eq!(cert_groups(&d, user).await, [user]);
    run(&["gpasswd", "-a", user, group]);
    let groups = cert_groups(&d, user).await;
    assert!(
        cached_at.elapsed() < TTL,
        "too slow to check the cache ({:?}); the machine is overloaded",
        cached_at.elapsed()
    );
    assert_eq!(groups, [user], "the cached groups, before the TTL");
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    assert_eq!(
        cert_groups(&d, user).await,
        [user, group],
        "after the TTL the new group shows"
    );

    // Removed from the group: the entry cached just now still has it until the TTL.
    let cached_at = Instant::now();
    run(&["gpasswd", "-d", user, group]);
    let groups = cert_groups(&d, user).await;
    assert!(cached_at.elapsed() < TTL, "{:?}", cached_at.elapsed());
    assert_eq!(groups, [user, group], "the cached groups, before the TTL");
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    assert_eq!(cert_groups(&d, user).await, [user], "after the TTL");
    drop(d);
}

// ------------------------------------------------------------------ CRL reload

/// A certificate login on a connection opened just now.
async fn fresh_login(d: &Daemon, cert: &(PathBuf, PathBuf)) -> (u16, Value) {
    let mut conn = KeepAlive::connect_as(d, Some((&cert.0, &cert.1))).await;
    conn.post_login().await.unwrap()
}

const RELOADED: &str = "reloaded TLS certificates and CRLs";

/// A CRL written over the configured file counts from the SIGHUP on: new connections
/// with the newly revoked certificate are accepted before it and refused after it,
/// other certificates keep working, and a broken CRL keeps the previous one.
#[tokio::test]
async fn a_new_crl_is_loaded_on_sighup_and_refuses_new_connections() {
    let dir = tempdir();
    let crl = dir.path().join("ca.crl");
    let alice = issue_with_serial(dir.path(), "pcalice", 0x8181);
    let bob = issue_with_serial(dir.path(), "pcbob", 0x8282);
    write_crl(&ca(dir.path()), &crl, 1, &[], CRL_FRESH);
    let crl_def = format!("ssl.crl_files={}", crl.display());
    let d = Daemon::start(dir.path(), &[&crl_def, "security.max_failed_attempts=0"]);

    let (status, v) = fresh_login(&d, &alice).await;
    assert_eq!((status, v["user"].clone()), (200, json!("pcalice")), "{v}");

    // The new CRL is on disk, but not loaded: still accepted.
    write_crl(&ca(dir.path()), &crl, 2, &[0x8181], CRL_FRESH);
    let (status, v) = fresh_login(&d, &alice).await;
    assert_eq!(status, 200, "accepted until the reload: {v}");

    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for_log_count(&d, RELOADED, 1).await;
    let (status, v) = fresh_login(&d, &alice).await;
    assert_eq!(status, 401, "revoked after the reload: {v}");
    assert_eq!(v["error"], "authentication_failed", "{v}");
    assert!(v["message"].as_str().unwrap().contains("revoked"), "{v}");
    let (status, v) = fresh_login(&d, &bob).await;
    assert_eq!((status, v["user"].clone()), (200, json!("pcbob")), "{v}");

    // A broken CRL: the reload fails and the previous CRL stays in force.
    std::fs::write(
        &crl,
        "-----BEGIN X509 CRL-----\nnot a CRL\n-----END X509 CRL-----\n",
    )
    .unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for_log(&d, "TLS reload failed").await;
    assert_eq!(fresh_login(&d, &alice).await.0, 401);
    assert_eq!(fresh_login(&d, &bob).await.0, 200);

    // The revocation lifted in a newer CRL: accepted again after the next SIGHUP.
    write_crl(&ca(dir.path()), &crl, 3, &[], CRL_FRESH);
    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for_log_count(&d, RELOADED, 2).await;
    let (status, v) = fresh_login(&d, &alice).await;
    assert_eq!(status, 200, "{v}");
    drop(d);

    // client_auth = required: after the reload the new handshake itself fails.
    let dir = tempdir();
    let crl = dir.path().join("ca.crl");
    let alice = issue_with_serial(dir.path(), "pcalice", 0x8383);
    let bob = issue_with_serial(dir.path(), "pcbob", 0x8484);
    write_crl(&ca(dir.path()), &crl, 1, &[], CRL_FRESH);
    let crl_def = format!("ssl.crl_files={}", crl.display());
    let d = Daemon::start(dir.path(), &[&crl_def, "ssl.client_auth=required"]);
    let login = |c: &(PathBuf, PathBuf)| {
        let client = d.client_with(&c.0, &c.1);
        async move { post_login(&client, None).await }
    };
    assert_eq!(login(&alice).await.unwrap().status, 200);
    write_crl(&ca(dir.path()), &crl, 2, &[0x8383], CRL_FRESH);
    assert_eq!(
        login(&alice).await.unwrap().status,
        200,
        "before the reload"
    );
    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for_log_count(&d, RELOADED, 1).await;
    assert!(
        login(&alice).await.is_err(),
        "the handshake with a revoked certificate fails after the reload"
    );
    assert_eq!(login(&bob).await.unwrap().status, 200);
}
