//! Issue 10: the configurations an xGT administrator writes from the xGT security guide
//! work as written, against the real IdP, PAM and NSS.

mod common;

use std::process::Command;

use common::idp::Idp;
use common::*;
use serde_json::json;

const AUD: &str = "https://portcullis.test";

/// The OIDC block of the xGT guide for Keycloak: no `validation_mode`, no
/// introspection credentials.
fn keycloak_block(dir: &std::path::Path, idp: &Idp, mode: Option<&str>) -> std::path::PathBuf {
    let mut oidc = json!({
        "issuer": idp.url,
        "client_id": "portcullis-cli",
        "audience": AUD,
        "username_claim": "preferred_username",
        "groups_claim": "groups",
        "ca_cert": idp.ca,
    });
    if let Some(m) = mode {
        oidc["validation_mode"] = json!(m);
    }
    let path = dir.join(format!("xgt-{}.conf", mode.unwrap_or("default")));
    std::fs::write(&path, json!({"security": {"oidc": oidc}}).to_string()).unwrap();
    path
}

fn check_config(conf: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["check-config", "--dev", "-c"])
        .arg(conf)
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_keycloak_block_of_the_xgt_guide_starts_and_validates_jwts() {
    let dir = tempdir();
    let idp = Idp::start(dir.path());
    let conf = keycloak_block(dir.path(), &idp, None);
    let out = check_config(&conf);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(r#""validation_mode": "jwt""#), "{stdout}");

    let d = daemon_with_file(dir.path(), &conf.display().to_string());
    let good = idp
        .token("oidc-alice", &["pcanalysts"], Some(AUD), "RS256", 300)
        .await;
    let r = bearer(&d, &good).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["user"], "oidc-alice");
}

#[tokio::test]
async fn auto_without_introspection_starts_and_refuses_opaque_tokens_with_a_reason() {
    let dir = tempdir();
    let idp = Idp::start(dir.path());
    let conf = keycloak_block(dir.path(), &idp, Some("auto"));
    let out = check_config(&conf);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("introspection is not configured"),
        "{stderr}"
    );

    let d = daemon_with_file(dir.path(), &conf.display().to_string());
    let jwt = idp
        .token("oidc-alice", &["pcanalysts"], Some(AUD), "RS256", 300)
        .await;
    assert_eq!(
        bearer(&d, &jwt).await.status,
        200,
        "a JWT is validated locally"
    );
    let opaque = idp
        .mint(&[
            ("sub", "oidc-alice"),
            ("format", "opaque"),
            ("resource", AUD),
        ])
        .await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = bearer(&d, &opaque).await;
    assert_eq!(r.status, 401, "{:?}", r.json());
    wait_for_log(&d, "introspection_not_configured").await;
    assert!(
        d.log().contains("introspection not configured"),
        "{}",
        d.log()
    );
    assert_eq!(
        idp.requests("POST", "/token/introspection"),
        0,
        "no introspection call was attempted"
    );
}

fn daemon_with_file(dir: &std::path::Path, conf: &str) -> Daemon {
    Daemon::start_with_file(dir, conf, &[])
}

