//! The password mechanism: a real PAM transaction per login (SPEC §5).
//!
//! Each login runs `pam_start` → `pam_authenticate` → `pam_acct_mgmt` → `pam_end` on
//! one thread of the bounded blocking pool. PAM's conversation is synchronous, so
//! when a module asks something the request did not carry (a one-time code), the
//! PAM thread parks on a channel and the prompt goes back to the client as a
//! challenge (Kanidm's `Next(request)`); the answer, posted to
//! `/v1/login/{conversation}`, is fed to the waiting thread. An unanswered prompt
//! fails the conversation after `security.pam_conversation_timeout`, which ends the
//! PAM transaction and frees the thread.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pam_client::{ConversationHandler, ErrorCode, Flag};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::Instant;

use super::{
    AuthError, Authenticator, BoxFuture, Challenge, Credentials, Identity, LoginContext, Outcome,
    Prompt, PromptStyle, Secret, valid_username,
};
use crate::blocking::BlockingPool;
use crate::config::Mechanism;
use crate::throttle::Throttle;

/// The one message every wrong credential gets, whichever part was wrong.
const WRONG: &str = "authentication failed: wrong user name or password";

/// What the PAM thread tells the async side.
enum PamEvent {
    /// A prompt PAM is waiting on; the answers go back through `reply`.
    Ask {
        prompts: Vec<Prompt>,
        reply: SyncSender<Secret>,
    },
    /// The transaction ended.
    Done(PamOutcome),
}

struct PamOutcome {
    result: Result<String, ErrorCode>,
    /// Set when the user is locked but gave the right password (see `shadow.rs`).
    locked: bool,
    /// The delay PAM asked for after a failure (pam_fail_delay), served asynchronously.
    fail_delay: Duration,
}

/// A conversation waiting for the client's answer.
struct Pending {
    binding: [u8; 32],
    user: String,
    reply: SyncSender<Secret>,
    events: UnboundedReceiver<PamEvent>,
    expires: Instant,
}

pub struct PasswordAuthenticator {
    service: String,
    pool: BlockingPool,
    throttle: Throttle,
    timeout: Duration,
    conversations: Mutex<HashMap<[u8; 32], Pending>>,
}

impl PasswordAuthenticator {
    pub fn new(service: String, pool: BlockingPool, throttle: Throttle, timeout: Duration) -> Self {
        PasswordAuthenticator {
            service,
            pool,
            throttle,
            timeout,
            conversations: Mutex::new(HashMap::new()),
        }
    }

    async fn start(
        &self,
        username: String,
        password: Secret,
        ctx: &LoginContext,
    ) -> Result<Outcome, AuthError> {
        if !valid_username(&username) {
            return Err(AuthError::Malformed {
                reason: "bad_username",
                message: "the user name must be 1 to 256 letters, digits or . _ - @ $".into(),
            });
        }
        let peer = ctx.peer.ip();
        self.throttled(&username, peer)?;
        let (events_tx, events) = unbounded_channel();
        let service = self.service.clone();
        let rhost = peer.to_string();
        let timeout = self.timeout;
        let user = username.clone();
        self.pool
            .spawn(move || pam_transaction(&service, &user, password, &rhost, events_tx, timeout))
            .await?;
        self.follow(username, events, ctx).await
    }

    async fn resume(
        &self,
        conversation: String,
        mut answers: Vec<Secret>,
        ctx: &LoginContext,
    ) -> Result<Outcome, AuthError> {
        let key = id_key(&conversation);
        let pending = {
            let mut map = self.lock();
            match map.remove(&key) {
                Some(p) if p.binding == ctx.binding && p.expires > Instant::now() => p,
                Some(p) => {
                    // Another client guessing (or replaying) must not end it for the owner.
                    if p.expires > Instant::now() {
                        map.insert(key, p);
                    }
                    return Err(AuthError::UnknownConversation);
                }
                None => return Err(AuthError::UnknownConversation),
            }
        };
        if answers.len() != 1 {
            let n = answers.len();
            self.lock().insert(key, pending);
            return Err(AuthError::Malformed {
                reason: "bad_answers",
                message: format!("expected 1 answer in \"answers\", got {n}"),
            });
        }
        let Pending {
            user,
            reply,
            events,
            ..
        } = pending;
        if reply.send(answers.remove(0)).is_err() {
            return Err(AuthError::UnknownConversation);
        }
        self.follow(user, events, ctx).await
    }

