//! The backend behind the policy front in tests: a Python HTTP server on a free
//! loopback port that answers every request with the headers it received, as a JSON
//! list of `[name, value]` pairs (repeats kept). Stopped by its pid on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Echo {
    child: Child,
    pub port: u16,
}

const SCRIPT: &str = r#"
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def answer(self):
        body = json.dumps({"method": self.command, "path": self.path,
                           "headers": [[k, v] for k, v in self.headers.items()]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = answer
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

impl Echo {
    pub fn start() -> Echo {
        let port = super::free_port();
        let child = Command::new("python3")
            .args(["-c", SCRIPT, &port.to_string()])
            .stdin(Stdio::null())
            .spawn()
            .expect("python3");
        // Owned at once, so a failure below still stops it (Drop).
        let echo = Echo { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return echo;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the echo backend did not listen on {port}");
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The values of header `name` (any case) the backend received.
pub fn received(echo_answer: &serde_json::Value, name: &str) -> Vec<String> {
    echo_answer["headers"]
        .as_array()
        .map(|hs| {
            hs.iter()
                .filter(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
                .filter_map(|h| h[1].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
