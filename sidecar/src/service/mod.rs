//! Service lifecycle: build exporters → pipelines → receivers → extensions; report listeners;
//! on shutdown drain in the reverse direction within the grace period; reload in place
//! (`reload`), on SIGHUP or a file change (`watch`).

mod reload;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use serde_yaml::Value;
use tokio_util::sync::CancellationToken;

pub use crate::component::install_crypto_provider;
use crate::component::{
    BoxFuture, BuildError, Built, Config, Consumer, ExporterCtx, ExtensionCtx, Health, ListenError,
    Listening, ProcessorCtx, ReceiverCtx, Refusal, Stage,
};
use crate::config::{parse_endpoint, ComponentId, EndpointError, PipelineConfig, ServiceConfig};
use crate::exporters::persistent_queue::{self, PersistentQueue};
use crate::exporters::{self, ExporterQueue};
use crate::memory::MemoryTracker;
use crate::metrics::Metrics;
use crate::model::ResourceSpans;
use crate::pipeline::{Fanin, Fanout, Pipeline};
pub use reload::{ReloadError, Reloaded};
pub use watch::{serve, Hangup};

/// Why the sidecar could not start; each variant names the component (by YAML path).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An id the checked config does not define (a config built without validation).
    #[error("{section}.{id}: not defined")]
    Undefined { section: &'static str, id: String },
    /// A receiver's or extension's listener (its error names the component).
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("exporters.{id}: {source}")]
    Exporter {
        id: ComponentId,
        #[source]
        source: BuildError,
    },
    #[error("exporters.{id}.sending_queue.storage: {source}")]
    Storage {
        id: ComponentId,
        #[source]
        source: persistent_queue::OpenError,
    },
    #[error("service.telemetry.metrics.address: {0}")]
    MetricsAddress(#[from] EndpointError),
}

fn undefined(section: &'static str, id: impl ToString) -> StartError {
    StartError::Undefined {
        section,
        id: id.to_string(),
    }
}

/// A running sidecar.
pub struct Running {
    /// Every listener, receivers' as of the last reload.
    pub listening: Vec<Listening>,
    /// Extensions' and the metrics listener: a reload keeps them.
    side_listening: Vec<Listening>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    grace: Duration,
    /// The expanded document of the running config: what a reload diffs against.
    document: Value,
    service: ServiceConfig,
    memory: Arc<MemoryTracker>,
    switch: Arc<Switch>,
    receivers_stop: CancellationToken,
    receivers: BTreeMap<ComponentId, ReceiverRun>,
    pipelines: BTreeMap<String, PipelineRun>,
    exporters: BTreeMap<ComponentId, ExporterRun>,
    hard_stop: CancellationToken,
    side_stop: CancellationToken,
    side_tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Where every receiver's requests go: its pipelines' fan-in, by receiver id. A request holds
/// the read side while it is in the pipelines; a reload swaps the map under the write side, so
/// it waits for requests in flight and new ones wait (not refused) for the swap.
pub(crate) struct Switch {
    routes: tokio::sync::RwLock<BTreeMap<ComponentId, Fanin>>,
}

/// A receiver's consumer: its entry of the [`Switch`].
struct Route {
    switch: Arc<Switch>,
    id: ComponentId,
}

impl Consumer for Route {
    fn consume(
        &self,
        spans: Vec<ResourceSpans>,
        encoded_len: usize,
    ) -> BoxFuture<'_, Result<usize, Refusal>> {
        Box::pin(async move {
            let routes = self.switch.routes.read().await;
            match routes.get(&self.id) {
                Some(fanin) => fanin.consume(spans, encoded_len).await,
                // Its listener is being stopped by a reload that removed it.
                None => Err(Refusal::ShuttingDown),
            }
        })
    }
}

/// One running receiver: its settings and its listeners.
pub(crate) struct ReceiverRun {
    yaml: Value,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    listening: Vec<Listening>,
}

