//! The operator socket (SPEC §10): `<state_dir>/admin.sock`, mode 0600, and the
//! peer's uid checked with `SO_PEERCRED` (root or the daemon's own euid) so a socket
//! made readable by mistake still answers nobody else.
//!
//! One small request/response protocol: the client writes one JSON object on one
//! line (at most [`MAX_REQUEST`] bytes), the daemon answers with one JSON line and
//! closes, all within [`EXCHANGE_TIMEOUT`]:
//!
//! - `{"command":"sessions","user":NAME?}` → `{"ok":true,"sessions":[{id,user,mechanism,created,expires,peer}]}`
//! - `{"command":"revoke","user":NAME}` | `{"command":"revoke","id":ID}` | `{"command":"revoke","all":true}` → `{"ok":true,"revoked":N}`
//! - `{"command":"explain","name":NAME_OR_PRINCIPAL}` | `{"command":"explain","cert_pem":PEM}` → `{"ok":true,"user":…,"groups":…,"labels":…,"mechanisms":…}`
//! - `{"command":"status"}` → `{"ok":true,"listen":…,"pools":…,"sessions":N,"tls":…,"last_reload":…}`
//!
//! Any failure: `{"ok":false,"code":"forbidden"|"bad_request"|"refused"|"unavailable","error":TEXT}`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::AppState;
use super::routes::rfc3339;
use crate::audit;
use crate::auth::Mechanism;
use crate::auth::certificate::{CertificateAuthenticator, PkiUserField};
use crate::directory::DirectoryError;
use crate::session::Revoke;

/// The longest request line accepted.
pub const MAX_REQUEST: u64 = 64 * 1024;
/// How long one connection may take to send its request and read the answer.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Operator connections served at once; more are closed unanswered.
const MAX_CONNECTIONS: usize = 8;

/// The socket's file name in `system.state_dir`.
pub const SOCKET_NAME: &str = "admin.sock";

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

/// What the admin commands see besides the state.
pub struct Admin {
    pub state: Arc<AppState>,
    /// The bound listeners, as URLs.
    pub listening: Vec<String>,
    pub started: SystemTime,
}

/// Bind `path` with mode 0600: a stale socket file (nobody answers on it) is
/// removed, a live one means another daemon owns it and is an error.
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(format!(
                "{} exists and is not a socket; remove it or choose another system.state_dir",
                path.display()
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "another portcullis is already listening on the operator socket {}; stop it first (or give this one another system.state_dir)",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove the stale socket {}: {e}", path.display()))?;
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    // Created 0600 from the start (umask), then set explicitly in case the umask
    // was stricter still; startup is the only thing running that creates files.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener =
        bound.map_err(|e| format!("cannot create the operator socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    UnixListener::from_std(listener).map_err(|e| format!("{}: {e}", path.display()))
}

/// Answer operator connections until `stop` turns true.
pub async fn serve(
    admin: Arc<Admin>,
    listener: UnixListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    continue;
                };
                let admin = admin.clone();
                tokio::spawn(async move {
                    handle(&admin, stream).await;
                    drop(permit);
                });
            }
            _ = stop.changed() => break,
        }
    }
}

fn error(code: &str, message: impl Into<String>) -> Value {
    json!({"ok": false, "code": code, "error": message.into()})
}

async fn handle(admin: &Admin, mut stream: UnixStream) {
    let uid = match stream.peer_cred() {
        Ok(c) => c.uid(),
        Err(e) => {
            tracing::warn!(error = %e, "operator socket: cannot read the peer's credentials");
            return;
        }
    };
    let me = nix::unistd::geteuid().as_raw();
    if uid != 0 && uid != me {
        audit::admin_rejected(uid);
        let answer = error(
            "forbidden",
            format!(
                "uid {uid} may not use the operator socket (only root and the daemon's user, uid {me})"
            ),
        );
        let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, write_line(&mut stream, &answer)).await;
        return;
    }
    let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(admin, uid, &mut stream)).await;
}

async fn write_line(stream: &mut UnixStream, v: &Value) -> std::io::Result<()> {
    let mut line = v.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes()).await?;
    stream.shutdown().await
}

