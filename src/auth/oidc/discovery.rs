//! OpenID Connect discovery: the endpoints a mode needs, from the configuration or
//! the issuer's `/.well-known/openid-configuration`.

use std::sync::Arc;

use tokio::time::Instant;

use super::jwks::RETRY_FLOOR;
use super::provider::{self, Unreachable, get_json};
use super::settings::Settings;
use super::{Inner, unavailable};
use crate::auth::AuthError;

/// The endpoints a mode needs, from configuration or discovery.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    pub jwks_uri: Option<String>,
    pub introspection: Option<String>,
    pub userinfo: Option<String>,
}

/// Ask the issuer for its endpoints; the document must name the same issuer.
pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Endpoints, Unreachable> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let doc = get_json(http, &url).await?;
    if doc["issuer"].as_str().map(|i| i.trim_end_matches('/')) != Some(issuer.trim_end_matches('/'))
    {
        return Err(Unreachable(format!(
            "{url} names issuer {} instead of {issuer}",
            doc["issuer"]
        )));
    }
    let s = |k: &str| doc[k].as_str().map(str::to_string);
    Ok(Endpoints {
        jwks_uri: s("jwks_uri"),
        introspection: s("introspection_endpoint"),
        userinfo: s("userinfo_endpoint"),
    })
}

impl Endpoints {
    /// The endpoints the configuration names (`jwks_uri`, `introspection_uri`,
    /// `userinfo_uri`).
    pub fn configured(s: &Settings) -> Endpoints {
        Endpoints {
            jwks_uri: s.jwks_uri.clone(),
            introspection: s.introspection_uri.clone(),
            userinfo: s.userinfo_uri.clone(),
        }
    }
}

impl Inner {
    pub(super) fn needs_discovery(&self, e: &Endpoints) -> bool {
        (self.mode.uses_jwt() && e.jwks_uri.is_none())
            || (self.uses_introspection() && e.introspection.is_none())
            || (self.uses_userinfo() && e.userinfo.is_none())
    }

    /// Discovered endpoints under the configured ones, keeping only those the mode
    /// uses. A discovered plain-`http://` endpoint off loopback makes the IdP unusable
    /// (logins get 503) rather than sending tokens and secrets in clear text.
    pub(super) fn merged(&self, found: Endpoints) -> Result<Endpoints, Unreachable> {
        let s = &self.settings;
        let m = self.mode;
        let (introspection, userinfo) = (self.uses_introspection(), self.uses_userinfo());
        let pick = |configured: &Option<String>, found: Option<String>, used: bool| {
            used.then(|| configured.clone().or(found)).flatten()
        };
        let e = Endpoints {
            jwks_uri: pick(&s.jwks_uri, found.jwks_uri, m.uses_jwt()),
            introspection: pick(&s.introspection_uri, found.introspection, introspection),
            userinfo: pick(&s.userinfo_uri, found.userinfo, userinfo),
        };
        for url in [&e.jwks_uri, &e.introspection, &e.userinfo]
            .into_iter()
            .flatten()
        {
            if !provider::endpoint_allowed(url) {
                return Err(Unreachable(format!(
                    "discovery names the endpoint {url}, which is neither https:// nor loopback; refusing to use it"
                )));
            }
        }
        Ok(e)
    }

    /// The endpoints, discovering them now if that has not worked yet (at most once
    /// per [`RETRY_FLOOR`], shared by every login waiting; meanwhile logins get 503).
    pub(super) async fn endpoints(&self) -> Result<Arc<Endpoints>, AuthError> {
        if let Some(e) = self.endpoints.load_full() {
            return Ok(e);
        }
        let mut attempt = self.discovery_attempt.lock().await;
        if let Some(e) = self.endpoints.load_full() {
            return Ok(e);
        }
        if let Some((at, Some(err))) = attempt.as_ref()
            && at.elapsed() < RETRY_FLOOR
        {
            return Err(unavailable(err.clone()));
        }
        let issuer = self.settings.issuer.clone().unwrap_or_default();
        match discover(&self.http, &issuer)
            .await
            .and_then(|found| self.merged(found))
        {
            Ok(e) => {
                let e = Arc::new(e);
                self.endpoints.store(Some(e.clone()));
                *attempt = Some((Instant::now(), None));
                Ok(e)
            }
            Err(err) => {
                *attempt = Some((Instant::now(), Some(err.clone())));
                Err(unavailable(err))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::oidc::{Mode, OidcAuthenticator};

    #[test]
    fn discovered_plain_http_endpoints_make_the_idp_unusable() {
        let a = OidcAuthenticator::new(Settings {
            validation_mode: Mode::Jwt,
            issuer: Some("https://idp.example.com".into()),
            audience: Some("pc".into()),
            jwks_refetch_interval: 60,
            ..Settings::default()
        })
        .unwrap();
        let found = |jwks: &str| Endpoints {
            jwks_uri: Some(jwks.into()),
            // Not used by the jwt mode: neither kept nor checked.
            introspection: Some("http://idp.example.com/introspect".into()),
            userinfo: None,
        };
        let e = a
            .inner
            .as_ref()
            .unwrap()
            .merged(found("https://idp.example.com/jwks"))
            .unwrap();
        assert_eq!(e.introspection, None);
        assert!(
            a.inner
                .as_ref()
                .unwrap()
                .merged(found("http://idp.example.com/jwks"))
                .is_err()
        );
    }
}
