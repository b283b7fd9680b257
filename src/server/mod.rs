//! The daemon: wires the configuration into the pipeline, binds the listeners,
//! handles SIGHUP (reload) and SIGTERM (drain), and tells systemd when it is ready.

pub mod admin;
pub mod authorize;
pub mod body;
pub mod browser;
pub mod credentials;
pub mod listener;
pub mod routes;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::auth::Authenticator;
use crate::auth::Mechanism;
use crate::auth::certificate::CertificateAuthenticator;
use crate::auth::kerberos::KerberosAuthenticator;
use crate::auth::oidc::OidcAuthenticator;
use crate::auth::password::{PamSettings, PasswordAuthenticator};
use crate::blocking::BlockingPool;
use crate::config::Config;
use crate::config::{SessionFormat, SessionStoreKind};
use crate::directory::Directory;
use crate::forward::Policy as ForwardPolicy;
use crate::issued::TokenIssuer;
use crate::labels::LabelMap;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Policy};
use crate::quota::Quota;
use crate::redis_client::RedisClient;
use crate::session::shared::RedisStore;
use crate::session::{FileStore, MemoryStore, SessionLimits, SessionStore};
use crate::throttle::Throttle;

/// What a connection knows about its peer, fixed at handshake time.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The certificate chain the client presented (leaf first; empty without one).
    /// Only possession of the leaf's key is proven here: the chain is checked at each
    /// login against the CA file and CRLs loaded then ([`tls::TlsSetup::check_chain`]).
    pub peer_chain: Vec<CertificateDer<'static>>,
    /// The client's "TLS identity": its address and certificate, hashed.
    pub binding: [u8; 32],
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, peer_chain: Vec<CertificateDer<'static>>) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(peer.ip().to_string().as_bytes());
        h.update([0]);
        h.update(peer_chain.first().map(|c| c.as_ref()).unwrap_or_default());
        ConnInfo {
            peer,
            peer_chain,
            binding: h.finalize().into(),
        }
    }
}

pub struct AppState {
    pub config: Arc<Config>,
    pub pipeline: Pipeline,
    /// `None` when `ssl.enabled` is false; swapped whole on SIGHUP.
    pub tls: Option<ArcSwap<tls::TlsSetup>>,
    /// `WWW-Authenticate` values for a login 401.
    pub login_challenges: Vec<String>,
    /// The last SIGHUP and what came of it, for `portcullis admin status`.
    pub last_reload: Mutex<Option<ReloadRecord>>,
    /// The daemon's own JWTs: JWT sessions, service tokens, the published keys.
    pub tokens: Arc<TokenIssuer>,
    /// `/v1/authorize`'s public URIs and rules; swapped whole on SIGHUP.
    pub forward: ArcSwap<ForwardPolicy>,
    /// Peers whose X-Original-*/X-Forwarded-* headers are believed.
    pub trusted_proxies: Vec<authorize::Cidr>,
    /// IdP tokens `/v1/authorize` already checked.
    pub bearer_cache: authorize::BearerCache,
    /// The browser login (SPEC §12): sign-ins in progress at the IdP.
    pub browser: browser::Browser,
}

#[derive(Debug, Clone)]
pub struct ReloadRecord {
    pub at: SystemTime,
    /// `ok`, or `failed` when any part kept its previous version.
    pub result: &'static str,
    /// What was reloaded and what failed, one entry each.
    pub detail: Vec<String>,
}

/// A startup problem: exit 2 for configuration and files, 1 for the rest.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Runtime(String),
}

/// PAM conversations one client address may have waiting at once (SPEC §9).
const PAM_CONVERSATIONS_PER_ADDRESS: usize = 2;

/// One bounded pool per kind of blocking C call (SPEC §9).
struct Pools {
    /// PAM transactions, including those parked on a prompt: `blocking_threads` for
    /// working transactions plus one per conversation that may wait.
    pam: BlockingPool,
    nss: BlockingPool,
    gssapi: BlockingPool,
}

impl Pools {
    fn new(config: &Config, metrics: &Arc<Metrics>) -> Pools {
        let sys = &config.system;
        let queue = Duration::from_secs(sys.blocking_queue_timeout);
        let pool = |name, size| BlockingPool::new(name, size, queue).with_metrics(metrics.clone());
        Pools {
            pam: pool(
                "pam",
                sys.blocking_threads + config.security.pam_max_conversations,
            ),
            nss: pool("nss", sys.blocking_threads),
            // Dedicated threads: each keeps its acquired acceptor credential.
            gssapi: if config.security.mechanisms.contains(&Mechanism::Kerberos) {
                pool("gssapi", sys.blocking_threads).with_dedicated_threads()
            } else {
                pool("gssapi", sys.blocking_threads)
            },
        }
    }
}

