//! SPEC §12: the policy front. A real nginx (`auth_request`) and a real Caddy
//! (`forward_auth`) in front of a backend that echoes the headers it receives,
//! configured as the README says, with ARLAS-style rules.

mod common;

use std::path::Path;
use std::process::Command;

use common::echo::{Echo, received};
use common::nginx::Nginx;
use common::*;
use serde_json::Value;

/// `GET /v1/authorize` with these headers, as a proxy asks, from a client without a
/// certificate.
async fn authorize(d: &Daemon, headers: &[(&str, &str)]) -> portcullis::cli::client::Reply {
    d.client(None)
        .request(hyper::Method::GET, "/v1/authorize", headers, None)
        .await
        .unwrap()
}

const RULES: &str = "\
# ARLAS-style permissions, per group or label
pcanalysts: r:/api/.*:GET,HEAD
pcops: rule:/api/admin/.*:*
pcanalysts: h:arlas-org-filter:h:org1:analysts
pcops: header:arlas-org-filter:h:org1:ops
";

fn daemon(dir: &Path, extra: &[&str]) -> Daemon {
    std::fs::write(dir.join("rules"), RULES).unwrap();
    let rules = format!("forward.rules_file={}", dir.join("rules").display());
    let mut defines = vec![
        rules.as_str(),
        "forward.public_uris=/swagger.*:*",
        "security.pam_service=portcullis-test",
    ];
    defines.extend_from_slice(extra);
    let d = Daemon::start(dir, &defines);
    d.dev_certs(&["pcalice", "pcbob"]);
    d
}

/// `curl` through the front: status, the backend's echo (Null if none), headers.
fn curl(port: u16, method: &str, path: &str, headers: &[&str]) -> (u16, Value, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-D", "-", "-X", method]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(format!("http://127.0.0.1:{port}{path}"));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::Null),
        head.to_string(),
    )
}

/// Every spelling a client might use to smuggle an identity header.
const SMUGGLED: [&str; 6] = [
    "X-Forwarded-User: root",
    "x-forwarded-user: root",
    "X_Forwarded_User: root",
    "X-FORWARDED-USER: root, admin",
    "arlas-org-filter: h:org1:everything",
    "X-Forwarded-Groups: wheel",
];

#[tokio::test]
async fn nginx_auth_request_enforces_the_rules_and_owns_the_identity_headers() {
    let dir = tempdir();
    let d = daemon(dir.path(), &[]);
    let backend = Echo::start();
    let nginx = Nginx::start(&common::nginx::portcullis_site(
        d.port,
        &d.ca(),
        backend.port,
        "https://auth.example/login",
        None,
    ));
    let alice = format!(
        "Cookie: portcullis_session={}",
        d.cert_session("pcalice").await
    );
    let bob = format!("Authorization: Bearer {}", d.cert_session("pcbob").await);

    // No identity: 401 for an API client, to the login page for a browser.
    let (status, echo, _) = curl(nginx.port, "GET", "/api/x", &[]);
    assert_eq!(status, 401);
    assert_eq!(echo, Value::Null, "the backend was not called");
    let (status, _, head) = curl(nginx.port, "GET", "/api/x?q=1", &["Accept: text/html"]);
    assert_eq!(status, 302);
    assert!(head.contains("/login?rd=http://127.0.0.1:"), "{head}");

    // Public: anonymous, whatever the client claims.
    let mut hostile = vec![];
    hostile.extend_from_slice(&SMUGGLED);
    let (status, echo, _) = curl(nginx.port, "GET", "/swagger.json", &hostile);
    assert_eq!(status, 200);
    assert_eq!(received(&echo, "x-forwarded-user"), ["anonymous"]);
    assert!(received(&echo, "x_forwarded_user").is_empty());
    assert!(received(&echo, "arlas-org-filter").is_empty(), "{echo}");
    assert!(received(&echo, "x-forwarded-groups").is_empty(), "{echo}");

    // alice (pcanalysts, pcops): allowed, headers from the rules merged.
    let mut with = vec![alice.as_str()];
    with.extend_from_slice(&SMUGGLED);
    let (status, echo, _) = curl(nginx.port, "DELETE", "/api/admin/7", &with);
    assert_eq!(status, 200, "{echo}");
    assert_eq!(received(&echo, "x-forwarded-user"), ["pcalice"]);
    assert_eq!(
        received(&echo, "x-forwarded-groups"),
        ["pcalice,pcanalysts,pcops"]
    );
    assert_eq!(
        received(&echo, "arlas-org-filter"),
        ["h:org1:analysts,h:org1:ops"]
    );
    assert!(received(&echo, "x_forwarded_user").is_empty());
    assert_eq!(echo["method"], "DELETE");

    // bob (pcanalysts): GET yes, POST and admin writes no.
    let mut with = vec![bob.as_str()];
    with.extend_from_slice(&SMUGGLED);
    let (status, echo, _) = curl(nginx.port, "GET", "/api/reports?x=1", &with);
    assert_eq!(status, 200);
    assert_eq!(received(&echo, "x-forwarded-user"), ["pcbob"]);
    assert_eq!(received(&echo, "arlas-org-filter"), ["h:org1:analysts"]);
    for (method, path) in [
        ("POST", "/api/reports"),
        ("DELETE", "/api/admin/7"),
        ("GET", "/other"),
    ] {
        let (status, echo, _) = curl(nginx.port, method, path, &[&bob]);
        assert_eq!(status, 403, "{method} {path}");
        assert_eq!(echo, Value::Null);
    }

    // A logged-out session is refused at the next request.
    let bob_token = bob.trim_start_matches("Authorization: Bearer ");
    assert_eq!(delete_session(&d.client(None), bob_token).await.status, 204);
    assert_eq!(curl(nginx.port, "GET", "/api/x", &[&bob]).0, 401);
    // Garbage and forged credentials.
    for h in [
        "Cookie: portcullis_session=pcs_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "Authorization: Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJyb290In0.",
        "Authorization: Basic cm9vdDpyb290",
    ] {
        assert_eq!(curl(nginx.port, "GET", "/api/x", &[h]).0, 401, "{h}");
    }
    wait_for_log(&d, "event=\"authorize\"").await;
    let log = d.log();
    assert!(log.contains("reason=\"no_matching_rule\"") && log.contains("status=403"));
}

