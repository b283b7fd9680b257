//! The daemon's signing key for the JWTs it issues (SPEC §11) and the public keys
//! it still vouches for.
//!
//! EdDSA (Ed25519) and ES256 (P-256) keys live in `security.token.key_file` (PKCS#8
//! PEM, 0600), made on the first start when missing. An operator rotates by writing
//! a new key there and sending SIGHUP: the old public key is kept in the JWKS, in
//! `<state_dir>/token-keys.json`, until the last token it signed has expired —
//! sessions last at most `session_ttl`; service tokens record how long they last
//! (forever for `--ttl 0`). HS256 uses `security.token.secret` and publishes no key.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::types::{TokenAlgorithm, TokenSettings};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("security.token.key_file {0}: {1}")]
    File(PathBuf, String),
    #[error("security.token.secret: {0}")]
    Secret(String),
    #[error("{0}: {1}")]
    State(PathBuf, String),
}

/// A verification key, with its public JWK when it has one.
#[derive(Clone)]
pub struct PublicKey {
    pub kid: String,
    pub decoding: DecodingKey,
    /// `None` for HS256 (a shared secret is never published).
    pub jwk: Option<Value>,
}

pub struct SigningKey {
    pub algorithm: Algorithm,
    pub encoding: EncodingKey,
    pub public: PublicKey,
}

/// A public key no longer signing, kept until `until` (unix seconds; `None`: for
/// ever, a never-expiring service token was signed with it).
#[derive(Clone, Serialize, Deserialize)]
struct Retired {
    kid: String,
    jwk: Value,
    until: Option<u64>,
}

/// `<state_dir>/token-keys.json`.
#[derive(Default, Serialize, Deserialize)]
struct State {
    /// The current key (its kid and public JWK, so it can still be published after
    /// the key file is replaced) and the longest-lived service token it signed.
    current: Option<String>,
    #[serde(default)]
    current_jwk: Option<Value>,
    #[serde(default)]
    current_service_until: Option<Option<u64>>,
    #[serde(default)]
    retired: Vec<Retired>,
}

/// The keys in force: the one signing, and every one still verifying.
pub struct KeySet {
    pub signing: SigningKey,
    pub retired: Vec<PublicKey>,
    state_path: PathBuf,
    state: State,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// RFC 7638 thumbprint of the required members, as the `kid`.
fn thumbprint(jwk: &Value) -> String {
    let canonical = match jwk["kty"].as_str() {
        Some("OKP") => json!({"crv": jwk["crv"], "kty": "OKP", "x": jwk["x"]}),
        Some("RSA") => json!({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}),
        _ => json!({"crv": jwk["crv"], "kty": "EC", "x": jwk["x"], "y": jwk["y"]}),
    };
    // serde_json writes object keys in order: they are sorted here already.
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.to_string().as_bytes()))
}

fn decoding_from_jwk(jwk: &Value) -> Option<DecodingKey> {
    match jwk["kty"].as_str()? {
        "OKP" => DecodingKey::from_ed_components(jwk["x"].as_str()?).ok(),
        "EC" => DecodingKey::from_ec_components(jwk["x"].as_str()?, jwk["y"].as_str()?).ok(),
        "RSA" => DecodingKey::from_rsa_components(jwk["n"].as_str()?, jwk["e"].as_str()?).ok(),
        _ => None,
    }
}

/// Modulus and exponent (big-endian, no leading zero) of a PKCS#1 RSAPublicKey.
fn rsa_public(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (_, obj) = x509_parser::der_parser::parse_der(der).ok()?;
    let seq = obj.as_sequence().ok()?;
    let int = |i: usize| -> Option<Vec<u8>> {
        let bytes = seq.get(i)?.as_slice().ok()?;
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        Some(bytes[start..].to_vec())
    };
    Some((int(0)?, int(1)?))
}

