//! The test OpenID provider: tests/idp/server.js (panva's `oidc-provider` from the
//! npm registry, installed by scripts/test with `npm ci` in tests/idp) on a
//! kernel-chosen loopback port, over HTTPS with a certificate from the dev CA of
//! the test's directory. Its issuer is `Idp::url`; `Idp::ca` trusts it.
//!
//! Clients of the IdP: `portcullis-cli` (public), `portcullis-svc` / `svc-secret`
//! (client_credentials), `portcullis-introspect` / `introspect-secret`
//! (introspection, client_secret_basic). Audiences: `https://portcullis.test`
//! (the default), `https://other.test`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portcullis::cli::client::Client;
use serde_json::{Value, json};

static STARTED: AtomicUsize = AtomicUsize::new(0);

pub struct Idp {
    /// `https://127.0.0.1:PORT`, the issuer.
    pub url: String,
    /// The CA that signed the IdP's certificate (`<dir>/ca.pem`, the dev CA).
    pub ca: PathBuf,
    pub stderr_path: PathBuf,
    child: Child,
}

impl Idp {
    /// Start the IdP with its certificate in `dir` (`idp.pem`, `idp.key`, issued by
    /// the dev CA `dir/ca.pem`, which is created if missing and reused otherwise).
    pub fn start(dir: &Path) -> Idp {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let script = root.join("tests/idp/server.js");
        assert!(
            root.join("tests/idp/node_modules/oidc-provider").is_dir(),
            "tests/idp/node_modules is missing: run scripts/test (npm ci in tests/idp)"
        );
        let (ca, _) = portcullis::devcerts::load_or_create_ca(dir, "localhost")
            .unwrap_or_else(|e| panic!("dev CA in {}: {e}", dir.display()));
        let (cert, key) = ca
            .issue(dir, "idp", portcullis::devcerts::server_params("localhost"))
            .unwrap_or_else(|e| panic!("IdP certificate in {}: {e}", dir.display()));

        let n = STARTED.fetch_add(1, Ordering::SeqCst);
        let stderr_path = dir.join(format!("idp-{}-{n}.log", std::process::id()));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let node = std::env::var("PORTCULLIS_TEST_NODE").unwrap_or_else(|_| "node".to_string());
        let mut child = Command::new(&node)
            .arg(&script)
            .args(["--port", "0", "--log-requests", "--cert"])
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {node} (Node.js; scripts/test installs it): {e}")
            });

        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keep reading to the end so the IdP never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("idp: listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(url) => Idp {
                url,
                ca: ca.cert_path.clone(),
                stderr_path,
                child,
            },
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!("the test IdP did not start ({status:?}); its stderr:\n{log}");
            }
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// SIGTERM to the IdP (by its own pid) and wait until it has exited.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What the IdP wrote on stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// How many requests for `method` `path` (no query string) the IdP has received,
    /// from its `--log-requests` lines: the calls the daemon made, e.g.
    /// `requests("POST", "/token/introspection")`.
    pub fn requests(&self, method: &str, path: &str) -> usize {
        let line = format!("idp: request {method} {path}");
        self.log().lines().filter(|l| l.trim_end() == line).count()
    }

    /// An HTTPS client for the IdP (trusting `ca`).
    pub fn client(&self) -> Client {
        Client::new(&self.url, Some(&self.ca), None).unwrap()
    }

    async fn call(&self, method: hyper::Method, path: &str, body: Option<&Value>) -> Value {
        let reply = self
            .client()
            .request(method.clone(), path, &[], body)
            .await
            .unwrap_or_else(|e| panic!("IdP {method} {path}: {e}"));
        assert_eq!(
            reply.status,
            200,
            "IdP {method} {path}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.json()
    }

    /// `GET /test/token` with these query parameters (`sub`, `groups` comma-separated,
    /// `resource`, `format` jwt|opaque, `alg` RS256|ES256, `ttl`, `client`, `scope`,
    /// `extra=0` for a token without the name and group claims); the whole answer,
    /// `{"access_token", "kid", "expires_in", "format", "aud"}`.
    pub async fn mint(&self, params: &[(&str, &str)]) -> Value {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        self.call(
            hyper::Method::GET,
            &format!("/test/token?{}", query.join("&")),
            None,
        )
        .await
    }

    /// A JWT access token for `sub` with `groups` (also `preferred_username`,
    /// `user.name`, `ocp.groups`), audience `resource` (None: https://portcullis.test),
    /// signed with the IdP's current RS256 or ES256 key, valid for `ttl` seconds.
    /// The IdP also introspects it (active until `revoke` or expiry).
    pub async fn token(
        &self,
        sub: &str,
        groups: &[&str],
        resource: Option<&str>,
        alg: &str,
        ttl: u64,
    ) -> String {
        let groups = groups.join(",");
        let ttl = ttl.to_string();
        let mut params = vec![
            ("sub", sub),
            ("groups", groups.as_str()),
            ("format", "jwt"),
            ("alg", alg),
            ("ttl", ttl.as_str()),
        ];
        if let Some(r) = resource {
            params.push(("resource", r));
        }
        access_token(&self.mint(&params).await)
    }

    /// An opaque access token for `sub` without an audience, valid 300 s. The
    /// provider's introspection answers `active`, `sub`, `scope`, `client_id`, `exp`
    /// but no name or group claims; userinfo and the OpenShift user API stand-in
    /// give `preferred_username` and `groups` (set here).
    pub async fn opaque(&self, sub: &str, groups: &[&str]) -> String {
        let groups = groups.join(",");
        let params = [
            ("sub", sub),
            ("groups", groups.as_str()),
            ("format", "opaque"),
            ("extra", "0"),
        ];
        access_token(&self.mint(&params).await)
    }

    /// Set the groups userinfo and the OpenShift stand-in report for `sub`.
    pub async fn set_groups(&self, sub: &str, groups: &[&str]) {
        let body = json!({"sub": sub, "groups": groups});
        self.call(hyper::Method::POST, "/test/account", Some(&body))
            .await;
    }

    /// A compact JWS of exactly `claims`, signed with the IdP's current `key`:
    /// "rsa" (RS256) or "ec" (ES256), or "none" (unsigned, alg none) or
    /// "hs256-rsa-public" (HS256 keyed with the RSA public key's PEM). The header is
    /// `{"alg", "typ": "at+jwt", "kid": <current kid>}` overridden by `header`
    /// (a null value removes a field).
    pub async fn sign(&self, header: Value, claims: Value, key: &str) -> String {
        let body = json!({"header": header, "claims": claims, "key": key});
        let v = self
            .call(hyper::Method::POST, "/test/sign", Some(&body))
            .await;
        v["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token from /test/sign: {v}"))
            .to_string()
    }

    /// The current RSA signing key's public half, SPKI PEM (with its final newline).
    pub async fn public_pem(&self) -> String {
        let v = self
            .call(hyper::Method::GET, "/test/public-pem?key=rsa", None)
            .await;
        v["pem"]
            .as_str()
            .unwrap_or_else(|| panic!("no pem from /test/public-pem: {v}"))
            .to_string()
    }

    /// New RSA and EC signing keys; the JWKS lists only these from now on.
    /// Returns their kids.
    pub async fn rotate(&self) -> Vec<String> {
        let v = self.call(hyper::Method::POST, "/test/rotate", None).await;
        v["kids"]
            .as_array()
            .unwrap_or_else(|| panic!("no kids from /test/rotate: {v}"))
            .iter()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect()
    }

    /// Revoke `token` at the IdP's revocation endpoint; introspection then answers
    /// `{"active": false}`. False when the IdP did not know the token.
    pub async fn revoke(&self, token: &str) -> bool {
        let body = json!({"token": token});
        let v = self
            .call(hyper::Method::POST, "/test/revoke", Some(&body))
            .await;
        v["revoked"] == json!(true)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn access_token(v: &Value) -> String {
    v["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access_token from /test/token: {v}"))
        .to_string()
}

/// Percent-encode a query component (everything but RFC 3986 unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