/// `pamtester SERVICE USER authenticate` with `password` on stdin: does plain PAM
/// (no portcullis) accept it?
fn pamtester_accepts(service: &str, user: &str, password: &str) -> bool {
    use std::io::Write;
    let mut child = Command::new("pamtester")
        .args([service, user, "authenticate"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("pamtester is installed by scripts/prepare-env");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    child.wait_with_output().unwrap().status.success()
}

/// Put pcgina back to "must change password" with her fixture password, so the test
/// can run again (scripts/prepare-env does the same).
fn reset_gina() {
    let mut child = Command::new("chpasswd")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "pcgina:gina-Secret-9").unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        Command::new("chage")
            .args(["-d", "0", "pcgina"])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn an_account_refused_by_acct_mgmt_is_403_and_costs_no_guess() {
    let dir = tempdir();
    // pam_listfile in the account stack answers PAM_AUTH_ERR for pcdenied.
    let d = Daemon::start(dir.path(), &["security.pam_service=portcullis-test-deny"]);
    let c = d.client(None);
    for _ in 0..7 {
        let r = password(&c, "pcdenied", "denied-Secret-10").await;
        assert_eq!(
            (r.status, r.json()["error"].clone()),
            (403, json!("account_unavailable")),
            "right password, refused account: {:?}",
            r.json()
        );
    }
    // Seven refusals with the right password burnt none of the address's guesses.
    let r = password(&c, "pcalice", "alice-Secret-1").await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let r = password(&c, "pcdenied", "wrong").await;
    assert_eq!(r.status, 401, "a wrong password is still a wrong password");
}

#[tokio::test]
async fn an_expired_password_is_changed_over_the_conversation() {
    reset_gina();
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &["security.pam_service=portcullis-test-chpw"]);
    let c = d.client(None);

    // pam_pwquality refuses short passwords (retry=3): each refusal comes back as an
    // `error` prompt before the next "New password:"; the third ends the change.
    let r = password(&c, "pcgina", "gina-Secret-9").await;
    assert_eq!(r.status, 401, "{:?}", r.json());
    let mut v = r.json();
    for round in 0..3 {
        let prompts = v["prompts"].as_array().unwrap().clone();
        let last = prompts.last().unwrap();
        assert_eq!(last["style"], "echo_off", "round {round}: {v}");
        let id = v["conversation"].as_str().unwrap().to_string();
        let r = answer(&c, &id, json!(["short"])).await;
        v = r.json();
        if round < 2 {
            assert_eq!(r.status, 401, "{v}");
            let errors: Vec<&serde_json::Value> = v["prompts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["style"] == "error")
                .collect();
            assert!(!errors.is_empty(), "pwquality's refusal is relayed: {v}");
        } else {
            assert_eq!(
                (r.status, v["error"].clone()),
                (403, json!("password_expired")),
                "{v}"
            );
        }
    }
    assert!(pamtester_accepts(
        "portcullis-test",
        "pcgina",
        "gina-Secret-9"
    ));

    // Now a good one, twice.
    let new = "Gina-new-Passphrase-2026";
    let r = password(&c, "pcgina", "gina-Secret-9").await;
    let mut v = r.json();
    let mut steps = 0;
    let session = loop {
        steps += 1;
        assert!(steps <= 3, "more prompts than new + retype: {v}");
        let id = v["conversation"]
            .as_str()
            .unwrap_or_else(|| panic!("{v}"))
            .to_string();
        let r = answer(&c, &id, json!([new])).await;
        v = r.json();
        if r.status == 200 {
            break v;
        }
        assert_eq!(r.status, 401, "{v}");
    };
    assert_eq!(session["user"], "pcgina");
    assert_eq!(strings(&session["groups"]), ["pcgina", "pcanalysts"]);
    // The new password works with plain PAM, the old one no longer does, and the next
    // login through the daemon needs no change.
    assert!(pamtester_accepts("portcullis-test", "pcgina", new));
    assert!(!pamtester_accepts(
        "portcullis-test",
        "pcgina",
        "gina-Secret-9"
    ));
    let r = password(&c, "pcgina", new).await;
    assert_eq!(r.status, 200, "{:?}", r.json());

    // The CLI answers the change prompts too (here from stdin: the current password,
    // then the new one and its repetition, one per line).
    reset_gina();
    let run = tempdir();
    let mut child = Command::new(BIN)
        .args(["login", "--user", "pcgina", "--password-stdin", "--json"])
        .env("XDG_RUNTIME_DIR", run.path())
        .env("PORTCULLIS_CA", d.ca())
        .env("PORTCULLIS_URL", &d.url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "gina-Secret-9\n{new}\n{new}").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["user"], "pcgina");
    assert!(pamtester_accepts("portcullis-test", "pcgina", new));
    reset_gina();
}

#[tokio::test]
async fn password_change_off_leaves_password_expired() {
    let dir = tempdir();
    let d = Daemon::start(
        dir.path(),
        &[
            "security.pam_service=portcullis-test-chpw",
            "security.pam_password_change=false",
        ],
    );
    let r = password(&d.client(None), "pcchange", "change-Secret-8").await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (403, json!("password_expired"))
    );
}

#[tokio::test]
async fn users_unknown_to_nss_log_in_without_groups_only_when_allowed() {
    let dir = tempdir();
    let d = Daemon::start(
        dir.path(),
        &[
            "security.pam_service=portcullis-test-permit",
            "security.default_labels=public",
        ],
    );
    let r = password(&d.client(None), "radius-only-user", "anything").await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (403, json!("account_unavailable")),
        "the default refuses users NSS does not know"
    );
    drop(d);
    let d = Daemon::start(
        dir.path(),
        &[
            "security.pam_service=portcullis-test-permit",
            "security.default_labels=public",
            "security.require_local_account=false",
        ],
    );
    let r = password(&d.client(None), "radius-only-user", "anything").await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let v = r.json();
    assert_eq!(v["user"], "radius-only-user");
    assert_eq!(strings(&v["groups"]), Vec::<String>::new());
    assert_eq!(strings(&v["labels"]), ["public"]);
    // Other mechanisms still need a local account.
    d.dev_certs(&["pcalice"]);
    assert_eq!(d.cert_login("pcalice").await["user"], "pcalice");
}

#[tokio::test]
async fn group_names_with_spaces_are_quoted_in_the_grouplabel_file() {
    let dir = tempdir();
    let idp = Idp::start(dir.path());
    let gl = dir.path().join("gl.csv");
    std::fs::write(
        &gl,
        "# SSSD/AD group names\n\"Domain Users\",public\n\"Sales EMEA\" , apple,banana\n",
    )
    .unwrap();
    let conf = keycloak_block(dir.path(), &idp, None);
    let d = Daemon::start_with_file(
        dir.path(),
        &conf.display().to_string(),
        &[&format!("security.grouplabelfile={}", gl.display())],
    );
    let t = idp
        .token(
            "oidc-alice",
            // (the test IdP takes groups comma-separated; commas in names are unit-tested)
            &["Domain Users", "Sales EMEA"],
            Some(AUD),
            "RS256",
            300,
        )
        .await;
    let r = bearer(&d, &t).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(strings(&r.json()["labels"]), ["apple", "banana", "public"]);
}
