//! The command line (SPEC §2): one clap definition here, one module per subcommand
//! (each with a `run`), and the helpers the client subcommands share.
//!
//! Exit codes: 0 ok, 1 authentication refused, 2 usage or configuration error,
//! 3 server unreachable or unavailable.

pub mod admin;
pub mod check_config;
pub mod client;
pub mod dev_certs;
pub mod kerberos;
pub mod login;
pub mod logout;
pub mod oidc;
pub mod serve;
pub mod session_file;
pub mod token;
pub mod whoami;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use hyper::Method;
use serde_json::Value;

use crate::config::{self, Loaded, Source};
use client::{Client, ClientError, Reply};

pub const EXIT_REFUSED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNAVAILABLE: u8 = 3;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Authentication daemon: PAM, Kerberos, x509 and OIDC logins, sessions with labels"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon (with no configuration file at all, the --dev defaults)
    Serve(ConfigArgs),
    /// Load, validate and print the effective configuration (secrets masked)
    CheckConfig(ConfigArgs),
    /// Authenticate and store the session token
    Login(LoginArgs),
    /// Show the stored session as the server sees it
    Whoami(ClientArgs),
    /// Revoke the stored session
    Logout(ClientArgs),
    /// Make a dev CA, a localhost server certificate and UID=<name> client certificates
    DevCerts(DevCertsArgs),
    /// The operator socket: sessions, revoke, explain, status (root or the daemon's user)
    Admin(admin::AdminArgs),
    /// Service tokens signed by the daemon, through its operator socket (SPEC §11)
    Token(token::TokenArgs),
}

#[derive(Args)]
pub struct ConfigArgs {
    /// Configuration file (JSON); repeatable, applied left to right
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Vec<PathBuf>,
    /// Override one key, e.g. -D security.session_ttl=600; repeatable
    #[arg(short = 'D', long = "define", value_name = "KEY=VALUE")]
    pub define: Vec<String>,
    /// Embedded development defaults: 127.0.0.1:4367, state and certificates in ./var/portcullis
    #[arg(long)]
    pub dev: bool,
}

