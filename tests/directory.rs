//! SPEC §13 against a real directory: OpenLDAP slapd with the ppolicy overlay and
//! SSSD (`id_provider = ldap`, `case_sensitive = false`) behind NSS `sss` and
//! `pam_sss`, all started by scripts/ldap (scripts/test runs it and exports
//! PORTCULLIS_TEST_LDAP_*). The users exist only in LDAP.
//!
//! The tests take turns: one of them stops the directory.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

static DIRECTORY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run scripts/test (it starts the test directory with scripts/ldap)"
        )
    })
}

/// `scripts/ldap <command> DIR [args]`: stop/start slapd, expire SSSD's cache, lock.
fn ldap(command: &str, args: &[&str]) {
    let out = Command::new(env("PORTCULLIS_TEST_LDAP_SCRIPT"))
        .arg(command)
        .arg(env("PORTCULLIS_TEST_LDAP_DIR"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/ldap {command}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn daemon(dir: &std::path::Path, extra: &[&str]) -> Daemon {
    std::fs::write(
        dir.join("gl.csv"),
        "# LDAP groups, as SSSD names them (case_sensitive = false: lower case)\n\"domain analysts\",apple\nldapops,banana\n",
    )
    .unwrap();
    let gl = format!("security.grouplabelfile={}", dir.join("gl.csv").display());
    let pam = format!(
        "security.pam_service={}",
        env("PORTCULLIS_TEST_LDAP_PAM_SERVICE")
    );
    let mut defines = vec![gl.as_str(), pam.as_str()];
    defines.extend_from_slice(extra);
    Daemon::start(dir, &defines)
}

const PASSWORD: &str = "ldap-Secret-11";

#[tokio::test]
async fn ldap_users_log_in_under_their_own_name_with_their_ldap_groups_and_labels() {
    let _turn = DIRECTORY.lock().await;
    let dir = tempdir();
    let d = daemon(dir.path(), &[]);
    let c = d.client(None);
    for given in ["pcldap", "PCLDAP", "Pcldap", "pcldap@example.test"] {
        let r = password(&c, given, PASSWORD).await;
        assert_eq!(r.status, 200, "{given}: {:?}", r.json());
        let v = r.json();
        assert_eq!(v["user"], "pcldap", "{given}");
        let groups = strings(&v["groups"]);
        assert!(
            groups.contains(&"domain analysts".to_string())
                && groups.contains(&"ldapops".to_string()),
            "{given}: {groups:?}"
        );
        assert_eq!(strings(&v["labels"]), ["apple", "banana"], "{given}");
        let token = v["session"].as_str().unwrap();
        assert_eq!(get_session(&c, token).await.json()["user"], "pcldap");
    }
    wait_for_log(&d, "given=\"PCLDAP\"").await;
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains("given=\"pcldap@example.test\"") && l.contains("user=\"pcldap\"")),
        "the audit line names both: {log}"
    );

    let r = password(&c, "pcldap", "wrong-password").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "authentication_failed");

    // The operator sees the same account.
    let out = Command::new(BIN)
        .args(["admin", "explain", "PCLDAP", "--json", "--socket"])
        .arg(d.dir.join("admin.sock"))
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let text = v.to_string();
    assert!(
        text.contains("\"pcldap\"") && text.contains("domain analysts"),
        "{text}"
    );
}

#[tokio::test]
async fn spellings_of_one_ldap_user_share_one_guess_budget() {
    let _turn = DIRECTORY.lock().await;
    let dir = tempdir();
    let d = daemon(dir.path(), &["security.max_failed_attempts=2"]);
    let c = d.client(None);
    assert_eq!(password(&c, "PCLDAP", "wrong-1").await.status, 401);
    assert_eq!(
        password(&c, "pcldap@example.test", "wrong-2").await.status,
        401
    );
    let r = password(&c, "Pcldap", PASSWORD).await;
    assert_eq!(r.status, 429, "{:?}", r.json());
}

#[tokio::test]
async fn a_locked_ldap_account_never_gets_a_session() {
    let _turn = DIRECTORY.lock().await;
    let dir = tempdir();
    let d = daemon(dir.path(), &[]);
    ldap("lock", &["pclocked2"]);
    let r = password(&d.client(None), "pclocked2", "locked2-Secret-13").await;
    ldap("unlock", &["pclocked2"]);
    assert!(
        r.status == 401 || r.status == 403,
        "locked by ppolicy: {} {:?}",
        r.status,
        r.json()
    );
    assert!(r.json().get("session").is_none());
}

#[tokio::test]
async fn a_certificate_naming_the_user_in_capitals_maps_to_the_ldap_account() {
    let _turn = DIRECTORY.lock().await;
    let dir = tempdir();
    let d = daemon(dir.path(), &[]);
    d.dev_certs(&["PCLDAP"]);
    let v = d.cert_login("PCLDAP").await;
    assert_eq!(v["user"], "pcldap", "{v}");
    assert!(strings(&v["groups"]).contains(&"ldapops".to_string()));
}

#[tokio::test]
async fn a_directory_that_is_down_is_503_never_401_and_logins_come_back() {
    let _turn = DIRECTORY.lock().await;
    let dir = tempdir();
    let d = daemon(dir.path(), &["security.group_cache_ttl=0"]);
    let c = d.client(None);
    assert_eq!(password(&c, "pcldap", PASSWORD).await.status, 200);

    ldap("slapd-stop", &[]);
    ldap("expire", &[]);
    for pass in [PASSWORD, "wrong-password"] {
        let r = password(&c, "pcldap", pass).await;
        if r.status != 503 {
            ldap("slapd-start", &[]);
        }
        assert_eq!(r.status, 503, "{pass}: {:?}", r.json());
        assert_eq!(r.json()["error"], "dependency_unavailable");
    }
    ldap("slapd-start", &[]);
    let started = Instant::now();
    loop {
        let r = password(&c, "pcldap", PASSWORD).await;
        if r.status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "logins did not come back: {} {:?}",
            r.status,
            r.json()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("logins back {:?} after slapd started", started.elapsed());
}

#[tokio::test]
async fn a_kerberos_principal_and_a_fully_qualified_name_map_to_the_ldap_account() {
    let _turn = DIRECTORY.lock().await;
    // A principal in capitals for the LDAP-only user, in the test KDC.
    let out = Command::new("/usr/sbin/kadmin.local")
        .args([
            "-r",
            "PORTCULLIS.TEST",
            "-q",
            "addprinc -pw Krb-Secret-77 PCLDAP",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempdir();
    std::fs::write(dir.path().join("gl.csv"), "ldapops,banana\n").unwrap();
    let gl = format!(
        "security.grouplabelfile={}",
        dir.path().join("gl.csv").display()
    );
    let d = common::krb::start(dir.path(), &[&gl]);
    let cache = common::krb::kinit(dir.path(), "PCLDAP@PORTCULLIS.TEST", "Krb-Secret-77");
    let (body, log) = common::krb::curl_negotiate(&d, &cache);
    assert_eq!(body["user"], "pcldap", "{body} {log}");
    assert_eq!(strings(&body["labels"]), ["banana"]);

    // SSSD's second domain answers fully qualified names as they are.
    let fq = tempdir();
    let d = daemon(fq.path(), &[]);
    let r = password(&d.client(None), "pcldap@fq.example.test", PASSWORD).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["user"], "pcldap@fq.example.test");
}
