//! `portcullis whoami`: the stored session as the server sees it.

use std::process::ExitCode;

use hyper::Method;

use super::{ClientArgs, fail, print_session, refusal, stored_session_request};

pub async fn run(args: &ClientArgs) -> ExitCode {
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
