//! Certificate logins over real mutual TLS against the real daemon, with the local
//! users and groups of scripts/prepare-env.

mod common;

use std::time::Duration;

use common::*;
use portcullis::devcerts;
use serde_json::json;

const LABELS: &str = "public\napple\nbanana\ncherry\n";
const GROUPLABELS: &str = "# group,label...\npcanalysts,apple,banana\npcops,cherry\n";

fn label_defines(dir: &std::path::Path) -> Vec<String> {
    std::fs::write(dir.join("label.csv"), LABELS).unwrap();
    std::fs::write(dir.join("grouplabel.csv"), GROUPLABELS).unwrap();
    vec![
        format!("security.labelfile={}", dir.join("label.csv").display()),
        format!(
            "security.grouplabelfile={}",
            dir.join("grouplabel.csv").display()
        ),
        "security.default_labels=public".into(),
    ]
}

fn start_with_labels(dir: &std::path::Path, extra: &[&str]) -> Daemon {
    let defs = label_defines(dir);
    let mut all: Vec<&str> = defs.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    Daemon::start(dir, &all)
}

#[tokio::test]
async fn certificate_login_returns_groups_and_labels_and_the_session_validates() {
    let dir = tempdir();
    let d = start_with_labels(dir.path(), &[]);
    d.dev_certs(&["pcalice", "pcbob", "pccarol"]);

    let reply = post_login(&d.client(Some("pcalice")), None).await.unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let v = reply.json();
    assert_eq!(v["user"], "pcalice");
    assert_eq!(v["mechanism"], "certificate");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3600);
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(strings(&v["groups"]), ["pcalice", "pcanalysts", "pcops"]);
    assert_eq!(
        strings(&v["labels"]),
        ["apple", "banana", "cherry", "public"]
    );
    let token = v["session"].as_str().unwrap();
    assert!(token.starts_with("pcs_") && token.len() == 47, "{token}");

    // Another user, other groups: labels follow the groups.
    let bob = post_login(
        &d.client(Some("pcbob")),
        Some(json!({"mechanism": "certificate"})),
    )
    .await
    .unwrap()
    .json();
    assert_eq!(strings(&bob["groups"]), ["pcbob", "pcanalysts"]);
    assert_eq!(strings(&bob["labels"]), ["apple", "banana", "public"]);
    let carol = d.cert_login("pccarol").await;
    assert_eq!(strings(&carol["labels"]), ["public"]);

    // Any client (no certificate needed) can validate the session.
    let s = get_session(&d.client(None), token).await;
    assert_eq!(s.status, 200);
    let s = s.json();
    assert_eq!(s["user"], "pcalice");
    assert_eq!(
        strings(&s["labels"]),
        ["apple", "banana", "cherry", "public"]
    );
    assert!(
        s.get("session").is_none(),
        "the token is returned once only"
    );
}

#[tokio::test]
async fn unknown_local_user_gets_403_account_unavailable() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &[]);
    d.dev_certs(&["nosuchuser-pc"]);
    let r = post_login(&d.client(Some("nosuchuser-pc")), None)
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "account_unavailable");
}

#[tokio::test]
async fn missing_and_repeated_uid_are_refused_with_401() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &[]);
    // No UID: a real CA-signed certificate with only a CN.
    let ca = ca(dir.path());
    let mut p = devcerts::client_params("pcalice");
    p.distinguished_name
        .remove(rcgen::DnType::CustomDnType(devcerts::UID_OID.to_vec()));
    let (cert, key) = ca.issue(dir.path(), "nouid", p).unwrap();
    let r = post_login(&d.client_with(&cert, &key), None).await.unwrap();
    assert_eq!(r.status, 401);
    let v = r.json();
    assert_eq!(v["error"], "authentication_failed");
    assert!(v["message"].as_str().unwrap().contains("no UID"), "{v}");

    // Two UIDs: rcgen keeps one value per type, so openssl signs this one with the dev CA.
    let key = dir.path().join("dup.key");
    let csr = dir.path().join("dup.csr");
    let cert = dir.path().join("dup.pem");
    let ext = dir.path().join("ext.cnf");
    std::fs::write(
        &ext,
        "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n",
    )
    .unwrap();
    let (ok, out) = openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            key.to_str().unwrap(),
            "-subj",
            "/UID=pcalice/UID=pcbob/CN=dup",
            "-out",
            csr.to_str().unwrap(),
        ],
        "",
    );
    assert!(ok, "{out}");
    let (ok, out) = openssl(
        &[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            dir.path().join("ca.pem").to_str().unwrap(),
            "-CAkey",
            dir.path().join("ca.key").to_str().unwrap(),
            "-set_serial",
            "4242",
            "-days",
            "1",
            "-extfile",
            ext.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
        "",
    );
    assert!(ok, "{out}");
    let r = post_login(&d.client_with(&cert, &key), None).await.unwrap();
    assert_eq!(r.status, 401);
    assert!(
        r.json()["message"].as_str().unwrap().contains("2 values"),
        "{:?}",
        r.json()
    );
}

