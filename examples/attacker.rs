//! The hostile clients of SPEC §9, for `scripts/bench` (section `hostile`): run one
//! beside the load generator and see what legitimate clients still get.
//!
//!   # hold N idle TLS connections (reopened when the daemon closes them), spread
//!   # over source addresses 127.0.<x>.<y> so the per-address cap does not stop them
//!   cargo run --release --example attacker -- --url https://127.0.0.1:4367 --ca ca.pem hold 5000
//!
//!   # park N PAM conversations (a wrong password that still reaches an OTP prompt),
//!   # two per source address, and keep them parked
//!   cargo run --release --example attacker -- --url … --ca ca.pem park 32 --user pcotp
//!
//!   # flood junk bearer tokens from one address over kept-alive connections
//!   cargo run --release --example attacker -- --url … --ca ca.pem flood --concurrency 8
//!
//! Runs until `--duration` seconds have passed (or it is killed), then prints one JSON
//! line with what it did. Connects only to the loopback URL it is given.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use rustls_pki_types::pem::PemObject;
use tokio::net::{TcpSocket, TcpStream};

#[derive(Parser)]
struct Args {
    /// The daemon, e.g. https://127.0.0.1:4367 (loopback only).
    #[arg(long)]
    url: String,
    /// CA of the daemon's server certificate.
    #[arg(long)]
    ca: PathBuf,
    /// Seconds to keep going.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Hold this many idle TLS connections.
    Hold { connections: usize },
    /// Keep this many PAM conversations parked.
    Park {
        conversations: usize,
        #[arg(long, default_value = "pcotp")]
        user: String,
    },
    /// Junk bearer tokens from one address, as fast as the daemon answers.
    Flood {
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
}

/// The n-th attacker address: 127.0.<1 + n / 250>.<1 + n % 250>.
fn source(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        1 + (n / 250) as u8,
        1 + (n % 250) as u8,
    ))
}

struct Target {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

impl Target {
    async fn connect(&self, from: IpAddr) -> std::io::Result<Tls> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(from, 0))?;
        let tcp = socket.connect(self.addr).await?;
        self.tls
            .connect("localhost".try_into().expect("a DNS name"), tcp)
            .await
    }

    /// One request on a new connection; the status (0 when the connection failed).
    async fn request(&self, from: IpAddr, req: hyper::Request<Full<Bytes>>) -> u16 {
        let Ok(tls) = self.connect(from).await else {
            return 0;
        };
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await
        else {
            return 0;
        };
        tokio::spawn(conn);
        match sender.send_request(req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let _ = resp.into_body().collect().await;
                status
            }
            Err(_) => 0,
        }
    }
}

fn target(args: &Args) -> Result<Target, String> {
    let url: hyper::Uri = args.url.parse().map_err(|e| format!("--url: {e}"))?;
    let host = url.host().ok_or("--url has no host")?;
    let ip: IpAddr = match host {
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        h => h
            .parse()
            .map_err(|_| "--url must name a loopback address")?,
    };
    if !ip.is_loopback() {
        return Err("--url must name a loopback address".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(&args.ca)
        .map_err(|e| format!("--ca: {e}"))?
    {
        roots
            .add(c.map_err(|e| format!("--ca: {e}"))?)
            .map_err(|e| format!("--ca: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Target {
        addr: SocketAddr::new(ip, url.port_u16().unwrap_or(4367)),
        tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
    })
}

/// Keep `n` idle connections open, reopening each as the daemon closes it.
async fn hold(t: Arc<Target>, n: usize, until: Instant, opened: Arc<AtomicU64>) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let t = t.clone();
        let opened = opened.clone();
        tasks.spawn(async move {
            let from = source(i / 200);
            while Instant::now() < until {
                match t.connect(from).await {
                    Ok(mut tls) => {
                        opened.fetch_add(1, Ordering::Relaxed);
                        let mut buf = [0u8; 64];
                        let left = until.saturating_duration_since(Instant::now());
                        // Silent until the daemon gives up on us (or time is up).
                        let _ = tokio::time::timeout(
                            left,
                            tokio::io::AsyncReadExt::read(&mut tls, &mut buf),
                        )
                        .await;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        if i % 100 == 99 {
            // Spread the handshakes a little; thousands at once just queue.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    while tasks.join_next().await.is_some() {}
}

fn login_request(user: &str) -> hyper::Request<Full<Bytes>> {
    let body = serde_json::json!({"mechanism": "password", "username": user, "password": "wrong"});
    hyper::Request::post("/v1/login")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid request")
}

/// Keep `n` conversations parked: each slot re-parks when its conversation ends.
async fn park(t: Arc<Target>, n: usize, user: String, until: Instant, parked: Arc<AtomicU64>) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (t, user, parked) = (t.clone(), user.clone(), parked.clone());
        tasks.spawn(async move {
            // Two per address (the per-address bound), a fresh address per pair.
            let from = source(1000 + i / 2);
            while Instant::now() < until {
                if t.request(from, login_request(&user)).await == 401 {
                    parked.fetch_add(1, Ordering::Relaxed);
                    // Unanswered: parked until pam_conversation_timeout.
                    let left = until.saturating_duration_since(Instant::now());
                    tokio::time::sleep(left.min(Duration::from_secs(125))).await;
                } else {
                    // Refused (429): try again later rather than burn the CPU we share.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Junk bearer tokens, each different, over kept-alive connections from one address.
async fn flood(t: Arc<Target>, concurrency: usize, until: Instant, sent: Arc<AtomicU64>) {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let (t, sent) = (t.clone(), sent.clone());
        tasks.spawn(async move {
            let from = source(2000);
            let mut k = 0u64;
            while Instant::now() < until {
                let Ok(tls) = t.connect(from).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok((mut sender, conn)) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await
                else {
                    continue;
                };
                tokio::spawn(conn);
                while Instant::now() < until && sender.ready().await.is_ok() {
                    k += 1;
                    let req = hyper::Request::post("/v1/login")
                        .header("host", "localhost")
                        .header("authorization", format!("Bearer junk-{w}-{k}-opaque"))
                        .body(Full::new(Bytes::new()))
                        .expect("a valid request");
                    match sender.send_request(req).await {
                        Ok(resp) => {
                            let _ = resp.into_body().collect().await;
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => break,
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let t = match target(&args) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            eprintln!("attacker: {e}");
            std::process::exit(2);
        }
    };
    let until = Instant::now() + Duration::from_secs_f64(args.duration);
    let count = Arc::new(AtomicU64::new(0));
    let (what, n) = match args.what {
        What::Hold { connections } => {
            hold(t, connections, until, count.clone()).await;
            ("opened", connections)
        }
        What::Park {
            conversations,
            user,
        } => {
            park(t, conversations, user, until, count.clone()).await;
            ("parked", conversations)
        }
        What::Flood { concurrency } => {
            flood(t, concurrency, until, count.clone()).await;
            ("answered", concurrency)
        }
    };
    println!(
        "{{\"{what}\":{},\"asked\":{n}}}",
        count.load(Ordering::Relaxed)
    );
}
