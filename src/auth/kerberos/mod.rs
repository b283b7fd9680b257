//! The kerberos mechanism: a GSSAPI acceptor (MIT krb5) behind HTTP Negotiate
//! (RFC 4559), for people who ran `kinit`.
//!
//! The acceptor uses the default credential (`GSS_C_NO_CREDENTIAL`), which MIT
//! resolves to every key in the keytab named by `KRB5_KTNAME` (set from
//! `security.krb_keytab` before the runtime starts); when
//! `security.server_krb_principal` is set, the ticket's target must be exactly that
//! principal. MIT's replay cache stays on (in `<state_dir>/krb5-rcache`, see
//! `main.rs`), so a captured Authorization header cannot be replayed.
//! `gss_accept_sec_context` reads the keytab and writes the replay cache on disk, so
//! it runs on the gssapi pool's own threads, each holding an acceptor credential
//! acquired once (see [`acceptor`]).

use std::ffi::{CStr, c_char, c_void};

use libgssapi::error::Error as GssError;

mod acceptor;

use super::{
    AuthError, Authenticator, BoxFuture, Credentials, Identity, LoginContext, Outcome, spnego,
    valid_username,
};
use crate::auth::Mechanism;
use crate::blocking::BlockingPool;

#[link(name = "krb5")]
unsafe extern "C" {
    fn krb5_init_context(ctx: *mut *mut c_void) -> i32;
    fn krb5_free_context(ctx: *mut c_void);
    fn krb5_get_default_realm(ctx: *mut c_void, realm: *mut *mut c_char) -> i32;
    fn krb5_free_default_realm(ctx: *mut c_void, realm: *mut c_char);
}

/// The default realm of krb5.conf (`libdefaults.default_realm`), if any.
pub fn default_realm() -> Option<String> {
    let mut ctx: *mut c_void = std::ptr::null_mut();
    if unsafe { krb5_init_context(&mut ctx) } != 0 || ctx.is_null() {
        return None;
    }
    let mut realm: *mut c_char = std::ptr::null_mut();
    let out = if unsafe { krb5_get_default_realm(ctx, &mut realm) } == 0 && !realm.is_null() {
        let r = unsafe { CStr::from_ptr(realm) }
            .to_string_lossy()
            .into_owned();
        unsafe { krb5_free_default_realm(ctx, realm) };
        Some(r)
    } else {
        None
    };
    unsafe { krb5_free_context(ctx) };
    out
}

/// GSS routine errors (RFC 2744 §3.9.1): an enumerated field in bits 16-23 of the
/// major status, not flags.
const GSS_ROUTINE_BAD_MECH: u32 = 1;
const GSS_ROUTINE_NO_CRED: u32 = 7;
const GSS_ROUTINE_DEFECTIVE_TOKEN: u32 = 9;
const GSS_ROUTINE_DEFECTIVE_CREDENTIAL: u32 = 10;

pub struct KerberosAuthenticator {
    pool: BlockingPool,
    /// When set, the only service principal tickets may be for.
    principal: Option<String>,
    realms: Vec<String>,
    allow_instances: bool,
}

impl KerberosAuthenticator {
    pub fn new(
        pool: BlockingPool,
        principal: Option<String>,
        realms: Vec<String>,
        allow_instances: bool,
    ) -> Self {
        KerberosAuthenticator {
            pool,
            principal,
            realms,
            allow_instances,
        }
    }

    async fn accept(&self, token: Vec<u8>) -> Result<Outcome, AuthError> {
        let want_target = self.principal.is_some();
        let accepted = self
            .pool
            .run(move || accept_token(&token, want_target))
            .await??;
        if let (Some(want), Some(target)) = (&self.principal, &accepted.target)
            && target != want
        {
            return Err(AuthError::rejected(
                "wrong_service_principal",
                format!("the ticket is for {target}, not for this server's principal"),
            ));
        }
        let user = self.local_user(&accepted.initiator)?;
        Ok(Outcome::Authenticated(Identity {
            user,
            mechanism: Mechanism::Kerberos,
            groups: None,
            response_token: accepted.output,
        }))
    }

    /// `user@REALM` → `user`, only for the configured realms (SPEC §5).
    fn local_user(&self, principal: &str) -> Result<String, AuthError> {
        local_user(principal, &self.realms, self.allow_instances)
    }
}