    /// Wait for the PAM thread's next event: another prompt or the end.
    async fn follow(
        &self,
        user: String,
        mut events: UnboundedReceiver<PamEvent>,
        ctx: &LoginContext,
    ) -> Result<Outcome, AuthError> {
        // The PAM thread gives up on its own after `timeout`; allow it to say so.
        let wait = self.timeout + Duration::from_secs(5);
        let event = tokio::time::timeout(wait, events.recv()).await;
        match event {
            Ok(Some(PamEvent::Ask { prompts, reply })) => {
                let conversation = new_id();
                let pending = Pending {
                    binding: ctx.binding,
                    user,
                    reply,
                    events,
                    expires: Instant::now() + self.timeout,
                };
                let mut map = self.lock();
                let now = Instant::now();
                map.retain(|_, p| p.expires > now);
                map.insert(id_key(&conversation), pending);
                Ok(Outcome::Challenge(Challenge {
                    conversation,
                    prompts,
                }))
            }
            Ok(Some(PamEvent::Done(outcome))) => self.finish(user, outcome, ctx).await,
            Ok(None) | Err(_) => Err(unavailable(
                "pam_failed",
                "the PAM transaction did not finish",
            )),
        }
    }

    async fn finish(
        &self,
        user: String,
        o: PamOutcome,
        ctx: &LoginContext,
    ) -> Result<Outcome, AuthError> {
        let peer = ctx.peer.ip();
        let rejected = |reason| AuthError::Rejected {
            reason,
            message: WRONG.into(),
        };
        let result = match o.result {
            Ok(pam_user) => {
                self.throttle.success(&user);
                // A module may canonicalise the name (case, realm); trust it only if sane.
                let name = if valid_username(&pam_user) {
                    pam_user
                } else {
                    user
                };
                return Ok(Outcome::Authenticated(Identity {
                    user: name,
                    mechanism: Mechanism::Password,
                    groups: None,
                    response_token: None,
                }));
            }
            Err(_) if o.locked => AuthError::AccountUnavailable {
                reason: "account_locked",
                message: "the account is locked".into(),
            },
            Err(ErrorCode::AUTH_ERR | ErrorCode::USER_UNKNOWN | ErrorCode::MAXTRIES) => {
                self.throttle.failure(&user, peer);
                rejected("wrong_credentials")
            }
            Err(ErrorCode::CRED_INSUFFICIENT) => {
                self.throttle.failure(&user, peer);
                rejected("credentials_insufficient")
            }
            Err(ErrorCode::CONV_ERR) => {
                self.throttle.failure(&user, peer);
                AuthError::Rejected {
                    reason: "conversation_abandoned",
                    message: "the login conversation was not completed in time".into(),
                }
            }
            Err(ErrorCode::ACCT_EXPIRED) => AuthError::AccountUnavailable {
                reason: "account_expired",
                message: "the account has expired".into(),
            },
            Err(ErrorCode::PERM_DENIED) => AuthError::AccountUnavailable {
                reason: "permission_denied",
                message: "the account may not log in here".into(),
            },
            Err(ErrorCode::NEW_AUTHTOK_REQD | ErrorCode::AUTHTOK_EXPIRED) => {
                AuthError::PasswordExpired
            }
            Err(ErrorCode::AUTHINFO_UNAVAIL) => unavailable(
                "authinfo_unavailable",
                "the account database behind PAM is unreachable",
            ),
            Err(code) => {
                tracing::error!(?code, service = %self.service, "PAM failed; check /etc/pam.d/{}", self.service);
                unavailable("pam_error", "PAM could not process the login")
            }
        };
        if matches!(result, AuthError::Rejected { .. }) && !o.fail_delay.is_zero() {
            // Served here, not in PAM, so a failed login does not pin a pool thread.
            tokio::time::sleep(o.fail_delay.min(Duration::from_secs(10))).await;
        }
        Err(result)
    }

    fn throttled(&self, user: &str, peer: IpAddr) -> Result<(), AuthError> {
        self.throttle
            .check(user, peer)
            .map_err(|retry_after| AuthError::TooManyAttempts { retry_after })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Pending>> {
        self.conversations.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Authenticator for PasswordAuthenticator {
    fn mechanism(&self) -> Mechanism {
        Mechanism::Password
    }

    fn authenticate<'a>(
        &'a self,
        credentials: Credentials,
        ctx: &'a LoginContext,
    ) -> BoxFuture<'a, Result<Outcome, AuthError>> {
        Box::pin(async move {
            match credentials {
                Credentials::Password { username, password } => {
                    self.start(username, password, ctx).await
                }
                Credentials::Continue {
                    conversation,
                    answers,
                } => self.resume(conversation, answers, ctx).await,
                _ => Err(AuthError::rejected("wrong_mechanism", WRONG)),
            }
        })
    }
}

fn unavailable(reason: &'static str, message: &str) -> AuthError {
    AuthError::Unavailable {
        reason,
        message: message.into(),
    }
}

/// 256 random bits: a conversation id cannot be guessed.
fn new_id() -> String {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).expect("the kernel's CSPRNG is available");
    URL_SAFE_NO_PAD.encode(raw)
}

