//! SPEC §10: sessions that outlive the process (the `file` store, the default).

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// Long enough for a login to be committed (batches are written within 100 ms).
const COMMITTED: Duration = Duration::from_millis(400);

#[tokio::test]
async fn sessions_survive_a_restart_and_a_kill_and_logouts_stay_logouts() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &[]);
    d.dev_certs(&["pcalice", "pcbob"]);
    let kept = d.cert_session("pcalice").await;
    tokio::time::sleep(COMMITTED).await;
    assert!(d.stop().success());
    assert!(dir.path().join("sessions.db").exists());

    let d = Daemon::start(dir.path(), &[]);
    let c = d.client(None);
    let r = get_session(&c, &kept).await;
    assert_eq!(r.status, 200, "kept across a restart: {:?}", r.json());
    assert_eq!(r.json()["user"], "pcalice");
    assert_eq!(
        strings(&r.json()["groups"]),
        ["pcalice", "pcanalysts", "pcops"]
    );

    // A logout just before a kill -9 is still a logout afterwards.
    let logged_out = d.cert_session("pcbob").await;
    let second = d.cert_session("pcbob").await;
    tokio::time::sleep(COMMITTED).await;
    assert_eq!(
        delete_session(&d.client(None), &logged_out).await.status,
        204
    );
    d.signal(Signal::SIGKILL);
    drop(d);

    let d = Daemon::start(dir.path(), &[]);
    let c = d.client(None);
    assert_eq!(get_session(&c, &kept).await.status, 200);
    assert_eq!(
        get_session(&c, &second).await.status,
        200,
        "kill -9 kept it"
    );
    assert_eq!(
        get_session(&c, &logged_out).await.status,
        401,
        "the logout was durable before its 204"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("sessions.db"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "the store file is private: {mode:o}");
}

#[tokio::test]
async fn a_second_daemon_on_the_same_file_is_refused() {
    let dir = tempdir();
    let _first = Daemon::start(dir.path(), &[]);
    let other = tempdir();
    let path = dir.path().join("sessions.db");
    let err = Daemon::try_start(
        other.path(),
        &[&format!("security.session_store_path={}", path.display())],
    )
    .err()
    .expect("the second daemon must not start");
    assert!(err.contains("exit code Some(2)"), "{err}");
    assert!(
        err.contains(&path.display().to_string()) && err.contains("in use"),
        "{err}"
    );
}

#[tokio::test]
async fn a_corrupt_store_file_stops_startup_and_is_left_alone() {
    let dir = tempdir();
    let path = dir.path().join("sessions.db");
    let junk = vec![0xa5u8; 16384];
    std::fs::write(&path, &junk).unwrap();
    let err = Daemon::try_start(dir.path(), &[])
        .err()
        .expect("a corrupt store must stop startup");
    assert!(err.contains("exit code Some(2)"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), junk, "never a silent reset");
}

#[tokio::test]
async fn the_memory_store_forgets_on_restart() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &["security.session_store=memory"]);
    d.dev_certs(&["pcalice"]);
    let token = d.cert_session("pcalice").await;
    tokio::time::sleep(COMMITTED).await;
    assert!(d.stop().success());
    let d = Daemon::start(dir.path(), &["security.session_store=memory"]);
    assert_eq!(get_session(&d.client(None), &token).await.status, 401);
    assert!(!dir.path().join("sessions.db").exists());
}

#[tokio::test]
async fn a_restart_does_not_make_an_idle_session_young_again() {
    let dir = tempdir();
    let idle = "security.session_idle_timeout=6";
    let d = Daemon::start(dir.path(), &[idle]);
    d.dev_certs(&["pcalice"]);
    let idle_one = d.cert_session("pcalice").await;
    let used_one = d.cert_session("pcalice").await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(get_session(&d.client(None), &used_one).await.status, 200);
    // A clean stop writes the last uses.
    assert!(d.stop().success());
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let d = Daemon::start(dir.path(), &[idle]);
    let c = d.client(None);
    // Over 6.5 s without use: past the idle timeout, restart or not (a restart that
    // forgot the last use would have given it 6 s more).
    assert_eq!(get_session(&c, &idle_one).await.status, 401);
    // Used about 3.5 s ago: still alive.
    assert_eq!(get_session(&c, &used_one).await.status, 200);
}
