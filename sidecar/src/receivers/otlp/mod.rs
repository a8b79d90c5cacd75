//! otlp receiver: OTLP/gRPC (`TraceService/Export`, [`grpc`]) and OTLP/HTTP
//! (`POST /v1/traces`, protobuf or JSON, optionally gzip, [`http`]).
//!
//! Size limits apply after decompression; a refusal for load is always retryable and carries
//! a hint (gRPC RetryInfo, HTTP Retry-After), mapped in [`status`].

mod config;
mod drain;
mod grpc;
mod http;
pub mod status;

// The body decoders `http_export` calls, for the fuzz targets (`fuzz/`).
#[doc(hidden)]
pub use http::{decode_http_body, gunzip_capped, DecodeBodyError, GunzipError};

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Consumer, ListenError, Listening, ReceiverCtx, ReceiverSpec, Started};
use crate::component::{BoxFuture, Factory, Refusal};
use crate::config::ComponentId;
use crate::metrics::{Metric, Metrics};
use crate::model::{span_count, TraceRequest};
use crate::receivers::auth::BearerAuth;

pub const FACTORY: Factory<dyn ReceiverSpec> = Factory {
    kind: "otlp",
    parse: config::parse,
};

/// Default limit on a request after decompression.
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;

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

/// What either transport needs to serve: its bound socket, its YAML path (for errors), the
/// shared intake, the token check and the stop signal.
struct Bound {
    tcp: TcpListener,
    at: String,
    intake: Arc<Intake>,
    auth: Option<Arc<BearerAuth>>,
    stop: CancellationToken,
}

impl ReceiverSpec for config::Spec {
    fn start(
        &self,
        id: &ComponentId,
        ctx: ReceiverCtx,
    ) -> BoxFuture<'static, Result<Started, ListenError>> {
        let protocols = [("grpc", self.grpc.clone()), ("http", self.http.clone())];
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
            for (kind, listener) in protocols {
                let Some(listener) = listener else { continue };
                let at = format!("receivers.{id}.protocols.{kind}");
                let (tcp, local) = ListenError::bind(&at, listener.addr).await?;
                let bound = Bound {
                    tcp,
                    at,
                    intake: intake.clone(),
                    auth: auth.clone(),
                    stop: ctx.shutdown.clone(),
                };
                let task = match kind {
                    "grpc" => grpc::serve(bound, &listener)?,
                    _ => http::serve(bound, &listener)?,
                };
                tasks.push(task);
                listening.push(Listening {
                    component: id.clone(),
                    kind,
                    addr: local,
                });
            }
            Ok(Started { listening, tasks })
        })
    }
}