/// The PKCS#1 key inside a PKCS#8 PrivateKeyInfo (what the RSA signer takes).
fn pkcs8_inner(der: &[u8]) -> Option<&[u8]> {
    let (_, obj) = x509_parser::der_parser::parse_der(der).ok()?;
    let seq = obj.as_sequence().ok()?;
    let inner = seq.get(2)?.as_slice().ok()?;
    // Borrowed from `der`: find it there to return a slice of the input.
    let at = der.windows(inner.len()).position(|w| w == inner)?;
    Some(&der[at..at + inner.len()])
}

fn public_from_jwk(kid: String, jwk: Value) -> Option<PublicKey> {
    Some(PublicKey {
        kid,
        decoding: decoding_from_jwk(&jwk)?,
        jwk: Some(jwk),
    })
}

/// Read (or on first start make) the asymmetric key; its algorithm and public JWK.
fn load_asymmetric(path: &Path, alg: TokenAlgorithm) -> Result<SigningKey, KeyError> {
    let err = |m: String| KeyError::File(path.to_path_buf(), m);
    let (sig_alg, algorithm, crv) = match alg {
        TokenAlgorithm::EdDSA => (&rcgen::PKCS_ED25519, Algorithm::EdDSA, "Ed25519"),
        TokenAlgorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256, "P-256"),
        TokenAlgorithm::RS256 => (&rcgen::PKCS_RSA_SHA256, Algorithm::RS256, "RSA"),
        TokenAlgorithm::HS256 => unreachable!("HS256 has no key file"),
    };
    let pem = match std::fs::read_to_string(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = rcgen::KeyPair::generate_for(sig_alg).map_err(|e| err(e.to_string()))?;
            let pem = key.serialize_pem();
            write_private(path, &pem).map_err(|e| err(format!("cannot create: {e}")))?;
            tracing::info!(path = %path.display(), algorithm = ?algorithm, "made a new token signing key");
            pem
        }
        Err(e) => return Err(err(format!("cannot read: {e}"))),
    };
    let key = rcgen::KeyPair::from_pem(&pem)
        .map_err(|e| err(format!("not a PKCS#8 PEM private key: {e}")))?;
    if !key.is_compatible(sig_alg) {
        return Err(err(format!(
            "holds a key of another kind than security.token.algorithm {alg:?} needs ({crv})"
        )));
    }
    let raw = key.public_key_raw();
    let jwk = match alg {
        TokenAlgorithm::EdDSA => {
            json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(raw)})
        }
        TokenAlgorithm::RS256 => {
            let (n, e) = rsa_public(raw).ok_or_else(|| err("unreadable RSA public key".into()))?;
            json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode(n), "e": URL_SAFE_NO_PAD.encode(e)})
        }
        _ => {
            // Uncompressed point: 0x04 || x || y.
            if raw.len() != 65 {
                return Err(err("unexpected P-256 public key length".into()));
            }
            json!({"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..])})
        }
    };
    let der = key.serialize_der();
    let encoding = match alg {
        TokenAlgorithm::EdDSA => EncodingKey::from_ed_der(&der),
        TokenAlgorithm::RS256 => EncodingKey::from_rsa_der(
            pkcs8_inner(&der).ok_or_else(|| err("not a PKCS#8 RSA private key".into()))?,
        ),
        _ => EncodingKey::from_ec_der(&der),
    };
    let kid = thumbprint(&jwk);
    let mut published = jwk.clone();
    published["kid"] = json!(kid);
    published["use"] = json!("sig");
    published["alg"] = json!(format!("{algorithm:?}"));
    let public = public_from_jwk(kid, published)
        .ok_or_else(|| err("cannot make a verification key from it".into()))?;
    Ok(SigningKey {
        algorithm,
        encoding,
        public,
    })
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

fn load_hs256(secret: &str) -> Result<SigningKey, KeyError> {
    if let Some(p) = crate::config::validate::hs256_secret_problem(secret) {
        return Err(KeyError::Secret(p));
    }
    let raw = URL_SAFE_NO_PAD
        .decode(secret.trim())
        .map_err(|e| KeyError::Secret(e.to_string()))?;
    // Not published, so the kid only has to tell keys apart in logs.
    let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(&raw)[..8]);
    Ok(SigningKey {
        algorithm: Algorithm::HS256,
        encoding: EncodingKey::from_secret(&raw),
        public: PublicKey {
            kid,
            decoding: DecodingKey::from_secret(&raw),
            jwk: None,
        },
    })
}

