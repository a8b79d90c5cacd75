//! otlp receiver: OTLP/gRPC (`TraceService/Export`) and OTLP/HTTP (`POST /v1/traces`,
//! protobuf or JSON, optionally gzip).
//!
//! Size limits apply after decompression; a refusal for load is always retryable and carries
//! a hint (gRPC RetryInfo, HTTP Retry-After).

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;
use serde::Deserialize;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::auth::{AuthConfig, BearerAuth, UNAUTHENTICATED};
use super::tls::{ServerTls, ServerTlsConfig};
use super::{Consumer, ListenError, Listening, ReceiverCtx, ReceiverSpec, Started};
use crate::component::{BoxFuture, Factory, Refusal};
use crate::config::{parse_as, parse_endpoint, ComponentId, ConfigError, ParseCtx};
use crate::metrics::{Metric, Metrics};
use crate::model::otlp::{EXPORT_PATH, TRACE_SERVICE};
use crate::model::{span_count, TraceRequest};

pub const FACTORY: Factory<dyn ReceiverSpec> = Factory {
    kind: "otlp",
    parse,
};

/// Default limit on a request after decompression (design.md §8).
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrpcConfig {
    #[serde(default = "default_grpc")]
    endpoint: String,
    #[serde(default = "default_max_mib")]
    max_recv_msg_size_mib: usize,
    /// TLS (and mTLS with `client_ca_file`); plaintext without it.
    #[serde(default)]
    tls: Option<ServerTlsConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpConfig {
    #[serde(default = "default_http")]
    endpoint: String,
    /// Bytes, after decompression.
    #[serde(default = "default_max_bytes")]
    max_request_body_size: usize,
    /// TLS (and mTLS with `client_ca_file`); plaintext without it.
    #[serde(default)]
    tls: Option<ServerTlsConfig>,
}

fn default_grpc() -> String {
    "127.0.0.1:4317".into()
}
fn default_http() -> String {
    "127.0.0.1:4318".into()
}
fn default_max_mib() -> usize {
    DEFAULT_MAX_BYTES >> 20
}
fn default_max_bytes() -> usize {
    DEFAULT_MAX_BYTES
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Protocols {
    #[serde(default, deserialize_with = "present")]
    grpc: Option<Option<GrpcConfig>>,
    #[serde(default, deserialize_with = "present")]
    http: Option<Option<HttpConfig>>,
}

/// `grpc:` with no body means "on, with defaults", as in the Collector.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct OtlpConfig {
    protocols: Protocols,
    /// Bearer-token authentication on both protocols.
    #[serde(default)]
    auth: Option<AuthConfig>,
}

/// One protocol's listener: address, size limit after decompression, TLS.
type Listener = (SocketAddr, usize, Option<ServerTls>);

struct Spec {
    grpc: Option<Listener>,
    http: Option<Listener>,
    auth: Option<Arc<BearerAuth>>,
}

fn default_grpc_config() -> GrpcConfig {
    GrpcConfig {
        endpoint: default_grpc(),
        max_recv_msg_size_mib: default_max_mib(),
        tls: None,
    }
}

fn default_http_config() -> HttpConfig {
    HttpConfig {
        endpoint: default_http(),
        max_request_body_size: default_max_bytes(),
        tls: None,
    }
}

fn parse(
    _id: &ComponentId,
    v: &serde_yaml::Value,
    path: &str,
    ctx: &ParseCtx<'_>,
) -> Result<Box<dyn ReceiverSpec>, ConfigError> {
    let c: OtlpConfig = parse_as(v, path)?;
    let auth = match &c.auth {
        Some(a) => Some(Arc::new(a.resolve(path, ctx)?)),
        None => None,
    };
    let grpc = match c.protocols.grpc {
        None => None,
        Some(g) => {
            let g = g.unwrap_or_else(default_grpc_config);
            let addr = parse_endpoint(&g.endpoint).map_err(|m| {
                ConfigError::at(format!("{path}.protocols.grpc.endpoint"), m.to_string())
            })?;
            if g.max_recv_msg_size_mib == 0 {
                return Err(ConfigError::at(
                    format!("{path}.protocols.grpc.max_recv_msg_size_mib"),
                    "must be greater than 0",
                ));
            }
            let tls = match &g.tls {
                Some(t) => Some(t.load(&format!("{path}.protocols.grpc.tls"))?),
                None => None,
            };
            Some((addr, g.max_recv_msg_size_mib * 1024 * 1024, tls))
        }
    };
    let http = match c.protocols.http {
        None => None,
        Some(h) => {
            let h = h.unwrap_or_else(default_http_config);
            let addr = parse_endpoint(&h.endpoint).map_err(|m| {
                ConfigError::at(format!("{path}.protocols.http.endpoint"), m.to_string())
            })?;
            if h.max_request_body_size == 0 {
                return Err(ConfigError::at(
                    format!("{path}.protocols.http.max_request_body_size"),
                    "must be greater than 0",
                ));
            }
            let tls = match &h.tls {
                Some(t) => Some(t.load(&format!("{path}.protocols.http.tls"))?),
                None => None,
            };
            Some((addr, h.max_request_body_size, tls))
        }
    };
    if grpc.is_none() && http.is_none() {
        return Err(ConfigError::at(
            format!("{path}.protocols"),
            "enable grpc, http or both",
        ));
    }
    Ok(Box::new(Spec { grpc, http, auth }))
}

/// Shared by both transports: counts, consumes, and maps refusals.
struct Intake {
    id: String,
    consumer: Arc<dyn Consumer>,
    metrics: Arc<Metrics>,
}

impl Intake {
    async fn take(
        &self,
        req: TraceRequest,
        encoded_len: usize,
        transport: &'static str,
    ) -> Result<(), Refusal> {
        let n = span_count(&req.resource_spans) as u64;
        match self.consumer.consume(req.resource_spans, encoded_len).await {
            Ok(_) => {
                self.metrics.count(
                    Metric::ReceiverAcceptedSpans,
                    &[("receiver", &self.id), ("transport", transport)],
                    n,
                );
                Ok(())
            }
            Err(r) => {
                self.metrics.count(
                    Metric::ReceiverRefusedSpans,
                    &[
                        ("receiver", &self.id),
                        ("transport", transport),
                        ("reason", r.reason()),
                    ],
                    n,
                );
                Err(r)
            }
        }
    }

    fn refused_bad(&self, transport: &'static str, reason: &'static str) {
        // The span count of an undecodable request is unknown: count the request.
        self.metrics.count(
            Metric::ReceiverRefusedSpans,
            &[
                ("receiver", &self.id),
                ("transport", transport),
                ("reason", reason),
            ],
            1,
        );
    }
}

/// tonic's codec answers an oversized message with OUT_OF_RANGE and an undecodable one with
/// INTERNAL. OTLP clients read those as "retry" and "server bug"; design.md §8 wants
/// RESOURCE_EXHAUSTED for size, and a malformed payload is the client's INVALID_ARGUMENT.
fn fix_codec_status<B>(mut resp: http::Response<B>) -> http::Response<B> {
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

/// Load refusals as gRPC: RESOURCE_EXHAUSTED (memory, full persistent queue) or UNAVAILABLE,
/// always with RetryInfo.
fn grpc_refusal(r: &Refusal) -> Status {
    Status::with_error_details(
        refusal_code(r),
        r.message(),
        ErrorDetails::with_retry_info(Some(r.retry_after())),
    )
}

/// The gRPC code of a load refusal (also sent as `grpc-status`-style code in OTLP/HTTP bodies).
fn refusal_code(r: &Refusal) -> Code {
    match r {
        Refusal::MemoryLimit { .. } | Refusal::StorageFull { .. } => Code::ResourceExhausted,
        Refusal::QueueFull { .. } | Refusal::StorageError | Refusal::ShuttingDown => {
            Code::Unavailable
        }
    }
}

/// `TraceService` as tonic would generate it, but decoding into [`TraceRequest`], whose spans
/// stay slices of the received message (see `model::otlp`).
#[derive(Clone)]
struct TraceServer {
    intake: Arc<Intake>,
    max: usize,
}

impl tonic::server::NamedService for TraceServer {
    const NAME: &'static str = TRACE_SERVICE;
}

struct Export(Arc<Intake>);

impl tonic::server::UnaryService<TraceRequest> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<'static, Result<tonic::Response<ExportTraceServiceResponse>, Status>>;

    fn call(&mut self, request: Request<TraceRequest>) -> Self::Future {
        let intake = self.0.clone();
        Box::pin(async move {
            let req = request.into_inner();
            let len = req.encoded_len();
            match intake.take(req, len, "grpc").await {
                Ok(()) => Ok(tonic::Response::new(ExportTraceServiceResponse {
                    partial_success: None,
                })),
                Err(r) => Err(grpc_refusal(&r)),
            }
        })
    }
}

impl<B> tower::Service<http::Request<B>> for TraceServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (intake, max) = (self.intake.clone(), self.max);
        Box::pin(async move {
            if req.uri().path() != EXPORT_PATH {
                return Ok(Status::unimplemented(format!(
                    "unknown method {}; this server implements {EXPORT_PATH}",
                    req.uri().path()
                ))
                .into_http());
            }
            let codec =
                tonic_prost::ProstCodec::<ExportTraceServiceResponse, TraceRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(max);
            Ok(grpc.unary(Export(intake), req).await)
        })
    }
}

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
enum GunzipError {
    #[error("request body exceeds {max} bytes after decompression")]
    TooLarge { max: usize },
    #[error("invalid gzip body")]
    Invalid,
}

