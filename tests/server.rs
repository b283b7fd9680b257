//! Listener behaviour: protocol versions, HTTP/2, malformed input, limits, signals.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn s_client(d: &Daemon, version_flag: &str) -> (bool, String) {
    let connect = format!("127.0.0.1:{}", d.port);
    let ca = d.ca().display().to_string();
    // SECLEVEL=0 lets the client offer old protocols at all; the server must refuse.
    openssl(
        &[
            "s_client",
            "-connect",
            &connect,
            "-CAfile",
            &ca,
            version_flag,
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
        ],
        "",
    )
}

#[tokio::test]
async fn tls_1_1_is_refused_and_1_2_and_1_3_are_served() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &[]);
    let (ok, out) = s_client(&d, "-tls1_1");
    assert!(
        !ok && out.contains("Cipher is (NONE)"),
        "TLS 1.1 was accepted:\n{out}"
    );
    let (ok, out) = s_client(&d, "-tls1_2");
    assert!(ok && out.contains("TLSv1.2"), "{out}");
    let (ok, out) = s_client(&d, "-tls1_3");
    assert!(ok && out.contains("TLSv1.3"), "{out}");
    drop(d);

    let dir = tempdir();
    let d = Daemon::start(dir.path(), &["ssl.min_version=1.3"]);
    let (ok, out) = s_client(&d, "-tls1_2");
    assert!(!ok, "TLS 1.2 accepted with min_version 1.3:\n{out}");
    let (ok, _) = s_client(&d, "-tls1_3");
    assert!(ok);
}

#[tokio::test]
async fn http2_and_http1_are_both_served() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &[]);
    for (flag, want) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
                flag,
                "--cacert",
            ])
            .arg(d.ca())
            .arg(format!("{}/healthz", d.url))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{want} 200"));
    }
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_daemon_keeps_serving() {
    let dir = tempdir();
    let mut d = Daemon::start(dir.path(), &[]);
    d.dev_certs(&["pcalice"]);
    let c = d.client(None);
    type Case<'a> = (Vec<(&'a str, &'a str)>, Option<serde_json::Value>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("authorization", "Basic !!!not-base64!!!")],
            None,
            "base64",
        ),
        (vec![("authorization", "Negotiate %%%")], None, "base64"),
        (
            vec![("authorization", "Digest username=x")],
            None,
            "unsupported",
        ),
        (
            vec![],
            Some(json!({"mechanism": "telepathy"})),
            "unknown mechanism",
        ),
        (
            vec![],
            Some(json!({"mechanism": "password", "username": "x"})),
            "needs",
        ),
        (
            vec![],
            Some(json!({"username": "x", "pasword": "y"})),
            "pasword",
        ),
    ];
    for (headers, body, hint) in cases {
        let r = c
            .request(hyper::Method::POST, "/v1/login", &headers, body.as_ref())
            .await
            .unwrap();
        let v = r.json();
        assert_eq!(r.status, 400, "{headers:?} {body:?} -> {v}");
        assert_eq!(v["error"], "bad_request");
        assert!(v["message"].as_str().unwrap().contains(hint), "{v}");
    }
    // Not JSON at all, through curl.
    let out = std::process::Command::new("curl")
        .args(["-sS", "-w", " %{http_code}", "--cacert"])
        .arg(d.ca())
        .args([
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            "{not json",
            &format!("{}/v1/login", d.url),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with(" 400") && text.contains("bad_request"),
        "{text}"
    );

    // A 1 MiB header: refused by the HTTP layer, not a crash.
    let mut tls = tls_stream(&d).await;
    let mut req = b"POST /v1/login HTTP/1.1\r\nHost: localhost\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 1 << 20));
    req.extend_from_slice(b"\r\n\r\n");
    let (mut rd, mut wr) = tokio::io::split(&mut tls);
    let write = async {
        let _ = wr.write_all(&req).await;
    };
    let read = async {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut buf)).await;
        buf
    };
    let (_, buf) = tokio::join!(write, read);
    let head = String::from_utf8_lossy(&buf[..buf.len().min(40)]).to_string();
    assert!(
        head.starts_with("HTTP/1.1 431") || head.starts_with("HTTP/1.1 400"),
        "{head:?}"
    );

    // An oversized body (curl reads the early 413 while still sending).
    let big = dir.path().join("big.json");
    std::fs::write(&big, json!({"mechanism": "x".repeat(100_000)}).to_string()).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(d.ca())
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(format!("@{}", big.display()))
        .arg(format!("{}/v1/login", d.url))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "413");

    // Unknown paths and methods.
    assert_eq!(
        c.request(hyper::Method::GET, "/nope", &[], None)
            .await
            .unwrap()
            .status,
        404
    );
    let r = c
        .request(hyper::Method::GET, "/v1/login", &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.headers.get("allow").unwrap(), "POST");

    // Still serving, still logging people in.
    assert!(d.try_wait().is_none(), "daemon died");
    let r = post_login(&d.client(Some("pcalice")), None).await.unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn health_methods_and_metrics() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &[]);
    d.dev_certs(&["pcalice"]);
    let c = d.client(None);
    let r = c
        .request(hyper::Method::GET, "/healthz", &[], None)
        .await
        .unwrap();
    assert_eq!((r.status, r.json()["status"].clone()), (200, json!("ok")));
    let r = c
        .request(hyper::Method::GET, "/v1/auth/methods", &[], None)
        .await
        .unwrap();
    assert_eq!(r.json()["mechanisms"], json!(["password", "certificate"]));
    post_login(&d.client(Some("pcalice")), None).await.unwrap();
    post_login(&c, None).await.unwrap();
    let r = c
        .request(hyper::Method::GET, "/metrics", &[], None)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.contains(r#"portcullis_logins_total{mechanism="certificate",result="success"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"portcullis_logins_total{mechanism="none",result="rejected"} 1"#),
        "{text}"
    );
    assert!(text.contains("portcullis_active_sessions 1"), "{text}");
    assert!(
        text.contains("portcullis_login_duration_seconds_count 2"),
        "{text}"
    );
}

