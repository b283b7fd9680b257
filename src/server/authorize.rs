//! `/v1/authorize` (SPEC §12): the decision a reverse proxy asks for before it
//! forwards a request — nginx `auth_request`, Traefik `forwardAuth`, Caddy
//! `forward_auth`. Identity comes only from a credential (session token, session
//! cookie, an IdP's or trusted issuer's JWT), never from a header a client could
//! set; the original method and URI are believed only from `security.trusted_proxies`.
//!
//! nginx's `auth_request` accepts only 2xx, 401 and 403 from us (a 302 becomes a
//! 500), so a request that came with nginx's `X-Original-URI` always gets 401 and
//! nginx's `error_page 401` sends the browser to the login page; forward-auth
//! proxies (Traefik, Caddy) pass our answer to the client, so a browser there gets
//! the 302 itself.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use sha2::{Digest, Sha256};

use super::browser::{SESSION_COOKIE, cookie};
use super::routes::Body;
use super::{AppState, ConnInfo};
use crate::auth::{LoginContext, Secret};
use crate::forward::{Decision, path_of};
use crate::issued::Presented;
use crate::session::{SessionInfo, token};

/// IdP tokens remembered after a check (by SHA-256, until their `exp`).
const BEARER_CACHE_MAX: usize = 100_000;
/// How long an IdP token without a readable `exp` (opaque) is remembered.
const OPAQUE_FOR: Duration = Duration::from_secs(30);

/// A CIDR of `security.trusted_proxies`.
#[derive(Debug, Clone, Copy)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, bits) = match text.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (text, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("\"{text}\" is not an address or CIDR"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("\"{text}\": the prefix length must be 0..{max}"))?,
            None => max,
        };
        Ok(Cidr { net, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// An identity a token proved, and until when it may be believed.
type Checked = (std::sync::Arc<SessionInfo>, SystemTime);

/// IdP tokens already checked, by SHA-256.
#[derive(Default)]
pub struct BearerCache {
    entries: Mutex<HashMap<[u8; 32], Checked>>,
}

impl BearerCache {
    fn get(&self, key: &[u8; 32]) -> Option<std::sync::Arc<SessionInfo>> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key)
            .filter(|(_, until)| *until > SystemTime::now())
            .map(|(i, _)| i.clone())
    }

    fn put(&self, key: [u8; 32], info: std::sync::Arc<SessionInfo>, until: SystemTime) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= BEARER_CACHE_MAX {
            let now = SystemTime::now();
            map.retain(|_, (_, u)| *u > now);
            if map.len() >= BEARER_CACHE_MAX {
                map.clear();
            }
        }
        map.insert(key, (info, until));
    }
}

/// The request the proxy is asking about.
struct Original {
    method: String,
    uri: String,
    host: Option<String>,
    proto: String,
    /// Asked by nginx `auth_request` (which cannot pass a 302 on).
    nginx: bool,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn original(req: &Request<hyper::body::Incoming>, trusted: bool) -> Original {
    let h = req.headers();
    let own = || Original {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        host: header(h, "host").map(str::to_string),
        proto: "https".into(),
        nginx: false,
    };
    if !trusted {
        return own();
    }
    // nginx auth_request names the request X-Original-*; Traefik and Caddy X-Forwarded-*.
    let (method_header, uri, nginx) = match header(h, "x-original-uri") {
        Some(uri) => ("x-original-method", uri, true),
        None => match header(h, "x-forwarded-uri") {
            Some(uri) => ("x-forwarded-method", uri, false),
            None => return own(),
        },
    };
    Original {
        method: header(h, method_header)
            .unwrap_or(req.method().as_str())
            .to_string(),
        uri: uri.to_string(),
        host: header(h, "x-forwarded-host")
            .or(header(h, "host"))
            .map(str::to_string),
        proto: header(h, "x-forwarded-proto")
            .unwrap_or("https")
            .to_string(),
        nginx,
    }
}

enum Who {
    Known(std::sync::Arc<SessionInfo>),
    Nobody,
    /// A credential was presented and is not valid (its reason for the audit).
    Invalid(&'static str),
    Unavailable,
}

/// A session token (opaque or our JWT session) → the live session.
async fn session_identity(state: &AppState, presented: &str) -> Option<Who> {
    let hash = if presented.starts_with(token::PREFIX) {
        match token::parse(presented) {
            Some(h) => h,
            None => return Some(Who::Invalid("session_malformed")),
        }
    } else {
        match state.tokens.verify(presented) {
            Presented::Session(h) => h,
            // Not ours: maybe an IdP's token.
            Presented::Invalid("bad_signature" | "algorithm_mismatch") => return None,
            Presented::Invalid(reason) => return Some(Who::Invalid(reason)),
            Presented::Service => return Some(Who::Invalid("service_token")),
        }
    };
    Some(match state.pipeline.sessions.get(&hash).await {
        Ok(Some(s)) => Who::Known(s.info),
        Ok(None) => Who::Invalid("session_unknown"),
        Err(_) => Who::Unavailable,
    })
}

fn unverified_exp(jwt: &str) -> Option<u64> {
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&raw)
        .ok()?
        .get("exp")?
        .as_u64()
}

async fn identity(state: &AppState, conn: &ConnInfo, h: &HeaderMap) -> Who {
    let bearer = header(h, "authorization").and_then(|v| {
        v.split_once(' ')
            .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim().to_string())
    });
    let presented = match (bearer, cookie(h, SESSION_COOKIE)) {
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => return Who::Nobody,
    };
    // An IdP's or trusted issuer's token checked before, remembered by hash until it
    // expires (only those are ever remembered here, so a session token never hits).
    let key: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    if let Some(info) = state.bearer_cache.get(&key) {
        return Who::Known(info);
    }
    if let Some(who) = session_identity(state, &presented).await {
        return who;
    }
    let ctx = LoginContext {
        peer: conn.peer,
        binding: conn.binding,
        issuer: Default::default(),
    };
    let until = unverified_exp(&presented);
    match state
        .pipeline
        .identify_bearer(Secret::from(zeroize::Zeroizing::new(presented)), &ctx)
        .await
    {
        Ok(info) => {
            let until = until.map_or(SystemTime::now() + OPAQUE_FOR, |e| {
                UNIX_EPOCH + Duration::from_secs(e)
            });
            state.bearer_cache.put(key, info.clone(), until);
            Who::Known(info)
        }
        Err(crate::auth::AuthError::Unavailable { .. }) => Who::Unavailable,
        Err(e) => Who::Invalid(e.reason()),
    }
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

fn set(resp: &mut Response<Body>, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        resp.headers_mut().append(n, v);
    }
}