/// Decompresses with a cap: reads at most `max + 1` bytes, so a gzip bomb costs `max` bytes
/// of memory before it is refused.
fn gunzip_capped(body: &[u8], max: usize) -> Result<Vec<u8>, GunzipError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(max));
    let mut dec = flate2::read::GzDecoder::new(body).take(max as u64 + 1);
    dec.read_to_end(&mut out)
        .map_err(|_| GunzipError::Invalid)?;
    if out.len() > max {
        return Err(GunzipError::TooLarge { max });
    }
    Ok(out)
}

async fn http_export(State(st): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
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
    let enc = match ctype.as_str() {
        "application/x-protobuf" | "application/protobuf" => Encoding::Proto,
        "application/json" => Encoding::Json,
        _ => {
            st.intake.refused_bad("http", "unsupported_media_type");
            return http_error(
                Encoding::Json,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Code::InvalidArgument,
                &format!("unsupported content type {ctype:?}; use application/x-protobuf or application/json"),
            );
        }
    };
    let content_encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    // Bytes all the way: decoded spans are slices of this buffer.
    let raw: Bytes = match content_encoding.as_str() {
        "" | "identity" => body,
        "gzip" | "x-gzip" => match gunzip_capped(&body, st.max) {
            Ok(b) => Bytes::from(b),
            Err(e @ GunzipError::TooLarge { .. }) => {
                st.intake.refused_bad("http", "too_large");
                return http_error(
                    enc,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Code::ResourceExhausted,
                    &e.to_string(),
                );
            }
            Err(e @ GunzipError::Invalid) => {
                st.intake.refused_bad("http", "bad_request");
                return http_error(
                    enc,
                    StatusCode::BAD_REQUEST,
                    Code::InvalidArgument,
                    &e.to_string(),
                );
            }
        },
        other => {
            st.intake.refused_bad("http", "unsupported_encoding");
            return http_error(
                enc,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Code::InvalidArgument,
                &format!("unsupported Content-Encoding {other:?}; use gzip or none"),
            );
        }
    };
    if raw.len() > st.max {
        st.intake.refused_bad("http", "too_large");
        return http_error(
            enc,
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::ResourceExhausted,
            &format!("request body exceeds {} bytes", st.max),
        );
    }
    let decoded = match enc {
        Encoding::Proto => TraceRequest::decode(raw.clone())
            .map_err(|e| format!("invalid protobuf ExportTraceServiceRequest: {e}")),
        Encoding::Json => serde_json::from_slice::<ExportTraceServiceRequest>(&raw)
            .map_err(|e| format!("invalid OTLP/JSON ExportTraceServiceRequest: {e}"))
            .and_then(|req| {
                TraceRequest::from_proto(&req)
                    .map_err(|e| format!("invalid OTLP/JSON ExportTraceServiceRequest: {e}"))
            }),
    };
    let req = match decoded {
        Ok(r) => r,
        Err(m) => {
            st.intake.refused_bad("http", "bad_request");
            return http_error(enc, StatusCode::BAD_REQUEST, Code::InvalidArgument, &m);
        }
    };
    match st.intake.take(req, raw.len(), "http").await {
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
            let status = match r {
                Refusal::QueueFull { .. } | Refusal::StorageFull { .. } => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                Refusal::MemoryLimit { .. } | Refusal::StorageError | Refusal::ShuttingDown => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            };
            let mut resp = http_error(enc, status, refusal_code(&r), &r.message());
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
    let enc = match req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        Some(c) if c.starts_with("application/x-protobuf") => Encoding::Proto,
        _ => Encoding::Json,
    };
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

impl ReceiverSpec for Spec {
    fn start(
        &self,
        id: &ComponentId,
        ctx: ReceiverCtx,
    ) -> BoxFuture<'static, Result<Started, ListenError>> {
        let grpc = self.grpc.clone();
        let http = self.http.clone();
        let auth = self.auth.clone();
        let id = id.to_string();
        Box::pin(async move {
            let intake = Arc::new(Intake {
                id: id.clone(),
                consumer: ctx.consumer.clone(),
                metrics: ctx.metrics.clone(),
            });
            let mut listening = Vec::new();
            let mut tasks = Vec::new();
            if let Some((addr, max, tls)) = grpc {
                let at = format!("receivers.{id}.protocols.grpc");
                let (listener, local) = ListenError::bind(&at, addr).await?;
                let svc = TraceServer {
                    intake: intake.clone(),
                    max,
                };
                // Runs on the request's metadata before the message is decoded.
                let (grpc_auth, counted) = (auth.clone(), intake.clone());
                let svc = tonic::service::interceptor::InterceptedService::new(
                    svc,
                    move |req: Request<()>| -> Result<Request<()>, Status> {
                        match &grpc_auth {
                            None => Ok(req),
                            Some(a) => {
                                let header =
                                    req.metadata().get("authorization").map(|v| v.as_bytes());
                                if a.check(header) {
                                    Ok(req)
                                } else {
                                    counted.refused_bad("grpc", "unauthenticated");
                                    Err(Status::unauthenticated(UNAUTHENTICATED))
                                }
                            }
                        }
                    },
                );
                let stop = ctx.shutdown.clone();
                let name = id.clone();
                let mut server = tonic::transport::Server::builder();
                if let Some(t) = &tls {
                    server = server.tls_config(t.tonic()).map_err(|e| ListenError::Tls {
                        at: at.clone(),
                        message: e.to_string(),
                    })?;
                }
                tasks.push(tokio::spawn(async move {
                    let r = server
                        .http2_keepalive_interval(Some(Duration::from_secs(30)))
                        .layer(tower::util::MapResponseLayer::new(fix_codec_status))
                        .add_service(svc)
                        // Answers are small frames: with Nagle on, one can wait for the
                        // client's delayed ACK (~40 ms on Linux) before it leaves.
                        .serve_with_incoming_shutdown(
                            TcpIncoming::from(listener).with_nodelay(Some(true)),
                            stop.cancelled_owned(),
                        )
                        .await;
                    if let Err(e) = r {
                        tracing::error!(receiver = %name, "gRPC server failed: {e}");
                    }
                }));
                listening.push(Listening {
                    component: id.clone(),
                    kind: "grpc",
                    addr: local,
                });
            }
            if let Some((addr, max, tls)) = http {
                let at = format!("receivers.{id}.protocols.http");
                let (listener, local) = ListenError::bind(&at, addr).await?;
                let state = HttpState {
                    intake: intake.clone(),
                    max,
                };
                // The compressed body may not exceed the limit either.
                let mut app = Router::new()
                    .route("/v1/traces", post(http_export).fallback(method_not_allowed));
                if let Some(a) = &auth {
                    app = app.layer(axum::middleware::from_fn_with_state(
                        HttpAuth {
                            auth: a.clone(),
                            intake: intake.clone(),
                        },
                        http_auth,
                    ));
                }
                let app = app.layer(DefaultBodyLimit::max(max)).with_state(state);
                let stop = ctx.shutdown.clone();
                let name = id.clone();
                let serve = match &tls {
                    Some(t) => {
                        let l = t.listener(listener).map_err(|e| ListenError::Tls {
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
                        let listener = listener.tap_io(|tcp| {
                            if let Err(e) = tcp.set_nodelay(true) {
                                tracing::debug!("cannot set TCP_NODELAY: {e}");
                            }
                        });
                        axum::serve(listener, app)
                            .with_graceful_shutdown(stop.cancelled_owned())
                            .await
                    }),
                };
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = serve.await {
                        tracing::error!(receiver = %name, "HTTP server failed: {e}");
                    }
                }));
                listening.push(Listening {
                    component: id.clone(),
                    kind: "http",
                    addr: local,
                });
            }
            Ok(Started { listening, tasks })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

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
