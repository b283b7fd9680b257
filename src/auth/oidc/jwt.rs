//! Local validation of a JWT access token: signature by a key of the IdP's JWKS,
//! `iss`, `aud`, `exp` and `nbf`. The checks themselves ([`validation`], [`verify`])
//! are shared with the trusted issuers (`security.issuers`, [`super::issuers`]).

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation};
use serde::Deserialize;
use serde::de::{Deserializer as _, Error as _, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use super::claims::Registered;
use super::jwks::VerifyKey;
use super::provider::Unreachable;
use super::{Inner, LEEWAY, rejected, unavailable};
use crate::auth::AuthError;
use crate::logsafe::Untrusted;

/// What choosing a key needs of a JWS header.
pub(super) struct KeyHint {
    pub alg: Algorithm,
    pub kid: Option<String>,
}

/// The algorithm and key id of a compact JWS's header, found where
/// `jsonwebtoken::decode_header` finds the header; `alg: none` and unknown
/// algorithms are refused here (jsonwebtoken has no such variant). Read into a
/// struct of its own rather than `jsonwebtoken::Header`, whose dozen optional
/// fields (certificate chains, an embedded JWK) cost allocations on every login;
/// `decode` still reads the whole header when it verifies the token.
pub(super) fn header(token: &str) -> Result<KeyHint, AuthError> {
    #[derive(Deserialize)]
    struct Fields<'a> {
        alg: Algorithm,
        #[serde(borrow, default)]
        kid: Option<Cow<'a, str>>,
    }
    let refuse = |why: &str| {
        // The reason may quote the client's header, so it is cleaned for the log.
        tracing::info!(error = %Untrusted(why), "bearer token refused: not a usable JWT");
        rejected("token_malformed")
    };
    let Some(encoded) = token
        .rsplit_once('.')
        .and_then(|(message, _)| message.rsplit_once('.'))
        .map(|(header, _)| header)
    else {
        return Err(refuse("not three dot-separated parts"));
    };
    let json = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|e| refuse(&e.to_string()))?;
    // A JOSE header is a JSON object (RFC 7515 §4); serde would also fill the
    // struct from an array.
    if json.trim_ascii_start().first() != Some(&b'{') {
        return Err(refuse("the header is not a JSON object"));
    }
    let f: Fields = serde_json::from_slice(&json).map_err(|e| refuse(&e.to_string()))?;
    Ok(KeyHint {
        alg: f.alg,
        kid: f.kid.map(Cow::into_owned),
    })
}

/// What a token must satisfy besides its signature: `exp` and `iss` always, `nbf`
/// when present, with [`LEEWAY`]; `aud` must be one of `audience`. With no
/// `audience`, `aud` is not required, but a token that carries one is refused.
pub(super) fn validation(alg: Algorithm, issuer: &str, audience: &[&str]) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = LEEWAY;
    v.validate_nbf = true;
    if audience.is_empty() {
        v.set_required_spec_claims(&["exp", "iss"]);
    } else {
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.set_audience(audience);
    }
    v.set_issuer(&[issuer]);
    v
}

/// [`validation`] for every algorithm jsonwebtoken knows, made once: the issuer
/// and audience do not change while the daemon runs, and making one costs a few
/// allocations per login.
pub(super) struct Validations(Vec<Validation>);

impl Validations {
    pub(super) fn new(issuer: &str, audience: &[&str]) -> Validations {
        let families = [
            AlgorithmFamily::Hmac,
            AlgorithmFamily::Rsa,
            AlgorithmFamily::Ec,
            AlgorithmFamily::Ed,
        ];
        Validations(
            families
                .iter()
                .flat_map(|f| f.algorithms())
                .map(|alg| validation(*alg, issuer, audience))
                .collect(),
        )
    }

    /// The validation for `alg`, which allows that algorithm only.
    pub(super) fn get(&self, alg: Algorithm) -> &Validation {
        self.0
            .iter()
            .find(|v| v.algorithms == [alg])
            .expect("a validation for every algorithm")
    }
}

