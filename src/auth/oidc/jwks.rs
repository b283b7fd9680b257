//! The IdP's signing keys (JWKS): which key may verify which algorithm, and a cache
//! that follows key rotation without letting anyone make the daemon hammer the IdP.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use tokio::time::Instant;

use super::provider::{Unreachable, get_json};

/// A verification key and the algorithms it may verify. The algorithm is fixed by
/// the key (its `alg`, else its type and curve), never by the token: no `none`,
/// and no HMAC with a public key as the secret. Shared, so the candidates handed
/// to each login are two reference counts, not a copy of the key material.
#[derive(Clone)]
pub struct VerifyKey {
    pub key: Arc<DecodingKey>,
    pub algorithms: Arc<[Algorithm]>,
}

fn algorithms_for(jwk: &Jwk) -> Vec<Algorithm> {
    let named = |a: &KeyAlgorithm| -> Option<Algorithm> {
        Some(match a {
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::RS384 => Algorithm::RS384,
            KeyAlgorithm::RS512 => Algorithm::RS512,
            KeyAlgorithm::PS256 => Algorithm::PS256,
            KeyAlgorithm::PS384 => Algorithm::PS384,
            KeyAlgorithm::PS512 => Algorithm::PS512,
            KeyAlgorithm::ES256 => Algorithm::ES256,
            KeyAlgorithm::ES384 => Algorithm::ES384,
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
            _ => return None,
        })
    };
    match (&jwk.algorithm, &jwk.common.key_algorithm) {
        // Symmetric keys in a public JWKS make no sense for verifying IdP tokens.
        (AlgorithmParameters::OctetKey(_), _) => vec![],
        (_, Some(a)) => named(a).into_iter().collect(),
        (AlgorithmParameters::RSA(_), None) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        (AlgorithmParameters::EllipticCurve(p), None) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => vec![],
        },
        (AlgorithmParameters::OctetKeyPair(_), None) => vec![Algorithm::EdDSA],
        _ => vec![],
    }
}

/// A parsed JWKS. Keys that cannot verify signatures (encryption keys, unknown
/// types) are skipped rather than failing the whole set.
#[derive(Clone, Default)]
pub struct KeySet {
    by_kid: HashMap<String, VerifyKey>,
    unnamed: Vec<VerifyKey>,
}

