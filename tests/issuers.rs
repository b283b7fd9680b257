//! Trusted issuers (`security.issuers.<name>`, SPEC §11): Inmanta-shaped HS256
//! tokens made by Python's PyJWT exactly as Inmanta makes them, an RS256 issuer
//! whose keys are the real `oidc-provider`'s JWKS, and `security.oidc` next to them.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::idp::Idp;
use common::*;
use portcullis::cli::client::Reply;
use serde_json::{Value, json};

/// Inmanta's `[auth_jwt_default]` as an administrator would write it.
const INMANTA_ISS: &str = "https://inmanta.test:8888/";
const INMANTA_KEY: &str = "-W1DXzhbT012uyHpMpSIXlMMHWm5jth83q-Sw8R-EAE";
/// A second HS256 issuer with policies on its claims.
const BOUND_ISS: &str = "https://bound.test/";
const BOUND_KEY: &str = "Qm91bmQtaXNzdWVyLWtleS0wMTIzNDU2Nzg5YWJjZGVm";
const ENV_A: &str = "8f0c3c5e-7c8e-4d34-9d0b-1c7a3f3e1a01";
const ENV_B: &str = "8f0c3c5e-7c8e-4d34-9d0b-1c7a3f3e1a02";
/// An RS256 issuer whose keys are the test IdP's JWKS.
const RS_ISS: &str = "https://rs.test";
const AUD: &str = "https://portcullis.test";

