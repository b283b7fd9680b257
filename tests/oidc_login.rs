//! OIDC logins against a real OpenID provider (the `oidc-provider` package from the
//! npm registry, run by tests/idp/server.js; installed by scripts/test).

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::idp::Idp;
use common::*;
use portcullis::cli::client::Reply;
use serde_json::{Value, json};

const AUD: &str = "https://portcullis.test";

/// A daemon whose OIDC settings point at `idp`, plus `extra` overrides.
fn daemon(dir: &std::path::Path, idp: &Idp, mode: &str, extra: &[&str]) -> Daemon {
    std::fs::write(dir.join("gl.csv"), "pcanalysts,apple\npcops,cherry\n").unwrap();
    let defs = [
        format!("security.oidc.issuer={}", idp.url),
        format!("security.oidc.audience={AUD}"),
        format!("security.oidc.validation_mode={mode}"),
        format!("security.oidc.ca_cert={}", idp.ca.display()),
        "security.oidc.introspection_client_id=portcullis-introspect".into(),
        "security.oidc.introspection_client_secret=introspect-secret".into(),
        "security.oidc.client_id=portcullis-cli".into(),
        format!("security.grouplabelfile={}", dir.join("gl.csv").display()),
        "security.default_labels=[]".into(),
    ];
    let mut all: Vec<&str> = defs.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    Daemon::start(dir, &all)
}

fn assert_refused(r: &Reply, d: &Daemon, reason: &str) {
    assert_eq!(r.status, 401, "{:?}", r.json());
    assert_eq!(r.json()["error"], "authentication_failed");
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        d.log().contains(reason),
        "no \"{reason}\" in the log:\n{}",
        d.log()
    );
}

/// An opaque token for our audience: the kind oidc-provider itself introspects.
async fn opaque_for_us(idp: &Idp, sub: &str, groups: &[&str]) -> String {
    let groups = groups.join(",");
    let v = idp
        .mint(&[
            ("sub", sub),
            ("groups", &groups),
            ("format", "opaque"),
            ("resource", AUD),
        ])
        .await;
    v["access_token"].as_str().unwrap().to_string()
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "preferred_username": sub, "groups": ["pcanalysts"],
           "aud": AUD, "iat": now(), "exp": now() + 300})
}

#[tokio::test]
async fn jwt_mode_accepts_rs256_and_es256_with_groups_from_the_token() {
    let dir = tempdir();
    let mut idp = Idp::start(dir.path());
    let d = daemon(dir.path(), &idp, "jwt", &[]);
    for alg in ["RS256", "ES256"] {
        let t = idp
            .token("oidc-alice", &["pcanalysts", "pcops"], Some(AUD), alg, 300)
            .await;
        let r = bearer(&d, &t).await;
        assert_eq!(r.status, 200, "{alg}: {:?}", r.json());
        let v = r.json();
        assert_eq!(v["user"], "oidc-alice", "a user without a local account");
        assert_eq!(v["mechanism"], "oidc");
        assert_eq!(strings(&v["groups"]), ["pcanalysts", "pcops"]);
        assert_eq!(strings(&v["labels"]), ["apple", "cherry"]);
    }
    let m = methods(&d).await;
    assert!(strings(&m["mechanisms"]).contains(&"oidc".to_string()));
    assert_eq!(m["oidc"]["issuer"], json!(idp.url));
    assert_eq!(m["oidc"]["client_id"], "portcullis-cli");
    assert_eq!(m["oidc"]["audience"], AUD);
    assert_eq!(m["oidc"]["scopes"], "openid profile email");
    idp.stop();
}

