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
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pam_client::{ConversationHandler, ErrorCode, Flag};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::Instant;

use super::Mechanism;
use super::{
    AuthError, Authenticator, BoxFuture, Challenge, Credentials, Identity, LoginContext, Outcome,
    Prompt, PromptStyle, Secret, valid_username,
};
use crate::audit;
use crate::blocking::{BlockingPool, SlotClock};
use crate::quota::{self, Quota};
use crate::throttle::{Attempt, Throttle};

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

/// Which PAM step said no: `pam_authenticate` judges the credentials; a refusal by
/// `pam_acct_mgmt` or `pam_chauthtok` comes after the password was proven right,
/// whatever code the module returns (pam_listfile and pam_access say AUTH_ERR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Authenticate(ErrorCode),
    Account(ErrorCode),
    ChangePassword(ErrorCode),
}

struct PamOutcome {
    result: Result<String, Refusal>,
    /// Set when the user is locked but gave the right password (see `shadow.rs`).
    locked: bool,
    /// The delay PAM asked for after a failure (pam_fail_delay), served asynchronously.
    fail_delay: Duration,
}

/// A conversation waiting for the client's answer. It holds the login's throttle
/// reservation (dropped unanswered, that counts as a failed attempt) and its parking
/// place (given back as soon as the answer arrives or the conversation is abandoned).
struct Pending {
    binding: [u8; 32],
    peer: std::net::SocketAddr,
    user: String,
    reply: SyncSender<Secret>,
    events: UnboundedReceiver<PamEvent>,
    expires: Instant,
    attempt: Attempt,
    _slot: quota::Slot,
}

type Conversations = Arc<Mutex<HashMap<[u8; 32], Pending>>>;

/// What the administrator chose for PAM logins.
#[derive(Debug, Clone)]
pub struct PamSettings {
    /// `/etc/pam.d/<service>`.
    pub service: String,
    /// An unanswered prompt fails the login after this long.
    pub timeout: Duration,
    /// Relay `pam_chauthtok` when the password must change (`security.pam_password_change`).
    pub change_password: bool,
}

pub struct PasswordAuthenticator {
    settings: PamSettings,
    /// The PAM pool: apart from NSS and GSSAPI, so waiting prompts delay nobody else.
    pool: BlockingPool,
    throttle: Arc<Throttle>,
    parking: Arc<Quota>,
    timeout: Duration,
    conversations: Conversations,
}

