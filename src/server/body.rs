//! Reading a request body: bounded in size and time, kept in a zeroizing buffer
//! because it may hold a password.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use zeroize::Zeroizing;

use crate::error::ApiError;

/// The whole body, at most `limit` bytes (413 beyond), within `timeout` (408).
pub async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Beyond the limit, a modest overflow is still read and thrown away so the client
    // finishes sending and sees the 413; closing on it mid-upload makes the kernel
    // reset the connection and the client loses the answer.
    let drain_limit = (limit as u64).max(DRAIN_LIMIT);
    if declared.is_some_and(|n| n > drain_limit) {
        linger(body);
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = body;
    let collect = async {
        // Collected into a zeroizing buffer because it may hold a password.
        let mut out = Zeroizing::new(Vec::new());
        let mut seen: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|_| ApiError::BadRequest("the request body could not be read".into()))?;
            if let Ok(data) = frame.into_data() {
                seen += data.len() as u64;
                if seen > drain_limit {
                    break;
                }
                if seen <= limit as u64 {
                    out.extend_from_slice(&data);
                }
            }
        }
        if seen > limit as u64 {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        Ok(out)
    };
    let result = tokio::time::timeout(timeout, collect)
        .await
        .map_err(|_| ApiError::Timeout)
        .and_then(|r| r);
    if matches!(result, Err(ApiError::PayloadTooLarge { .. })) {
        linger(body);
    }
    result
}

/// Keep an unread request body open a moment longer, until the error response has
/// gone out. Dropped while the response is still unsent, an HTTP/2 request body is
/// reset with CANCEL and the client never sees the 413; dropped after the response
/// ended, h2 resets it with NO_ERROR, as RFC 9113 §8.1 asks for an early answer.
pub fn linger(body: Incoming) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(body);
    });
}

/// How much of an oversized body is read and discarded before answering 413.
const DRAIN_LIMIT: u64 = 1 << 20;
