//! `portcullis login --oidc | --client-credentials | --token-file`: get an access
//! token from the IdP the server names in `GET /v1/auth/methods`, then present it as
//! `Authorization: Bearer`.
//!
//! `--oidc` is the authorization-code flow with PKCE (RFC 7636, S256) and a loopback
//! redirect (RFC 8252 §7.3): the CLI listens on `127.0.0.1:<port>/callback`, prints
//! the URL to open, and checks `state` before exchanging the code.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

/// What the server says about its IdP.
#[derive(Debug, Clone)]
pub struct IdpInfo {
    pub issuer: String,
    pub client_id: String,
    pub audience: Option<String>,
    pub scopes: String,
}

impl IdpInfo {
    pub fn from_methods(v: &Value) -> Option<IdpInfo> {
        let o = v.get("oidc")?;
        Some(IdpInfo {
            issuer: o["issuer"].as_str()?.to_string(),
            client_id: o["client_id"].as_str().unwrap_or_default().to_string(),
            audience: o["audience"].as_str().map(str::to_string),
            scopes: o["scopes"].as_str().unwrap_or("openid").to_string(),
        })
    }
}

fn random(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("the kernel's CSPRNG is available");
    URL_SAFE_NO_PAD.encode(b)
}

pub fn http(idp_ca: Option<&Path>) -> Result<reqwest::Client, String> {
    crate::auth::oidc::provider::http_client(idp_ca)
}

async fn token_endpoint(http: &reqwest::Client, issuer: &str) -> Result<(String, Value), String> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let doc = crate::auth::oidc::provider::get_json(http, &url)
        .await
        .map_err(|e| e.to_string())?;
    let token = doc["token_endpoint"]
        .as_str()
        .ok_or("the IdP publishes no token_endpoint")?
        .to_string();
    Ok((token, doc))
}

async fn token_request(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> Result<Zeroizing<String>, String> {
    let mut req = http.post(url).form(form);
    if let Some((id, secret)) = basic {
        req = req.basic_auth(id, Some(secret));
    }
    let resp = req.send().await.map_err(|e| format!("POST {url}: {e}"))?;
    let status = resp.status();
    let v: Value = resp.json().await.map_err(|e| format!("POST {url}: {e}"))?;
    match v["access_token"].as_str() {
        Some(t) if status.is_success() => Ok(Zeroizing::new(t.to_string())),
        _ => Err(format!(
            "the IdP refused: {} {}",
            v["error"].as_str().unwrap_or(status.as_str()),
            v["error_description"].as_str().unwrap_or("")
        )),
    }
}

/// OAuth 2.0 client credentials, for services.
pub async fn client_credentials(
    http: &reqwest::Client,
    idp: &IdpInfo,
    id: &str,
    secret: &str,
) -> Result<Zeroizing<String>, String> {
    let (url, _) = token_endpoint(http, &idp.issuer).await?;
    let mut form = vec![("grant_type", "client_credentials")];
    if let Some(aud) = &idp.audience {
        // RFC 8707 resource indicator: asks for an access token for our audience.
        form.push(("resource", aud));
    }
    token_request(http, &url, &form, Some((id, secret))).await
}

/// Authorization code + PKCE through the user's browser.
pub async fn authorization_code(
    http: &reqwest::Client,
    idp: &IdpInfo,
    port: u16,
    wait: Duration,
) -> Result<Zeroizing<String>, String> {
    let (token_url, doc) = token_endpoint(http, &idp.issuer).await?;
    let authorize = doc["authorization_endpoint"]
        .as_str()
        .ok_or("the IdP publishes no authorization_endpoint")?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port} for the redirect: {e}"))?;
    let redirect = format!("http://127.0.0.1:{port}/callback");
    let verifier = Zeroizing::new(random(48));
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let state = random(24);
    let mut url =
        reqwest::Url::parse(authorize).map_err(|e| format!("authorization_endpoint: {e}"))?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &idp.client_id)
            .append_pair("redirect_uri", &redirect)
            .append_pair("scope", &idp.scopes)
            .append_pair("state", &state)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        if let Some(aud) = &idp.audience {
            q.append_pair("resource", aud);
        }
    }
    eprintln!("Open this URL in a browser to log in:\n\n  {url}\n");
    eprintln!("(waiting for the redirect to {redirect})");
    let code = tokio::time::timeout(wait, callback(&listener, &state))
        .await
        .map_err(|_| "no redirect from the browser in time".to_string())??;
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", redirect.as_str()),
        ("client_id", idp.client_id.as_str()),
        ("code_verifier", verifier.as_str()),
    ];
    if let Some(aud) = &idp.audience {
        form.push(("resource", aud));
    }
    token_request(http, &token_url, &form, None).await
}

/// Serve the loopback redirect until a request with our `state` arrives.
async fn callback(
    listener: &tokio::net::TcpListener,
    state: &str,
) -> Result<Zeroizing<String>, String> {
    loop {
        let (mut sock, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 8192];
        let n = sock.read(&mut buf).await.unwrap_or(0);
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let url = reqwest::Url::parse(&format!("http://127.0.0.1{target}")).ok();
        let param = |k: &str| {
            url.as_ref().and_then(|u| {
                u.query_pairs()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.into_owned())
            })
        };
        if url.as_ref().map(|u| u.path()) != Some("/callback") {
            let _ = sock
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            continue;
        }
        let (page, result) = match (param("state"), param("code"), param("error")) {
            (Some(s), Some(code), _) if s == state => (
                "Logged in; you can close this window.",
                Ok(Zeroizing::new(code)),
            ),
            (Some(s), _, Some(err)) if s == state => (
                "Login failed; see the terminal.",
                Err(format!("the IdP answered: {err}")),
            ),
            // A request without our state is not the answer to our request (CSRF).
            _ => ("Unexpected request.", Err(String::new())),
        };
        let body = format!("<!doctype html><title>portcullis</title><p>{page}</p>");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = sock.write_all(resp.as_bytes()).await;
        match result {
            Err(e) if e.is_empty() => continue,
            other => return other,
        }
    }
}
