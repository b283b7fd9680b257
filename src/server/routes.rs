//! HTTP endpoints of SPEC §4. Thin on purpose: parse the request, call the pipeline
//! or the session store, and map errors through `error.rs`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::body::{linger, read_body};
use super::credentials::{checked_certificate, extract_credentials};
use super::{AppState, ConnInfo};
use crate::audit;
use crate::auth::{AuthError, Credentials, LoginContext, Mechanism, Secret};
use crate::error::ApiError;
use crate::issued::Presented;
use crate::pipeline::LoginResult;
use crate::session::{Session, SessionError, token};

pub type Body = Full<Bytes>;

pub async fn handle(
    state: Arc<AppState>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if let Err(e) = browser_checks(&state, &path, &method, &req) {
        audit::refused_request(conn.peer, &path, e.code());
        linger(req.into_body());
        return error_response(&e);
    }
    if path == "/v1/authorize" {
        // Any method: the proxy asks with the original request's (nginx) or GET.
        return super::authorize::authorize(&state, &conn, req).await;
    }
    let result = match (path.as_str(), &method) {
        ("/healthz", &Method::GET) => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        ("/metrics", &Method::GET) => Ok(metrics(&state)),
        ("/v1/auth/methods", &Method::GET) => Ok(methods(&state)),
        ("/v1/login", &Method::POST) => {
            let answer = login(&state, &conn, req).await;
            // Let the other connections whose requests are ready run first, so that
            // on a busy server the login answers leave in a burst (flush
            // consolidation): writing an answer wakes the client when it sleeps, and
            // when it sleeps on a local CPU the wake-up is an inter-processor
            // interrupt paid in this write — on this VM ≈ 7 µs, 15 % of a JWT login.
            // One wake-up then serves several answers; with nothing else ready the
            // yield returns at once. Not for the light requests (session checks,
            // `/v1/authorize`): there the extra scheduling round costs what it saves,
            // and a proxy waiting on each decision (auth_request) waits longer.
            tokio::task::yield_now().await;
            answer
        }
        ("/v1/session", &Method::GET) => session_get(&state, req.headers()).await,
        ("/v1/session", &Method::DELETE) => session_delete(&state, &conn, req.headers()).await,
        ("/.well-known/jwks.json", &Method::GET) => {
            Ok(json_response(StatusCode::OK, &state.tokens.jwks()))
        }
        ("/.well-known/openid-configuration", &Method::GET) => Ok(json_response(
            StatusCode::OK,
            &state.tokens.openid_configuration(),
        )),
        (
            "/healthz"
            | "/metrics"
            | "/v1/auth/methods"
            | "/.well-known/jwks.json"
            | "/.well-known/openid-configuration",
            _,
        ) => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        ("/v1/login", _) => Err(ApiError::MethodNotAllowed { allow: "POST" }),
        ("/v1/session", _) => Err(ApiError::MethodNotAllowed {
            allow: "GET, DELETE",
        }),
        ("/login" | "/login/oidc" | "/logout" | "/v1/oidc/callback", _) => {
            Ok(super::browser::handle(&state, &conn, req).await)
        }
        (p, &Method::POST) if p.starts_with("/v1/login/") => {
            let id = p["/v1/login/".len()..].to_string();
            login_continue(&state, &conn, req, id).await
        }
        _ => Err(ApiError::NotFound("no such endpoint")),
    };
    result.unwrap_or_else(|e| error_response(&e))
}

/// Requests a browser could be made to send by another site's page (SPEC §9): a
/// login, a conversation step or a logout must come from the daemon's own origin or
/// one of `security.allowed_origins`, and a POST body must be declared JSON (a form
/// or `text/plain` body is what a cross-site page can send without a preflight).
fn browser_checks(
    state: &AppState,
    path: &str,
    method: &Method,
    req: &Request<Incoming>,
) -> Result<(), ApiError> {
    let changes_state = (method == Method::POST
        && (path == "/v1/login" || path.starts_with("/v1/login/")))
        || (method == Method::DELETE && path == "/v1/session");
    if !changes_state {
        return Ok(());
    }
    let headers = req.headers();
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return Err(ApiError::OriginNotAllowed("a cross-site page".into()));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        if !origin_allowed(state, req, origin) {
            return Err(ApiError::OriginNotAllowed(crate::logsafe::clean(origin)));
        }
    }
    if method == Method::POST
        && let Some(ct) = headers.get(header::CONTENT_TYPE)
        && !is_json(ct)
    {
        return Err(ApiError::UnsupportedMediaType);
    }
    Ok(())
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json(ct: &HeaderValue) -> bool {
    let media = ct.to_str().unwrap_or_default();
    let media = media.split(';').next().unwrap_or_default().trim();
    media.eq_ignore_ascii_case("application/json")
}

