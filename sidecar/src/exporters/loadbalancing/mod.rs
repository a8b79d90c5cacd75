//! loadbalancing: routes each span by trace id (or `service.name`) over a consistent-hash ring
//! of backends, each an otlp exporter with its own sending queue and retry, so every span of a
//! trace reaches the same gateway.
//!
//! A backend that is down keeps its batches in its own queue, retried there: they are never
//! sent to another backend, which would split their traces. When the set changes (DNS), only
//! the ids on the arcs of the backend that came or went move; a removed backend's queue is
//! closed and drains what it already holds.

mod config;
mod resolver;
pub mod ring;

use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

use self::config::Members;
pub use self::config::{RoutingKey, Settings};
use self::ring::Ring;
use super::{
    start_queue, BoxFuture, BuildCtx, BuildError, Built, ExportError, ExportOk, Exporter,
    ExporterQueue, ExporterSpec, RetryConfig,
};
use crate::component::Factory;
use crate::config::{ComponentId, ComponentYaml, ConfigError};
use crate::metrics::{Metric, Metrics};
use crate::model::{self, Batch, ResourceSpans};

pub const FACTORY: Factory<dyn ExporterSpec> = Factory {
    kind: "loadbalancing",
    parse,
};

fn parse(y: &ComponentYaml<'_>) -> Result<Box<dyn ExporterSpec>, ConfigError> {
    Ok(Box::new(Spec(Arc::new(config::parse_settings(
        y.value, y.path,
    )?))))
}

/// Parses a `loadbalancing` config (for tests and tools that drive the router directly).
pub fn parse_settings(v: &serde_yaml::Value, path: &str) -> Result<Settings, ConfigError> {
    config::parse_settings(v, path)
}

struct Spec(Arc<Settings>);

impl ExporterSpec for Spec {
    fn build(&self, id: &ComponentId, ctx: &BuildCtx) -> Result<Built, BuildError> {
        let lb = LoadBalancer::new(id, self.0.clone(), ctx.metrics.clone());
        match &self.0.members {
            Members::Static(hosts) => lb.set_backends(hosts),
            Members::Dns(d) => {
                tokio::spawn(resolver::run(Arc::downgrade(&lb), d.clone()));
            }
        }
        Ok(Built {
            exporter: lb,
            queue: self.0.queue.clone(),
            // Routing fails only while no backend is known yet (DNS): retry that.
            retry: RetryConfig::default(),
        })
    }
}

/// The current backend set: the ring and each backend's queue, by ring index.
struct Membership {
    ring: Ring,
    queues: Vec<Arc<ExporterQueue>>,
}

pub struct LoadBalancer {
    id: String,
    cid: ComponentId,
    s: Arc<Settings>,
    metrics: Arc<Metrics>,
    members: RwLock<Arc<Membership>>,
    /// Every backend queue started (removed ones still drain) and its consumers, for shutdown;
    /// `None` once shut down, so a late DNS answer starts nothing.
    started: Mutex<Option<Vec<Started>>>,
    /// Backend queues retry until their own `max_elapsed_time`, or until the shutdown grace
    /// is over (cancelled when [`Exporter::shutdown`]'s future is dropped unfinished).
    hard_stop: CancellationToken,
}

type Started = (Arc<ExporterQueue>, Vec<tokio::task::JoinHandle<()>>);

impl LoadBalancer {
    pub fn new(cid: &ComponentId, s: Arc<Settings>, metrics: Arc<Metrics>) -> Arc<LoadBalancer> {
        Arc::new(LoadBalancer {
            id: cid.to_string(),
            cid: cid.clone(),
            s,
            metrics,
            members: RwLock::new(Arc::new(Membership {
                ring: Ring::default(),
                queues: Vec::new(),
            })),
            started: Mutex::new(Some(Vec::new())),
            hard_stop: CancellationToken::new(),
        })
    }

    /// The backends now in the ring, sorted.
    pub fn backends(&self) -> Vec<String> {
        self.members.read().ring.backends().to_vec()
    }

