//! SPEC §11: JWT sessions and service tokens signed by the daemon, verified by
//! libraries nobody here wrote (Python's PyJWT, the `jsonwebtoken` crate) with the
//! keys from `/.well-known/jwks.json`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// PyJWT's verdict on `token` with the JWK set `jwks` (or an HS256 `secret`):
/// the claims, or `Err(message)`.
fn pyjwt(token: &str, jwks: &Value, secret: Option<&str>, audience: &str) -> Result<Value, String> {
    let script = r#"
import base64, json, sys
import jwt
token, jwks, secret, audience = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
try:
    header = jwt.get_unverified_header(token)
    if secret:
        key = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
        algs = ["HS256"]
    else:
        jwk = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
        key = jwt.PyJWK(jwk).key
        algs = [jwk["alg"]]
    claims = jwt.decode(token, key, algorithms=algs, audience=audience,
                        options={"require": ["iss", "aud", "iat", "jti"]})
    print(json.dumps(claims))
except Exception as e:
    print("ERR " + type(e).__name__ + ": " + str(e))
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            token,
            &jwks.to_string(),
            secret.unwrap_or(""),
            audience,
        ])
        .output()
        .expect("python3 with PyJWT (scripts/test installs pyjwt and cryptography)");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "python3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match text.strip_prefix("ERR ") {
        Some(e) => Err(e.to_string()),
        None => Ok(serde_json::from_str(&text).unwrap()),
    }
}

async fn jwks(d: &Daemon) -> Value {
    common::get_json(d, "/.well-known/jwks.json").await
}

/// `jsonwebtoken` (the crate) with the JWKS, as a Rust service would verify.
fn rust_verify(token: &str, jwks: &Value, issuer: &str) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    let jwk = set
        .find(header.kid.as_deref().unwrap_or_default())
        .ok_or("no such kid")?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.set_audience(&["portcullis"]);
    v.set_issuer(&[issuer]);
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
}

const ISSUER: &str = "security.token.issuer=https://portcullis.test";

fn issuer_of(d: &Daemon) -> String {
    let host = hostname::get().unwrap().into_string().unwrap();
    format!("https://{host}:{}", d.port)
}

#[tokio::test]
async fn jwt_sessions_are_verified_offline_by_pyjwt_and_jsonwebtoken() {
    let dir = tempdir();
    let d = Daemon::start(
        dir.path(),
        &[
            "security.session_format=jwt",
            "security.token.claim_prefix=urn:inmanta:",
        ],
    );
    d.dev_certs(&["pcalice"]);
    let login = d.cert_login("pcalice").await;
    let token = login["session"].as_str().unwrap().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let keys = jwks(&d).await;
    assert_eq!(keys["keys"][0]["kty"], "OKP", "EdDSA by default: {keys}");

    let claims = pyjwt(&token, &keys, None, "portcullis").expect("PyJWT verifies it");
    assert_eq!(claims["sub"], "pcalice");
    assert_eq!(claims["iss"], issuer_of(&d).as_str());
    assert_eq!(claims["groups"], json!(["pcalice", "pcanalysts", "pcops"]));
    assert_eq!(claims["mech"], "certificate");
    assert_eq!(claims["urn:inmanta:ct"], "api");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );
    let same = rust_verify(&token, &keys, &issuer_of(&d)).expect("jsonwebtoken verifies it");
    assert_eq!(same, claims);

    // The daemon's own check of the same token, then of forgeries.
    let c = d.client(None);
    let r = get_session(&c, &token).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["user"], "pcalice");
    let parts: Vec<&str> = token.split('.').collect();
    let forged_claims = {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut c: Value = serde_json::from_slice(&e.decode(parts[1]).unwrap()).unwrap();
        c["sub"] = json!("root");
        e.encode(c.to_string())
    };
    let tampered = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    let none = format!(
        "{}.{}.",
        {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#)
        },
        parts[1]
    );
    for bad in [
        tampered.as_str(),
        none.as_str(),
        "a.b.c",
        "eyJhbGciOiJFZERTQSJ9",
    ] {
        let r = get_session(&c, bad).await;
        assert_eq!(r.status, 401, "{bad}: {:?}", r.json());
        assert_eq!(r.json()["error"], "authentication_failed");
    }
    assert!(pyjwt(&tampered, &keys, None, "portcullis").is_err());

    // Another daemon's key: a valid signature, not ours.
    let other_dir = tempdir();
    let other = Daemon::start(other_dir.path(), &["security.session_format=jwt"]);
    other.dev_certs(&["pcalice"]);
    let foreign = other.cert_login("pcalice").await["session"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(get_session(&c, &foreign).await.status, 401);
}