/// A token signed by PyJWT the way Inmanta's `encode_token` signs its own: the
/// HMAC key is the configured `key` base64url-decoded (`urlsafe_b64decode(key +
/// "==")`), `jwt.encode(payload, key, "HS256")`. `alg` overrides the algorithm.
fn pyjwt(claims: &Value, key: &str, alg: &str) -> String {
    const SCRIPT: &str = r#"
import base64, json, sys
import jwt
req = json.load(sys.stdin)
key = base64.urlsafe_b64decode((req["key"] + "==").encode("ascii"))
sys.stdout.write(jwt.encode(req["claims"], key, req["alg"]))
"#;
    let mut child = Command::new(python())
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} (scripts/test installs it): {e}", python()));
    let req = json!({"claims": claims, "key": key, "alg": alg});
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), req.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "PyJWT is missing or failed (scripts/test installs it with pip; PORTCULLIS_TEST_PYTHON={}): {}",
        python(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Exactly Inmanta's payload for an agent token of environment `env`, plus `sub`
/// and `groups` as an IdP would add them.
fn inmanta_claims(iss: &str, ct: &str, env: &str, sub: &str) -> Value {
    json!({"iss": iss, "aud": [INMANTA_ISS], "urn:inmanta:ct": ct, "urn:inmanta:env": env,
           "sub": sub, "groups": ["pcanalysts"], "iat": now(), "exp": now() + 600})
}

fn bound_claims(env: &str, team: Value) -> Value {
    json!({"iss": BOUND_ISS, "aud": "bound-aud", "urn:inmanta:ct": ["agent"],
           "urn:inmanta:env": env, "org": {"team": team, "member": {"name": "pcbound"}},
           "exp": now() + 600})
}

fn write_conf(dir: &Path, idp: Option<&Idp>) -> String {
    let mut issuers = json!({
        "inmanta": {
            "issuer": INMANTA_ISS, "audience": INMANTA_ISS, "algorithm": "HS256",
            "secret": INMANTA_KEY, "client_types": "agent,api"
        },
        "bound": {
            "issuer": BOUND_ISS, "audience": ["bound-aud"], "algorithm": "HS256",
            "secret": BOUND_KEY, "username_claim": "org.member.name", "groups_claim": "",
            "required_claims": {"urn:inmanta:env": [ENV_A, ENV_B], "org.team": "ops"}
        }
    });
    let mut conf = json!({
        "security": {
            "grouplabelfile": dir.join("gl.csv"),
            "token": {"claim_prefix": "urn:inmanta:"},
            "max_failed_attempts": 0
        }
    });
    if let Some(idp) = idp {
        issuers["rs"] = json!({
            "issuer": RS_ISS, "audience": AUD, "jwks_uri": format!("{}/jwks", idp.url),
            "ca_cert": idp.ca, "jwks_request_timeout": 3
        });
        conf["security"]["oidc"] = json!({
            "issuer": idp.url, "audience": AUD, "ca_cert": idp.ca
        });
    }
    conf["security"]["issuers"] = issuers;
    std::fs::write(dir.join("gl.csv"), "pcanalysts,apple\n").unwrap();
    let path = dir.join("issuers.conf");
    std::fs::write(&path, conf.to_string()).unwrap();
    path.display().to_string()
}

/// `POST /v1/login` with `token`: refused with `status`, and a new audit line with
/// `reason` (counted, so each refusal is checked, not an earlier one).
async fn refused(d: &Daemon, token: &str, status: u16, reason: &str) -> Reply {
    let needle = format!("reason=\"{reason}\"");
    let before = d.log().matches(&needle).count();
    let r = bearer(d, token).await;
    assert_eq!(r.status, status, "{:?}\n{}", r.json(), d.log());
    let code = match status {
        401 => "authentication_failed",
        403 => "account_unavailable",
        _ => "",
    };
    assert_eq!(r.json()["error"], code, "{:?}", r.json());
    for _ in 0..100 {
        if d.log().matches(&needle).count() > before {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no new {needle} in the log:\n{}", d.log());
}

/// Requests the IdP has seen so far (its `--log-requests` lines).
fn idp_requests(idp: &Idp) -> usize {
    idp.log()
        .lines()
        .filter(|l| l.starts_with("idp: request "))
        .count()
}

#[tokio::test]
async fn hs256_and_rs256_issuers_next_to_security_oidc() {
    let dir = tempdir();
    let idp = Idp::start(dir.path());
    let conf = write_conf(dir.path(), Some(&idp));
    let d = Daemon::start_with_file(dir.path(), &conf, &[]);

    // An Inmanta agent token, signed by PyJWT with Inmanta's key: accepted, the
    // user and groups from its claims, the issuer named in the audit line.
    let good = pyjwt(
        &inmanta_claims(INMANTA_ISS, "agent", ENV_A, "inmanta-agent"),
        INMANTA_KEY,
        "HS256",
    );
    let r = bearer(&d, &good).await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.json(), d.log());
    let v = r.json();
    assert_eq!(v["user"], "inmanta-agent");
    assert_eq!(v["mechanism"], "oidc");
    assert_eq!(strings(&v["groups"]), ["pcanalysts"]);
    assert_eq!(strings(&v["labels"]), ["apple"]);
    wait_for_log(&d, "issuer=\"inmanta\"").await;
    assert!(
        d.log()
            .lines()
            .any(|l| l.contains("issuer=\"inmanta\"") && l.contains("user=\"inmanta-agent\"")),
        "{}",
        d.log()
    );

    // The same token claiming the RS256 issuer: HS256 is not its algorithm.
    let claims = inmanta_claims(RS_ISS, "agent", ENV_A, "inmanta-agent");
    let t = pyjwt(&claims, INMANTA_KEY, "HS256");
    refused(&d, &t, 401, "algorithm_mismatch").await;
    // Nor signed HS256 with the RS256 issuer's public key as the HMAC secret.
    let pem = idp.public_pem().await;
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = None;
    let t = jsonwebtoken::encode(
        &h,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(pem.as_bytes()),
    )
    .unwrap();
    refused(&d, &t, 401, "algorithm_mismatch").await;
    // An RS256 token from the IdP's key claiming the HS256 issuer.
    let mut c = inmanta_claims(INMANTA_ISS, "agent", ENV_A, "inmanta-agent");
    c["aud"] = json!(INMANTA_ISS);
    let t = idp.sign(json!({"alg": "RS256"}), c, "rsa").await;
    refused(&d, &t, 401, "algorithm_mismatch").await;
    // alg: none, unsigned, for the HS256 issuer.
    let parts: Vec<&str> = good.split('.').collect();
    let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let t = format!("{none}.{}.", parts[1]);
    refused(&d, &t, 401, "token_malformed").await;
    // Another key, and a tampered payload.
    let t = pyjwt(
        &inmanta_claims(INMANTA_ISS, "agent", ENV_A, "inmanta-agent"),
        BOUND_KEY,
        "HS256",
    );
    refused(&d, &t, 401, "bad_signature").await;
    let mut p: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    p["sub"] = json!("root");
    let t = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(p.to_string()),
        parts[2]
    );
    refused(&d, &t, 401, "bad_signature").await;

    // Expired (beyond the 60 s leeway), and for another audience.
    let mut c = inmanta_claims(INMANTA_ISS, "agent", ENV_A, "inmanta-agent");
    c["exp"] = json!(now() - 3600);
    let t = pyjwt(&c, INMANTA_KEY, "HS256");
    refused(&d, &t, 401, "token_expired").await;
    let mut c = inmanta_claims(INMANTA_ISS, "agent", ENV_A, "inmanta-agent");
    c["aud"] = json!(["https://elsewhere.test/"]);
    let t = pyjwt(&c, INMANTA_KEY, "HS256");
    refused(&d, &t, 401, "wrong_audience").await;
    // No exp at all (Inmanta's idempotent tokens): refused.
    let mut c = inmanta_claims(INMANTA_ISS, "agent", ENV_A, "inmanta-agent");
    c.as_object_mut().unwrap().remove("exp");
    let t = pyjwt(&c, INMANTA_KEY, "HS256");
    refused(&d, &t, 401, "missing_claim").await;

    // client_types agent,api: a compiler token is genuine but not accepted (403).
    let t = pyjwt(
        &inmanta_claims(INMANTA_ISS, "compiler", ENV_A, "inmanta-compiler"),
        INMANTA_KEY,
        "HS256",
    );
    let r = refused(&d, &t, 403, "client_type_not_allowed").await;
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("urn:inmanta:ct"),
        "{:?}",
        r.json()
    );
    // "compiler,api" (Inmanta's comma-separated form) has one that is.
    let t = pyjwt(
        &inmanta_claims(INMANTA_ISS, "compiler,api", ENV_A, "inmanta-cli"),
        INMANTA_KEY,
        "HS256",
    );
    assert_eq!(bearer(&d, &t).await.status, 200, "{}", d.log());

    // An unknown iss: 401, and nothing is contacted (the IdP sees no request).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = idp_requests(&idp);
    let t = pyjwt(
        &inmanta_claims("https://stranger.test/", "agent", ENV_A, "x"),
        INMANTA_KEY,
        "HS256",
    );
    refused(&d, &t, 401, "unknown_issuer").await;
    let mut c = inmanta_claims("https://stranger.test/", "agent", ENV_A, "x");
    c["aud"] = json!(AUD);
    let t = idp.sign(json!({"alg": "RS256"}), c, "rsa").await;
    let signed = idp_requests(&idp);
    refused(&d, &t, 401, "unknown_issuer").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        idp_requests(&idp),
        signed,
        "the IdP was contacted:\n{}",
        idp.log()
    );
    assert_eq!(signed, before + 1, "only the test's own /test/sign");

    // The RS256 issuer: a token signed with the real IdP's key, checked against its JWKS.
    let c = json!({"iss": RS_ISS, "aud": AUD, "sub": "rs-user", "groups": ["pcanalysts", "rs-team"],
                   "exp": now() + 300});
    let t = idp.sign(json!({"alg": "RS256"}), c.clone(), "rsa").await;
    let r = bearer(&d, &t).await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.json(), d.log());
    assert_eq!(r.json()["user"], "rs-user");
    assert_eq!(strings(&r.json()["groups"]), ["pcanalysts", "rs-team"]);
    // Its EC key is in the same JWKS, but ES256 is not the issuer's algorithm.
    let t = idp.sign(json!({"alg": "ES256"}), c, "ec").await;
    refused(&d, &t, 401, "algorithm_mismatch").await;

    // security.oidc keeps working: a real access token of the provider.
    let t = idp
        .token("oidc-alice", &["pcanalysts"], Some(AUD), "RS256", 300)
        .await;
    let r = bearer(&d, &t).await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.json(), d.log());
    assert_eq!(r.json()["user"], "oidc-alice");
    assert_eq!(strings(&r.json()["labels"]), ["apple"]);
    let m = methods(&d).await;
    assert_eq!(m["oidc"]["issuer"], json!(idp.url));

    assert!(!d.log().contains(&good), "a token reached the log");
    assert!(!d.log().contains(INMANTA_KEY), "a secret reached the log");
}

