//! The `portcullis` command line as a user runs it: login, whoami, logout, the session
//! file, exit codes, check-config and dev-certs.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn cli(runtime_dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("XDG_RUNTIME_DIR", runtime_dir)
        .env_remove("PORTCULLIS_URL")
        .env_remove("PORTCULLIS_CA")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn login_whoami_logout_with_a_certificate() {
    let dir = tempdir();
    let run = tempdir();
    let d = Daemon::start(dir.path(), &[]);
    d.dev_certs(&["pcalice"]);
    let ca = d.ca().display().to_string();
    let cert = dir.path().join("pcalice.pem").display().to_string();
    let key = dir.path().join("pcalice.key").display().to_string();

    let o = cli(
        run.path(),
        &[
            "login", "--server", &d.url, "--ca", &ca, "--cert", &cert, "--key", &key,
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("user:      pcalice") && out.contains("pcanalysts"),
        "{out}"
    );
    let file = run.path().join("portcullis/session");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // whoami uses the stored server; --ca comes from the environment here.
    let o = Command::new(BIN)
        .args(["whoami", "--json"])
        .env("XDG_RUNTIME_DIR", run.path())
        .env("PORTCULLIS_CA", &ca)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["user"], "pcalice");
    assert_eq!(strings(&v["groups"]), ["pcalice", "pcanalysts", "pcops"]);

    let o = cli(run.path(), &["logout", "--ca", &ca]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!file.exists());
    let o = cli(run.path(), &["whoami", "--ca", &ca]);
    assert_eq!(o.status.code(), Some(1), "not logged in: {}", text(&o));

    // A session revoked behind the CLI's back: whoami says so with exit 1.
    let o = cli(
        run.path(),
        &[
            "login", "--server", &d.url, "--ca", &ca, "--cert", &cert, "--key", &key, "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let auth = format!("Bearer {}", v["session"].as_str().unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(d.client(None).request(
        hyper::Method::DELETE,
        "/v1/session",
        &[("authorization", &auth)],
        None,
    ))
    .unwrap();
    let o = cli(run.path(), &["whoami", "--ca", &ca]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("expired or revoked"), "{}", text(&o));
}

