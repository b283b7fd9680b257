use std::process::ExitCode;

use portcullis::cli::{self, Command};

fn main() -> ExitCode {
    portcullis::jwt_provider::install();
    let (cli, sources) = cli::parse();
    match &cli.command {
        Command::Serve(args) => cli::serve::run(args, sources),
        Command::CheckConfig(args) => cli::check_config::run(args, sources),
        Command::DevCerts(args) => cli::dev_certs::run(args),
        Command::Admin(args) => cli::admin::run(args, sources),
        Command::Token(args) => cli::token::run(args, sources),
        Command::Login(_) | Command::Whoami(_) | Command::Logout(_) => {
            let runtime = match cli::runtime(tokio::runtime::Builder::new_current_thread()) {
                Ok(r) => r,
                Err(code) => return code,
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
