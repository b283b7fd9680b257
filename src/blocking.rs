//! Bounded pools for blocking C calls, one per kind (SPEC §9): PAM, NSS, GSSAPI.
//!
//! tokio's own blocking pool grows to 512 threads; a slow LDAP server behind NSS
//! would happily eat all of them. A semaphore per kind bounds the calls in flight,
//! and a short queue timeout turns overload into a 503 instead of a pile-up. One
//! pool per kind, so a PAM conversation waiting for a person never delays the
//! millisecond NSS and GSSAPI calls of certificate and Kerberos logins.
//!
//! A call that holds its slot longer than [`SLOW_CALL`] (an LDAP server that does
//! not answer, a hung PAM module) is reported while it is still held: a warning in
//! the log and `portcullis_blocking_slow_calls_total{pool}`. Time a PAM transaction
//! spends waiting for the client's answer does not count (see [`SlotClock`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// How long one blocking call may hold a slot before it is reported.
pub const SLOW_CALL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    /// Every slot stayed busy for the whole queue timeout.
    #[error("the server is busy; try again shortly")]
    Busy,
    /// The blocking call panicked; the panic is logged, the request fails.
    #[error("internal error in a blocking call")]
    Panicked,
}

#[derive(Clone)]
pub struct BlockingPool {
    name: &'static str,
    slots: Arc<Semaphore>,
    queue_timeout: Duration,
    metrics: Option<Arc<Metrics>>,
    /// Set by [`BlockingPool::with_dedicated_threads`]: `run` jobs go to this pool's
    /// own threads instead of tokio's blocking pool.
    dedicated: Option<Arc<JobQueue>>,
}

type Job = Box<dyn FnOnce() + Send>;

/// The jobs waiting for a dedicated thread. A mutex and a condition variable rather
/// than a channel: channels spin (`sched_yield`) before they sleep, which on a busy
/// core only takes time from the async worker that has the next request.
#[derive(Default)]
struct JobQueue {
    jobs: std::sync::Mutex<std::collections::VecDeque<Job>>,
    ready: std::sync::Condvar,
}

impl JobQueue {
    fn push(&self, job: Job) {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(job);
        self.ready.notify_one();
    }