    /// Replaces the backend set: backends that stay keep their queue; new ones get an otlp
    /// exporter and queue; removed ones have their queue closed (it drains to that backend).
    pub fn set_backends(&self, endpoints: &[String]) {
        let mut started = self.started.lock();
        let Some(started) = started.as_mut() else {
            return;
        };
        let cur = self.members.read().clone();
        let mut wanted: Vec<String> = endpoints.to_vec();
        wanted.sort();
        wanted.dedup();
        if wanted == cur.ring.backends() {
            return;
        }
        let mut kept = Vec::new();
        let mut queues = Vec::new();
        for ep in &wanted {
            if let Some(i) = cur.ring.backends().iter().position(|b| b == ep) {
                kept.push(ep.clone());
                queues.push(cur.queues[i].clone());
                continue;
            }
            match self.start_backend(ep) {
                Ok((q, tasks)) => {
                    kept.push(ep.clone());
                    queues.push(q.clone());
                    started.push((q, tasks));
                }
                Err(e) => {
                    tracing::error!(exporter = %self.id, backend = %ep, error = %e, "loadbalancing: cannot build the backend's exporter; left out of the ring");
                }
            }
        }
        let ring = Ring::new(&kept, self.s.virtual_nodes);
        for (i, ep) in cur.ring.backends().iter().enumerate() {
            if !kept.contains(ep) {
                cur.queues[i].close();
            }
        }
        tracing::info!(exporter = %self.id, backends = ?kept, "loadbalancing: backend set changed");
        self.metrics.gauge(
            Metric::LoadBalancingBackends,
            &[("exporter", &self.id)],
            kept.len() as i64,
        );
        *self.members.write() = Arc::new(Membership { ring, queues });
    }

    fn start_backend(&self, endpoint: &str) -> Result<Started, BuildError> {
        let spec = self
            .s
            .backend(endpoint)
            .map_err(|e| BuildError::refused(format!("backend {endpoint}"), e))?;
        let built = spec.build(
            &self.cid,
            &BuildCtx {
                metrics: self.metrics.clone(),
            },
        )?;
        Ok(start_queue(
            format!("{}/{endpoint}", self.id),
            built,
            self.metrics.clone(),
            self.hard_stop.clone(),
        ))
    }

    /// Splits a batch by backend; each part keeps the batch's memory accounting.
    fn route(&self, batch: &Batch) -> Result<(), ExportError> {
        let m = self.members.read().clone();
        if m.queues.is_empty() {
            return Err(ExportError::retryable(
                "no_backends",
                "no backend resolved yet",
                None,
            ));
        }
        let parts = match self.s.routing_key {
            RoutingKey::TraceId => model::group_by(batch.resource_spans.clone(), |_, span| {
                m.ring.pick(span.trace_id()).unwrap_or(0)
            }),
            RoutingKey::Service => model::group_by(batch.resource_spans.clone(), |rs, _| {
                m.ring.pick(service_name(rs).as_bytes()).unwrap_or(0)
            }),
        };
        let mut per_backend: Vec<Vec<ResourceSpans>> = vec![Vec::new(); m.queues.len()];
        for (ix, rs) in parts {
            per_backend[ix].push(rs);
        }
        for (ix, rs) in per_backend.into_iter().enumerate() {
            if rs.is_empty() {
                continue;
            }
            let part = Batch::new(rs, batch.memory.clone());
            self.metrics.count(
                Metric::LoadBalancingRoutedSpans,
                &[("exporter", &self.id), ("backend", &m.ring.backends()[ix])],
                part.span_count as u64,
            );
            m.queues[ix].offer(Arc::new(part));
        }
        Ok(())
    }
}

/// The resource's `service.name` ("" when absent: those spans share one backend).
fn service_name(rs: &ResourceSpans) -> &str {
    rs.resource
        .as_ref()
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => {
                Some(s.as_str())
            }
            _ => None,
        })
        .unwrap_or("")
}