fn id_key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// Answers PAM's prompts: the user name and the first hidden prompt from the request,
/// everything after that from the client.
struct Handler {
    username: String,
    password: Option<Secret>,
    infos: Vec<Prompt>,
    events: UnboundedSender<PamEvent>,
    timeout: Duration,
}

impl Handler {
    fn ask(&mut self, style: PromptStyle, text: &CStr) -> Result<CString, ErrorCode> {
        let mut prompts = std::mem::take(&mut self.infos);
        prompts.push(Prompt {
            style,
            text: text.to_string_lossy().into_owned(),
        });
        let (reply, answers): (SyncSender<Secret>, Receiver<Secret>) = sync_channel(1);
        self.events
            .send(PamEvent::Ask { prompts, reply })
            .map_err(|_| ErrorCode::CONV_ERR)?;
        let answer = answers
            .recv_timeout(self.timeout)
            .map_err(|_| ErrorCode::CONV_ERR)?;
        CString::new(answer.expose()).map_err(|_| ErrorCode::CONV_ERR)
    }
}

impl ConversationHandler for Handler {
    fn prompt_echo_on(&mut self, prompt: &CStr) -> Result<CString, ErrorCode> {
        // An echoed prompt before the password is pam_get_user's "login:".
        if self.password.is_some() {
            return CString::new(self.username.as_str()).map_err(|_| ErrorCode::CONV_ERR);
        }
        self.ask(PromptStyle::EchoOn, prompt)
    }

    fn prompt_echo_off(&mut self, prompt: &CStr) -> Result<CString, ErrorCode> {
        match self.password.take() {
            Some(p) => CString::new(p.expose()).map_err(|_| ErrorCode::CONV_ERR),
            None => self.ask(PromptStyle::EchoOff, prompt),
        }
    }

    fn text_info(&mut self, msg: &CStr) {
        self.infos.push(Prompt {
            style: PromptStyle::Info,
            text: msg.to_string_lossy().into_owned(),
        });
    }

    fn error_msg(&mut self, msg: &CStr) {
        self.infos.push(Prompt {
            style: PromptStyle::Error,
            text: msg.to_string_lossy().into_owned(),
        });
    }
}

thread_local! {
    static FAIL_DELAY: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// PAM_FAIL_DELAY callback: remember the delay instead of sleeping on a pool thread.
unsafe extern "C" fn record_fail_delay(_status: i32, usec: u32, _appdata: *mut std::ffi::c_void) {
    FAIL_DELAY.with(|d| d.set(usec));
}

/// PAM_FAIL_DELAY from <security/_pam_types.h>; not exported by pam-sys.
const PAM_FAIL_DELAY: i32 = 10;

/// One whole PAM transaction, on a blocking-pool thread.
fn pam_transaction(
    service: &str,
    user: &str,
    password: Secret,
    rhost: &str,
    events: UnboundedSender<PamEvent>,
    timeout: Duration,
) {
    FAIL_DELAY.with(|d| d.set(0));
    let check_lock = password.clone();
    let handler = Handler {
        username: user.to_string(),
        password: Some(password),
        infos: Vec::new(),
        events: events.clone(),
        timeout,
    };
    let result = (|| {
        let mut pam =
            pam_client::Context::new(service, Some(user), handler).map_err(|e| e.code())?;
        pam.set_rhost(Some(rhost)).map_err(|e| e.code())?;
        let delay_fn: unsafe extern "C" fn(i32, u32, *mut std::ffi::c_void) = record_fail_delay;
        // SAFETY: PAM stores the function pointer; it lives for the whole program.
        unsafe { pam.set_item(PAM_FAIL_DELAY, delay_fn as *const std::ffi::c_void) }
            .map_err(|e| e.code())?;
        pam.authenticate(Flag::DISALLOW_NULL_AUTHTOK)
            .map_err(|e| e.code())?;
        // Authentication alone says nothing about expiry or access rules.
        pam.acct_mgmt(Flag::DISALLOW_NULL_AUTHTOK)
            .map_err(|e| e.code())?;
        Ok(pam.user().unwrap_or_else(|_| user.to_string()))
    })();
    let locked = matches!(result, Err(ErrorCode::AUTH_ERR))
        && super::shadow::locked_with_right_password(user, check_lock.expose());
    drop(check_lock);
    let fail_delay = Duration::from_micros(FAIL_DELAY.with(|d| d.get()) as u64);
    let _ = events.send(PamEvent::Done(PamOutcome {
        result,
        locked,
        fail_delay,
    }));
}
