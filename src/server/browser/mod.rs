//! The browser login of SPEC §12: `GET|POST /login` (password with every further PAM
//! prompt, Kerberos through SPNEGO), "sign in with the IdP" (`/login/oidc`,
//! `/v1/oidc/callback`, in [`oidc`]) and `/logout`. Server-rendered pages ([`html`]),
//! no script.
//!
//! Every login goes through the same pipeline as `POST /v1/login` (throttle, PAM
//! pool, audit, metrics); a success sets the `portcullis_session` cookie to the
//! session token exactly as the JSON API hands it out, and sends the browser to a
//! checked `rd` ([`redirect`]).
//!
//! Forms are protected twice: the Origin check of SPEC §9 (a foreign `Origin` or
//! `Sec-Fetch-Site: cross-site` is refused) and a double-submit CSRF token: a random
//! value in the `__Host-portcullis_csrf` cookie (host-only, `Secure`, `HttpOnly`,
//! `SameSite=Strict`, so neither another site nor a sibling subdomain can set it) that
//! each form repeats in a hidden field; the two are compared in constant time.

pub mod html;
pub mod oidc;
pub mod redirect;

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::body::{linger, read_body};
use super::routes::Body;
use super::{AppState, ConnInfo};
use crate::audit;
use crate::auth::{AuthError, Credentials, LoginContext, Mechanism, Secret};
use crate::config::Config;
use crate::issued::Presented;
use crate::pipeline::LoginResult;
use crate::session::token;

/// The cookie holding the session token (shared with `/v1/authorize`).
pub const SESSION_COOKIE: &str = "portcullis_session";
/// The double-submit CSRF cookie.
const CSRF_COOKIE: &str = "__Host-portcullis_csrf";
/// How long a 429 waits before it is sent (as `POST /v1/login` does).
const TARPIT: Duration = Duration::from_secs(1);

/// What the browser pages keep between requests.
pub struct Browser {
    /// "Sign in with the IdP", when `security.oidc` has an issuer, `client_id` and
    /// `client_secret` and the oidc mechanism is on.
    pub oidc: Option<oidc::Flow>,
    /// `Content-Security-Policy` of every page.
    csp: String,
}

