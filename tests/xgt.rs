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

async fn bearer(d: &Daemon, token: &str) -> portcullis::cli::client::Reply {
    let auth = format!("Bearer {token}");
    d.client(None)
        .request(
            hyper::Method::POST,
            "/v1/login",
            &[("authorization", &auth)],
            None,
        )
        .await
        .unwrap()
}
