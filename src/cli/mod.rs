//! The command line (SPEC §2): one clap definition, a small function per subcommand.
//!
//! Exit codes: 0 ok, 1 authentication refused, 2 usage or configuration error,
//! 3 server unreachable or unavailable.

pub mod client;
pub mod kerberos;
pub mod oidc;
pub mod session_file;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use hyper::Method;
use serde_json::Value;

use crate::config::{self, Source};
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
        _ => Vec::new(),
    };
    (cli, sources)
}

pub fn check_config(args: &ConfigArgs, sources: Vec<Source>) -> ExitCode {
    let (sources, dev) = config::resolve_sources(sources, args.dev);
    match config::load(&sources, dev) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            let mut problems = Vec::new();
            // Files the daemon reads at startup are checked too, not just the keys.
            if let Err(e) = crate::labels::LabelMap::load(
                loaded.config.security.labelfile.as_deref(),
                loaded.config.security.grouplabelfile.as_deref(),
                &loaded.config.security.default_labels,
            ) {
                problems.push(e.to_string());
            }
            let sec = &loaded.config.security;
            if sec.mechanisms.contains(&config::Mechanism::Kerberos) {
                // SAFETY: check-config is single-threaded.
                let checked =
                    unsafe { crate::auth::kerberos::prepare_process_env(&sec.krb_keytab, None) }
                        .and_then(|()| {
                            crate::auth::kerberos::check_acceptor(
                                &sec.krb_keytab,
                                sec.server_krb_principal.as_deref(),
                            )
                        });
                if let Err(e) = checked {
                    problems.push(e);
                }
            }
            // In dev mode the certificates are created at first start, so absent is fine.
            let dev_certs_pending = dev
                && !loaded
                    .config
                    .ssl
                    .cert_file
                    .as_ref()
                    .is_some_and(|p| p.exists());
            if loaded.config.ssl.enabled
                && !dev_certs_pending
                && let Err(e) = crate::server::tls::load(&loaded.config.ssl)
            {
                problems.push(e.to_string());
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
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

pub fn dev_certs(args: &DevCertsArgs) -> ExitCode {
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

pub async fn login(args: &LoginArgs) -> ExitCode {
    let server = server_url(&args.client, None);
    let identity = args.cert.as_deref().zip(args.key.as_deref());
    let client = match Client::new(&server, args.client.ca.as_deref(), identity) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let reply = match &args.user {
        Some(user) => password_login(&client, user, args.password_stdin).await,
        None if args.oidc || args.client_credentials || args.token_file.is_some() => {
            let token = match oidc_token(&client, args).await {
                Ok(t) => t,
                Err((code, e)) => {
                    eprintln!("portcullis: {e}");
                    return ExitCode::from(code);
                }
            };
            let header = format!("Bearer {}", token.as_str());
            client
                .request(
                    Method::POST,
                    "/v1/login",
                    &[("authorization", &header)],
                    None,
                )
                .await
        }
        None if args.kerberos => {
            let spn = args
                .spn
                .clone()
                .unwrap_or_else(|| format!("HTTP/{}", client.host()));
            let initiator = match kerberos::initiate(&spn, args.kerberos_mech) {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("portcullis: {e}");
                    return ExitCode::from(EXIT_REFUSED);
                }
            };
            let header = initiator.header();
            let reply = client
                .request(
                    Method::POST,
                    "/v1/login",
                    &[("authorization", &header)],
                    None,
                )
                .await;
            if let Ok(r) = &reply
                && r.status == 200
            {
                let answer = r
                    .headers
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok());
                if let Err(e) = initiator.verify_server(answer) {
                    eprintln!("portcullis: {e}; the session was not stored");
                    return ExitCode::from(EXIT_UNAVAILABLE);
                }
            }
            reply
        }
        None => {
            let body = serde_json::json!({"mechanism": "certificate"});
            client
                .request(Method::POST, "/v1/login", &[], Some(&body))
                .await
        }
    };
    let reply = match reply {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if reply.status != 200 {
        return refusal(&reply);
    }
    let v = reply.json();
    match session_file::save(&server, &v) {
        Ok(path) => {
            if !args.client.json {
                println!("logged in; session stored in {}", path.display());
            }
        }
        Err(e) => {
            eprintln!(
                "portcullis: cannot store the session in {}: {e}",
                session_file::path().display()
            );
            return ExitCode::from(EXIT_USAGE);
        }
    }
    print_session(&v, args.client.json);
    ExitCode::SUCCESS
}

/// An access token for `--oidc`, `--client-credentials` or `--token-file`.
async fn oidc_token(
    client: &Client,
    args: &LoginArgs,
) -> Result<zeroize::Zeroizing<String>, (u8, String)> {
    if let Some(path) = &args.token_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| (EXIT_USAGE, format!("{}: {e}", path.display())))?;
        let token = text.trim();
        if token.is_empty() {
            return Err((EXIT_USAGE, format!("{} is empty", path.display())));
        }
        return Ok(zeroize::Zeroizing::new(token.to_string()));
    }
    let methods = client
        .request(Method::GET, "/v1/auth/methods", &[], None)
        .await
        .map_err(|e| (EXIT_UNAVAILABLE, e.to_string()))?;
    let idp = oidc::IdpInfo::from_methods(&methods.json()).ok_or((
        EXIT_REFUSED,
        "the server does not accept OIDC logins".to_string(),
    ))?;
    let http = oidc::http(args.idp_ca.as_deref()).map_err(|e| (EXIT_USAGE, e))?;
    if args.client_credentials {
        let (Some(id), Some(secret)) = (&args.client_id, &args.client_secret) else {
            return Err((EXIT_USAGE, "--client-credentials needs --client-id and --client-secret (or PORTCULLIS_OIDC_CLIENT_ID/SECRET)".into()));
        };
        return oidc::client_credentials(&http, &idp, id, secret)
            .await
            .map_err(|e| (EXIT_REFUSED, e));
    }
    oidc::authorization_code(
        &http,
        &idp,
        args.redirect_port,
        std::time::Duration::from_secs(300),
    )
    .await
    .map_err(|e| (EXIT_REFUSED, e))
}

