//! The `security.oidc` settings, the validation modes, and what the configuration
//! check asks of them.

use super::provider;

/// `security.oidc.validation_mode` (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The default, as in xGT.
    #[default]
    Jwt,
    Introspection,
    IntrospectionUserinfo,
    OpenshiftUserapi,
    Auto,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Jwt => "jwt",
            Mode::Introspection => "introspection",
            Mode::IntrospectionUserinfo => "introspection_userinfo",
            Mode::OpenshiftUserapi => "openshift_userapi",
            Mode::Auto => "auto",
        }
    }

    pub(super) fn uses_jwt(self) -> bool {
        matches!(self, Mode::Jwt | Mode::Auto)
    }
    pub(super) fn uses_introspection(self) -> bool {
        matches!(
            self,
            Mode::Introspection | Mode::IntrospectionUserinfo | Mode::Auto
        )
    }
    pub(super) fn uses_userinfo(self) -> bool {
        matches!(self, Mode::IntrospectionUserinfo | Mode::Auto)
    }
}

/// The `security.oidc` section of the configuration, exactly xGT's settings.
///
/// It lives with the mechanism that reads it; `config` deserializes it as one of its
/// sections (so the field names are the key names, and an unknown one is refused).
#[derive(Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub introspection_cache_ttl: u64,
    /// Least time between two JWKS fetches caused by an unknown `kid`.
    pub jwks_refetch_interval: u64,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub audience: Option<String>,
    pub validation_mode: Mode,
    pub username_claim: String,
    pub groups_claim: String,
    pub scopes: String,
    pub jwks_uri: Option<String>,
    pub introspection_uri: Option<String>,
    pub introspection_client_id: Option<String>,
    pub introspection_client_secret: Option<zeroize::Zeroizing<String>>,
    /// The browser login's "sign in with the IdP" (SPEC §12): `client_id` as a
    /// confidential client with this secret.
    pub client_secret: Option<zeroize::Zeroizing<String>>,
    pub userinfo_uri: Option<String>,
    pub openshift_user_api_uri: Option<String>,
    pub ca_cert: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("issuer", &self.issuer)
            .field("validation_mode", &self.validation_mode)
            .field("introspection_client_secret", &"***")
            .field("client_secret", &"***")
            .finish_non_exhaustive()
    }
}

/// Whether the `security.oidc` section is used at all. With trusted issuers
/// (`security.issuers`) the oidc mechanism may run without it.
pub fn configured(o: &Settings) -> bool {
    o.issuer.is_some()
        || o.client_id.is_some()
        || o.audience.is_some()
        || o.jwks_uri.is_some()
        || o.introspection_uri.is_some()
        || o.introspection_client_id.is_some()
        || o.userinfo_uri.is_some()
        || o.openshift_user_api_uri.is_some()
}

/// `security.issuers.<name>.algorithm`: the one algorithm the issuer's tokens are
/// signed with (SPEC §11). HS256 only with the issuer's own `secret`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum IssuerAlgorithm {
    RS256,
    ES256,
    EdDSA,
    HS256,
}

impl IssuerAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            IssuerAlgorithm::RS256 => "RS256",
            IssuerAlgorithm::ES256 => "ES256",
            IssuerAlgorithm::EdDSA => "EdDSA",
            IssuerAlgorithm::HS256 => "HS256",
        }
    }

    pub fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            IssuerAlgorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            IssuerAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            IssuerAlgorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            IssuerAlgorithm::HS256 => jsonwebtoken::Algorithm::HS256,
        }
    }
}

/// One trusted issuer, `security.issuers.<name>` (SPEC §11): a token whose `iss` is
/// `issuer` is verified with these settings alone.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSettings {
    /// The `iss` of its tokens; required (checked with the other rules).
    pub issuer: Option<String>,
    /// Accepted `aud` values; empty: a token that carries `aud` is refused (as Vault
    /// does without `bound_audiences`).
    pub audience: Vec<String>,
    pub algorithm: IssuerAlgorithm,
    /// Where its public keys are (RS256, ES256, EdDSA).
    pub jwks_uri: Option<String>,
    /// HS256 only: URL-safe base64 without padding, at least 256 bits; the HMAC key
    /// is the decoded bytes (as Inmanta uses its `key`).
    pub secret: Option<zeroize::Zeroizing<String>>,
    /// If set, the token's `<claim_prefix>ct` must name at least one of these.
    pub client_types: Vec<String>,
    /// Claim (dot path) → the value, or list of values, it must have.
    pub required_claims: serde_json::Map<String, serde_json::Value>,
    pub username_claim: String,
    /// Empty: the session gets no groups from the token.
    pub groups_claim: String,
    /// CA certificates (PEM) for fetching `jwks_uri`.
    pub ca_cert: Option<std::path::PathBuf>,
    /// Seconds a JWKS fetch may take.
    pub jwks_request_timeout: u64,
}

