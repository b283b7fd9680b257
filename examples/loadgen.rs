//! A small HTTPS load generator for benchmarking the daemon (see scripts/bench).
//!
//!   # certificate logins: every request a new TCP + TLS connection with a client cert
//!   cargo run --release --example loadgen -- --mode handshake \
//!       --url https://127.0.0.1:4367/v1/login --ca ca.pem --cert alice.pem --key alice.key
//!
//!   # session checks: N connections, each sending requests back to back
//!   cargo run --release --example loadgen -- --mode keepalive --concurrency 8 \
//!       --url https://127.0.0.1:4367/v1/session --ca ca.pem --header "Authorization: Bearer pcs_…"
//!
//!   # password logins on kept-alive connections (no client certificate)
//!   cargo run --release --example loadgen -- --mode keepalive --method POST \
//!       --url https://127.0.0.1:4367/v1/login --ca ca.pem --header "Authorization: Basic cGNhbGljZTo…"
//!
//!   # Kerberos logins: a fresh SPNEGO token (AP-REQ) from the default ccache per request
//!   cargo run --release --example loadgen -- --mode keepalive --method POST \
//!       --url https://localhost:4367/v1/login --ca ca.pem --negotiate HTTP@localhost
//!
//! Prints one line: 2xx responses per second, p50 and p99 latency of those responses,
//! and the error count (transport failures and non-2xx answers); `--json` prints the
//! same as one JSON object; `--latencies FILE` appends every 2xx latency (µs, one a
//! line) so that a script can pool several runs. In handshake mode the latency covers
//! TCP connect, the TLS handshake and the request; TLS session resumption is off
//! unless `--resume`, so every request pays a full handshake.
//!
//! With `--negotiate SPN` every request carries `Authorization: Negotiate <base64>`
//! with a new initiator context's first token (GSSAPI, the same calls as
//! `portcullis login --kerberos`). Making the token blocks (it reads the credential
//! cache; after the first request the service ticket is in the cache, so it is a
//! local operation), so it runs on tokio's blocking threads, and each worker makes the
//! token for its next request while the current one is in flight: the latency is
//! the server's alone, and a token is never older than one request.

use std::path::PathBuf;

#[path = "support/measure.rs"]
mod measure;
use measure::{cpu_seconds, percentile, write_latencies};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use libgssapi::context::{ClientCtx, CtxFlags};
use libgssapi::name::Name;
use libgssapi::oid::{
    GSS_MECH_KRB5, GSS_MECH_SPNEGO, GSS_NT_HOSTBASED_SERVICE, GSS_NT_KRB5_PRINCIPAL,
};
use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// A new TCP + TLS connection for every request.
    Handshake,
    /// `--concurrency` connections, each sending requests in a loop.
    Keepalive,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Kx {
    X25519,
    P256,
    X25519mlkem768,
}

#[derive(Parser, Debug)]
#[command(about = "HTTPS load generator for portcullis benchmarks")]
struct Args {
    /// Target URL, https:// (or http://)
    #[arg(long)]
    url: String,
    /// HTTP method [default: POST in handshake mode, GET in keepalive mode]
    #[arg(long)]
    method: Option<String>,
    /// CA bundle that signed the server certificate (default: the system store)
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) to present
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Private key of --cert (PEM)
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Extra request header "Name: value"; repeatable
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Requests in flight (one connection each)
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Seconds to run
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    #[arg(long, value_enum, default_value_t = Mode::Handshake)]
    mode: Mode,
    /// Print the result as one JSON object
    #[arg(long)]
    json: bool,
    /// Runtime worker threads [default: one per CPU]
    #[arg(long)]
    threads: Option<usize>,
    /// Offer only this TLS key exchange group [default: rustls's list, X25519MLKEM768 first]
    #[arg(long, value_enum)]
    kx: Option<Kx>,
    /// Allow TLS session resumption between handshake-mode connections
    #[arg(long)]
    resume: bool,
    /// Send "Authorization: Negotiate <token>" with a fresh GSSAPI token for this
    /// service per request: HTTP@host, HTTP/host or HTTP/host@REALM
    #[arg(long, value_name = "SPN")]
    negotiate: Option<String>,
    /// Append each 2xx response's latency in µs, one a line (to pool several runs)
    #[arg(long, value_name = "FILE")]
    latencies: Option<PathBuf>,
    /// Send "Authorization: Bearer <token>" with the next token of this file (one a
    /// line) per request, round robin: checks of many distinct sessions
    #[arg(long, value_name = "FILE", conflicts_with = "negotiate")]
    bearer_file: Option<PathBuf>,
    /// Mechanism of the --negotiate tokens
    #[arg(long, value_enum, default_value_t = NegotiateMech::Spnego, requires = "negotiate")]
    negotiate_mech: NegotiateMech,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum NegotiateMech {
    Spnego,
    Krb5,
}

