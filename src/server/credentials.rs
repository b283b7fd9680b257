//! What the client presented: credentials from the `Authorization` header, the JSON
//! body or the TLS session, before any authenticator sees them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hyper::header::{self, HeaderMap, HeaderValue};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{AppState, ConnInfo};
use crate::auth::{AuthError, Credentials, Mechanism, Secret};
use crate::session::token;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    mechanism: Option<String>,
    username: Option<String>,
    password: Option<Zeroizing<String>>,
}

fn malformed(reason: &'static str, message: impl Into<String>) -> AuthError {
    AuthError::Malformed {
        reason,
        message: message.into(),
    }
}

/// A presented certificate chain is checked against the CA file and CRLs loaded now,
/// not when the connection was opened: after a SIGHUP that revokes it, the next
/// login on an old keep-alive or HTTP/2 connection is refused (SPEC §9).
pub fn checked_certificate(
    state: &AppState,
    credentials: Option<Credentials>,
) -> Result<Option<Credentials>, AuthError> {
    let Some(Credentials::Certificate(chain)) = &credentials else {
        return Ok(credentials);
    };
    let Some(tls) = &state.tls else {
        return Err(AuthError::rejected(
            "certificate_untrusted",
            "client certificates need TLS",
        ));
    };
    tls.load()
        .check_chain(chain)
        .map_err(|r| AuthError::rejected(r.reason, r.message))?;
    Ok(credentials)
}

/// Credentials from the `Authorization` header, the JSON body, or the TLS session,
/// in that order of precedence.
pub fn extract_credentials(
    headers: &HeaderMap,
    body: &[u8],
    conn: &ConnInfo,
) -> Result<Option<Credentials>, AuthError> {
    let parsed: Option<LoginBody> = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(serde_json::from_slice(body).map_err(|e| {
            malformed(
                "bad_json",
                format!("the request body is not valid login JSON: {e}"),
            )
        })?)
    };
    let body_mechanism = match parsed.as_ref().and_then(|b| b.mechanism.as_deref()) {
        None => None,
        Some(m) => Some(Mechanism::parse(m).ok_or_else(|| {
            malformed(
                "bad_mechanism",
                format!("unknown mechanism \"{m}\"; use password, kerberos, certificate or oidc"),
            )
        })?),
    };
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let creds = parse_authorization(auth)?;
        if body_mechanism.is_some_and(|m| m != creds.mechanism()) {
            return Err(malformed(
                "conflicting_credentials",
                "the body names a different mechanism than the Authorization header",
            ));
        }
        return Ok(Some(creds));
    }
    match (body_mechanism, parsed) {
        (
            Some(Mechanism::Password) | None,
            Some(LoginBody {
                username: Some(u),
                password: Some(p),
                ..
            }),
        ) => Ok(Some(Credentials::Password {
            username: u,
            password: Secret::from(p),
        })),
        (Some(Mechanism::Password), _) => Err(malformed(
            "missing_field",
            "a password login needs \"username\" and \"password\"",
        )),
        (Some(Mechanism::Kerberos), _) => Err(malformed(
            "wrong_place",
            "send the Kerberos token as \"Authorization: Negotiate <base64>\"",
        )),
        (Some(Mechanism::Oidc), _) => Err(malformed(
            "wrong_place",
            "send the IdP token as \"Authorization: Bearer <token>\"",
        )),
        (Some(Mechanism::Certificate), _) | (None, None) if conn.peer_chain.is_empty() => Ok(None),
        (Some(Mechanism::Certificate), _) | (None, None) => {
            Ok(Some(Credentials::Certificate(conn.peer_chain.clone())))
        }
        (None, Some(_)) => Err(malformed(
            "missing_field",
            "the body must name a \"mechanism\" or carry \"username\" and \"password\"",
        )),
    }
}

fn parse_authorization(value: &HeaderValue) -> Result<Credentials, AuthError> {
    let text = value
        .to_str()
        .map_err(|_| malformed("bad_authorization", "the Authorization header is not ASCII"))?;
    let (scheme, param) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
    let param = param.trim();
    let decode = |what: &str| {
        STANDARD.decode(param).map_err(|_| {
            malformed(
                "bad_base64",
                format!("the {what} credentials are not valid base64"),
            )
        })
    };
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => {
            let raw = Zeroizing::new(decode("Basic")?);
            let text = std::str::from_utf8(&raw).map_err(|_| {
                malformed("bad_authorization", "the Basic credentials are not UTF-8")
            })?;
            let (user, pass) = text.split_once(':').ok_or_else(|| {
                malformed(
                    "bad_authorization",
                    "the Basic credentials lack the ':' separator",
                )
            })?;
            Ok(Credentials::Password {
                username: user.to_string(),
                password: Secret::new(pass.to_string()),
            })
        }
        "negotiate" => {
            let blob = decode("Negotiate")?;
            if blob.is_empty() {
                return Err(malformed(
                    "bad_authorization",
                    "the Negotiate token is empty",
                ));
            }
            Ok(Credentials::Negotiate(blob))
        }
        // Refused before any authenticator runs, so it never reaches the IdP (SPEC §9).
        "bearer" if param.starts_with(token::PREFIX) => {
            Err(crate::auth::oidc::session_token_presented())
        }
        "bearer" if !param.is_empty() => Ok(Credentials::Bearer(Secret::new(param.to_string()))),
        "bearer" => Err(malformed("bad_authorization", "the Bearer token is empty")),
        _ => Err(malformed(
            "bad_authorization",
            format!(
                "unsupported Authorization scheme \"{scheme}\"; use Basic, Negotiate or Bearer"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> ConnInfo {
        ConnInfo::new("127.0.0.1:1".parse().unwrap(), Vec::new())
    }

    #[test]
    fn basic_credentials_are_decoded() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWxpY2U6czNjcjN0Oih4KQ=="),
        );
        match extract_credentials(&h, b"", &conn()).unwrap().unwrap() {
            Credentials::Password { username, password } => {
                assert_eq!(username, "alice");
                assert_eq!(password.expose(), "s3cr3t:(x)");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_requests_are_400s() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic !!!notbase64"),
        );
        assert_eq!(
            extract_credentials(&h, b"", &conn()).unwrap_err().reason(),
            "bad_base64"
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Digest abc"),
        );
        assert_eq!(
            extract_credentials(&h, b"", &conn()).unwrap_err().reason(),
            "bad_authorization"
        );
        let h = HeaderMap::new();
        assert_eq!(
            extract_credentials(&h, b"{nope", &conn())
                .unwrap_err()
                .reason(),
            "bad_json"
        );
        assert_eq!(
            extract_credentials(&h, br#"{"mechanism":"password","username":"a"}"#, &conn())
                .unwrap_err()
                .reason(),
            "missing_field"
        );
        assert_eq!(
            extract_credentials(&h, br#"{"mechanism":"x"}"#, &conn())
                .unwrap_err()
                .reason(),
            "bad_mechanism"
        );
        assert_eq!(
            extract_credentials(&h, br#"{"user":"a"}"#, &conn())
                .unwrap_err()
                .reason(),
            "bad_json"
        );
    }

    #[test]
    fn no_credentials_without_a_certificate() {
        assert!(
            extract_credentials(&HeaderMap::new(), b" \n", &conn())
                .unwrap()
                .is_none()
        );
        assert!(
            extract_credentials(
                &HeaderMap::new(),
                br#"{"mechanism":"certificate"}"#,
                &conn()
            )
            .unwrap()
            .is_none()
        );
    }
}