#[tokio::test]
async fn the_original_request_is_believed_only_from_trusted_proxies() {
    let dir = tempdir();
    let d = daemon(dir.path(), &["security.trusted_proxies=10.0.0.0/8"]);
    let c = d.client(None);
    let ask = |headers: Vec<(&'static str, &'static str)>| {
        let c = &c;
        async move {
            c.request(hyper::Method::GET, "/v1/authorize", &headers, None)
                .await
                .unwrap()
        }
    };
    // From 127.0.0.1, not a trusted proxy: the claimed public URI is not believed.
    let r = ask(vec![
        ("x-original-uri", "/swagger.json"),
        ("x-original-method", "GET"),
    ])
    .await;
    assert_eq!(r.status, 401);
    let r = ask(vec![
        ("x-forwarded-uri", "/swagger.json"),
        ("x-forwarded-method", "GET"),
    ])
    .await;
    assert_eq!(r.status, 401);

    // Trusted (the default, loopback): a forward-auth browser gets the redirect itself.
    let dir2 = tempdir();
    let d2 = daemon(dir2.path(), &["forward.public_url=https://auth.example"]);
    let r = authorize(
        &d2,
        &[
            ("x-forwarded-uri", "/api/x?y=1"),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-host", "app.example"),
            ("x-forwarded-proto", "https"),
            ("accept", "text/html,application/xhtml+xml"),
        ],
    )
    .await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.headers.get("location").unwrap().to_str().unwrap(),
        "https://auth.example/login?rd=https%3A%2F%2Fapp.example%2Fapi%2Fx%3Fy%3D1"
    );
}

/// The README's Caddy site: the client's identity headers removed first, then
/// `forward_auth` copies ours, then the backend (in this order: `route`).
fn caddy_site(d: &Daemon, backend: u16) -> String {
    format!(
        "\troute {{\n\
         \t\trequest_header -X-Forwarded-User\n\
         \t\trequest_header -X-Forwarded-Groups\n\
         \t\trequest_header -X-Forwarded-Labels\n\
         \t\trequest_header -arlas-org-filter\n\
         \t\trequest_header -X_Forwarded_*\n\
         \t\trequest_header -Arlas_Org_Filter\n\
         \t\tforward_auth https://127.0.0.1:{dport} {{\n\
         \t\t\turi /v1/authorize\n\
         \t\t\tcopy_headers X-Forwarded-User X-Forwarded-Groups X-Forwarded-Labels arlas-org-filter\n\
         \t\t\ttransport http {{\n\
         \t\t\t\ttls_trusted_ca_certs {ca}\n\
         \t\t\t\ttls_server_name localhost\n\
         \t\t\t}}\n\
         \t\t}}\n\
         \t\treverse_proxy 127.0.0.1:{backend}\n\
         \t}}",
        dport = d.port,
        ca = d.ca().display(),
    )
}