#[test]
fn exit_codes_for_refusal_unreachable_and_usage() {
    let dir = tempdir();
    let run = tempdir();
    let d = Daemon::start(dir.path(), &[]);
    d.dev_certs(&["nosuchuser-pc"]);
    let ca = d.ca().display().to_string();
    let p = |f: &str| dir.path().join(f).display().to_string();

    // Unknown local user: refused, exit 1.
    let o = cli(
        run.path(),
        &[
            "login",
            "--server",
            &d.url,
            "--ca",
            &ca,
            "--cert",
            &p("nosuchuser-pc.pem"),
            "--key",
            &p("nosuchuser-pc.key"),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("account_unavailable"));

    // A certificate from a CA the server does not trust: refused in the handshake, exit 1.
    let other = tempdir();
    dev_certs(other.path(), &["pcalice"]);
    let o = cli(
        run.path(),
        &[
            "login",
            "--server",
            &d.url,
            "--ca",
            &ca,
            "--cert",
            other.path().join("pcalice.pem").to_str().unwrap(),
            "--key",
            other.path().join("pcalice.key").to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    // Server certificate not trusted by the client: exit 3.
    let o = cli(
        run.path(),
        &[
            "login",
            "--server",
            &d.url,
            "--ca",
            other.path().join("ca.pem").to_str().unwrap(),
            "--cert",
            &p("nosuchuser-pc.pem"),
            "--key",
            &p("nosuchuser-pc.key"),
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));

    // Nothing listening: exit 3.
    let port = free_port();
    let o = cli(
        run.path(),
        &[
            "login",
            "--server",
            &format!("https://127.0.0.1:{port}"),
            "--ca",
            &ca,
            "--cert",
            &p("nosuchuser-pc.pem"),
            "--key",
            &p("nosuchuser-pc.key"),
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));

    // Usage errors: exit 2.
    assert_eq!(
        cli(run.path(), &["login", "--cert", "x"]).status.code(),
        Some(2)
    );
    assert_eq!(cli(run.path(), &["frobnicate"]).status.code(), Some(2));
}

#[test]
fn check_config_lists_every_problem_and_masks_secrets() {
    let dir = tempdir();
    let conf = dir.path().join("a.conf");
    std::fs::write(
        &conf,
        r#"{"security": {"sesion_ttl": 5, "oidc": {"introspection_client_secret": "hunter2"}},
            "ssl.min_version": "1.1"}"#,
    )
    .unwrap();
    let o = Command::new(BIN)
        .args([
            "check-config",
            "-c",
            conf.to_str().unwrap(),
            "-D",
            "system.lisen=1",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(r#"unknown key "security.sesion_ttl" (did you mean "security.session_ttl"?)"#),
        "{err}"
    );
    assert!(
        err.contains(r#"unknown key "system.lisen" (did you mean "system.listen"?)"#),
        "{err}"
    );
    assert!(
        err.contains(r#""ssl.min_version" must be one of 1.2, 1.3"#),
        "{err}"
    );
    assert!(!err.contains("hunter2"));

    // A valid one prints the effective configuration, secret masked, -D winning.
    let o = Command::new(BIN)
        .args([
            "check-config",
            "--dev",
            "-D",
            "security.oidc.introspection_client_secret=hunter2",
        ])
        .args(["-D", "security.session_ttl=99"])
        .arg("-D")
        .arg(format!("system.state_dir={}", dir.path().display()))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["security"]["session_ttl"], 99);
    assert_eq!(v["security"]["oidc"]["introspection_client_secret"], "***");
    assert_eq!(v["system"]["listen"], serde_json::json!(["127.0.0.1:4367"]));
    assert!(!text(&o).contains("hunter2"));

    // A broken label file is caught by check-config with its line.
    let gl = dir.path().join("gl.csv");
    std::fs::write(&gl, "pcanalysts,apple\nlonely\n").unwrap();
    let o = Command::new(BIN)
        .args(["check-config", "--dev"])
        .arg("-D")
        .arg(format!("system.state_dir={}", dir.path().display()))
        .arg("-D")
        .arg(format!("security.grouplabelfile={}", gl.display()))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("gl.csv:2"),
        "{}",
        text(&o)
    );
}

#[test]
fn serve_refuses_a_bad_configuration_with_exit_2() {
    let dir = tempdir();
    let gl = dir.path().join("gl.csv");
    std::fs::write(&gl, "pcanalysts\n").unwrap();
    let def = format!("security.grouplabelfile={}", gl.display());
    match Daemon::try_start(dir.path(), &[&def]) {
        Ok(_) => panic!("started with a broken label file"),
        Err(e) => assert!(
            e.contains("exit code Some(2)") && e.contains("gl.csv:1"),
            "{e}"
        ),
    }
}

#[test]
fn dev_mode_reuses_its_ca_across_restarts() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &[]);
    let ca1 = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let key_mode = std::fs::metadata(dir.path().join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    assert!(d.stop().success());
    let _d = Daemon::start(dir.path(), &[]);
    assert_eq!(ca1, std::fs::read(dir.path().join("ca.pem")).unwrap());
}

#[test]
fn the_shipped_example_configuration_is_valid() {
    let dir = tempdir();
    dev_certs(dir.path(), &[]);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = |f: &str| dir.path().join(f).display().to_string();
    let o = Command::new(BIN)
        .arg("check-config")
        .arg("-c")
        .arg(root.join("etc/portcullis/portcullis.conf"))
        // Only the file locations of this machine differ from an installed host.
        .args(["-D", &format!("ssl.cert_file={}", p("server.pem"))])
        .args(["-D", &format!("ssl.key_file={}", p("server.key"))])
        .args(["-D", &format!("ssl.client_ca_file={}", p("ca.pem"))])
        .args([
            "-D",
            &format!(
                "security.labelfile={}",
                root.join("etc/portcullis/label.csv").display()
            ),
        ])
        .args([
            "-D",
            &format!(
                "security.grouplabelfile={}",
                root.join("etc/portcullis/grouplabel.csv").display()
            ),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["security"]["mechanisms"],
        serde_json::json!(["password", "certificate"])
    );
}

/// A leaf in the client CA file would be a trust anchor whose holder can issue
/// certificates for any user (the Vault CVE-2024-2048 pattern): a configuration error.
#[test]
fn a_leaf_in_the_client_ca_file_is_a_configuration_error() {
    let dir = tempdir();
    dev_certs(dir.path(), &["pcalice"]);
    let p = |f: &str| dir.path().join(f).display().to_string();
    // The real CA and, pinned after it, a user's own certificate.
    let bundle = dir.path().join("bundle.pem");
    let mut pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    pem.push_str(&std::fs::read_to_string(dir.path().join("pcalice.pem")).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    let defines = [
        format!("ssl.cert_file={}", p("server.pem")),
        format!("ssl.key_file={}", p("server.key")),
        format!("ssl.client_ca_file={}", bundle.display()),
        format!("system.state_dir={}", dir.path().display()),
    ];
    let mut cmd = Command::new(BIN);
    cmd.arg("check-config");
    for d in &defines {
        cmd.arg("-D").arg(d);
    }
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(err.contains("bundle.pem"), "{err}");
    assert!(err.contains("CN=pcalice"), "{err}");
    assert!(err.contains("CA:TRUE"), "{err}");

    // serve refuses it too.
    let defs: Vec<&str> = defines.iter().map(String::as_str).collect();
    match Daemon::try_start(dir.path(), &defs) {
        Ok(_) => panic!("started with a leaf in the client CA file"),
        Err(e) => assert!(
            e.contains("exit code Some(2)") && e.contains("bundle.pem") && e.contains("pcalice"),
            "{e}"
        ),
    }

    // The CA alone is fine.
    let o = Command::new(BIN)
        .args(["check-config", "-D", &defines[0], "-D", &defines[1]])
        .args(["-D", &format!("ssl.client_ca_file={}", p("ca.pem"))])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}
