//! `portcullis token create|bootstrap`: a service token signed by the running
//! daemon (SPEC §11), asked for on its operator socket — so only root or the
//! daemon's user can mint one, the signing key never leaves the daemon, and every
//! token is audited there (never the token itself). The token alone is printed on
//! stdout, for `TOKEN=$(portcullis token create …)`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;

use super::admin::{AdminCommon, ask, socket};
use crate::config::Source;

#[derive(Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// A token for a client type (api, compiler, agent, …), e.g. an Inmanta agent's
    Create(CreateArgs),
    /// A token with every client type (api, compiler, agent), valid for 3600 s
    Bootstrap(AdminCommon),
}

#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub common: AdminCommon,
    /// Client type (the `<claim_prefix>ct` claim); repeatable
    #[arg(long = "client-type", value_name = "TYPE", required = true)]
    pub client_types: Vec<String>,
    /// Environment id (the `<claim_prefix>env` claim)
    #[arg(long, value_name = "ID")]
    pub env: Option<String>,
    /// Lifetime in seconds; 0 = never expires (needs security.token.allow_non_expiring)
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    pub ttl: u64,
    /// The `sub` claim
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// A label the token carries; repeatable
    #[arg(long = "label", value_name = "LABEL")]
    pub labels: Vec<String>,
}

pub fn run(args: &TokenArgs, sources: Vec<Source>) -> ExitCode {
    let (common, request) = match &args.command {
        TokenCommand::Create(a) => (
            &a.common,
            json!({"command": "token", "client_types": a.client_types, "env": a.env,
                   "ttl": a.ttl, "user": a.user, "labels": a.labels}),
        ),
        TokenCommand::Bootstrap(c) => (c, json!({"command": "token", "bootstrap": true})),
    };
    let socket = match socket(common, sources) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match ask(common, &socket, &request) {
        Ok(answer) => {
            if common.json {
                println!("{answer}");
            } else {
                println!("{}", answer["token"].as_str().unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