impl Browser {
    pub fn new(config: &Config) -> Result<Browser, String> {
        if let Some(d) = &config.forward.cookie_domain
            && (d.is_empty()
                || !d
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
        {
            return Err(format!(
                "\"forward.cookie_domain\": \"{}\" is not a domain name (e.g. example.com)",
                crate::logsafe::clean(d)
            ));
        }
        let oidc = if config.security.mechanisms.contains(&Mechanism::Oidc) {
            oidc::Flow::new(&config.security.oidc)?
        } else {
            None
        };
        // form-action also governs where a form's response may redirect: the IdP and
        // the hosts `rd` may name.
        let mut form_action = vec!["'self'".to_string()];
        if let Some(f) = &oidc {
            form_action.push(f.origin.clone());
        }
        for h in &config.forward.allowed_redirect_hosts {
            if !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            {
                form_action.push(format!("https://{h}"));
            }
        }
        let csp = format!(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action {}; frame-ancestors 'none'; base-uri 'none'",
            form_action.join(" ")
        );
        Ok(Browser { oidc, csp })
    }
}

/// `/login`, `/login/oidc`, `/v1/oidc/callback`, `/logout`.
pub async fn handle(state: &AppState, conn: &ConnInfo, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (path.as_str(), &method) {
        ("/login", &Method::GET | &Method::HEAD) => login_get(state, conn, req).await,
        ("/login", &Method::POST) => login_post(state, conn, req).await,
        ("/login/oidc", &Method::GET) => oidc::start(state, req).await,
        ("/v1/oidc/callback", &Method::GET) => oidc::callback(state, conn, req).await,
        ("/logout", &Method::GET | &Method::HEAD) => logout_get(state, req).await,
        ("/logout", &Method::POST) => logout_post(state, conn, req).await,
        _ => {
            linger(req.into_body());
            let allow = if path == "/login" || path == "/logout" {
                "GET, POST"
            } else {
                "GET"
            };
            let mut resp = page(
                state,
                StatusCode::METHOD_NOT_ALLOWED,
                html::error("Not allowed", &format!("Use {allow} here.")),
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            resp
        }
    }
}

/// An HTML answer with the headers every page carries.
pub fn page(state: &AppState, status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&state.browser.csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: with it, Chromium sends `Origin: null` on the page's own
    // form posts, which the Origin check must refuse.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// A `303 See Other` to `to` (already checked), with `Cache-Control: no-store`.
fn see_other(to: &str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn set_cookie(resp: &mut Response<Body>, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// The value of cookie `name` (the first one; every `Cookie` header is read, as
/// HTTP/2 may split them).
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
}

/// 32 random bytes, URL-safe base64 (43 characters).
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the kernel's CSPRNG is available");
    URL_SAFE_NO_PAD.encode(b)
}

fn well_formed(t: &str) -> bool {
    t.len() == 43
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The CSRF token of this browser: its cookie if it has a well-formed one, else a
/// new one (with the `Set-Cookie` to send).
fn csrf_token(headers: &HeaderMap) -> (String, Option<String>) {
    match cookie(headers, CSRF_COOKIE).filter(|t| well_formed(t)) {
        Some(t) => (t, None),
        None => {
            let t = random_token();
            let set = format!("{CSRF_COOKIE}={t}; Secure; HttpOnly; SameSite=Strict; Path=/");
            (t, Some(set))
        }
    }
}

/// The form's token equals the cookie's (constant time), and both are well formed.
fn csrf_ok(headers: &HeaderMap, form: Option<&str>) -> bool {
    match (cookie(headers, CSRF_COOKIE), form) {
        (Some(c), Some(f)) if well_formed(&c) && well_formed(f) => {
            bool::from(c.as_bytes().ct_eq(f.as_bytes()))
        }
        _ => false,
    }
}

/// `https://<host>` as the client addressed this daemon (`:authority` or `Host`),
/// when the host is a plain host name or address with an optional port.
fn own_origin(state: &AppState, req_uri: &hyper::Uri, headers: &HeaderMap) -> Option<String> {
    let scheme = if state.tls.is_some() { "https" } else { "http" };
    let host = req_uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })?;
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    ok.then(|| format!("{scheme}://{host}"))
}

/// Where browsers reach this daemon: `forward.public_url`, else the request's host.
pub fn base_url(state: &AppState, req_uri: &hyper::Uri, headers: &HeaderMap) -> Option<String> {
    match &state.config.forward.public_url {
        Some(u) => Some(u.trim_end_matches('/').to_string()),
        None => own_origin(state, req_uri, headers),
    }
}

/// SPEC §9 for the §12 forms: no `Sec-Fetch-Site: cross-site`, and an `Origin`, if
/// sent, that is this daemon's (as addressed, or `forward.public_url`) or listed in
/// `security.allowed_origins`.
fn origin_ok(state: &AppState, req_uri: &hyper::Uri, headers: &HeaderMap) -> Result<(), String> {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return Err("a cross-site page".into());
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let own = own_origin(state, req_uri, headers).is_some_and(|o| o.eq_ignore_ascii_case(origin));
    let public = state.config.forward.public_url.as_deref().is_some_and(|u| {
        reqwest::Url::parse(u).ok().is_some_and(|u| {
            u.origin()
                .ascii_serialization()
                .eq_ignore_ascii_case(origin)
        })
    });
    let listed = state
        .config
        .security
        .allowed_origins
        .iter()
        .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin));
    if own || public || listed {
        Ok(())
    } else {
        Err(crate::logsafe::clean(origin))
    }
}

fn origin_refused(state: &AppState, conn: &ConnInfo, path: &str, origin: &str) -> Response<Body> {
    audit::refused_request(conn.peer, path, "origin_not_allowed");
    page(
        state,
        StatusCode::FORBIDDEN,
        html::error(
            "Request refused",
            &format!(
                "Requests from {origin} are not allowed (origin_not_allowed). Open the sign-in page of this site and try again."
            ),
        ),
    )
}

fn csrf_refused(state: &AppState, conn: &ConnInfo, path: &str) -> Response<Body> {
    audit::refused_request(conn.peer, path, "csrf_failed");
    page(
        state,
        StatusCode::FORBIDDEN,
        html::error(
            "Request refused",
            "This form has expired or did not come from this site. Reload the page and try again.",
        ),
    )
}