/// One running pipeline and what it was built from.
pub(crate) struct PipelineRun {
    /// Its `service.pipelines` entry with the settings of its processors and exporters: equal
    /// signatures build the same pipeline.
    signature: Value,
    pipeline: Arc<Pipeline>,
    batcher: Option<tokio::task::JoinHandle<()>>,
}

/// One running exporter: its settings, its queue and the queue's consumers.
pub(crate) struct ExporterRun {
    id: ComponentId,
    yaml: Value,
    queue: QueueRun,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// For its own shutdown once its queue is drained (what it queues further).
    exporter: Arc<dyn crate::component::Exporter>,
    /// Aborts this exporter's retries (a child of the sidecar's hard stop).
    hard_stop: CancellationToken,
}

pub(crate) enum QueueRun {
    Memory(Arc<ExporterQueue>),
    Disk(Arc<PersistentQueue>),
}

/// A component's settings in the expanded document (null when absent).
fn settings(document: &Value, section: &str, id: &ComponentId) -> Value {
    document
        .get(section)
        .and_then(|s| s.get(id.to_string()))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The exporter ids the pipelines use.
fn used_exporters(service: &ServiceConfig) -> BTreeSet<ComponentId> {
    service
        .pipelines
        .values()
        .flat_map(|p| p.exporters.iter().filter_map(|e| ComponentId::parse(e)))
        .collect()
}

/// Builds an exporter (its queue not started yet).
fn build_exporter(
    config: &Config,
    id: &ComponentId,
    metrics: &Arc<Metrics>,
) -> Result<Built, StartError> {
    let spec = config
        .exporters
        .get(id)
        .ok_or_else(|| undefined("exporters", id))?;
    spec.build(
        id,
        &ExporterCtx {
            metrics: metrics.clone(),
        },
    )
    .map_err(|source| StartError::Exporter {
        id: id.clone(),
        source,
    })
}

/// Starts a built exporter's queue (in memory, or opening its persistent queue) and consumers.
fn start_exporter(
    id: &ComponentId,
    yaml: Value,
    built: Built,
    metrics: &Arc<Metrics>,
    hard_stop: &CancellationToken,
) -> Result<ExporterRun, StartError> {
    let hard_stop = hard_stop.child_token();
    let exporter = built.exporter.clone();
    let (queue, tasks) = match built.queue.storage.clone() {
        Some(storage) => {
            let when_full = built.queue.when_full();
            let (q, tasks) = persistent_queue::start(
                id.to_string(),
                built,
                &storage,
                when_full,
                metrics.clone(),
                hard_stop.clone(),
            )
            .map_err(|source| StartError::Storage {
                id: id.clone(),
                source,
            })?;
            (QueueRun::Disk(q), tasks)
        }
        None => {
            let (q, tasks) =
                exporters::start_queue(id.to_string(), built, metrics.clone(), hard_stop.clone());
            (QueueRun::Memory(q), tasks)
        }
    };
    Ok(ExporterRun {
        id: id.clone(),
        yaml,
        queue,
        tasks,
        exporter,
        hard_stop,
    })
}

impl ExporterRun {
    fn close(&self) {
        match &self.queue {
            QueueRun::Memory(q) => q.close(),
            QueueRun::Disk(q) => q.close(),
        }
    }

    /// Closes the queue and waits until `deadline` for its consumers to send what it holds,
    /// then for the exporter's own `shutdown` (what it queues further); then stops them. False when something was left unsent (for a persistent queue, it
    /// stays on disk for whoever opens the folder next).
    async fn drain(self, deadline: tokio::time::Instant) -> bool {
        self.close();
        let mut clean = true;
        for t in self.tasks {
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                clean = false;
                self.hard_stop.cancel();
            }
        }
        if tokio::time::timeout_at(deadline, self.exporter.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(exporter = %self.id, "shutdown grace period over before the exporter finished what it holds");
            clean = false;
        }
        self.hard_stop.cancel();
        if let QueueRun::Disk(q) = self.queue {
            join_writer(&q).await;
            let pending = q.pending();
            if pending > 0 {
                tracing::info!(exporter = %q.id, records = pending, "records kept on disk for the next start");
            }
        }
        clean
    }
}