async fn exchange(admin: &Admin, uid: u32, stream: &mut UnixStream) {
    let (read, mut write) = stream.split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST + 1));
    let answer = match reader.read_until(b'\n', &mut line).await {
        Err(e) => error("bad_request", format!("cannot read the request: {e}")),
        Ok(_) if line.len() as u64 > MAX_REQUEST => error(
            "bad_request",
            format!("the request is longer than {MAX_REQUEST} bytes"),
        ),
        Ok(_) => match serde_json::from_slice::<Value>(&line) {
            Ok(req) if req.is_object() => answer(admin, uid, &req).await,
            _ => error(
                "bad_request",
                "the request must be one JSON object on one line",
            ),
        },
    };
    let mut out = answer.to_string();
    out.push('\n');
    let _ = write.write_all(out.as_bytes()).await;
    let _ = write.shutdown().await;
}

async fn answer(admin: &Admin, uid: u32, req: &Value) -> Value {
    let text = |k: &str| req.get(k).and_then(Value::as_str);
    match text("command") {
        Some("sessions") => sessions(admin, text("user")).await,
        Some("revoke") => revoke(admin, uid, req).await,
        Some("explain") => explain(admin, req).await,
        Some("token") => token(admin, uid, req),
        Some("status") => status(admin),
        Some(other) => error(
            "bad_request",
            format!(
                "unknown command \"{}\"; one of sessions, revoke, explain, status, token",
                crate::logsafe::clean(other)
            ),
        ),
        None => error("bad_request", "the request has no \"command\""),
    }
}

async fn sessions(admin: &Admin, user: Option<&str>) -> Value {
    let mut list = match admin.state.pipeline.sessions.list(user).await {
        Ok(l) => l,
        Err(e) => return error("dependency_unavailable", e.to_string()),
    };
    list.sort_by(|a, b| (a.info.created_at, &a.id).cmp(&(b.info.created_at, &b.id)));
    let rows: Vec<Value> = list
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "user": r.info.user.as_ref(),
                "mechanism": r.info.mechanism.as_str(),
                "created": rfc3339(r.info.created_at),
                "expires": rfc3339(r.expires_at),
                "peer": r.info.peer.map(|p| p.to_string()),
            })
        })
        .collect();
    json!({"ok": true, "sessions": rows})
}

async fn revoke(admin: &Admin, uid: u32, req: &Value) -> Value {
    let user = req.get("user").and_then(Value::as_str);
    let id = req.get("id").and_then(Value::as_str);
    let all = req.get("all").and_then(Value::as_bool) == Some(true);
    let (which, described) = match (user, id, all) {
        (Some(u), None, false) => (Revoke::User(u.to_string()), format!("user={u}")),
        (None, Some(i), false) => {
            if i.len() < 12 || !i.chars().all(|c| c.is_ascii_hexdigit()) {
                return error(
                    "bad_request",
                    "a session id is at least 12 hexadecimal characters (as `admin sessions` shows)",
                );
            }
            (Revoke::Id(i.to_string()), format!("id={i}"))
        }
        (None, None, true) => (Revoke::All, "all".to_string()),
        _ => {
            return error(
                "bad_request",
                "revoke takes exactly one of \"user\", \"id\" or \"all\": true",
            );
        }
    };
    let count = match admin.state.pipeline.sessions.revoke_where(&which).await {
        Ok(n) => n,
        Err(e) => return error("dependency_unavailable", e.to_string()),
    };
    audit::admin_revoke(uid, &described, count);
    json!({"ok": true, "revoked": count})
}

