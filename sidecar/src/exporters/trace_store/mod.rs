//! trace_store: keeps recent traces in a bounded in-memory store and serves them over a Jaeger
//! api_v3-shaped HTTP API (`api`), so a timeline sees every span that passed the sidecar.
//!
//! ```yaml
//! exporters:
//!   trace_store:
//!     endpoint: 127.0.0.1:16687   # the query API (port 0: any free port)
//!     max_bytes: 67108864         # bound of what the store holds (span bytes + index)
//!     max_traces: 10000
//!     ttl: 1h                     # a trace received nothing for this long: dropped
//! ```
//!
//! The listener starts when the exporter is built and is reported on stdout as
//! `listening <id> http <addr>`, like receivers and extensions report theirs.

pub mod api;
pub mod json;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    BoxFuture, BuildCtx, BuildError, Built, ExportError, ExportOk, Exporter, ExporterSpec,
    QueueConfig, RetryConfig,
};
use crate::component::Factory;
use crate::config::{
    byte_bound, parse_as, parse_endpoint, require_positive, ComponentId, ComponentYaml, ConfigError,
};
use crate::metrics::{Metric, Metrics};
use crate::model::Batch;
use store::{Limits, Outcome, Reason, Store};

pub const FACTORY: Factory<dyn ExporterSpec> = Factory {
    kind: "trace_store",
    parse,
};

/// The smallest `max_bytes`: a few traces of a few hundred spans.
pub const MIN_MAX_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceStoreConfig {
    /// `host:port` of the query API; loopback unless you mean to expose the spans.
    pub endpoint: String,
    pub max_bytes: u64,
    pub max_traces: usize,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for TraceStoreConfig {
    fn default() -> Self {
        TraceStoreConfig {
            // Next to Jaeger's own query port (16686), so both can run on one machine.
            endpoint: "127.0.0.1:16687".into(),
            max_bytes: 64 * 1024 * 1024,
            max_traces: 10_000,
            ttl: Duration::from_secs(3600),
        }
    }
}

struct Spec {
    addr: SocketAddr,
    limits: Limits,
}

fn parse(y: &ComponentYaml<'_>) -> Result<Box<dyn ExporterSpec>, ConfigError> {
    let (v, path) = (y.value, y.path);
    let c: TraceStoreConfig = parse_as(v, path)?;
    let addr = parse_endpoint(&c.endpoint)
        .map_err(|m| ConfigError::at(format!("{path}.endpoint"), m.to_string()))?;
    let max_bytes = byte_bound(path, "max_bytes", c.max_bytes, MIN_MAX_BYTES)?;
    require_positive(path, "max_traces", c.max_traces)?;
    require_positive(path, "ttl", c.ttl)?;
    Ok(Box::new(Spec {
        addr,
        limits: Limits {
            max_bytes,
            max_traces: c.max_traces,
            ttl: c.ttl,
        },
    }))
}

/// The store with its metrics: what the exporter and the ttl sweep share.
struct Shared {
    store: api::Shared,
    metrics: Arc<Metrics>,
    id: String,
}

impl Shared {
    /// Counts what an insert or sweep did and publishes the store's size.
    fn record(&self, out: Outcome, traces: usize, bytes: usize) {
        let id = self.id.as_str();
        for r in Reason::ALL {
            self.metrics.count(
                Metric::TraceStoreEvictedTraces,
                &[("exporter", id), ("reason", r.label())],
                out.evicted[r as usize],
            );
        }
        self.metrics.count(
            Metric::TraceStoreRefusedSpans,
            &[("exporter", id), ("reason", "trace_too_large")],
            out.too_large_spans,
        );
        self.metrics.count(
            Metric::TraceStoreRefusedSpans,
            &[("exporter", id), ("reason", "bad_trace_id")],
            out.bad_id_spans,
        );
        self.metrics
            .gauge(Metric::TraceStoreTraces, &[("exporter", id)], traces as i64);
        self.metrics
            .gauge(Metric::TraceStoreBytes, &[("exporter", id)], bytes as i64);
    }

    fn sweep(&self) {
        let (out, n, b) = {
            let mut s = self.store.lock();
            let out = s.expire(Instant::now());
            (out, s.len(), s.bytes())
        };
        self.record(out, n, b);
    }
}

impl ExporterSpec for Spec {
    fn build(&self, id: &ComponentId, ctx: &BuildCtx) -> Result<Built, BuildError> {
        // Bound synchronously so a taken port fails the start, naming the exporter.
        let listen = || format!("listen on {}", self.addr);
        let std_listener =
            std::net::TcpListener::bind(self.addr).map_err(|e| BuildError::refused(listen(), e))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| BuildError::refused(listen(), e))?;
        let local = std_listener
            .local_addr()
            .map_err(|e| BuildError::refused(listen(), e))?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(BuildError::refused(
                "query API",
                "needs a tokio runtime to serve it",
            ));
        }
        let listener = tokio::net::TcpListener::from_std(std_listener)
            .map_err(|e| BuildError::refused(listen(), e))?;

        let shared = Arc::new(Shared {
            store: Arc::new(Mutex::new(Store::new(self.limits))),
            metrics: ctx.metrics.clone(),
            id: id.to_string(),
        });
        shared.record(Outcome::default(), 0, 0);
        let stop = CancellationToken::new();
        let app = api::router(shared.store.clone());
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(s.cancelled_owned())
                .await;
        });
        // Idle traces must leave even when nothing new arrives.
        let period = (self.limits.ttl / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let (sh, s) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = tick.tick() => sh.sweep(),
                    _ = s.cancelled() => return,
                }
            }
        });
        // `Built` has no listener list (receivers' and extensions' `Started` do): report the
        // address here, in the same line format, for tests and `loom run` (port 0 works).
        println!("listening {id} http {local}");
        tracing::info!(exporter = %id, addr = %local, "trace_store query API listening");
        Ok(Built {
            exporter: Arc::new(TraceStoreExporter {
                shared,
                _stop: stop.drop_guard(),
            }),
            // Storing cannot fail transiently; one consumer keeps arrival order.
            queue: QueueConfig {
                num_consumers: 1,
                ..QueueConfig::default()
            },
            retry: RetryConfig {
                enabled: false,
                ..RetryConfig::default()
            },
        })
    }
}

struct TraceStoreExporter {
    shared: Arc<Shared>,
    /// The API and the sweep stop when the exporter goes (after its queue drained).
    _stop: DropGuard,
}

impl Exporter for TraceStoreExporter {
    fn export(&self, batch: Arc<Batch>) -> BoxFuture<'static, Result<ExportOk, ExportError>> {
        // Cutting and copying happen before the lock; the lock covers only the map updates.
        let prepared = store::prepare(&batch.resource_spans);
        drop(batch);
        let (out, n, b) = {
            let mut s = self.shared.store.lock();
            let out = s.insert(prepared, Instant::now());
            (out, s.len(), s.bytes())
        };
        // Refused spans are counted in this exporter's own metric, not as a backend's partial
        // success, which would log a warning per batch.
        self.shared.record(out, n, b);
        Box::pin(async { Ok(ExportOk::default()) })
    }
}