#[derive(Args, Clone)]
pub struct ClientArgs {
    /// Server URL
    #[arg(long, env = "PORTCULLIS_URL", value_name = "URL")]
    pub server: Option<String>,
    /// CA bundle to trust for the server (default: the system store)
    #[arg(long, env = "PORTCULLIS_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("how").required(true).args(["user", "cert", "kerberos", "oidc", "client_credentials", "token_file"])))]
pub struct LoginArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Password login through the server's PAM conversation
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Read the password (and any further answers, one per line) from standard input
    #[arg(long, requires = "user")]
    pub password_stdin: bool,
    /// Kerberos: a ticket from the credential cache (KRB5CCNAME) for HTTP/<server host>
    #[arg(long)]
    pub kerberos: bool,
    /// Service principal to ask a ticket for (default HTTP/<host of --server>)
    #[arg(long, value_name = "PRINCIPAL", requires = "kerberos")]
    pub spn: Option<String>,
    /// GSSAPI mechanism for --kerberos
    #[arg(long, value_enum, default_value = "spnego", requires = "kerberos")]
    pub kerberos_mech: kerberos::KrbMech,
    /// OIDC: authorization-code flow with PKCE in your browser (prints the URL to open)
    #[arg(long)]
    pub oidc: bool,
    /// OIDC for services: the client-credentials grant
    #[arg(long)]
    pub client_credentials: bool,
    /// Client id for --client-credentials
    #[arg(long, env = "PORTCULLIS_OIDC_CLIENT_ID", value_name = "ID")]
    pub client_id: Option<String>,
    /// Client secret for --client-credentials
    #[arg(
        long,
        env = "PORTCULLIS_OIDC_CLIENT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub client_secret: Option<String>,
    /// Present an access token obtained elsewhere (the file holds the token)
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Port of the loopback redirect listener for --oidc (http://127.0.0.1:PORT/callback)
    #[arg(long, default_value_t = 8765, value_name = "PORT")]
    pub redirect_port: u16,
    /// Extra CA bundle to trust for the IdP (besides the system store)
    #[arg(long, env = "PORTCULLIS_IDP_CA", value_name = "FILE")]
    pub idp_ca: Option<PathBuf>,
    /// Client certificate (PEM) whose subject carries UID=<user>
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key of --cert (PEM)
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

#[derive(Args)]
pub struct DevCertsArgs {
    /// Directory for ca.pem/ca.key (reused if present), server.pem/key, <user>.pem/key
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Make a client certificate with UID=<NAME>; repeatable
    #[arg(long = "user", value_name = "NAME")]
    pub users: Vec<String>,
    /// Host name for the server certificate (besides localhost, 127.0.0.1, ::1)
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
}

pub const DEFAULT_SERVER: &str = "https://127.0.0.1:4367";

/// `-c` and `-D` in the order they were given, so the last value of a key wins.
pub fn sources(matches: &ArgMatches) -> Vec<Source> {
    let mut tagged: Vec<(usize, Source)> = Vec::new();
    if let (Some(idx), Some(vals)) = (
        matches.indices_of("config"),
        matches.get_many::<PathBuf>("config"),
    ) {
        tagged.extend(idx.zip(vals).map(|(i, v)| (i, Source::File(v.clone()))));
    }
    if let (Some(idx), Some(vals)) = (
        matches.indices_of("define"),
        matches.get_many::<String>("define"),
    ) {
        tagged.extend(idx.zip(vals).map(|(i, v)| (i, Source::Define(v.clone()))));
    }
    tagged.sort_by_key(|(i, _)| *i);
    tagged.into_iter().map(|(_, s)| s).collect()
}

pub fn parse() -> (Cli, Vec<Source>) {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let sources = match matches.subcommand() {
        Some(("serve" | "check-config", sub)) => sources(sub),
        Some(("admin" | "token", sub)) => sub
            .subcommand()
            .map(|(_, leaf)| sources(leaf))
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    (cli, sources)
}

/// The configuration `-c`, `-D` and `--dev` name; on any problem, every problem is
/// printed and the exit code is 2.
fn load_config(args: &ConfigArgs, sources: Vec<Source>) -> Result<Loaded, ExitCode> {
    let (sources, dev) = config::resolve_sources(sources, args.dev);
    config::load(&sources, dev).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(EXIT_USAGE)
    })
}

/// A tokio runtime from `builder`, or exit 1 saying why not.
pub fn runtime(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("portcullis: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

fn server_url(args: &ClientArgs, stored: Option<&Value>) -> String {
    args.server
        .clone()
        .or_else(|| {
            stored
                .and_then(|s| s["server"].as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| DEFAULT_SERVER.to_string())
}

fn fail(e: &ClientError) -> ExitCode {
    eprintln!("portcullis: {e}");
    ExitCode::from(match e {
        ClientError::Usage(_) => EXIT_USAGE,
        ClientError::Unreachable(_) => EXIT_UNAVAILABLE,
        ClientError::Refused(_) => EXIT_REFUSED,
    })
}

/// Exit code for an HTTP answer that is not a success.
fn refusal(reply: &Reply) -> ExitCode {
    let v = reply.json();
    let message = v["message"]
        .as_str()
        .unwrap_or("the server answered with an error");
    eprintln!(
        "portcullis: {message} ({} {})",
        reply.status,
        v["error"].as_str().unwrap_or("")
    );
    ExitCode::from(match reply.status {
        502..=504 => EXIT_UNAVAILABLE,
        400 | 404 | 405 | 413 => EXIT_USAGE,
        _ => EXIT_REFUSED,
    })
}

fn print_session(v: &Value, json: bool) {
    if json {
        println!("{v}");
        return;
    }
    let list = |k: &str| {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    println!("user:      {}", v["user"].as_str().unwrap_or(""));
    println!("mechanism: {}", v["mechanism"].as_str().unwrap_or(""));
    println!("groups:    {}", list("groups"));
    println!("labels:    {}", list("labels"));
    println!(
        "expires:   {} (in {} s)",
        v["expires_at"].as_str().unwrap_or(""),
        v["expires_in"].as_u64().unwrap_or(0)
    );
}

fn stored_token() -> Result<(Value, String), ExitCode> {
    let Some(stored) = session_file::load() else {
        eprintln!(
            "portcullis: not logged in (no session in {})",
            session_file::path().display()
        );
        return Err(ExitCode::from(EXIT_REFUSED));
    };
    let token = stored["session"].as_str().unwrap_or_default().to_string();
    Ok((stored, token))
}

/// `method /v1/session` with the stored token, at the server it came from.
async fn stored_session_request(
    args: &ClientArgs,
    method: Method,
) -> Result<Result<Reply, ClientError>, ExitCode> {
    let (stored, token) = stored_token()?;
    let server = server_url(args, Some(&stored));
    let client = Client::new(&server, args.ca.as_deref(), None).map_err(|e| fail(&e))?;
    let auth = format!("Bearer {token}");
    Ok(client
        .request(method, "/v1/session", &[("authorization", &auth)], None)
        .await)
}
