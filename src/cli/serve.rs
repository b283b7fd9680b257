//! `portcullis serve`: load the configuration, prepare the process (logging, dev
//! certificates, the Kerberos environment) and run the daemon.

use std::process::ExitCode;

use super::{ConfigArgs, EXIT_USAGE};
use crate::auth::Mechanism;
use crate::config::{self, LogFormat};
use crate::server::{self, StartError};

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

pub fn run(args: &ConfigArgs, sources: Vec<config::Source>) -> ExitCode {
    let loaded = match super::load_config(args, sources) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let cfg = loaded.config;
    init_logging(cfg.log.format, &cfg.log.level);
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let mut dev_created = None;
    if cfg.dev {
        match crate::devcerts::ensure_server(&cfg.system.state_dir, &cfg.system.hostname) {
            Ok((_, created)) => dev_created = Some(created),
            Err(e) => {
                eprintln!("portcullis: cannot prepare dev certificates: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    if cfg.security.mechanisms.contains(&Mechanism::Kerberos) {
        // SAFETY: no other thread exists yet; the runtime is built below.
        if let Err(e) = unsafe {
            crate::auth::kerberos::prepare_process_env(
                &cfg.security.krb_keytab,
                Some(&cfg.system.state_dir),
            )
        } {
            eprintln!("portcullis: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let runtime = match super::runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let banner_cfg = cfg.clone();
    let on_ready = move |bound: &[std::net::SocketAddr]| {
        if let Some(created) = dev_created {
            print_dev_banner(&banner_cfg, created, bound[0]);
        }
    };
    match runtime.block_on(server::run(cfg, on_ready)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(StartError::Config(e)) => {
            eprintln!("portcullis: {e}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(StartError::Runtime(e)) => {
            eprintln!("portcullis: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_dev_banner(cfg: &config::Config, created: bool, addr: std::net::SocketAddr) {
    let dir = &cfg.system.state_dir;
    let url = format!("https://{addr}");
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "root".into());
    let user = if user.is_empty() {
        "root".to_string()
    } else {
        user
    };
    println!(
        "portcullis: development mode ({} the dev CA)",
        if created { "created" } else { "reusing" }
    );
    println!("  URL:    {url}");
    println!("  CA:     {}", dir.join("ca.pem").display());
    let d = dir.display();
    // The commands name this very binary, so they paste even when it is not on PATH.
    let exe =
        std::env::current_exe().map_or_else(|_| "portcullis".into(), |p| p.display().to_string());
    let ca = format!("{d}/ca.pem");
    if cfg.security.mechanisms.contains(&Mechanism::Password) {
        println!(
            "  log in with a local user's password (PAM service {}):",
            cfg.security.pam_service
        );
        println!("    curl --cacert {ca} -u {user} -X POST {url}/v1/login");
        println!("    {exe} login --server {url} --ca {ca} --user {user}");
    } else {
        println!(
            "  password logins are off: /etc/pam.d/{} is missing (copy pam.d/portcullis there)",
            cfg.security.pam_service
        );
    }
    if cfg.security.mechanisms.contains(&Mechanism::Kerberos) {
        println!(
            "  log in with a Kerberos ticket (after kinit; the service principal is HTTP/<host>):"
        );
        println!(
            "    curl --negotiate -u : --cacert {ca} -X POST https://localhost:{}/v1/login",
            addr.port()
        );
        println!(
            "    {exe} login --kerberos --server https://localhost:{} --ca {ca}",
            addr.port()
        );
    }
    println!("  log in with a client certificate:");
    println!("    {exe} dev-certs --dir {d} --user {user}");
    println!(
        "    curl --cacert {ca} --cert {d}/{user}.pem --key {d}/{user}.key -X POST {url}/v1/login"
    );
    println!("    {exe} login --server {url} --ca {ca} --cert {d}/{user}.pem --key {d}/{user}.key");
}