impl KeySet {
    /// The keys of `settings`; the key that signed before (from the state file) is
    /// retired if it is not the one in the key file now.
    pub fn load(
        settings: &TokenSettings,
        state_dir: &Path,
        session_ttl: u64,
    ) -> Result<KeySet, KeyError> {
        let signing = match settings.algorithm {
            TokenAlgorithm::HS256 => {
                load_hs256(settings.secret.as_ref().map_or("", |s| s.as_str()))?
            }
            alg => load_asymmetric(&key_path(settings, state_dir), alg)?,
        };
        let state_path = state_dir.join("token-keys.json");
        let mut state: State = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| KeyError::State(state_path.clone(), e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(KeyError::State(state_path.clone(), e.to_string())),
        };
        let now = now();
        // The key signing before this start (or reload) may have been replaced.
        if let Some(old) = state.current.clone()
            && old != signing.public.kid
            && let Some(prev) = state.current_jwk.clone()
        {
            let sessions_until = now + session_ttl;
            let until = match state.current_service_until {
                Some(None) => None,
                Some(Some(t)) => Some(t.max(sessions_until)),
                None => Some(sessions_until),
            };
            state.retired.retain(|r| r.kid != old);
            state.retired.push(Retired {
                kid: old,
                jwk: prev,
                until,
            });
            state.current_service_until = None;
        }
        state
            .retired
            .retain(|r| r.kid != signing.public.kid && r.until.is_none_or(|u| u > now));
        state.current = Some(signing.public.kid.clone());
        state.current_jwk = signing.public.jwk.clone();
        let retired = state
            .retired
            .iter()
            .filter_map(|r| public_from_jwk(r.kid.clone(), r.jwk.clone()))
            .collect();
        let set = KeySet {
            signing,
            retired,
            state_path,
            state,
        };
        set.save()?;
        Ok(set)
    }

    fn save(&self) -> Result<(), KeyError> {
        let text = serde_json::to_vec_pretty(&self.state).expect("serialisable");
        let tmp = self.state_path.with_extension("json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &self.state_path))
            .map_err(|e| KeyError::State(self.state_path.clone(), e.to_string()))
    }

    /// A service token lasting until `until` (unix seconds; `None`: for ever) was
    /// signed: the key must be published at least that long after it is replaced.
    pub fn signed_service_token(&mut self, until: Option<u64>) -> Result<(), KeyError> {
        let longer = match (self.state.current_service_until, until) {
            (Some(None), _) => None,
            (_, None) => Some(None),
            (Some(Some(a)), Some(b)) => (b > a).then_some(Some(b)),
            (None, Some(b)) => Some(Some(b)),
        };
        if let Some(v) = longer {
            self.state.current_service_until = Some(v);
            self.save()?;
        }
        Ok(())
    }

    /// Every key a token may be verified with: the current one first.
    pub fn verifying(&self) -> impl Iterator<Item = &PublicKey> {
        std::iter::once(&self.signing.public).chain(self.retired.iter())
    }

    /// `GET /.well-known/jwks.json`.
    pub fn jwks(&self) -> Value {
        let keys: Vec<&Value> = self.verifying().filter_map(|k| k.jwk.as_ref()).collect();
        json!({ "keys": keys })
    }
}

/// `security.token.key_file`, or `<state_dir>/token-key.pem`.
pub fn key_path(settings: &TokenSettings, state_dir: &Path) -> PathBuf {
    settings
        .key_file
        .clone()
        .unwrap_or_else(|| state_dir.join("token-key.pem"))
}
