//! Local accounts and their groups through NSS (`getpwnam`, `getgrouplist`), so
//! whatever the machine uses — files, SSSD, LDAP — is what portcullis sees.
//!
//! NSS calls block (an LDAP backend may take seconds), so they run on the bounded
//! blocking pool, and answers are cached per user for `security.group_cache_ttl`.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::unistd::{Gid, Group, User};
use tokio::time::Instant;

use crate::blocking::{BlockingPool, PoolError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: Arc<str>,
    pub uid: u32,
    /// Group names, primary group first, without repeats.
    pub groups: Arc<[Arc<str>]>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DirectoryError {
    /// NSS answered and the account does not exist: a 403, not a 503.
    #[error("no local account")]
    NoSuchUser,
    /// NSS itself failed (e.g. the LDAP server behind SSSD is down): a 503.
    #[error("the account directory is unavailable: {0}")]
    Unavailable(String),
}

pub struct Directory {
    pool: BlockingPool,
    ttl: Duration,
    /// Accounts by their own name (`pw_name`), so `ALICE` and `alice` share one entry.
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    accounts: HashMap<Arc<str>, (Instant, Arc<Account>)>,
    /// A name a client gave → the account's own name, when they differ.
    aliases: HashMap<String, Arc<str>>,
}

/// Names remembered as aliases at most (case and domain variants).
const ALIASES_MAX: usize = 65_536;

impl Directory {
    pub fn new(pool: BlockingPool, ttl: Duration) -> Self {
        Directory {
            pool,
            ttl,
            cache: Mutex::new(Cache::default()),
        }
    }

    pub async fn lookup(&self, user: &str) -> Result<Arc<Account>, DirectoryError> {
        self.lookup_inner(user, true).await
    }

    /// Ask NSS now, whatever the cache holds (and refresh the cache): for the
    /// operator's `admin explain`, which must show what a login would see next.
    pub async fn lookup_fresh(&self, user: &str) -> Result<Arc<Account>, DirectoryError> {
        self.lookup_inner(user, false).await
    }

    async fn lookup_inner(
        &self,
        user: &str,
        use_cache: bool,
    ) -> Result<Arc<Account>, DirectoryError> {
        if use_cache && !self.ttl.is_zero() {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let own = cache.aliases.get(user).map_or(user, |n| n.as_ref());
            if let Some((at, acct)) = cache.accounts.get(own)
                && at.elapsed() < self.ttl
            {
                return Ok(acct.clone());
            }
        }
        let name = user.to_string();
        let acct = self
            .pool
            .run(move || resolve(&name))
            .await
            .map_err(|e| match e {
                PoolError::Busy => DirectoryError::Unavailable("too many lookups in flight".into()),
                PoolError::Panicked => DirectoryError::Unavailable("lookup failed".into()),
            })??;
        let acct = Arc::new(acct);
        if !self.ttl.is_zero() {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            // Bound the cache by dropping stale entries when it grows; cheap because it
            // only happens once per doubling.
            let n = cache.accounts.len();
            if n >= 4096 && n.is_power_of_two() {
                let ttl = self.ttl;
                cache.accounts.retain(|_, (at, _)| at.elapsed() < ttl);
            }
            if cache.aliases.len() >= ALIASES_MAX {
                cache.aliases.clear();
            }
            if *acct.name != *user {
                cache.aliases.insert(user.to_string(), acct.name.clone());
            }
            cache
                .accounts
                .insert(acct.name.clone(), (Instant::now(), acct.clone()));
        }
        Ok(acct)
    }
}

/// The blocking part: one `getpwnam` and one `getgrouplist`, then names for gids.
pub fn resolve(user: &str) -> Result<Account, DirectoryError> {
    let cname = CString::new(user).map_err(|_| DirectoryError::NoSuchUser)?;
    let pw = match User::from_name(user) {
        Ok(Some(pw)) => pw,
        Ok(None) => return Err(DirectoryError::NoSuchUser),
        Err(e) => return Err(DirectoryError::Unavailable(format!("getpwnam: {e}"))),
    };
    // The account's own name: a directory may have matched `ALICE` or `alice@domain`.
    let canonical = CString::new(pw.name.as_str()).unwrap_or(cname);
    let gids = nix::unistd::getgrouplist(&canonical, pw.gid)
        .map_err(|e| DirectoryError::Unavailable(format!("getgrouplist: {e}")))?;
    let mut names: Vec<Arc<str>> = Vec::with_capacity(gids.len());
    // getgrouplist puts the primary group first; keep that order for readability.
    for gid in std::iter::once(pw.gid).chain(gids) {
        let name = group_name(gid)?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(Account {
        name: Arc::from(pw.name.as_str()),
        uid: pw.uid.as_raw(),
        groups: names.into(),
    })
}

fn group_name(gid: Gid) -> Result<Arc<str>, DirectoryError> {
    match Group::from_gid(gid) {
        Ok(Some(g)) => Ok(Arc::from(g.name.as_str())),
        // A gid without a name still identifies a group; keep it as its number.
        Ok(None) => Ok(Arc::from(gid.as_raw().to_string().as_str())),
        Err(e) => Err(DirectoryError::Unavailable(format!("getgrgid: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_with_its_primary_group_first() {
        let acct = resolve("root").unwrap();
        assert_eq!(acct.uid, 0);
        assert_eq!(acct.groups[0].as_ref(), "root");
    }

    #[test]
    fn unknown_users_are_not_found() {
        assert_eq!(
            resolve("no-such-user-pc-x").unwrap_err(),
            DirectoryError::NoSuchUser
        );
        assert_eq!(
            resolve("bad\0name").unwrap_err(),
            DirectoryError::NoSuchUser
        );
    }
}
