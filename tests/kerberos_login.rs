//! Kerberos logins against a real MIT KDC (started by scripts/test through
//! scripts/kdc; its KRB5_CONFIG and directory come from the environment).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::krb::*;
use common::*;
use serde_json::json;

fn cli_login(d: &Daemon, cache: &str, run: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .args(["login", "--kerberos", "--server", &url(d), "--ca"])
        .arg(d.ca())
        .args(extra)
        .env("KRB5CCNAME", cache)
        .env("XDG_RUNTIME_DIR", run)
        .output()
        .unwrap()
}

#[tokio::test]
async fn kinit_then_curl_negotiate_gets_a_session_with_groups_and_labels() {
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
    let d = start(dir.path(), &[&gl]);
    let cache = kinit(dir.path(), "pcalice", "alice-Secret-1");
    let (v, trace) = curl_negotiate(&d, &cache);
    assert_eq!(v["user"], "pcalice", "{v}\n{trace}");
    assert_eq!(v["mechanism"], "kerberos");
    assert_eq!(strings(&v["groups"]), ["pcalice", "pcanalysts", "pcops"]);
    assert_eq!(strings(&v["labels"]), ["apple", "cherry"]);
    // The answer carries the acceptor's token for mutual authentication.
    assert!(
        trace.lines().any(|l| l
            .to_ascii_lowercase()
            .starts_with("< www-authenticate: negotiate ")
            && l.len() > 40),
        "no mutual-authentication token in:\n{trace}"
    );
}

