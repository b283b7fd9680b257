//! SPEC §11 against Inmanta's own code: `inmanta-core` from PyPI (installed by
//! scripts/test in a venv named by PORTCULLIS_TEST_INMANTA_PYTHON) loads the
//! README's `auth_jwt_portcullis` section — its JWKS fetched over HTTPS from the
//! daemon — and judges portcullis's tokens with `inmanta.protocol.auth.decode_token`,
//! as an Inmanta server does for every API call.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

const ISSUER: &str = "https://portcullis.test";

fn inmanta_python() -> String {
    std::env::var("PORTCULLIS_TEST_INMANTA_PYTHON").unwrap_or_else(|_| {
        panic!("PORTCULLIS_TEST_INMANTA_PYTHON is not set: run scripts/test (it installs inmanta-core in a venv)")
    })
}

/// The README's Inmanta configuration for a daemon on `port`, plus Inmanta's own
/// signing section (an Inmanta server needs exactly one).
fn inmanta_cfg(dir: &Path, port: u16) -> std::path::PathBuf {
    let cfg = dir.join("inmanta.cfg");
    std::fs::write(
        &cfg,
        format!(
            "[auth_jwt_portcullis]\nalgorithm=RS256\nsign=false\nclient_types=agent,compiler,api\n\
             issuer={ISSUER}\naudience={ISSUER}\njwks_uri=https://127.0.0.1:{port}/.well-known/jwks.json\n\n\
             [auth_jwt_default]\nalgorithm=HS256\nsign=true\nclient_types=agent,compiler,api\n\
             key=c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0xMjM0NQ\nexpire=0\n\
             issuer=https://localhost:8888/\naudience=https://localhost:8888/\n"
        ),
    )
    .unwrap();
    cfg
}

/// Inmanta's verdict: the section that accepted the token and its claims, or the
/// exception it raised.
fn decode(cfg: &Path, ca: &Path, token: &str) -> Result<(String, Value), String> {
    let script = r#"
import json, sys
from inmanta import config
config.Config.load_config(main_cfg_file=sys.argv[1])
from inmanta.protocol import auth
try:
    claims, cfg = auth.decode_token(sys.argv[2])
    print(json.dumps({"section": cfg.section, "claims": dict(claims)}))
except Exception as e:
    print(json.dumps({"error": type(e).__name__ + ": " + str(e)}))
"#;
    let out = Command::new(inmanta_python())
        .args(["-c", script])
        .arg(cfg)
        .arg(token)
        // urllib's default context: the dev CA that signed the daemon's certificate.
        .env("SSL_CERT_FILE", ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "inmanta: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    match v.get("error") {
        Some(e) => Err(e.as_str().unwrap().to_string()),
        None => Ok((
            v["section"].as_str().unwrap().to_string(),
            v["claims"].clone(),
        )),
    }
}

fn token(d: &Daemon, args: &[&str]) -> String {
    let (code, token, err) = token_cli(d, args);
    assert_eq!(code, Some(0), "{err}");
    token
}

