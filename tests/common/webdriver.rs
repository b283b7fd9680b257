//! Headless Chromium through chromedriver (W3C WebDriver over HTTP, spoken with
//! reqwest): Debian's `chromium` and `chromium-driver`, which scripts/test installs.
//!
//! chromedriver runs on a free loopback port and is stopped by its pid when the
//! [`Browser`] is dropped. Chromium trusts exactly the certificates given to
//! [`Browser::start`]: their SPKI hashes go to `--ignore-certificate-errors-spki-list`
//! (honoured only with `--user-data-dir`, which is a fresh temporary directory), so
//! no other certificate error is ignored.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// `base64(sha256(SubjectPublicKeyInfo))` of the certificate in a PEM file.
pub fn spki_hash(pem_file: &Path) -> String {
    let pem = std::fs::read(pem_file).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    STANDARD.encode(Sha256::digest(cert.tbs_certificate.subject_pki.raw))
}

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// chromedriver + headless Chromium trusting the certificates in `trusted` (PEM).
    pub async fn start(trusted: &[&Path]) -> Browser {
        Self::start_with(trusted, &[], &[]).await
    }

    /// [`Browser::start`] with more Chromium flags and environment variables for
    /// chromedriver and Chromium (e.g. `KRB5CCNAME` for SPNEGO).
    pub async fn start_with(trusted: &[&Path], flags: &[&str], env: &[(&str, &str)]) -> Browser {
        for bin in ["chromium", "chromedriver"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {bin}")])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap()
                    .success(),
                "{bin} is missing: scripts/test installs chromium and chromium-driver"
            );
        }
        let port = super::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let started = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let spki: Vec<String> = trusted.iter().map(|p| spki_hash(p)).collect();
        let mut args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--no-first-run".into(),
            "--password-store=basic".into(),
            "--window-size=900,760".into(),
            format!("--user-data-dir={}", profile.path().display()),
            format!("--ignore-certificate-errors-spki-list={}", spki.join(",")),
        ];
        args.extend(flags.iter().map(|f| f.to_string()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
        }}});
        let v: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        Browser {
            driver,
            base,
            session,
            http,
            _profile: profile,
        }
    }

    /// The `value` of the WebDriver answer to METHOD /session/<id>PATH, error or not.
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let mut v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].take()
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let v = self.send(method, path, body).await;
        if v.get("error").is_some() {
            panic!("WebDriver {path}: {v}");
        }
        v
    }

    async fn try_call(&self, method: reqwest::Method, path: &str, body: Value) -> Option<Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let v: Value = self
            .http
            .request(method, &url)
            .json(&body)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["value"]
            .get("error")
            .is_none()
            .then(|| v["value"].clone())
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The element `css` selects, waiting up to 15 s for it to appear.
    pub async fn find(&self, css: &str) -> String {
        let started = Instant::now();
        loop {
            if let Some(v) = self
                .try_call(
                    reqwest::Method::POST,
                    "/element",
                    json!({"using": "css selector", "value": css}),
                )
                .await
            {
                return v[ELEMENT].as_str().unwrap().to_string();
            }
            if started.elapsed() > Duration::from_secs(15) {
                panic!(
                    "no element {css} at {}; the page:\n{}",
                    self.url().await,
                    self.source().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, "value", json!({"text": text})).await;
    }

    pub async fn click(&self, css: &str) {
        self.on_element(css, "click", json!({})).await;
    }

    /// Click `css` and wait (up to 15 s) until the page it was on has been
    /// replaced — its root element gone stale —, for forms whose next page has the
    /// same URL (a PAM conversation's prompts all post to /login).
    pub async fn click_to_next_page(&self, css: &str) {
        let old = self.find("html").await;
        self.click(css).await;
        let started = Instant::now();
        loop {
            let v = self
                .send(reqwest::Method::GET, &format!("/element/{old}/name"), None)
                .await;
            if v.get("error").and_then(Value::as_str) == Some("stale element reference") {
                return;
            }
            if started.elapsed() > Duration::from_secs(15) {
                panic!("clicking {css} left {} in place", self.url().await);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POSTs `action` to the element `css` selects. An element found on a page
    /// that was replaced before the action reached it is "stale": the action
    /// never happened, so it is found again on the new page and retried.
    async fn on_element(&self, css: &str, action: &str, body: Value) {
        for _ in 0..20 {
            let e = self.find(css).await;
            let path = format!("/element/{e}/{action}");
            let v = self
                .send(reqwest::Method::POST, &path, Some(body.clone()))
                .await;
            match v.get("error").and_then(Value::as_str) {
                None => return,
                Some("stale element reference") => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Some(_) => panic!("WebDriver {action} on {css}: {v}"),
            }
        }
        panic!("{css} went stale 20 times in a row");
    }

    /// Wait up to 15 s for the current URL to satisfy `pred`.
    pub async fn wait_url(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let u = self.url().await;
            if pred(&u) {
                return u;
            }
            if started.elapsed() > Duration::from_secs(15) {
                panic!("never reached {what}; at {u}:\n{}", self.source().await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait up to 15 s for the current page (URL and source) to satisfy
    /// `pred`: for pages that share a URL, such as oidc-provider's login and
    /// consent pages, where only the content tells which one has loaded.
    pub async fn wait_page(&self, what: &str, pred: impl Fn(&str, &str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let u = self.url().await;
            let page = self.source().await;
            if pred(&u, &page) {
                return u;
            }
            if started.elapsed() > Duration::from_secs(15) {
                panic!("never reached {what}; at {u}:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The cookies of the current page, as WebDriver reports them.
    pub async fn cookies(&self) -> Vec<Value> {
        self.call(reqwest::Method::GET, "/cookie", None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub async fn screenshot(&self, to: &Path) {
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = STANDARD.decode(b64.as_str().unwrap()).unwrap();
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End the session (Chromium exits), then chromedriver by its own pid.
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        reqwest::Client::new().delete(&url).send(),
                    )
                    .await;
                });
            })
            .join()
        });
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.driver.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if super::wait_timeout(&mut self.driver, Duration::from_secs(5)).is_none() {
            let _ = self.driver.kill();
            let _ = self.driver.wait();
        }
    }
}
