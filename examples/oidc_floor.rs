//! The floor for OIDC benchmarks: verifying one access token's signature and claims
//! with the IdP's own JWKS in a loop (jsonwebtoken + aws-lc-rs, as the daemon does),
//! without TLS, HTTP or the rest of the login.
//!
//!   cargo run --release --example oidc_floor -- --jwks jwks.json --token-file t.jwt \
//!       --issuer https://127.0.0.1:PORT --audience https://portcullis.test --concurrency 2
//!
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
    #[arg(long)]
    jwks: PathBuf,
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
    let set: JwkSet =
        serde_json::from_slice(&std::fs::read(&args.jwks).expect("jwks file")).expect("JWKS JSON");
    let header = decode_header(&token).expect("a JWT");
    let jwk = set
        .keys
        .iter()
        .find(|k| k.common.key_id == header.kid)
        .expect("the token's kid is in the JWKS");
    let key = DecodingKey::from_jwk(jwk).expect("usable JWK");
    let mut v = Validation::new(header.alg);
    v.leeway = 60;
    v.set_issuer(&[&args.issuer]);
    v.set_audience(&[&args.audience]);
    decode::<serde_json::Value>(&token, &key, &v).expect("the token verifies");
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let results: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.concurrency)
            .map(|_| {
                s.spawn(|| {
                    let mut lat = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let ok = decode::<serde_json::Value>(&token, &key, &v).is_ok();
                        assert!(ok);
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
            serde_json::json!({"mode": "verify", "alg": format!("{:?}", header.alg), "concurrency": args.concurrency,
                "requests": lat.len(), "rate": (rate * 10.0).round() / 10.0, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "errors": 0})
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