/// Where the `Authorization: Negotiate` tokens come from.
struct Negotiate {
    spn: String,
    name_type: &'static libgssapi::oid::Oid,
    mech: &'static libgssapi::oid::Oid,
}

impl Negotiate {
    fn new(spn: &str, mech: NegotiateMech) -> Negotiate {
        // The same reading of the name as `portcullis login --kerberos --spn`.
        let (spn, name_type) = match (spn.split_once('/'), spn.contains('@')) {
            (Some(_), true) => (spn.to_string(), &GSS_NT_KRB5_PRINCIPAL),
            (Some((service, host)), false) => {
                (format!("{service}@{host}"), &GSS_NT_HOSTBASED_SERVICE)
            }
            (None, _) => (spn.to_string(), &GSS_NT_HOSTBASED_SERVICE),
        };
        let mech = match mech {
            NegotiateMech::Spnego => &GSS_MECH_SPNEGO,
            NegotiateMech::Krb5 => &GSS_MECH_KRB5,
        };
        Negotiate {
            spn,
            name_type,
            mech,
        }
    }

    /// A new initiator context's first token, as a header value. Blocks.
    fn header(&self) -> Result<HeaderValue, String> {
        let target = Name::new(self.spn.as_bytes(), Some(self.name_type))
            .map_err(|e| format!("service name {}: {e}", self.spn))?;
        let mut ctx = ClientCtx::new(None, target, CtxFlags::GSS_C_MUTUAL_FLAG, Some(self.mech));
        let token = ctx
            .step(None, None)
            .map_err(|e| format!("GSSAPI token for {} (kinit? KRB5CCNAME?): {e}", self.spn))?
            .ok_or("GSSAPI produced no token")?;
        HeaderValue::from_str(&format!("Negotiate {}", STANDARD.encode(&*token)))
            .map_err(|e| e.to_string())
    }
}

/// Everything a worker needs to open a connection and build a request.
struct Target {
    host: String,
    port: u16,
    authority: String,
    path: String,
    method: Method,
    headers: HeaderMap,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Protocol, cipher suite and key exchange of the first TLS connection.
    tls_info: OnceLock<String>,
    negotiate: Option<Arc<Negotiate>>,
    /// `--bearer-file`'s headers and the index of the next one.
    bearers: Vec<HeaderValue>,
    next_bearer: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct Stats {
    /// Latencies of 2xx responses, in microseconds.
    latencies: Vec<u32>,
    errors: u64,
    reconnects: u64,
    samples: Vec<String>,
    started: Option<Instant>,
    ended: Option<Instant>,
}

impl Stats {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.samples.len() < 3 && !self.samples.contains(&what) {
            self.samples.push(what);
        }
    }

    fn record(&mut self, status: u16, took: Duration) {
        if (200..300).contains(&status) {
            let us = took.as_micros();
            self.latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
        } else {
            self.error(format!("HTTP {status}"));
        }
    }
}

type Sender = SendRequest<Full<Bytes>>;
/// Drives a connection; polled in the same task as the requests (`tokio::join!`), so
/// a request does not cost a wake-up of another task, which on a small machine
/// would make the load generator heavier than the servers it measures.
type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("loadgen: {e}");
        std::process::exit(2);
    }
}