#[tokio::test]
async fn required_claims_and_issuers_without_security_oidc() {
    let dir = tempdir();
    let conf = write_conf(dir.path(), None);
    // Only trusted issuers: the oidc mechanism starts without security.oidc.
    let d = Daemon::start_with_file(dir.path(), &conf, &[]);
    let m = methods(&d).await;
    assert!(
        strings(&m["mechanisms"]).contains(&"oidc".to_string()),
        "{m}"
    );
    assert!(m.get("oidc").is_none(), "no IdP to discover: {m}");

    // The environment in the list, the team by dot path, the user from a dot path.
    let t = pyjwt(&bound_claims(ENV_B, json!("ops")), BOUND_KEY, "HS256");
    let r = bearer(&d, &t).await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.json(), d.log());
    assert_eq!(r.json()["user"], "pcbound");
    assert_eq!(
        strings(&r.json()["groups"]),
        Vec::<String>::new(),
        "groups_claim is empty"
    );
    // A claim that is a list matches when one element does.
    let t = pyjwt(
        &bound_claims(ENV_A, json!(["dev", "ops"])),
        BOUND_KEY,
        "HS256",
    );
    assert_eq!(bearer(&d, &t).await.status, 200, "{}", d.log());

    // Another environment, another team, no team: 403 naming the claim, not the value.
    let other_env = "0b8e2a52-0000-4000-8000-000000000000";
    let t = pyjwt(&bound_claims(other_env, json!("ops")), BOUND_KEY, "HS256");
    let r = refused(&d, &t, 403, "required_claim_mismatch").await;
    let message = r.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("urn:inmanta:env"), "{message}");
    assert!(
        !message.contains(other_env) && !message.contains(ENV_A),
        "{message}"
    );
    let t = pyjwt(&bound_claims(ENV_A, json!(["dev"])), BOUND_KEY, "HS256");
    let r = refused(&d, &t, 403, "required_claim_mismatch").await;
    assert!(r.json()["message"].as_str().unwrap().contains("org.team"));
    let mut c = bound_claims(ENV_A, json!("ops"));
    c["org"].as_object_mut().unwrap().remove("team");
    let t = pyjwt(&c, BOUND_KEY, "HS256");
    refused(&d, &t, 403, "required_claim_mismatch").await;
    assert!(
        d.log()
            .lines()
            .any(|l| l.contains("issuer=\"bound\"")
                && l.contains("reason=\"required_claim_mismatch\"")),
        "the audit line names the issuer:\n{}",
        d.log()
    );

    // Not a JWT naming an issuer, with no security.oidc to send it to.
    refused(&d, "an-opaque-token", 401, "unknown_issuer").await;
    drop(d);

    // Refusals count against the client's address like any failed login (SPEC §9).
    let dir2 = tempdir();
    let d = Daemon::start_with_file(dir2.path(), &conf, &["security.max_failed_attempts=2"]);
    let stranger = pyjwt(
        &inmanta_claims("https://stranger.test/", "agent", ENV_A, "x"),
        INMANTA_KEY,
        "HS256",
    );
    for _ in 0..2 {
        assert_eq!(bearer(&d, &stranger).await.status, 401);
    }
    let r = bearer(&d, &stranger).await;
    assert_eq!(r.status, 429, "{:?}", r.json());
}