#[tokio::test]
async fn a_logged_out_jwt_session_is_refused_and_the_store_bounds_hold() {
    let dir = tempdir();
    // A fixed issuer: the default names the port, which a restart here changes.
    let d = Daemon::start(
        dir.path(),
        &[
            "security.session_format=jwt",
            "security.max_sessions_per_user=2",
            ISSUER,
        ],
    );
    d.dev_certs(&["pcalice"]);
    let c = d.client(None);
    let first = d.cert_session("pcalice").await;
    assert_eq!(get_session(&c, &first).await.status, 200);
    assert_eq!(delete_session(&c, &first).await.status, 204);
    let r = get_session(&c, &first).await;
    assert_eq!(r.status, 401, "revoked: {:?}", r.json());
    // Offline verifiers still accept it until exp (SPEC §11).
    assert!(pyjwt(&first, &jwks(&d).await, None, "portcullis").is_ok());

    let a = d.cert_session("pcalice").await;
    let b = d.cert_session("pcalice").await;
    let newest = d.cert_session("pcalice").await;
    assert_eq!(
        get_session(&c, &a).await.status,
        401,
        "evicted by the per-user bound"
    );
    assert_eq!(get_session(&c, &b).await.status, 200);
    assert_eq!(get_session(&c, &newest).await.status, 200);

    // Sessions survive a restart (the file store), JWT or not.
    assert!(d.stop().success());
    let d = Daemon::start(dir.path(), &["security.session_format=jwt", ISSUER]);
    let c = d.client(None);
    assert_eq!(get_session(&c, &newest).await.status, 200);
}

#[tokio::test]
async fn a_new_key_by_sighup_signs_new_tokens_while_old_ones_stay_valid() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &["security.session_format=jwt", ISSUER]);
    d.dev_certs(&["pcalice"]);
    let old = d.cert_session("pcalice").await;
    let before = jwks(&d).await;
    assert_eq!(before["keys"].as_array().unwrap().len(), 1);
    let key_file = dir.path().join("token-key.pem");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o077, 0, "the key file is private: {mode:o}");

    let fresh = dir.path().join("new-key.pem");
    let (ok, out) = openssl(
        &[
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            fresh.to_str().unwrap(),
        ],
        "",
    );
    assert!(ok, "{out}");
    std::fs::rename(&fresh, &key_file).unwrap();
    d.signal(Signal::SIGHUP);
    wait_for_log(&d, "reloaded the token signing key").await;

    let after = jwks(&d).await;
    assert_eq!(after["keys"].as_array().unwrap().len(), 2, "{after}");
    let new = d.cert_session("pcalice").await;
    let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
    assert_ne!(kid(&old), kid(&new));
    assert_eq!(
        after["keys"][0]["kid"],
        kid(&new).as_str(),
        "the signing key first"
    );
    let c = d.client(None);
    for t in [&old, &new] {
        assert_eq!(get_session(&c, t).await.status, 200);
        assert!(pyjwt(t, &after, None, "portcullis").is_ok());
    }

    // The old public key is remembered across a restart.
    assert!(d.stop().success());
    let d = Daemon::start(dir.path(), &["security.session_format=jwt", ISSUER]);
    assert_eq!(jwks(&d).await["keys"].as_array().unwrap().len(), 2);
    assert_eq!(get_session(&d.client(None), &old).await.status, 200);

    // A broken key file keeps the key in force.
    std::fs::write(&key_file, "not a key").unwrap();
    d.signal(Signal::SIGHUP);
    wait_for_log(&d, "token key reload failed").await;
    assert_eq!(get_session(&d.client(None), &new).await.status, 200);
}