impl std::fmt::Debug for IssuerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerSettings")
            .field("issuer", &self.issuer)
            .field("algorithm", &self.algorithm)
            .field("jwks_uri", &self.jwks_uri)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// Whether RFC 7662 client credentials are set; `auto` starts without them and then
/// refuses opaque tokens (xGT's Keycloak block has none).
pub fn introspection_configured(o: &Settings) -> bool {
    o.introspection_client_id.is_some() && o.introspection_client_secret.is_some()
}

/// The settings a mode cannot work without, as config key names (for the startup
/// error that lists everything missing at once).
pub fn missing_settings(o: &Settings) -> Vec<&'static str> {
    let mode = o.validation_mode;
    let mut missing = Vec::new();
    let mut need = |ok: bool, key: &'static str| {
        if !ok && !missing.contains(&key) {
            missing.push(key);
        }
    };
    if mode.uses_jwt() {
        need(o.issuer.is_some(), "security.oidc.issuer");
        need(o.audience.is_some(), "security.oidc.audience");
    }
    // `auto` needs the introspection settings only to accept opaque tokens.
    if mode.uses_introspection() && (mode != Mode::Auto || introspection_configured(o)) {
        need(
            o.issuer.is_some() || o.introspection_uri.is_some(),
            "security.oidc.issuer (or security.oidc.introspection_uri)",
        );
        need(
            o.introspection_client_id.is_some(),
            "security.oidc.introspection_client_id",
        );
        need(
            o.introspection_client_secret.is_some(),
            "security.oidc.introspection_client_secret",
        );
        need(
            o.audience.is_some() || o.client_id.is_some(),
            "security.oidc.audience",
        );
    }
    if mode.uses_userinfo() {
        need(
            o.issuer.is_some() || o.userinfo_uri.is_some(),
            "security.oidc.issuer (or security.oidc.userinfo_uri)",
        );
    }
    if mode == Mode::OpenshiftUserapi {
        need(
            o.openshift_user_api_uri.is_some(),
            "security.oidc.openshift_user_api_uri",
        );
    }
    missing
}

/// Configured IdP endpoints that are neither `https://` nor loopback `http://`, as
/// configuration errors naming the key (SPEC §9).
pub fn insecure_endpoints(o: &Settings) -> Vec<String> {
    [
        ("security.oidc.issuer", &o.issuer),
        ("security.oidc.jwks_uri", &o.jwks_uri),
        ("security.oidc.introspection_uri", &o.introspection_uri),
        ("security.oidc.userinfo_uri", &o.userinfo_uri),
        ("security.oidc.openshift_user_api_uri", &o.openshift_user_api_uri),
    ]
    .into_iter()
    .filter_map(|(key, v)| v.as_deref().map(|url| (key, url)))
    .filter(|(_, url)| !provider::endpoint_allowed(url))
    .map(|(key, url)| {
        format!(
            "\"{key}\" is \"{url}\": IdP endpoints must be https:// URLs (plain http:// only to localhost, 127.0.0.0/8 or ::1)"
        )
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_plain_http_endpoints_are_named() {
        let o = Settings {
            validation_mode: Mode::Auto,
            issuer: Some("https://idp.example.com".into()),
            jwks_uri: Some("http://127.0.0.1:9000/jwks".into()),
            introspection_uri: Some("http://idp.example.com/introspect".into()),
            userinfo_uri: Some("http://[::1]/me".into()),
            openshift_user_api_uri: Some("http://api.example.com/users/~".into()),
            ..Settings::default()
        };
        let e = insecure_endpoints(&o);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("\"security.oidc.introspection_uri\""),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("\"security.oidc.openshift_user_api_uri\""),
            "{e:?}"
        );
    }

    #[test]
    fn each_mode_lists_what_it_misses() {
        let mut o = Settings {
            validation_mode: Mode::Jwt,
            ..Settings::default()
        };
        assert_eq!(
            missing_settings(&o),
            ["security.oidc.issuer", "security.oidc.audience"]
        );
        o.validation_mode = Mode::Introspection;
        let m = missing_settings(&o);
        assert!(
            m.contains(&"security.oidc.introspection_client_secret"),
            "{m:?}"
        );
        o.validation_mode = Mode::OpenshiftUserapi;
        assert_eq!(
            missing_settings(&o),
            ["security.oidc.openshift_user_api_uri"]
        );
        o.openshift_user_api_uri = Some("https://api/apis/user.openshift.io/v1/users/~".into());
        assert!(missing_settings(&o).is_empty());
    }
}