/// Waits for a persistent queue's writer to finish its last sync.
async fn join_writer(q: &Arc<PersistentQueue>) {
    let waiting = q.clone();
    // Bounded: a hung disk must not keep the process from exiting.
    let join = tokio::task::spawn_blocking(move || waiting.join_writer());
    if tokio::time::timeout(Duration::from_secs(5), join)
        .await
        .is_err()
    {
        tracing::warn!(exporter = %q.id, "queue writer did not finish its last sync in 5 s");
    }
}

/// What a pipeline is built from (see [`PipelineRun::signature`]).
fn pipeline_signature(config: &Config, name: &str, p: &PipelineConfig) -> Value {
    let doc = config.expanded();
    let of = |section: &str, ids: &[String]| -> Value {
        Value::Sequence(
            ids.iter()
                .map(|i| {
                    ComponentId::parse(i).map_or(Value::Null, |id| settings(doc, section, &id))
                })
                .collect(),
        )
    };
    let entry = doc
        .get("service")
        .and_then(|s| s.get("pipelines"))
        .and_then(|s| s.get(name))
        .cloned()
        .unwrap_or(Value::Null);
    Value::Sequence(vec![
        entry,
        of("processors", &p.processors),
        of("exporters", &p.exporters),
    ])
}

/// Builds one pipeline over the running exporters.
fn build_pipeline(
    config: &Config,
    name: &str,
    p: &PipelineConfig,
    exporters: &BTreeMap<ComponentId, ExporterRun>,
    metrics: &Arc<Metrics>,
    memory: &Arc<MemoryTracker>,
) -> Result<PipelineRun, StartError> {
    let pctx = ProcessorCtx {
        metrics: metrics.clone(),
        memory: memory.clone(),
    };
    let mut stages = Vec::new();
    let mut batch = None;
    for pid in &p.processors {
        let id = ComponentId::parse(pid).ok_or_else(|| undefined("processors", pid))?;
        let spec = config
            .processors
            .get(&id)
            .ok_or_else(|| undefined("processors", &id))?;
        match spec.build(&id, &pctx) {
            Stage::Inline(proc_) => stages.push(proc_),
            Stage::Batch(s) => batch = Some(s),
        }
    }
    let mut in_memory = Vec::new();
    let mut persistent = Vec::new();
    for e in &p.exporters {
        match ComponentId::parse(e).and_then(|id| exporters.get(&id)) {
            Some(ExporterRun {
                queue: QueueRun::Memory(q),
                ..
            }) => in_memory.push(q.clone()),
            Some(ExporterRun {
                queue: QueueRun::Disk(q),
                ..
            }) => persistent.push(q.clone()),
            None => return Err(undefined("exporters", e)),
        }
    }
    let fanout = Arc::new(Fanout::new(in_memory, metrics.clone()));
    let (pipeline, batcher) = Pipeline::new(
        name.to_owned(),
        stages,
        batch,
        fanout,
        persistent,
        memory.clone(),
    );
    Ok(PipelineRun {
        signature: pipeline_signature(config, name, p),
        pipeline,
        batcher,
    })
}

/// Every receiver's fan-in over the pipelines that list it.
fn routes(
    service: &ServiceConfig,
    pipelines: &BTreeMap<String, PipelineRun>,
) -> BTreeMap<ComponentId, Fanin> {
    let mut out: BTreeMap<ComponentId, Fanin> = BTreeMap::new();
    for (name, p) in &service.pipelines {
        let Some(run) = pipelines.get(name) else {
            continue;
        };
        for r in &p.receivers {
            if let Some(id) = ComponentId::parse(r) {
                out.entry(id)
                    .or_insert_with(|| Fanin {
                        pipelines: Vec::new(),
                    })
                    .pipelines
                    .push(run.pipeline.clone());
            }
        }
    }
    out
}

