//! `portcullis login`: authenticate by one mechanism and store the session.

use std::process::ExitCode;

use hyper::Method;

use super::client::{Client, ClientError, Reply};
use super::{
    EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_USAGE, LoginArgs, fail, kerberos, oidc, print_session,
    refusal, server_url, session_file,
};

pub async fn run(args: &LoginArgs) -> ExitCode {
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
