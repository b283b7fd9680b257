//! Audit events: one per login attempt and logout, on their own tracing target
//! (`audit`) so operators can route them apart from diagnostics. Only names, codes
//! and addresses go here — never a password, token or key.

use std::net::SocketAddr;

pub const TARGET: &str = "audit";

pub fn login(peer: SocketAddr, mechanism: &str, user: Option<&str>, result: &str, reason: &str) {
    tracing::info!(
        target: TARGET,
        event = "login",
        peer = %peer,
        mechanism,
        user = user.unwrap_or(""),
        result,
        reason,
    );
}

/// A successful login whose account NSS knows under another name than the one the
/// client gave (`ALICE`, `alice@example.test` → `alice`, SPEC §13): both are logged.
pub fn login_as(peer: SocketAddr, mechanism: &str, given: &str, user: &str, reason: &str) {
    tracing::info!(
        target: TARGET,
        event = "login",
        peer = %peer,
        mechanism,
        given = crate::logsafe::clean(given).as_str(),
        user,
        result = "success",
        reason,
    );
}

/// A login whose bearer token was checked by the trusted issuer `issuer`
/// (`security.issuers.<issuer>`): [`login`] with the issuer named.
pub fn issuer_login(
    peer: SocketAddr,
    mechanism: &str,
    issuer: &str,
    user: Option<&str>,
    result: &str,
    reason: &str,
) {
    tracing::info!(
        target: TARGET,
        event = "login",
        peer = %peer,
        mechanism,
        issuer,
        user = user.unwrap_or(""),
        result,
        reason,
    );
}

pub fn logout(peer: SocketAddr, user: Option<&str>, result: &str) {
    tracing::info!(
        target: TARGET,
        event = "logout",
        peer = %peer,
        user = user.unwrap_or(""),
        result,
    );
}

/// Sessions revoked because `user` reached `security.max_sessions_per_user`.
pub fn sessions_evicted(user: &str, count: usize) {
    tracing::info!(
        target: TARGET,
        event = "session_revoked",
        user,
        reason = "max_sessions_per_user",
        count,
    );
}

/// A request refused before it was looked at (another site's page, not JSON).
pub fn refused_request(peer: SocketAddr, path: &str, code: &str) {
    tracing::info!(
        target: TARGET,
        event = "request_refused",
        peer = %peer,
        path = %crate::logsafe::Untrusted(path),
        result = "rejected",
        reason = code,
    );
}

/// A connection to the operator socket from a uid that may not use it.
pub fn admin_rejected(uid: u32) {
    tracing::info!(
        target: TARGET,
        event = "admin",
        uid,
        result = "rejected",
        reason = "uid_not_allowed",
    );
}

/// Sessions an operator ended through the operator socket.
/// A service token signed on the operator socket; the token itself is never logged.
pub fn token_issued(
    uid: u32,
    jti: &str,
    client_types: &str,
    env: Option<&str>,
    user: Option<&str>,
    expires: Option<u64>,
) {
    tracing::info!(
        target: TARGET,
        event = "token_issued",
        uid,
        jti,
        client_types = %crate::logsafe::Untrusted(client_types),
        env = %crate::logsafe::Untrusted(env.unwrap_or("")),
        user = %crate::logsafe::Untrusted(user.unwrap_or("")),
        expires = expires.map_or_else(|| "never".to_string(), |e| e.to_string()),
    );
}

/// A `/v1/authorize` refusal (SPEC §12): who, what was asked, the answer.
pub fn authorize_refused(
    peer: SocketAddr,
    user: Option<&str>,
    method: &str,
    uri: &str,
    status: u16,
    reason: &str,
) {
    tracing::info!(
        target: TARGET,
        event = "authorize",
        peer = %peer,
        user = user.unwrap_or(""),
        method = %crate::logsafe::Untrusted(method),
        uri = %crate::logsafe::Untrusted(uri),
        status,
        result = "refused",
        reason,
    );
}

pub fn admin_revoke(uid: u32, which: &str, count: usize) {
    tracing::info!(
        target: TARGET,
        event = "admin",
        command = "revoke",
        uid,
        which = %crate::logsafe::Untrusted(which),
        result = "success",
        count,
    );
}
