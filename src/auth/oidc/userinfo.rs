//! Asking the IdP about a token with the token itself: the userinfo endpoint (claims
//! introspection did not carry) and OpenShift's user API.

use serde_json::Value;

use super::cache::TokenKey;
use super::provider::{self, Unreachable};
use super::{Inner, claims, rejected, unavailable};
use crate::auth::AuthError;

impl Inner {
    async fn bearer_get(&self, uri: &str, token: &str) -> Result<Value, AuthError> {
        let _slot = self.idp_call().await?;
        let resp = self
            .http
            .get(uri)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| unavailable(Unreachable(format!("GET {uri}: {e}"))))?;
        match resp.status().as_u16() {
            200..=299 => provider::read_json(resp, &format!("GET {uri}"))
                .await
                .map_err(unavailable),
            401 | 403 => {
                tracing::info!(
                    uri,
                    status = resp.status().as_u16(),
                    "bearer token refused by the IdP"
                );
                Err(rejected("token_refused_by_idp"))
            }
            status => Err(unavailable(Unreachable(format!(
                "GET {uri}: HTTP {status}"
            )))),
        }
    }

    pub(super) async fn introspect_then_userinfo(
        &self,
        token: &str,
        key: TokenKey,
    ) -> Result<Value, AuthError> {
        let mut claims = self.introspect(token, key).await?;
        let s = &self.settings;
        let missing_user = claims::username(&claims, &s.username_claim).is_none();
        let missing_groups =
            !s.groups_claim.is_empty() && claims::groups(&claims, &s.groups_claim).is_none();
        if missing_user || missing_groups {
            let endpoints = self.endpoints().await?;
            let uri = endpoints.userinfo.clone().ok_or_else(|| {
                unavailable(Unreachable("the IdP publishes no userinfo_endpoint".into()))
            })?;
            let info = self.bearer_get(&uri, token).await?;
            if let (Value::Object(c), Value::Object(i)) = (&mut claims, info) {
                for (k, v) in i {
                    c.entry(k).or_insert(v);
                }
            }
        }
        Ok(claims)
    }

    pub(super) async fn openshift(&self, token: &str) -> Result<Value, AuthError> {
        let uri = self
            .settings
            .openshift_user_api_uri
            .clone()
            .unwrap_or_default();
        self.bearer_get(&uri, token).await
    }
}
