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
    cache: Mutex<HashMap<String, (Instant, Arc<Account>)>>,
}

impl Directory {
    pub fn new(pool: BlockingPool, ttl: Duration) -> Self {
        Directory {
            pool,
            ttl,
            cache: Mutex::new(HashMap::new()),
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
            if let Some((at, acct)) = cache.get(user)
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
            if cache.len() >= 4096 && cache.len().is_power_of_two() {
                let ttl = self.ttl;
                cache.retain(|_, (at, _)| at.elapsed() < ttl);
            }
            cache.insert(user.to_string(), (Instant::now(), acct.clone()));
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
    let gids = nix::unistd::getgrouplist(&cname, pw.gid)
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