fn authenticators(
    config: &Config,
    pools: &Pools,
    throttle: &Arc<Throttle>,
) -> Result<Vec<Box<dyn Authenticator>>, String> {
    let sec = &config.security;
    let mut out: Vec<Box<dyn Authenticator>> = Vec::new();
    for m in &sec.mechanisms {
        out.push(match m {
            Mechanism::Certificate => Box::new(CertificateAuthenticator::new(
                sec.pki_user_field,
                sec.pki_email_domains.clone(),
            )),
            Mechanism::Password => Box::new(PasswordAuthenticator::new(
                PamSettings {
                    service: sec.pam_service.clone(),
                    timeout: Duration::from_secs(sec.pam_conversation_timeout.max(1)),
                    change_password: sec.pam_password_change,
                },
                pools.pam.clone(),
                throttle.clone(),
                Quota::new(sec.pam_max_conversations, PAM_CONVERSATIONS_PER_ADDRESS),
            )),
            Mechanism::Kerberos => Box::new(KerberosAuthenticator::new(
                pools.gssapi.clone(),
                sec.server_krb_principal.clone(),
                sec.krb_realms.clone(),
                sec.krb_allow_instances,
            )),
            Mechanism::Oidc => {
                // security.oidc unless only trusted issuers are configured.
                let oidc = (sec.issuers.is_empty() || crate::auth::oidc::configured(&sec.oidc))
                    .then(|| sec.oidc.clone());
                let issuers = crate::auth::oidc::issuers::Issuers::new(
                    &sec.issuers,
                    &sec.token.claim_prefix,
                    Duration::from_secs(sec.oidc.jwks_refetch_interval.max(1)),
                )?;
                let a = OidcAuthenticator::with_issuers(oidc, issuers)?;
                a.spawn_refresh();
                Box::new(a)
            }
        });
    }
    Ok(out)
}

/// What startup reads from disk, read and checked.
pub struct StartupFiles {
    /// `None` when `ssl.enabled` is false or the check was skipped.
    pub tls: Option<tls::TlsSetup>,
    pub labels: LabelMap,
    pub forward: ForwardPolicy,
}