#[tokio::test]
async fn forged_and_foreign_tokens_are_refused() {
    let dir = tempdir();
    let idp = Idp::start(dir.path());
    // More refusals from one address than the per-address limit allows (SPEC §9).
    let d = daemon(dir.path(), &idp, "jwt", &["security.max_failed_attempts=0"]);
    let good = idp
        .token("oidc-alice", &["pcanalysts"], Some(AUD), "RS256", 300)
        .await;
    assert_eq!(bearer(&d, &good).await.status, 200);

    let wrong_aud = idp
        .token("oidc-alice", &[], Some("https://other.test"), "RS256", 300)
        .await;
    assert_refused(&bearer(&d, &wrong_aud).await, &d, "wrong_audience");

    let mut c = claims("oidc-alice");
    c["iss"] = json!("https://evil.example");
    let t = idp.sign(json!({"alg": "RS256"}), c, "rsa").await;
    assert_refused(&bearer(&d, &t).await, &d, "wrong_issuer");

    let mut c = claims("oidc-alice");
    c["iss"] = json!(idp.url);
    c["exp"] = json!(now() - 3600);
    c["iat"] = json!(now() - 7200);
    let t = idp.sign(json!({"alg": "RS256"}), c, "rsa").await;
    assert_refused(&bearer(&d, &t).await, &d, "token_expired");

    let mut c = claims("oidc-alice");
    c["iss"] = json!(idp.url);
    c["nbf"] = json!(now() + 3600);
    let t = idp.sign(json!({"alg": "RS256"}), c, "rsa").await;
    assert_refused(&bearer(&d, &t).await, &d, "token_not_yet_valid");

    // alg: none, unsigned.
    let parts: Vec<&str> = good.split('.').collect();
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"at+jwt"}"#);
    let t = format!("{none_header}.{}.", parts[1]);
    assert_refused(&bearer(&d, &t).await, &d, "token_malformed");

    // HS256 with the IdP's RSA public key as the HMAC secret (algorithm confusion).
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let pem = idp.public_pem().await;
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = header["kid"].as_str().map(str::to_string);
    let payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let t = jsonwebtoken::encode(
        &h,
        &payload,
        &jsonwebtoken::EncodingKey::from_secret(pem.as_bytes()),
    )
    .unwrap();
    assert_refused(&bearer(&d, &t).await, &d, "unknown_key");

    // A tampered payload under the original signature.
    let mut p = payload.clone();
    p["preferred_username"] = json!("root");
    let t = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(p.to_string()),
        parts[2]
    );
    assert_refused(&bearer(&d, &t).await, &d, "bad_signature");

    // No username claim: 401, and the log names the claim.
    let mut c = claims("oidc-alice");
    c["iss"] = json!(idp.url);
    c.as_object_mut().unwrap().remove("preferred_username");
    let t = idp.sign(json!({"alg": "RS256"}), c, "rsa").await;
    assert_refused(&bearer(&d, &t).await, &d, "preferred_username");

    // A properly signed payload that is not a JSON object: 401, and the next
    // client's good token still logs in.
    let t = idp
        .sign(
            json!({"alg": "RS256"}),
            json!(["oidc-alice", idp.url]),
            "rsa",
        )
        .await;
    assert_refused(&bearer(&d, &t).await, &d, "token_invalid");
    assert_eq!(bearer(&d, &good).await.status, 200);
    assert!(!d.log().contains(&good), "a token reached the log");
}

#[tokio::test]
async fn introspection_modes_and_revocation() {
    let dir = tempdir();
    let idp = Idp::start(dir.path());
    let d = daemon(dir.path(), &idp, "introspection", &[]);
    let t = opaque_for_us(&idp, "oidc-bob", &["pcops"]).await;
    let r = bearer(&d, &t).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["user"], "oidc-bob");
    assert_eq!(strings(&r.json()["groups"]), ["pcops"]);
    // A token for another audience is refused by the audience check.
    let other = idp
        .mint(&[
            ("sub", "oidc-bob"),
            ("format", "opaque"),
            ("resource", "https://other.test"),
        ])
        .await;
    assert_refused(
        &bearer(&d, other["access_token"].as_str().unwrap()).await,
        &d,
        "wrong_audience",
    );
    assert!(idp.revoke(&t).await, "the IdP revoked the token");
    assert_refused(&bearer(&d, &t).await, &d, "introspection_inactive");
    drop(d);

    // introspection_userinfo: an opaque token whose introspection lacks the claims.
    let dir2 = tempdir();
    let d = daemon(dir2.path(), &idp, "introspection_userinfo", &[]);
    let opaque = idp.opaque("oidc-carol", &["pcanalysts"]).await;
    assert!(opaque.matches('.').count() != 2, "{opaque}");
    let r = bearer(&d, &opaque).await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.json(), d.log());
    assert_eq!(r.json()["user"], "oidc-carol");
    assert_eq!(strings(&r.json()["groups"]), ["pcanalysts"]);
}

