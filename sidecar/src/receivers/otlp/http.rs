//! OTLP/HTTP: `POST /v1/traces`, protobuf or JSON, optionally gzip (capped after
//! decompression), with bearer-token checks before the body is read.

use std::io::Read;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;
use tonic::Code;

use super::config::Listener;
use super::drain::{drain_refused, Drain};
use super::status::refusal_status;
use super::{Bound, Intake};
use crate::component::{BoxFuture, ListenError};
use crate::model::TraceRequest;
use crate::receivers::auth::{BearerAuth, UNAUTHENTICATED};

#[derive(Clone)]
struct HttpState {
    intake: Arc<Intake>,
    max: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Proto,
    Json,
}

/// OTLP/HTTP error body: a google.rpc.Status in the request's encoding.
fn http_error(enc: Encoding, status: StatusCode, grpc_code: Code, message: &str) -> Response {
    let (ctype, body) = match enc {
        Encoding::Json => (
            "application/json",
            serde_json::json!({ "code": grpc_code as i32, "message": message })
                .to_string()
                .into_bytes(),
        ),
        Encoding::Proto => (
            "application/x-protobuf",
            tonic_types::pb::Status {
                code: grpc_code as i32,
                message: message.to_owned(),
                details: Vec::new(),
            }
            .encode_to_vec(),
        ),
    };
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(ctype))],
        body,
    )
        .into_response()
}

/// Why a gzip body was not decompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GunzipError {
    #[error("request body exceeds {max} bytes after decompression")]
    TooLarge { max: usize },
    #[error("invalid gzip body")]
    Invalid,
}

/// Decompresses with a cap: reads at most `max + 1` bytes, so a gzip bomb costs `max` bytes
/// of memory before it is refused.
pub fn gunzip_capped(body: &[u8], max: usize) -> Result<Vec<u8>, GunzipError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(max));
    let mut dec = flate2::read::GzDecoder::new(body).take(max as u64 + 1);
    dec.read_to_end(&mut out)
        .map_err(|_| GunzipError::Invalid)?;
    if out.len() > max {
        return Err(GunzipError::TooLarge { max });
    }
    Ok(out)
}

/// A `Content-Type` that is neither protobuf nor JSON (the media type, lower-cased, without
/// parameters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported content type {0:?}; use application/x-protobuf or application/json")]
pub struct UnsupportedMediaType(pub String);

/// The body encoding a request's `Content-Type` names, compared without case or parameters.
/// The one reading of the header, so the export path and every early refusal (401) answer in
/// the same encoding.
fn request_encoding(headers: &HeaderMap) -> Result<Encoding, UnsupportedMediaType> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    match ctype.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Proto),
        "application/json" => Ok(Encoding::Json),
        _ => Err(UnsupportedMediaType(ctype)),
    }
}