impl PasswordAuthenticator {
    pub fn new(
        settings: PamSettings,
        pool: BlockingPool,
        throttle: Arc<Throttle>,
        parking: Arc<Quota>,
    ) -> Self {
        PasswordAuthenticator {
            timeout: settings.timeout,
            settings,
            pool,
            throttle,
            parking,
            conversations: Arc::new(Mutex::new(HashMap::new())),
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
        // Reserved before PAM is asked, so parallel guesses cannot all pass the check.
        let attempt = self.throttle.reserve(&username, peer).await?;
        let (events_tx, events) = unbounded_channel();
        let settings = self.settings.clone();
        let rhost = peer.to_string();
        let user = username.clone();
        let spawned = self
            .pool
            .spawn(move |clock| {
                pam_transaction(&settings, &user, password, &rhost, events_tx, clock)
            })
            .await;
        if let Err(e) = spawned {
            attempt.neutral();
            return Err(e.into());
        }
        self.follow(username, events, ctx, attempt).await
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
                None if !conversation.starts_with(daemon_tag()) => {
                    return Err(AuthError::ConversationElsewhere);
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
            attempt,
            ..
        } = pending;
        if reply.send(answers.remove(0)).is_err() {
            // The PAM thread gave up (timeout) just now: an abandoned conversation.
            attempt.failed();
            return Err(AuthError::UnknownConversation);
        }
        self.follow(user, events, ctx, attempt).await
    }

    /// Wait for the PAM thread's next event: another prompt or the end.
    async fn follow(
        &self,
        user: String,
        mut events: UnboundedReceiver<PamEvent>,
        ctx: &LoginContext,
        attempt: Attempt,
    ) -> Result<Outcome, AuthError> {
        // The PAM thread gives up on its own after `timeout`; allow it to say so.
        let wait = self.timeout + Duration::from_secs(5);
        let event = tokio::time::timeout(wait, events.recv()).await;
        match event {
            Ok(Some(PamEvent::Ask { prompts, reply })) => {
                let Some(slot) = self.parking.take(ctx.peer.ip()) else {
                    // Dropping `reply` ends the PAM transaction at once (CONV_ERR).
                    drop(reply);
                    attempt.neutral();
                    tracing::warn!(
                        waiting = self.parking.taken(),
                        "PAM conversation refused: too many are waiting for answers (security.pam_max_conversations, {} per address)",
                        self.parking.per_address()
                    );
                    return Err(AuthError::TooManyAttempts {
                        retry_after: self.timeout.as_secs().max(1),
                    });
                };
                let conversation = new_id();
                let key = id_key(&conversation);
                let expires = Instant::now() + self.timeout;
                let pending = Pending {
                    binding: ctx.binding,
                    peer: ctx.peer,
                    user,
                    reply,
                    events,
                    expires,
                    attempt,
                    _slot: slot,
                };
                lock(&self.conversations).insert(key, pending);
                reap_when_abandoned(self.conversations.clone(), key, expires);
                Ok(Outcome::Challenge(Challenge {
                    conversation,
                    prompts,
                }))
            }
            Ok(Some(PamEvent::Done(outcome))) => self.finish(user, outcome, ctx, attempt).await,
            Ok(None) | Err(_) => {
                attempt.neutral();
                Err(unavailable(
                    "pam_failed",
                    "the PAM transaction did not finish",
                ))
            }
        }
    }

    async fn finish(
        &self,
        user: String,
        o: PamOutcome,
        _ctx: &LoginContext,
        attempt: Attempt,
    ) -> Result<Outcome, AuthError> {
        let result = match o.result {
            Ok(pam_user) => {
                attempt.succeeded();
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
            Err(Refusal::Authenticate(_)) if o.locked => AuthError::AccountUnavailable {
                reason: "account_locked",
                message: "the account is locked".into(),
            },
            Err(Refusal::Authenticate(code)) => self.authenticate_refusal(code),
            Err(Refusal::Account(code)) => self.account_refusal(code),
            Err(Refusal::ChangePassword(code)) => {
                tracing::info!(?code, "the expired password was not changed");
                AuthError::PasswordExpired
            }
        };
        // Only a wrong credential costs a guess; a refused account with the right
        // password, or a broken dependency, says nothing about guessing.
        if matches!(result, AuthError::Rejected { .. }) {
            attempt.failed();
        } else {
            attempt.neutral();
        }
        if matches!(result, AuthError::Rejected { .. }) && !o.fail_delay.is_zero() {
            // Served here, not in PAM, so a failed login does not pin a pool thread.
            tokio::time::sleep(o.fail_delay.min(Duration::from_secs(10))).await;
        }
        Err(result)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Pending>> {
        lock(&self.conversations)
    }

    /// `pam_authenticate` said no: usually the credentials, sometimes the account.
    fn authenticate_refusal(&self, code: ErrorCode) -> AuthError {
        let rejected = |reason| AuthError::Rejected {
            reason,
            message: WRONG.into(),
        };
        match code {
            ErrorCode::AUTH_ERR | ErrorCode::USER_UNKNOWN | ErrorCode::MAXTRIES => {
                rejected("wrong_credentials")
            }
            ErrorCode::CRED_INSUFFICIENT => rejected("credentials_insufficient"),
            ErrorCode::CONV_ERR => AuthError::Rejected {
                reason: "conversation_abandoned",
                message: "the login conversation was not completed in time".into(),
            },
            ErrorCode::ACCT_EXPIRED => AuthError::AccountUnavailable {
                reason: "account_expired",
                message: "the account has expired".into(),
            },
            ErrorCode::PERM_DENIED => AuthError::AccountUnavailable {
                reason: "permission_denied",
                message: "the account may not log in here".into(),
            },
            ErrorCode::NEW_AUTHTOK_REQD | ErrorCode::AUTHTOK_EXPIRED => AuthError::PasswordExpired,
            ErrorCode::AUTHINFO_UNAVAIL => unavailable(
                "authinfo_unavailable",
                "the account database behind PAM is unreachable",
            ),
            code => {
                tracing::error!(?code, service = %self.settings.service, "PAM failed; check /etc/pam.d/{}", self.settings.service);
                unavailable("pam_error", "PAM could not process the login")
            }
        }
    }

    /// `pam_acct_mgmt` said no after the password was proven: never a wrong password,
    /// never a guess (SPEC §4), except that an unreachable account database is a 503.
    fn account_refusal(&self, code: ErrorCode) -> AuthError {
        match code {
            ErrorCode::NEW_AUTHTOK_REQD | ErrorCode::AUTHTOK_EXPIRED => AuthError::PasswordExpired,
            ErrorCode::ACCT_EXPIRED => AuthError::AccountUnavailable {
                reason: "account_expired",
                message: "the account has expired".into(),
            },
            ErrorCode::AUTHINFO_UNAVAIL => unavailable(
                "authinfo_unavailable",
                "the account database behind PAM is unreachable",
            ),
            code => {
                tracing::info!(?code, service = %self.settings.service, "pam_acct_mgmt refused the account");
                AuthError::AccountUnavailable {
                    reason: "account_refused",
                    message: "the account may not log in here".into(),
                }
            }
        }
    }
}

fn lock(c: &Conversations) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Pending>> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// At its deadline, drop a conversation nobody answered: its parking place is given
/// back, the attempt counts as failed (SPEC §9), and the abandonment is audited.
fn reap_when_abandoned(conversations: Conversations, key: [u8; 32], expires: Instant) {
    tokio::spawn(async move {
        tokio::time::sleep_until(expires).await;
        let abandoned = {
            let mut map = lock(&conversations);
            match map.get(&key) {
                Some(p) if p.expires <= Instant::now() => map.remove(&key),
                _ => None,
            }
        };
        if let Some(p) = abandoned {
            audit::login(
                p.peer,
                "password",
                Some(&p.user),
                "rejected",
                "conversation_abandoned",
            );
            p.attempt.failed();
        }
    });
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

/// This process's 8-character mark at the start of every conversation id, so an
/// answer that a load balancer sent to another daemon (or that outlived a restart)
/// is told apart from a wrong id. Answers are never relayed between daemons: they
/// hold one-time codes and new passwords, which must not pass through Redis.
fn daemon_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let mut raw = [0u8; 6];
        getrandom::fill(&mut raw).expect("the kernel's CSPRNG is available");
        URL_SAFE_NO_PAD.encode(raw)
    })
}

/// The daemon's tag and 256 random bits: a conversation id cannot be guessed.
fn new_id() -> String {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).expect("the kernel's CSPRNG is available");
    let mut id = daemon_tag().to_string();
    URL_SAFE_NO_PAD.encode_string(raw, &mut id);
    id
}

