//! The `file` session store (SPEC §10): sessions that survive a restart and `kill -9`.
//!
//! Reads never touch the disk: every live session is also in a [`MemoryStore`], which
//! answers `GET /v1/session` at the memory store's speed. The file is redb, an
//! embedded copy-on-write B-tree with crash-safe commits (no WAL to replay, no
//! separate process). Chosen over SQLite because it is pure Rust (no second C
//! library to audit next to PAM and GSSAPI), its file lock refuses a second daemon on
//! the same file by itself, and a torn or corrupt file is reported on open instead of
//! being silently reset.
//!
//! Durability follows SPEC §10: a logout (or an operator's revoke) is committed
//! before the store returns, so before the 204; new logins are collected and
//! committed together at most [`BATCH`] later, so a crash loses at most that much
//! (the client just logs in again); a session evicted before its batch is never
//! written. Only the token's SHA-256 is stored, never the
//! token. With `security.session_idle_timeout` on, the last use of each session is
//! written every [`TOUCH`] (and at shutdown), so after a restart an idle session is
//! no younger than it was — at most that much later than exact.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{
    Created, MemoryStore, Revoke, Session, SessionError, SessionInfo, SessionLimits, SessionRecord,
    TokenHash,
};
use crate::auth::Mechanism;

/// token SHA-256 → the session as JSON.
const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
/// token SHA-256 → when the session was last used (unix seconds), written lazily.
const LAST_USED: TableDefinition<&[u8], u64> = TableDefinition::new("last_used");

/// How long a new login may wait before it is on disk.
pub const BATCH: Duration = Duration::from_millis(100);
/// How often expired sessions are deleted from the file.
const SWEEP: Duration = Duration::from_secs(60);
/// How often the last use of sessions is written (SPEC §10: idle deadlines may be
/// written lazily, at most 60 s late).
const TOUCH: Duration = Duration::from_secs(30);

/// Why the store could not be opened: a startup error that names the file.
#[derive(Debug, thiserror::Error)]
pub enum FileStoreError {
    #[error(
        "session store {0}: the file is in use by another process (another portcullis daemon?); give each daemon its own security.session_store_path, or use security.session_store=redis to share sessions"
    )]
    InUse(PathBuf),
    #[error(
        "session store {0}: {1}; the file is unreadable or corrupt — move it away to start with no sessions (nothing was changed)"
    )]
    Unreadable(PathBuf, String),
}

/// One session on disk.
#[derive(Serialize, Deserialize)]
pub(super) struct Stored {
    user: String,
    mechanism: String,
    groups: Vec<String>,
    labels: Vec<String>,
    created: u64,
    expires: u64,
    peer: Option<IpAddr>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

impl Stored {
    pub(super) fn new(info: &SessionInfo, expires_at: SystemTime) -> Stored {
        let strings = |v: &[Arc<str>]| v.iter().map(|s| s.to_string()).collect();
        Stored {
            user: info.user.to_string(),
            mechanism: info.mechanism.as_str().to_string(),
            groups: strings(&info.groups),
            labels: strings(&info.labels),
            created: unix(info.created_at),
            expires: unix(expires_at),
            peer: info.peer,
        }
    }