#[test]
fn check_config_names_the_issuer_and_masks_its_secret() {
    let dir = tempdir();
    let conf = dir.path().join("bad.conf");
    std::fs::write(
        &conf,
        json!({"security": {"issuers": {
            "short": {"issuer": "https://short.test", "algorithm": "HS256", "secret": "c2hvcnQtc2VjcmV0"},
            "both": {"issuer": "https://both.test", "algorithm": "HS256", "secret": INMANTA_KEY,
                     "jwks_uri": "https://both.test/jwks"},
            "nosecret": {"issuer": "https://nosecret.test", "algorithm": "HS256",
                         "jwks_uri": "https://nosecret.test/jwks"},
            "twin": {"issuer": "https://short.test/", "jwks_uri": "https://twin.test/jwks"},
            "typo": {"issuer": "https://typo.test", "jwks_uri": "https://typo.test/jwks",
                     "groups_clam": "roles"}
        }}})
        .to_string(),
    )
    .unwrap();
    let o = Command::new(BIN)
        .args(["check-config", "--dev", "-c"])
        .arg(&conf)
        .arg("-D")
        .arg(format!("system.state_dir={}", dir.path().display()))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    for needle in [
        r#""security.issuers.short.secret" is 96 bits; an HS256 secret needs at least 256"#,
        r#""security.issuers.both.jwks_uri" and "security.issuers.both.secret" are both set"#,
        r#""security.issuers.nosecret.algorithm" is HS256 but "security.issuers.nosecret.secret" is not set"#,
        r#""security.issuers.twin.issuer" is "https://short.test/", the issuer of security.issuers.short too"#,
        r#"unknown key "security.issuers.typo.groups_clam" (did you mean "security.issuers.typo.groups_claim"?)"#,
    ] {
        assert!(err.contains(needle), "missing {needle}:\n{err}");
    }
    assert!(!err.contains(INMANTA_KEY), "{err}");

    // A valid one prints every key of the issuer, its secret masked.
    let o = Command::new(BIN)
        .args(["check-config", "--dev"])
        .arg("-D")
        .arg(format!("system.state_dir={}", dir.path().display()))
        .args([
            "-D",
            "security.issuers.inmanta.issuer=https://inmanta.test:8888/",
            "-D",
            "security.issuers.inmanta.algorithm=HS256",
            "-D",
            "security.issuers.inmanta.audience=https://inmanta.test:8888/",
            "-D",
        ])
        .arg(format!("security.issuers.inmanta.secret={INMANTA_KEY}"))
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(0), "{all}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let i = &v["security"]["issuers"]["inmanta"];
    assert_eq!(i["secret"], "***");
    assert_eq!(i["username_claim"], "sub");
    assert_eq!(i["jwks_request_timeout"], 5);
    assert_eq!(i["client_types"], json!([]));
    assert!(
        strings(&v["security"]["mechanisms"]).contains(&"oidc".to_string()),
        "{v}"
    );
    assert!(!all.contains(INMANTA_KEY), "{all}");
}