/// Starts a receiver that hands its requests to its entry of `switch`.
async fn start_receiver(
    config: &Config,
    id: &ComponentId,
    switch: &Arc<Switch>,
    metrics: &Arc<Metrics>,
    parent: &CancellationToken,
) -> Result<ReceiverRun, StartError> {
    let spec = config
        .receivers
        .get(id)
        .ok_or_else(|| undefined("receivers", id))?;
    let stop = parent.child_token();
    let started = spec
        .start(
            id,
            ReceiverCtx {
                consumer: Arc::new(Route {
                    switch: switch.clone(),
                    id: id.clone(),
                }),
                metrics: metrics.clone(),
                shutdown: stop.clone(),
            },
        )
        .await?;
    Ok(ReceiverRun {
        yaml: settings(config.expanded(), "receivers", id),
        stop,
        tasks: started.tasks,
        listening: started.listening,
    })
}

impl ReceiverRun {
    /// Stops accepting and waits (until `deadline`) for requests in flight.
    async fn stop(self, deadline: tokio::time::Instant) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout_at(deadline, t).await;
        }
    }
}

/// Starts everything the config describes. Errors name the component that failed.
pub async fn start(config: Config) -> Result<Running, StartError> {
    install_crypto_provider();
    let metrics = Metrics::new();
    let memory = MemoryTracker::new();
    metrics.attach_memory(memory.clone());
    let health = Health::new();
    let hard_stop = CancellationToken::new();
    let side_stop = CancellationToken::new();
    let receivers_stop = CancellationToken::new();
    let mut listening = Vec::new();
    let mut side_tasks = Vec::new();

    // Extensions first, so health answers 503 while the rest starts.
    for ext in &config.service.extensions {
        let id = ComponentId::parse(ext).ok_or_else(|| undefined("extensions", ext))?;
        let spec = config
            .extensions
            .get(&id)
            .ok_or_else(|| undefined("extensions", &id))?;
        let started = spec
            .start(
                &id,
                ExtensionCtx {
                    health: health.clone(),
                    shutdown: side_stop.clone(),
                },
            )
            .await?;
        listening.extend(started.listening);
        side_tasks.extend(started.tasks);
    }

    // Exporters: one queue per exporter id, shared by every pipeline that lists it.
    let mut exporters = BTreeMap::new();
    for id in used_exporters(&config.service) {
        let built = build_exporter(&config, &id, &metrics)?;
        let yaml = settings(config.expanded(), "exporters", &id);
        let run = start_exporter(&id, yaml, built, &metrics, &hard_stop)?;
        exporters.insert(id, run);
    }

    let mut pipelines = BTreeMap::new();
    for (name, p) in &config.service.pipelines {
        let run = build_pipeline(&config, name, p, &exporters, &metrics, &memory)?;
        pipelines.insert(name.clone(), run);
    }

    // Receivers last: data may flow as soon as they listen.
    let routes = routes(&config.service, &pipelines);
    let ids: Vec<ComponentId> = routes.keys().cloned().collect();
    let switch = Arc::new(Switch {
        routes: tokio::sync::RwLock::new(routes),
    });
    let mut receivers = BTreeMap::new();
    for id in ids {
        let run = start_receiver(&config, &id, &switch, &metrics, &receivers_stop).await?;
        listening.extend(run.listening.iter().cloned());
        receivers.insert(id, run);
    }

    // Own metrics.
    let maddr = &config.service.telemetry.metrics.address;
    if !maddr.is_empty() && maddr != "none" {
        let addr = parse_endpoint(maddr)?;
        let (listener, local) = ListenError::bind("service.telemetry.metrics", addr).await?;
        let m = metrics.clone();
        let app = axum::Router::new().route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        m.render(),
                    )
                }
            }),
        );
        let stop = side_stop.clone();
        side_tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        }));
        listening.push(Listening {
            component: "metrics".into(),
            kind: "http",
            addr: local,
        });
    }
    let side_listening = listening
        .iter()
        .filter(|l| {
            !receivers
                .values()
                .any(|r| r.listening.iter().any(|m| m.addr == l.addr))
        })
        .cloned()
        .collect();

    health.set(Health::READY);
    Ok(Running {
        listening,
        side_listening,
        metrics,
        health,
        grace: config.service.shutdown_grace,
        document: config.expanded().clone(),
        service: config.service.clone(),
        memory,
        switch,
        receivers_stop,
        receivers,
        pipelines,
        exporters,
        hard_stop,
        side_stop,
        side_tasks,
    })
}

