//! Shared fixtures: the real daemon on a kernel-chosen loopback port, real
//! certificates, and the local users `scripts/prepare-env` creates.
#![allow(dead_code)]

pub mod caddy;
pub mod echo;
pub mod idp;
pub mod krb;
pub mod nginx;
pub mod redis;
pub mod webdriver;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use portcullis::cli::client::{Client, ClientError, Reply};
use portcullis::devcerts;

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// The users and groups of scripts/prepare-env. Missing fixtures fail the test
/// loudly: a test that silently skips would pass without testing anything.
pub fn require_fixtures() {
    for user in ["pcalice", "pcbob", "pccarol"] {
        let found = nix::unistd::User::from_name(user).ok().flatten().is_some();
        assert!(
            found,
            "local user {user} is missing: run scripts/test (it runs scripts/prepare-env as root)"
        );
    }
}

pub struct Daemon {
    child: Child,
    pub url: String,
    pub port: u16,
    pub dir: PathBuf,
    pub stderr_path: PathBuf,
}

impl Daemon {
    /// Start `portcullis serve --dev` with state in `dir` and extra `-D` overrides.
    pub fn start(dir: &Path, defines: &[&str]) -> Daemon {
        Self::try_start(dir, defines).unwrap_or_else(|e| panic!("daemon did not start: {e}"))
    }

    /// Start `portcullis serve --dev -c FILE` (dev defaults under the file's keys).
    pub fn start_with_file(dir: &Path, file: &str, defines: &[&str]) -> Daemon {
        let mut all = vec!["@file", file];
        all.extend_from_slice(defines);
        Self::try_start(dir, &all).unwrap_or_else(|e| panic!("daemon did not start: {e}"))
    }

    /// [`Daemon::start`] with extra environment variables for the daemon process
    /// (e.g. `KRB5_KTNAME`); the rest of the environment is inherited as usual.
    pub fn start_with_env(dir: &Path, defines: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::try_start_with_env(dir, defines, env)
            .unwrap_or_else(|e| panic!("daemon did not start: {e}"))
    }

    /// `defines` are `-D` overrides; a pair `"@file", PATH` passes `-c PATH` instead.
    pub fn try_start(dir: &Path, defines: &[&str]) -> Result<Daemon, String> {
        Self::try_start_with_env(dir, defines, &[])
    }