/// Where answers come from: the terminal (hidden when PAM says so) or stdin lines.
struct Answers {
    stdin: Option<std::io::Lines<std::io::StdinLock<'static>>>,
}

impl Answers {
    fn read(
        &mut self,
        prompt: &str,
        hidden: bool,
    ) -> Result<zeroize::Zeroizing<String>, ClientError> {
        let line = match &mut self.stdin {
            Some(lines) => lines
                .next()
                .ok_or_else(|| {
                    ClientError::Usage(format!(
                        "standard input ended before \"{}\" was answered",
                        prompt.trim()
                    ))
                })?
                .map_err(|e| ClientError::Usage(e.to_string()))?,
            None if hidden => rpassword::prompt_password(prompt).map_err(|e| {
                ClientError::Usage(format!(
                    "cannot read from the terminal ({e}); use --password-stdin"
                ))
            })?,
            None => {
                eprint!("{prompt}");
                let mut s = String::new();
                std::io::stdin()
                    .read_line(&mut s)
                    .map_err(|e| ClientError::Usage(e.to_string()))?;
                s.trim_end_matches(['\r', '\n']).to_string()
            }
        };
        Ok(zeroize::Zeroizing::new(line))
    }
}

/// A password login, answering every further PAM prompt the server relays.
async fn password_login(
    client: &Client,
    user: &str,
    from_stdin: bool,
) -> Result<Reply, ClientError> {
    let mut answers = Answers {
        stdin: from_stdin.then(|| std::io::stdin().lines()),
    };
    let password = answers.read(&format!("Password for {user}: "), true)?;
    let body =
        serde_json::json!({"mechanism": "password", "username": user, "password": *password});
    drop(password);
    let mut reply = client
        .request(Method::POST, "/v1/login", &[], Some(&body))
        .await?;
    drop(body);
    loop {
        let v = reply.json();
        let (401, Some(id)) = (reply.status, v["conversation"].as_str()) else {
            return Ok(reply);
        };
        let mut answer = None;
        for p in v["prompts"].as_array().into_iter().flatten() {
            let text = p["text"].as_str().unwrap_or_default();
            match p["style"].as_str() {
                Some("echo_off") => answer = Some(answers.read(text, true)?),
                Some("echo_on") => answer = Some(answers.read(text, false)?),
                _ => eprintln!("{text}"),
            }
        }
        let answer = answer.unwrap_or_default();
        let body = serde_json::json!({"answers": [*answer]});
        reply = client
            .request(Method::POST, &format!("/v1/login/{id}"), &[], Some(&body))
            .await?;
    }
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

pub async fn whoami(args: &ClientArgs) -> ExitCode {
    match stored_session_request(args, Method::GET).await {
        Err(code) => code,
        Ok(Ok(r)) if r.status == 200 => {
            print_session(&r.json(), args.json);
            ExitCode::SUCCESS
        }
        Ok(Ok(r)) => refusal(&r),
        Ok(Err(e)) => fail(&e),
    }
}

pub async fn logout(args: &ClientArgs) -> ExitCode {
    let result = match stored_session_request(args, Method::DELETE).await {
        Ok(r) => r,
        Err(code) => return code,
    };
    match result {
        // 401 means the session had already ended: the goal is reached either way.
        Ok(r) if r.status == 204 || r.status == 401 => {
            if let Err(e) = session_file::remove() {
                eprintln!(
                    "portcullis: cannot remove {}: {e}",
                    session_file::path().display()
                );
                return ExitCode::from(EXIT_USAGE);
            }
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"logged_out": true, "already_ended": r.status == 401})
                );
            } else if r.status == 401 {
                println!("the session had already ended; removed the local copy");
            } else {
                println!("logged out");
            }
            ExitCode::SUCCESS
        }
        Ok(r) => refusal(&r),
        Err(e) => fail(&e),
    }
}