    fn pop(&self) -> Job {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(job) = jobs.pop_front() {
                return job;
            }
            jobs = self.ready.wait(jobs).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Lets a long-lived job say when it is waiting for someone else (a PAM prompt
/// waiting for the client), so only its own time counts as "held too long".
#[derive(Default)]
pub struct SlotClock {
    /// Milliseconds since `base` at which the current active stretch began.
    active_since: AtomicU64,
    parked: AtomicBool,
    done: AtomicBool,
    base: std::sync::OnceLock<Instant>,
}

impl SlotClock {
    fn start(&self) {
        let _ = self.base.set(Instant::now());
    }

    fn now_ms(&self) -> u64 {
        self.base
            .get()
            .map_or(0, |b| b.elapsed().as_millis() as u64)
    }

    /// The job is waiting for the client; its slot is not "busy".
    pub fn park(&self) {
        self.parked.store(true, Ordering::Release);
    }

    /// The job is working again; a new active stretch begins.
    pub fn resume(&self) {
        self.active_since.store(self.now_ms(), Ordering::Release);
        self.parked.store(false, Ordering::Release);
    }

    fn active_for(&self) -> Option<Duration> {
        if self.parked.load(Ordering::Acquire) {
            return None;
        }
        let since = self.active_since.load(Ordering::Acquire);
        Some(Duration::from_millis(self.now_ms().saturating_sub(since)))
    }
}

impl BlockingPool {
    pub fn new(name: &'static str, size: usize, queue_timeout: Duration) -> Self {
        BlockingPool {
            name,
            slots: Arc::new(Semaphore::new(size.max(1))),
            queue_timeout,
            metrics: None,
            dedicated: None,
        }
    }

    /// Run `run` jobs on `size` threads of this pool's own, started now and living as
    /// long as the process.
    ///
    /// Why: tokio's blocking pool hands each job to whichever of its threads is free,
    /// and a thread that has been idle a while is retired, so a call cannot keep
    /// per-thread state. The GSSAPI acceptor keeps an acquired credential per thread
    /// (see `auth::kerberos::acceptor`); its threads must stay. Admission is unchanged:
    /// the semaphore has as many slots as there are threads, so a job that got a slot
    /// always finds a thread waiting.
    pub fn with_dedicated_threads(mut self) -> Self {
        let size = self.slots.available_permits();
        let queue = Arc::new(JobQueue::default());
        for i in 0..size {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{}-{i}", self.name))
                .spawn(move || {
                    loop {
                        let job = queue.pop();
                        // A panic drops the job's reply sender: the caller sees
                        // `Panicked`, and this thread goes on.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(pool = self.name, error = %e, "cannot start a blocking thread; using tokio's blocking pool");
                return self;
            }
        }
        self.dedicated = Some(queue);
        self
    }

    /// Report slow calls and slots in use to these metrics.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Start a long-lived blocking job (a PAM conversation) that reports through its
    /// own channels; the slot is held until `f` returns.
    pub async fn spawn<F>(&self, f: F) -> Result<(), PoolError>
    where
        F: FnOnce(Arc<SlotClock>) + Send + 'static,
    {
        let permit = self.acquire().await?;
        let clock = Arc::new(SlotClock::default());
        clock.start();
        let job_clock = clock.clone();
        let handle = tokio::task::spawn_blocking(move || {
            f(job_clock.clone());
            job_clock.done.store(true, Ordering::Release);
            drop(permit);
        });
        let pool = self.clone();
        tokio::spawn(async move { pool.watch(handle, clock).await });
        Ok(())
    }

    async fn acquire(&self) -> Result<Held, PoolError> {
        let permit = tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| {
                tracing::warn!(pool = self.name, "blocking pool full; answering 503");
                PoolError::Busy
            })?
            .expect("the semaphore is never closed");
        if let Some(m) = &self.metrics {
            m.blocking_slot_taken(self.name);
        }
        Ok(Held {
            _permit: permit,
            pool: self.name,
            metrics: self.metrics.clone(),
        })
    }

    fn report_slow(&self, held: Duration) {
        tracing::warn!(
            pool = self.name,
            held_s = held.as_secs(),
            "a blocking {} call has held its slot for over {} s; check the services behind it (bound SSSD/LDAP timeouts)",
            self.name,
            SLOW_CALL.as_secs()
        );
        if let Some(m) = &self.metrics {
            m.blocking_slow(self.name);
        }
    }

    /// Report the job once if an active stretch outlasts [`SLOW_CALL`].
    async fn watch(&self, mut handle: tokio::task::JoinHandle<()>, clock: Arc<SlotClock>) {
        let mut reported = false;
        loop {
            tokio::select! {
                r = &mut handle => {
                    if let Err(e) = r {
                        tracing::error!(pool = self.name, error = %e, "blocking job failed");
                    }
                    return;
                }
                _ = tokio::time::sleep(SLOW_CALL / 5) => {}
            }
            if clock.done.load(Ordering::Acquire) {
                continue;
            }
            match clock.active_for() {
                Some(t) if t >= SLOW_CALL && !reported => {
                    reported = true;
                    self.report_slow(t);
                }
                // A new active stretch may be reported again.
                None => reported = false,
                _ => {}
            }
        }
    }

    pub async fn run<T, F>(&self, f: F) -> Result<T, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let permit = self.acquire().await?;
        let started = Instant::now();
        if let Some(jobs) = &self.dedicated {
            let (tx, mut rx) = tokio::sync::oneshot::channel();
            let job: Job = Box::new(move || {
                let out = f();
                drop(permit);
                let _ = tx.send(out);
            });
            jobs.push(job);
            let joined = tokio::select! {
                r = &mut rx => r,
                _ = tokio::time::sleep(SLOW_CALL) => {
                    self.report_slow(started.elapsed());
                    rx.await
                }
            };
            return joined.map_err(|_| {
                tracing::error!(pool = self.name, "blocking call panicked");
                PoolError::Panicked
            });
        }
        let mut handle = tokio::task::spawn_blocking(move || {
            let out = f();
            drop(permit);
            out
        });
        let joined = tokio::select! {
            r = &mut handle => r,
            _ = tokio::time::sleep(SLOW_CALL) => {
                self.report_slow(started.elapsed());
                handle.await
            }
        };
        joined.map_err(|e| {
            tracing::error!(pool = self.name, error = %e, "blocking call failed");
            PoolError::Panicked
        })
    }
}

/// A taken slot; returned (and the gauge lowered) when the job ends.
struct Held {
    _permit: tokio::sync::OwnedSemaphorePermit,
    pool: &'static str,
    metrics: Option<Arc<Metrics>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            m.blocking_slot_returned(self.pool);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_pool_answers_busy_after_the_queue_timeout() {
        let pool = BlockingPool::new("test", 1, Duration::from_millis(50));
        busy_while_its_one_slot_is_held(&pool).await;
        assert_eq!(pool.run(|| 2).await, Ok(2));
    }

    /// Holds the pool's one slot with a job and checks that another job gets `Busy`
    /// after the queue timeout; the held job then completes.
    async fn busy_while_its_one_slot_is_held(pool: &BlockingPool) {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let held = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(move || rx.recv().ok()).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.run(|| 1).await, Err(PoolError::Busy));
        tx.send(()).unwrap();
        assert!(held.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn dedicated_threads_keep_their_state_survive_panics_and_stay_bounded() {
        let pool =
            BlockingPool::new("krbtest", 1, Duration::from_millis(50)).with_dedicated_threads();
        let name = || std::thread::current().name().map(str::to_string);
        assert_eq!(pool.run(name).await, Ok(Some("krbtest-0".into())));
        thread_local!(static CALLS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
        let count = || {
            CALLS.with(|c| {
                c.set(c.get() + 1);
                c.get()
            })
        };
        assert_eq!(pool.run(count).await, Ok(1));
        assert_eq!(
            pool.run(count).await,
            Ok(2),
            "the same thread, its state kept"
        );
        assert_eq!(
            pool.run(|| panic!("in a job")).await,
            Err::<(), _>(PoolError::Panicked)
        );
        assert_eq!(
            pool.run(count).await,
            Ok(3),
            "the thread outlived the panic"
        );
        busy_while_its_one_slot_is_held(&pool).await;
    }

    #[tokio::test]
    async fn a_full_dedicated_pool_leaves_the_other_pools_alone() {
        let gssapi =
            BlockingPool::new("gssapi", 1, Duration::from_millis(50)).with_dedicated_threads();
        let nss = BlockingPool::new("nss", 1, Duration::from_millis(50));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let held = tokio::spawn({
            let gssapi = gssapi.clone();
            async move { gssapi.run(move || rx.recv().ok()).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            gssapi.run(|| 1).await,
            Err(PoolError::Busy),
            "the flood is refused"
        );
        assert_eq!(nss.run(|| 3).await, Ok(3), "others are not");
        tx.send(()).unwrap();
        assert!(held.await.unwrap().is_ok());
        assert_eq!(gssapi.run(|| 4).await, Ok(4), "and it recovers");
    }

    #[tokio::test]
    async fn pools_do_not_share_slots() {
        let pam = BlockingPool::new("pam", 1, Duration::from_millis(50));
        let nss = BlockingPool::new("nss", 1, Duration::from_millis(50));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        pam.spawn(move |_| {
            let _ = rx.recv();
        })
        .await
        .unwrap();
        assert_eq!(
            nss.run(|| 3).await,
            Ok(3),
            "a parked PAM job leaves NSS alone"
        );
        tx.send(()).unwrap();
    }

    #[tokio::test]
    async fn slow_calls_are_counted_while_they_hold_the_slot() {
        let metrics = Arc::new(Metrics::new());
        let pool =
            BlockingPool::new("nss", 1, Duration::from_secs(1)).with_metrics(metrics.clone());
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let job = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(move || rx.recv().ok()).await }
        });
        tokio::time::sleep(SLOW_CALL + Duration::from_millis(300)).await;
        let text = metrics.render(0);
        assert!(
            text.contains(r#"portcullis_blocking_slow_calls_total{pool="nss"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"portcullis_blocking_in_use{pool="nss"} 1"#),
            "{text}"
        );
        tx.send(()).unwrap();
        job.await.unwrap().unwrap();
        let text = metrics.render(0);
        assert!(
            text.contains(r#"portcullis_blocking_in_use{pool="nss"} 0"#),
            "{text}"
        );
    }
}
