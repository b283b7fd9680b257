//! The floor for OIDC benchmarks: verifying one access token's signature and claims
//! with the IdP's own JWKS in a loop (jsonwebtoken + aws-lc-rs, as the daemon does),
//! without TLS, HTTP or the rest of the login.
//!
//!   cargo run --release --example oidc_floor -- --jwks jwks.json --token-file t.jwt \
//!       --issuer https://127.0.0.1:PORT --audience https://portcullis.test --concurrency 2
//!
//!   cargo run --release --example oidc_floor -- --secret B64URL --token-file t.jwt \
//!       --issuer https://inmanta --audience https://inmanta [--hmac-only]
//!
//! `--secret` verifies an HS256 token with that key (URL-safe base64, as
//! `security.issuers.<name>.secret`); `--hmac-only` times the bare HMAC-SHA256 of
//! the signing input (aws-lc-rs), without parsing the token or its claims.
//! Prints verifications per second and p50/p99, in the same shape as loadgen.

use std::path::PathBuf;

#[path = "support/measure.rs"]
mod measure;
use measure::percentile;
use std::time::{Duration, Instant};

use clap::Parser;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};

#[derive(Parser)]
struct Args {
    /// The IdP's JWKS document (JSON file)
    #[arg(long, required_unless_present = "secret", conflicts_with = "secret")]
    jwks: Option<PathBuf>,
    /// An HS256 key, URL-safe base64 without padding
    #[arg(long)]
    secret: Option<String>,
    /// Time only the HMAC of the signing input (with --secret)
    #[arg(long, requires = "secret")]
    hmac_only: bool,
    /// A file holding one JWT access token
    #[arg(long)]
    token_file: PathBuf,
    #[arg(long)]
    issuer: String,
    #[arg(long)]
    audience: String,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    #[arg(long)]
    json: bool,
}

fn main() {
    let args = Args::parse();
    let token = std::fs::read_to_string(&args.token_file)
        .expect("token file")
        .trim()
        .to_string();
    let header = decode_header(&token).expect("a JWT");
    let (key, raw_secret) = match (&args.jwks, &args.secret) {
        (Some(path), _) => {
            let set: JwkSet = serde_json::from_slice(&std::fs::read(path).expect("jwks file"))
                .expect("JWKS JSON");
            let jwk = set
                .keys
                .iter()
                .find(|k| k.common.key_id == header.kid)
                .expect("the token's kid is in the JWKS");
            (DecodingKey::from_jwk(jwk).expect("usable JWK"), Vec::new())
        }
        (None, Some(secret)) => {
            use base64::Engine;
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(secret.trim())
                .expect("URL-safe base64");
            (DecodingKey::from_secret(&raw), raw)
        }
        (None, None) => unreachable!("clap requires one"),
    };
    let hmac_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &raw_secret);
    let (signing_input, signature) = token.rsplit_once('.').expect("a JWT");
    let signature = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .expect("base64 signature")
    };
    let mut v = Validation::new(header.alg);
    v.leeway = 60;
    v.set_issuer(&[&args.issuer]);
    v.set_audience(&[&args.audience]);
    let check = |token: &str| -> bool {
        if args.hmac_only {
            aws_lc_rs::hmac::verify(&hmac_key, signing_input.as_bytes(), &signature).is_ok()
        } else {
            decode::<serde_json::Value>(token, &key, &v).is_ok()
        }
    };
    assert!(check(&token), "the token verifies");
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let results: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.concurrency)
            .map(|_| {
                s.spawn(|| {
                    let mut lat = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        assert!(check(&token));
                        lat.push(t.elapsed().as_nanos() as u32);
                    }
                    lat
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat: Vec<u32> = results.into_iter().flatten().collect();
    lat.sort_unstable();
    let pct = |p: f64| percentile(&lat, p, 1e6);
    let rate = lat.len() as f64 / elapsed;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"mode": if args.hmac_only { "hmac" } else { "verify" }, "alg": format!("{:?}", header.alg), "concurrency": args.concurrency,
                "requests": lat.len(), "seconds": (elapsed * 1000.0).round() / 1000.0, "rate": (rate * 10.0).round() / 10.0, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "errors": 0})
        );
    } else {
        println!(
            "verify {:?} c={} {elapsed:.2}s: {rate:.1} verifications/s, p50 {:.4} ms, p99 {:.4} ms",
            header.alg,
            args.concurrency,
            pct(0.5),
            pct(0.99)
        );
    }
}
