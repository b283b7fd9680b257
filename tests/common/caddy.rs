//! A real Caddy (Debian package) in front of test daemons: its own directory for
//! config and data, on a kernel-chosen loopback port, in the foreground, stopped by
//! its pid (and on drop).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Caddy {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Caddy {
    /// Start Caddy with `site` (a Caddyfile site block body) on 127.0.0.1:<port>;
    /// the global options keep it off the network and the admin API.
    pub fn start(site: &str) -> Caddy {
        let dir = super::tempdir();
        let port = super::free_port();
        let file = dir.path().join("Caddyfile");
        std::fs::write(
            &file,
            format!(
                "{{\n\tadmin off\n\tauto_https off\n}}\nhttp://127.0.0.1:{port} {{\n\tbind 127.0.0.1\n{site}\n}}\n"
            ),
        )
        .unwrap();
        let child = Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&file)
            .env("XDG_DATA_HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("caddy.log")).unwrap())
            .spawn()
            .expect("cannot run caddy (scripts/test installs the caddy package)");
        let mut c = Caddy { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return c;
            }
            if let Some(status) = c.child.try_wait().unwrap() {
                panic!("caddy exited at start ({status}): {}", c.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("caddy did not listen on {port}: {}", c.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("caddy.log")).unwrap_or_default()
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
