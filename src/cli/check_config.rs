//! `portcullis check-config`: load, validate and print the effective configuration
//! (secrets masked), then run the same startup check `serve` runs.

use std::io::Write;
use std::process::ExitCode;

use super::{ConfigArgs, EXIT_USAGE};
use crate::auth::Mechanism;
use crate::config::Source;

pub fn run(args: &ConfigArgs, sources: Vec<Source>) -> ExitCode {
    let loaded = match super::load_config(args, sources) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let dev = loaded.config.dev;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let cfg = &loaded.config;
    let sec = &cfg.security;
    let mut problems = Vec::new();
    if sec.mechanisms.contains(&Mechanism::Kerberos) {
        // SAFETY: check-config is single-threaded. Without a state dir this only
        // points KRB5_KTNAME at the configured keytab, as `serve` does.
        let prepared = unsafe { crate::auth::kerberos::prepare_process_env(&sec.krb_keytab, None) };
        problems.extend(prepared.err());
    }
    // In dev mode the certificates are created at first start, so absent is fine.
    let dev_certs_pending = dev && !cfg.ssl.cert_file.as_ref().is_some_and(|p| p.exists());
    if let Err(found) = crate::server::check_startup(cfg, !dev_certs_pending) {
        problems.extend(found);
    }
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = writeln!(
        std::io::stdout(),
        "{}",
        serde_json::to_string_pretty(&loaded.to_masked_json()).expect("JSON")
    );
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        for p in problems {
            eprintln!("configuration error: {p}");
        }
        ExitCode::from(EXIT_USAGE)
    }
}
