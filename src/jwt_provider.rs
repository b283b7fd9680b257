//! jsonwebtoken's aws-lc provider, with the RSA and ECDSA public keys it verifies
//! with kept parsed.
//!
//! Why: jsonwebtoken's aws-lc backend clones the key and builds it from its bytes on
//! every verification — for RSA the modulus into a Montgomery context, for ECDSA the
//! point checked on its curve — a few µs of every JWT login (perf, issue 15). The
//! keys come from a JWKS or the configuration and are few, so they are kept here,
//! parsed once, keyed by algorithm and key bytes. Which algorithm a key may verify,
//! the header and the claims stay jsonwebtoken's: only the verifier object changes,
//! with the same aws-lc parameters per algorithm as jsonwebtoken's own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use aws_lc_rs::signature::{self as sig, ParsedPublicKey, RsaPublicKeyComponents};
use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};

/// Parsed keys kept at most; past it the map starts again (a JWKS is a few keys).
const MAX_KEYS: usize = 256;

/// By algorithm and the key's main bytes (an RSA modulus, an EC point), with the
/// rest of the key (an RSA exponent) beside the parsed key: looked up by borrowed
/// bytes, so a verification copies no key material.
type Keys = Mutex<HashMap<Algorithm, HashMap<Vec<u8>, (Vec<u8>, Arc<ParsedPublicKey>)>>>;

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(Keys::default)
}

/// Make this the process's jsonwebtoken provider; call once at startup, before any
/// token is verified. A second call (tests in one process) changes nothing.
pub fn install() {
    static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();
    let default = &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER;
    let utils = &default.key_utils;
    let provider = PROVIDER.get_or_init(|| CryptoProvider {
        signer_factory: default.signer_factory,
        verifier_factory: verifier,
        key_utils: jsonwebtoken::crypto::KeyUtils {
            rsa_pub_components_from_private_key: utils.rsa_pub_components_from_private_key,
            rsa_pub_components_from_public_key: utils.rsa_pub_components_from_public_key,
            ec_pub_components_from_private_key: utils.ec_pub_components_from_private_key,
            ed_pub_components_from_private_key: utils.ed_pub_components_from_private_key,
            compute_digest: utils.compute_digest,
        },
    });
    let _ = provider.install_default();
}

fn verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    match parsed(*alg, key)? {
        Some(key) => Ok(Box::new(Parsed { alg: *alg, key })),
        None => (jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.verifier_factory)(alg, key),
    }
}

/// The kept parsed key for RSA and ECDSA algorithms (`None`: jsonwebtoken's own
/// verifier, e.g. HMAC, EdDSA, or a key in a form not handled here).
fn parsed(alg: Algorithm, key: &DecodingKey) -> Result<Option<Arc<ParsedPublicKey>>> {
    use Algorithm::*;
    let rsa: Option<&'static sig::RsaParameters> = match alg {
        RS256 => Some(&sig::RSA_PKCS1_2048_8192_SHA256),
        RS384 => Some(&sig::RSA_PKCS1_2048_8192_SHA384),
        RS512 => Some(&sig::RSA_PKCS1_2048_8192_SHA512),
        PS256 => Some(&sig::RSA_PSS_2048_8192_SHA256),
        PS384 => Some(&sig::RSA_PSS_2048_8192_SHA384),
        PS512 => Some(&sig::RSA_PSS_2048_8192_SHA512),
        _ => None,
    };
    let ec: Option<&'static sig::EcdsaVerificationAlgorithm> = match alg {
        ES256 => Some(&sig::ECDSA_P256_SHA256_FIXED),
        ES384 => Some(&sig::ECDSA_P384_SHA384_FIXED),
        _ => None,
    };
    let (family, main, rest): (_, &[u8], &[u8]) = match (rsa, ec, key.kind()) {
        (Some(_), _, DecodingKeyKind::RsaModulusExponent { n, e }) => (AlgorithmFamily::Rsa, n, e),
        (_, Some(_), DecodingKeyKind::SecretOrDer(point)) => (AlgorithmFamily::Ec, point, &[]),
        _ => return Ok(None),
    };
    // As jsonwebtoken's verifiers: a key of another family is refused, never used.
    if key.family() != family {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    let mut kept = keys().lock().unwrap_or_else(|e| e.into_inner());
    if let Some((r, k)) = kept.get(&alg).and_then(|m| m.get(main))
        && r.as_slice() == rest
    {
        return Ok(Some(k.clone()));
    }
    let made = match (rsa, ec, key.kind()) {
        (Some(params), _, DecodingKeyKind::RsaModulusExponent { n, e }) => {
            RsaPublicKeyComponents { n, e }.to_parsed_public_key(params)
        }
        (_, Some(alg), DecodingKeyKind::SecretOrDer(point)) => ParsedPublicKey::new(alg, point),
        _ => return Ok(None),
    };
    let Ok(made) = made else {
        // jsonwebtoken's verifier will refuse it with its own error.
        return Ok(None);
    };
    if kept.values().map(HashMap::len).sum::<usize>() >= MAX_KEYS {
        kept.clear();
    }
    let made = Arc::new(made);
    kept.entry(alg)
        .or_default()
        .insert(main.to_vec(), (rest.to_vec(), made.clone()));
    Ok(Some(made))
}

struct Parsed {
    alg: Algorithm,
    key: Arc<ParsedPublicKey>,
}

impl jsonwebtoken::signature::Verifier<Vec<u8>> for Parsed {
    fn verify(
        &self,
        msg: &[u8],
        signature: &Vec<u8>,
    ) -> std::result::Result<(), jsonwebtoken::signature::Error> {
        self.key
            .verify_sig(msg, signature)
            .map_err(jsonwebtoken::signature::Error::from_source)
    }
}

impl JwtVerifier for Parsed {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::KeyPair;

    /// The verifier this provider hands out (called directly: the process-wide
    /// provider may already be fixed by another test): the kept key verifies what
    /// the key signed, refuses a changed message or signature, and a key of another
    /// family is refused as jsonwebtoken refuses it.
    #[test]
    fn kept_keys_verify_and_refuse_as_jsonwebtoken_does() {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 =
            sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                .unwrap();
        let msg = b"header.payload";
        let signature = pair.sign(&rng, msg).unwrap().as_ref().to_vec();
        let dec = DecodingKey::from_ec_der(pair.public_key().as_ref());
        for _ in 0..2 {
            let v = verifier(&Algorithm::ES256, &dec).unwrap();
            assert_eq!(v.algorithm(), Algorithm::ES256);
            assert!(v.verify(msg, &signature).is_ok());
            assert!(v.verify(b"header.payloaD", &signature).is_err());
            let mut bad = signature.clone();
            bad[10] ^= 1;
            assert!(v.verify(msg, &bad).is_err());
        }
        let kept = keys().lock().unwrap();
        assert!(
            kept.get(&Algorithm::ES256)
                .is_some_and(|m| m.contains_key(pair.public_key().as_ref())),
            "the parsed key is kept"
        );
        drop(kept);
        // The P-256 key offered for ES384 does not verify the P-256 signature.
        let v = verifier(&Algorithm::ES384, &dec).unwrap();
        assert!(v.verify(msg, &signature).is_err());
        // An EC key for an RSA algorithm, an RSA key for an EC one: refused.
        assert!(verifier(&Algorithm::RS256, &dec).is_err());
        let rsa = DecodingKey::from_rsa_raw_components(&[0xc5; 256], &[1, 0, 1]);
        assert!(verifier(&Algorithm::ES256, &rsa).is_err());
    }
}
