//! The floor for password-login benchmarks: bare PAM transactions in a loop, no
//! daemon, no TLS, no HTTP — `pam_start`, `pam_authenticate`, `pam_acct_mgmt`,
//! `pam_end`, the same calls the password mechanism makes, for one user.
//!
//!   cargo run --release --example pam_floor -- --service portcullis-test \
//!       --user pcalice --password alice-Secret-1 --concurrency 2 --duration 5 --json
//!
//! Prints transactions per second and p50/p99 latency, in the same shape as loadgen,
//! and the process's CPU time per transaction (`cpu_us`; PAM runs in-process, so
//! that is the PAM stack's own cost). `--latencies FILE` appends every successful
//! transaction's latency (µs, one a line) for pooling several runs. `runq_wait_us`:
//! time the threads spent runnable but waiting for a CPU, per transaction.

use std::ffi::{CStr, CString};
use std::path::PathBuf;

#[path = "support/measure.rs"]
mod measure;
use measure::{cpu_seconds, percentile, write_latencies};
use std::time::{Duration, Instant};

use clap::Parser;
use pam_client::{ConversationHandler, ErrorCode, Flag};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "portcullis-test")]
    service: String,
    #[arg(long)]
    user: String,
    #[arg(long)]
    password: String,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    #[arg(long)]
    json: bool,
    /// Append each successful transaction's latency in µs, one a line
    #[arg(long, value_name = "FILE")]
    latencies: Option<PathBuf>,
}

struct Fixed {
    user: String,
    password: String,
}

impl ConversationHandler for Fixed {
    fn prompt_echo_on(&mut self, _: &CStr) -> Result<CString, ErrorCode> {
        CString::new(self.user.as_str()).map_err(|_| ErrorCode::CONV_ERR)
    }
    fn prompt_echo_off(&mut self, _: &CStr) -> Result<CString, ErrorCode> {
        CString::new(self.password.as_str()).map_err(|_| ErrorCode::CONV_ERR)
    }
    fn text_info(&mut self, _: &CStr) {}
    fn error_msg(&mut self, _: &CStr) {}
}

fn once(a: &Args) -> Result<(), ErrorCode> {
    let conv = Fixed {
        user: a.user.clone(),
        password: a.password.clone(),
    };
    let mut pam =
        pam_client::Context::new(&a.service, Some(&a.user), conv).map_err(|e| e.code())?;
    pam.set_rhost(Some("127.0.0.1")).map_err(|e| e.code())?;
    pam.authenticate(Flag::DISALLOW_NULL_AUTHTOK)
        .map_err(|e| e.code())?;
    pam.acct_mgmt(Flag::DISALLOW_NULL_AUTHTOK)
        .map_err(|e| e.code())?;
    Ok(())
}

/// Time this thread has spent runnable but waiting for a CPU (the second field of
/// /proc/thread-self/schedstat), in ns; 0 when the kernel does not keep it.
fn runqueue_wait_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args = Args::parse();
    let cpu_before = cpu_seconds();
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let results: Vec<(Vec<u32>, u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.concurrency)
            .map(|_| {
                s.spawn(|| {
                    let (mut lat, mut errors) = (Vec::new(), 0u64);
                    let waited = runqueue_wait_ns();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        match once(&args) {
                            Ok(()) => lat.push(t.elapsed().as_micros() as u32),
                            Err(_) => errors += 1,
                        }
                    }
                    (lat, errors, runqueue_wait_ns().saturating_sub(waited))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let mut lat: Vec<u32> = results
        .iter()
        .flat_map(|(l, _, _)| l.iter().copied())
        .collect();
    let errors: u64 = results.iter().map(|(_, e, _)| e).sum();
    let waited_ns: u64 = results.iter().map(|(_, _, w)| w).sum();
    lat.sort_unstable();
    let pct = |p: f64| percentile(&lat, p, 1000.0);
    let rate = lat.len() as f64 / elapsed;
    let (cpu_us, wait_us) = if lat.is_empty() {
        (0.0, 0.0)
    } else {
        let n = lat.len() as f64;
        (cpu * 1e6 / n, waited_ns as f64 / 1e3 / n)
    };
    if let Some(path) = &args.latencies
        && let Err(e) = write_latencies(path, &lat)
    {
        eprintln!("pam_floor: {}: {e}", path.display());
        std::process::exit(2);
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({"mode": "pam", "service": args.service, "concurrency": args.concurrency,
                "seconds": (elapsed * 1000.0).round() / 1000.0, "requests": lat.len(),
                "rate": (rate * 10.0).round() / 10.0, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
                "errors": errors, "cpu_us": (cpu_us * 10.0).round() / 10.0,
                "runq_wait_us": (wait_us * 10.0).round() / 10.0})
        );
    } else {
        println!(
            "pam {} c={} {elapsed:.2}s: {rate:.1} tx/s, p50 {:.3} ms, p99 {:.3} ms, {errors} errors, CPU {cpu_us:.0} µs/tx",
            args.service,
            args.concurrency,
            pct(0.5),
            pct(0.99)
        );
    }
}
