//! Talking to the IdP: one HTTPS client (system roots plus `security.oidc.ca_cert`,
//! timeouts on every call), answers bounded in size, and which endpoints may be used.

use std::time::Duration;

use serde_json::Value;

/// The IdP could not be asked (network, TLS, 5xx, unparsable answer): a 503.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

pub fn http_client(ca_cert: Option<&std::path::Path>) -> Result<reqwest::Client, String> {
    http_client_with(ca_cert, "security.oidc.ca_cert", Duration::from_secs(10))
}

/// [`http_client`] with a bound on each whole call (connecting takes at most 5 s of
/// it); `ca_key` names the CA setting in error messages.
pub fn http_client_with(
    ca_cert: Option<&std::path::Path>,
    ca_key: &str,
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path).map_err(|e| format!("{ca_key} {}: {e}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("{ca_key} {}: {e}", path.display()))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    b.build()
        .map_err(|e| format!("cannot build the IdP HTTP client: {e}"))
}

/// The most an IdP answer (discovery, JWKS, introspection, userinfo) may weigh. Real
/// ones are a few KiB; a bigger one is a broken or hostile IdP and must not make the
/// daemon buffer without bound.
pub const MAX_ANSWER: usize = 1 << 20;

/// GET a JSON document; any failure is `Unreachable`.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, Unreachable> {
    let resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| Unreachable(format!("GET {url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(Unreachable(format!("GET {url}: HTTP {}", resp.status())));
    }
    read_json(resp, &format!("GET {url}")).await
}

/// The body of an IdP answer, refused once it passes [`MAX_ANSWER`]: read chunk by
/// chunk, so a huge or endless body costs at most that much memory.
pub async fn read_bounded(mut resp: reqwest::Response, what: &str) -> Result<Vec<u8>, Unreachable> {
    let too_big = || {
        Unreachable(format!(
            "{what}: the answer is larger than {MAX_ANSWER} bytes"
        ))
    };
    if resp.content_length().is_some_and(|n| n > MAX_ANSWER as u64) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| Unreachable(format!("{what}: {e}")))?
    {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A JSON IdP answer, read with [`read_bounded`].
pub async fn read_json(resp: reqwest::Response, what: &str) -> Result<Value, Unreachable> {
    let body = read_bounded(resp, what).await?;
    serde_json::from_slice(&body).map_err(|e| Unreachable(format!("{what}: not JSON: {e}")))
}

/// Whether an IdP endpoint may be used: `https://`, or plain `http://` to a loopback
/// host (a test IdP, a sidecar). Anything else would send tokens and client secrets
/// in clear text, and let the network forge the keys and verdicts we trust.
pub fn endpoint_allowed(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    match u.scheme() {
        "https" => u.host().is_some(),
        "http" => u.host_str().is_some_and(loopback_host),
        _ => false,
    }
}

/// `localhost`, 127.0.0.0/8 or ::1 (as `Url::host_str` writes them).
fn loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.trim_end_matches('.').eq_ignore_ascii_case("localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_https_or_loopback_http() {
        for ok in [
            "https://idp.example.com/realms/corp",
            "https://10.0.0.5:8443/jwks",
            "http://127.0.0.1:8080",
            "http://127.9.9.9/jwks",
            "http://[::1]:8080/token/introspection",
            "http://localhost:8080",
            "http://LOCALHOST./x",
        ] {
            assert!(endpoint_allowed(ok), "{ok}");
        }
        for bad in [
            "http://idp.example.com",
            "http://10.0.0.5/jwks",
            "http://localhost.evil.example/",
            "http://127.0.0.1.nip.io/",
            "http://[::ffff:8.8.8.8]/",
            "ftp://idp.example.com",
            "idp.example.com",
            "",
        ] {
            assert!(!endpoint_allowed(bad), "{bad}");
        }
    }

    fn answer(body: Vec<u8>) -> reqwest::Response {
        reqwest::Response::from(hyper::http::Response::new(body))
    }

    #[tokio::test]
    async fn answers_over_one_mib_are_refused() {
        let mut doc = br#"{"keys":[],"pad":""#.to_vec();
        doc.resize(MAX_ANSWER - 2, b'x');
        doc.extend_from_slice(b"\"}");
        assert_eq!(doc.len(), MAX_ANSWER);
        let v = read_json(answer(doc.clone()), "GET jwks").await.unwrap();
        assert!(v["keys"].is_array());
        doc.push(b' ');
        let e = read_json(answer(doc), "GET jwks").await.unwrap_err();
        assert!(e.0.contains("larger than"), "{e}");
    }
}