/// With `ssl.client_auth = optional` (the dev default) a bad certificate gets a JSON 401.
async fn refused_with_401(client: &portcullis::cli::client::Client, hint: &str) {
    let r = post_login(client, None).await.unwrap();
    let v = r.json();
    assert_eq!(r.status, 401, "{v}");
    assert_eq!(v["error"], "authentication_failed");
    assert!(v["message"].as_str().unwrap().contains(hint), "{v}");
}

#[tokio::test]
async fn untrusted_expired_and_revoked_certificates_are_refused() {
    let dir = tempdir();
    let ca = ca(dir.path());
    // Revoke one certificate before the daemon starts so the CRL is loaded at startup.
    let mut revoked = devcerts::client_params("pcbob");
    revoked.serial_number = Some(rcgen::SerialNumber::from(0x5151u64));
    let (rev_cert, rev_key) = ca.issue(dir.path(), "revoked", revoked).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(5),
        next_update: now + time::Duration::days(1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from(0x5151u64),
            revocation_time: now - time::Duration::minutes(1),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(ca.issuer())
    .unwrap();
    let crl_path = dir.path().join("ca.crl");
    std::fs::write(&crl_path, crl.pem().unwrap()).unwrap();
    let crl_def = format!("ssl.crl_files={}", crl_path.display());
    let d = Daemon::start(dir.path(), &[&crl_def, "log.format=json"]);
    d.dev_certs(&["pcalice"]);

    // A valid certificate still works with the CRL loaded.
    assert_eq!(
        post_login(&d.client(Some("pcalice")), None)
            .await
            .unwrap()
            .status,
        200
    );

    refused_with_401(&d.client_with(&rev_cert, &rev_key), "has been revoked").await;

    let mut expired = devcerts::client_params("pcalice");
    expired.not_before = now - time::Duration::days(10);
    expired.not_after = now - time::Duration::days(1);
    let (cert, key) = ca.issue(dir.path(), "expired", expired).unwrap();
    refused_with_401(&d.client_with(&cert, &key), "has expired").await;

    // A certificate from another CA.
    let other = tempdir();
    dev_certs(other.path(), &["pcalice"]);
    let foreign = d.client_with(
        &other.path().join("pcalice.pem"),
        &other.path().join("pcalice.key"),
    );
    refused_with_401(&foreign, "not issued by a CA this server trusts").await;

    // Each refusal is audited as a failed certificate login with its reason.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = d.log();
    for reason in [
        "certificate_revoked",
        "certificate_expired",
        "certificate_untrusted",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("\"target\":\"audit\"") && l.contains(reason)),
            "no audit line for {reason} in:\n{log}"
        );
    }
}

#[tokio::test]
async fn sessions_expire_after_their_ttl_and_end_at_logout() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &["security.session_ttl=1"]);
    d.dev_certs(&["pcalice"]);
    let v = d.cert_login("pcalice").await;
    assert_eq!(v["expires_in"], 1);
    let token = v["session"].as_str().unwrap().to_string();
    assert_eq!(get_session(&d.client(None), &token).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = get_session(&d.client(None), &token).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "authentication_failed");
    let challenge = r.headers.get("www-authenticate").unwrap().to_str().unwrap();
    assert!(
        challenge.starts_with("Bearer") && challenge.contains("invalid_token"),
        "{challenge}"
    );
    drop(d);

    let dir = tempdir();
    let d = Daemon::start(dir.path(), &["security.session_idle_timeout=1"]);
    d.dev_certs(&["pcalice"]);
    let client = d.client(None);
    let token = d.cert_session("pcalice").await;
    assert_eq!(get_session(&client, &token).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        get_session(&client, &token).await.status,
        401,
        "idle session ended"
    );

    // Logout: 204, then the token is dead.
    let token = d.cert_session("pcalice").await;
    assert_eq!(delete_session(&client, &token).await.status, 204);
    assert_eq!(get_session(&client, &token).await.status, 401);
    let r = delete_session(&client, &token).await;
    assert_eq!(r.status, 401, "a second logout finds nothing");
}

