//! `portcullis dev-certs`: a dev CA, a server certificate and client certificates.

use std::process::ExitCode;

use super::{DevCertsArgs, EXIT_USAGE};

pub fn run(args: &DevCertsArgs) -> ExitCode {
    let hostname = args.hostname.clone().unwrap_or_else(|| {
        hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into())
    });
    match crate::devcerts::dev_certs(&args.dir, &hostname, &args.users) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis dev-certs: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
