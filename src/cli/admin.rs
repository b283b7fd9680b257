//! `portcullis admin sessions|revoke|explain|status`: one request on the daemon's
//! operator socket (`<state_dir>/admin.sock`, see `server::admin`), its answer
//! printed as lines or, with `--json`, as the daemon's JSON.
//!
//! Exit codes: 0 ok, 1 refused (not allowed, nothing matched, a name that maps to
//! no user), 2 usage, 3 daemon not reachable.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{ConfigArgs, EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_USAGE};
use crate::config::Source;
use crate::server::admin::{EXCHANGE_TIMEOUT, socket_path};

#[derive(Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// List live sessions (id, user, mechanism, created, expires, peer)
    Sessions(SessionsArgs),
    /// End sessions: one (--id), a user's (--user) or every one (--all)
    Revoke(RevokeArgs),
    /// How a user name, user@REALM or certificate maps to a user, groups and labels
    Explain(ExplainArgs),
    /// Listeners, pools, sessions, certificate and CRL dates, last reload
    Status(AdminCommon),
}

#[derive(Args)]
pub struct AdminCommon {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The operator socket (default: <system.state_dir>/admin.sock of the configuration)
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Machine-readable output (the daemon's JSON answer)
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    pub common: AdminCommon,
    /// Only this user's sessions
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["user", "id", "all"])))]
pub struct RevokeArgs {
    #[command(flatten)]
    pub common: AdminCommon,
    /// Every session of this user
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// One session, by the id `admin sessions` shows (12 hex characters)
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Every session
    #[arg(long)]
    pub all: bool,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["name", "cert"])))]
pub struct ExplainArgs {
    #[command(flatten)]
    pub common: AdminCommon,
    /// A user name, or a Kerberos principal user@REALM
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// A client certificate (PEM): the user it names per security.pki_user_field
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
}

impl AdminCommand {
    fn common(&self) -> &AdminCommon {
        match self {
            AdminCommand::Sessions(a) => &a.common,
            AdminCommand::Revoke(a) => &a.common,
            AdminCommand::Explain(a) => &a.common,
            AdminCommand::Status(a) => a,
        }
    }
}

/// `--socket`, or `<system.state_dir>/admin.sock` of the configuration.
pub(super) fn socket(common: &AdminCommon, sources: Vec<Source>) -> Result<PathBuf, ExitCode> {
    match &common.socket {
        Some(p) => Ok(p.clone()),
        None => super::load_config(&common.config, sources)
            .map(|loaded| socket_path(&loaded.config.system.state_dir)),
    }
}

/// Send `request` and return the daemon's answer if it said ok; else print why
/// (and the answer with `--json`) and return the exit code.
pub(super) fn ask(common: &AdminCommon, socket: &Path, request: &Value) -> Result<Value, ExitCode> {
    let answer = exchange(socket, request)?;
    if answer["ok"] != Value::Bool(true) {
        let message = answer["error"].as_str().unwrap_or("the daemon refused");
        if common.json {
            println!("{answer}");
        }
        eprintln!("portcullis: {message}");
        return Err(ExitCode::from(match answer["code"].as_str() {
            Some("bad_request") => EXIT_USAGE,
            Some("unavailable") => EXIT_UNAVAILABLE,
            _ => EXIT_REFUSED,
        }));
    }
    Ok(answer)
}

pub fn run(args: &AdminArgs, sources: Vec<Source>) -> ExitCode {
    let common = args.command.common();
    let socket = match socket(common, sources) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let request = match request(&args.command) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let answer = match ask(common, &socket, &request) {
        Ok(a) => a,
        Err(code) => return code,
    };
    if common.json {
        println!("{answer}");
    } else {
        match &args.command {
            AdminCommand::Sessions(_) => print_sessions(&answer),
            AdminCommand::Revoke(_) => println!(
                "revoked {} session(s)",
                answer["revoked"].as_u64().unwrap_or(0)
            ),
            AdminCommand::Explain(_) => print_explain(&answer),
            AdminCommand::Status(_) => print_status(&answer),
        }
    }
    if matches!(args.command, AdminCommand::Revoke(_)) && answer["revoked"] == json!(0) {
        eprintln!("portcullis: no session matched");
        return ExitCode::from(EXIT_REFUSED);
    }
    ExitCode::SUCCESS
}

fn request(command: &AdminCommand) -> Result<Value, ExitCode> {
    Ok(match command {
        AdminCommand::Sessions(a) => json!({"command": "sessions", "user": a.user}),
        AdminCommand::Revoke(a) => match (&a.user, &a.id, a.all) {
            (Some(u), _, _) => json!({"command": "revoke", "user": u}),
            (_, Some(i), _) => json!({"command": "revoke", "id": i}),
            _ => json!({"command": "revoke", "all": true}),
        },
        AdminCommand::Explain(a) => match (&a.name, &a.cert) {
            (_, Some(file)) => {
                let pem = std::fs::read_to_string(file).map_err(|e| {
                    eprintln!("portcullis: cannot read {}: {e}", file.display());
                    ExitCode::from(EXIT_USAGE)
                })?;
                json!({"command": "explain", "cert_pem": pem})
            }
            (Some(n), None) => json!({"command": "explain", "name": n}),
            (None, None) => unreachable!("clap requires one"),
        },
        AdminCommand::Status(_) => json!({"command": "status"}),
    })
}

