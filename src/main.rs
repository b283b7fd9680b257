use std::process::ExitCode;

use portcullis::cli::{self, Command};

fn main() -> ExitCode {
    let (cli, sources) = cli::parse();
    match &cli.command {
        Command::Serve(args) => cli::serve::run(args, sources),
        Command::CheckConfig(args) => cli::check_config::run(args, sources),
        Command::DevCerts(args) => cli::dev_certs::run(args),
        Command::Login(_) | Command::Whoami(_) | Command::Logout(_) => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("portcullis: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(async {
                match &cli.command {
                    Command::Login(a) => cli::login::run(a).await,
                    Command::Whoami(a) => cli::whoami::run(a).await,
                    Command::Logout(a) => cli::logout::run(a).await,
                    _ => unreachable!("matched above"),
                }
            })
        }
    }
}