/// `user@REALM` → `user` when `REALM` is one of `realms` (SPEC §5); also what
/// `portcullis admin explain user@REALM` runs.
pub fn local_user(
    principal: &str,
    realms: &[String],
    allow_instances: bool,
) -> Result<String, AuthError> {
    let denied = |reason, message: String| AuthError::AccountUnavailable { reason, message };
    let Some((name, realm)) = principal.rsplit_once('@') else {
        return Err(denied(
            "principal_without_realm",
            format!("\"{principal}\" has no realm"),
        ));
    };
    if !realms.iter().any(|r| r == realm) {
        return Err(denied(
            "realm_not_allowed",
            format!("principals of realm {realm} may not log in here (security.krb_realms)"),
        ));
    }
    let user = match name.split_once('/') {
        None => name,
        Some((first, _)) if allow_instances => first,
        Some(_) => {
            return Err(denied(
                "instance_principal",
                format!("\"{principal}\" is an instance principal; only user@REALM may log in"),
            ));
        }
    };
    if !valid_username(user) {
        return Err(denied(
            "bad_principal",
            format!("\"{principal}\" does not name a valid local user"),
        ));
    }
    Ok(user.to_string())
}

fn accept_token(token: &[u8], want_target: bool) -> Result<acceptor::Established, AuthError> {
    // SPNEGO is unwrapped here so the krb5 mechanism reports its own error codes
    // (see `spnego`); the answer is wrapped the same way it came.
    let (krb5, spnego_mech) = match spnego::parse(token) {
        spnego::Token::Krb5(t) => (t, None),
        spnego::Token::Spnego { mech, krb5 } => (krb5, Some(mech)),
        spnego::Token::NotKerberos => return Err(negotiate_incomplete()),
        spnego::Token::Malformed => return Err(bad_token()),
    };
    let mut established = match acceptor::accept(krb5, want_target) {
        Ok(e) => e,
        // A krb5 token that wants a second round trip (DCE style): not HTTP Negotiate.
        Err(acceptor::Refused::ContinueNeeded) => return Err(negotiate_incomplete()),
        Err(acceptor::Refused::Gss(e)) => return Err(classify(&e)),
    };
    if let Some(mech) = spnego_mech {
        let output = spnego::accept_completed(mech, established.output.as_deref());
        established.output = Some(output);
    }
    Ok(established)
}

fn negotiate_incomplete() -> AuthError {
    // HTTP Negotiate is one round trip; a mechanism that wants more (NTLM through
    // SPNEGO) is not Kerberos.
    AuthError::rejected(
        "negotiate_incomplete",
        "the Negotiate token did not complete a Kerberos exchange (is the client using NTLM?)",
    )
}

fn bad_token() -> AuthError {
    AuthError::Malformed {
        reason: "bad_negotiate_token",
        message: "the Negotiate token is not a valid SPNEGO or Kerberos token".into(),
    }
}

/// krb5 error codes (`krb5.h`, the `krb5` com_err table) as the krb5 mechanism
/// reports them in the GSS minor status.
mod code {
    pub const AP_ERR_BAD_INTEGRITY: i32 = -1765328353;
    pub const AP_ERR_TKT_EXPIRED: i32 = -1765328352;
    pub const AP_ERR_TKT_NYV: i32 = -1765328351;
    pub const AP_ERR_REPEAT: i32 = -1765328350;
    pub const AP_ERR_NOT_US: i32 = -1765328349;
    pub const AP_ERR_BADMATCH: i32 = -1765328348;
    pub const AP_ERR_SKEW: i32 = -1765328347;
    pub const AP_ERR_MODIFIED: i32 = -1765328343;
    pub const AP_ERR_BADKEYVER: i32 = -1765328340;
    pub const AP_ERR_NOKEY: i32 = -1765328339;
    pub const AP_WRONG_PRINC: i32 = -1765328240;
    pub const RC_REPLAY: i32 = -1765328221;
    /// `KRB5_RC_TYPE_EXISTS` .. `KRB5_RC_IO_SPACE`, without `KRB5_RC_REPLAY`.
    pub const RC_FIRST: i32 = -1765328225;
    pub const RC_LAST: i32 = -1765328212;
    pub const KT_BADNAME: i32 = -1765328205;
    pub const KT_UNKNOWN_TYPE: i32 = -1765328204;
    pub const KT_NOTFOUND: i32 = -1765328203;
    pub const KT_END: i32 = -1765328202;
    pub const KT_IOERR: i32 = -1765328200;
    pub const KT_KVNONOTFOUND: i32 = -1765328154;
    pub const KT_FORMAT: i32 = -1765328149;
}

/// Which side a failure is on, from numbers only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    ClockSkew,
    Replay,
    TicketExpired,
    TicketNotYetValid,
    /// The ticket is for a principal or key version the keytab lacks.
    WrongServiceKey,
    /// The keytab or replay cache could not be used: the server's problem.
    ServerSide,
    BadToken,
    Other,
}