#[tokio::test]
async fn no_credentials_and_bad_session_tokens_get_401() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &[]);
    let r = post_login(&d.client(None), None).await.unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "authentication_failed");
    let r = post_login(&d.client(None), Some(json!({"mechanism": "certificate"})))
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    for bad in ["pcs_short", "garbage", &format!("pcs_{}", "A".repeat(43))] {
        let r = get_session(&d.client(None), bad).await;
        assert_eq!(r.status, 401, "{bad}");
    }
    let r = d
        .client(None)
        .request(hyper::Method::GET, "/v1/session", &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.headers.get("www-authenticate").unwrap(),
        "Bearer realm=\"portcullis\""
    );
}

#[tokio::test]
async fn curl_logs_in_with_the_documented_command() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &[]);
    d.dev_certs(&["pcalice"]);
    let p = |f: &str| dir.path().join(f).display().to_string();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--fail-with-body",
            "--cacert",
            &p("ca.pem"),
            "--cert",
            &p("pcalice.pem"),
        ])
        .args([
            "--key",
            &p("pcalice.key"),
            "-X",
            "POST",
            &format!("{}/v1/login", d.url),
        ])
        .output()
        .expect("curl is installed by scripts/test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["user"], "pcalice");
    assert_eq!(strings(&v["groups"]), ["pcalice", "pcanalysts", "pcops"]);
}

#[tokio::test]
async fn with_client_auth_required_bad_certificates_fail_the_handshake() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &["ssl.client_auth=required"]);
    d.dev_certs(&["pcalice"]);
    assert_eq!(
        post_login(&d.client(Some("pcalice")), None)
            .await
            .unwrap()
            .status,
        200
    );
    // No certificate at all: no HTTP is served.
    assert!(post_login(&d.client(None), None).await.is_err());
    // A certificate from another CA: the handshake is refused.
    let other = tempdir();
    dev_certs(other.path(), &["pcalice"]);
    let foreign = d.client_with(
        &other.path().join("pcalice.pem"),
        &other.path().join("pcalice.key"),
    );
    assert!(post_login(&foreign, None).await.is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(d.log().contains("certificate_untrusted"), "{}", d.log());
}

fn audit_reasons(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("\"target\":\"audit\""))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["reason"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_on_a_kept_alive_connection_after_sighup() {
    let dir = tempdir();
    let crl = dir.path().join("ca.crl");
    let (cert, key) = issue_with_serial(dir.path(), "pcalice", 0x7171);
    write_crl(&ca(dir.path()), &crl, 1, &[], CRL_FRESH);
    let crl_def = format!("ssl.crl_files={}", crl.display());
    let d = Daemon::start(
        dir.path(),
        &[
            &crl_def,
            "log.format=json",
            "security.max_failed_attempts=0",
        ],
    );
    let mut conn = KeepAlive::connect_as(&d, Some((&cert, &key))).await;
    let (status, v) = conn.post_login().await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["user"], "pcalice");

    write_crl(&ca(dir.path()), &crl, 2, &[0x7171], CRL_FRESH);
    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for_log(&d, "reloaded TLS certificates and CRLs").await;

    // The same connection, opened before the revocation.
    let (status, v) = conn.post_login().await.unwrap();
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["error"], "authentication_failed");
    assert!(v["message"].as_str().unwrap().contains("revoked"), "{v}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        audit_reasons(&d.log()).contains(&"certificate_revoked".to_string()),
        "{}",
        d.log()
    );

    // Same under client_auth = required: the handshake verdict is not the login's.
    drop(d);
    let dir = tempdir();
    let crl = dir.path().join("ca.crl");
    let (cert, key) = issue_with_serial(dir.path(), "pcalice", 0x7272);
    write_crl(&ca(dir.path()), &crl, 1, &[], CRL_FRESH);
    let crl_def = format!("ssl.crl_files={}", crl.display());
    let d = Daemon::start(dir.path(), &[&crl_def, "ssl.client_auth=required"]);
    let mut conn = KeepAlive::connect_as(&d, Some((&cert, &key))).await;
    assert_eq!(conn.post_login().await.unwrap().0, 200);
    write_crl(&ca(dir.path()), &crl, 2, &[0x7272], CRL_FRESH);
    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for_log(&d, "reloaded TLS certificates and CRLs").await;
    let (status, v) = conn.post_login().await.unwrap();
    assert_eq!(status, 401, "{v}");
}