impl Exporter for LoadBalancer {
    fn export(&self, batch: Arc<Batch>) -> BoxFuture<'static, Result<ExportOk, ExportError>> {
        let r = self.route(&batch).map(|()| ExportOk::default());
        Box::pin(std::future::ready(r))
    }

    /// Closes every backend queue and waits until each has delivered (or given up on) what
    /// it holds: spans already routed to a slow or down gateway are not lost at shutdown.
    fn shutdown(&self) -> BoxFuture<'static, ()> {
        let started = self.started.lock().take().unwrap_or_default();
        let mut tasks = Vec::new();
        let mut queues = Vec::new();
        for (q, t) in started {
            q.close();
            queues.push(q);
            tasks.extend(t);
        }
        let give_up = GiveUp {
            id: self.id.clone(),
            queues,
            hard_stop: self.hard_stop.clone(),
            drained: false,
        };
        Box::pin(async move {
            futures::future::join_all(tasks).await;
            give_up.disarm();
        })
    }
}

/// Dropped before the backend queues drained (the grace period is over): stop their retries,
/// so each counts its batch lost (`reason="shutdown"`), and say what was left.
struct GiveUp {
    id: String,
    queues: Vec<Arc<ExporterQueue>>,
    hard_stop: CancellationToken,
    drained: bool,
}

impl GiveUp {
    fn disarm(mut self) {
        self.drained = true;
    }
}

impl Drop for GiveUp {
    fn drop(&mut self) {
        if self.drained {
            return;
        }
        let left: Vec<(String, usize)> = self
            .queues
            .iter()
            .map(|q| (q.id.clone(), q.depth()))
            .filter(|(_, d)| *d > 0)
            .collect();
        tracing::warn!(exporter = %self.id, queued_batches = ?left, "loadbalancing: shutdown grace over before every backend drained; the rest is dropped and counted");
        self.hard_stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_dns_resolver_fills_the_ring_and_routing_waits_for_it() {
        let yaml = "protocol: { otlp: { tls: { insecure: true } } }\n\
                    resolver: { dns: { hostname: localhost, port: 14317, interval: 50ms } }\n";
        let settings = crate::config::parse_yaml(yaml, "exporters.loadbalancing", parse_settings);
        let spec = Spec(Arc::new(settings.expect("ok")));
        let metrics = Metrics::new();
        let id = ComponentId::parse("loadbalancing").expect("id");
        let built = spec
            .build(
                &id,
                &BuildCtx {
                    metrics: metrics.clone(),
                },
            )
            .expect("built");
        // Before the first answer there is nowhere to send: a retryable refusal.
        let batch = Arc::new(Batch::new(
            vec![crate::model::test_resource_spans(&[1])],
            Arc::new(Vec::new()),
        ));
        let lb = built.exporter;
        let mut waited = Duration::ZERO;
        loop {
            match lb.export(batch.clone()).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(e.retryable && e.reason == "no_backends", "{e:?}");
                    assert!(waited < Duration::from_secs(10), "localhost never resolved");
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += Duration::from_millis(20);
        }
        let routed = metrics.render();
        assert!(
            routed.contains("backend=\"127.0.0.1:14317\"")
                || routed.contains("backend=\"[::1]:14317\""),
            "{routed}"
        );
    }

    #[test]
    fn service_routing_keeps_a_service_on_one_backend() {
        use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
        use opentelemetry_proto::tonic::resource::v1::Resource;
        let ring = Ring::new(&["a:1".into(), "b:1".into(), "c:1".into()], 50);
        let mut rs = crate::model::test_resource_spans(&[3]);
        rs.resource = Some(Resource {
            attributes: vec![KeyValue {
                key: "service.name".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("planner".into())),
                }),
                ..KeyValue::default()
            }],
            ..Resource::default()
        });
        assert_eq!(service_name(&rs), "planner");
        let parts = model::group_by(vec![rs], |r, _| ring.pick(service_name(r).as_bytes()));
        assert_eq!(parts.len(), 1, "one service, one backend");
    }
}
