//! Live reconfiguration: a validated config replaces the running one in place, rebuilding only
//! the components whose settings changed.
//!
//! Order, so that no acknowledged span is lost and no request is refused:
//! 1. Refuse what cannot change in place (extensions, `service.telemetry`): the running config
//!    stays, the error names the YAML path.
//! 2. Build and start the added and changed exporters (their queues see no data yet).
//! 3. Take the switch's write side: requests in flight finish, new ones wait. Changed
//!    persistent queues are closed and their writers joined here, then re-opened by the new
//!    exporter (same folder, so what was queued on disk is sent by the new one). Pipelines
//!    whose processors or exporters changed are rebuilt; the map of routes is replaced.
//! 4. Receivers whose settings are unchanged keep their listeners (their connections never
//!    notice); changed ones are restarted, removed ones stopped, added ones started.
//! 5. Replaced pipelines are closed: their batchers flush what they hold into the exporters
//!    they had. Then removed and replaced exporters drain within `shutdown_grace`; what they
//!    could not send is logged (and stays on disk for a persistent queue).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{
    build_exporter, build_pipeline, routes, settings, start_exporter, start_receiver,
    used_exporters, ExporterRun, PipelineRun, QueueRun, Running, StartError,
};
use crate::component::Config;
use crate::config::{ComponentId, ConfigErrors};
use crate::metrics::Metric;

/// Why a reload left the running configuration as it was (or, for `Receiver`, partly applied).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid configuration:\n{0}")]
    Invalid(ConfigErrors),
    #[error("{0}: cannot change without a restart")]
    NeedsRestart(String),
    #[error(transparent)]
    Start(StartError),
    #[error("requests in flight did not finish within service.shutdown_grace ({0:?})")]
    Busy(Duration),
    /// The pipelines were swapped, but a receiver could not (re)start.
    #[error("pipelines reloaded, but {0}")]
    Receiver(StartError),
}

/// What a reload changed, one `section.id: added|changed|removed` line per component.
#[derive(Debug, Default)]
pub struct Reloaded {
    pub changes: Vec<String>,
}

/// Sections a reload cannot apply: their listeners and tasks live outside the pipelines.
const FIXED: [&str; 2] = ["extensions", "service.extensions"];

fn at<'a>(doc: &'a serde_yaml::Value, path: &str) -> Option<&'a serde_yaml::Value> {
    path.split('.').try_fold(doc, |v, k| v.get(k))
}