#[tokio::test]
async fn auto_mode_picks_jwt_or_introspection_by_shape() {
    let dir = tempdir();
    let idp = Idp::start(dir.path());
    let d = daemon(dir.path(), &idp, "auto", &[]);
    let jwt = idp
        .token("oidc-alice", &["pcops"], Some(AUD), "ES256", 300)
        .await;
    assert_eq!(bearer(&d, &jwt).await.json()["user"], "oidc-alice");
    let opaque = idp.opaque("oidc-dave", &["pcops"]).await;
    let r = bearer(&d, &opaque).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["user"], "oidc-dave");
    assert_refused(
        &bearer(&d, "not-a-token-at-all").await,
        &d,
        "introspection_inactive",
    );
}

#[tokio::test]
async fn openshift_user_api_with_dot_path_claims() {
    let dir = tempdir();
    let idp = Idp::start(dir.path());
    let api = format!(
        "security.oidc.openshift_user_api_uri={}/apis/user.openshift.io/v1/users/~",
        idp.url
    );
    let d = daemon(
        dir.path(),
        &idp,
        "openshift_userapi",
        &[
            &api,
            "security.oidc.username_claim=metadata.name",
            "security.oidc.groups_claim=groups",
        ],
    );
    let opaque = idp.opaque("oidc-erin", &["pcops"]).await;
    let r = bearer(&d, &opaque).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["user"], "oidc-erin");
    assert_eq!(strings(&r.json()["labels"]), ["cherry"]);
    assert_refused(
        &bearer(&d, "sha256~bogus").await,
        &d,
        "token_refused_by_idp",
    );
}

#[tokio::test]
async fn claim_paths_and_disabled_groups() {
    let dir = tempdir();
    let idp = Idp::start(dir.path());
    let d = daemon(
        dir.path(),
        &idp,
        "jwt",
        &[
            "security.oidc.username_claim=user.name",
            "security.oidc.groups_claim=ocp.groups",
        ],
    );
    let t = idp
        .token("oidc-frank", &["pcanalysts"], Some(AUD), "RS256", 300)
        .await;
    let v = bearer(&d, &t).await.json();
    assert_eq!(v["user"], "oidc-frank");
    assert_eq!(strings(&v["groups"]), ["pcanalysts"]);
    drop(d);
    let dir2 = tempdir();
    let d = daemon(
        dir2.path(),
        &idp,
        "jwt",
        &[
            "security.oidc.groups_claim=",
            "security.default_labels=public",
        ],
    );
    let v = bearer(&d, &t).await.json();
    assert_eq!(strings(&v["groups"]), Vec::<String>::new());
    assert_eq!(strings(&v["labels"]), ["public"]);
}

#[tokio::test]
async fn key_rotation_is_picked_up_and_an_idp_outage_keeps_known_keys() {
    let dir = tempdir();
    let mut idp = Idp::start(dir.path());
    let d = daemon(
        dir.path(),
        &idp,
        "jwt",
        &["security.oidc.jwks_refetch_interval=5"],
    );
    let old = idp.token("oidc-alice", &[], Some(AUD), "RS256", 300).await;
    assert_eq!(bearer(&d, &old).await.status, 200);
    idp.rotate().await;
    // One refetch per jwks_refetch_interval (5 s here) at most: wait that out, then
    // the new kid is fetched on demand.
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let new = idp.token("oidc-alice", &[], Some(AUD), "RS256", 300).await;
    assert_eq!(bearer(&d, &new).await.status, 200, "{}", d.log());
    // Another rotation the daemon has not seen, then the IdP goes away.
    idp.rotate().await;
    let unseen = idp.token("oidc-alice", &[], Some(AUD), "RS256", 300).await;
    idp.stop();
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let r = bearer(&d, &unseen).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (503, json!("dependency_unavailable"))
    );
    // Tokens of keys already known still work. The first key left the IdP's JWKS at
    // the first rotation: its kid is unknown again, and with the IdP down that is a 503.
    assert_eq!(bearer(&d, &new).await.status, 200);
    assert_eq!(bearer(&d, &old).await.status, 503);
}

#[tokio::test]
async fn an_unreachable_idp_is_503_and_missing_settings_stop_startup() {
    let dir = tempdir();
    let mut idp = Idp::start(dir.path());
    let opaque = idp.opaque("oidc-alice", &[]).await;
    let url = idp.url.clone();
    let ca = idp.ca.clone();
    idp.stop();
    let defs = [
        format!("security.oidc.issuer={url}"),
        format!("security.oidc.audience={AUD}"),
        format!("security.oidc.ca_cert={}", ca.display()),
        "security.oidc.validation_mode=introspection".into(),
        "security.oidc.introspection_client_id=portcullis-introspect".into(),
        "security.oidc.introspection_client_secret=introspect-secret".into(),
    ];
    let d = Daemon::start(
        dir.path(),
        &defs.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let r = bearer(&d, &opaque).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (503, json!("dependency_unavailable"))
    );
    drop(d);

    let dir2 = tempdir();
    let iss = format!("security.oidc.issuer={url}");
    let err = match Daemon::try_start(
        dir2.path(),
        &[&iss, "security.oidc.validation_mode=introspection"],
    ) {
        Ok(_) => panic!("started without introspection credentials"),
        Err(e) => e,
    };
    assert!(err.contains("exit code Some(2)"), "{err}");
    assert!(
        err.contains("security.oidc.introspection_client_id")
            && err.contains("security.oidc.audience"),
        "{err}"
    );
}