fn run(args: Args) -> Result<(), String> {
    if args.concurrency == 0 || args.duration.is_nan() || args.duration <= 0.0 {
        return Err("--concurrency and --duration must be positive".into());
    }
    let target = Arc::new(target(&args)?);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build().map_err(|e| e.to_string())?;
    let duration = Duration::from_secs_f64(args.duration);
    let cpu_before = cpu_seconds();
    let stats = rt.block_on(async {
        let start = Arc::new(tokio::sync::Barrier::new(args.concurrency));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..args.concurrency {
            let (target, start) = (target.clone(), start.clone());
            match args.mode {
                Mode::Handshake => workers.spawn(handshake_worker(target, start, duration)),
                Mode::Keepalive if target.negotiate.is_none() => {
                    workers.spawn(raw::keepalive_worker(target, start, duration))
                }
                Mode::Keepalive => workers.spawn(keepalive_worker(target, start, duration)),
            };
        }
        let mut all = Vec::new();
        while let Some(r) = workers.join_next().await {
            all.push(r.map_err(|e| format!("worker failed: {e}"))?);
        }
        Ok::<_, String>(all)
    })?;
    let cpu = cpu_seconds() - cpu_before;
    report(&args, &target, stats, cpu)
}

fn target(args: &Args) -> Result<Target, String> {
    let uri: Uri = args
        .url
        .parse()
        .map_err(|e| format!("--url {}: {e}", args.url))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("--url {} must be http:// or https://", args.url)),
    };
    let host = uri
        .host()
        .ok_or_else(|| format!("--url {} has no host", args.url))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_else(|| host.clone());
    let path = uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let method = match &args.method {
        Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("--method {m} is not an HTTP method"))?,
        None if args.mode == Mode::Handshake => Method::POST,
        None => Method::GET,
    };
    let mut headers = HeaderMap::new();
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("--header {h:?} is not \"Name: value\""))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("--header {h:?}: bad name"))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("--header {h:?}: bad value"))?;
        headers.append(name, value);
    }
    headers.insert(
        header::HOST,
        HeaderValue::from_str(&authority).map_err(|e| e.to_string())?,
    );
    let tls = if https {
        let config = tls_config(args)?;
        let name = ServerName::try_from(host.clone())
            .map_err(|_| format!("{host} is not a valid server name"))?;
        Some((TlsConnector::from(Arc::new(config)), name))
    } else {
        None
    };
    Ok(Target {
        host,
        port,
        authority,
        path,
        method,
        headers,
        tls,
        tls_info: OnceLock::new(),
        negotiate: args
            .negotiate
            .as_deref()
            .map(|spn| Arc::new(Negotiate::new(spn, args.negotiate_mech))),
        bearers: match &args.bearer_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("--bearer-file {}: {e}", path.display()))?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|t| HeaderValue::from_str(&format!("Bearer {}", t.trim())))
                .collect::<Result<_, _>>()
                .map_err(|_| "--bearer-file: a line is not a header value".to_string())?,
            None => Vec::new(),
        },
        next_bearer: std::sync::atomic::AtomicUsize::new(0),
    })
}

fn tls_config(args: &Args) -> Result<ClientConfig, String> {
    let read_certs = |p: &PathBuf| {
        CertificateDer::pem_file_iter(p)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    match &args.ca {
        Some(ca) => {
            for c in read_certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if let Some(kx) = args.kx {
        use rustls::crypto::aws_lc_rs::kx_group;
        provider.kx_groups = vec![match kx {
            Kx::X25519 => kx_group::X25519,
            Kx::P256 => kx_group::SECP256R1,
            Kx::X25519mlkem768 => kx_group::X25519MLKEM768,
        }];
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{}: {e}", cert.display()))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !args.resume {
        config.resumption = Resumption::disabled();
    }
    Ok(config)
}

/// TCP (+ TLS) + HTTP/1.1 handshake.
async fn connect(target: &Target) -> Result<(Sender, Driver), String> {
    http1(open(target).await?).await
}

/// A byte stream to the target, TLS or not.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// TCP (+ TLS).
async fn open(target: &Target) -> Result<Box<dyn Io>, String> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("connect {}: {e}", target.authority))?;
    let _ = tcp.set_nodelay(true);
    match &target.tls {
        Some((connector, name)) => {
            let tls = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            if target.tls_info.get().is_none() {
                let c = tls.get_ref().1;
                let name = |v: Option<String>| v.unwrap_or_else(|| "?".into());
                let _ = target.tls_info.set(format!(
                    "{} {} {}",
                    name(c.protocol_version().map(|v| format!("{v:?}"))),
                    name(
                        c.negotiated_cipher_suite()
                            .map(|s| format!("{:?}", s.suite()))
                    ),
                    name(
                        c.negotiated_key_exchange_group()
                            .map(|g| format!("{:?}", g.name()))
                    ),
                ));
            }
            Ok(Box::new(tls))
        }
        None => Ok(Box::new(tcp)),
    }
}

async fn http1<I>(io: I) -> Result<(Sender, Driver), String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    Ok((
        sender,
        Box::pin(async move {
            let _ = conn.await;
        }),
    ))
}

