//! The floor for Kerberos-login benchmarks: `gss_accept_sec_context` alone, no
//! daemon, no TLS, no HTTP — a new acceptor context (`GSS_C_NO_CREDENTIAL`, so MIT
//! reads the keytab named by `KRB5_KTNAME`) stepping one fresh initiator token, the
//! same call the kerberos mechanism makes per login.
//!
//!   KRB5_CONFIG=… KRB5CCNAME=… KRB5_KTNAME=FILE:http.keytab KRB5RCACHEDIR=… \
//!   cargo run --release --example krb_floor -- --spn HTTP@localhost --concurrency 2 \
//!       --duration 5 --json
//!
//! Each of `--concurrency` threads makes a batch of tokens (`gss_init_sec_context`
//! from the ccache, not timed), then all threads accept their batches at the same
//! time (timed, each accept on its own), then the next batch. Accepts per second are
//! the accepts over the wall time of the accept phases only; p50/p99 are of single
//! accepts. MIT's replay cache stays on (each accept records its authenticator in
//! `KRB5RCACHEDIR`), as in the daemon: it is part of the real cost.
//!
//! Prints the same shape as loadgen and pam_floor (`init_mean_ms`: the mean time to
//! make one token, for scale; `accept_cpu_us`: the CPU time the accepting threads
//! spent per successful accept, from CLOCK_THREAD_CPUTIME_ID read around each accept
//! and its completion check and context release only, so the token making in the same
//! process is left out — the acceptor's own CPU cost of a login). `--latencies FILE` appends every accept's latency (µs,
//! one a line) for pooling several runs.

use std::path::PathBuf;

#[path = "support/measure.rs"]
mod measure;
use measure::{percentile, write_latencies};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use libgssapi::context::{ClientCtx, CtxFlags, SecurityContext, ServerCtx};
use libgssapi::name::Name;
use libgssapi::oid::{
    GSS_MECH_KRB5, GSS_MECH_SPNEGO, GSS_NT_HOSTBASED_SERVICE, GSS_NT_KRB5_PRINCIPAL, Oid,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mech {
    Spnego,
    Krb5,
}

#[derive(Parser)]
#[command(about = "gss_accept_sec_context alone, for portcullis benchmarks")]
struct Args {
    /// Service the tokens are for: HTTP@host, HTTP/host or HTTP/host@REALM
    #[arg(long, default_value = "HTTP@localhost")]
    spn: String,
    #[arg(long, value_enum, default_value_t = Mech::Spnego)]
    mech: Mech,
    /// Threads accepting at the same time
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Seconds of accepting (token making not counted)
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Tokens each thread makes before an accept phase
    #[arg(long, default_value_t = 100)]
    batch: usize,
    #[arg(long)]
    json: bool,
    /// Append each accept's latency in µs, one a line (to pool several runs)
    #[arg(long, value_name = "FILE")]
    latencies: Option<PathBuf>,
}

struct Initiator {
    spn: String,
    name_type: &'static Oid,
    mech: &'static Oid,
}

impl Initiator {
    fn new(args: &Args) -> Initiator {
        let spn = args.spn.as_str();
        let (spn, name_type) = match (spn.split_once('/'), spn.contains('@')) {
            (Some(_), true) => (spn.to_string(), &GSS_NT_KRB5_PRINCIPAL),
            (Some((service, host)), false) => {
                (format!("{service}@{host}"), &GSS_NT_HOSTBASED_SERVICE)
            }
            (None, _) => (spn.to_string(), &GSS_NT_HOSTBASED_SERVICE),
        };
        let mech = match args.mech {
            Mech::Spnego => &GSS_MECH_SPNEGO,
            Mech::Krb5 => &GSS_MECH_KRB5,
        };
        Initiator {
            spn,
            name_type,
            mech,
        }
    }

    /// A fresh AP-REQ (wrapped in SPNEGO unless --mech krb5).
    fn token(&self) -> Result<Vec<u8>, String> {
        let target = Name::new(self.spn.as_bytes(), Some(self.name_type))
            .map_err(|e| format!("service name {}: {e}", self.spn))?;
        let mut ctx = ClientCtx::new(None, target, CtxFlags::GSS_C_MUTUAL_FLAG, Some(self.mech));
        Ok(ctx
            .step(None, None)
            .map_err(|e| {
                format!(
                    "gss_init_sec_context for {} (kinit? KRB5CCNAME?): {e}",
                    self.spn
                )
            })?
            .ok_or("gss_init_sec_context produced no token")?
            .to_vec())
    }
}

/// One acceptor context stepping `token`: the time of this call is what is measured.
fn accept(token: &[u8]) -> Result<ServerCtx, String> {
    let mut ctx = ServerCtx::new(None);
    ctx.step(token)
        .map_err(|e| format!("gss_accept_sec_context (KRB5_KTNAME?): {e}"))?;
    Ok(ctx)
}

/// Not timed: the exchange really completed in one step, as the daemon demands.
fn check(ctx: Result<ServerCtx, String>) -> Result<(), String> {
    match ctx?.open() {
        Ok(true) => Ok(()),
        Ok(false) => Err("the acceptor context is not complete after one token".into()),
        Err(e) => Err(format!("gss_inquire_context: {e}")),
    }
}

/// CPU time this thread has used so far (CLOCK_THREAD_CPUTIME_ID).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct it is given and nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[derive(Default)]
struct Thread {
    latencies: Vec<u32>,
    /// CPU time of the accepts (with their check and context release).
    accept_cpu: Duration,
    /// Time spent making tokens (not part of the figures, reported for scale).
    making: Duration,
    made: u64,
    errors: u64,
    samples: Vec<String>,
}

impl Thread {
    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.samples.len() < 3 && !self.samples.contains(&e) {
            self.samples.push(e);
        }
    }
}