/// Why an OTLP/HTTP body (already decompressed) is not a valid export request; the message is
/// what the client gets.
#[derive(Debug, thiserror::Error)]
pub enum DecodeBodyError {
    #[error("invalid OTLP/JSON ExportTraceServiceRequest: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON that parses but whose spans do not (the same checks as protobuf intake).
    #[error("invalid OTLP/JSON ExportTraceServiceRequest: {0}")]
    JsonSpans(#[source] prost::DecodeError),
    #[error("invalid protobuf ExportTraceServiceRequest: {0}")]
    Proto(#[source] prost::DecodeError),
}

/// Decodes an OTLP/HTTP request body (already decompressed), protobuf or JSON. Public for the
/// fuzz targets (`fuzz/`).
pub fn decode_http_body(raw: Bytes, json: bool) -> Result<TraceRequest, DecodeBodyError> {
    if json {
        let req = serde_json::from_slice::<ExportTraceServiceRequest>(&raw)?;
        TraceRequest::from_proto(&req).map_err(DecodeBodyError::JsonSpans)
    } else {
        TraceRequest::decode(raw).map_err(DecodeBodyError::Proto)
    }
}

/// Why an export request was refused before it reached the pipeline: each is counted under
/// its `reason` and answered with its HTTP status and gRPC code.
#[derive(Debug, thiserror::Error)]
enum BadRequest {
    #[error(transparent)]
    MediaType(#[from] UnsupportedMediaType),
    #[error("request body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("cannot read the request body: {0}")]
    Unreadable(String),
    #[error(transparent)]
    Gunzip(#[from] GunzipError),
    #[error("unsupported Content-Encoding {0:?}; use gzip or none")]
    ContentEncoding(String),
    #[error(transparent)]
    Decode(#[from] DecodeBodyError),
}

impl BadRequest {
    /// The `reason` label of `receiver_refused_spans_total`.
    fn reason(&self) -> &'static str {
        match self {
            BadRequest::MediaType(_) => "unsupported_media_type",
            BadRequest::ContentEncoding(_) => "unsupported_encoding",
            BadRequest::TooLarge(_) | BadRequest::Gunzip(GunzipError::TooLarge { .. }) => {
                "too_large"
            }
            BadRequest::Unreadable(_)
            | BadRequest::Gunzip(GunzipError::Invalid)
            | BadRequest::Decode(_) => "bad_request",
        }
    }

    fn status(&self) -> (StatusCode, Code) {
        match self {
            BadRequest::MediaType(_) | BadRequest::ContentEncoding(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, Code::InvalidArgument)
            }
            BadRequest::TooLarge(_) | BadRequest::Gunzip(GunzipError::TooLarge { .. }) => {
                (StatusCode::PAYLOAD_TOO_LARGE, Code::ResourceExhausted)
            }
            BadRequest::Unreadable(_)
            | BadRequest::Gunzip(GunzipError::Invalid)
            | BadRequest::Decode(_) => (StatusCode::BAD_REQUEST, Code::InvalidArgument),
        }
    }

    /// Counts the refusal and answers it in `enc`.
    fn refuse(self, intake: &Intake, enc: Encoding) -> Response {
        intake.refused_bad("http", self.reason());
        let (status, code) = self.status();
        http_error(enc, status, code, &self.to_string())
    }
}

/// The decoded body of a request in `enc` (with the body's size), or why not.
fn read_request(
    st: &HttpState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    enc: Encoding,
) -> Result<(TraceRequest, usize), BadRequest> {
    // Over the limit (declared or while reading) is an OTLP refusal in the request's encoding,
    // not axum's plain-text rejection, and is counted like every other refusal.
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => BadRequest::TooLarge(st.max),
        _ => BadRequest::Unreadable(e.body_text()),
    })?;
    let content_encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    // Bytes all the way: decoded spans are slices of this buffer.
    let raw: Bytes = match content_encoding.as_str() {
        "" | "identity" => body,
        "gzip" | "x-gzip" => Bytes::from(gunzip_capped(&body, st.max)?),
        other => return Err(BadRequest::ContentEncoding(other.to_owned())),
    };
    if raw.len() > st.max {
        return Err(BadRequest::TooLarge(st.max));
    }
    let len = raw.len();
    Ok((decode_http_body(raw, enc == Encoding::Json)?, len))
}

async fn http_export(
    State(st): State<HttpState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // An unknown content type is answered in JSON: there is no request encoding to answer in.
    let enc = match request_encoding(&headers) {
        Ok(enc) => enc,
        Err(e) => return BadRequest::from(e).refuse(&st.intake, Encoding::Json),
    };
    let (req, len) = match read_request(&st, &headers, body, enc) {
        Ok(r) => r,
        Err(bad) => return bad.refuse(&st.intake, enc),
    };
    match st.intake.take(req, len, "http").await {
        Ok(()) => {
            let resp = ExportTraceServiceResponse {
                partial_success: None,
            };
            match enc {
                Encoding::Proto => (
                    [(header::CONTENT_TYPE, "application/x-protobuf")],
                    resp.encode_to_vec(),
                )
                    .into_response(),
                Encoding::Json => (
                    [(header::CONTENT_TYPE, "application/json")],
                    serde_json::to_vec(&resp).unwrap_or_else(|_| b"{}".to_vec()),
                )
                    .into_response(),
            }
        }
        Err(r) => {
            let (code, status) = refusal_status(&r);
            let mut resp = http_error(enc, status, code, &r.message());
            let secs = r.retry_after().as_secs().max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            resp
        }
    }
}

#[derive(Clone)]
struct HttpAuth {
    auth: Arc<BearerAuth>,
    intake: Arc<Intake>,
}

/// Runs before the body is read: an unauthenticated client never gets its payload decoded.
async fn http_auth(
    State(a): State<HttpAuth>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if a.auth.check(header) {
        return next.run(req).await;
    }
    a.intake.refused_bad("http", "unauthenticated");
    let enc = request_encoding(req.headers()).unwrap_or(Encoding::Json);
    let mut resp = http_error(
        enc,
        StatusCode::UNAUTHORIZED,
        Code::Unauthenticated,
        UNAUTHENTICATED,
    );
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "POST")],
        "only POST is allowed on /v1/traces",
    )
        .into_response()
}