#[tokio::test]
async fn an_inmanta_server_accepts_portcullis_tokens_through_its_jwks() {
    let dir = tempdir();
    let settings = [
        "security.session_format=jwt",
        "security.token.algorithm=RS256",
        "security.token.claim_prefix=urn:inmanta:",
        "security.token.issuer=https://portcullis.test",
        "security.token.audience=https://portcullis.test",
    ];
    let d = Daemon::start(dir.path(), &settings);
    d.dev_certs(&["pcalice"]);
    let cfg = inmanta_cfg(dir.path(), d.port);

    let env = "6bb5e5c4-6d2b-4b0b-8f6e-6b3b3c0a7a11";
    let agent = token(&d, &["create", "--client-type", "agent", "--env", env]);
    let (section, claims) = decode(&cfg, &d.ca(), &agent).expect("Inmanta accepts it");
    assert_eq!(section, "auth_jwt_portcullis");
    assert_eq!(claims["urn:inmanta:ct"], serde_json::json!(["agent"]));
    assert_eq!(claims["urn:inmanta:env"], env);

    let boot = token(&d, &["bootstrap"]);
    let (_, claims) = decode(&cfg, &d.ca(), &boot).unwrap();
    assert_eq!(
        claims["urn:inmanta:ct"],
        serde_json::json!(["api", "compiler", "agent"])
    );

    // A person's session, from a certificate login: client type api.
    let session = d.cert_session("pcalice").await;
    let (_, claims) = decode(&cfg, &d.ca(), &session).expect("a JWT session is accepted too");
    assert_eq!(claims["sub"], "pcalice");
    assert_eq!(claims["urn:inmanta:ct"], serde_json::json!(["api"]));

    // Signed by another daemon's key with the same issuer: Inmanta refuses it.
    let other_dir = tempdir();
    let other = Daemon::start(other_dir.path(), &settings);
    let foreign = token(&other, &["create", "--client-type", "agent"]);
    let err = decode(&cfg, &d.ca(), &foreign).expect_err("another key");
    assert!(err.contains("Forbidden"), "{err}");
}

/// A token made by Inmanta's own `encode_token` with the signing section of
/// `inmanta_cfg` (HS256, its `key`), as `inmanta-cli token create` makes them.
fn inmanta_token(dir: &Path, client_types: &[&str], env: &str, sub: &str) -> String {
    let cfg = dir.join("inmanta-sign.cfg");
    std::fs::write(
        &cfg,
        "[auth_jwt_default]\nalgorithm=HS256\nsign=true\nclient_types=agent,compiler,api\n\
         key=c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0xMjM0NQ\nexpire=600\n\
         issuer=https://localhost:8888/\naudience=https://localhost:8888/\n",
    )
    .unwrap();
    let script = r#"
import json, sys
from inmanta import config
config.Config.load_config(main_cfg_file=sys.argv[1])
from inmanta.protocol import auth
print(auth.encode_token(json.loads(sys.argv[2]), environment=sys.argv[3], custom_claims={"sub": sys.argv[4]}))
"#;
    let out = Command::new(inmanta_python())
        .args(["-c", script])
        .arg(&cfg)
        .arg(serde_json::to_string(client_types).unwrap())
        .args([env, sub])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "inmanta: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn portcullis_accepts_inmanta_own_hs256_tokens_as_a_trusted_issuer() {
    let dir = tempdir();
    // The README's issuer block for an Inmanta server's signing section.
    let d = Daemon::start(
        dir.path(),
        &[
            "security.issuers.inmanta.issuer=https://localhost:8888/",
            "security.issuers.inmanta.audience=https://localhost:8888/",
            "security.issuers.inmanta.algorithm=HS256",
            "security.issuers.inmanta.secret=c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0xMjM0NQ",
            "security.issuers.inmanta.client_types=agent,api",
            "security.token.claim_prefix=urn:inmanta:",
        ],
    );
    let env = "6bb5e5c4-6d2b-4b0b-8f6e-6b3b3c0a7a11";
    let agent = inmanta_token(dir.path(), &["agent"], env, "pcalice");
    let r = bearer(&d, &agent).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["user"], "pcalice");
    // Groups come from the token, as for every IdP token; Inmanta's carry none.
    assert_eq!(r.json()["groups"], serde_json::json!([]));
    assert_eq!(r.json()["mechanism"], "oidc");
    wait_for_log(&d, "issuer=\"inmanta\"").await;

    // A compiler token: a client type this issuer does not accept.
    let compiler = inmanta_token(dir.path(), &["compiler"], env, "pcalice");
    let r = bearer(&d, &compiler).await;
    assert_eq!(r.status, 403, "{:?}", r.json());
    assert_eq!(r.json()["error"], "account_unavailable");
}
