//! Service lifecycle: build exporters → pipelines → receivers → extensions; report listeners;
//! on shutdown drain in the reverse direction within the grace period.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use tokio_util::sync::CancellationToken;

pub use crate::component::install_crypto_provider;
use crate::component::{
    BuildError, Config, ExporterCtx, ExtensionCtx, Health, ListenError, Listening, ProcessorCtx,
    ReceiverCtx, Stage,
};
use crate::config::{parse_endpoint, ComponentId, EndpointError};
use crate::exporters::persistent_queue::{self, PersistentQueue};
use crate::exporters::{self, ExporterQueue};
use crate::memory::MemoryTracker;
use crate::metrics::Metrics;
use crate::pipeline::{Fanin, Fanout, Pipeline};

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
    pub listening: Vec<Listening>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    grace: Duration,
    receivers_stop: CancellationToken,
    receiver_tasks: Vec<tokio::task::JoinHandle<()>>,
    pipelines: Vec<Arc<Pipeline>>,
    batchers: Vec<tokio::task::JoinHandle<()>>,
    queues: Vec<Arc<ExporterQueue>>,
    persistent_queues: Vec<Arc<PersistentQueue>>,
    consumers: Vec<tokio::task::JoinHandle<()>>,
    hard_stop: CancellationToken,
    side_stop: CancellationToken,
    side_tasks: Vec<tokio::task::JoinHandle<()>>,
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
    let mut queues: BTreeMap<ComponentId, Arc<ExporterQueue>> = BTreeMap::new();
    let mut persistent_queues: BTreeMap<ComponentId, Arc<PersistentQueue>> = BTreeMap::new();
    let mut consumers = Vec::new();
    let used_exporters: std::collections::BTreeSet<ComponentId> = config
        .service
        .pipelines
        .values()
        .flat_map(|p| p.exporters.iter().filter_map(|e| ComponentId::parse(e)))
        .collect();
    for id in used_exporters {
        let spec = config
            .exporters
            .get(&id)
            .ok_or_else(|| undefined("exporters", &id))?;
        let built = spec
            .build(
                &id,
                &ExporterCtx {
                    metrics: metrics.clone(),
                },
            )
            .map_err(|source| StartError::Exporter {
                id: id.clone(),
                source,
            })?;
        if let Some(storage) = built.queue.storage.clone() {
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
            persistent_queues.insert(id, q);
            consumers.extend(tasks);
            continue;
        }
        let (q, tasks) =
            exporters::start_queue(id.to_string(), built, metrics.clone(), hard_stop.clone());
        queues.insert(id, q);
        consumers.extend(tasks);
    }

    // Pipelines.
    let mut pipelines = Vec::new();
    let mut batchers = Vec::new();
    let mut fanins: BTreeMap<ComponentId, Vec<Arc<Pipeline>>> = BTreeMap::new();
    let pctx = ProcessorCtx {
        metrics: metrics.clone(),
        memory: memory.clone(),
    };
    for (name, p) in &config.service.pipelines {
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
        let exps = p
            .exporters
            .iter()
            .filter_map(|e| ComponentId::parse(e).and_then(|id| queues.get(&id).cloned()))
            .collect();
        let persistent = p
            .exporters
            .iter()
            .filter_map(|e| {
                ComponentId::parse(e).and_then(|id| persistent_queues.get(&id).cloned())
            })
            .collect();
        let fanout = Arc::new(Fanout::new(exps, metrics.clone()));
        let (pipeline, task) = Pipeline::new(
            name.clone(),
            stages,
            batch,
            fanout,
            persistent,
            memory.clone(),
        );
        batchers.extend(task);
        for r in &p.receivers {
            if let Some(id) = ComponentId::parse(r) {
                fanins.entry(id).or_default().push(pipeline.clone());
            }
        }
        pipelines.push(pipeline);
    }

    // Receivers last: data may flow as soon as they listen.
    let mut receiver_tasks = Vec::new();
    for (id, pipes) in fanins {
        let spec = config
            .receivers
            .get(&id)
            .ok_or_else(|| undefined("receivers", &id))?;
        let started = spec
            .start(
                &id,
                ReceiverCtx {
                    consumer: Arc::new(Fanin { pipelines: pipes }),
                    metrics: metrics.clone(),
                    shutdown: receivers_stop.clone(),
                },
            )
            .await?;
        listening.extend(started.listening);
        receiver_tasks.extend(started.tasks);
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

    health.set(Health::READY);
    Ok(Running {
        listening,
        metrics,
        health,
        grace: config.service.shutdown_grace,
        receivers_stop,
        receiver_tasks,
        pipelines,
        batchers,
        queues: queues.into_values().collect(),
        persistent_queues: persistent_queues.into_values().collect(),
        consumers,
        hard_stop,
        side_stop,
        side_tasks,
    })
}

impl Running {
    /// Drains: stop receiving, flush batches, let exporters finish (up to the grace period),
    /// then stop. Returns false when the grace period ran out with data still unsent.
    pub async fn shutdown(self) -> bool {
        self.health.set(Health::DRAINING);
        let deadline = tokio::time::Instant::now() + self.grace;
        self.receivers_stop.cancel();
        for t in self.receiver_tasks {
            let _ = tokio::time::timeout_at(deadline, t).await;
        }
        for p in &self.pipelines {
            p.close();
        }
        for t in self.batchers {
            let _ = tokio::time::timeout_at(deadline, t).await;
        }
        for q in &self.queues {
            q.close();
        }
        for q in &self.persistent_queues {
            q.close();
        }
        let mut clean = true;
        for t in self.consumers {
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                clean = false;
            }
        }
        if !clean {
            tracing::warn!("shutdown grace period over with batches unsent");
            self.hard_stop.cancel();
        }
        // The writers' last sync: what is still queued on disk is sent after the next start.
        for q in self.persistent_queues {
            let id = q.id.clone();
            let waiting = q.clone();
            // Bounded: a hung disk must not keep the process from exiting.
            let join = tokio::task::spawn_blocking(move || waiting.join_writer());
            if tokio::time::timeout(Duration::from_secs(5), join)
                .await
                .is_err()
            {
                tracing::warn!(exporter = %id, "queue writer did not finish its last sync in 5 s");
            }
            let pending = q.pending();
            if pending > 0 {
                tracing::info!(exporter = %id, records = pending, "records kept on disk for the next start");
            }
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
