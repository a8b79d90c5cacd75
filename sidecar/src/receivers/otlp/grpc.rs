//! OTLP/gRPC: `TraceService/Export`, decoded in place into [`TraceRequest`], with bearer-token
//! checks before decoding.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Status};

use super::config::Listener;
use super::status::{fix_codec_status, grpc_refusal};
use super::{Bound, Intake};
use crate::component::{BoxFuture, ListenError};
use crate::model::otlp::{EXPORT_PATH, TRACE_SERVICE};
use crate::model::TraceRequest;
use crate::receivers::auth::UNAUTHENTICATED;

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

/// Serves OTLP/gRPC on a bound listener until `stop`.
pub(super) fn serve(
    b: Bound,
    listener: &Listener,
) -> Result<tokio::task::JoinHandle<()>, ListenError> {
    let svc = TraceServer {
        intake: b.intake.clone(),
        max: listener.max,
    };
    // Runs on the request's metadata before the message is decoded.
    let (intake, auth) = (b.intake, b.auth);
    let svc = tonic::service::interceptor::InterceptedService::new(
        svc,
        move |req: Request<()>| -> Result<Request<()>, Status> {
            match &auth {
                None => Ok(req),
                Some(a) => {
                    let header = req.metadata().get("authorization").map(|v| v.as_bytes());
                    if a.check(header) {
                        Ok(req)
                    } else {
                        intake.refused_bad("grpc", "unauthenticated");
                        Err(Status::unauthenticated(UNAUTHENTICATED))
                    }
                }
            }
        },
    );
    let mut server = tonic::transport::Server::builder();
    if let Some(t) = &listener.tls {
        server = server.tls_config(t.tonic()).map_err(|e| ListenError::Tls {
            at: b.at.clone(),
            message: e.to_string(),
        })?;
    }
    let (name, stop) = (b.at, b.stop);
    Ok(tokio::spawn(async move {
        let r = server
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .layer(tower::util::MapResponseLayer::new(fix_codec_status))
            .add_service(svc)
            // Answers are small frames: with Nagle on, one can wait for the client's delayed
            // ACK (~40 ms on Linux) before it leaves.
            .serve_with_incoming_shutdown(
                TcpIncoming::from(b.tcp).with_nodelay(Some(true)),
                stop.cancelled_owned(),
            )
            .await;
        if let Err(e) = r {
            tracing::error!(receiver = %name, "gRPC server failed: {e}");
        }
    }))
}
