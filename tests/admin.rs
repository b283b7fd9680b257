//! The operator socket (SPEC §10) against the real daemon, through the real
//! `portcullis admin` command: sessions, revoke, explain, status, and the peer uid
//! check for a caller that is neither root nor the daemon's user.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

const LABELS: &str = "public\napple\nbanana\ncherry\n";
/// A comment and a blank line first, so a wrong line number shows.
const GROUPLABELS: &str = "# group,label...\n\npcanalysts,apple,banana\npcops,cherry\n";

fn start(dir: &Path, extra: &[&str]) -> Daemon {
    std::fs::write(dir.join("label.csv"), LABELS).unwrap();
    std::fs::write(dir.join("grouplabel.csv"), GROUPLABELS).unwrap();
    let mut defs = vec![
        format!("security.labelfile={}", dir.join("label.csv").display()),
        format!(
            "security.grouplabelfile={}",
            dir.join("grouplabel.csv").display()
        ),
        "security.default_labels=public".into(),
    ];
    defs.extend(extra.iter().map(|s| s.to_string()));
    let defs: Vec<&str> = defs.iter().map(String::as_str).collect();
    Daemon::start(dir, &defs)
}

fn socket(d: &Daemon) -> PathBuf {
    d.dir.join("admin.sock")
}

/// `portcullis admin ARGS --socket <dir>/admin.sock`, as root.
fn admin(d: &Daemon, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("admin")
        .args(args)
        .arg("--socket")
        .arg(socket(d))
        .output()
        .unwrap()
}