/// Sign a service token (`portcullis token create|bootstrap`); audited without it.
fn token(admin: &Admin, uid: u32, req: &Value) -> Value {
    use crate::issued::{ALL_CLIENT_TYPES, ServiceToken};
    let strings = |k: &str| -> Vec<String> {
        req.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let text = |k: &str| req.get(k).and_then(Value::as_str).map(str::to_string);
    let wanted = if req.get("bootstrap").and_then(Value::as_bool) == Some(true) {
        ServiceToken {
            client_types: ALL_CLIENT_TYPES.iter().map(|s| s.to_string()).collect(),
            ttl: Some(std::time::Duration::from_secs(3600)),
            ..ServiceToken::default()
        }
    } else {
        let ttl = match req.get("ttl").and_then(Value::as_u64) {
            Some(0) => None,
            Some(s) => Some(std::time::Duration::from_secs(s)),
            None => Some(std::time::Duration::from_secs(3600)),
        };
        ServiceToken {
            client_types: strings("client_types"),
            env: text("env"),
            ttl,
            user: text("user"),
            labels: strings("labels"),
        }
    };
    for l in &wanted.labels {
        if let Err(e) = crate::labels::check_label(l) {
            return error("bad_request", format!("--label: {e}"));
        }
    }
    match admin.state.tokens.sign_service(&wanted) {
        Ok(signed) => {
            audit::token_issued(
                uid,
                &signed.jti,
                &wanted.client_types.join(","),
                wanted.env.as_deref(),
                wanted.user.as_deref(),
                signed.expires,
            );
            json!({"ok": true, "token": signed.token.as_str(), "jti": signed.jti, "expires": signed.expires})
        }
        Err(message) => error("bad_request", message),
    }
}

/// How the name to explain maps to a local user, or why it does not.
struct Mapped {
    kind: &'static str,
    user: String,
    how: String,
}

fn map_name(admin: &Admin, req: &Value) -> Result<Mapped, Value> {
    let sec = &admin.state.config.security;
    if let Some(pem) = req.get("cert_pem").and_then(Value::as_str) {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| error("bad_request", format!("not a PEM certificate: {e}")))?;
        let field = match sec.pki_user_field {
            PkiUserField::Uid => "the UID attribute of its subject",
            PkiUserField::Cn => "the CN attribute of its subject",
            PkiUserField::Email => "its rfc822Name (email) in security.pki_email_domains",
        };
        let user = CertificateAuthenticator::new(sec.pki_user_field, sec.pki_email_domains.clone())
            .user_of(&der)
            .map_err(|e| error("refused", e.to_string()))?;
        return Ok(Mapped {
            kind: "certificate",
            user,
            how: format!("security.pki_user_field: {field}"),
        });
    }
    let Some(name) = req.get("name").and_then(Value::as_str) else {
        return Err(error(
            "bad_request",
            "explain takes \"name\" (a user name or user@REALM) or \"cert_pem\"",
        ));
    };
    if name.contains('@') {
        let user =
            crate::auth::kerberos::local_user(name, &sec.krb_realms, sec.krb_allow_instances)
                .map_err(|e| error("refused", e.to_string()))?;
        return Ok(Mapped {
            kind: "principal",
            user,
            how: format!(
                "Kerberos principal, realm in security.krb_realms ({})",
                sec.krb_realms.join(", ")
            ),
        });
    }
    if !crate::auth::valid_username(name) {
        return Err(error(
            "refused",
            format!(
                "\"{}\" is not a valid user name",
                crate::logsafe::clean(name)
            ),
        ));
    }
    Ok(Mapped {
        kind: "user",
        user: name.to_string(),
        how: "a local user name".into(),
    })
}

