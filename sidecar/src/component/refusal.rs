//! Why a request was not accepted: what processors and pipelines answer, and receivers map to
//! their protocol.

use std::time::Duration;

/// Why a request was not accepted. Every variant is retryable for the client and carries a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    MemoryLimit {
        retry_after: Duration,
        detail: String,
    },
    QueueFull {
        retry_after: Duration,
    },
    /// An exporter's persistent queue reached `storage.max_bytes` (`when_full: refuse`).
    StorageFull {
        retry_after: Duration,
    },
    /// An exporter's persistent queue could not write (disk full, I/O error).
    StorageError,
    ShuttingDown,
}

impl Refusal {
    pub fn retry_after(&self) -> Duration {
        match self {
            Refusal::MemoryLimit { retry_after, .. }
            | Refusal::QueueFull { retry_after }
            | Refusal::StorageFull { retry_after } => *retry_after,
            Refusal::StorageError => Duration::from_secs(5),
            Refusal::ShuttingDown => Duration::from_secs(5),
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::MemoryLimit { .. } => "memory_limit",
            Refusal::QueueFull { .. } => "queue_full",
            Refusal::StorageFull { .. } => "exporter_queue_full",
            Refusal::StorageError => "storage_error",
            Refusal::ShuttingDown => "shutting_down",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refusal::MemoryLimit { detail, .. } => detail.clone(),
            Refusal::QueueFull { .. } => "the sidecar's pipeline queue is full; retry later".into(),
            Refusal::StorageFull { .. } => {
                "an exporter's persistent queue is full (its backend is behind); retry later".into()
            }
            // No detail: paths and OS errors are for the sidecar's log, not for clients.
            Refusal::StorageError => {
                "the sidecar cannot persist data right now; retry later".into()
            }
            Refusal::ShuttingDown => {
                "the sidecar is shutting down; retry against another instance or later".into()
            }
        }
    }
}
