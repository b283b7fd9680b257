//! The bounded pool every blocking C call (PAM, GSSAPI, NSS) goes through.
//!
//! tokio's own blocking pool grows to 512 threads; a slow LDAP server behind NSS
//! would happily eat all of them. A semaphore sized by `system.blocking_threads`
//! bounds the calls in flight, and a short queue timeout turns overload into a 503
//! instead of an unbounded pile-up.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

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
    slots: Arc<Semaphore>,
    queue_timeout: Duration,
}

impl BlockingPool {
    pub fn new(size: usize, queue_timeout: Duration) -> Self {
        BlockingPool {
            slots: Arc::new(Semaphore::new(size.max(1))),
            queue_timeout,
        }
    }

    /// Start a long-lived blocking job (a PAM conversation) that reports through its
    /// own channels; the slot is held until `f` returns.
    pub async fn spawn<F>(&self, f: F) -> Result<(), PoolError>
    where
        F: FnOnce() + Send + 'static,
    {
        let permit = self.acquire().await?;
        tokio::task::spawn_blocking(move || {
            f();
            drop(permit);
        });
        Ok(())
    }

    async fn acquire(&self) -> Result<tokio::sync::OwnedSemaphorePermit, PoolError> {
        Ok(
            tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned())
                .await
                .map_err(|_| PoolError::Busy)?
                .expect("the semaphore is never closed"),
        )
    }

    pub async fn run<T, F>(&self, f: F) -> Result<T, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let permit = self.acquire().await?;
        tokio::task::spawn_blocking(move || {
            let out = f();
            drop(permit);
            out
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "blocking call failed");
            PoolError::Panicked
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_pool_answers_busy_after_the_queue_timeout() {
        let pool = BlockingPool::new(1, Duration::from_millis(50));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let held = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(move || rx.recv().ok()).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.run(|| 1).await, Err(PoolError::Busy));
        tx.send(()).unwrap();
        assert!(held.await.unwrap().is_ok());
        assert_eq!(pool.run(|| 2).await, Ok(2));
    }
}