    /// [`Daemon::try_start`] with extra environment variables for the daemon.
    pub fn try_start_with_env(
        dir: &Path,
        defines: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Daemon, String> {
        require_fixtures();
        let stderr_path = dir.join(format!("daemon-{}.log", std::process::id()));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--dev")
            .arg("-D")
            .arg("system.listen=127.0.0.1:0")
            .arg("-D")
            .arg(format!("system.state_dir={}", dir.display()));
        let mut args = defines.iter();
        while let Some(d) = args.next() {
            match (*d, args.clone().next()) {
                ("@file", Some(file)) => {
                    cmd.arg("-c").arg(file);
                    args.next();
                }
                _ => {
                    cmd.arg("-D").arg(d);
                }
            }
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn portcullis");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("portcullis: listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(url) => {
                let port = url.rsplit(':').next().unwrap().parse().unwrap();
                Ok(Daemon {
                    child,
                    url,
                    port,
                    dir: dir.to_path_buf(),
                    stderr_path,
                })
            }
            Err(_) => {
                let status = child.wait().ok().and_then(|s| s.code());
                let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                Err(format!("exit code {status:?}; stderr:\n{log}"))
            }
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).unwrap();
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        wait_timeout(&mut self.child, Duration::from_secs(20)).expect("daemon exits after SIGTERM")
    }

    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// An HTTPS client trusting the dev CA, optionally presenting `<dir>/<name>.pem`.
    pub fn client(&self, identity: Option<&str>) -> Client {
        let files = identity.map(|n| {
            (
                self.dir.join(format!("{n}.pem")),
                self.dir.join(format!("{n}.key")),
            )
        });
        Client::new(
            &self.url,
            Some(&self.ca()),
            files.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        )
        .unwrap()
    }

    pub fn client_with(&self, cert: &Path, key: &Path) -> Client {
        Client::new(&self.url, Some(&self.ca()), Some((cert, key))).unwrap()
    }

    /// A certificate login as `user` (see [`Daemon::dev_certs`]): the reply's JSON.
    pub async fn cert_login(&self, user: &str) -> serde_json::Value {
        post_login(&self.client(Some(user)), None)
            .await
            .unwrap()
            .json()
    }

    /// The session token of a certificate login as `user`.
    pub async fn cert_session(&self, user: &str) -> String {
        self.cert_login(user).await["session"]
            .as_str()
            .expect("a session token")
            .to_string()
    }

    /// Make `<dir>/<user>.pem|key` with the real `portcullis dev-certs`.
    pub fn dev_certs(&self, users: &[&str]) {
        dev_certs(&self.dir, users);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

pub fn dev_certs(dir: &Path, users: &[&str]) {
    let mut cmd = Command::new(BIN);
    cmd.arg("dev-certs").arg("--dir").arg(dir);
    for u in users {
        cmd.arg("--user").arg(u);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "dev-certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The dev CA of `dir`, for tests that need certificates `dev-certs` will not make
/// (expired, no UID, revoked).
pub fn ca(dir: &Path) -> devcerts::Ca {
    devcerts::load_or_create_ca(dir, "localhost").unwrap().0
}

pub async fn post_login(
    client: &Client,
    body: Option<serde_json::Value>,
) -> Result<Reply, ClientError> {
    client
        .request(hyper::Method::POST, "/v1/login", &[], body.as_ref())
        .await
}

/// `POST /v1/login` with `Authorization: Bearer <token>` (an IdP token).
pub async fn bearer(d: &Daemon, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    d.client(None)
        .request(
            hyper::Method::POST,
            "/v1/login",
            &[("authorization", &auth)],
            None,
        )
        .await
        .unwrap()
}

/// A JSON password login through `c`.
pub async fn password(c: &Client, user: &str, pass: &str) -> Reply {
    post_login(
        c,
        Some(serde_json::json!({"mechanism": "password", "username": user, "password": pass})),
    )
    .await
    .unwrap()
}

/// `POST /v1/login/{conversation}` with these answers.
pub async fn answer(c: &Client, conversation: &str, answers: serde_json::Value) -> Reply {
    c.request(
        hyper::Method::POST,
        &format!("/v1/login/{conversation}"),
        &[],
        Some(&serde_json::json!({ "answers": answers })),
    )
    .await
    .unwrap()
}

/// `DELETE /v1/session` (log out) with `token`.
pub async fn delete_session(client: &Client, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    client
        .request(
            hyper::Method::DELETE,
            "/v1/session",
            &[("authorization", &auth)],
            None,
        )
        .await
        .unwrap()
}

/// A CRL valid from 5 minutes ago until tomorrow, and one that expired yesterday.
pub const CRL_FRESH: (time::Duration, time::Duration) =
    (time::Duration::minutes(-5), time::Duration::days(1));
pub const CRL_EXPIRED: (time::Duration, time::Duration) =
    (time::Duration::days(-2), time::Duration::days(-1));

/// Write a CRL of the dev CA to `path`, revoking the `revoked` serials, valid from
/// `this_update` until `next_update` (both relative to now).
pub fn write_crl(
    ca: &devcerts::Ca,
    path: &Path,
    number: u64,
    revoked: &[u64],
    (this_update, next_update): (time::Duration, time::Duration),
) {
    let now = time::OffsetDateTime::now_utc();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: now + this_update,
        next_update: now + next_update,
        crl_number: rcgen::SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|s| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(*s),
                revocation_time: now - time::Duration::minutes(1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(ca.issuer())
    .unwrap();
    std::fs::write(path, crl.pem().unwrap()).unwrap();
}

/// A certificate of the dev CA of `dir` for `user` with a chosen serial number.
pub fn issue_with_serial(dir: &Path, user: &str, serial: u64) -> (PathBuf, PathBuf) {
    let mut p = devcerts::client_params(user);
    p.serial_number = Some(rcgen::SerialNumber::from(serial));
    ca(dir).issue(dir, &format!("{user}-{serial}"), p).unwrap()
}

pub async fn get_session(client: &Client, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    client
        .request(
            hyper::Method::GET,
            "/v1/session",
            &[("authorization", &auth)],
            None,
        )
        .await
        .unwrap()
}

pub fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("pc-test-")
        .tempdir()
        .unwrap()
}

/// Run `openssl` and return (success, stdout+stderr).
pub fn openssl(args: &[&str], stdin: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is installed by scripts/test");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A TLS connection to the daemon that stays open, for keep-alive, reload and drain tests.
pub async fn tls_stream(d: &Daemon) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    tls_stream_as(d, None).await
}

/// [`tls_stream`], presenting the client certificate `cert` with key `key` if given.
pub async fn tls_stream_as(
    d: &Daemon,
    identity: Option<(&Path, &Path)>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(d.ca()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(portcullis::server::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = rustls_pki_types::CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", d.port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

pub struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
}

impl KeepAlive {
    pub async fn connect(d: &Daemon) -> KeepAlive {
        Self::connect_as(d, None).await
    }

    /// One HTTP/1.1 connection presenting a client certificate (`cert`, `key`).
    pub async fn connect_as(d: &Daemon, identity: Option<(&Path, &Path)>) -> KeepAlive {
        let stream = tls_stream_as(d, identity).await;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        KeepAlive { sender }
    }

    pub async fn get(&mut self, path: &str) -> Result<u16, hyper::Error> {
        let (status, _) = self.send(hyper::Method::GET, path).await?;
        Ok(status)
    }

    /// `POST /v1/login` with no body on this connection: status and JSON answer.
    pub async fn post_login(&mut self) -> Result<(u16, serde_json::Value), hyper::Error> {
        let (status, body) = self.send(hyper::Method::POST, "/v1/login").await?;
        Ok((
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        ))
    }

    async fn send(
        &mut self,
        method: hyper::Method,
        path: &str,
    ) -> Result<(u16, bytes::Bytes), hyper::Error> {
        self.sender.ready().await?;
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await?
            .to_bytes();
        Ok((status, body))
    }
}

/// Wait until the daemon's log contains `needle` (e.g. after a SIGHUP).
pub async fn wait_for_log(d: &Daemon, needle: &str) {
    for _ in 0..200 {
        if d.log().contains(needle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("\"{needle}\" never appeared in the log:\n{}", d.log());
}

/// pcotp's HOTP key in scripts/prepare-env's users file (RFC 4226's test key).
pub const OTP_KEY: &str = "3132333435363738393031323334353637383930";

/// Tests that spend pcotp's HOTP codes take turns: two reading the same counter
/// would race for one code.
pub static OTP_COUNTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The next HOTP code pam_oath will accept for pcotp, from its users file.
pub fn next_otp() -> String {
    let line = std::fs::read_to_string("/etc/portcullis-test/users.oath")
        .expect("scripts/prepare-env writes /etc/portcullis-test/users.oath");
    let fields: Vec<&str> = line.lines().next().unwrap().split_whitespace().collect();
    let counter: u64 = fields.get(4).map_or(0, |c| c.parse().unwrap());
    let next = if fields.len() > 5 {
        counter + 1
    } else {
        counter
    };
    let out = std::process::Command::new("oathtool")
        .args(["--hotp", OTP_KEY, "-c", &next.to_string()])
        .output()
        .expect("oathtool is installed by scripts/prepare-env");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The Python with PyJWT that scripts/test installs (PORTCULLIS_TEST_PYTHON; a plain
/// `python3` otherwise, and a test needing PyJWT fails saying so).
pub fn python() -> String {
    std::env::var("PORTCULLIS_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A loopback port no one listens on now, for a server a test starts.
///
/// Not the kernel's choice (`bind(127.0.0.1:0)`): the daemons the tests start
/// bind port 0 themselves, and the kernel may hand one of them the very port it
/// just gave here and took back, so nginx (say) would fail to bind it while the
/// test talked to another test's daemon. These come from below the kernel's
/// ephemeral range (32768–60999 by default), which `bind(0)` and outgoing
/// connections never use, each one once per test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN);
}

/// `portcullis token ARGS --socket <d's operator socket>`: exit code, stdout
/// (trimmed: the token) and stderr.
pub fn token_cli(d: &Daemon, args: &[&str]) -> (Option<i32>, String, String) {
    let o = std::process::Command::new(BIN)
        .arg("token")
        .args(args)
        .arg("--socket")
        .arg(d.dir.join("admin.sock"))
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).trim().to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// Seconds since the Unix epoch (JWT `iat`/`exp`).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `GET path` of `d` without credentials, which must answer 200, as JSON.
pub async fn get_json(d: &Daemon, path: &str) -> serde_json::Value {
    let r = d
        .client(None)
        .request(hyper::Method::GET, path, &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "GET {path}");
    r.json()
}

/// `GET /v1/auth/methods` (200) as JSON.
pub async fn methods(d: &Daemon) -> serde_json::Value {
    get_json(d, "/v1/auth/methods").await
}