#[tokio::test]
async fn the_cli_logs_in_with_kerberos_and_checks_the_server() {
    let dir = tempdir();
    let run = tempdir();
    let d = start(dir.path(), &[]);
    let cache = kinit(dir.path(), "pcbob", "bob-Secret-2");
    let o = cli_login(&d, &cache, run.path(), &["--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["user"], "pcbob");
    // A raw krb5 token (no SPNEGO wrapper) is accepted too.
    let o = cli_login(&d, &cache, run.path(), &["--kerberos-mech", "krb5"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // No ticket at all: refused on the client side, exit 1.
    let empty = format!("FILE:{}/cc-empty", dir.path().display());
    let o = cli_login(&d, &empty, run.path(), &[]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[tokio::test]
async fn a_replayed_token_is_refused() {
    let dir = tempdir();
    let d = start(dir.path(), &[]);
    let cache = kinit(dir.path(), "pcalice", "alice-Secret-1");
    let (v, trace) = curl_negotiate(&d, &cache);
    assert_eq!(v["user"], "pcalice");
    let header = trace
        .lines()
        .find_map(|l| l.strip_prefix("> Authorization: "))
        .expect("curl -v shows the Authorization header")
        .trim()
        .to_string();
    let r = d
        .client(None)
        .request(
            hyper::Method::POST,
            "/v1/login",
            &[("authorization", &header)],
            None,
        )
        .await
        .unwrap();
    let v = r.json();
    assert_eq!(r.status, 401, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("already used"),
        "{v}"
    );
}

#[tokio::test]
async fn foreign_realm_instance_and_unknown_principals_are_403() {
    let dir = tempdir();
    let d = start(dir.path(), &[]);
    for (principal, password, hint) in [
        ("pcalice@OTHER.TEST", "foreign-Secret-1", "realm OTHER.TEST"),
        ("pcalice/admin", "admin-Secret-9", "instance principal"),
        ("nosuchuser-pc", "nope-Secret-0", "no local account"),
    ] {
        let cache = kinit(dir.path(), principal, password);
        let (v, trace) = curl_negotiate(&d, &cache);
        assert_eq!(
            v["error"], "account_unavailable",
            "{principal}: {v}\n{trace}"
        );
        assert!(
            v["message"].as_str().unwrap().contains(hint),
            "{principal}: {v}"
        );
    }
    // An explicitly allowed foreign realm logs in.
    drop(d);
    let dir2 = tempdir();
    let d = start(
        dir2.path(),
        &["security.krb_realms=PORTCULLIS.TEST,OTHER.TEST"],
    );
    let cache = kinit(dir2.path(), "pcalice@OTHER.TEST", "foreign-Secret-1");
    let (v, _) = curl_negotiate(&d, &cache);
    assert_eq!(v["user"], "pcalice");
}

#[tokio::test]
async fn a_ticket_for_a_service_not_in_the_keytab_is_refused() {
    let dir = tempdir();
    let run = tempdir();
    let d = start(dir.path(), &[]);
    let cache = kinit(dir.path(), "pcalice", "alice-Secret-1");
    let o = cli_login(&d, &cache, run.path(), &["--spn", "HTTP/other.test"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("service principal or key version this server does not have"),
        "{err}"
    );
    // With a principal pinned, a ticket for another key in the keytab is refused too.
    drop(d);
    let dir2 = tempdir();
    let d = start(
        dir2.path(),
        &["security.server_krb_principal=HTTP/localhost@PORTCULLIS.TEST"],
    );
    let o = cli_login(&d, &cache, run.path(), &["--spn", "HTTP/127.0.0.1"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = cli_login(&d, &cache, run.path(), &[]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[tokio::test]
async fn no_token_advertises_negotiate_and_garbage_is_400() {
    let dir = tempdir();
    let d = start(dir.path(), &[]);
    let r = post_login(&d.client(None), None).await.unwrap();
    assert_eq!(r.status, 401);
    let schemes: Vec<_> = r
        .headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(schemes.contains(&"Negotiate".to_string()), "{schemes:?}");
    for blob in [
        "Negotiate YWJjZGVm",
        "Negotiate oYIBADCB/aADCgEBoQsGCSqGSIb3EgECAqKB6ASB5WCB4gYJKoZIhvcSAQICAQBu",
    ] {
        let r = d
            .client(None)
            .request(
                hyper::Method::POST,
                "/v1/login",
                &[("authorization", blob)],
                None,
            )
            .await
            .unwrap();
        assert!(r.status == 400 || r.status == 401, "{blob}: {}", r.status);
        assert_ne!(r.json()["error"], json!(null));
    }
    assert!(
        d.client(None)
            .request(hyper::Method::GET, "/healthz", &[], None)
            .await
            .unwrap()
            .status
            == 200
    );
    let cache = kinit(dir.path(), "pcalice", "alice-Secret-1");
    assert_eq!(curl_negotiate(&d, &cache).0["user"], "pcalice");
}

#[test]
fn a_missing_keytab_stops_startup_naming_the_file_and_user() {
    let dir = tempdir();
    let _ = kdc_dir();
    let missing = format!(
        "security.krb_keytab=FILE:{}/nope.keytab",
        dir.path().display()
    );
    let err = match Daemon::try_start(dir.path(), &["security.use_kerberos=true", &missing]) {
        Ok(_) => panic!("started without a keytab"),
        Err(e) => e,
    };
    assert!(err.contains("exit code Some(2)"), "{err}");
    assert!(
        err.contains("nope.keytab") && err.contains("as user root"),
        "{err}"
    );
}

#[tokio::test]
async fn clock_skew_is_named_in_the_refusal() {
    let dir = tempdir();
    let run = tempdir();
    let d = start(dir.path(), &[]);
    let cache = kinit(dir.path(), "pcalice", "alice-Secret-1");
    // A first login puts the service ticket in the cache, so the skewed client below
    // does not need the KDC (which would refuse it for the same reason).
    assert_eq!(
        cli_login(&d, &cache, run.path(), &[]).status.code(),
        Some(0)
    );
    // The client's clock 10 minutes ahead (libfaketime): its authenticator is stale.
    let o = Command::new("faketime")
        .args([
            "-f",
            "+10m",
            BIN,
            "login",
            "--kerberos",
            "--server",
            &url(&d),
            "--ca",
        ])
        .arg(d.ca())
        .env("KRB5CCNAME", &cache)
        .env("XDG_RUNTIME_DIR", run.path())
        .output()
        .expect("faketime is installed by scripts/prepare-env");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("clocks of the client and the server differ"),
        "{err}"
    );
}

/// Run one `kadmin.local` query against the test realm; its stdout and stderr.
fn kadmin(query: &str) -> String {
    let out = Command::new("/usr/sbin/kadmin.local")
        .args(["-r", "PORTCULLIS.TEST", "-q", query])
        .output()
        .expect("kadmin.local is installed by scripts/prepare-env");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Add a random-key principal to the test KDC (not to any keytab); idempotent.
fn add_principal(name: &str) {
    let text = kadmin(&format!("addprinc -randkey \"{name}\""));
    assert!(
        text.contains("created") || text.contains("already exists"),
        "kadmin.local addprinc {name}: {text}"
    );
}

/// The failing part of a ticket is never read from text the client chose: the MIT
/// message for a ticket the keytab cannot decrypt quotes the service name, and a name
/// like "replay cache" once made it a server-side 503 with an ERROR in the log.
#[tokio::test]
async fn a_ticket_for_a_service_named_like_a_server_error_is_a_401_without_error_log() {
    let dir = tempdir();
    let run = tempdir();
    add_principal("HTTP/replay cache");
    add_principal("HTTP/Key table file");
    let d = start(
        dir.path(),
        &["log.format=json", "security.max_failed_attempts=0"],
    );
    let cache = kinit(dir.path(), "pcalice", "alice-Secret-1");
    for spn in [
        "HTTP/replay cache@PORTCULLIS.TEST",
        "HTTP/Key table file@PORTCULLIS.TEST",
    ] {
        for mech in ["spnego", "krb5"] {
            let o = cli_login(
                &d,
                &cache,
                run.path(),
                &["--spn", spn, "--kerberos-mech", mech],
            );
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{spn} {mech}: {err}");
            assert!(
                err.contains("401") && err.contains("service principal or key version"),
                "{spn} {mech}: {err}"
            );
        }
    }
    // The daemon still works for a real ticket.
    let o = cli_login(&d, &cache, run.path(), &[]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = d.log();
    assert!(
        !log.lines().any(|l| l.contains("\"level\":\"ERROR\"")),
        "an ERROR was logged for a client's ticket:\n{log}"
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("\"target\":\"audit\"") && l.contains("wrong_service_key"))
            .count(),
        4,
        "{log}"
    );
}

/// `kadmin.local ktadd` into `keytab`: a new random key (the next kvno) for `name`,
/// appended to the file, as an operator rotates a service key.
fn ktadd(name: &str, keytab: &Path) {
    let text = kadmin(&format!("ktadd -k {} \"{name}\"", keytab.display()));
    assert!(text.contains("added to keytab"), "ktadd {name}: {text}");
}

/// The acceptor threads keep a credential for the keytab, but not its keys: a key
/// rotated in while the daemon runs is used for the next login, and a keytab that
/// goes away is refused at once and works again with the file — no restart.
#[tokio::test]
async fn a_rotated_or_removed_keytab_takes_effect_without_a_restart() {
    let dir = tempdir();
    let run = tempdir();
    let principal = "HTTP/rotate.test";
    add_principal(principal);
    let keytab = dir.path().join("rotate.keytab");
    ktadd(principal, &keytab);
    let setting = format!("security.krb_keytab=FILE:{}", keytab.display());
    let d = start(dir.path(), &[&setting]);
    let login = |cache: &str| cli_login(&d, cache, run.path(), &["--spn", principal]);
    let logs_in = |cache: &str, what: &str| {
        let o = login(cache);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{what}: {err}");
    };
    let first = tempdir();
    let cache = kinit(first.path(), "pcalice", "alice-Secret-1");
    logs_in(&cache, "the first key");

    // Rotation: a new kvno in the KDC and appended to the keytab; a fresh ticket is
    // for the new key.
    ktadd(principal, &keytab);
    let second = tempdir();
    let cache = kinit(second.path(), "pcalice", "alice-Secret-1");
    logs_in(&cache, "a ticket for the rotated key");

    // The keytab moved away: refused at once (as with MIT's default credential,
    // which reports the missing file as a missing key: a 401), and back with the file.
    let aside = dir.path().join("rotate.keytab.aside");
    std::fs::rename(&keytab, &aside).unwrap();
    let o = login(&cache);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("does not have"), "{err}");
    std::fs::rename(&aside, &keytab).unwrap();
    logs_in(&cache, "the keytab back");
}