#[tokio::test]
async fn audit_log_is_json_lines_without_secrets() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &["log.format=json"]);
    d.dev_certs(&["pcalice"]);
    let v = d.cert_login("pcalice").await;
    let token = v["session"].as_str().unwrap().to_string();
    delete_session(&d.client(None), &token).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = d.log();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|v: &serde_json::Value| v["target"] == "audit")
        .collect();
    let login = events
        .iter()
        .find(|e| e["event"] == "login")
        .expect("login event");
    assert_eq!(login["user"], "pcalice");
    assert_eq!(login["mechanism"], "certificate");
    assert_eq!(login["result"], "success");
    assert!(login["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(login["timestamp"].is_string());
    let logout = events
        .iter()
        .find(|e| e["event"] == "logout")
        .expect("logout event");
    assert_eq!(logout["result"], "success");
    assert!(!log.contains(&token), "a session token reached the log");
    assert!(
        !log.contains(&token[4..20]),
        "part of a session token reached the log"
    );
}

#[tokio::test]
async fn sighup_reloads_labels_and_certificates_and_keeps_connections() {
    let dir = tempdir();
    let gl = dir.path().join("grouplabel.csv");
    std::fs::write(&gl, "pcanalysts,apple\n").unwrap();
    let def = format!("security.grouplabelfile={}", gl.display());
    let d = Daemon::start(dir.path(), &[&def]);
    d.dev_certs(&["pcalice"]);
    let mut conn = KeepAlive::connect(&d).await;
    assert_eq!(conn.get("/healthz").await.unwrap(), 200);
    let labels = || async { strings(&d.cert_login("pcalice").await["labels"]) };
    assert_eq!(labels().await, ["apple"]);

    std::fs::write(&gl, "pcanalysts,apple\npcops,cherry\n").unwrap();
    d.signal(Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(labels().await, ["apple", "cherry"]);

    // A broken file is reported and the previous map stays.
    std::fs::write(&gl, "pcanalysts,apple\nthis line has no label\n").unwrap();
    d.signal(Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(labels().await, ["apple", "cherry"]);
    assert!(d.log().contains("label reload failed"), "{}", d.log());

    // A broken server certificate is reported and the old one keeps serving.
    let server_pem = dir.path().join("server.pem");
    let good = std::fs::read(&server_pem).unwrap();
    std::fs::write(&server_pem, "not a certificate").unwrap();
    d.signal(Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(d.log().contains("TLS reload failed"));
    assert_eq!(
        post_login(&d.client(Some("pcalice")), None)
            .await
            .unwrap()
            .status,
        200
    );
    std::fs::write(&server_pem, good).unwrap();

    // The connection opened before the reloads is still alive.
    assert_eq!(conn.get("/healthz").await.unwrap(), 200);
}

#[tokio::test]
async fn sigterm_drains_the_request_in_flight_and_exits_0() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &[]);
    let mut tls = tls_stream(&d).await;
    // Half a request: headers and part of the body.
    let body = br#"{"mechanism":"certificate"}"#;
    let head = format!(
        "POST /v1/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&body[..5]).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    d.signal(Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New connections are no longer accepted...
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", d.port))
            .await
            .is_err()
    );
    // ...but the request in flight completes.
    tls.write_all(&body[5..]).await.unwrap();
    tls.flush().await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
    let status = d.stop();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_in_the_backlog() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &["system.max_connections=2"]);
    let mut a = KeepAlive::connect(&d).await;
    let mut b = KeepAlive::connect(&d).await;
    assert_eq!(a.get("/healthz").await.unwrap(), 200);
    assert_eq!(b.get("/healthz").await.unwrap(), 200);
    let third = tokio::spawn({
        let url = d.url.clone();
        let ca = d.ca();
        async move {
            portcullis::cli::client::Client::new(&url, Some(&ca), None)
                .unwrap()
                .request(hyper::Method::GET, "/healthz", &[], None)
                .await
                .map(|r| r.status)
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served beyond max_connections=2"
    );
    drop(a);
    let status = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(b.get("/healthz").await.unwrap(), 200);
}

#[tokio::test]
async fn plaintext_is_served_only_on_loopback() {
    let dir = tempdir();
    // Plaintext on loopback: allowed (the certificate mechanism needs TLS, so none is left
    // but the config still needs one mechanism; use the check-config path for the refusal).
    let out = std::process::Command::new(BIN)
        .args([
            "check-config",
            "--dev",
            "-D",
            "ssl.enabled=false",
            "-D",
            "system.listen=0.0.0.0:4367",
        ])
        .arg("-D")
        .arg(format!("system.state_dir={}", dir.path().display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not loopback"), "{err}");
}

#[test]
fn readiness_is_sent_to_systemd_and_several_addresses_are_served() {
    use std::io::{BufRead, BufReader};
    let dir = tempdir();
    require_fixtures();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = std::process::Command::new(BIN)
        .args([
            "serve",
            "--dev",
            "-D",
            "system.listen=127.0.0.1:0,127.0.0.2:0",
            "-D",
        ])
        .arg(format!("system.state_dir={}", dir.path().display()))
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 on NOTIFY_SOCKET");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.starts_with("portcullis: listening on"))
        .take(2)
        .collect();
    assert!(
        lines[0].contains("127.0.0.1:") && lines[1].contains("127.0.0.2:"),
        "{lines:?}"
    );
    for line in &lines {
        let addr = line.trim_start_matches("portcullis: listening on https://");
        let (ip, port) = addr.rsplit_once(':').unwrap();
        // The dev certificate names localhost; point that name at each address.
        let out = std::process::Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(dir.path().join("ca.pem"))
            .args([
                "--resolve",
                &format!("localhost:{port}:{ip}"),
                &format!("https://localhost:{port}/healthz"),
            ])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{addr}");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    assert!(
        wait_timeout(&mut child, Duration::from_secs(20))
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn a_silent_client_is_cut_off_by_the_handshake_timeout() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &["system.handshake_timeout=1"]);
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", d.port))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    // Say nothing: the daemon closes the connection after the handshake timeout.
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(900));
}
