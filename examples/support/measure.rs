//! Measuring helpers shared by the benchmark examples (loadgen and the floors), so
//! every figure in the README is computed the same way. Included with
//! `#[path = "support/measure.rs"] mod measure;`.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

/// CPU time (user + system) this process has used, in seconds.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct it is given and nothing else.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Nearest-rank percentile of sorted samples, in milliseconds; `per_ms` is how many
/// sample units make a millisecond (1000 for µs, 1e6 for ns).
pub fn percentile(sorted: &[u32], p: f64, per_ms: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / per_ms
}

/// Append every latency, one per line, so several runs can be pooled.
pub fn write_latencies(path: &Path, sorted: &[u32]) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut w = std::io::BufWriter::new(file);
    for us in sorted {
        writeln!(w, "{us}")?;
    }
    w.flush()
}