/// Serves OTLP/HTTP on a bound listener until `stop`.
pub(super) fn serve(
    b: Bound,
    listener: &Listener,
) -> Result<tokio::task::JoinHandle<()>, ListenError> {
    let Bound {
        tcp,
        at,
        intake,
        auth,
        stop,
    } = b;
    let max = listener.max;
    let state = HttpState {
        intake: intake.clone(),
        max,
    };
    let mut app = Router::new().route("/v1/traces", post(http_export).fallback(method_not_allowed));
    if let Some(a) = auth {
        app = app.layer(axum::middleware::from_fn_with_state(
            HttpAuth { auth: a, intake },
            http_auth,
        ));
    }
    // The compressed body may not exceed the limit either. Draining wraps everything, so a
    // refusal from any layer (401, 413, 415) is read by the client rather than reset.
    let app = app
        .layer(DefaultBodyLimit::max(max))
        .layer(axum::middleware::from_fn_with_state(
            Drain::new(max),
            drain_refused,
        ))
        .with_state(state);
    let serve = match &listener.tls {
        Some(t) => {
            let l = t.listener(tcp).map_err(|e| ListenError::Tls {
                at: at.clone(),
                message: e.to_string(),
            })?;
            Box::pin(async move {
                axum::serve(l, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            }) as BoxFuture<'static, std::io::Result<()>>
        }
        None => Box::pin(async move {
            use axum::serve::ListenerExt as _;
            let tcp = tcp.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!("cannot set TCP_NODELAY: {e}");
                }
            });
            axum::serve(tcp, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }),
    };
    let name = at;
    Ok(tokio::spawn(async move {
        if let Err(e) = serve.await {
            tracing::error!(receiver = %name, "HTTP server failed: {e}");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn content_type_is_read_the_same_for_every_answer() {
        let enc = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            request_encoding(&h)
        };
        for proto in [
            "application/x-protobuf",
            "application/protobuf",
            "Application/X-Protobuf; charset=binary",
            " application/protobuf ",
        ] {
            assert!(enc(proto) == Ok(Encoding::Proto), "{proto}");
        }
        assert!(enc("application/json; charset=utf-8") == Ok(Encoding::Json));
        assert!(enc("text/plain") == Err(UnsupportedMediaType("text/plain".to_owned())));
        assert!(request_encoding(&HeaderMap::new()) == Err(UnsupportedMediaType(String::new())));
    }

    #[test]
    fn gunzip_is_capped() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 1 << 20]).unwrap();
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 10_000);
        assert_eq!(
            gunzip_capped(&bomb, 1000),
            Err(GunzipError::TooLarge { max: 1000 })
        );
        assert_eq!(gunzip_capped(&bomb, 1 << 20).unwrap().len(), 1 << 20);
        assert_eq!(gunzip_capped(b"not gzip", 1000), Err(GunzipError::Invalid));
    }
}