/// The claims of `token` that `paths` reach (see [`super::claims::read`]) if one of
/// `candidates` verifies its signature by `alg` (the algorithm its header names)
/// and its claims pass `v`; otherwise a 401 whose reason (logged) says what failed.
/// The callers answer an empty `candidates` themselves (`unknown_key`, with their
/// own log line); here it is a `bad_signature`, never a pass.
pub(super) fn verify<P: AsRef<str>>(
    token: &str,
    alg: Algorithm,
    candidates: &[VerifyKey],
    v: &Validation,
    paths: &[P],
) -> Result<Value, AuthError> {
    checked(token, alg, candidates, v, paths).map_err(|e| {
        let reason = reason(e.kind());
        tracing::info!(reason, error = %Untrusted(&e.to_string()), "bearer token refused");
        rejected(reason)
    })
}

/// The audit reason of a refused token.
fn reason(e: &ErrorKind) -> &'static str {
    match e {
        ErrorKind::ExpiredSignature => "token_expired",
        ErrorKind::ImmatureSignature => "token_not_yet_valid",
        ErrorKind::InvalidIssuer => "wrong_issuer",
        ErrorKind::InvalidAudience => "wrong_audience",
        ErrorKind::InvalidSignature => "bad_signature",
        ErrorKind::MissingRequiredClaim(_) => "missing_claim",
        ErrorKind::InvalidAlgorithm => "algorithm_mismatch",
        _ => "token_invalid",
    }
}

/// What `jsonwebtoken::decode` checks, in its order and with its errors, on one
/// reading of the header (the caller's [`header`]) and of the payload: `decode`
/// reads the header twice and the payload twice (once for the caller, once for its
/// own checks), which cost as much as all the rest of a login besides the
/// signature. The signature is checked by jsonwebtoken's own `crypto::verify` (the
/// crate's provider, [`crate::jwt_provider`]); the claims by [`validate`], which
/// follows jsonwebtoken's. The unit tests hold both to `decode`'s answers.
fn checked<P: AsRef<str>>(
    token: &str,
    alg: Algorithm,
    candidates: &[VerifyKey],
    v: &Validation,
    paths: &[P],
) -> jsonwebtoken::errors::Result<Value> {
    let malformed = || jsonwebtoken::errors::Error::from(ErrorKind::InvalidToken);
    let (message, signature) = token.rsplit_once('.').ok_or_else(malformed)?;
    let (_, payload) = message.rsplit_once('.').ok_or_else(malformed)?;
    if v.algorithms.is_empty() {
        return Err(ErrorKind::MissingAlgorithm.into());
    }
    if !v.algorithms.contains(&alg) || v.algorithms.iter().any(|a| a.family() != alg.family()) {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let mut refused = ErrorKind::InvalidSignature.into();
    let verified = candidates.iter().any(|k| {
        jsonwebtoken::crypto::verify(signature, message.as_bytes(), &k.key, alg).unwrap_or_else(
            |e| {
                refused = e;
                false
            },
        )
    });
    if !verified {
        return Err(refused);
    }
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| serde_json::Error::custom(format!("the payload is not base64url: {e}")))?;
    let json = String::from_utf8(json).map_err(ErrorKind::Utf8)?;
    let (claims, registered) = super::claims::read(&json, paths)?;
    validate(&registered, v)?;
    Ok(claims)
}

/// A registered claim as jsonwebtoken's validation reads it (its `TryParse`):
/// absent (or `null`), present and usable, or present and not of the right type.
enum Read<T> {
    Absent,
    Parsed(T),
    Unusable,
}

/// `exp` and `nbf`: a non-negative JSON number (a fraction is rounded), as
/// jsonwebtoken's `numeric_type` takes them. A string is unusable, never a time
/// (CVE-2026-25537).
fn numeric(raw: Option<&RawValue>) -> Read<u64> {
    struct Numeric;
    impl Visitor<'_> for Numeric {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a NumericDate")
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<u64, E> {
            Ok(n)
        }
        fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<u64, E> {
            if n.is_finite() && n >= 0.0 && n < u64::MAX as f64 {
                Ok(n.round() as u64)
            } else {
                Err(E::custom("not representable as a u64"))
            }
        }
    }
    let Some(raw) = raw else {
        return Read::Absent;
    };
    match serde_json::Deserializer::from_str(raw.get()).deserialize_any(Numeric) {
        Ok(n) => Read::Parsed(n),
        Err(_) => Read::Unusable,
    }
}

/// `iss` and `aud`: one string or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum Names<'a> {
    One(#[serde(borrow)] Cow<'a, str>),
    Many(#[serde(borrow)] Vec<Cow<'a, str>>),
}

impl Names<'_> {
    /// Whether any of the names is one of `allowed`.
    fn any_in(&self, allowed: &std::collections::HashSet<String>) -> bool {
        match self {
            Names::One(n) => allowed.contains(n.as_ref()),
            Names::Many(ns) => ns.iter().any(|n| allowed.contains(n.as_ref())),
        }
    }
}