/// The daemon's own origin (scheme + the host the client addressed) or a listed one.
fn origin_allowed(state: &AppState, req: &Request<Incoming>, origin: &str) -> bool {
    let scheme = if state.tls.is_some() { "https" } else { "http" };
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
    let own = host.is_some_and(|h| origin.eq_ignore_ascii_case(&format!("{scheme}://{h}")));
    own || state
        .config
        .security
        .allowed_origins
        .iter()
        .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

pub fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    with_json_headers(status, Bytes::from(value.to_string()))
}

fn with_json_headers(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Tokens and identities must not land in shared caches (RFC 6749 §5.1).
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    let mut resp = json_response(e.status(), &e.body());
    let h = resp.headers_mut();
    match e {
        ApiError::Unauthorized {
            www_authenticate, ..
        } => append_challenges(h, www_authenticate),
        ApiError::Auth {
            error: AuthError::TooManyAttempts { retry_after },
            ..
        } => {
            h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        ApiError::Auth {
            www_authenticate, ..
        } if e.status() == StatusCode::UNAUTHORIZED => append_challenges(h, www_authenticate),
        ApiError::MethodNotAllowed { allow } => {
            h.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        _ => {}
    }
    resp
}

fn metrics(state: &AppState) -> Response<Body> {
    let text = state.pipeline.metrics.render(state.pipeline.sessions.len());
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

fn methods(state: &AppState) -> Response<Body> {
    let enabled: Vec<&str> = state
        .pipeline
        .enabled()
        .iter()
        .map(|m| m.as_str())
        .collect();
    let mut body = json!({ "mechanisms": enabled });
    // The IdP clients log in with; trusted issuers (security.issuers) are not listed.
    if state.pipeline.enabled().contains(&Mechanism::Oidc)
        && crate::auth::oidc::configured(&state.config.security.oidc)
    {
        let o = &state.config.security.oidc;
        body["oidc"] = json!({
            "issuer": o.issuer,
            "client_id": o.client_id.as_ref().or(o.audience.as_ref()),
            "audience": o.audience,
            "scopes": o.scopes,
        });
    }
    json_response(StatusCode::OK, &body)
}

/// The `WWW-Authenticate` challenges of every enabled scheme (SPEC §4); computed once
/// at startup, since the enabled mechanisms never change while running.
pub fn login_challenges(enabled: &[Mechanism]) -> Vec<String> {
    enabled
        .iter()
        .filter_map(|m| match m {
            Mechanism::Kerberos => Some("Negotiate".to_string()),
            Mechanism::Password => Some("Basic realm=\"portcullis\"".to_string()),
            Mechanism::Oidc => Some("Bearer realm=\"portcullis\"".to_string()),
            // mTLS has no HTTP scheme; the handshake already asked for a certificate.
            Mechanism::Certificate => None,
        })
        .collect()
}

fn append_challenges(headers: &mut HeaderMap, schemes: &[String]) {
    for scheme in schemes {
        if let Ok(v) = HeaderValue::from_str(scheme) {
            headers.append(header::WWW_AUTHENTICATE, v);
        }
    }
}

/// The parts of a login request: headers, the (bounded) body, and who is asking.
async fn login_request(
    state: &AppState,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Result<
    (
        hyper::http::request::Parts,
        Zeroizing<Vec<u8>>,
        LoginContext,
    ),
    ApiError,
> {
    let (parts, body) = req.into_parts();
    let limits = &state.config.system;
    let body = read_body(
        body,
        &parts.headers,
        limits.max_body_bytes,
        Duration::from_secs(limits.request_timeout),
    )
    .await?;
    // A body without any Content-Type is not declared JSON either (SPEC §9).
    if !body.iter().all(u8::is_ascii_whitespace)
        && !parts.headers.contains_key(header::CONTENT_TYPE)
    {
        return Err(ApiError::UnsupportedMediaType);
    }
    let ctx = LoginContext {
        peer: conn.peer,
        binding: conn.binding,
        issuer: Default::default(),
    };
    Ok((parts, body, ctx))
}

async fn login(
    state: &AppState,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (parts, body, ctx) = login_request(state, conn, req).await?;
    let challenges = &state.login_challenges;
    let credentials = match extract_credentials(&parts.headers, &body, conn) {
        Ok(c) => c,
        Err(e) => {
            state.pipeline.record_refusal("none", &e, &ctx);
            return Err(ApiError::from_auth(e, challenges.clone()));
        }
    };
    let credentials = match checked_certificate(state, credentials) {
        Ok(c) => c,
        Err(e) => {
            state.pipeline.record_refusal("certificate", &e, &ctx);
            return Err(ApiError::from_auth(e, challenges.clone()));
        }
    };
    drop(body);
    login_answer(
        tarpit(state.pipeline.login(credentials, &ctx).await).await,
        challenges,
    )
}

/// How long a 429 waits before it is sent.
const TARPIT: Duration = Duration::from_secs(1);

/// A client that keeps asking after a 429 (Retry-After says when to come back) gets
/// each further 429 after a pause: it costs a timer here, and a flood over kept-alive
/// connections shrinks from thousands of answers a second to one per open request.
async fn tarpit<T>(result: Result<T, AuthError>) -> Result<T, AuthError> {
    if matches!(result, Err(AuthError::TooManyAttempts { .. })) {
        tokio::time::sleep(TARPIT).await;
    }
    result
}

/// RFC 4559 §5: the acceptor's final token, for mutual authentication, on a
/// successful Negotiate login (API or browser).
pub fn mutual_authentication(resp: &mut Response<Body>, token: Option<Vec<u8>>) {
    if let Some(t) = token
        && let Ok(v) = HeaderValue::from_str(&format!("Negotiate {}", STANDARD.encode(t)))
    {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
}

fn login_answer(
    result: Result<LoginResult, AuthError>,
    challenges: &[String],
) -> Result<Response<Body>, ApiError> {
    match result {
        Ok(LoginResult::Session {
            token,
            session,
            response_token,
        }) => {
            let body = SessionBody::new(&session).with_token(&token.text);
            let mut resp = typed_json_response(StatusCode::OK, &body);
            mutual_authentication(&mut resp, response_token);
            Ok(resp)
        }
        Ok(LoginResult::Challenge(c)) => {
            let mut resp = json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"conversation": c.conversation, "prompts": c.prompts}),
            );
            append_challenges(resp.headers_mut(), challenges);
            Ok(resp)
        }
        Err(e) => Err(ApiError::from_auth(e, challenges.to_vec())),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswersBody {
    answers: Vec<Zeroizing<String>>,
}

/// `POST /v1/login/{conversation}`: the next answers of a PAM conversation.
async fn login_continue(
    state: &AppState,
    conn: &ConnInfo,
    req: Request<Incoming>,
    conversation: String,
) -> Result<Response<Body>, ApiError> {
    let (_, body, ctx) = login_request(state, conn, req).await?;
    if conversation.is_empty()
        || conversation.len() > 64
        || !conversation
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ApiError::NotFound("unknown or expired conversation"));
    }
    let answers: AnswersBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!("the body must be {{\"answers\": [\"…\"]}}: {e}"))
    })?;
    drop(body);
    let credentials = Credentials::Continue {
        conversation,
        answers: answers.answers.into_iter().map(Secret::from).collect(),
    };
    login_answer(
        tarpit(state.pipeline.login(Some(credentials), &ctx).await).await,
        &state.login_challenges,
    )
}