/// Keep the causes apart (issue 5) without reading text the client chose (issue 9):
/// the cause comes from the GSS routine error and the krb5 error code in the minor
/// status, never from the message, which quotes the ticket's service name. Only a
/// failure that cannot come from the ticket (an I/O error on the keytab or replay
/// cache, no acceptor credentials) is a 503; anything unrecognised is a 401.
fn cause(routine: u32, minor: u32) -> Cause {
    use code::*;
    let minor = minor as i32;
    match minor {
        AP_ERR_SKEW => return Cause::ClockSkew,
        AP_ERR_REPEAT | RC_REPLAY => return Cause::Replay,
        AP_ERR_TKT_EXPIRED => return Cause::TicketExpired,
        AP_ERR_TKT_NYV => return Cause::TicketNotYetValid,
        AP_ERR_NOT_US | AP_ERR_BADMATCH | AP_ERR_BAD_INTEGRITY | AP_ERR_MODIFIED
        | AP_ERR_BADKEYVER | AP_ERR_NOKEY | AP_WRONG_PRINC | KT_NOTFOUND | KT_END
        | KT_KVNONOTFOUND => return Cause::WrongServiceKey,
        RC_FIRST..=RC_LAST | KT_BADNAME | KT_UNKNOWN_TYPE | KT_IOERR | KT_FORMAT => {
            return Cause::ServerSide;
        }
        // File errors on the keytab or the replay cache, whose names the client does
        // not choose.
        libc::EPERM
        | libc::ENOENT
        | libc::EIO
        | libc::EACCES
        | libc::ENFILE
        | libc::EMFILE
        | libc::ENOSPC
        | libc::EROFS => return Cause::ServerSide,
        _ => {}
    }
    match routine {
        GSS_ROUTINE_DEFECTIVE_TOKEN | GSS_ROUTINE_BAD_MECH | GSS_ROUTINE_DEFECTIVE_CREDENTIAL => {
            Cause::BadToken
        }
        GSS_ROUTINE_NO_CRED => Cause::ServerSide,
        _ => Cause::Other,
    }
}

fn classify(e: &GssError) -> AuthError {
    let routine = (e.major.bits() >> 16) & 0xff;
    let cause = cause(routine, e.minor);
    // The text quotes the ticket's service name, chosen by the client: escaped and
    // cut, and only ever logged, never matched.
    let text = crate::logsafe::clean(&e.to_string());
    tracing::debug!(routine, minor = e.minor as i32, ?cause, error = %text, "GSSAPI accept failed");
    let rejected = |reason, message: &str| AuthError::rejected(reason, message);
    match cause {
        Cause::ClockSkew => rejected(
            "clock_skew",
            "Kerberos: the clocks of the client and the server differ too much",
        ),
        Cause::Replay => rejected("replay", "Kerberos: this token was already used (replay)"),
        Cause::TicketExpired => rejected(
            "ticket_expired",
            "Kerberos: the ticket has expired; run kinit",
        ),
        Cause::TicketNotYetValid => rejected(
            "ticket_not_yet_valid",
            "Kerberos: the ticket is not valid yet",
        ),
        Cause::WrongServiceKey => rejected(
            "wrong_service_key",
            "Kerberos: the ticket is for a service principal or key version this server does not have",
        ),
        Cause::ServerSide => {
            tracing::error!(minor = e.minor as i32, error = %text, "Kerberos acceptor problem on the server side (keytab or replay cache)");
            AuthError::Unavailable {
                reason: "keytab",
                message: "the server's Kerberos keytab or replay cache is unavailable".into(),
            }
        }
        Cause::BadToken => bad_token(),
        Cause::Other => {
            tracing::warn!(routine, minor = e.minor as i32, error = %text, "Kerberos token refused");
            rejected("kerberos_failed", "Kerberos: the token was refused")
        }
    }
}

impl Authenticator for KerberosAuthenticator {
    fn mechanism(&self) -> Mechanism {
        Mechanism::Kerberos
    }

    fn authenticate<'a>(
        &'a self,
        credentials: Credentials,
        _ctx: &'a LoginContext,
    ) -> BoxFuture<'a, Result<Outcome, AuthError>> {
        Box::pin(async move {
            match credentials {
                Credentials::Negotiate(token) => self.accept(token).await,
                _ => Err(AuthError::rejected("wrong_mechanism", "no Negotiate token")),
            }
        })
    }
}