/// Makes the `Authorization: Negotiate` header of a worker's next request while the
/// current one is in flight (one token ahead, so none waits long enough to go stale).
struct Tokens {
    negotiate: Option<Arc<Negotiate>>,
    next: Option<tokio::task::JoinHandle<Result<HeaderValue, String>>>,
}

impl Tokens {
    fn new(target: &Target) -> Tokens {
        let mut t = Tokens {
            negotiate: target.negotiate.clone(),
            next: None,
        };
        t.prefetch();
        t
    }

    fn prefetch(&mut self) {
        if let Some(n) = &self.negotiate {
            let n = n.clone();
            self.next = Some(tokio::task::spawn_blocking(move || n.header()));
        }
    }

    /// The header for the request about to be sent (None without --negotiate); starts
    /// making the one after it.
    async fn take(&mut self) -> Result<Option<HeaderValue>, String> {
        let Some(next) = self.next.take() else {
            return Ok(None);
        };
        let header = next.await.map_err(|e| format!("token task: {e}"))?;
        self.prefetch();
        header.map(Some)
    }
}

/// One request on an open connection; the status once the whole body is read.
async fn request(
    sender: &mut Sender,
    target: &Target,
    authorization: Option<HeaderValue>,
) -> Result<u16, String> {
    let mut req = Request::builder()
        .method(target.method.clone())
        .uri(target.path.as_str())
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    *req.headers_mut() = target.headers.clone();
    let authorization = authorization.or_else(|| {
        (!target.bearers.is_empty()).then(|| {
            let i = target
                .next_bearer
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            target.bearers[i % target.bearers.len()].clone()
        })
    });
    if let Some(value) = authorization {
        req.headers_mut().insert(header::AUTHORIZATION, value);
    }
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?;
    Ok(status)
}

