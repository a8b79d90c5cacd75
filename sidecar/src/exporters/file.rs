//! file: appends one OTLP/JSON `ExportTraceServiceRequest` per line, flushed per batch, so
//! tests and tools (`loom traces`) can read spans back.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Deserialize;

use super::{
    BoxFuture, BuildCtx, BuildError, Built, ExportError, ExportOk, Exporter, ExporterSpec,
    QueueConfig, RetryConfig,
};
use crate::component::Factory;
use crate::config::{parse_as, ComponentId, ComponentYaml, ConfigError};
use crate::model::Batch;

pub const FACTORY: Factory<dyn ExporterSpec> = Factory {
    kind: "file",
    parse,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    path: PathBuf,
}

fn parse(y: &ComponentYaml<'_>) -> Result<Box<dyn ExporterSpec>, ConfigError> {
    let (v, path) = (y.value, y.path);
    let c: FileConfig = parse_as(v, path)?;
    if c.path.as_os_str().is_empty() {
        return Err(ConfigError::at(format!("{path}.path"), "must not be empty"));
    }
    Ok(Box::new(c))
}

impl ExporterSpec for FileConfig {
    fn build(&self, _id: &ComponentId, _ctx: &BuildCtx) -> Result<Built, BuildError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| BuildError::file("creating", dir.display(), e))?;
        }
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| BuildError::file("opening", self.path.display(), e))?;
        Ok(Built {
            exporter: Arc::new(FileExporter {
                out: Arc::new(Mutex::new(BufWriter::new(f))),
            }),
            queue: QueueConfig::single_consumer(),
            retry: RetryConfig::default(),
        })
    }
}

struct FileExporter {
    out: Arc<Mutex<BufWriter<std::fs::File>>>,
}

/// Writes `{"resourceSpans":[...]}`, one resource at a time (spans are bytes until here).
fn write_line(w: &mut impl Write, batch: &Batch) -> std::io::Result<()> {
    w.write_all(b"{\"resourceSpans\":[")?;
    for (i, rs) in batch.resource_spans.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        let rs = rs.to_proto().map_err(std::io::Error::other)?;
        serde_json::to_writer(&mut *w, &rs).map_err(std::io::Error::other)?;
    }
    w.write_all(b"]}\n")?;
    w.flush()
}

impl Exporter for FileExporter {
    fn export(&self, batch: Arc<Batch>) -> BoxFuture<'static, Result<ExportOk, ExportError>> {
        let out = self.out.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || write_line(&mut *out.lock(), &batch))
                .await
                .map_err(|e| ExportError::permanent("write", e.to_string()))?
                // A full disk may clear: retry (bounded by retry_on_failure).
                .map_err(|e| ExportError::retryable("write", e.to_string(), None))?;
            Ok(ExportOk::default())
        })
    }
}