/// The startup check shared by `serve` and `check-config`: read every file the
/// configuration names (certificates and CRLs, the keytab, label files) and report
/// every problem at once, each naming its file. `check_tls` false skips the
/// certificates (`check-config --dev` before the first start made them).
pub fn check_startup(config: &Config, check_tls: bool) -> Result<StartupFiles, Vec<String>> {
    let mut problems = Vec::new();
    let mut tls = None;
    if config.ssl.enabled && check_tls {
        match tls::load(&config.ssl) {
            Ok(c) => tls = Some(c),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if config.security.mechanisms.contains(&Mechanism::Kerberos)
        && let Err(e) = crate::auth::kerberos::check_acceptor(
            &config.security.krb_keytab,
            config.security.server_krb_principal.as_deref(),
        )
    {
        problems.push(e);
    }
    let labels = load_labels(config).unwrap_or_else(|e| {
        problems.push(e);
        LabelMap::default()
    });
    let forward = load_forward(config).unwrap_or_else(|e| {
        problems.push(e);
        ForwardPolicy::default()
    });
    if problems.is_empty() {
        Ok(StartupFiles {
            tls,
            labels,
            forward,
        })
    } else {
        Err(problems)
    }
}

/// Build the state; every file is read here so a broken one stops startup with its name.
pub fn build_state(config: Config) -> Result<AppState, StartError> {
    let files = check_startup(&config, true).map_err(|p| StartError::Config(p.join("\n")))?;
    let tls = files.tls.map(ArcSwap::from_pointee);
    let labels = files.labels;
    let metrics = Arc::new(Metrics::new());
    let pools = Pools::new(&config, &metrics);
    let sec = &config.security;
    // The Redis of the redis store, one client (one multiplexed connection) for
    // everything kept there; it connects lazily, so a Redis that is down at start
    // means 503s until it comes up, not a failed start (SPEC §10).
    let redis: Option<RedisClient> = match sec.session_store {
        SessionStoreKind::Redis => Some(open_redis(&config)?),
        SessionStoreKind::Memory | SessionStoreKind::File => None,
    };
    // One throttle for every mechanism: failures of any kind count per address.
    // With the redis store its counters are in Redis, shared by every daemon.
    let max = sec.max_failed_attempts;
    let window = Duration::from_secs(sec.failed_attempt_window);
    let throttle = Arc::new(match &redis {
        Some(client) => Throttle::shared(max, window, client.clone()),
        None => Throttle::new(max, window),
    });
    let authenticators = authenticators(&config, &pools, &throttle).map_err(StartError::Config)?;
    let directory = Directory::new(pools.nss, Duration::from_secs(sec.group_cache_ttl));
    let sessions = open_sessions(&config, redis)?;
    let tokens = Arc::new(open_tokens(&config)?);
    let trusted_proxies = config
        .security
        .trusted_proxies
        .iter()
        .map(|t| authorize::Cidr::parse(t).map_err(|e| format!("security.trusted_proxies: {e}")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(StartError::Config)?;
    let mut pipeline = Pipeline::new(
        authenticators,
        directory,
        labels,
        sessions,
        metrics,
        Policy {
            session_ttl: Duration::from_secs(sec.session_ttl),
            require_local_account: sec.require_local_account,
        },
        throttle,
    );
    if config.security.session_format == SessionFormat::Jwt {
        pipeline.jwt_sessions = Some(tokens.clone());
    }
    let browser = browser::Browser::new(&config).map_err(StartError::Config)?;
    Ok(AppState {
        browser,
        login_challenges: routes::login_challenges(pipeline.enabled()),
        config: Arc::new(config),
        pipeline,
        tls,
        last_reload: Mutex::new(None),
        tokens,
        forward: ArcSwap::from_pointee(files.forward),
        trusted_proxies,
        bearer_cache: Default::default(),
    })
}

/// `security.token.issuer`, or `https://<system.hostname>:<port>` of the first
/// address listened on.
pub fn default_token_issuer(config: &Config, port: Option<u16>) -> String {
    let port = port
        .or_else(|| config.system.listen.first().map(|a| a.port()))
        .unwrap_or(4367);
    format!("https://{}:{port}", config.system.hostname)
}

/// The signing key of the daemon's JWTs; a key file that cannot be used stops
/// startup with its name.
fn open_tokens(config: &Config) -> Result<TokenIssuer, StartError> {
    let t = &config.security.token;
    let issuer = t
        .issuer
        .clone()
        .unwrap_or_else(|| default_token_issuer(config, None));
    TokenIssuer::new(
        t,
        issuer,
        config.system.state_dir.clone(),
        config.security.session_ttl,
    )
    .map_err(|e| StartError::Config(e.to_string()))
}

/// The client for `security.session_redis_url` (the redis store).
fn open_redis(config: &Config) -> Result<RedisClient, StartError> {
    let sec = &config.security;
    let url = sec.session_redis_url.as_deref().ok_or_else(|| {
        StartError::Config(
            "\"security.session_store\" is redis but \"security.session_redis_url\" is not set"
                .into(),
        )
    })?;
    RedisClient::open(
        url,
        sec.session_redis_ca_cert.as_deref(),
        &sec.session_redis_prefix,
    )
    .map_err(StartError::Config)
}

/// The session store of `security.session_store`; a file that cannot be used stops
/// startup with its name (never a silent reset).
fn open_sessions(
    config: &Config,
    redis: Option<RedisClient>,
) -> Result<Arc<dyn SessionStore>, StartError> {
    let sec = &config.security;
    let idle = Some(Duration::from_secs(sec.session_idle_timeout));
    let limits = SessionLimits {
        per_user: sec.max_sessions_per_user,
        total: sec.max_sessions,
    };
    Ok(match sec.session_store {
        SessionStoreKind::Memory => Arc::new(MemoryStore::with_limits(idle, limits)),
        SessionStoreKind::File => {
            let path = sec
                .session_store_path
                .clone()
                .unwrap_or_else(|| config.system.state_dir.join("sessions.db"));
            Arc::new(
                FileStore::open(&path, idle, limits)
                    .map_err(|e| StartError::Config(e.to_string()))?,
            )
        }
        SessionStoreKind::Redis => match redis {
            Some(client) => Arc::new(RedisStore::new(client, idle, limits)),
            None => open_redis(config).map(|c| Arc::new(RedisStore::new(c, idle, limits)))?,
        },
    })
}

fn load_forward(config: &Config) -> Result<ForwardPolicy, String> {
    ForwardPolicy::load(
        &config.forward.public_uris,
        config.forward.rules_file.as_deref(),
    )
}

fn load_labels(config: &Config) -> Result<LabelMap, String> {
    LabelMap::load(
        config.security.labelfile.as_deref(),
        config.security.grouplabelfile.as_deref(),
        &config.security.default_labels,
    )
    .map_err(|e| e.to_string())
}

/// SIGHUP: re-read certificates, CRLs and label files; keep the old on any error.
fn reload(state: &AppState) {
    let mut detail = Vec::new();
    let mut failed = false;
    if let Some(current) = &state.tls {
        match tls::load(&state.config.ssl) {
            Ok(c) => {
                current.store(Arc::new(c));
                tracing::info!("reloaded TLS certificates and CRLs");
                detail.push("TLS certificates and CRLs reloaded".to_string());
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS reload failed; keeping the previous certificates");
                failed = true;
                detail.push(format!("TLS reload failed (previous kept): {e}"));
            }
        }
    }
    match load_labels(&state.config) {
        Ok(l) => {
            state.pipeline.labels.store(Arc::new(l));
            tracing::info!("reloaded label files");
            detail.push("label files reloaded".to_string());
        }
        Err(e) => {
            tracing::error!(error = %e, "label reload failed; keeping the previous labels");
            failed = true;
            detail.push(format!("label reload failed (previous kept): {e}"));
        }
    }
    match load_forward(&state.config) {
        Ok(p) => {
            state.forward.store(Arc::new(p));
            tracing::info!("reloaded the forward rules");
            detail.push("forward rules reloaded".to_string());
        }
        Err(e) => {
            tracing::error!(error = %e, "forward rules reload failed; keeping the previous rules");
            failed = true;
            detail.push(format!("forward rules reload failed (previous kept): {e}"));
        }
    }
    match state.tokens.reload() {
        Ok(kid) => {
            tracing::info!(kid, "reloaded the token signing key");
            detail.push(format!("token signing key reloaded (kid {kid})"));
        }
        Err(e) => {
            tracing::error!(error = %e, "token key reload failed; keeping the previous key");
            failed = true;
            detail.push(format!("token key reload failed (previous kept): {e}"));
        }
    }
    *state.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = Some(ReloadRecord {
        at: SystemTime::now(),
        result: if failed { "failed" } else { "ok" },
        detail,
    });
}

/// Run until SIGTERM; `on_ready` sees the bound addresses (a port 0 resolved).
pub async fn run(config: Config, on_ready: impl FnOnce(&[SocketAddr])) -> Result<(), StartError> {
    let mut listeners = Vec::new();
    for addr in &config.system.listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| StartError::Runtime(format!("cannot listen on {addr}: {e}")))?;
        listeners.push(l);
    }
    // Signal handlers first: a SIGTERM right after "listening" must drain, not kill.
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| StartError::Runtime(e.to_string()))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| StartError::Runtime(e.to_string()))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| StartError::Runtime(e.to_string()))?;
    let mut config = config;
    if config.security.token.issuer.is_none() {
        // A port chosen by the kernel (port 0) is known only now.
        let port = listeners
            .first()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port());
        config.security.token.issuer = Some(default_token_issuer(&config, port));
    }
    let state = Arc::new(build_state(config)?);
    let admin_path = admin::socket_path(&state.config.system.state_dir);
    let admin_listener = admin::bind(&admin_path).map_err(StartError::Runtime)?;
    let scheme = if state.tls.is_some() { "https" } else { "http" };
    let bound: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    on_ready(&bound);
    for l in &listeners {
        let addr = l
            .local_addr()
            .map_err(|e| StartError::Runtime(e.to_string()))?;
        // Printed on stdout so scripts and tests can find a port chosen by the kernel.
        println!("portcullis: listening on {scheme}://{addr}");
        tracing::info!(%addr, "listening");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin = Arc::new(admin::Admin {
        state: state.clone(),
        listening: bound.iter().map(|a| format!("{scheme}://{a}")).collect(),
        started: SystemTime::now(),
    });
    let admin_task = tokio::spawn(admin::serve(admin, admin_listener, stop_rx.clone()));
    tracing::info!(path = %admin_path.display(), "operator socket ready");
    let server = tokio::spawn(listener::serve(state.clone(), listeners, stop_rx));
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    loop {
        tokio::select! {
            _ = hup.recv() => reload(&state),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down: no new connections, draining requests in flight");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let _ = stop_tx.send(true);
    let _ = admin_task.await;
    let _ = std::fs::remove_file(&admin_path);
    let _ = server.await;
    tracing::info!("stopped");
    Ok(())
}
