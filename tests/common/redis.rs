//! A real `redis-server` (Debian package) per test, on a kernel-chosen loopback
//! port, with its own directory; stopped by its pid (and on drop). A test can stop
//! it and start it again on the same port to see what the daemons do meanwhile.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis::devcerts;

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    tls: bool,
}

impl RedisServer {
    /// Plain `redis://`.
    pub fn start() -> RedisServer {
        Self::launch(false)
    }

    /// TLS only (`rediss://`), with a certificate for localhost signed by a CA of
    /// its own ([`RedisServer::ca_cert`]).
    pub fn start_tls() -> RedisServer {
        Self::launch(true)
    }

    fn launch(tls: bool) -> RedisServer {
        let dir = super::tempdir();
        if tls {
            devcerts::ensure_server(dir.path(), "localhost").expect("certificates for redis");
        }
        let mut r = RedisServer {
            child: None,
            port: super::free_port(),
            dir,
            tls,
        };
        r.resume();
        r
    }

    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://localhost:{}/0", self.port)
        } else {
            format!("redis://127.0.0.1:{}/0", self.port)
        }
    }

    pub fn ca_cert(&self) -> PathBuf {
        assert!(self.tls, "only the TLS server has a CA");
        self.dir.path().join("ca.pem")
    }

    /// `-D` settings that point a daemon at this server.
    pub fn defines(&self, prefix: &str) -> Vec<String> {
        let mut d = vec![
            "security.session_store=redis".to_string(),
            format!("security.session_redis_url={}", self.url()),
            format!("security.session_redis_prefix={prefix}"),
        ];
        if self.tls {
            d.push(format!(
                "security.session_redis_ca_cert={}",
                self.ca_cert().display()
            ));
        }
        d
    }

    /// Start (again) on the same port; returns once it answers PING.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "redis-server is running already");
        let bin = which_redis();
        let mut cmd = Command::new(bin);
        let d = self.dir.path();
        cmd.current_dir(d)
            // Every write on disk before it is acknowledged, so a test that stops
            // and resumes the server finds the sessions it had.
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(d)
            .arg("--logfile")
            .arg(d.join("redis.log"));
        if self.tls {
            cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(d.join("server.pem"))
                .arg("--tls-key-file")
                .arg(d.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(d.join("ca.pem"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            cmd.args(["--port", &self.port.to_string()]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run redis-server (scripts/test installs the redis-server package)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.listening() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("redis-server exited at start ({status}): {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server did not listen on {}: {}",
            self.port,
            self.log()
        );
    }

    fn listening(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.tls {
            // A TLS port accepts the connection; PING needs a handshake, so the
            // accept is the readiness signal.
            return true;
        }
        s.set_read_timeout(Some(Duration::from_secs(1))).ok();
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Stop it by its pid (SIGKILL: like a crash or a pulled cable) and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGCONT first: a paused server would otherwise keep its port.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP / SIGCONT: a Redis that accepts connections but never answers.
    pub fn pause(&self, paused: bool) {
        let pid = nix::unistd::Pid::from_raw(self.child.as_ref().expect("running").id() as i32);
        let sig = if paused {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        nix::sys::signal::kill(pid, sig).unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// One command through `redis-cli` (plain servers only), its output trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        assert!(!self.tls, "redis-cli is used on the plain server only");
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (package redis-tools)");
        assert!(out.status.success(), "redis-cli {args:?} failed");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn which_redis() -> PathBuf {
    for p in ["/usr/bin/redis-server", "/usr/sbin/redis-server"] {
        if std::path::Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "redis-server is not installed: run scripts/test (it installs the redis-server package)"
    );
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