impl Running {
    /// Applies a new configuration (already validated: `load_file`) or, on any error, keeps
    /// the running one. Counted in `config_reload_total{result}` with the time and result of
    /// the last reload as gauges.
    pub async fn reload(
        &mut self,
        config: Result<Config, ConfigErrors>,
    ) -> Result<Reloaded, ReloadError> {
        let result = match config {
            Ok(c) => self.apply(c).await,
            Err(e) => Err(ReloadError::Invalid(e)),
        };
        let ok = result.is_ok();
        self.metrics.count(
            Metric::ConfigReloads,
            &[("result", if ok { "success" } else { "failed" })],
            1,
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.metrics
            .gauge(Metric::ConfigReloadLastTimestamp, &[], now);
        self.metrics
            .gauge(Metric::ConfigReloadLastSuccess, &[], i64::from(ok));
        result
    }

    async fn apply(&mut self, config: Config) -> Result<Reloaded, ReloadError> {
        let doc = config.expanded();
        for path in FIXED.iter().copied().chain(["service.telemetry"]) {
            if at(doc, path) != at(&self.document, path) {
                return Err(ReloadError::NeedsRestart(path.to_owned()));
            }
        }
        let mut changes = Vec::new();

        // Exporters: keep the unchanged, build the rest before anything is swapped.
        let used = used_exporters(&config.service);
        let mut fresh: BTreeMap<ComponentId, (serde_yaml::Value, crate::component::Built)> =
            BTreeMap::new();
        for id in &used {
            let yaml = settings(doc, "exporters", id);
            if self.exporters.get(id).is_some_and(|e| e.yaml == yaml) {
                continue;
            }
            let built = build_exporter(&config, id, &self.metrics).map_err(ReloadError::Start)?;
            fresh.insert(id.clone(), (yaml, built));
        }
        let retired_ids: Vec<ComponentId> = self
            .exporters
            .keys()
            .filter(|id| !used.contains(*id) || fresh.contains_key(*id))
            .cloned()
            .collect();
        for id in &retired_ids {
            let what = if used.contains(id) {
                "changed"
            } else {
                "removed"
            };
            changes.push(format!("exporters.{id}: {what}"));
        }
        for id in fresh.keys() {
            if !self.exporters.contains_key(id) {
                changes.push(format!("exporters.{id}: added"));
            }
        }
        // In-memory queues start now; persistent ones once the old writer of their folder ended.
        let mut started: BTreeMap<ComponentId, ExporterRun> = BTreeMap::new();
        let mut deferred = Vec::new();
        for (id, (yaml, built)) in fresh {
            if built.queue.storage.is_some() {
                deferred.push((id, yaml, built));
                continue;
            }
            let run = start_exporter(&id, yaml, built, &self.metrics, &self.hard_stop)
                .map_err(ReloadError::Start)?;
            started.insert(id, run);
        }

        // The swap.
        let grace = self.grace;
        let mut table = tokio::time::timeout(grace, self.switch.routes.write())
            .await
            .map_err(|_| ReloadError::Busy(grace))?;
        let mut retired: Vec<ExporterRun> = Vec::new();
        for id in &retired_ids {
            if let Some(run) = self.exporters.remove(id) {
                retired.push(run);
            }
        }
        // A changed persistent queue hands its folder over: no export interrupted by this is
        // marked done, so the new exporter sends it again.
        let deadline = tokio::time::Instant::now() + grace;
        let mut kept_retired = Vec::new();
        for run in retired {
            let replaced_on_disk = matches!(run.queue, QueueRun::Disk(_))
                && deferred.iter().any(|(id, _, _)| *id == run.id);
            if replaced_on_disk {
                run.hard_stop.cancel();
                run.drain(deadline).await;
            } else {
                kept_retired.push(run);
            }
        }
        let mut open_error = None;
        for (id, yaml, built) in deferred {
            match start_exporter(&id, yaml, built, &self.metrics, &self.hard_stop) {
                Ok(run) => {
                    started.insert(id, run);
                }
                Err(e) => {
                    open_error = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = open_error {
            // The old queue's folder is closed; nothing was swapped yet. The new exporters
            // started so far go; the running pipelines keep the exporters they had, except
            // the persistent ones closed above, which now refuse (ShuttingDown) until a
            // reload succeeds: said in the error.
            drop(table);
            for run in started.into_values() {
                run.drain(tokio::time::Instant::now()).await;
            }
            for run in kept_retired {
                self.exporters.insert(run.id.clone(), run);
            }
            return Err(ReloadError::Start(e));
        }
        self.exporters.extend(started);

        let mut pipelines: BTreeMap<String, PipelineRun> = BTreeMap::new();
        let mut old = std::mem::take(&mut self.pipelines);
        // (name, pipeline) this reload replaces or removes: closed once the swap is done.
        let mut replaced: Vec<(String, PipelineRun)> = Vec::new();
        let mut fresh_names = BTreeSet::new();
        for (name, p) in &config.service.pipelines {
            let signature = super::pipeline_signature(&config, name, p);
            let prev = match old.remove(name) {
                Some(run) if run.signature == signature => {
                    pipelines.insert(name.clone(), run);
                    continue;
                }
                prev => prev,
            };
            let built = build_pipeline(
                &config,
                name,
                p,
                &self.exporters,
                &self.metrics,
                &self.memory,
            );
            match built {
                Ok(run) => {
                    let what = if prev.is_some() { "changed" } else { "added" };
                    changes.push(format!("service.pipelines.{name}: {what}"));
                    pipelines.insert(name.clone(), run);
                    fresh_names.insert(name.clone());
                    replaced.extend(prev.map(|r| (name.clone(), r)));
                }
                Err(e) => {
                    // Only an id missing from a validated config gets here. Nothing was
                    // swapped: the running pipelines stay, the new ones close.
                    drop(table);
                    old.extend(prev.map(|r| (name.clone(), r)));
                    old.extend(replaced);
                    for (name, run) in pipelines {
                        if fresh_names.contains(&name) {
                            run.pipeline.close();
                        } else {
                            old.insert(name, run);
                        }
                    }
                    self.pipelines = old;
                    return Err(ReloadError::Start(e));
                }
            }
        }
        for (name, run) in old {
            changes.push(format!("service.pipelines.{name}: removed"));
            replaced.push((name, run));
        }
        *table = routes(&config.service, &pipelines);
        let route_ids: BTreeSet<ComponentId> = table.keys().cloned().collect();
        drop(table);
        self.pipelines = pipelines;

        // Receivers.
        let mut receiver_error = None;
        let old_ids: Vec<ComponentId> = self.receivers.keys().cloned().collect();
        for id in old_ids {
            let yaml = settings(doc, "receivers", &id);
            let same = self.receivers.get(&id).is_some_and(|r| r.yaml == yaml);
            if route_ids.contains(&id) && same {
                continue;
            }
            if let Some(run) = self.receivers.remove(&id) {
                let what = if route_ids.contains(&id) {
                    "changed"
                } else {
                    "removed"
                };
                changes.push(format!("receivers.{id}: {what}"));
                run.stop(tokio::time::Instant::now() + grace).await;
            }
        }
        for id in &route_ids {
            if self.receivers.contains_key(id) {
                continue;
            }
            if !changes
                .iter()
                .any(|c| c.starts_with(&format!("receivers.{id}:")))
            {
                changes.push(format!("receivers.{id}: added"));
            }
            match start_receiver(
                &config,
                id,
                &self.switch,
                &self.metrics,
                &self.receivers_stop,
            )
            .await
            {
                Ok(run) => {
                    for l in &run.listening {
                        tracing::info!(component = %l.component, kind = l.kind, addr = %l.addr, "listening");
                    }
                    self.receivers.insert(id.clone(), run);
                }
                Err(e) => {
                    receiver_error.get_or_insert(e);
                }
            }
        }
        self.listening = self
            .receivers
            .values()
            .flat_map(|r| r.listening.iter().cloned())
            .chain(self.side_listening.iter().cloned())
            .collect();

        // Flush what replaced pipelines hold, then let retired exporters send it.
        let deadline = tokio::time::Instant::now() + grace;
        for (_, p) in &replaced {
            let _ = tokio::time::timeout_at(deadline, p.pipeline.drain()).await;
            p.pipeline.close();
        }
        for (_, p) in replaced {
            if let Some(t) = p.batcher {
                let _ = tokio::time::timeout_at(deadline, t).await;
            }
        }
        let drains = kept_retired.into_iter().map(|run| {
            let id = run.id.clone();
            async move {
                if !run.drain(deadline).await {
                    tracing::warn!(exporter = %id, "reload: retired exporter could not send everything within service.shutdown_grace");
                }
            }
        });
        futures::future::join_all(drains).await;

        self.document = doc.clone();
        self.service = config.service.clone();
        self.grace = config.service.shutdown_grace;
        match receiver_error {
            Some(e) => Err(ReloadError::Receiver(e)),
            None => Ok(Reloaded { changes }),
        }
    }
}
