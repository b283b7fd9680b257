//! Telling a locked local account from a wrong password.
//!
//! `usermod -L` puts a `!` in front of the shadow hash, and pam_unix then fails
//! *every* password with PAM_AUTH_ERR, so PAM alone cannot say "right password, but
//! locked". SPEC §4 wants that case to be a 403. After PAM refused a password, this
//! checks the shadow entry: only when it is locked *and* the password matches the
//! hash behind the `!` is the answer "locked"; everyone else gets the same 401 as
//! for a wrong password, so nothing about the account leaks to a guesser.
//! Needs read access to /etc/shadow (the service user is in group `shadow`).

use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_void};

use subtle::ConstantTimeEq;

#[link(name = "crypt")]
unsafe extern "C" {
    /// libxcrypt: allocates its scratch area in `*data` (freed by the caller).
    fn crypt_ra(
        phrase: *const c_char,
        setting: *const c_char,
        data: *mut *mut c_void,
        size: *mut c_int,
    ) -> *mut c_char;
}

/// The shadow hash of `user`, if readable.
fn shadow_hash(user: &str) -> Option<zeroize::Zeroizing<String>> {
    let name = CString::new(user).ok()?;
    let mut entry: libc::spwd = unsafe { std::mem::zeroed() };
    let mut buf = zeroize::Zeroizing::new(vec![0u8; 4096]);
    let mut result: *mut libc::spwd = std::ptr::null_mut();
    let rc = unsafe {
        libc::getspnam_r(
            name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || entry.sp_pwdp.is_null() {
        return None;
    }
    let hash = unsafe { CStr::from_ptr(entry.sp_pwdp) };
    Some(zeroize::Zeroizing::new(hash.to_string_lossy().into_owned()))
}

/// True when `user` is locked (`!` hash) and `password` is nevertheless right.
pub fn locked_with_right_password(user: &str, password: &str) -> bool {
    let Some(hash) = shadow_hash(user) else {
        return false;
    };
    let Some(inner) = hash.strip_prefix('!') else {
        return false;
    };
    let inner = inner.trim_start_matches('!');
    if inner.is_empty() || inner.starts_with('*') {
        return false;
    }
    let (Ok(phrase), Ok(setting)) = (CString::new(password), CString::new(inner)) else {
        return false;
    };
    let phrase = zeroize::Zeroizing::new(phrase.into_bytes_with_nul());
    let mut data: *mut c_void = std::ptr::null_mut();
    let mut size: c_int = 0;
    let out = unsafe {
        crypt_ra(
            phrase.as_ptr().cast(),
            setting.as_ptr(),
            &mut data,
            &mut size,
        )
    };
    let matches = !out.is_null() && {
        let computed = unsafe { CStr::from_ptr(out) }.to_bytes();
        computed.ct_eq(inner.as_bytes()).into()
    };
    if !data.is_null() {
        // The scratch area held derived key material.
        unsafe {
            std::ptr::write_bytes(data.cast::<u8>(), 0, size.max(0) as usize);
            libc::free(data);
        }
    }
    matches
}