async fn explain(admin: &Admin, req: &Value) -> Value {
    let mapped = match map_name(admin, req) {
        Ok(m) => m,
        Err(e) => return e,
    };
    let state = &admin.state;
    let sec = &state.config.security;
    let (account, account_error) = match state.pipeline.directory.lookup_fresh(&mapped.user).await {
        Ok(a) => (Some(a), None),
        Err(DirectoryError::NoSuchUser) => (None, Some("no local account (NSS)".to_string())),
        Err(e @ DirectoryError::Unavailable(_)) => (None, Some(e.to_string())),
    };
    let no_such_user =
        account.is_none() && account_error.as_deref() == Some("no local account (NSS)");
    let groups: Vec<String> = account
        .as_ref()
        .map(|a| a.groups.iter().map(|g| g.to_string()).collect())
        .unwrap_or_default();
    let labels: Vec<Value> = state
        .pipeline
        .labels
        .load()
        .explain(&groups)
        .into_iter()
        .map(|s| {
            json!({
                "label": s.label.as_ref(),
                "granted_by": s.granted_by.iter().map(|(g, at)| json!({"group": g, "source": at})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let enabled = state.pipeline.enabled();
    let has_account = account.is_some();
    let mut mechanisms = Vec::new();
    for m in Mechanism::ALL {
        let on = enabled.contains(&m);
        let (accepts, note): (Option<bool>, String) = match m {
            _ if !on => (Some(false), "not enabled (security.mechanisms)".into()),
            Mechanism::Password => {
                if !crate::config::validate::pam_service_installed(&sec.pam_service) {
                    (
                        Some(false),
                        format!("PAM service \"{}\" is not installed", sec.pam_service),
                    )
                } else if has_account {
                    (
                        Some(true),
                        format!("if PAM service \"{}\" accepts the password", sec.pam_service),
                    )
                } else if no_such_user && !sec.require_local_account {
                    (
                        Some(true),
                        format!(
                            "if PAM service \"{}\" accepts the password; no groups (security.require_local_account is false)",
                            sec.pam_service
                        ),
                    )
                } else {
                    (Some(false), "no local account".into())
                }
            }
            Mechanism::Certificate => (
                Some(has_account),
                if has_account {
                    let field = match sec.pki_user_field {
                        PkiUserField::Uid => "uid",
                        PkiUserField::Cn => "cn",
                        PkiUserField::Email => "email",
                    };
                    format!(
                        "with a certificate from the client CA naming {} (security.pki_user_field = {field}); chain and CRLs are checked at login",
                        mapped.user
                    )
                } else {
                    "no local account".into()
                },
            ),
            Mechanism::Kerberos => {
                if sec.krb_realms.is_empty() {
                    (Some(false), "no realm in security.krb_realms".into())
                } else if !has_account {
                    (Some(false), "no local account".into())
                } else if mapped.kind == "principal" {
                    (Some(true), "the principal's realm is allowed".into())
                } else {
                    (
                        Some(true),
                        format!(
                            "as {}@REALM for REALM in {}",
                            mapped.user,
                            sec.krb_realms.join(", ")
                        ),
                    )
                }
            }
            Mechanism::Oidc => (
                None,
                "depends on the token: the user and groups come from the IdP's claims (security.oidc, security.issuers), not from NSS".into(),
            ),
        };
        mechanisms.push(json!({
            "mechanism": m.as_str(),
            "enabled": on,
            "accepts": accepts,
            "note": note,
        }));
    }
    json!({
        "ok": true,
        "kind": mapped.kind,
        "user": mapped.user,
        "mapping": mapped.how,
        "uid": account.as_ref().map(|a| a.uid),
        "account_error": account_error,
        "groups": groups,
        "labels": labels,
        "mechanisms": mechanisms,
    })
}

fn unix_time(secs: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_secs(secs))
}

fn status(admin: &Admin) -> Value {
    let state = &admin.state;
    let pools: serde_json::Map<String, Value> = state
        .pipeline
        .metrics
        .blocking_in_use()
        .into_iter()
        .map(|(p, n)| (p.to_string(), json!(n)))
        .collect();
    let tls = state.tls.as_ref().map(|t| {
        let t = t.load();
        let d = &t.dates;
        json!({
            "server_cert_not_after": d.server_not_after.map(unix_time),
            "client_ca_not_after": d.client_ca_not_after.iter().map(|(s, t)| json!({"subject": s, "not_after": unix_time(*t)})).collect::<Vec<_>>(),
            "crl_next_update": d.crl_next_update.iter().map(|(f, i, t)| json!({"file": f, "issuer": i, "next_update": t.map(unix_time)})).collect::<Vec<_>>(),
        })
    });
    let reload = state
        .last_reload
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let oidc = state.pipeline.mechanism_status(Mechanism::Oidc);
    let jwks_age = oidc["jwks_age_s"].clone();
    let jwks_note = if !state.pipeline.enabled().contains(&Mechanism::Oidc) {
        "oidc not enabled".to_string()
    } else if oidc["configured"] == Value::Bool(false) {
        "security.oidc is not configured (trusted issuers only, see issuers)".to_string()
    } else if oidc["uses_jwks"] == Value::Bool(false) {
        "this validation mode uses no JWKS".to_string()
    } else if let Some(age) = jwks_age.as_u64() {
        format!("key set fetched {age} s ago ({} keys)", oidc["keys"])
    } else {
        "no key set loaded yet (jwt validation answers 503 until the IdP is reached)".to_string()
    };
    json!({
        "ok": true,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "started": rfc3339(admin.started),
        "listen": admin.listening,
        "mechanisms": state.pipeline.enabled().iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        "pools_in_use": pools,
        "sessions": state.pipeline.sessions.len(),
        "tls": tls,
        "jwks_age": jwks_age.clone(),
        "jwks_note": jwks_note,
        // security.issuers: each one's algorithm and JWKS age (null without any).
        "issuers": oidc["issuers"].clone(),
        "last_reload": reload.map(|r| json!({"at": rfc3339(r.at), "result": r.result, "detail": r.detail})),
    })
}