#[tokio::test]
async fn introspection_answers_can_be_cached() {
    let dir = tempdir();
    let idp = Idp::start(dir.path());
    let d = daemon(
        dir.path(),
        &idp,
        "introspection",
        &["security.oidc.introspection_cache_ttl=60"],
    );
    let t = opaque_for_us(&idp, "oidc-alice", &[]).await;
    assert_eq!(bearer(&d, &t).await.status, 200);
    assert!(idp.revoke(&t).await);
    // Still within the cache lifetime: the IdP is not asked again.
    assert_eq!(bearer(&d, &t).await.status, 200);
}

#[tokio::test]
async fn the_cli_presents_tokens_from_a_file_and_from_client_credentials() {
    let dir = tempdir();
    let run = tempdir();
    let idp = Idp::start(dir.path());
    let d = daemon(
        dir.path(),
        &idp,
        "jwt",
        &["security.oidc.username_claim=client_id"],
    );
    let cli = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(["login", "--server", &d.url, "--ca"])
            .arg(d.ca())
            .args(args)
            .env("XDG_RUNTIME_DIR", run.path())
            .env("PORTCULLIS_IDP_CA", &idp.ca)
            .output()
            .unwrap()
    };
    let o = cli(&[
        "--client-credentials",
        "--client-id",
        "portcullis-svc",
        "--client-secret",
        "svc-secret",
        "--json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["user"], "portcullis-svc");
    let o = cli(&[
        "--client-credentials",
        "--client-id",
        "portcullis-svc",
        "--client-secret",
        "wrong",
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let t = idp.token("oidc-alice", &[], Some(AUD), "RS256", 300).await;
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{t}\n")).unwrap();
    let d2dir = tempdir();
    let d2 = daemon(d2dir.path(), &idp, "jwt", &[]);
    let o = std::process::Command::new(BIN)
        .args(["login", "--server", &d2.url, "--ca"])
        .arg(d2.ca())
        .arg("--token-file")
        .arg(&file)
        .env("XDG_RUNTIME_DIR", run.path())
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("user:      oidc-alice"));
}

/// One browser step: a request with the cookie jar; returns (status, redirect URL).
fn browser(idp: &Idp, jar: &std::path::Path, url: &str, form: Option<&str>) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "-c",
    ])
    .arg(jar)
    .arg("-b")
    .arg(jar)
    .arg("--cacert")
    .arg(&idp.ca);
    if let Some(f) = form {
        cmd.args(["--data", f]);
    }
    let out = cmd.arg(url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (code, redirect) = text.split_once(' ').unwrap_or((&text, ""));
    (code.parse().unwrap_or(0), redirect.to_string())
}