/// A form body's fields, values kept in zeroizing strings (they hold passwords).
struct Form(Vec<(String, Zeroizing<String>)>);

impl Form {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn all(&self, name: &str) -> impl Iterator<Item = &Zeroizing<String>> {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// The urlencoded body of a form POST; `Err` is the page to answer.
async fn read_form(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<(hyper::http::request::Parts, Form), Response<Body>> {
    let (parts, body) = req.into_parts();
    let media = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if media.as_deref() != Some("application/x-www-form-urlencoded") {
        linger(body);
        return Err(page(
            state,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            html::error(
                "Request refused",
                "This page accepts only its own forms (application/x-www-form-urlencoded).",
            ),
        ));
    }
    let limits = &state.config.system;
    let raw = match read_body(
        body,
        &parts.headers,
        limits.max_body_bytes,
        Duration::from_secs(limits.request_timeout),
    )
    .await
    {
        Ok(b) => b,
        Err(e) => {
            return Err(page(
                state,
                e.status(),
                html::error("Request refused", &e.to_string()),
            ));
        }
    };
    let fields = form_urlencoded::parse(&raw)
        .map(|(k, v)| (k.into_owned(), Zeroizing::new(v.into_owned())))
        .collect();
    Ok((parts, Form(fields)))
}

fn query_param(uri: &hyper::Uri, name: &str) -> Option<String> {
    form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn ctx(conn: &ConnInfo) -> LoginContext {
    LoginContext {
        peer: conn.peer,
        binding: conn.binding,
        issuer: Default::default(),
    }
}

fn enabled(state: &AppState, m: Mechanism) -> bool {
    state.pipeline.enabled().contains(&m)
}

/// The login page with `error` (if any), its CSRF cookie set when new.
fn login_page(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    rd: &str,
    username: &str,
    error: Option<&str>,
) -> Response<Body> {
    let (csrf, set) = csrf_token(headers);
    let idp_link = format!(
        "/login/oidc?rd={}",
        form_urlencoded::byte_serialize(rd.as_bytes()).collect::<String>()
    );
    let idp = state
        .browser
        .oidc
        .as_ref()
        .map(|f| (f.name.as_str(), idp_link.as_str()));
    let body = html::login(&html::LoginPage {
        csrf: &csrf,
        rd,
        error,
        username,
        password: enabled(state, Mechanism::Password),
        idp,
        kerberos: enabled(state, Mechanism::Kerberos),
    });
    let mut resp = page(state, status, body);
    if let Some(set) = set {
        set_cookie(&mut resp, &set);
    }
    resp
}

/// The `portcullis_session` cookie for `token`, living as long as the session.
fn session_cookie(config: &Config, token: &str, max_age: u64) -> String {
    let mut c = format!(
        "{SESSION_COOKIE}={token}; Secure; HttpOnly; SameSite=Lax; Path=/; Max-Age={max_age}"
    );
    if let Some(d) = &config.forward.cookie_domain {
        c.push_str(&format!("; Domain={d}"));
    }
    c
}

/// What a finished login answers: the cookie and a 303 to `rd`; a further PAM prompt
/// on its own page; a refusal as the login page with the JSON API's message.
pub fn login_outcome(
    state: &AppState,
    headers: &HeaderMap,
    rd: &str,
    username: &str,
    result: Result<LoginResult, AuthError>,
) -> Response<Body> {
    match result {
        Ok(LoginResult::Session {
            token,
            session,
            response_token,
        }) => {
            let max_age = session.expires_in(SystemTime::now()).as_secs();
            let mut resp = see_other(rd);
            set_cookie(
                &mut resp,
                &session_cookie(&state.config, &token.text, max_age),
            );
            super::routes::mutual_authentication(&mut resp, response_token);
            resp
        }
        Ok(LoginResult::Challenge(c)) => {
            let (csrf, set) = csrf_token(headers);
            let mut resp = page(
                state,
                StatusCode::OK,
                html::prompts(&csrf, rd, &c.conversation, &c.prompts),
            );
            if let Some(set) = set {
                set_cookie(&mut resp, &set);
            }
            resp
        }
        Err(e) => {
            let refusal = crate::error::refusal(&e);
            let message = match &e {
                AuthError::UnknownConversation | AuthError::ConversationElsewhere => {
                    format!("{e}; sign in again.")
                }
                _ => e.to_string(),
            };
            let mut resp = login_page(state, headers, refusal.status, rd, username, Some(&message));
            if let AuthError::TooManyAttempts { retry_after } = e {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            resp
        }
    }
}

async fn tarpit<T>(result: Result<T, AuthError>) -> Result<T, AuthError> {
    if matches!(result, Err(AuthError::TooManyAttempts { .. })) {
        tokio::time::sleep(TARPIT).await;
    }
    result
}

/// `GET /login`: the page; with `Authorization: Negotiate`, a Kerberos login. When
/// Kerberos is on, a first visit gets `401` + `WWW-Authenticate: Negotiate` with the
/// page as its body (as mod_auth_gssapi does), so a browser set up for SPNEGO signs
/// in without a form and any other shows the form.
async fn login_get(state: &AppState, conn: &ConnInfo, req: Request<Incoming>) -> Response<Body> {
    let rd = redirect::safe_redirect(
        query_param(req.uri(), "rd").as_deref(),
        &state.config.forward.allowed_redirect_hosts,
    );
    let headers = req.headers().clone();
    linger(req.into_body());
    let negotiate = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .split(' ')
                .next()
                .is_some_and(|s| s.eq_ignore_ascii_case("negotiate"))
        });
    let kerberos = enabled(state, Mechanism::Kerberos);
    if negotiate && kerberos {
        let ctx = ctx(conn);
        let credentials = match super::credentials::extract_credentials(&headers, b"", conn) {
            Ok(c) => c,
            Err(e) => {
                state.pipeline.record_refusal("kerberos", &e, &ctx);
                return login_outcome(state, &headers, &rd, "", Err(e));
            }
        };
        let result = tarpit(state.pipeline.login(credentials, &ctx).await).await;
        // A refused ticket shows the form (no new challenge: no loop).
        return login_outcome(state, &headers, &rd, "", result);
    }
    if kerberos {
        let mut resp = login_page(state, &headers, StatusCode::UNAUTHORIZED, &rd, "", None);
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Negotiate"),
        );
        return resp;
    }
    login_page(state, &headers, StatusCode::OK, &rd, "", None)
}

/// `POST /login`: the password form, or the answers to a PAM prompt.
async fn login_post(state: &AppState, conn: &ConnInfo, req: Request<Incoming>) -> Response<Body> {
    if let Err(origin) = origin_ok(state, req.uri(), req.headers()) {
        linger(req.into_body());
        return origin_refused(state, conn, "/login", &origin);
    }
    let (parts, form) = match read_form(state, req).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let headers = &parts.headers;
    if !csrf_ok(headers, form.get("csrf")) {
        return csrf_refused(state, conn, "/login");
    }
    let rd = redirect::safe_redirect(form.get("rd"), &state.config.forward.allowed_redirect_hosts);
    let ctx = ctx(conn);
    let (credentials, username) = if let Some(conversation) = form.get("conversation") {
        if conversation.is_empty()
            || conversation.len() > 64
            || !conversation
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return login_outcome(state, headers, &rd, "", Err(AuthError::UnknownConversation));
        }
        let answers = form
            .all("answer")
            .map(|a| Secret::from(a.clone()))
            .collect();
        (
            Credentials::Continue {
                conversation: conversation.to_string(),
                answers,
            },
            String::new(),
        )
    } else {
        match (form.get("username"), form.get("password")) {
            (Some(u), Some(p)) if !u.is_empty() => (
                Credentials::Password {
                    username: u.to_string(),
                    password: Secret::new(p.to_string()),
                },
                u.to_string(),
            ),
            _ => {
                return login_page(
                    state,
                    headers,
                    StatusCode::BAD_REQUEST,
                    &rd,
                    form.get("username").unwrap_or_default(),
                    Some("Enter a user name and a password."),
                );
            }
        }
    };
    drop(form);
    let result = tarpit(state.pipeline.login(Some(credentials), &ctx).await).await;
    // The name typed is shown again only if it is one PAM would have been asked about.
    let shown = if crate::auth::valid_username(&username) {
        username.as_str()
    } else {
        ""
    };
    login_outcome(state, headers, &rd, shown, result)
}

/// The session named by the `portcullis_session` cookie, if it is live.
async fn cookie_session(
    state: &AppState,
    headers: &HeaderMap,
) -> Option<(token::TokenHash, crate::session::Session)> {
    let presented = cookie(headers, SESSION_COOKIE)?;
    let hash = if presented.starts_with(token::PREFIX) {
        token::parse(&presented)?
    } else {
        match state.tokens.verify(&presented) {
            Presented::Session(hash) => hash,
            _ => return None,
        }
    };
    let session = state.pipeline.sessions.get(&hash).await.ok().flatten()?;
    Some((hash, session))
}

/// `GET /logout`: a page with a button (a GET must not end a session: any page
/// could make the browser send one).
async fn logout_get(state: &AppState, req: Request<Incoming>) -> Response<Body> {
    let headers = req.headers().clone();
    linger(req.into_body());
    let user = cookie_session(state, &headers)
        .await
        .map(|(_, s)| s.info.user.to_string());
    let (csrf, set) = csrf_token(&headers);
    let mut resp = page(
        state,
        StatusCode::OK,
        html::logout_confirm(&csrf, user.as_deref()),
    );
    if let Some(set) = set {
        set_cookie(&mut resp, &set);
    }
    resp
}

/// `POST /logout`: revoke the session of the cookie and clear the cookie.
async fn logout_post(state: &AppState, conn: &ConnInfo, req: Request<Incoming>) -> Response<Body> {
    if let Err(origin) = origin_ok(state, req.uri(), req.headers()) {
        linger(req.into_body());
        return origin_refused(state, conn, "/logout", &origin);
    }
    let (parts, form) = match read_form(state, req).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    if !csrf_ok(&parts.headers, form.get("csrf")) {
        return csrf_refused(state, conn, "/logout");
    }
    match cookie_session(state, &parts.headers).await {
        Some((hash, session)) => {
            let result = match state.pipeline.sessions.revoke(&hash).await {
                Ok(true) => "success",
                Ok(false) => "already_ended",
                Err(_) => {
                    audit::logout(conn.peer, Some(&session.info.user), "store_unavailable");
                    return page(
                        state,
                        StatusCode::SERVICE_UNAVAILABLE,
                        html::error(
                            "Not signed out",
                            "The session store is unavailable; try again later.",
                        ),
                    );
                }
            };
            audit::logout(conn.peer, Some(&session.info.user), result);
        }
        None => audit::logout(conn.peer, None, "no_session"),
    }
    let mut resp = page(state, StatusCode::OK, html::signed_out());
    set_cookie(&mut resp, &clear_session_cookie(&state.config));
    resp
}

fn clear_session_cookie(config: &Config) -> String {
    let mut c = format!("{SESSION_COOKIE}=; Secure; HttpOnly; SameSite=Lax; Path=/; Max-Age=0");
    if let Some(d) = &config.forward.cookie_domain {
        c.push_str(&format!("; Domain={d}"));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_in_every_header() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("portcullis_session=pcs_x"),
        );
        assert_eq!(cookie(&h, "b").as_deref(), Some("2"));
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("pcs_x"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn csrf_needs_the_same_well_formed_token_twice() {
        let t = random_token();
        let mut h = HeaderMap::new();
        assert!(!csrf_ok(&h, Some(&t)));
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{CSRF_COOKIE}={t}")).unwrap(),
        );
        assert!(csrf_ok(&h, Some(&t)));
        assert!(!csrf_ok(&h, None));
        assert!(!csrf_ok(&h, Some(&random_token())));
        assert!(!csrf_ok(&h, Some("")));
        let (same, set) = csrf_token(&h);
        assert_eq!((same.as_str(), set), (t.as_str(), None));
        let (fresh, set) = csrf_token(&HeaderMap::new());
        assert!(well_formed(&fresh));
        let set = set.unwrap();
        assert!(
            set.contains("Secure") && set.contains("HttpOnly") && set.contains("SameSite=Strict")
        );
    }
}