/// [`admin`] with `--json`: exit code and the parsed answer.
fn admin_json(d: &Daemon, args: &[&str]) -> (Option<i32>, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let o = admin(d, &all);
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!(
            "not JSON (exit {:?}): {}{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code(), v)
}

fn id_of(token: &str) -> String {
    portcullis::session::token::parse(token).unwrap().short_id()
}

fn ids(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn sessions_lists_certificate_logins_and_revoke_ends_exactly_what_it_names() {
    let dir = tempdir();
    let d = start(dir.path(), &[]);
    d.dev_certs(&["pcalice", "pcbob"]);
    let alice1 = d.cert_session("pcalice").await;
    let alice2 = d.cert_session("pcalice").await;
    let bob = d.cert_session("pcbob").await;
    let c = d.client(None);

    let (code, v) = admin_json(&d, &["sessions"]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(
        ids(&v),
        sorted(vec![id_of(&alice1), id_of(&alice2), id_of(&bob)])
    );
    for s in v["sessions"].as_array().unwrap() {
        let id = s["id"].as_str().unwrap();
        assert!(
            id.len() == 12 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{s}"
        );
        assert_eq!(s["mechanism"], "certificate", "{s}");
        assert_eq!(s["peer"], "127.0.0.1", "{s}");
        assert!(s["created"].as_str().unwrap().ends_with('Z'), "{s}");
        assert!(s["expires"].as_str().unwrap() > s["created"].as_str().unwrap());
        // Never a token, nor the whole hash.
        assert!(!s.to_string().contains("pcs_"), "{s}");
    }
    let (_, only_alice) = admin_json(&d, &["sessions", "--user", "pcalice"]);
    assert_eq!(
        ids(&only_alice),
        sorted(vec![id_of(&alice1), id_of(&alice2)])
    );
    // The human table names every session too.
    let table = String::from_utf8(admin(&d, &["sessions"]).stdout).unwrap();
    assert!(table.starts_with("ID "), "{table}");
    assert!(
        table.contains(&id_of(&bob)) && table.contains("pcbob"),
        "{table}"
    );

    // --id ends that session only.
    let (code, v) = admin_json(&d, &["revoke", "--id", &id_of(&alice1)]);
    assert_eq!((code, &v["revoked"]), (Some(0), &Value::from(1)), "{v}");
    assert_eq!(get_session(&c, &alice1).await.status, 401);
    assert_eq!(get_session(&c, &alice2).await.status, 200);
    assert_eq!(get_session(&c, &bob).await.status, 200);
    // Again: nothing to revoke is exit 1.
    let o = admin(&d, &["revoke", "--id", &id_of(&alice1)]);
    assert_eq!(o.status.code(), Some(1));
    // A malformed id is a usage error.
    assert_eq!(admin(&d, &["revoke", "--id", "zz"]).status.code(), Some(2));

    // --user ends all of that user's sessions, nobody else's.
    d.cert_session("pcalice").await;
    let (code, v) = admin_json(&d, &["revoke", "--user", "pcalice"]);
    assert_eq!((code, &v["revoked"]), (Some(0), &Value::from(2)), "{v}");
    assert_eq!(get_session(&c, &alice2).await.status, 401);
    assert_eq!(get_session(&c, &bob).await.status, 200);

    // --all ends the rest; the revocations are audited with the operator's uid.
    let o = admin(&d, &["revoke", "--all"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "revoked 1 session(s)"
    );
    assert_eq!(get_session(&c, &bob).await.status, 401);
    let (_, v) = admin_json(&d, &["sessions"]);
    assert!(ids(&v).is_empty(), "{v}");
    wait_for_log(&d, "which=all result=\"success\" count=1").await;
    assert!(
        d.log().contains("event=\"admin\" command=\"revoke\" uid=0"),
        "{}",
        d.log()
    );

    // Without a flag: usage.
    assert_eq!(admin(&d, &["revoke"]).status.code(), Some(2));
}

/// `portcullis admin status --socket PATH` as nobody:nogroup.
fn as_nobody(path: &Path) -> Output {
    Command::new(BIN)
        .args(["admin", "status", "--socket"])
        .arg(path)
        .uid(65534)
        .gid(65534)
        .current_dir("/")
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_caller_neither_root_nor_the_daemons_user_is_refused_and_audited() {
    let dir = tempdir();
    let d = start(dir.path(), &[]);
    let sock = socket(&d);
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Let nobody reach the socket file (the test's directory is 0700)...
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();

    // ...mode 0600 alone keeps it out, before the daemon sees anything.
    let o = as_nobody(&sock);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not allowed"),
        "{o:?}"
    );
    assert!(!d.log().contains("event=\"admin\""), "{}", d.log());

    // With the file opened to everyone, the SO_PEERCRED check is what refuses.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = as_nobody(&sock);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("uid 65534 may not use the operator socket"),
        "{err}"
    );
    assert!(o.stdout.is_empty(), "nothing of the status: {o:?}");
    wait_for_log(&d, "event=\"admin\" uid=65534 result=\"rejected\"").await;

    // Root still gets its answer.
    assert_eq!(admin(&d, &["status"]).status.code(), Some(0));
}

#[tokio::test]
async fn explain_a_user_a_principal_and_a_certificate() {
    let dir = tempdir();
    let d = start(dir.path(), &["security.krb_realms=EXAMPLE.TEST,OTHER.TEST"]);
    let gl = dir.path().join("grouplabel.csv").display().to_string();

    let (code, v) = admin_json(&d, &["explain", "pcalice"]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["kind"], "user");
    assert_eq!(v["user"], "pcalice");
    assert_eq!(strings(&v["groups"]), ["pcalice", "pcanalysts", "pcops"]);
    let labels: Vec<(String, Vec<String>)> = v["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["label"].as_str().unwrap().to_string(),
                l["granted_by"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|g| {
                        format!(
                            "{} {}",
                            g["group"].as_str().unwrap(),
                            g["source"].as_str().unwrap()
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        labels,
        vec![
            ("apple".to_string(), vec![format!("pcanalysts {gl}:3")]),
            ("banana".to_string(), vec![format!("pcanalysts {gl}:3")]),
            ("cherry".to_string(), vec![format!("pcops {gl}:4")]),
            (
                "public".to_string(),
                vec![" security.default_labels".to_string()]
            ),
        ]
    );
    let verdict = |v: &Value, m: &str| {
        v["mechanisms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["mechanism"] == m)
            .unwrap()["accepts"]
            .clone()
    };
    assert_eq!(verdict(&v, "certificate"), true, "{v}");
    // --dev enables password and certificate only.
    assert_eq!(verdict(&v, "kerberos"), false, "{v}");
    // The human form names the file and line of each label.
    let text = String::from_utf8(admin(&d, &["explain", "pcalice"]).stdout).unwrap();
    assert!(text.contains(&format!("{gl}:4 (group pcops)")), "{text}");
    assert!(text.contains("security.default_labels"), "{text}");

    // A principal of an allowed realm is the same user, with the same answer.
    let (code, p) = admin_json(&d, &["explain", "pcalice@OTHER.TEST"]);
    assert_eq!(code, Some(0), "{p}");
    assert_eq!(
        (p["kind"].as_str(), p["user"].as_str()),
        (Some("principal"), Some("pcalice"))
    );
    assert_eq!(p["labels"], v["labels"]);
    // Another realm maps to nobody: refused, saying why.
    let o = admin(&d, &["explain", "pcalice@ELSEWHERE.TEST"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("realm ELSEWHERE.TEST may not log in"),
        "{o:?}"
    );

    // A certificate: the user its UID names, with that user's groups and labels.
    dev_certs(dir.path(), &["pcbob"]);
    let cert = dir.path().join("pcbob.pem");
    let (code, c) = admin_json(&d, &["explain", "--cert", cert.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{c}");
    assert_eq!(
        (c["kind"].as_str(), c["user"].as_str()),
        (Some("certificate"), Some("pcbob"))
    );
    assert_eq!(strings(&c["groups"]), ["pcbob", "pcanalysts"]);
    let names: Vec<&str> = c["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["label"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["apple", "banana", "public"]);

    // A name NSS does not know: no account, and certificate logins would fail.
    let (code, n) = admin_json(&d, &["explain", "pcnosuchuser"]);
    assert_eq!(code, Some(0), "{n}");
    assert!(n["uid"].is_null() && n["account_error"].is_string(), "{n}");
    assert_eq!(verdict(&n, "certificate"), false, "{n}");
}

#[tokio::test]
async fn status_shows_listeners_sessions_dates_and_the_last_reload() {
    let dir = tempdir();
    let d = start(dir.path(), &[]);
    d.dev_certs(&["pcalice"]);
    d.cert_session("pcalice").await;

    let (code, s) = admin_json(&d, &["status"]);
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(strings(&s["listen"]), [d.url.as_str()]);
    assert_eq!(s["sessions"], 1);
    assert_eq!(s["pools_in_use"]["pam"], 0, "{s}");
    assert!(
        s["tls"]["server_cert_not_after"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(s["tls"]["client_ca_not_after"].as_array().unwrap().len(), 1);
    assert!(s["last_reload"].is_null(), "{s}");

    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for_log(&d, "reloaded label files").await;
    let (_, s) = admin_json(&d, &["status"]);
    assert_eq!(s["last_reload"]["result"], "ok", "{s}");

    // A broken label file: the reload fails, and status says so.
    std::fs::write(dir.path().join("grouplabel.csv"), "lonely\n").unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for_log(&d, "label reload failed").await;
    let text = String::from_utf8(admin(&d, &["status"]).stdout).unwrap();
    assert!(text.contains(&format!("listening: {}", d.url)), "{text}");
    assert!(text.contains("sessions:  1"), "{text}");
    assert!(text.contains(" failed\n"), "{text}");

    // A second daemon on the same state directory is refused by name.
    // (memory sessions, so the file store's own lock does not refuse it first)
    match Daemon::try_start(dir.path(), &["security.session_store=memory"]) {
        Ok(_) => panic!("a second daemon took over the operator socket"),
        Err(e) => assert!(
            e.contains("already listening on the operator socket"),
            "{e}"
        ),
    }
    // The socket is gone after a clean stop; the CLI then says the daemon is unreachable.
    let sock = socket(&d);
    assert!(d.stop().success());
    assert!(!sock.exists());
    let o = Command::new(BIN)
        .args(["admin", "status", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{o:?}");
}

/// One raw exchange on the socket: what the daemon answered (one line), if anything.
fn raw(path: &Path, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let _ = s.write_all(request);
    // The end of the request, for one without its newline.
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[tokio::test]
async fn the_protocol_is_bounded_in_size_and_time_and_refuses_what_it_does_not_know() {
    let dir = tempdir();
    let d = start(dir.path(), &[]);
    let sock = socket(&d);
    let answer = |req: &[u8]| -> Value {
        let line = raw(&sock, req);
        assert_eq!(line.lines().count(), 1, "one answer line: {line:?}");
        serde_json::from_str(&line).unwrap()
    };

    let big = vec![b'x'; 70 * 1024];
    let v = answer(&big);
    assert_eq!(v["code"], "bad_request", "{v}");
    assert!(v["error"].as_str().unwrap().contains("65536 bytes"), "{v}");
    assert_eq!(answer(b"not json\n")["code"], "bad_request");
    assert_eq!(answer(b"[1,2]\n")["code"], "bad_request");
    let v = answer(b"{\"command\":\"shutdown\"}\n");
    assert!(
        v["error"].as_str().unwrap().contains("unknown command"),
        "{v}"
    );
    let v = answer(b"{\"command\":\"revoke\",\"user\":\"a\",\"all\":true}\n");
    assert_eq!(v["code"], "bad_request", "{v}");
    // A request that ends (EOF) without its newline is still one request.
    assert_eq!(answer(b"{\"command\":\"status\"}")["ok"], true);

    // A client that says nothing is dropped after 5 s, not kept.
    use std::io::Read;
    let mut silent = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = silent.read_to_end(&mut buf);
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(4) && waited < std::time::Duration::from_secs(10),
        "{waited:?}"
    );
    assert!(buf.is_empty(), "{buf:?}");
    // And the daemon still answers.
    assert_eq!(answer(b"{\"command\":\"status\"}\n")["ok"], true);
}