#[tokio::test]
async fn the_cli_runs_the_authorization_code_flow_with_pkce() {
    use std::io::{BufRead, BufReader};
    let dir = tempdir();
    let run = tempdir();
    let idp = Idp::start(dir.path());
    idp.set_groups("oidc-gina", &["pcops"]).await;
    let d = daemon(dir.path(), &idp, "jwt", &[]);
    let port = free_port();
    let mut child = std::process::Command::new(BIN)
        .args([
            "login",
            "--oidc",
            "--json",
            "--redirect-port",
            &port.to_string(),
            "--server",
            &d.url,
            "--ca",
        ])
        .arg(d.ca())
        .env("XDG_RUNTIME_DIR", run.path())
        .env("PORTCULLIS_IDP_CA", &idp.ca)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut url = String::new();
    for _ in 0..10 {
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        if let Some(u) = line.trim().strip_prefix(&format!("{}/auth?", idp.url)) {
            url = format!("{}/auth?{u}", idp.url);
            break;
        }
    }
    assert!(
        url.contains("code_challenge_method=S256") && url.contains("state="),
        "{url}"
    );
    assert!(
        url.contains(&format!(
            "redirect_uri=http%3A%2F%2F127.0.0.1%3A{port}%2Fcallback"
        )),
        "{url}"
    );
    // The user's browser: the IdP's login and consent pages, then the redirect back.
    let jar = dir.path().join("jar");
    let (_, interaction) = browser(&idp, &jar, &url, None);
    let (_, resume) = browser(
        &idp,
        &jar,
        &interaction,
        Some("prompt=login&login=oidc-gina&password=x"),
    );
    let (_, consent) = browser(&idp, &jar, &resume, None);
    let (_, resume) = browser(&idp, &jar, &consent, Some("prompt=consent"));
    let (_, callback) = browser(&idp, &jar, &resume, None);
    assert!(
        callback.starts_with(&format!("http://127.0.0.1:{port}/callback?code=")),
        "{callback}"
    );
    let out = std::process::Command::new("curl")
        .args(["-sS", &callback])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Logged in"));
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["user"], "oidc-gina");
    assert_eq!(strings(&v["groups"]), ["pcops"]);
}

// ---------------------------------------------------------------- hostile clients (SPEC §9)

const INTROSPECT: (&str, &str) = ("POST", "/token/introspection");

/// Many refusals from one address: keep the per-address throttle out of the picture.
const NO_THROTTLE: &str = "security.max_failed_attempts=0";

#[tokio::test]
async fn a_session_token_at_login_is_a_bad_request_and_never_reaches_the_idp() {
    let dir = tempdir();
    let idp = Idp::start(dir.path());
    let d = daemon(dir.path(), &idp, "auto", &[]);
    let jwt = idp.token("oidc-alice", &[], Some(AUD), "RS256", 300).await;
    let r = bearer(&d, &jwt).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let session = r.json()["session"].as_str().unwrap().to_string();
    assert!(session.starts_with("pcs_"), "{session}");

    let r = bearer(&d, &session).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (400, json!("bad_request")),
        "{:?}",
        r.json()
    );
    let (m, p) = INTROSPECT;
    assert_eq!(idp.requests(m, p), 0, "the IdP was asked:\n{}", idp.log());
    assert_eq!(idp.requests("GET", "/me"), 0, "{}", idp.log());
    assert!(
        !d.log().contains(&session),
        "a session token reached the log"
    );
}

#[tokio::test]
async fn a_repeated_junk_token_costs_one_introspection_call() {
    let dir = tempdir();
    let idp = Idp::start(dir.path());
    let d = daemon(dir.path(), &idp, "auto", &[NO_THROTTLE]);
    let (m, p) = INTROSPECT;
    // One after another: the refusal is remembered.
    for _ in 0..20 {
        let r = bearer(&d, "junk-opaque-token-0001").await;
        assert_eq!(
            (r.status, r.json()["error"].clone()),
            (401, json!("authentication_failed"))
        );
    }
    assert_eq!(idp.requests(m, p), 1, "{}", idp.log());
    // All at once: one call shared by the identical tokens in flight.
    let replies = concurrent_bearers(&d, "junk-opaque-token-0002", 20).await;
    for r in replies {
        assert_eq!(r.status, 401, "{:?}", r.json());
    }
    assert_eq!(idp.requests(m, p), 2, "{}", idp.log());
    // A real token is still introspected and accepted.
    let good = idp.opaque("oidc-dave", &["pcops"]).await;
    assert_eq!(bearer(&d, &good).await.status, 200, "{}", d.log());
}

/// `n` logins with the same bearer token at once, each on its own connection.
async fn concurrent_bearers(d: &Daemon, token: &str, n: usize) -> Vec<Reply> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (url, ca, token) = (d.url.clone(), d.ca(), token.to_string());
        set.spawn(async move {
            let auth = format!("Bearer {token}");
            portcullis::cli::client::Client::new(&url, Some(&ca), None)
                .unwrap()
                .request(
                    hyper::Method::POST,
                    "/v1/login",
                    &[("authorization", &auth)],
                    None,
                )
                .await
                .unwrap()
        });
    }
    set.join_all().await
}