#[tokio::test]
async fn service_tokens_carry_client_types_and_environment_and_expire_as_asked() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &["security.token.claim_prefix=urn:inmanta:"]);
    let keys = jwks(&d).await;

    let (code, token, err) = token_cli(
        &d,
        &[
            "create",
            "--client-type",
            "agent",
            "--env",
            "42",
            "--ttl",
            "600",
            "--user",
            "deployer",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let claims = pyjwt(&token, &keys, None, "portcullis").expect("PyJWT verifies it");
    assert_eq!(claims["urn:inmanta:ct"], "agent");
    assert_eq!(claims["urn:inmanta:env"], "42");
    assert_eq!(claims["sub"], "deployer");
    assert_eq!(claims["mech"], "token");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        600
    );
    let r = get_session(&d.client(None), &token).await;
    assert_eq!(r.status, 401, "a service token is not a session");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("service token")
    );
    wait_for_log(&d, "event=\"token_issued\"").await;
    let log = d.log();
    assert!(
        log.contains(claims["jti"].as_str().unwrap()),
        "audited by jti"
    );
    assert!(!log.contains(&token), "the token itself is never logged");

    let (code, boot, err) = token_cli(&d, &["bootstrap"]);
    assert_eq!(code, Some(0), "{err}");
    let claims = pyjwt(&boot, &keys, None, "portcullis").unwrap();
    assert_eq!(claims["urn:inmanta:ct"], "api,compiler,agent");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );

    let (code, out, err) = token_cli(&d, &["create", "--client-type", "agent", "--ttl", "0"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(err.contains("allow_non_expiring"), "{err}");
    let (code, _, err) = token_cli(&d, &["create", "--client-type", "a,b"]);
    assert_eq!(code, Some(2), "{err}");

    assert!(d.stop().success());
    let d = Daemon::start(dir.path(), &["security.token.allow_non_expiring=true"]);
    let (code, forever, err) = token_cli(&d, &["create", "--client-type", "agent", "--ttl", "0"]);
    assert_eq!(code, Some(0), "{err}");
    let claims = pyjwt(&forever, &jwks(&d).await, None, "portcullis").unwrap();
    assert!(claims.get("exp").is_none(), "{claims}");
}

#[tokio::test]
async fn es256_rs256_and_hs256_keys() {
    let dir = tempdir();
    let d = Daemon::start(
        dir.path(),
        &[
            "security.session_format=jwt",
            "security.token.algorithm=ES256",
        ],
    );
    d.dev_certs(&["pcalice"]);
    let token = d.cert_session("pcalice").await;
    let keys = jwks(&d).await;
    assert_eq!(keys["keys"][0]["kty"], "EC");
    assert_eq!(keys["keys"][0]["alg"], "ES256");
    assert_eq!(
        pyjwt(&token, &keys, None, "portcullis").unwrap()["sub"],
        "pcalice"
    );
    assert_eq!(get_session(&d.client(None), &token).await.status, 200);

    // RS256 (beyond SPEC, for verifiers that know only RSA keys, like Inmanta).
    let rsa = tempdir();
    let d = Daemon::start(
        rsa.path(),
        &[
            "security.session_format=jwt",
            "security.token.algorithm=RS256",
        ],
    );
    d.dev_certs(&["pcalice"]);
    let token = d.cert_session("pcalice").await;
    let keys = jwks(&d).await;
    assert_eq!(keys["keys"][0]["kty"], "RSA");
    assert_eq!(
        pyjwt(&token, &keys, None, "portcullis").unwrap()["sub"],
        "pcalice"
    );
    assert!(rust_verify(&token, &keys, &issuer_of(&d)).is_ok());
    assert_eq!(get_session(&d.client(None), &token).await.status, 200);

    // HS256: Inmanta's key format, nothing published.
    let secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0xMjM0NQ";
    let hs = tempdir();
    let define = format!("security.token.secret={secret}");
    let d = Daemon::start(
        hs.path(),
        &[
            "security.session_format=jwt",
            "security.token.algorithm=HS256",
            &define,
        ],
    );
    d.dev_certs(&["pcalice"]);
    let token = d.cert_session("pcalice").await;
    assert_eq!(jwks(&d).await["keys"], json!([]));
    let claims = pyjwt(&token, &json!({}), Some(secret), "portcullis").unwrap();
    assert_eq!(claims["sub"], "pcalice");
    assert_eq!(get_session(&d.client(None), &token).await.status, 200);
    assert!(!d.log().contains(secret), "the secret is never logged");

    let short = tempdir();
    let err = Daemon::try_start(
        short.path(),
        &[
            "security.token.algorithm=HS256",
            "security.token.secret=c2hvcnQ",
        ],
    )
    .err()
    .expect("a 40-bit secret is refused");
    assert!(err.contains("at least 256"), "{err}");
    assert!(!err.contains("c2hvcnQ"), "{err}");
    let _ = Duration::from_secs(0);
}
