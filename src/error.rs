//! The one place that turns an error into SPEC §4's status, code and message, so a
//! reader sees every status the API can answer on one screen.

use hyper::StatusCode;

use crate::auth::AuthError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// 401; `www_authenticate` carries the schemes the client may use next.
    #[error("{message}")]
    Unauthorized {
        message: String,
        www_authenticate: Vec<String>,
    },
    /// A browser request from a page of another origin (login CSRF, SPEC §9).
    #[error("requests from {0} are not allowed; this origin is not in security.allowed_origins")]
    OriginNotAllowed(String),
    #[error("the request body must be JSON sent as Content-Type: application/json")]
    UnsupportedMediaType,
    /// A refused login; status and code come from [`refusal`].
    #[error("{error}")]
    Auth {
        error: AuthError,
        /// Sent with a 401: the schemes the client may use next.
        www_authenticate: Vec<String>,
    },
    #[error("{0}")]
    NotFound(&'static str),
    #[error("method not allowed; use {allow}")]
    MethodNotAllowed { allow: &'static str },
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request was not received in time")]
    Timeout,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::OriginNotAllowed(_) => StatusCode::FORBIDDEN,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Auth { error, .. } => refusal(error).status,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) | ApiError::PayloadTooLarge { .. } | ApiError::Timeout => {
                "bad_request"
            }
            ApiError::Unauthorized { .. } => "authentication_failed",
            ApiError::OriginNotAllowed(_) => "origin_not_allowed",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Auth { error, .. } => refusal(error).code,
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Internal => "internal_error",
        }
    }

    pub fn from_auth(error: AuthError, www_authenticate: Vec<String>) -> Self {
        ApiError::Auth {
            error,
            www_authenticate,
        }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.code(), "message": self.to_string() })
    }
}

/// How a refused login is answered and audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    /// The `error` field of the body (SPEC §4).
    pub code: &'static str,
    /// The `outcome` of the audit event and the login metric.
    pub outcome: &'static str,
}

/// Every [`AuthError`] with its status, code and audit outcome, in one match: the
/// error body and the audit log cannot disagree about what happened.
pub fn refusal(e: &AuthError) -> Refusal {
    let (status, code, outcome) = match e {
        AuthError::Malformed { .. } => (StatusCode::BAD_REQUEST, "bad_request", "bad_request"),
        AuthError::Rejected { .. } => (
            StatusCode::UNAUTHORIZED,
            "authentication_failed",
            "rejected",
        ),
        AuthError::AccountUnavailable { .. } => (
            StatusCode::FORBIDDEN,
            "account_unavailable",
            "account_unavailable",
        ),
        AuthError::PasswordExpired => (
            StatusCode::FORBIDDEN,
            "password_expired",
            "account_unavailable",
        ),
        AuthError::TooManyAttempts { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            "throttled",
        ),
        AuthError::Unavailable { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "dependency_unavailable",
            "unavailable",
        ),
        AuthError::UnknownConversation | AuthError::ConversationElsewhere => {
            (StatusCode::NOT_FOUND, "not_found", "rejected")
        }
    };
    Refusal {
        status,
        code,
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_errors_map_to_the_spec_table() {
        let cases = [
            (
                AuthError::Malformed {
                    reason: "x",
                    message: "m".into(),
                },
                400,
                "bad_request",
                "bad_request",
            ),
            (
                AuthError::rejected("x", "m"),
                401,
                "authentication_failed",
                "rejected",
            ),
            (
                AuthError::AccountUnavailable {
                    reason: "x",
                    message: "m".into(),
                },
                403,
                "account_unavailable",
                "account_unavailable",
            ),
            (
                AuthError::PasswordExpired,
                403,
                "password_expired",
                "account_unavailable",
            ),
            (AuthError::UnknownConversation, 404, "not_found", "rejected"),
            (
                AuthError::TooManyAttempts { retry_after: 3 },
                429,
                "too_many_attempts",
                "throttled",
            ),
            (
                AuthError::Unavailable {
                    reason: "x",
                    message: "m".into(),
                },
                503,
                "dependency_unavailable",
                "unavailable",
            ),
        ];
        for (e, status, code, outcome) in cases {
            assert_eq!(refusal(&e).outcome, outcome);
            let message = e.to_string();
            let api = ApiError::from_auth(e, vec![]);
            assert_eq!(api.to_string(), message);
            assert_eq!(api.status().as_u16(), status);
            assert_eq!(api.code(), code);
            assert_eq!(api.body()["error"], code);
        }
    }

    #[test]
    fn throttle_errors_are_429_or_503_never_401() {
        use crate::throttle::ThrottleError;
        let refused = AuthError::from(ThrottleError::Refused { retry_after: 7 });
        assert_eq!(refused, AuthError::TooManyAttempts { retry_after: 7 });
        let down = AuthError::from(ThrottleError::Unavailable("connection refused".into()));
        assert_eq!(down.reason(), "session_store_unavailable");
        let api = ApiError::from_auth(down, vec![]);
        assert_eq!(api.status().as_u16(), 503);
        assert_eq!(api.code(), "dependency_unavailable");
        assert!(
            !api.to_string().contains("connection refused"),
            "the Redis error stays in the log: {api}"
        );
    }
}