async fn handshake_worker(
    target: Arc<Target>,
    start: Arc<tokio::sync::Barrier>,
    duration: Duration,
) -> Stats {
    let mut stats = Stats::default();
    let mut tokens = Tokens::new(&target);
    start.wait().await;
    let started = Instant::now();
    let deadline = started + duration;
    stats.started = Some(started);
    while Instant::now() < deadline {
        let authorization = match tokens.take().await {
            Ok(a) => a,
            Err(e) => {
                stats.error(e);
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let began = Instant::now();
        let result = match connect(&target).await {
            Ok((sender, driver)) => {
                let exchange = async {
                    let mut sender = sender;
                    let status = request(&mut sender, &target, authorization).await?;
                    // Dropping the sender lets the driver close the connection.
                    Ok((status, began.elapsed()))
                };
                tokio::join!(exchange, driver).0
            }
            Err(e) => Err(e),
        };
        match result {
            Ok((status, took)) => stats.record(status, took),
            Err(e) => {
                stats.error(e);
                // Do not spin on a refused connection.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    stats.ended = Some(Instant::now());
    stats
}

/// A keep-alive worker's first connection, made before the clock starts (this mode
/// measures requests, not handshakes); `None` (counted) if it failed.
async fn first_connection<C>(
    stats: &mut Stats,
    connect: impl Future<Output = Result<C, String>>,
) -> Option<C> {
    connect.await.map_err(|e| stats.error(e)).ok()
}

/// The connection a keep-alive worker uses next: its first one, or a new one
/// (counted as a reconnect); `None` after a failed connect (counted, after a pause).
async fn next_connection<C>(
    first: &mut Option<C>,
    stats: &mut Stats,
    connect: impl Future<Output = Result<C, String>>,
) -> Option<C> {
    if let Some(c) = first.take() {
        return Some(c);
    }
    match connect.await {
        Ok(c) => {
            stats.reconnects += 1;
            Some(c)
        }
        Err(e) => {
            stats.error(e);
            tokio::time::sleep(Duration::from_millis(5)).await;
            None
        }
    }
}

async fn keepalive_worker(
    target: Arc<Target>,
    start: Arc<tokio::sync::Barrier>,
    duration: Duration,
) -> Stats {
    let mut stats = Stats::default();
    let mut tokens = Tokens::new(&target);
    let mut first = first_connection(&mut stats, connect(&target)).await;
    start.wait().await;
    let started = Instant::now();
    let deadline = started + duration;
    stats.started = Some(started);
    while Instant::now() < deadline {
        let Some((sender, driver)) =
            next_connection(&mut first, &mut stats, connect(&target)).await
        else {
            continue;
        };
        let stats = &mut stats;
        let target = &target;
        let tokens = &mut tokens;
        let requests = async move {
            let mut sender = sender;
            while Instant::now() < deadline {
                // The server may close a used-up connection (nginx's
                // keepalive_requests): that is a reconnect, not a failed request.
                if sender.ready().await.is_err() {
                    return;
                }
                let authorization = match tokens.take().await {
                    Ok(a) => a,
                    Err(e) => {
                        stats.error(e);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                };
                let began = Instant::now();
                match request(&mut sender, target, authorization).await {
                    Ok(status) => stats.record(status, began.elapsed()),
                    Err(e) => return stats.error(e),
                }
            }
        };
        tokio::join!(requests, driver);
    }
    stats.ended = Some(Instant::now());
    stats
}

fn report(args: &Args, target: &Target, stats: Vec<Stats>, cpu: f64) -> Result<(), String> {
    let started = stats.iter().filter_map(|s| s.started).min();
    let ended = stats.iter().filter_map(|s| s.ended).max();
    let elapsed = match (started, ended) {
        (Some(s), Some(e)) => e.duration_since(s).as_secs_f64(),
        _ => args.duration,
    };
    let mut latencies: Vec<u32> = stats
        .iter()
        .flat_map(|s| s.latencies.iter().copied())
        .collect();
    latencies.sort_unstable();
    if let Some(path) = &args.latencies {
        write_latencies(path, &latencies).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let ok = latencies.len();
    let errors: u64 = stats.iter().map(|s| s.errors).sum();
    let reconnects: u64 = stats.iter().map(|s| s.reconnects).sum();
    let rate = ok as f64 / elapsed;
    let (p50, p99) = (
        percentile(&latencies, 0.50, 1000.0),
        percentile(&latencies, 0.99, 1000.0),
    );
    // The load generator's own CPU per answered request: on a machine it shares with
    // the server, this is the part of the CPU the server did not get.
    let cpu_us = if ok > 0 { cpu * 1e6 / ok as f64 } else { 0.0 };
    let tls = target.tls_info.get().cloned().unwrap_or_else(|| "-".into());
    let mode = match args.mode {
        Mode::Handshake => "handshake",
        Mode::Keepalive => "keepalive",
    };
    let mut samples: Vec<&String> = stats.iter().flat_map(|s| s.samples.iter()).collect();
    samples.dedup();
    for s in samples.iter().take(5) {
        eprintln!("loadgen: error: {s}");
    }
    if args.json {
        let v = serde_json::json!({
            "mode": mode,
            "method": target.method.as_str(),
            "url": args.url,
            "concurrency": args.concurrency,
            "seconds": (elapsed * 1000.0).round() / 1000.0,
            "requests": ok,
            "rate": (rate * 10.0).round() / 10.0,
            "p50_ms": p50,
            "p99_ms": p99,
            "errors": errors,
            "reconnects": reconnects,
            "client_cpu_us": (cpu_us * 10.0).round() / 10.0,
            "tls": tls,
            "negotiate": args.negotiate,
        });
        println!("{v}");
    } else {
        println!(
            "{mode} {} {} c={} {elapsed:.2}s: {rate:.1} req/s ({ok} ok), p50 {p50:.3} ms, p99 {p99:.3} ms, {errors} errors, {reconnects} reconnects, client CPU {cpu_us:.1} µs/request [{tls}]",
            target.method, args.url, args.concurrency,
        );
    }
    Ok(())
}

/// Kept-alive requests written and read by hand: the request bytes are made once,
/// and a response is read up to its status line, headers and `Content-Length` body.
/// hyper's client (a request object, a header map copied, a channel to the
/// connection task per request) cost the load generator as much CPU per request
/// as the servers it measures spend answering one (≈ 10 µs): with one core for the
/// client, its own cost, not the server's, set the rate. Used in keepalive mode
/// except with `--negotiate`, whose tokens are made per request.
mod raw {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The request bytes, one per `--bearer-file` token (or just one).
    fn requests(target: &Target) -> Vec<Vec<u8>> {
        let one = |authorization: Option<&HeaderValue>| {
            let mut r = format!("{} {} HTTP/1.1\r\n", target.method, target.path).into_bytes();
            let mut headers = target.headers.clone();
            if let Some(a) = authorization {
                headers.insert(header::AUTHORIZATION, a.clone());
            }
            if matches!(target.method, Method::POST | Method::PUT | Method::PATCH) {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            }
            for (name, value) in &headers {
                r.extend_from_slice(name.as_str().as_bytes());
                r.extend_from_slice(b": ");
                r.extend_from_slice(value.as_bytes());
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"\r\n");
            r
        };
        if target.bearers.is_empty() {
            vec![one(None)]
        } else {
            target.bearers.iter().map(|b| one(Some(b))).collect()
        }
    }

    /// One answer: its status, and whether the server closes the connection after it.
    struct Answer {
        status: u16,
        close: bool,
    }

    /// Reads one response from `io` into `buf` (which may hold the start of it)
    /// and removes it from `buf`.
    async fn response(io: &mut Box<dyn Io>, buf: &mut Vec<u8>) -> Result<Answer, String> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(buf).map_err(|e| format!("response: {e}"))? {
                httparse::Status::Complete(head) => {
                    let mut length = None;
                    let mut close = false;
                    for h in parsed.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            length = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<usize>().ok());
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            close = h.value.eq_ignore_ascii_case(b"close");
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            return Err("response: a chunked body (this client reads Content-Length bodies)".into());
                        }
                    }
                    let status = parsed.code.unwrap_or(0);
                    let length = length.ok_or("response: no Content-Length")?;
                    while buf.len() < head + length {
                        read_more(io, buf).await?;
                    }
                    buf.drain(..head + length);
                    return Ok(Answer { status, close });
                }
                httparse::Status::Partial => read_more(io, buf).await?,
            }
        }
    }

    async fn read_more(io: &mut Box<dyn Io>, buf: &mut Vec<u8>) -> Result<(), String> {
        if buf.len() > 1 << 20 {
            return Err("response: over 1 MiB".into());
        }
        buf.reserve(16 * 1024);
        match io.read_buf(buf).await {
            Ok(0) => Err("response: connection closed".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("response: {e}")),
        }
    }

    pub(super) async fn keepalive_worker(
        target: Arc<Target>,
        start: Arc<tokio::sync::Barrier>,
        duration: Duration,
    ) -> Stats {
        let mut stats = Stats::default();
        let requests = requests(&target);
        let mut first = first_connection(&mut stats, open(&target)).await;
        start.wait().await;
        let started = Instant::now();
        let deadline = started + duration;
        stats.started = Some(started);
        let mut buf = Vec::with_capacity(16 * 1024);
        while Instant::now() < deadline {
            let Some(mut io) = next_connection(&mut first, &mut stats, open(&target)).await else {
                continue;
            };
            buf.clear();
            while Instant::now() < deadline {
                let i = target
                    .next_bearer
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let began = Instant::now();
                let answer = match io.write_all(&requests[i % requests.len()]).await {
                    Ok(()) => response(&mut io, &mut buf).await,
                    Err(e) => Err(format!("request: {e}")),
                };
                match answer {
                    Ok(a) => {
                        stats.record(a.status, began.elapsed());
                        // The server may close a used-up connection (nginx's
                        // keepalive_requests): that is a reconnect, not a failure.
                        if a.close {
                            break;
                        }
                    }
                    Err(e) => {
                        stats.error(e);
                        break;
                    }
                }
            }
        }
        stats.ended = Some(Instant::now());
        stats
    }
}