const SESSION_CHALLENGE: &str = "Bearer realm=\"portcullis\"";
const SESSION_INVALID: &str = "Bearer realm=\"portcullis\", error=\"invalid_token\"";

/// The session named by `Authorization: Bearer pcs_…`.
async fn presented_session(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(token::TokenHash, Session), ApiError> {
    let unauthorized = |message: &str, challenge: &str| ApiError::Unauthorized {
        message: message.into(),
        www_authenticate: vec![challenge.into()],
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "no session token; send \"Authorization: Bearer pcs_…\"",
            SESSION_CHALLENGE,
        ));
    };
    let text = value.to_str().unwrap_or_default().trim();
    let presented = match text.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
        _ => {
            return Err(ApiError::BadRequest(
                "a session is presented as \"Authorization: Bearer pcs_…\"".into(),
            ));
        }
    };
    let invalid = || {
        unauthorized(
            "the session is unknown, expired or revoked",
            SESSION_INVALID,
        )
    };
    let hash = if presented.starts_with(token::PREFIX) {
        token::parse(presented).ok_or_else(invalid)?
    } else {
        match state.tokens.verify(presented) {
            Presented::Session(hash) => hash,
            Presented::Service => {
                return Err(unauthorized(
                    "a service token is not a session; verify it offline with /.well-known/jwks.json",
                    SESSION_INVALID,
                ));
            }
            Presented::Invalid(reason) => {
                tracing::info!(reason, "session token refused");
                return Err(invalid());
            }
        }
    };
    let session = state
        .pipeline
        .sessions
        .get(&hash)
        .await
        .map_err(store_unavailable)?
        .ok_or_else(invalid)?;
    Ok((hash, session))
}