fn main() {
    let args = Args::parse();
    if args.concurrency == 0 || args.batch == 0 || args.duration.is_nan() || args.duration <= 0.0 {
        eprintln!("krb_floor: --concurrency, --batch and --duration must be positive");
        std::process::exit(2);
    }
    let initiator = Initiator::new(&args);
    // The first token gets the service ticket from the KDC into the ccache; every
    // later one is a local operation. Accept it too: it opens the keytab once.
    let first = initiator.token().unwrap_or_else(|e| {
        eprintln!("krb_floor: {e}");
        std::process::exit(2);
    });
    if let Err(e) = check(accept(&first)) {
        eprintln!("krb_floor: {e}");
        std::process::exit(2);
    }

    let wanted = Duration::from_secs_f64(args.duration);
    let barrier = Barrier::new(args.concurrency);
    let stop = AtomicBool::new(false);
    // Wall time of the accept phases, kept by thread 0.
    let accepting = Mutex::new(Duration::ZERO);
    let results: Vec<Thread> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.concurrency)
            .map(|i| {
                let (initiator, barrier, stop, accepting, args) =
                    (&initiator, &barrier, &stop, &accepting, &args);
                s.spawn(move || {
                    let mut t = Thread::default();
                    loop {
                        let making = Instant::now();
                        let tokens: Vec<Result<Vec<u8>, String>> =
                            (0..args.batch).map(|_| initiator.token()).collect();
                        t.making += making.elapsed();
                        t.made += args.batch as u64;
                        barrier.wait();
                        let phase = Instant::now();
                        for token in tokens {
                            let token = match token {
                                Ok(t) => t,
                                Err(e) => {
                                    t.error(e);
                                    continue;
                                }
                            };
                            let cpu = thread_cpu();
                            let began = Instant::now();
                            let ctx = accept(&token);
                            let took = began.elapsed();
                            let checked = check(ctx);
                            t.accept_cpu += thread_cpu().saturating_sub(cpu);
                            match checked {
                                Ok(()) => t
                                    .latencies
                                    .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX)),
                                Err(e) => t.error(e),
                            }
                        }
                        barrier.wait();
                        if i == 0 {
                            let mut total = accepting.lock().unwrap();
                            *total += phase.elapsed();
                            if *total >= wanted {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                        barrier.wait();
                        if stop.load(Ordering::Relaxed) {
                            return t;
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let elapsed = accepting.into_inner().unwrap().as_secs_f64();
    let mut lat: Vec<u32> = results
        .iter()
        .flat_map(|t| t.latencies.iter().copied())
        .collect();
    lat.sort_unstable();
    let errors: u64 = results.iter().map(|t| t.errors).sum();
    let mut samples: Vec<&String> = results.iter().flat_map(|t| t.samples.iter()).collect();
    samples.dedup();
    for e in samples.iter().take(5) {
        eprintln!("krb_floor: error: {e}");
    }
    if let Some(path) = &args.latencies
        && let Err(e) = write_latencies(path, &lat)
    {
        eprintln!("krb_floor: {}: {e}", path.display());
        std::process::exit(2);
    }
    let made: u64 = results.iter().map(|t| t.made).sum();
    let making: f64 = results.iter().map(|t| t.making.as_secs_f64()).sum();
    // Per token, per thread: at concurrency above the core count this includes waiting.
    let init_ms = if made > 0 {
        making * 1000.0 / made as f64
    } else {
        0.0
    };
    let accept_cpu: f64 = results.iter().map(|t| t.accept_cpu.as_secs_f64()).sum();
    let accept_cpu_us = if lat.is_empty() {
        0.0
    } else {
        accept_cpu * 1e6 / lat.len() as f64
    };
    let pct = |p: f64| percentile(&lat, p, 1000.0);
    let rate = if elapsed > 0.0 {
        lat.len() as f64 / elapsed
    } else {
        0.0
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({"mode": "gss_accept", "spn": initiator.spn,
                "concurrency": args.concurrency, "seconds": (elapsed * 1000.0).round() / 1000.0,
                "requests": lat.len(), "rate": (rate * 10.0).round() / 10.0,
                "p50_ms": pct(0.5), "p99_ms": pct(0.99), "errors": errors,
                "init_mean_ms": (init_ms * 1000.0).round() / 1000.0,
                "accept_cpu_us": (accept_cpu_us * 10.0).round() / 10.0})
        );
    } else {
        println!(
            "gss_accept {} c={} {elapsed:.2}s accepting: {rate:.1} accepts/s ({} ok), p50 {:.3} ms, p99 {:.3} ms, {errors} errors, CPU {accept_cpu_us:.1} µs/accept; making a token (not counted) {init_ms:.3} ms",
            initiator.spn,
            args.concurrency,
            lat.len(),
            pct(0.5),
            pct(0.99)
        );
    }
}