#[tokio::test]
async fn an_expired_crl_refuses_certificate_logins_unless_allowed() {
    let dir = tempdir();
    let crl = dir.path().join("stale.crl");
    write_crl(&ca(dir.path()), &crl, 1, &[], CRL_EXPIRED);
    let crl_def = format!("ssl.crl_files={}", crl.display());
    let d = Daemon::start(
        dir.path(),
        &[
            &crl_def,
            "log.format=json",
            "security.max_failed_attempts=0",
        ],
    );
    d.dev_certs(&["pcalice"]);
    for _ in 0..3 {
        let r = post_login(&d.client(Some("pcalice")), None).await.unwrap();
        let v = r.json();
        assert_eq!(r.status, 401, "{v}");
        assert_eq!(v["error"], "authentication_failed");
        assert!(v["message"].as_str().unwrap().contains("CRL"), "{v}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = d.log();
    assert_eq!(
        audit_reasons(&log)
            .iter()
            .filter(|r| *r == "crl_expired")
            .count(),
        3,
        "{log}"
    );
    // One error per minute names the CRL file, however many logins it refuses.
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\"") && l.contains("nextUpdate"))
        .filter(|l| l.contains("stale.crl") && l.contains("crl_expired"))
        .collect();
    assert!(!errors.is_empty(), "no error naming the CRL in:\n{log}");
    assert!(errors.len() <= 2, "{errors:?}");

    // Allowed: the stale CRL is still used for revocation, logins work.
    drop(d);
    let d = Daemon::start(dir.path(), &[&crl_def, "ssl.crl_allow_expired=true"]);
    let r = post_login(&d.client(Some("pcalice")), None).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);

    // client_auth = required: the handshake fails, audited as crl_expired.
    drop(d);
    let d = Daemon::start(
        dir.path(),
        &[&crl_def, "ssl.client_auth=required", "log.format=json"],
    );
    assert!(post_login(&d.client(Some("pcalice")), None).await.is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        audit_reasons(&d.log()).contains(&"crl_expired".to_string()),
        "{}",
        d.log()
    );
}

#[tokio::test]
async fn email_addresses_log_in_only_from_the_listed_domains() {
    let dir = tempdir();
    let d = Daemon::start(
        dir.path(),
        &[
            "security.pki_user_field=email",
            "security.pki_email_domains=example.com",
            "security.max_failed_attempts=0",
        ],
    );
    let with_email = |stem: &str, email: &str| {
        let mut p = devcerts::client_params("pcbob");
        p.subject_alt_names
            .push(rcgen::SanType::Rfc822Name(email.try_into().unwrap()));
        ca(dir.path()).issue(dir.path(), stem, p).unwrap()
    };
    let (cert, key) = with_email("listed", "pcalice@Example.COM");
    let r = post_login(&d.client_with(&cert, &key), None).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["user"], "pcalice");

    let (cert, key) = with_email("foreign", "pcalice@example.org");
    let r = post_login(&d.client_with(&cert, &key), None).await.unwrap();
    let v = r.json();
    assert_eq!(r.status, 403, "{v}");
    assert_eq!(v["error"], "account_unavailable");
    assert!(
        v["message"].as_str().unwrap().contains("example.org"),
        "{v}"
    );

    // A subdomain is another domain.
    let (cert, key) = with_email("sub", "pcalice@mail.example.com");
    let r = post_login(&d.client_with(&cert, &key), None).await.unwrap();
    assert_eq!(r.status, 403);
}
