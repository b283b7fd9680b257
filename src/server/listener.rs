//! Accept loops, connection bound, TLS handshake, HTTP/1.1 + HTTP/2 serving and
//! graceful shutdown (the mini-redis shape: a semaphore bounds connections, a watch
//! channel tells every loop to stop, hyper-util's graceful watcher drains).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::Instrument;

use super::{AppState, ConnInfo, routes, tls};
use crate::audit;

pub async fn serve(
    state: Arc<AppState>,
    listeners: Vec<TcpListener>,
    shutdown: watch::Receiver<bool>,
) {
    let graceful = Arc::new(GracefulShutdown::new());
    let slots = Arc::new(Semaphore::new(state.config.system.max_connections));
    let mut loops = tokio::task::JoinSet::new();
    for listener in listeners {
        loops.spawn(accept_loop(
            state.clone(),
            listener,
            slots.clone(),
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

async fn accept_loop(
    state: Arc<AppState>,
    listener: TcpListener,
    slots: Arc<Semaphore>,
    graceful: Arc<GracefulShutdown>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        // Take a slot before accepting, so connections beyond the bound wait in the
        // kernel backlog instead of costing memory here.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("never closed"),
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
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let watcher = graceful.watcher();
        let span = tracing::info_span!("conn", peer = %peer);
        tokio::spawn(
            async move {
                state.pipeline.metrics.connection_opened();
                connection(&state, stream, peer, watcher).await;
                state.pipeline.metrics.connection_closed();
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
    let service = service_fn(move |req| {
        let state = svc_state.clone();
        let conn = conn.clone();
        async move { Ok::<_, std::convert::Infallible>(routes::handle(state, conn, req).await) }
    });
    let served = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = watcher.watch(served).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
