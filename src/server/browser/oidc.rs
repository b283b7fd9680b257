//! "Sign in with the IdP" (SPEC §12): the authorization-code flow with PKCE (S256),
//! run by the daemon as a confidential client (`security.oidc.client_id` +
//! `client_secret`), redirect URI `<forward.public_url | https://<Host>>/v1/oidc/callback`.
//!
//! `state`, `nonce` and the PKCE verifier stay here, in a bounded map whose entries
//! expire after [`PENDING_TTL`]; each is bound to the `__Host-portcullis_oidc` cookie
//! of the browser that started it (by hash), so a callback URL carried to another
//! browser cannot complete it. At the callback the code is exchanged, the ID token is
//! verified (signature by the IdP's JWKS, `iss`, `aud` = client_id, `exp`, `nonce`),
//! and the access token is then logged in exactly as `POST /v1/login` with `Bearer`
//! would (the oidc mechanism: groups, labels, throttle, audit).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use jsonwebtoken::{Validation, decode, decode_header};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::{
    base_url, cookie, ctx, html, linger, login_outcome, page, query_param, random_token, redirect,
    set_cookie, tarpit, well_formed,
};
use crate::audit;
use crate::auth::oidc::jwks::Keys;
use crate::auth::oidc::provider::{self, Unreachable};
use crate::auth::oidc::{Settings, configured};
use crate::auth::{Credentials, Secret};
use crate::logsafe::Untrusted;
use crate::server::routes::Body;
use crate::server::{AppState, ConnInfo};

/// The cookie binding a flow to the browser that started it.
const FLOW_COOKIE: &str = "__Host-portcullis_oidc";
/// How long a started sign-in may take at the IdP.
pub const PENDING_TTL: Duration = Duration::from_secs(600);
/// Sign-ins in progress at once; beyond it a new one is refused (503 page).
pub const PENDING_MAX: usize = 10_000;
/// Clock skew allowed on the ID token's `exp`/`iat`.
const LEEWAY: u64 = 60;

struct Endpoints {
    authorization: String,
    token: String,
    jwks: String,
}

struct Pending {
    binding: [u8; 32],
    verifier: Zeroizing<String>,
    nonce: String,
    rd: String,
    redirect_uri: String,
    expires: Instant,
}

pub struct Flow {
    issuer: String,
    client_id: String,
    client_secret: Zeroizing<String>,
    audience: Option<String>,
    scopes: String,
    /// The IdP's name on the button (its host).
    pub name: String,
    /// The IdP's origin, for the pages' `form-action`.
    pub origin: String,
    http: reqwest::Client,
    endpoints: tokio::sync::OnceCell<Arc<Endpoints>>,
    keys: Keys,
    pending: Mutex<HashMap<String, Pending>>,
}

impl Flow {
    /// `None` unless `security.oidc` names an issuer, a client id and a secret.
    pub fn new(s: &Settings) -> Result<Option<Flow>, String> {
        let (Some(issuer), Some(client_id), Some(secret)) =
            (&s.issuer, &s.client_id, &s.client_secret)
        else {
            return Ok(None);
        };
        if !configured(s) || secret.is_empty() {
            return Ok(None);
        }
        let url =
            reqwest::Url::parse(issuer).map_err(|e| format!("\"security.oidc.issuer\": {e}"))?;
        let mut scopes: Vec<&str> = s.scopes.split_whitespace().collect();
        if !scopes.contains(&"openid") {
            scopes.insert(0, "openid");
        }
        Ok(Some(Flow {
            issuer: issuer.clone(),
            client_id: client_id.clone(),
            client_secret: secret.clone(),
            audience: s.audience.clone(),
            scopes: scopes.join(" "),
            name: url
                .host_str()
                .unwrap_or("the identity provider")
                .to_string(),
            origin: url.origin().ascii_serialization(),
            http: provider::http_client(s.ca_cert.as_deref())?,
            endpoints: tokio::sync::OnceCell::new(),
            keys: Keys::new(Duration::from_secs(s.jwks_refetch_interval.max(1))),
            pending: Mutex::new(HashMap::new()),
        }))
    }