    pub(super) fn into_session(self) -> Option<(Arc<SessionInfo>, SystemTime)> {
        let arcs = |v: Vec<String>| v.iter().map(|s| Arc::from(s.as_str())).collect();
        let info = SessionInfo {
            user: Arc::from(self.user.as_str()),
            mechanism: Mechanism::parse(&self.mechanism)?,
            groups: arcs(self.groups),
            labels: arcs(self.labels),
            created_at: UNIX_EPOCH + Duration::from_secs(self.created),
            peer: self.peer,
        };
        Some((
            Arc::new(info),
            UNIX_EPOCH + Duration::from_secs(self.expires),
        ))
    }
}

struct Shared {
    db: Database,
    path: PathBuf,
    /// The next batch, by token hash: new sessions to write (`Some`), and the
    /// sessions their logins evicted at the per-user bound to delete (`None`),
    /// committed in one transaction. A session made and evicted before its batch
    /// is taken out of it: it never reaches the file (a user logging in over and
    /// over past the bound costs no disk writes).
    pending: Mutex<Pending>,
    /// Held from taking a batch until it is committed, and by a logout from taking
    /// its session out of the next batch until its deletion is committed: without
    /// it, a logout landing between the two could be overtaken by the commit of its
    /// own login, and the session would be back after a restart.
    commit: Mutex<()>,
    /// Sessions used since their last use was written (only with an idle timeout).
    touched: Mutex<std::collections::HashSet<TokenHash>>,
    idle: bool,
}

/// Sessions to write (`Some`) or to delete (`None`) in the next batch.
type Pending = HashMap<TokenHash, Option<Session>>;

pub struct FileStore {
    memory: MemoryStore,
    shared: Arc<Shared>,
    /// Wakes the batch writer (new logins, or the store closing).
    wake: Arc<tokio::sync::Notify>,
}

impl FileStore {
    /// Open (or create) the file and load its live sessions; must be called inside a
    /// tokio runtime (it starts the batch writer).
    pub fn open(
        path: &Path,
        idle_timeout: Option<Duration>,
        limits: SessionLimits,
    ) -> Result<FileStore, FileStoreError> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => FileStoreError::InUse(path.into()),
            e => FileStoreError::Unreadable(path.into(), e.to_string()),
        })?;
        restrict(path);
        let memory = MemoryStore::with_limits(idle_timeout, limits);
        let loaded = load(&db, &memory).map_err(|e| FileStoreError::Unreadable(path.into(), e))?;
        tracing::info!(path = %path.display(), sessions = loaded, "session store loaded");
        let shared = Arc::new(Shared {
            db,
            path: path.into(),
            pending: Mutex::new(HashMap::new()),
            commit: Mutex::new(()),
            touched: Mutex::new(std::collections::HashSet::new()),
            idle: idle_timeout.is_some_and(|d| !d.is_zero()),
        });
        let wake = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(write_batches(Arc::downgrade(&shared), wake.clone()));
        Ok(FileStore {
            memory,
            shared,
            wake,
        })
    }

    /// Delete sessions from the file now (durably), dropping any unwritten copy first.
    fn delete_now(&self, hashes: &[TokenHash]) {
        if hashes.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        let hashes = hashes.to_vec();
        // A commit waits for the disk (and for a batch being committed); let the
        // runtime move other work off this thread.
        let result = tokio::task::block_in_place(move || {
            let _order = lock(&shared.commit);
            {
                let mut pending = lock(&shared.pending);
                for h in &hashes {
                    pending.remove(h);
                }
            }
            delete(&shared.db, &hashes)
        });
        if let Err(e) = result {
            tracing::error!(path = %self.shared.path.display(), error = %e, "could not write a logout to the session store");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The file holds session hashes and groups: owner only.
fn restrict(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

/// Put every live session of the file into `memory`; expired ones are deleted.
fn load(db: &Database, memory: &MemoryStore) -> Result<usize, String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let mut expired = Vec::new();
    let mut loaded = 0;
    let mut last_used = std::collections::HashMap::new();
    match txn.open_table(LAST_USED) {
        Ok(table) => {
            for row in table.iter().map_err(|e| e.to_string())? {
                let (k, v) = row.map_err(|e| e.to_string())?;
                if let Ok(key) = <[u8; 32]>::try_from(k.value()) {
                    last_used.insert(key, v.value());
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.to_string()),
    }
    match txn.open_table(SESSIONS) {
        Ok(table) => {
            for row in table.iter().map_err(|e| e.to_string())? {
                let (k, v) = row.map_err(|e| e.to_string())?;
                let key: [u8; 32] = k
                    .value()
                    .try_into()
                    .map_err(|_| "a session key is not 32 bytes".to_string())?;
                let stored: Stored = serde_json::from_slice(v.value())
                    .map_err(|e| format!("a session record is not readable: {e}"))?;
                let (info, expires_at) = stored
                    .into_session()
                    .ok_or_else(|| "a session record names an unknown mechanism".to_string())?;
                // Never used since the login: idle since it was created.
                let used = last_used
                    .get(&key)
                    .map_or(info.created_at, |t| UNIX_EPOCH + Duration::from_secs(*t))
                    .max(info.created_at);
                if memory.restore(TokenHash(key), info, expires_at, used) {
                    loaded += 1;
                } else {
                    expired.push(TokenHash(key));
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.to_string()),
    }
    drop(txn);
    delete(db, &expired)?;
    Ok(loaded)
}

fn delete(db: &Database, hashes: &[TokenHash]) -> Result<(), String> {
    if hashes.is_empty() {
        return Ok(());
    }
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = txn.open_table(SESSIONS).map_err(|e| e.to_string())?;
        let mut used = txn.open_table(LAST_USED).map_err(|e| e.to_string())?;
        for h in hashes {
            table.remove(h.0.as_slice()).map_err(|e| e.to_string())?;
            used.remove(h.0.as_slice()).map_err(|e| e.to_string())?;
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

/// Write "used now" for these sessions (those still in the file).
fn touch(db: &Database, hashes: &[TokenHash]) -> Result<(), String> {
    if hashes.is_empty() {
        return Ok(());
    }
    let now = unix(SystemTime::now());
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let sessions = txn.open_table(SESSIONS).map_err(|e| e.to_string())?;
        let mut used = txn.open_table(LAST_USED).map_err(|e| e.to_string())?;
        for h in hashes {
            let live = sessions
                .get(h.0.as_slice())
                .map_err(|e| e.to_string())?
                .is_some();
            if live {
                used.insert(h.0.as_slice(), now)
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

/// New sessions and the evictions their logins made, in one transaction.
fn insert(db: &Database, rows: &Pending) -> Result<(), String> {
    if rows.is_empty() {
        return Ok(());
    }
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = txn.open_table(SESSIONS).map_err(|e| e.to_string())?;
        let mut used = txn.open_table(LAST_USED).map_err(|e| e.to_string())?;
        for (h, row) in rows {
            match row {
                Some(session) => {
                    let v = serde_json::to_vec(&Stored::new(&session.info, session.expires_at))
                        .expect("a session serialises");
                    table
                        .insert(h.0.as_slice(), v.as_slice())
                        .map_err(|e| e.to_string())?;
                }
                None => {
                    table.remove(h.0.as_slice()).map_err(|e| e.to_string())?;
                    used.remove(h.0.as_slice()).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

/// Expired sessions still in the file (the memory store forgets them on its own).
fn sweep(db: &Database) -> Result<usize, String> {
    let now = unix(SystemTime::now());
    let mut doomed = Vec::new();
    {
        let txn = db.begin_read().map_err(|e| e.to_string())?;
        let table = match txn.open_table(SESSIONS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(e.to_string()),
        };
        for row in table.iter().map_err(|e| e.to_string())? {
            let (k, v) = row.map_err(|e| e.to_string())?;
            let expired = serde_json::from_slice::<Stored>(v.value())
                .map(|s| s.expires <= now)
                .unwrap_or(true);
            if expired && let Ok(key) = <[u8; 32]>::try_from(k.value()) {
                doomed.push(TokenHash(key));
            }
        }
    }
    delete(db, &doomed)?;
    Ok(doomed.len())
}

impl Shared {
    /// Commit the next batch (and the last uses in `touched`): in order with the
    /// logouts, see [`Shared::commit`].
    fn commit_pending(&self, touched: &[TokenHash]) -> Result<(), String> {
        let _order = lock(&self.commit);
        let rows = std::mem::take(&mut *lock(&self.pending));
        insert(&self.db, &rows).and_then(|()| touch(&self.db, touched))
    }

    fn has_pending(&self) -> bool {
        !lock(&self.pending).is_empty()
    }

    fn take_touched(&self) -> Vec<TokenHash> {
        let mut t = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        t.drain().collect()
    }
}

/// Commit new logins in batches (at most [`BATCH`] after they were made), and sweep
/// expired sessions from the file now and then. Holds the store only while writing,
/// so dropping the [`FileStore`] closes the file.
async fn write_batches(shared: std::sync::Weak<Shared>, wake: Arc<tokio::sync::Notify>) {
    let mut last_sweep = tokio::time::Instant::now();
    let mut last_touch = tokio::time::Instant::now();
    loop {
        let waiting = shared.upgrade().is_some_and(|s| s.has_pending());
        if !waiting {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(TOUCH) => {}
            }
        }
        tokio::time::sleep(BATCH).await;
        let Some(s) = shared.upgrade() else { return };
        let sweep_due = last_sweep.elapsed() >= SWEEP;
        if sweep_due {
            last_sweep = tokio::time::Instant::now();
        }
        let touched = if last_touch.elapsed() >= TOUCH {
            last_touch = tokio::time::Instant::now();
            s.take_touched()
        } else {
            Vec::new()
        };
        let worker = s.clone();
        drop(s);
        let done = tokio::task::spawn_blocking(move || {
            let written = worker.commit_pending(&touched);
            let swept = if sweep_due {
                sweep(&worker.db).map(Some)
            } else {
                Ok(None)
            };
            (written, swept, worker.path.clone())
        })
        .await;
        match done {
            Ok((Err(e), _, path)) | Ok((_, Err(e), path)) => {
                tracing::error!(path = %path.display(), error = %e, "could not write to the session store");
            }
            Ok((Ok(()), Ok(Some(n)), _)) if n > 0 => {
                tracing::debug!(swept = n, "expired sessions removed from the store file");
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "the session store writer failed"),
        }
    }
}

/// At shutdown, logins not yet written are written now.
impl Drop for FileStore {
    fn drop(&mut self) {
        let touched = self.shared.take_touched();
        if let Err(e) = self.shared.commit_pending(&touched) {
            tracing::error!(path = %self.shared.path.display(), error = %e, "could not write the last logins to the session store");
        }
        self.wake.notify_one();
    }
}

/// Synchronous: everything is answered from memory (the file store also writes
/// its file), so these never wait on the network. The async [`SessionStore`]
/// impl calls them.
impl FileStore {
    pub fn create(&self, info: Arc<SessionInfo>, ttl: Duration) -> Result<Created, SessionError> {
        let created = self.memory.create(info, ttl)?;
        {
            // The user's oldest sessions made room: they end on disk in the same
            // transaction as the new one is written. Not at once, as a logout is: a
            // crash before the batch loses both the new session and the eviction,
            // which leaves the user exactly as before this login — never over the
            // bound. (Committing each eviction on its own cost a disk flush per
            // login once a user had reached the bound.)
            // An evicted session whose own write is still in the batch is taken out
            // of it: it was never on disk. (A session is written at most once, so
            // a write in the batch means it is not in the file yet.)
            let mut pending = lock(&self.shared.pending);
            pending.insert(created.token.hash, Some(created.session.clone()));
            for h in &created.evicted {
                if matches!(pending.get(h), Some(Some(_))) {
                    pending.remove(h);
                } else {
                    pending.insert(*h, None);
                }
            }
        }
        self.wake.notify_one();
        Ok(created)
    }

    pub fn get(&self, hash: &TokenHash) -> Option<Session> {
        let session = self.memory.get(hash)?;
        if self.shared.idle {
            self.shared
                .touched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(*hash);
        }
        Some(session)
    }

    pub fn revoke(&self, hash: &TokenHash) -> bool {
        let revoked = self.memory.revoke(hash);
        // Durable before the caller answers 204, even if memory no longer had it.
        self.delete_now(&[*hash]);
        revoked
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.memory.len()
    }

    pub fn list(&self, user: Option<&str>) -> Vec<SessionRecord> {
        self.memory.list(user)
    }

    pub fn revoke_where(&self, which: &Revoke) -> usize {
        let hashes = self.memory.revoke_hashes(which);
        self.delete_now(&hashes);
        hashes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(user: &str) -> Arc<SessionInfo> {
        Arc::new(SessionInfo {
            user: user.into(),
            mechanism: Mechanism::Password,
            groups: vec![Arc::from(user), Arc::from("analysts")].into(),
            labels: vec![Arc::from("apple")].into(),
            created_at: SystemTime::now(),
            peer: Some("127.0.0.1".parse().unwrap()),
        })
    }

    fn open(path: &Path) -> Result<FileStore, FileStoreError> {
        FileStore::open(path, None, SessionLimits::default())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sessions_survive_a_reopen_and_logouts_stay_logouts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.db");
        let (kept, gone) = {
            let store = open(&path).unwrap();
            let kept = store
                .create(info("alice"), Duration::from_secs(60))
                .unwrap();
            let gone = store.create(info("bob"), Duration::from_secs(60)).unwrap();
            tokio::time::sleep(BATCH * 3).await;
            assert!(store.revoke(&gone.token.hash));
            (kept.token.hash, gone.token.hash)
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let store = open(&path).unwrap();
        let s = store.get(&kept).expect("kept across the reopen");
        assert_eq!(s.info.user.as_ref(), "alice");
        assert_eq!(s.info.labels.len(), 1);
        assert!(store.get(&gone).is_none(), "a logout stays a logout");
        assert_eq!(store.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sessions_evicted_at_the_per_user_bound_stay_evicted_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.db");
        let limits = SessionLimits {
            per_user: 2,
            ..SessionLimits::default()
        };
        let ttl = Duration::from_secs(60);
        let (first, second, third, fourth) = {
            let store = FileStore::open(&path, None, limits).unwrap();
            let first = store.create(info("alice"), ttl).unwrap();
            tokio::time::sleep(BATCH * 3).await;
            let second = store.create(info("alice"), ttl).unwrap();
            // Evicts `first` (on disk) in the batch that writes `third`.
            let third = store.create(info("alice"), ttl).unwrap();
            assert!(third.evicted == vec![first.token.hash]);
            // Evicts `second` (whose own write may still be pending: written and deleted
            // in one transaction) and is written only at shutdown.
            let fourth = store.create(info("alice"), ttl).unwrap();
            assert!(fourth.evicted == vec![second.token.hash]);
            (first, second, third, fourth)
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let store = FileStore::open(&path, None, limits).unwrap();
        assert!(
            store.get(&first.token.hash).is_none(),
            "evicted stays evicted"
        );
        assert!(
            store.get(&second.token.hash).is_none(),
            "evicted stays evicted"
        );
        assert!(store.get(&third.token.hash).is_some());
        assert!(store.get(&fourth.token.hash).is_some());
        assert_eq!(store.len(), 2);
    }

    /// A logout that lands while the batch holding its login is being committed
    /// must not be undone by that commit (the session would be back after a
    /// restart). Logins and logouts are interleaved for a while so that some
    /// logouts fall between a batch taking its writes and committing them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn logouts_during_a_batch_commit_stay_logouts_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.db");
        let ttl = Duration::from_secs(60);
        let store = Arc::new(open(&path).unwrap());
        let (mut gone, mut logouts) = (Vec::new(), Vec::new());
        let started = std::time::Instant::now();
        while started.elapsed() < BATCH * 12 {
            let s = store.create(info("alice"), ttl).unwrap();
            let (st, hash) = (store.clone(), s.token.hash);
            // The logout is a task of its own, as a request's would be, up to a
            // batch and a half after its login.
            let after = Duration::from_micros(gone.len() as u64 * 7919 % 150_000);
            logouts.push(tokio::spawn(async move {
                tokio::time::sleep(after).await;
                st.revoke(&hash)
            }));
            gone.push(hash);
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        // Every logout done (each holds the store), then the store closed: the
        // batch writer may still hold the file for the commit it is in.
        for logout in logouts {
            logout.await.unwrap();
        }
        tokio::time::sleep(BATCH * 3).await;
        drop(store);
        let reopened = std::time::Instant::now();
        let store = loop {
            match open(&path) {
                Err(FileStoreError::InUse(_)) if reopened.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                other => break other.unwrap(),
            }
        };
        let back = gone.iter().filter(|h| store.get(h).is_some()).count();
        assert_eq!(
            back,
            0,
            "of {} logouts, {back} came back after a reopen",
            gone.len()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_open_of_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.db");
        let _first = open(&path).unwrap();
        let err = open(&path).err().expect("refused");
        assert!(matches!(err, FileStoreError::InUse(_)), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_file_is_an_error_naming_it_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = open(&path).err().expect("refused");
        assert!(matches!(err, FileStoreError::Unreadable(..)), "{err}");
        assert!(err.to_string().contains("sessions.db"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), vec![0x5a; 8192], "untouched");
    }
}

super::local_store!(FileStore);