fn read<'a, T: Deserialize<'a>>(raw: Option<&'a RawValue>) -> Read<T> {
    match raw.map(|r| serde_json::from_str::<Option<T>>(r.get())) {
        None | Some(Ok(None)) => Read::Absent,
        Some(Ok(Some(t))) => Read::Parsed(t),
        Some(Err(_)) => Read::Unusable,
    }
}

/// jsonwebtoken's `validate`, on the claims read by [`super::claims::read`].
fn validate(c: &Registered, v: &Validation) -> jsonwebtoken::errors::Result<()> {
    // jsonwebtoken reads these three in place in the payload: `exp` and `nbf` as
    // any value, `sub` as a string. A list or an object its reader does not step
    // over (any for `sub`, a non-empty one for the others) leaves it mid-value, and
    // the whole payload is refused as malformed.
    for (name, raw, empty_ok) in [
        ("exp", c.exp, true),
        ("nbf", c.nbf, true),
        ("sub", c.sub, false),
    ] {
        if let Some(raw) = raw.map(RawValue::get)
            && matches!(raw.as_bytes()[0], b'[' | b'{')
            && !(empty_ok && raw[1..raw.len() - 1].trim_ascii().is_empty())
        {
            return Err(serde_json::Error::custom(format!("{name}: a list or an object")).into());
        }
    }
    let (exp, nbf) = (numeric(c.exp), numeric(c.nbf));
    let sub: Read<Cow<str>> = read(c.sub);
    let iss: Read<Names> = read(c.iss);
    let aud: Read<Names> = read(c.aud);
    for required in &v.required_spec_claims {
        let present = match required.as_str() {
            "exp" => matches!(exp, Read::Parsed(_)),
            "nbf" => matches!(nbf, Read::Parsed(_)),
            "sub" => matches!(sub, Read::Parsed(_)),
            "iss" => matches!(iss, Read::Parsed(_)),
            "aud" => matches!(aud, Read::Parsed(_)),
            _ => continue,
        };
        if !present {
            return Err(ErrorKind::MissingRequiredClaim(required.clone()).into());
        }
    }
    if v.validate_exp || v.validate_nbf {
        let now = jsonwebtoken::get_current_timestamp();
        if v.validate_exp && matches!(exp, Read::Unusable) {
            return Err(ErrorKind::InvalidClaimFormat("exp".into()).into());
        }
        if v.validate_nbf && matches!(nbf, Read::Unusable) {
            return Err(ErrorKind::InvalidClaimFormat("nbf".into()).into());
        }
        let early = v.reject_tokens_expiring_in_less_than;
        if let Read::Parsed(exp) = exp {
            if exp < early {
                return Err(ErrorKind::InvalidToken.into());
            }
            if v.validate_exp && exp - early < now.saturating_sub(v.leeway) {
                return Err(ErrorKind::ExpiredSignature.into());
            }
        }
        if let Read::Parsed(nbf) = nbf
            && v.validate_nbf
            && nbf > now + v.leeway
        {
            return Err(ErrorKind::ImmatureSignature.into());
        }
    }
    if let (Read::Parsed(sub), Some(wanted)) = (&sub, &v.sub)
        && sub != wanted
    {
        return Err(ErrorKind::InvalidSubject.into());
    }
    if let (Read::Parsed(iss), Some(allowed)) = (&iss, &v.iss)
        && !iss.any_in(allowed)
    {
        return Err(ErrorKind::InvalidIssuer.into());
    }
    if !v.validate_aud {
        return Ok(());
    }
    match (&aud, &v.aud) {
        // A token that names an audience is for that audience only.
        (Read::Parsed(_), None) => Err(ErrorKind::InvalidAudience.into()),
        (Read::Parsed(aud), Some(allowed)) if !aud.any_in(allowed) => {
            Err(ErrorKind::InvalidAudience.into())
        }
        // An absent or unusable `aud` where one is expected: refused above when
        // `aud` is required, as it is whenever an audience is set.
        _ => Ok(()),
    }
}