    /// The IdP's authorization, token and JWKS endpoints, discovered once.
    async fn endpoints(&self) -> Result<Arc<Endpoints>, Unreachable> {
        self.endpoints
            .get_or_try_init(|| async {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.issuer.trim_end_matches('/')
                );
                let doc = provider::get_json(&self.http, &url).await?;
                if doc["issuer"].as_str().map(|i| i.trim_end_matches('/'))
                    != Some(self.issuer.trim_end_matches('/'))
                {
                    return Err(Unreachable(format!("{url} names another issuer")));
                }
                let get = |k: &str| -> Result<String, Unreachable> {
                    let v = doc[k]
                        .as_str()
                        .ok_or_else(|| Unreachable(format!("{url} has no {k}")))?;
                    if !provider::endpoint_allowed(v) {
                        return Err(Unreachable(format!(
                            "{k} {v} is neither https:// nor loopback"
                        )));
                    }
                    Ok(v.to_string())
                };
                Ok(Arc::new(Endpoints {
                    authorization: get("authorization_endpoint")?,
                    token: get("token_endpoint")?,
                    jwks: get("jwks_uri")?,
                }))
            })
            .await
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keep a started sign-in; `false` when [`PENDING_MAX`] are in progress.
    fn remember(&self, state: String, p: Pending) -> bool {
        let mut map = self.lock();
        if map.len() >= PENDING_MAX {
            let now = Instant::now();
            map.retain(|_, p| p.expires > now);
        }
        if map.len() >= PENDING_MAX {
            return false;
        }
        map.insert(state, p);
        true
    }

    /// The sign-in `state` names, once (taken out whatever comes next).
    fn take(&self, state: &str) -> Option<Pending> {
        self.lock()
            .remove(state)
            .filter(|p| p.expires > Instant::now())
    }

    /// Exchange the code (client_secret_basic); the ID token and access token.
    async fn exchange(
        &self,
        e: &Endpoints,
        code: &str,
        p: &Pending,
    ) -> Result<(String, Zeroizing<String>), String> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", p.redirect_uri.as_str()),
            ("code_verifier", p.verifier.as_str()),
        ];
        if let Some(aud) = &self.audience {
            form.push(("resource", aud));
        }
        // RFC 6749 §2.3.1: both parts form-encoded before Basic.
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let resp = self
            .http
            .post(&e.token)
            .basic_auth(enc(&self.client_id), Some(enc(&self.client_secret)))
            .form(&form)
            .send()
            .await
            .map_err(|err| format!("POST {}: {err}", e.token))?;
        let status = resp.status();
        let v: Value = provider::read_json(resp, "the token endpoint")
            .await
            .map_err(|err| err.to_string())?;
        match (v["id_token"].as_str(), v["access_token"].as_str()) {
            (Some(id), Some(at)) if status.is_success() => {
                Ok((id.to_string(), Zeroizing::new(at.to_string())))
            }
            _ => Err(format!(
                "the token endpoint answered {status}: {}",
                Untrusted(v["error"].as_str().unwrap_or("no tokens"))
            )),
        }
    }

    /// The ID token: signed by a key of the IdP, for us (`aud`), from the issuer,
    /// unexpired, with our `nonce`.
    async fn check_id_token(
        &self,
        e: &Endpoints,
        id_token: &str,
        nonce: &str,
    ) -> Result<(), String> {
        let header = decode_header(id_token).map_err(|err| format!("ID token: {err}"))?;
        let candidates = self
            .keys
            .for_token(&self.http, &e.jwks, header.kid.as_deref(), header.alg)
            .await
            .map_err(|err| err.to_string())?;
        let mut v = Validation::new(header.alg);
        v.leeway = LEEWAY;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.set_audience(&[&self.client_id]);
        v.set_issuer(&[&self.issuer]);
        let mut last = "no IdP key for its kid and algorithm".to_string();
        for k in &candidates {
            match decode::<Value>(id_token, &k.key, &v) {
                Ok(data) => {
                    let got = data.claims["nonce"].as_str().unwrap_or_default();
                    return if bool::from(got.as_bytes().ct_eq(nonce.as_bytes())) {
                        Ok(())
                    } else {
                        Err("ID token: wrong nonce".into())
                    };
                }
                Err(err) => last = err.to_string(),
            }
        }
        Err(format!("ID token: {last}"))
    }
}