impl KeySet {
    pub fn parse(doc: &Value) -> KeySet {
        let mut set = KeySet::default();
        for raw in doc["keys"].as_array().into_iter().flatten() {
            if raw["use"].as_str().is_some_and(|u| u != "sig") {
                continue;
            }
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
                tracing::debug!(kid = %raw["kid"], "skipping a JWK this server cannot use");
                continue;
            };
            let algorithms = algorithms_for(&jwk);
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            if algorithms.is_empty() {
                continue;
            }
            let vk = VerifyKey {
                key: Arc::new(key),
                algorithms: algorithms.into(),
            };
            match jwk.common.key_id {
                Some(kid) => {
                    set.by_kid.insert(kid, vk);
                }
                None => set.unnamed.push(vk),
            }
        }
        set
    }

    /// Keys that may verify a token with this `kid` and header algorithm.
    pub fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<VerifyKey> {
        let fits = |k: &&VerifyKey| k.algorithms.contains(&alg);
        match kid {
            Some(kid) => self
                .by_kid
                .get(kid)
                .filter(fits)
                .cloned()
                .into_iter()
                .collect(),
            None => self
                .by_kid
                .values()
                .chain(self.unnamed.iter())
                .filter(fits)
                .cloned()
                .collect(),
        }
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.unnamed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The least time between two JWKS fetches while no key set has loaded yet (the IdP
/// down at startup): logins waiting for keys share one attempt and its outcome.
pub const RETRY_FLOOR: Duration = Duration::from_secs(5);

/// One JWKS fetch: when, and whether it worked (its error is repeated to the logins
/// that come before the next fetch is allowed).
#[derive(Clone)]
struct Attempt {
    at: Instant,
    result: Result<(), Unreachable>,
}

/// The JWKS cache: refreshed in the background, on an unknown `kid` at most once per
/// `refetch_interval` (`security.oidc.jwks_refetch_interval`), and while no set has
/// loaded at most once per [`RETRY_FLOOR`], so key rotation needs no restart and bogus
/// kids or an IdP outage cannot make the daemon hammer the IdP.
pub struct Keys {
    current: ArcSwapOption<KeySet>,
    /// When `current` was fetched, for the operator's `admin status`.
    loaded_at: std::sync::Mutex<Option<Instant>>,
    /// The last fetch; the lock also makes concurrent callers wait for one fetch
    /// instead of each starting their own.
    last: tokio::sync::Mutex<Option<Attempt>>,
    refetch_interval: Duration,
}

impl Keys {
    /// How long ago the key set in use was fetched; `None` before the first one.
    pub fn age(&self) -> Option<Duration> {
        self.loaded_at
            .lock()
            .ok()
            .and_then(|at| at.map(|t| t.elapsed()))
    }

    pub fn new(refetch_interval: Duration) -> Self {
        Keys {
            current: ArcSwapOption::empty(),
            loaded_at: std::sync::Mutex::new(None),
            last: tokio::sync::Mutex::new(None),
            refetch_interval,
        }
    }

    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    /// Fetch now (the background refresh, which paces itself).
    pub async fn fetch(
        &self,
        http: &reqwest::Client,
        uri: &str,
    ) -> Result<Arc<KeySet>, Unreachable> {
        let mut last = self.last.lock().await;
        self.fetch_locked(&mut last, http, uri).await
    }

    /// The key set for a login: the loaded one, else a fetch, at most one per
    /// [`RETRY_FLOOR`] (meanwhile the last failure is repeated).
    pub async fn get_or_fetch(
        &self,
        http: &reqwest::Client,
        uri: &str,
    ) -> Result<Arc<KeySet>, Unreachable> {
        if let Some(set) = self.current() {
            return Ok(set);
        }
        let mut last = self.last.lock().await;
        if let Some(set) = self.current() {
            return Ok(set);
        }
        if let Some(Attempt { at, result: Err(e) }) = last.as_ref()
            && at.elapsed() < RETRY_FLOOR
        {
            return Err(e.clone());
        }
        self.fetch_locked(&mut last, http, uri).await
    }

    async fn fetch_locked(
        &self,
        last: &mut Option<Attempt>,
        http: &reqwest::Client,
        uri: &str,
    ) -> Result<Arc<KeySet>, Unreachable> {
        let result = get_json(http, uri)
            .await
            .map(|doc| Arc::new(KeySet::parse(&doc)));
        *last = Some(Attempt {
            at: Instant::now(),
            result: result.as_ref().map(|_| ()).map_err(Clone::clone),
        });
        let set = result?;
        self.current.store(Some(set.clone()));
        if let Ok(mut at) = self.loaded_at.lock() {
            *at = Some(Instant::now());
        }
        Ok(set)
    }

    /// The keys that may verify a token with this `kid` and header algorithm: from
    /// the loaded set (fetched first if none is), and for a `kid` the set lacks, from
    /// one refetch bounded by [`Keys::refetch_for`] (key rotation without a restart).
    pub async fn for_token(
        &self,
        http: &reqwest::Client,
        uri: &str,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<VerifyKey>, Unreachable> {
        let set = self.get_or_fetch(http, uri).await?;
        let candidates = set.candidates(kid, alg);
        if candidates.is_empty()
            && let Some(kid) = kid
            && !set.has_kid(kid)
            && let Some(fresh) = self.refetch_for(http, uri, kid).await?
        {
            return Ok(fresh.candidates(Some(kid), alg));
        }
        Ok(candidates)
    }

    /// Refetch for an unknown `kid`, unless a fetch happened within
    /// `refetch_interval` (then its outcome is repeated: no new key, or still
    /// unreachable). Concurrent callers wait for one fetch.
    pub async fn refetch_for(
        &self,
        http: &reqwest::Client,
        uri: &str,
        kid: &str,
    ) -> Result<Option<Arc<KeySet>>, Unreachable> {
        let mut last = self.last.lock().await;
        if let Some(set) = self.current()
            && set.has_kid(kid)
        {
            return Ok(Some(set));
        }
        match last.as_ref() {
            Some(a) if a.at.elapsed() < self.refetch_interval => match &a.result {
                Ok(()) => Ok(None),
                Err(e) => Err(e.clone()),
            },
            _ => self.fetch_locked(&mut last, http, uri).await.map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::oidc::provider::http_client;
    use serde_json::json;

    /// An "IdP" on loopback that accepts connections and drops them, counting them.
    async fn dead_idp() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(conn);
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn logins_waiting_for_a_first_key_set_share_one_fetch_per_floor() {
        let (url, seen) = dead_idp().await;
        let http = http_client(None).unwrap();
        let keys = Arc::new(Keys::new(Duration::from_secs(60)));
        let mut waiting = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let (keys, http, url) = (keys.clone(), http.clone(), url.clone());
            waiting.spawn(async move { keys.get_or_fetch(&http, &url).await.is_err() });
        }
        assert!(waiting.join_all().await.into_iter().all(|failed| failed));
        assert!(keys.get_or_fetch(&http, &url).await.is_err());
        assert!(keys.refetch_for(&http, &url, "k").await.is_err());
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn algorithms_come_from_the_key_and_symmetric_keys_are_ignored() {
        let doc = json!({"keys": [
            {"kty": "RSA", "kid": "r1", "use": "sig", "alg": "RS256",
             "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw",
             "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "oct", "kid": "h1", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "e1", "crv": "P-256",
             "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4", "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"},
            {"kty": "weird", "kid": "w"}
        ]});
        let set = KeySet::parse(&doc);
        assert_eq!(
            set.len(),
            2,
            "RSA sig + EC; enc, oct and unknown keys skipped"
        );
        assert_eq!(set.candidates(Some("r1"), Algorithm::RS256).len(), 1);
        assert!(
            set.candidates(Some("r1"), Algorithm::HS256).is_empty(),
            "no HMAC with a public key"
        );
        assert!(
            set.candidates(Some("r1"), Algorithm::RS384).is_empty(),
            "alg fixed by the JWK"
        );
        assert_eq!(set.candidates(Some("e1"), Algorithm::ES256).len(), 1);
        assert!(set.candidates(Some("h1"), Algorithm::HS256).is_empty());
        assert!(set.candidates(None, Algorithm::ES256).len() == 1);
    }
}