fn id_key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// Answers PAM's prompts: the user name and the first hidden prompt from the request,
/// everything after that from the client.
struct Handler {
    username: String,
    password: Option<Secret>,
    /// During a password change: the password just proven, for the module's
    /// "Current password:" prompt, so the client is not asked for it twice.
    current: Option<Secret>,
    infos: Vec<Prompt>,
    events: UnboundedSender<PamEvent>,
    timeout: Duration,
    clock: Arc<SlotClock>,
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
        // Waiting for a person is not the slot being "held too long".
        self.clock.park();
        let answer = answers.recv_timeout(self.timeout);
        self.clock.resume();
        let answer = answer.map_err(|_| ErrorCode::CONV_ERR)?;
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
        if let Some(p) = self.password.take() {
            return CString::new(p.expose()).map_err(|_| ErrorCode::CONV_ERR);
        }
        // Only a prompt that says it wants the current password gets it; anything
        // else (a new password, a prompt in another language) goes to the client.
        let text = prompt.to_string_lossy().to_lowercase();
        if (text.contains("current") || text.contains("old"))
            && let Some(p) = self.current.take()
        {
            return CString::new(p.expose()).map_err(|_| ErrorCode::CONV_ERR);
        }
        self.ask(PromptStyle::EchoOff, prompt)
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

/// What sshd does for an expired password: `pam_chauthtok(PAM_CHANGE_EXPIRED_AUTHTOK)`
/// in the same transaction, its prompts (new password, retype, pam_pwquality's
/// complaints) relayed to the client by the conversation. PAM_OLDAUTHTOK cannot be set
/// by an application, so the module's "Current password:" prompt is answered with the
/// password just proven instead (see [`Handler::prompt_echo_off`]).
fn change_expired_password(
    pam: &mut pam_client::Context<Handler>,
    old_password: &Secret,
) -> Result<(), Refusal> {
    pam.conversation_mut().current = Some(old_password.clone());
    let changed = pam.chauthtok(Flag::CHANGE_EXPIRED_AUTHTOK);
    pam.conversation_mut().current = None;
    changed.map_err(|e| Refusal::ChangePassword(e.code()))
}

/// One whole PAM transaction, on a blocking-pool thread.
fn pam_transaction(
    settings: &PamSettings,
    user: &str,
    password: Secret,
    rhost: &str,
    events: UnboundedSender<PamEvent>,
    clock: Arc<SlotClock>,
) {
    let service = settings.service.as_str();
    FAIL_DELAY.with(|d| d.set(0));
    // Kept for the locked-account check and as the current password of a change.
    let old_password = password.clone();
    let handler = Handler {
        username: user.to_string(),
        password: Some(password),
        current: None,
        infos: Vec::new(),
        events: events.clone(),
        timeout: settings.timeout,
        clock,
    };
    let result = (|| {
        let auth = Refusal::Authenticate;
        let mut pam =
            pam_client::Context::new(service, Some(user), handler).map_err(|e| auth(e.code()))?;
        pam.set_rhost(Some(rhost)).map_err(|e| auth(e.code()))?;
        let delay_fn: unsafe extern "C" fn(i32, u32, *mut std::ffi::c_void) = record_fail_delay;
        // SAFETY: PAM stores the function pointer; it lives for the whole program.
        unsafe { pam.set_item(PAM_FAIL_DELAY, delay_fn as *const std::ffi::c_void) }
            .map_err(|e| auth(e.code()))?;
        pam.authenticate(Flag::DISALLOW_NULL_AUTHTOK)
            .map_err(|e| auth(e.code()))?;
        // Authentication alone says nothing about expiry or access rules.
        match pam.acct_mgmt(Flag::DISALLOW_NULL_AUTHTOK) {
            Ok(()) => {}
            Err(e) if e.code() == ErrorCode::NEW_AUTHTOK_REQD && settings.change_password => {
                change_expired_password(&mut pam, &old_password)?;
            }
            Err(e) => return Err(Refusal::Account(e.code())),
        }
        Ok(pam.user().unwrap_or_else(|_| user.to_string()))
    })();
    let locked = matches!(result, Err(Refusal::Authenticate(ErrorCode::AUTH_ERR)))
        && super::shadow::locked_with_right_password(user, old_password.expose());
    drop(old_password);
    let fail_delay = Duration::from_micros(FAIL_DELAY.with(|d| d.get()) as u64);
    let _ = events.send(PamEvent::Done(PamOutcome {
        result,
        locked,
        fail_delay,
    }));
}