fn binding_of(cookie_value: &str) -> [u8; 32] {
    Sha256::digest(cookie_value.as_bytes()).into()
}

fn not_configured(state: &AppState) -> Response<Body> {
    page(
        state,
        StatusCode::NOT_FOUND,
        html::error(
            "Not available",
            "Signing in with an identity provider is not configured on this server.",
        ),
    )
}

fn idp_unavailable(state: &AppState) -> Response<Body> {
    page(
        state,
        StatusCode::SERVICE_UNAVAILABLE,
        html::error(
            "Sign-in unavailable",
            "The identity provider cannot be reached; try again later.",
        ),
    )
}

/// `GET /login/oidc?rd=…`: off to the IdP.
pub async fn start(state: &AppState, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    linger(body);
    let Some(flow) = &state.browser.oidc else {
        return not_configured(state);
    };
    let rd = redirect::safe_redirect(
        query_param(&parts.uri, "rd").as_deref(),
        &state.config.forward.allowed_redirect_hosts,
    );
    let Some(base) = base_url(state, &parts.uri, &parts.headers) else {
        return page(
            state,
            StatusCode::BAD_REQUEST,
            html::error("Request refused", "The request names no usable host."),
        );
    };
    let endpoints = match flow.endpoints().await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "browser sign-in: the IdP's discovery failed");
            return idp_unavailable(state);
        }
    };
    // One binding cookie per browser, reused by sign-ins started in other tabs.
    let (bind, set) = match cookie(&parts.headers, FLOW_COOKIE).filter(|c| well_formed(c)) {
        Some(c) => (c, None),
        None => {
            let c = random_token();
            let set = format!(
                "{FLOW_COOKIE}={c}; Secure; HttpOnly; SameSite=Lax; Path=/; Max-Age={}",
                PENDING_TTL.as_secs()
            );
            (c, Some(set))
        }
    };
    let verifier = Zeroizing::new(random_token() + &random_token());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let (st, nonce) = (random_token(), random_token());
    let redirect_uri = format!("{base}/v1/oidc/callback");
    let Ok(mut url) = reqwest::Url::parse(&endpoints.authorization) else {
        return idp_unavailable(state);
    };
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &flow.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", &flow.scopes)
            .append_pair("state", &st)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        if let Some(aud) = &flow.audience {
            q.append_pair("resource", aud);
        }
    }
    let pending = Pending {
        binding: binding_of(&bind),
        verifier,
        nonce,
        rd,
        redirect_uri,
        expires: Instant::now() + PENDING_TTL,
    };
    if !flow.remember(st, pending) {
        tracing::warn!(
            limit = PENDING_MAX,
            "browser sign-in refused: too many sign-ins in progress"
        );
        return page(
            state,
            StatusCode::SERVICE_UNAVAILABLE,
            html::error(
                "Sign-in unavailable",
                "Too many sign-ins are in progress; try again shortly.",
            ),
        );
    }
    let mut resp = Response::new(http_body_util::Full::new(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(url.as_str()) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(set) = set {
        set_cookie(&mut resp, &set);
    }
    resp
}

/// `GET /v1/oidc/callback?code&state` (or `?error&state`).
pub async fn callback(state: &AppState, conn: &ConnInfo, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    linger(body);
    let Some(flow) = &state.browser.oidc else {
        return not_configured(state);
    };
    let refused = |reason: &str, status: StatusCode, message: &str| {
        audit::refused_request(conn.peer, "/v1/oidc/callback", reason);
        page(state, status, html::error("Sign-in failed", message))
    };
    let param = |k: &str| query_param(&parts.uri, k);
    let Some(pending) = param("state").and_then(|s| flow.take(&s)) else {
        return refused(
            "bad_state",
            StatusCode::BAD_REQUEST,
            "This sign-in has expired or was not started in this browser. Start again from the sign-in page.",
        );
    };
    let bound = cookie(&parts.headers, FLOW_COOKIE)
        .is_some_and(|c| bool::from(binding_of(&c).ct_eq(&pending.binding)));
    if !bound {
        return refused(
            "bad_state",
            StatusCode::BAD_REQUEST,
            "This sign-in has expired or was not started in this browser. Start again from the sign-in page.",
        );
    }
    if let Some(err) = param("error") {
        // Only a code the spec defines is shown; the description is the IdP's text.
        let code: String = err
            .chars()
            .filter(|c| c.is_ascii_lowercase() || *c == '_')
            .take(64)
            .collect();
        tracing::info!(error = %Untrusted(&err), "browser sign-in: the IdP answered with an error");
        return refused(
            "idp_error",
            StatusCode::UNAUTHORIZED,
            &format!("The identity provider did not sign you in ({code})."),
        );
    }
    let Some(code) = param("code").filter(|c| !c.is_empty() && c.len() <= 4096) else {
        return refused(
            "bad_request",
            StatusCode::BAD_REQUEST,
            "The identity provider's answer carries no authorization code.",
        );
    };
    let endpoints = match flow.endpoints().await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "browser sign-in: the IdP's discovery failed");
            return idp_unavailable(state);
        }
    };
    let (id_token, access_token) = match flow.exchange(&endpoints, &code, &pending).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "browser sign-in: the code exchange failed");
            return refused(
                "code_exchange_failed",
                StatusCode::BAD_GATEWAY,
                "The identity provider did not complete the sign-in; start again.",
            );
        }
    };
    if let Err(e) = flow
        .check_id_token(&endpoints, &id_token, &pending.nonce)
        .await
    {
        tracing::warn!(error = %Untrusted(&e), "browser sign-in: the ID token was refused");
        return refused(
            "id_token_refused",
            StatusCode::UNAUTHORIZED,
            "The identity provider's answer could not be verified; start again.",
        );
    }
    let ctx = ctx(conn);
    let credentials = Credentials::Bearer(Secret::new(access_token.to_string()));
    let result = tarpit(state.pipeline.login(Some(credentials), &ctx).await).await;
    login_outcome(state, &parts.headers, &pending.rd, "", result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> Flow {
        Flow::new(&Settings {
            issuer: Some("https://idp.example.com".into()),
            client_id: Some("web".into()),
            client_secret: Some(Zeroizing::new("s".into())),
            scopes: "profile".into(),
            jwks_refetch_interval: 60,
            ..Settings::default()
        })
        .unwrap()
        .unwrap()
    }

    fn pending() -> Pending {
        Pending {
            binding: [0; 32],
            verifier: Zeroizing::new("v".into()),
            nonce: "n".into(),
            rd: "/".into(),
            redirect_uri: "https://x/v1/oidc/callback".into(),
            expires: Instant::now() + PENDING_TTL,
        }
    }

    #[test]
    fn only_a_complete_confidential_client_enables_the_flow() {
        let f = flow();
        assert_eq!(f.scopes, "openid profile");
        assert_eq!(
            (f.name.as_str(), f.origin.as_str()),
            ("idp.example.com", "https://idp.example.com")
        );
        let no_secret = Settings {
            issuer: Some("https://idp.example.com".into()),
            client_id: Some("web".into()),
            ..Settings::default()
        };
        assert!(Flow::new(&no_secret).unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_state_works_once_and_expires() {
        let f = flow();
        assert!(f.remember("a".into(), pending()));
        assert!(f.take("a").is_some());
        assert!(f.take("a").is_none());
        assert!(f.remember("b".into(), pending()));
        tokio::time::advance(PENDING_TTL + Duration::from_secs(1)).await;
        assert!(f.take("b").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn sign_ins_in_progress_are_bounded() {
        let f = flow();
        for i in 0..PENDING_MAX {
            assert!(f.remember(i.to_string(), pending()));
        }
        assert!(!f.remember("one more".into(), pending()));
        // Expired ones make room.
        tokio::time::advance(PENDING_TTL + Duration::from_secs(1)).await;
        assert!(f.remember("one more".into(), pending()));
        assert_eq!(f.lock().len(), 1);
    }
}
