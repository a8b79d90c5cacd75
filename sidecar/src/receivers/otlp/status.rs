//! How the otlp receiver answers a refusal: one mapping from [`Refusal`] to the gRPC code and
//! the HTTP status, plus the fix-up of tonic's own codec errors.

use axum::http::StatusCode;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::component::Refusal;

/// The gRPC code and HTTP status of a load refusal. Every refusal is retryable: memory and a
/// full persistent queue are RESOURCE_EXHAUSTED, the rest UNAVAILABLE; over HTTP a full queue
/// is 429 and the rest 503 (the codes OTLP/HTTP clients retry). The gRPC code is also the
/// `code` of OTLP/HTTP error bodies.
pub fn refusal_status(r: &Refusal) -> (Code, StatusCode) {
    match r {
        Refusal::MemoryLimit { .. } => (Code::ResourceExhausted, StatusCode::SERVICE_UNAVAILABLE),
        Refusal::StorageFull { .. } => (Code::ResourceExhausted, StatusCode::TOO_MANY_REQUESTS),
        Refusal::QueueFull { .. } => (Code::Unavailable, StatusCode::TOO_MANY_REQUESTS),
        Refusal::StorageError | Refusal::ShuttingDown => {
            (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE)
        }
    }
}

/// A load refusal as a gRPC status, always with RetryInfo.
pub fn grpc_refusal(r: &Refusal) -> Status {
    Status::with_error_details(
        refusal_status(r).0,
        r.message(),
        ErrorDetails::with_retry_info(Some(r.retry_after())),
    )
}

/// tonic's codec answers an oversized message with OUT_OF_RANGE and an undecodable one with
/// INTERNAL. OTLP clients read those as "retry" and "server bug"; size is RESOURCE_EXHAUSTED
/// and a malformed payload is the client's INVALID_ARGUMENT.
pub fn fix_codec_status<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let headers = resp.headers_mut();
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .replace("%20", " ");
    let code = match headers.get("grpc-status").and_then(|v| v.to_str().ok()) {
        Some("11") if message.contains("message length too large") => Some("8"),
        Some("13") if message.starts_with("failed to decode") => Some("3"),
        _ => None,
    };
    if let Some(c) = code {
        headers.insert("grpc-status", http::HeaderValue::from_static(c));
    }
    resp
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_refusal_maps_to_a_retryable_code_and_status() {
        let s = Duration::from_secs(1);
        let cases = [
            (
                Refusal::MemoryLimit {
                    retry_after: s,
                    detail: "over".into(),
                },
                Code::ResourceExhausted,
                503,
            ),
            (
                Refusal::StorageFull { retry_after: s },
                Code::ResourceExhausted,
                429,
            ),
            (
                Refusal::QueueFull { retry_after: s },
                Code::Unavailable,
                429,
            ),
            (Refusal::StorageError, Code::Unavailable, 503),
            (Refusal::ShuttingDown, Code::Unavailable, 503),
        ];
        for (r, code, http) in cases {
            assert_eq!(
                refusal_status(&r),
                (code, StatusCode::from_u16(http).unwrap()),
                "{r:?}"
            );
            let status = grpc_refusal(&r);
            assert_eq!(status.code(), code, "{r:?}");
            assert_eq!(status.message(), r.message());
            assert_eq!(
                status.get_details_retry_info().and_then(|i| i.retry_delay),
                Some(r.retry_after()),
                "{r:?}"
            );
        }
    }

    #[test]
    fn codec_errors_become_client_errors() {
        let fixed = |status: &str, message: &str| {
            let resp = http::Response::builder()
                .header("grpc-status", status)
                .header("grpc-message", message)
                .body(())
                .unwrap();
            fix_codec_status(resp).headers()["grpc-status"].clone()
        };
        assert_eq!(fixed("11", "message%20length%20too%20large"), "8");
        assert_eq!(fixed("13", "failed%20to%20decode%20Protobuf"), "3");
        assert_eq!(fixed("13", "something else"), "13");
    }
}
