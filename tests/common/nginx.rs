//! A real nginx (Debian package) in front of test daemons: its own prefix
//! directory, config and logs, on a kernel-chosen loopback port, in the
//! foreground and stopped by its pid (and on drop).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nginx {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

/// Where Debian's nginx keeps its dynamic modules (`libnginx-mod-*`).
pub const MODULES: &str = "/usr/lib/nginx/modules";

impl Nginx {
    /// Start nginx with `body` as the main context; `{port}` in it is replaced by
    /// the port it must listen on (127.0.0.1). `body` supplies `events {}` and its
    /// `http`/`stream` blocks; the directives that keep nginx in this directory
    /// (pid, logs, temp paths) are added here.
    pub fn start(body: &str) -> Nginx {
        Self::start_on(super::free_port(), body)
    }

    /// [`Nginx::start`] on a port chosen beforehand (when another server must
    /// know it first, e.g. as an allowed redirect target).
    pub fn start_on(port: u16, body: &str) -> Nginx {
        let dir = super::tempdir();
        let d = dir.path();
        let user = if nix::unistd::Uid::effective().is_root() {
            "user root;\n"
        } else {
            ""
        };
        let conf = format!(
            "{user}daemon off;\nworker_processes 1;\npid {pid};\nerror_log {err} info;\n{body}\n",
            pid = d.join("nginx.pid").display(),
            err = d.join("error.log").display(),
            body = body.replace("{port}", &port.to_string()),
        );
        std::fs::write(d.join("nginx.conf"), &conf).unwrap();
        let child = Command::new(which_nginx())
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .arg("-e")
            .arg(d.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run nginx (scripts/test installs it)");
        let mut n = Nginx { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return n;
            }
            if let Some(status) = n.child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                n.child.stderr.take().unwrap().read_to_string(&mut err).ok();
                panic!(
                    "nginx exited at start ({status}): {err}\n{}\n{conf}",
                    n.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nginx did not listen on {port}: {}", n.log());
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

fn which_nginx() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("nginx is not installed: run scripts/test (it installs the nginx package)");
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: a fast shutdown of the master and its worker.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if super::wait_timeout(&mut self.child, Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The README's nginx site: `auth_request` to the daemon on `daemon_port` (trusting
/// `ca`), browsers without identity sent to `login` with `rd`, the identity headers
/// set (never appended) for `backend`. TLS on the listener with `tls` (cert, key).
pub fn portcullis_site(
    daemon_port: u16,
    ca: &Path,
    backend: u16,
    login: &str,
    tls: Option<(&Path, &Path)>,
) -> String {
    let listen = match tls {
        Some((cert, key)) => format!(
            "listen 127.0.0.1:{{port}} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};",
            cert.display(),
            key.display()
        ),
        None => "listen 127.0.0.1:{port};".to_string(),
    };
    format!(
        r#"events {{}}
http {{
  access_log off;
  server {{
    {listen}
    location = /_portcullis {{
      internal;
      proxy_pass https://127.0.0.1:{daemon_port}/v1/authorize;
      proxy_ssl_trusted_certificate {ca};
      proxy_ssl_verify on;
      proxy_ssl_name localhost;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-Proto $scheme;
    }}
    location @unauthorized {{
      if ($http_accept ~* "text/html") {{
        return 302 {login}?rd=$scheme://$http_host$request_uri;
      }}
      return 401;
    }}
    location / {{
      auth_request /_portcullis;
      error_page 401 = @unauthorized;
      auth_request_set $pc_user $upstream_http_x_forwarded_user;
      auth_request_set $pc_groups $upstream_http_x_forwarded_groups;
      auth_request_set $pc_labels $upstream_http_x_forwarded_labels;
      auth_request_set $pc_org $upstream_http_arlas_org_filter;
      proxy_set_header X-Forwarded-User $pc_user;
      proxy_set_header X-Forwarded-Groups $pc_groups;
      proxy_set_header X-Forwarded-Labels $pc_labels;
      proxy_set_header arlas-org-filter $pc_org;
      proxy_pass http://127.0.0.1:{backend};
    }}
  }}
}}"#,
        ca = ca.display(),
    )
}