/// One request line out, one answer line back.
fn exchange(socket: &Path, request: &Value) -> Result<Value, ExitCode> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            eprintln!(
                "portcullis: not allowed to use the operator socket {} (root or the daemon's user only): {e}",
                socket.display()
            );
            ExitCode::from(EXIT_REFUSED)
        } else {
            eprintln!(
                "portcullis: the daemon is not reachable on {}: {e}",
                socket.display()
            );
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    })?;
    let unreachable = |e: std::io::Error| {
        eprintln!(
            "portcullis: no answer from the daemon on {}: {e}",
            socket.display()
        );
        ExitCode::from(EXIT_UNAVAILABLE)
    };
    let limit = Some(EXCHANGE_TIMEOUT + Duration::from_secs(1));
    stream.set_read_timeout(limit).map_err(unreachable)?;
    stream.set_write_timeout(limit).map_err(unreachable)?;
    let mut line = request.to_string();
    line.push('\n');
    // A refused peer is answered without its request being read; the answer
    // still arrives, so a failed write is not the end.
    let _ = stream.write_all(line.as_bytes());
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(unreachable)?;
    serde_json::from_str(&answer).map_err(|_| {
        eprintln!(
            "portcullis: the daemon on {} closed without an answer",
            socket.display()
        );
        ExitCode::from(EXIT_UNAVAILABLE)
    })
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

fn print_sessions(answer: &Value) {
    let rows = answer["sessions"].as_array().cloned().unwrap_or_default();
    println!(
        "{:<12}  {:<16}  {:<11}  {:<20}  {:<20}  PEER",
        "ID", "USER", "MECHANISM", "CREATED", "EXPIRES"
    );
    for r in &rows {
        println!(
            "{:<12}  {:<16}  {:<11}  {:<20}  {:<20}  {}",
            s(&r["id"]),
            s(&r["user"]),
            s(&r["mechanism"]),
            s(&r["created"]),
            s(&r["expires"]),
            s(&r["peer"])
        );
    }
    println!("{} session(s)", rows.len());
}

fn print_explain(a: &Value) {
    println!(
        "user:      {} ({}: {})",
        s(&a["user"]),
        s(&a["kind"]),
        s(&a["mapping"])
    );
    match a["uid"].as_u64() {
        Some(uid) => println!("account:   uid {uid}"),
        None => println!("account:   none ({})", s(&a["account_error"])),
    }
    let groups: Vec<&str> = a["groups"]
        .as_array()
        .map(|g| g.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    println!("groups:    {}", groups.join(", "));
    println!("labels:");
    for l in a["labels"].as_array().into_iter().flatten() {
        let from: Vec<String> = l["granted_by"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| match g["group"].as_str() {
                Some("") | None => s(&g["source"]).to_string(),
                Some(group) => format!("{} (group {group})", s(&g["source"])),
            })
            .collect();
        println!("  {:<20} {}", s(&l["label"]), from.join("; "));
    }
    println!("mechanisms:");
    for m in a["mechanisms"].as_array().into_iter().flatten() {
        let verdict = match m["accepts"].as_bool() {
            Some(true) => "yes",
            Some(false) => "no",
            None => "depends",
        };
        println!(
            "  {:<12} {:<8} {}",
            s(&m["mechanism"]),
            verdict,
            s(&m["note"])
        );
    }
}

fn print_status(a: &Value) {
    println!("version:   {} (pid {})", s(&a["version"]), a["pid"]);
    println!("started:   {}", s(&a["started"]));
    for l in a["listen"].as_array().into_iter().flatten() {
        println!("listening: {}", s(l));
    }
    let mechs: Vec<&str> = a["mechanisms"]
        .as_array()
        .map(|m| m.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    println!("mechanisms: {}", mechs.join(", "));
    println!("sessions:  {}", a["sessions"]);
    let pools: Vec<String> = a["pools_in_use"]
        .as_object()
        .map(|p| p.iter().map(|(k, v)| format!("{k} {v}")).collect())
        .unwrap_or_default();
    println!("pools in use: {}", pools.join(", "));
    let tls = &a["tls"];
    if tls.is_null() {
        println!("tls:       off");
    } else {
        println!(
            "server certificate notAfter: {}",
            s(&tls["server_cert_not_after"])
        );
        for c in tls["client_ca_not_after"].as_array().into_iter().flatten() {
            println!(
                "client CA notAfter: {} ({})",
                s(&c["not_after"]),
                s(&c["subject"])
            );
        }
        for c in tls["crl_next_update"].as_array().into_iter().flatten() {
            println!(
                "CRL nextUpdate: {} ({}, {})",
                s(&c["next_update"]),
                s(&c["file"]),
                s(&c["issuer"])
            );
        }
    }
    println!("jwks:      {}", s(&a["jwks_note"]));
    for (name, i) in a["issuers"].as_object().into_iter().flatten() {
        let keys = match i["jwks_age_s"].as_u64() {
            Some(age) => format!("key set fetched {age} s ago ({} keys)", i["keys"]),
            None if i["algorithm"] == "HS256" => "its secret".to_string(),
            None => "no key set loaded yet".to_string(),
        };
        println!("issuer {name}: {} with {keys}", s(&i["algorithm"]));
    }
    match a["last_reload"].as_object() {
        None => println!("last reload: none since start"),
        Some(r) => {
            println!("last reload: {} {}", s(&r["at"]), s(&r["result"]));
            for d in r["detail"].as_array().into_iter().flatten() {
                println!("  {}", s(d));
            }
        }
    }
}
