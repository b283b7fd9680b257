//! The test KDC of scripts/kdc (started by scripts/test): credential caches, a
//! Kerberos-enabled daemon, and curl's Negotiate.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::Daemon;

/// The KDC directory of scripts/kdc. Missing means the suite was not started by
/// scripts/test: fail, do not skip.
pub fn kdc_dir() -> PathBuf {
    let dir = std::env::var_os("PORTCULLIS_TEST_KRB5_DIR").expect(
        "PORTCULLIS_TEST_KRB5_DIR is not set: run scripts/test (it starts the test KDC with scripts/kdc)",
    );
    assert!(
        std::env::var_os("KRB5_CONFIG").is_some(),
        "KRB5_CONFIG is not set"
    );
    PathBuf::from(dir)
}

/// `kinit` into a fresh credential cache in `dir`.
pub fn kinit(dir: &Path, principal: &str, password: &str) -> String {
    let cache = format!(
        "FILE:{}/cc-{}",
        dir.display(),
        principal.replace(['/', '@'], "_")
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kdc");
    let out = Command::new(script)
        .arg("kinit")
        .arg(kdc_dir())
        .args([principal, password, &cache])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kinit {principal}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cache
}

pub fn start(dir: &Path, extra: &[&str]) -> Daemon {
    let keytab = format!(
        "security.krb_keytab=FILE:{}/http.keytab",
        kdc_dir().display()
    );
    let mut defs = vec!["security.use_kerberos=true", keytab.as_str()];
    defs.extend_from_slice(extra);
    Daemon::start(dir, &defs)
}

/// The daemon's URL by host name: the service principal is HTTP/localhost.
pub fn url(d: &Daemon) -> String {
    format!("https://localhost:{}", d.port)
}

pub fn curl_negotiate(d: &Daemon, cache: &str) -> (serde_json::Value, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-v",
            "--http1.1",
            "--negotiate",
            "-u",
            ":",
            "--cacert",
        ])
        .arg(d.ca())
        .args(["-X", "POST", &format!("{}/v1/login", url(d))])
        .env("KRB5CCNAME", cache)
        .output()
        .unwrap();
    let body = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (body, String::from_utf8_lossy(&out.stderr).into_owned())
}
