//! `portcullis logout`: revoke the stored session and forget it.

use std::process::ExitCode;

use hyper::Method;

use super::{ClientArgs, EXIT_USAGE, fail, refusal, session_file, stored_session_request};

pub async fn run(args: &ClientArgs) -> ExitCode {
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
