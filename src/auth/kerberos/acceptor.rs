//! One `gss_accept_sec_context` call with an acceptor credential each thread acquires
//! once and keeps.
//!
//! Why not `GSS_C_NO_CREDENTIAL`, as libgssapi's `ServerCtx::new(None)` passes: MIT
//! then acquires the default acceptor credential inside every accept — a krb5
//! context of its own and the keytab opened, locked and scanned once more just to see
//! that it has keys — and releases it again. A credential acquired for "any principal
//! in the keytab" (`GSS_C_NO_NAME`) does not copy the keys: MIT still looks the
//! ticket's key up in the keytab file on every accept, so a key added with `ktadd`
//! (a new kvno) is used at once, and the replay cache is opened and written on every
//! accept as before. libgssapi's `Cred` cannot be lent to a context (the context
//! takes it and releases it when dropped), hence these few calls through
//! libgssapi-sys.
//!
//! The credential is per thread and refreshed every [`CRED_MAX_AGE`], so a keytab
//! that was missing at one moment does not stay missing, and it is only used by the
//! gssapi pool's dedicated threads (`BlockingPool::with_dedicated_threads`).

use std::cell::RefCell;
use std::ffi::c_void;
use std::ptr::null_mut;
use std::time::{Duration, Instant};

use libgssapi::error::{Error as GssError, MajorFlags};
use libgssapi_sys as sys;

/// How long a thread keeps its acquired credential before acquiring a new one.
const CRED_MAX_AGE: Duration = Duration::from_secs(60);

/// `GSS_S_CONTINUE_NEEDED`, a supplementary status bit.
const CONTINUE_NEEDED: u32 = 1;

/// What one accept established.
pub(super) struct Established {
    pub initiator: String,
    /// The service principal the ticket was for, when asked for: finding it takes a
    /// few more calls (each of MIT's makes a krb5 context), so only when
    /// `security.server_krb_principal` is set.
    pub target: Option<String>,
    /// The mechanism's answer token (the AP-REP for mutual authentication).
    pub output: Option<Vec<u8>>,
}

/// Why an accept did not establish a context.
pub(super) enum Refused {
    Gss(GssError),
    /// The token wants another round trip, which HTTP Negotiate does not have.
    ContinueNeeded,
}

/// The krb5 mechanism, 1.2.840.113554.1.2.2.
const KRB5_OID: &[u8] = b"\x2a\x86\x48\x86\xf7\x12\x01\x02\x02";

fn gss_error(major: u32, minor: u32) -> GssError {
    GssError {
        major: MajorFlags::from_bits_retain(major),
        minor,
    }
}

/// Routine or calling errors (the top 16 bits); the bottom 16 are supplementary.
fn failed(major: u32) -> bool {
    major & 0xffff_0000 != 0
}

/// An acquired acceptor credential, released on drop.
struct Cred(sys::gss_cred_id_t);

impl Drop for Cred {
    fn drop(&mut self) {
        let mut minor = 0;
        unsafe { sys::gss_release_cred(&mut minor, &mut self.0) };
    }
}

/// Acceptor credential for the krb5 mechanism and every principal of the keytab.
fn acquire() -> Result<Cred, GssError> {
    let mut oid = sys::gss_OID_desc {
        length: KRB5_OID.len() as u32,
        elements: KRB5_OID.as_ptr() as *mut c_void,
    };
    let mut mechs = sys::gss_OID_set_desc {
        count: 1,
        elements: &mut oid,
    };
    let mut minor = 0;
    let mut cred: sys::gss_cred_id_t = null_mut();
    let major = unsafe {
        sys::gss_acquire_cred(
            &mut minor,
            null_mut(), // GSS_C_NO_NAME: any principal in the keytab
            0,          // GSS_C_INDEFINITE
            &mut mechs,
            sys::GSS_C_ACCEPT as sys::gss_cred_usage_t,
            &mut cred,
            null_mut(),
            null_mut(),
        )
    };
    if failed(major) {
        return Err(gss_error(major, minor));
    }
    Ok(Cred(cred))
}

thread_local! {
    /// This thread's credential and when it was acquired.
    static HELD: RefCell<Option<(Cred, Instant)>> = const { RefCell::new(None) };
}

/// Keeps one krb5 context alive for the life of the process.
///
/// Why: MIT's profile library shares the parsed krb5.conf between contexts only while
/// one of them is alive; `gss_accept_sec_context` makes and frees a context per call,
/// so without a context held somewhere every login opened, read and parsed
/// krb5.conf again (seen in strace). With one held, a new context finds the parsed
/// file and only checks that it has not changed, so edits to krb5.conf still apply.
fn keep_profile_loaded() {
    static KEPT: std::sync::Once = std::sync::Once::new();
    KEPT.call_once(|| {
        let mut ctx: *mut c_void = null_mut();
        // Never freed: it lives as long as the process, like the profile cache.
        if unsafe { super::krb5_init_context(&mut ctx) } != 0 {
            tracing::debug!("krb5_init_context failed; krb5.conf is read per login");
        }
    });
}