#[tokio::test]
async fn caddy_forward_auth_enforces_the_rules_and_owns_the_identity_headers() {
    let dir = tempdir();
    let d = daemon(dir.path(), &["forward.public_url=https://auth.example"]);
    let backend = Echo::start();
    let caddy = common::caddy::Caddy::start(&caddy_site(&d, backend.port));
    let alice = format!(
        "Cookie: portcullis_session={}",
        d.cert_session("pcalice").await
    );
    let bob = format!("Authorization: Bearer {}", d.cert_session("pcbob").await);

    let (status, echo, _) = curl(caddy.port, "GET", "/api/x", &[]);
    assert_eq!(status, 401, "{}", caddy.log());
    assert_eq!(echo, Value::Null);
    let (status, _, head) = curl(caddy.port, "GET", "/api/x?q=1", &["Accept: text/html"]);
    assert_eq!(status, 302, "{head}");
    assert!(
        head.contains("location: https://auth.example/login?rd=http%3A%2F%2F127.0.0.1%3A")
            || head.contains("Location: https://auth.example/login?rd=http%3A%2F%2F127.0.0.1%3A"),
        "{head}"
    );

    let (status, echo, _) = curl(caddy.port, "GET", "/swagger.json", &SMUGGLED);
    assert_eq!(status, 200);
    assert_eq!(received(&echo, "x-forwarded-user"), ["anonymous"], "{echo}");
    assert!(
        received(&echo, "arlas-org-filter")
            .iter()
            .all(|v| v.is_empty()),
        "{echo}"
    );
    assert!(
        received(&echo, "x-forwarded-groups")
            .iter()
            .all(|v| v.is_empty()),
        "{echo}"
    );
    assert!(received(&echo, "x_forwarded_user").is_empty(), "{echo}");

    let mut with = vec![alice.as_str()];
    with.extend_from_slice(&SMUGGLED);
    let (status, echo, _) = curl(caddy.port, "PUT", "/api/admin/7", &with);
    assert_eq!(status, 200, "{echo}");
    assert_eq!(received(&echo, "x-forwarded-user"), ["pcalice"], "{echo}");
    assert_eq!(
        received(&echo, "x-forwarded-groups"),
        ["pcalice,pcanalysts,pcops"]
    );
    assert_eq!(
        received(&echo, "arlas-org-filter"),
        ["h:org1:analysts,h:org1:ops"]
    );
    assert!(received(&echo, "x_forwarded_user").is_empty(), "{echo}");

    let mut with = vec![bob.as_str()];
    with.extend_from_slice(&SMUGGLED);
    let (status, echo, _) = curl(caddy.port, "GET", "/api/x", &with);
    assert_eq!(status, 200);
    assert_eq!(received(&echo, "x-forwarded-user"), ["pcbob"], "{echo}");
    assert_eq!(
        received(&echo, "arlas-org-filter"),
        ["h:org1:analysts"],
        "{echo}"
    );
    let (status, echo, _) = curl(caddy.port, "POST", "/api/x", &[&bob]);
    assert_eq!(status, 403);
    assert_eq!(echo, Value::Null);
}

#[tokio::test]
async fn every_key_can_come_from_the_environment() {
    let dir = tempdir();
    let d = Daemon::start_with_env(
        dir.path(),
        &[],
        &[
            ("PORTCULLIS_FORWARD__PUBLIC_URIS", "/open/.*:GET"),
            ("PORTCULLIS_FORWARD__HEADER_USER", "arlas-user"),
        ],
    );
    let r = authorize(
        &d,
        &[
            ("x-forwarded-uri", "/open/doc"),
            ("x-forwarded-method", "GET"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers.get("arlas-user").unwrap(), "anonymous");

    let out = Command::new(BIN)
        .args(["check-config", "--dev"])
        .env("PORTCULLIS_SECURITY__SESION_TTL", "60")
        .env("PORTCULLIS_SECURITY__MAX_SESSIONS", "lots")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PORTCULLIS_SECURITY__SESION_TTL: unknown key"),
        "{err}"
    );
    assert!(
        err.contains("did you mean \"security.session_ttl\""),
        "{err}"
    );
    assert!(err.contains("PORTCULLIS_SECURITY__MAX_SESSIONS:"), "{err}");
    let ok = Command::new(BIN)
        .args(["check-config", "--dev"])
        .env("PORTCULLIS_SECURITY__SESSION_TTL", "77")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("\"session_ttl\": 77"));
}

#[tokio::test]
async fn rules_are_reloaded_on_sighup_and_a_broken_file_keeps_the_old_ones() {
    let dir = tempdir();
    let d = daemon(dir.path(), &[]);
    let bob = format!("Bearer {}", d.cert_session("pcbob").await);
    let ask = |method: &'static str| {
        let c = d.client(None);
        let bob = bob.clone();
        async move {
            c.request(
                hyper::Method::GET,
                "/v1/authorize",
                &[
                    ("authorization", bob.as_str()),
                    ("x-forwarded-uri", "/api/x"),
                    ("x-forwarded-method", method),
                ],
                None,
            )
            .await
            .unwrap()
            .status
        }
    };
    assert_eq!(ask("POST").await, 403);
    std::fs::write(dir.path().join("rules"), "pcanalysts: r:/api/.*:GET,POST\n").unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for_log(&d, "reloaded the forward rules").await;
    assert_eq!(ask("POST").await, 200);
    std::fs::write(dir.path().join("rules"), "pcanalysts: r:/(:GET\n").unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for_log(&d, "forward rules reload failed").await;
    assert!(d.log().contains("rules:1: bad regex"), "{}", d.log());
    assert_eq!(ask("POST").await, 200, "the previous rules are kept");
}