/// The shared store did not answer: `503`, never "no such session".
fn store_unavailable(e: SessionError) -> ApiError {
    ApiError::Auth {
        error: AuthError::Unavailable {
            reason: "session_store_unavailable",
            message: e.to_string(),
        },
        www_authenticate: Vec::new(),
    }
}

async fn session_get(state: &AppState, headers: &HeaderMap) -> Result<Response<Body>, ApiError> {
    let (_, session) = presented_session(state, headers).await?;
    Ok(typed_json_response(
        StatusCode::OK,
        &SessionBody::new(&session),
    ))
}

async fn session_delete(
    state: &AppState,
    conn: &ConnInfo,
    headers: &HeaderMap,
) -> Result<Response<Body>, ApiError> {
    let (hash, session) = match presented_session(state, headers).await {
        Ok(s) => s,
        Err(e) => {
            audit::logout(conn.peer, None, "rejected");
            return Err(e);
        }
    };
    let revoked = match state.pipeline.sessions.revoke(&hash).await {
        Ok(r) => r,
        Err(e) => {
            audit::logout(conn.peer, Some(&session.info.user), "store_unavailable");
            return Err(store_unavailable(e));
        }
    };
    audit::logout(
        conn.peer,
        Some(&session.info.user),
        if revoked { "success" } else { "already_ended" },
    );
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}

/// The body of `GET /v1/session` and, with the token, of a successful login.
///
/// A struct serialized straight to bytes rather than a `serde_json::Value` turned
/// into a string: the session check is the call every protected request makes, and
/// building the map cost as much as the TLS record it is sent in (`perf`, issue 15).
#[derive(Serialize)]
pub struct SessionBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_type: Option<&'static str>,
    /// Rounded up so a fresh session reports its whole TTL.
    expires_in: u64,
    expires_at: Rfc3339,
    user: &'a str,
    mechanism: &'static str,
    groups: &'a [Arc<str>],
    labels: &'a [Arc<str>],
}

impl<'a> SessionBody<'a> {
    pub fn new(session: &'a Session) -> Self {
        SessionBody {
            session: None,
            token_type: None,
            expires_in: session
                .expires_in(SystemTime::now())
                .as_millis()
                .div_ceil(1000) as u64,
            expires_at: Rfc3339(session.expires_at),
            user: &session.info.user,
            mechanism: session.info.mechanism.as_str(),
            groups: &session.info.groups,
            labels: &session.info.labels,
        }
    }

    /// A login's answer: the session and its token.
    pub fn with_token(mut self, token: &'a str) -> Self {
        self.session = Some(token);
        self.token_type = Some("Bearer");
        self
    }
}

/// A time as RFC 3339 UTC with whole seconds, serialized without a `String`.
pub struct Rfc3339(pub SystemTime);

impl Rfc3339 {
    fn bytes(&self) -> [u8; 20] {
        let t = time::OffsetDateTime::from(self.0);
        let mut out = *b"0000-00-00T00:00:00Z";
        let mut put = |at: usize, width: usize, mut n: u32| {
            for i in (0..width).rev() {
                out[at + i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(0, 4, t.year().clamp(0, 9999) as u32);
        put(5, 2, u8::from(t.month()).into());
        put(8, 2, t.day().into());
        put(11, 2, t.hour().into());
        put(14, 2, t.minute().into());
        put(17, 2, t.second().into());
        out
    }
}

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let b = self.bytes();
        s.serialize_str(std::str::from_utf8(&b).unwrap_or_default())
    }
}

pub fn rfc3339(t: SystemTime) -> String {
    String::from_utf8_lossy(&Rfc3339(t).bytes()).into_owned()
}

/// A JSON answer serialized straight from a typed body.
pub fn typed_json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    match serde_json::to_vec(body) {
        Ok(bytes) => with_json_headers(status, Bytes::from(bytes)),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize an answer");
            with_json_headers(StatusCode::INTERNAL_SERVER_ERROR, Bytes::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_seconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_435_200);
        assert_eq!(rfc3339(t), "2026-11-23T12:00:00Z");
    }
}