/// Accept one krb5 token (an AP-REQ, already out of its SPNEGO wrapping).
pub(super) fn accept(token: &[u8], want_target: bool) -> Result<Established, Refused> {
    keep_profile_loaded();
    HELD.with(|held| {
        let mut held = held.borrow_mut();
        if held
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() >= CRED_MAX_AGE)
        {
            // On failure (no keytab yet) the accept below runs with the default
            // credential and reports why in MIT's own words and codes.
            *held = match acquire() {
                Ok(cred) => Some((cred, Instant::now())),
                Err(e) => {
                    tracing::debug!(error = %e, "acquiring the acceptor credential failed");
                    None
                }
            };
        }
        let cred = held.as_ref().map_or(null_mut(), |(c, _)| c.0);
        accept_with(cred, token, want_target)
    })
}

/// Frees what a GSSAPI call handed back, whatever path leaves the function.
struct Owned<T: Copy>(T, unsafe extern "C" fn(*mut u32, *mut T) -> u32);

impl<T: Copy> Drop for Owned<T> {
    fn drop(&mut self) {
        let mut minor = 0;
        unsafe { (self.1)(&mut minor, &mut self.0) };
    }
}

unsafe extern "C" fn delete_ctx(minor: *mut u32, ctx: *mut sys::gss_ctx_id_t) -> u32 {
    unsafe { sys::gss_delete_sec_context(minor, ctx, null_mut()) }
}

fn accept_with(
    cred: sys::gss_cred_id_t,
    token: &[u8],
    want_target: bool,
) -> Result<Established, Refused> {
    let mut minor = 0;
    let mut input = sys::gss_buffer_desc {
        length: token.len(),
        value: token.as_ptr() as *mut c_void,
    };
    let mut ctx = Owned::<sys::gss_ctx_id_t>(null_mut(), delete_ctx);
    let mut source = Owned::<sys::gss_name_t>(null_mut(), sys::gss_release_name);
    let mut output = Buffer::empty();
    let major = unsafe {
        sys::gss_accept_sec_context(
            &mut minor,
            &mut ctx.0,
            cred,
            &mut input,
            null_mut(), // no channel bindings
            &mut source.0,
            null_mut(),
            &mut output.0,
            null_mut(),
            null_mut(),
            null_mut(), // delegated credentials are not wanted
        )
    };
    if failed(major) {
        return Err(Refused::Gss(gss_error(major, minor)));
    }
    if major & CONTINUE_NEEDED != 0 {
        return Err(Refused::ContinueNeeded);
    }
    let target = if want_target {
        Some(target_name(ctx.0).map_err(Refused::Gss)?)
    } else {
        None
    };
    Ok(Established {
        initiator: display(source.0).map_err(Refused::Gss)?,
        target,
        output: output.bytes(),
    })
}

fn target_name(ctx: sys::gss_ctx_id_t) -> Result<String, GssError> {
    let mut minor = 0;
    let mut target = Owned::<sys::gss_name_t>(null_mut(), sys::gss_release_name);
    let major = unsafe {
        sys::gss_inquire_context(
            &mut minor,
            ctx,
            null_mut(),
            &mut target.0,
            null_mut(),
            null_mut(),
            null_mut(),
            null_mut(),
            null_mut(),
        )
    };
    if failed(major) {
        return Err(gss_error(major, minor));
    }
    display(target.0)
}

/// A buffer GSSAPI allocated.
struct Buffer(sys::gss_buffer_desc);

impl Buffer {
    fn empty() -> Buffer {
        Buffer(sys::gss_buffer_desc {
            length: 0,
            value: null_mut(),
        })
    }

    fn bytes(&self) -> Option<Vec<u8>> {
        if self.0.value.is_null() || self.0.length == 0 {
            return None;
        }
        Some(
            unsafe { std::slice::from_raw_parts(self.0.value as *const u8, self.0.length) }
                .to_vec(),
        )
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut minor = 0;
        unsafe { sys::gss_release_buffer(&mut minor, &mut self.0) };
    }
}

fn display(name: sys::gss_name_t) -> Result<String, GssError> {
    let mut minor = 0;
    let mut text = Buffer::empty();
    let major = unsafe { sys::gss_display_name(&mut minor, name, &mut text.0, null_mut()) };
    if failed(major) {
        return Err(gss_error(major, minor));
    }
    Ok(String::from_utf8_lossy(&text.bytes().unwrap_or_default()).into_owned())
}
