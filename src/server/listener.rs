//! Accept loops, connection bounds, TLS handshake, HTTP/1.1 + HTTP/2 serving and
//! graceful shutdown (the mini-redis shape: a semaphore bounds connections, a watch
//! channel tells every loop to stop, hyper-util's graceful watcher drains).
//!
//! Against clients that hold connections without using them (SPEC §9): each address
//! (IPv6: its /64) may hold `system.max_connections_per_address` connections, and a
//! connection with no request in progress is closed after `system.idle_timeout`.
//! The idle timer is ours, not hyper's: hyper-util's HTTP/1-or-2 sniffing has no
//! timer, `header_read_timeout` arms only once HTTP/1 is chosen, and an HTTP/2
//! connection with no stream has no limit at all — each of those held a slot forever.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tracing::Instrument;

use super::{AppState, ConnInfo, routes, tls};
use crate::audit;
use crate::quota::Quota;

pub async fn serve(
    state: Arc<AppState>,
    listeners: Vec<TcpListener>,
    shutdown: watch::Receiver<bool>,
) {
    let graceful = Arc::new(GracefulShutdown::new());
    let slots = Arc::new(Semaphore::new(state.config.system.max_connections));
    let per_address = Quota::new(usize::MAX, state.config.system.max_connections_per_address);
    let mut loops = tokio::task::JoinSet::new();
    for listener in listeners {
        loops.spawn(accept_loop(
            state.clone(),
            listener,
            Limits {
                slots: slots.clone(),
                per_address: per_address.clone(),
            },
            graceful.clone(),
            shutdown.clone(),
        ));
    }
    while loops.join_next().await.is_some() {}
    let graceful =
        Arc::try_unwrap(graceful).unwrap_or_else(|_| unreachable!("accept loops have ended"));
    let open = graceful.count();
    if open > 0 {
        tracing::info!(open, "draining connections");
    }
    let limit = Duration::from_secs(state.config.system.shutdown_timeout);
    if tokio::time::timeout(limit, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open after {} s; closing them",
            limit.as_secs()
        );
    }
}

/// The bounds every accept loop shares.
struct Limits {
    slots: Arc<Semaphore>,
    per_address: Arc<Quota>,
}

async fn accept_loop(
    state: Arc<AppState>,
    listener: TcpListener,
    limits: Limits,
    graceful: Arc<GracefulShutdown>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        // Take a slot before accepting, so connections beyond the bound wait in the
        // kernel backlog instead of costing memory here.
        let permit = tokio::select! {
            p = limits.slots.clone().acquire_owned() => p.expect("never closed"),
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        // Over its address's share: closed at once, before any TLS work is spent.
        let Some(address_slot) = limits.per_address.take(peer.ip()) else {
            state.pipeline.metrics.connection_cut("per_address_limit");
            tracing::debug!(%peer, "connection refused: system.max_connections_per_address reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let watcher = graceful.watcher();
        let span = tracing::info_span!("conn", peer = %peer);
        tokio::spawn(
            async move {
                state.pipeline.metrics.connection_opened();
                connection(&state, stream, peer, watcher).await;
                state.pipeline.metrics.connection_closed();
                drop(address_slot);
                drop(permit);
            }
            .instrument(span),
        );
    }
}

async fn connection(state: &Arc<AppState>, stream: TcpStream, peer: SocketAddr, watcher: Watcher) {
    let Some(tls) = state.tls.as_ref().map(|t| t.load_full()) else {
        let conn = Arc::new(ConnInfo::new(peer, Vec::new()));
        return http(state, stream, conn, watcher).await;
    };
    let limit = Duration::from_secs(state.config.system.handshake_timeout);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let accepted = tokio::time::timeout(limit, acceptor.accept(stream)).await;
    let stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            state.pipeline.metrics.handshake_failed();
            handshake_failed(&tls, peer, &e);
            return;
        }
        Err(_) => {
            state.pipeline.metrics.handshake_failed();
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    // Kept, not judged: the chain is checked at each login against the files loaded then.
    let chain = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let conn = Arc::new(ConnInfo::new(peer, chain));
    http(state, stream, conn, watcher).await
}

/// A refused client certificate is a failed certificate login: audit it as one.
fn handshake_failed(tls: &tls::TlsSetup, peer: SocketAddr, e: &std::io::Error) {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(err @ rustls::Error::InvalidCertificate(_)) => {
            tracing::warn!(error = %e, "client certificate refused");
            audit::login(
                peer,
                "certificate",
                None,
                "rejected",
                tls.refusal(err).reason,
            );
        }
        _ => tracing::debug!(error = %e, "TLS handshake failed"),
    }
}

async fn http<I>(state: &Arc<AppState>, io: I, conn: Arc<ConnInfo>, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let sys = &state.config.system;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(sys.request_timeout))
        .max_buf_size(sys.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(sys.max_header_bytes as u32)
        .max_concurrent_streams(128);
    let svc_state = state.clone();
    let activity = Arc::new(Activity::new());
    let svc_activity = activity.clone();
    let service = service_fn(move |req| {
        let state = svc_state.clone();
        let conn = conn.clone();
        let busy = svc_activity.begin();
        async move {
            let resp = routes::handle(state, conn, req).await;
            drop(busy);
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let served = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    let served = watcher.watch(served);
    tokio::pin!(served);
    let idle = Duration::from_secs(sys.idle_timeout);
    loop {
        tokio::select! {
            r = &mut served => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(activity.idle_deadline(idle)) => {
                if activity.idle_for(idle) {
                    // Dropping the connection closes the socket; nothing is in progress.
                    state.pipeline.metrics.connection_cut("idle");
                    tracing::debug!("closing a connection idle for {} s", idle.as_secs());
                    return;
                }
            }
        }
    }
}

/// Whether a connection is in use: requests in progress, and when the last one ended.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `start` at which the last request ended (0: none yet).
    last_ms: AtomicU64,
}

/// A request in progress; its end restarts the idle timer.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        a.last_ms
            .store(a.start.elapsed().as_millis() as u64, Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    fn idle_deadline(&self, idle: Duration) -> Instant {
        let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Acquire));
        if self.in_flight.load(Ordering::Acquire) > 0 {
            Instant::now() + idle
        } else {
            last + idle
        }
    }

    fn idle_for(&self, idle: Duration) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && Instant::now() >= self.idle_deadline(idle)
    }
}