/// Point MIT krb5 at the configured keytab and a replay cache directory the daemon
/// owns (`<state_dir>/krb5-rcache`, unless `KRB5RCACHEDIR` is set).
///
/// # Safety
/// Changes the process environment: call it before any other thread exists.
pub unsafe fn prepare_process_env(
    keytab: &str,
    state_dir: Option<&std::path::Path>,
) -> Result<(), String> {
    unsafe { std::env::set_var("KRB5_KTNAME", keytab) };
    if let Some(state_dir) = state_dir
        && std::env::var_os("KRB5RCACHEDIR").is_none()
    {
        use std::os::unix::fs::DirBuilderExt;
        let dir = state_dir.join("krb5-rcache");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| {
                format!(
                    "cannot create the Kerberos replay cache directory {}: {e}",
                    dir.display()
                )
            })?;
        unsafe { std::env::set_var("KRB5RCACHEDIR", &dir) };
    }
    Ok(())
}

/// Startup check: the keytab exists, is readable by this process, and GSSAPI can
/// build acceptor credentials from it (for `principal` if set).
pub fn check_acceptor(keytab: &str, principal: Option<&str>) -> Result<(), String> {
    let path = keytab.strip_prefix("FILE:").unwrap_or(keytab);
    let who = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {}", nix::unistd::getuid()), |u| u.name);
    if let Err(e) = std::fs::File::open(path) {
        return Err(format!(
            "cannot read the Kerberos keytab {path} as user {who}: {e}"
        ));
    }
    use libgssapi::credential::{Cred, CredUsage};
    use libgssapi::name::Name;
    use libgssapi::oid::{GSS_MECH_KRB5, GSS_NT_KRB5_PRINCIPAL, OidSet};
    let mut mechs = OidSet::new().map_err(|e| e.to_string())?;
    mechs.add(&GSS_MECH_KRB5).map_err(|e| e.to_string())?;
    let name = match principal {
        Some(p) => Some(
            Name::new(p.as_bytes(), Some(&GSS_NT_KRB5_PRINCIPAL))
                .map_err(|e| format!("security.server_krb_principal \"{p}\": {e}"))?,
        ),
        None => None,
    };
    Cred::acquire(name.as_ref(), None, CredUsage::Accept, Some(&mechs)).map_err(|e| {
        format!(
            "no Kerberos acceptor credentials in {path}{} (read as user {who}): {e}",
            principal.map(|p| format!(" for {p}")).unwrap_or_default()
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(allow_instances: bool) -> KerberosAuthenticator {
        KerberosAuthenticator::new(
            BlockingPool::new("gssapi", 1, std::time::Duration::from_secs(1)),
            None,
            vec!["EXAMPLE.COM".into()],
            allow_instances,
        )
    }

    #[test]
    fn causes_come_from_numbers() {
        let failure = 13; // GSS_S_FAILURE
        let minor = |c: i32| c as u32;
        assert_eq!(cause(failure, minor(code::AP_ERR_SKEW)), Cause::ClockSkew);
        assert_eq!(cause(failure, minor(code::AP_ERR_REPEAT)), Cause::Replay);
        assert_eq!(
            cause(failure, minor(code::AP_ERR_NOT_US)),
            Cause::WrongServiceKey
        );
        assert_eq!(
            cause(failure, minor(code::KT_KVNONOTFOUND)),
            Cause::WrongServiceKey
        );
        assert_eq!(cause(failure, libc::ENOENT as u32), Cause::ServerSide);
        assert_eq!(cause(failure, minor(-1765328214)), Cause::ServerSide); // KRB5_RC_IO_IO
        assert_eq!(cause(GSS_ROUTINE_NO_CRED, 0), Cause::ServerSide);
        assert_eq!(cause(GSS_ROUTINE_DEFECTIVE_TOKEN, 0), Cause::BadToken);
        // A fake mechglue number or an unknown code is the client's, never a 503.
        assert_eq!(cause(failure, 100001), Cause::Other);
        assert_eq!(cause(failure, libc::EINVAL as u32), Cause::Other);
    }

    #[test]
    fn principals_map_to_local_users_only_in_allowed_realms() {
        let a = auth(false);
        assert_eq!(a.local_user("alice@EXAMPLE.COM").unwrap(), "alice");
        assert_eq!(
            a.local_user("alice@OTHER.ORG").unwrap_err().reason(),
            "realm_not_allowed"
        );
        assert_eq!(
            a.local_user("alice/admin@EXAMPLE.COM")
                .unwrap_err()
                .reason(),
            "instance_principal"
        );
        assert_eq!(
            a.local_user("alice").unwrap_err().reason(),
            "principal_without_realm"
        );
        assert_eq!(
            a.local_user("al ice@EXAMPLE.COM").unwrap_err().reason(),
            "bad_principal"
        );
        assert_eq!(
            auth(true).local_user("alice/admin@EXAMPLE.COM").unwrap(),
            "alice"
        );
    }
}