/// A 200 carries every identity header, empty when it has no value: proxies that
/// copy headers from our answer then replace whatever the client sent under those
/// names (Caddy 2.6 even forwards its unresolved placeholder for a missing one).
fn allowed(
    f: &crate::config::types::Forward,
    policy: &crate::forward::Policy,
    user: &str,
    groups: &str,
    labels: &str,
    extra: Vec<(String, String)>,
) -> Response<Body> {
    let mut r = empty(StatusCode::OK);
    set(&mut r, &f.header_user, user);
    set(&mut r, &f.header_groups, groups);
    set(&mut r, &f.header_labels, labels);
    for name in policy.header_names() {
        let value = extra
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str());
        set(&mut r, name, value);
    }
    r
}

fn wants_html(h: &HeaderMap) -> bool {
    header(h, "accept").is_some_and(|a| a.contains("text/html"))
}

/// Percent-encode for a query parameter value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub async fn authorize(
    state: &AppState,
    conn: &ConnInfo,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let f = &state.config.forward;
    let trusted = state
        .trusted_proxies
        .iter()
        .any(|c| c.contains(conn.peer.ip()));
    let o = original(&req, trusted);
    let path = path_of(&o.uri).to_string();
    let policy = state.forward.load();
    if policy.is_public(&o.method, &path) {
        return allowed(f, &policy, &f.anonymous_value, "", "", Vec::new());
    }
    let who = identity(state, conn, req.headers()).await;
    let refuse = |status: StatusCode, user: Option<&str>, reason: &str| {
        crate::audit::authorize_refused(
            conn.peer,
            user,
            &o.method,
            &o.uri,
            status.as_u16(),
            reason,
        );
    };
    let info = match who {
        Who::Known(info) => info,
        Who::Unavailable => {
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "dependency_unavailable",
            );
            return empty(StatusCode::SERVICE_UNAVAILABLE);
        }
        Who::Nobody | Who::Invalid(_) => {
            let reason = match who {
                Who::Invalid(r) => r,
                _ => "no_credentials",
            };
            if wants_html(req.headers()) && !o.nginx {
                let back = format!(
                    "{}://{}{}",
                    o.proto,
                    o.host.as_deref().unwrap_or("localhost"),
                    o.uri
                );
                let base = f.public_url.as_deref().unwrap_or("").trim_end_matches('/');
                let mut r = empty(StatusCode::FOUND);
                set(
                    &mut r,
                    "location",
                    &format!("{base}/login?rd={}", encode(&back)),
                );
                refuse(StatusCode::FOUND, None, reason);
                return r;
            }
            refuse(StatusCode::UNAUTHORIZED, None, reason);
            let mut r = empty(StatusCode::UNAUTHORIZED);
            set(&mut r, "www-authenticate", "Bearer realm=\"portcullis\"");
            return r;
        }
    };
    let subjects = info
        .labels
        .iter()
        .chain(info.groups.iter())
        .map(|s| s.as_ref());
    match policy.decide(subjects, &o.method, &path) {
        Decision::Deny => {
            refuse(StatusCode::FORBIDDEN, Some(&info.user), "no_matching_rule");
            empty(StatusCode::FORBIDDEN)
        }
        Decision::Allow(extra) => {
            let join = |v: &[std::sync::Arc<str>]| {
                v.iter().map(|s| s.as_ref()).collect::<Vec<_>>().join(",")
            };
            allowed(
                f,
                &policy,
                &info.user,
                &join(&info.groups),
                &join(&info.labels),
                extra,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_contain_their_addresses() {
        let c = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(c.contains("127.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!c.contains("128.0.0.1".parse().unwrap()));
        let one = Cidr::parse("10.0.0.5").unwrap();
        assert!(one.contains("10.0.0.5".parse().unwrap()));
        assert!(!one.contains("10.0.0.6".parse().unwrap()));
        assert!(
            Cidr::parse("::1/128")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn redirect_targets_are_percent_encoded() {
        assert_eq!(
            encode("https://a/b?c=d&e"),
            "https%3A%2F%2Fa%2Fb%3Fc%3Dd%26e"
        );
    }
}