#[tokio::test]
async fn client_text_in_a_jwt_header_cannot_forge_or_flood_log_lines() {
    let dir = tempdir();
    let idp = Idp::start(dir.path());
    let d = daemon(dir.path(), &idp, "jwt", &[NO_THROTTLE]);
    let good = idp.token("oidc-alice", &[], Some(AUD), "RS256", 300).await;
    assert_eq!(bearer(&d, &good).await.status, 200);
    let payload = good.split('.').nth(1).unwrap().to_string();

    // An algorithm name carrying a newline and a fake audit line.
    let forged = "2099-01-01T00:00:00.000000Z  INFO audit: event=\"login\" peer=203.0.113.9:4242 \
                  mechanism=\"oidc\" user=\"forged-root\" result=\"success\" reason=\"ok\"";
    let header = json!({"alg": format!("RS256\n{forged}"), "typ": "JWT"});
    let t = format!(
        "{}.{payload}.c2ln",
        URL_SAFE_NO_PAD.encode(header.to_string())
    );
    assert_refused(&bearer(&d, &t).await, &d, "token_malformed");

    // A 10,000-character kid, logged with the unknown-key refusal.
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "k".repeat(10_000)});
    let t = format!(
        "{}.{payload}.c2ln",
        URL_SAFE_NO_PAD.encode(header.to_string())
    );
    assert_refused(&bearer(&d, &t).await, &d, "unknown_key");

    let log = d.log();
    for line in log.lines() {
        assert!(
            !line.starts_with("2099-"),
            "a forged line in the log:\n{log}"
        );
        if line.contains("forged-root") {
            assert!(
                line.contains("not a usable JWT"),
                "client text outside its field:\n{line}"
            );
        }
        assert!(line.len() < 1024, "a {}-byte log line", line.len());
    }
    assert!(
        log.contains(r"RS256\u{a}2099-01-01"),
        "the refusal was not logged with the newline escaped:\n{log}"
    );
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_jwks_at_most_once_per_interval() {
    let dir = tempdir();
    let idp = Idp::start(dir.path());
    let d = daemon(dir.path(), &idp, "jwt", &[NO_THROTTLE]);
    let good = idp.token("oidc-alice", &[], Some(AUD), "RS256", 300).await;
    assert_eq!(bearer(&d, &good).await.status, 200);
    let fetched = idp.requests("GET", "/jwks");
    assert!(fetched >= 1, "{}", idp.log());
    // Bogus kids spread over more than the old 5 s floor, well within the default
    // jwks_refetch_interval of 60 s.
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(5500)).await;
        }
        let mut c = claims("oidc-alice");
        c["iss"] = json!(idp.url);
        let t = idp
            .sign(json!({"kid": format!("bogus-{i}")}), c, "rsa")
            .await;
        assert_refused(&bearer(&d, &t).await, &d, "unknown_key");
    }
    assert!(
        idp.requests("GET", "/jwks") <= fetched + 1,
        "{} JWKS fetches after {fetched}:\n{}",
        idp.requests("GET", "/jwks"),
        idp.log()
    );
}

#[test]
fn plain_http_idp_endpoints_off_loopback_are_configuration_errors() {
    let out = std::process::Command::new(BIN)
        .args([
            "check-config",
            "-D",
            "security.oidc.issuer=http://idp.example.com",
            "-D",
            "security.oidc.audience=https://portcullis.test",
            "-D",
            "security.oidc.validation_mode=jwt",
            "-D",
            "security.oidc.jwks_uri=http://idp.example.com/jwks",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("security.oidc.issuer") && err.contains("security.oidc.jwks_uri"),
        "{err}"
    );
    // Loopback may use plain http (a local test IdP or sidecar).
    let out = std::process::Command::new(BIN)
        .args([
            "check-config",
            "-D",
            "security.oidc.issuer=http://127.0.0.1:9999",
            "-D",
            "security.oidc.audience=https://portcullis.test",
            "-D",
            "security.oidc.validation_mode=jwt",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn admin_status_reports_the_age_of_the_key_set() {
    let dir = tempdir();
    let idp = Idp::start(dir.path());
    let d = daemon(dir.path(), &idp, "jwt", &[]);
    let good = idp
        .token("oidc-alice", &["pcanalysts"], Some(AUD), "RS256", 300)
        .await;
    assert_eq!(bearer(&d, &good).await.status, 200);
    let out = std::process::Command::new(BIN)
        .args(["admin", "status", "--json", "--socket"])
        .arg(dir.path().join("admin.sock"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let age = v["jwks_age"]
        .as_u64()
        .unwrap_or_else(|| panic!("no jwks_age: {v}"));
    assert!(age < 60, "{v}");
    assert!(v["jwks_note"].as_str().unwrap().contains("fetched"), "{v}");
}