impl Inner {
    pub(super) async fn jwt(&self, token: &str) -> Result<Value, AuthError> {
        let header = header(token)?;
        let endpoints = self.endpoints().await?;
        let uri = endpoints
            .jwks_uri
            .clone()
            .ok_or_else(|| unavailable(Unreachable("the IdP publishes no jwks_uri".into())))?;
        let candidates = self
            .keys
            .for_token(&self.http, &uri, header.kid.as_deref(), header.alg)
            .await
            .map_err(unavailable)?;
        if candidates.is_empty() {
            tracing::info!(kid = %Untrusted(header.kid.as_deref().unwrap_or("")), alg = ?header.alg, "bearer token refused: no IdP key for this kid and algorithm");
            return Err(rejected("unknown_key"));
        }
        let s = &self.settings;
        verify(
            token,
            header.alg,
            &candidates,
            self.validations.get(header.alg),
            &[s.username_claim.as_str(), s.groups_claim.as_str()],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    /// The header reader takes and refuses what `jsonwebtoken::decode_header`
    /// takes and refuses, and reads the same algorithm and key id.
    #[test]
    fn headers_are_read_and_refused_as_jsonwebtoken_does() {
        let tokens = [
            format!(
                "{}.e30.c2ln",
                b64(r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#)
            ),
            format!("{}.e30.c2ln", b64(r#"{"alg":"ES384"}"#)),
            format!("{}.e30.c2ln", b64(r#"{"kid":"k\u0031","alg":"PS256"}"#)),
            format!("{}.e30.", b64(r#"{"alg":"HS256","kid":null}"#)),
            format!("{}.e30.c2ln", b64(r#"{"alg":"none"}"#)),
            format!("{}.e30.c2ln", b64(r#"{"alg":"RS257"}"#)),
            format!("{}.e30.c2ln", b64(r#"{"kid":"k1"}"#)),
            format!("{}.e30.c2ln", b64(r#"{"alg":"RS256","alg":"HS256"}"#)),
            format!("{}.e30.c2ln", b64(r#"["RS256"]"#)),
            format!("{}.e30.c2ln", b64(r#"[null,"RS256"]"#)),
            format!("{}.e30", b64(r#"{"alg":"RS256"}"#)),
            format!("x.{}.e30.c2ln", b64(r#"{"alg":"RS256"}"#)),
            "not a token".to_string(),
            "%%%.e30.c2ln".to_string(),
            String::new(),
        ];
        for t in &tokens {
            let ours = header(t);
            match jsonwebtoken::decode_header(t) {
                Ok(h) => {
                    let k = ours.unwrap_or_else(|_| panic!("refused what jsonwebtoken reads: {t}"));
                    assert_eq!((k.alg, k.kid), (h.alg, h.kid), "{t}");
                }
                Err(_) => assert!(ours.is_err(), "read what jsonwebtoken refuses: {t}"),
            }
        }
        // The valid ones above are read, not all refused.
        assert_eq!(tokens.iter().filter(|t| header(t).is_ok()).count(), 4);
    }

    /// The checks answer what `jsonwebtoken::decode` (with the whole claims read
    /// into a `Value`) answers — the same reason, or the same claims — for tokens
    /// whose registered claims are each valid, expired, early, of the wrong type,
    /// escaped, repeated or absent, alone and in random mixes, with and without an
    /// audience.
    #[test]
    fn claims_are_checked_as_jsonwebtoken_checks_them() {
        use jsonwebtoken::{DecodingKey, EncodingKey, decode};
        use std::sync::Arc;

        let secret = b"a secret of thirty-two bytes ...";
        let key = VerifyKey {
            key: Arc::new(DecodingKey::from_secret(secret)),
            algorithms: Arc::from([Algorithm::HS256]),
        };
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let iss = "https://idp.test";
        let (f, p) = (now + 3600, now - 3600);
        let choices: [(&str, Vec<String>); 5] = [
            (
                "exp",
                [
                    format!("{f}"),
                    format!("{}", now - 30),
                    format!("{}", now - 120),
                    format!("\"{f}\""),
                    "-5".into(),
                    "-0".into(),
                    format!("{f}.4"),
                    "1e30".into(),
                    "null".into(),
                    "true".into(),
                    format!("[{f}]"),
                    "{\"a\":1}".into(),
                    "0".into(),
                    format!("{}e0", f),
                    "1e15".into(),
                    "[ ]".into(),
                    "{}".into(),
                    format!("{}", now - 90),
                ]
                .to_vec(),
            ),
            (
                "nbf",
                [
                    format!("{}", now - 10),
                    format!("{}", now + 30),
                    format!("{}", now + 3600),
                    "\"1\"".into(),
                    "null".into(),
                    "-1".into(),
                    "[]".into(),
                    "1.2".into(),
                    format!("{p}.5"),
                    "false".into(),
                    format!("{}", now + 120),
                    "1e15".into(),
                    "{}".into(),
                    format!("[{p}]"),
                ]
                .to_vec(),
            ),
            (
                "iss",
                [
                    format!("\"{iss}\""),
                    "\"https://other.test\"".into(),
                    format!("[\"x\", \"{iss}\"]"),
                    "[\"x\"]".into(),
                    "[]".into(),
                    "null".into(),
                    "5".into(),
                    "{\"a\":1}".into(),
                    "\"\\u0068ttps://idp.test\"".into(),
                    format!("[\"{iss}\", 5]"),
                    "true".into(),
                ]
                .to_vec(),
            ),
            (
                "aud",
                [
                    "\"aud1\"".into(),
                    "\"aud2\"".into(),
                    "[\"aud1\"]".into(),
                    "[\"x\", \"aud1\"]".into(),
                    "[\"x\"]".into(),
                    "[]".into(),
                    "null".into(),
                    "5".into(),
                    "[\"aud1\", 5]".into(),
                    "{}".into(),
                ]
                .to_vec(),
            ),
            (
                "sub",
                [
                    "\"alice\"".into(),
                    "null".into(),
                    "5".into(),
                    "[\"a\"]".into(),
                    "{\"a\":1}".into(),
                    "true".into(),
                    "\"\"".into(),
                    "[]".into(),
                    "{ }".into(),
                    "\"\\u0061lice\"".into(),
                ]
                .to_vec(),
            ),
        ];
        let valid = |name: &str| match name {
            "exp" => format!("{f}"),
            "iss" => format!("\"{iss}\""),
            "aud" => "\"aud1\"".into(),
            "sub" => "\"alice\"".into(),
            _ => format!("{}", now - 10),
        };
        // Registered claims (name, JSON text, or None for absent) → a payload with the
        // login's own claims around them.
        let payload = |claims: &[(&str, Option<String>)]| {
            let mut parts = vec![r#""preferred_username":"alice""#.to_string()];
            for (name, value) in claims {
                if let Some(v) = value {
                    parts.push(format!("\"{name}\":{v}"));
                }
            }
            parts.push(r#""groups":["g1","g2"],"scope":"openid""#.into());
            format!("{{{}}}", parts.join(","))
        };
        let mut payloads = Vec::new();
        // Each claim through its choices and absent, the others valid.
        for (i, (name, values)) in choices.iter().enumerate() {
            for v in values.iter().map(|v| Some(v.clone())).chain([None]) {
                let claims: Vec<_> = choices
                    .iter()
                    .enumerate()
                    .map(|(j, (n, _))| (*n, if i == j { v.clone() } else { Some(valid(n)) }))
                    .collect();
                payloads.push(payload(&claims));
            }
            // Given twice: valid, then valid again / then another choice.
            for v in values.iter().take(3) {
                let mut claims: Vec<_> =
                    choices.iter().map(|(n, _)| (*n, Some(valid(n)))).collect();
                claims.push((name, Some(v.clone())));
                payloads.push(payload(&claims));
            }
        }
        // Random mixes (a fixed-seed LCG, so a failure can be run again).
        let mut seed: u64 = 0x5eed;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for _ in 0..600 {
            let claims: Vec<_> = choices
                .iter()
                .map(|(n, values)| {
                    let k = next(values.len() + 2);
                    (
                        *n,
                        match k {
                            k if k < values.len() => Some(values[k].clone()),
                            k if k == values.len() => Some(valid(n)),
                            _ => None,
                        },
                    )
                })
                .collect();
            payloads.push(payload(&claims));
        }
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
        // A token of `payload` as it is encoded (base64url of the JSON, normally).
        let sign_encoded = |payload: &str| {
            let message = format!("{header}.{payload}");
            let sig = jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &EncodingKey::from_secret(secret),
                Algorithm::HS256,
            )
            .unwrap();
            format!("{message}.{sig}")
        };
        let sign = |payload: &str| sign_encoded(&URL_SAFE_NO_PAD.encode(payload));
        // And tokens that fail before their claims are read.
        let good = sign(&payload(
            &choices
                .iter()
                .map(|(n, _)| (*n, Some(valid(n))))
                .collect::<Vec<_>>(),
        ));
        let mut tokens: Vec<String> = payloads.iter().map(|p| sign(p)).collect();
        // A payload with base64 padding, and one whose last character has bits to
        // spare set: signed as they are.
        let encoded = URL_SAFE_NO_PAD.encode(format!("{} ", &payloads[0]));
        assert!(
            encoded.len() % 4 != 0,
            "the encoding ends in a partial group"
        );
        tokens.push(sign_encoded(&format!("{encoded}=")));
        let mut bits = encoded.into_bytes();
        *bits.last_mut().unwrap() = if *bits.last().unwrap() == b'B' {
            b'C'
        } else {
            b'B'
        };
        tokens.push(sign_encoded(std::str::from_utf8(&bits).unwrap()));
        tokens.push(format!("{}x", &good[..good.len() - 1]));
        tokens.push(format!("{good}AA"));
        tokens.push(good.replacen('.', ".!", 1));
        tokens.push(sign("{\"exp\":1,\"exp\"").to_string());
        // A lone surrogate in a claim the login reads (one it skips is not looked at).
        tokens.push(sign(
            &payload(
                &choices
                    .iter()
                    .map(|(n, _)| (*n, Some(valid(n))))
                    .collect::<Vec<_>>(),
            )
            .replace("\"alice\"", "\"\\ud800\""),
        ));
        tokens.push(format!(
            "{header}.{}.{}",
            URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
            "x"
        ));
        let paths = ["preferred_username", "groups", "sub"];
        let paths_without_sub = ["preferred_username", "groups"];
        let (mut accepted, mut refused) = (0, std::collections::BTreeMap::new());
        for audience in [&["aud1"][..], &[]] {
            let v = validation(Algorithm::HS256, iss, audience);
            for t in &tokens {
                let theirs = decode::<Value>(t, &key.key, &v).map_err(|e| reason(e.kind()));
                for paths in [&paths[..], &paths_without_sub[..]] {
                    let ours = verify(t, Algorithm::HS256, std::slice::from_ref(&key), &v, paths)
                        .map_err(|e| e.reason());
                    let payload = t.split('.').nth(1).map(|p| URL_SAFE_NO_PAD.decode(p));
                    let payload =
                        String::from_utf8_lossy(&payload.unwrap().unwrap_or_default()).into_owned();
                    match (&theirs, &ours) {
                        (Ok(whole), Ok(some)) => {
                            for p in paths {
                                assert_eq!(
                                    super::super::claims::at(some, p),
                                    super::super::claims::at(&whole.claims, p),
                                    "{payload}: {p}"
                                );
                            }
                        }
                        (Err(a), Err(b)) => assert_eq!(a, b, "{payload} (audience {audience:?})"),
                        _ => panic!(
                            "{payload} (audience {audience:?}): jsonwebtoken {theirs:?}, ours {ours:?}"
                        ),
                    }
                    match ours {
                        Ok(_) => accepted += 1,
                        Err(r) => *refused.entry(r).or_insert(0) += 1,
                    }
                }
            }
        }
        // The tokens reach every outcome, not just one.
        assert!(accepted > 10, "{accepted} accepted");
        for r in [
            "token_expired",
            "token_not_yet_valid",
            "wrong_issuer",
            "wrong_audience",
            "bad_signature",
            "missing_claim",
            "token_invalid",
        ] {
            assert!(
                refused.get(r).copied().unwrap_or(0) > 0,
                "no token refused as {r}: {refused:?}"
            );
        }
        // No candidate key: refused, never a pass.
        let none = verify(
            &good,
            Algorithm::HS256,
            &[],
            &validation(Algorithm::HS256, iss, &[]),
            &paths,
        );
        assert_eq!(none.map_err(|e| e.reason()).err(), Some("bad_signature"));
        // A payload that is not a JSON object is refused, whatever it holds.
        for not_an_object in [
            "[1, 2]",
            &format!("[{f}, \"{iss}\"]"),
            "\"alice\"",
            "null",
            "[]",
        ] {
            let t = sign(not_an_object);
            let ours = verify(
                &t,
                Algorithm::HS256,
                std::slice::from_ref(&key),
                &validation(Algorithm::HS256, iss, &[]),
                &paths,
            );
            assert_eq!(
                ours.map_err(|e| e.reason()).err(),
                Some("token_invalid"),
                "{not_an_object}"
            );
        }
    }
}
