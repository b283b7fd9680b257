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
    #[error("{0}")]
    Forbidden(String),
    /// A browser request from a page of another origin (login CSRF, SPEC §9).
    #[error("requests from {0} are not allowed; this origin is not in security.allowed_origins")]
    OriginNotAllowed(String),
    #[error("the request body must be JSON sent as Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("the password has expired and must be changed before logging in")]
    PasswordExpired,
    #[error("too many failed attempts; retry in {retry_after} s")]
    TooManyAttempts { retry_after: u64 },
    #[error("{0}")]
    Unavailable(String),
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
            ApiError::Forbidden(_) | ApiError::PasswordExpired | ApiError::OriginNotAllowed(_) => {
                StatusCode::FORBIDDEN
            }
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
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
            ApiError::Forbidden(_) => "account_unavailable",
            ApiError::OriginNotAllowed(_) => "origin_not_allowed",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PasswordExpired => "password_expired",
            ApiError::TooManyAttempts { .. } => "too_many_attempts",
            ApiError::Unavailable(_) => "dependency_unavailable",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Internal => "internal_error",
        }
    }

    pub fn from_auth(e: AuthError, www_authenticate: Vec<String>) -> Self {
        match e {
            AuthError::Malformed { message, .. } => ApiError::BadRequest(message),
            AuthError::Rejected { message, .. } => ApiError::Unauthorized {
                message,
                www_authenticate,
            },
            AuthError::AccountUnavailable { message, .. } => ApiError::Forbidden(message),
            AuthError::TooManyAttempts { retry_after } => ApiError::TooManyAttempts { retry_after },
            AuthError::Unavailable { message, .. } => ApiError::Unavailable(message),
            AuthError::PasswordExpired => ApiError::PasswordExpired,
            AuthError::UnknownConversation => ApiError::NotFound("unknown or expired conversation"),
        }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.code(), "message": self.to_string() })
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
            ),
            (AuthError::rejected("x", "m"), 401, "authentication_failed"),
            (
                AuthError::AccountUnavailable {
                    reason: "x",
                    message: "m".into(),
                },
                403,
                "account_unavailable",
            ),
            (
                AuthError::TooManyAttempts { retry_after: 3 },
                429,
                "too_many_attempts",
            ),
            (
                AuthError::Unavailable {
                    reason: "x",
                    message: "m".into(),
                },
                503,
                "dependency_unavailable",
            ),
        ];
        for (e, status, code) in cases {
            let api = ApiError::from_auth(e, vec![]);
            assert_eq!(api.status().as_u16(), status);
            assert_eq!(api.code(), code);
            assert_eq!(api.body()["error"], code);
        }
    }
}