impl Running {
    /// The running `service` section (its `reload` settings, for the binary).
    pub fn service(&self) -> &ServiceConfig {
        &self.service
    }

    /// Drains: stop receiving, flush batches, let exporters finish (up to the grace period),
    /// then stop. Returns false when the grace period ran out with data still unsent.
    pub async fn shutdown(self) -> bool {
        self.health.set(Health::DRAINING);
        let deadline = tokio::time::Instant::now() + self.grace;
        self.receivers_stop.cancel();
        for r in self.receivers.into_values() {
            r.stop(deadline).await;
        }
        for p in self.pipelines.values() {
            let _ = tokio::time::timeout_at(deadline, p.pipeline.drain()).await;
            p.pipeline.close();
        }
        for p in self.pipelines.into_values() {
            if let Some(t) = p.batcher {
                let _ = tokio::time::timeout_at(deadline, t).await;
            }
        }
        let mut clean = true;
        // Every queue drains at once; each waits for the same deadline.
        let drains = self.exporters.into_values().map(|e| e.drain(deadline));
        for ok in futures::future::join_all(drains).await {
            clean &= ok;
        }
        if !clean {
            tracing::warn!("shutdown grace period over with batches unsent");
            self.hard_stop.cancel();
        }
        self.side_stop.cancel();
        for t in self.side_tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        clean
    }
}

/// Resolves on SIGTERM or Ctrl-C (Ctrl-C only where SIGTERM cannot be watched), for the
/// binaries' graceful shutdown.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        crate::load::from_yaml(yaml, &|_| None).expect("valid config")
    }

    #[tokio::test]
    async fn a_taken_port_fails_naming_the_receiver_protocol() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let cfg = config(&format!(
            "receivers:\n  otlp:\n    protocols:\n      grpc: {{ endpoint: '{addr}' }}\n\
             exporters:\n  debug: {{}}\n\
             service:\n  pipelines:\n    traces: {{ receivers: [otlp], exporters: [debug] }}\n  \
             telemetry: {{ metrics: {{ address: none }} }}\n"
        ));
        let err = match start(cfg).await {
            Ok(_) => panic!("started on a taken port"),
            Err(e) => e,
        };
        assert!(
            matches!(err, StartError::Listen(ListenError::Bind { .. })),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "receivers.otlp.protocols.grpc: cannot listen on {addr}: "
            )),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_exporter_that_cannot_build_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A regular file where the exporter needs a folder.
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, b"x").expect("write");
        let out = blocker.join("spans.jsonl");
        let cfg = config(&format!(
            "receivers:\n  otlp:\n    protocols:\n      grpc: {{ endpoint: '127.0.0.1:0' }}\n\
             exporters:\n  file: {{ path: '{}' }}\n\
             service:\n  pipelines:\n    traces: {{ receivers: [otlp], exporters: [file] }}\n  \
             telemetry: {{ metrics: {{ address: none }} }}\n",
            out.display()
        ));
        let err = match start(cfg).await {
            Ok(_) => panic!("built a file exporter under a regular file"),
            Err(e) => e,
        };
        assert!(
            matches!(&err, StartError::Exporter { id, source: BuildError::File { .. } } if id.to_string() == "file"),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with("exporters.file: creating "),
            "{err}"
        );
    }
}
