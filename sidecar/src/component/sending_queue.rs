//! Settings every exporter's sending queue shares: `sending_queue` (in memory, or persisted
//! with `storage`) and `retry_on_failure`. They live here because [`Built`](super::Built) carries
//! them from an exporter to the queue the service starts.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{require_positive, ConfigError};

/// `sending_queue`: in memory (batches), or the persistent queue with `storage` (a write-ahead
/// log on disk; `storage` is the Collector's YAML key for it). A missing field takes its
/// value from `Default`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    pub enabled: bool,
    pub num_consumers: usize,
    /// In memory: batches the queue holds before new ones are dropped for this exporter
    /// (counted). Not used with `storage`, whose bound is `storage.max_bytes`.
    pub queue_size: Option<usize>,
    /// Persist the queue on disk.
    pub storage: Option<StorageConfig>,
    /// With `storage`: what to do at `max_bytes` (default `refuse`).
    pub when_full: Option<WhenFull>,
}

fn default_queue_size() -> usize {
    1000
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            enabled: true,
            num_consumers: 2,
            queue_size: None,
            storage: None,
            when_full: None,
        }
    }
}

impl QueueConfig {
    /// Batches an in-memory queue holds.
    pub fn memory_size(&self) -> usize {
        self.queue_size.unwrap_or_else(default_queue_size)
    }

    pub fn when_full(&self) -> WhenFull {
        self.when_full.unwrap_or(WhenFull::Refuse)
    }

    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        if !self.enabled {
            return Err(ConfigError::at(
                format!("{path}.sending_queue.enabled"),
                "false is not supported: the queue is what keeps a slow backend from blocking the receivers",
            ));
        }
        let at = format!("{path}.sending_queue");
        require_positive(&at, "num_consumers", self.num_consumers)?;
        if let Some(n) = self.queue_size {
            require_positive(&at, "queue_size", n)?;
        }
        match &self.storage {
            Some(storage) => {
                if self.queue_size.is_some() {
                    return Err(ConfigError::at(
                        format!("{path}.sending_queue.queue_size"),
                        "not used with storage: the persistent queue is bounded by storage.max_bytes",
                    ));
                }
                storage.validate(path)?;
            }
            None => {
                if self.when_full.is_some() {
                    return Err(ConfigError::at(
                        format!("{path}.sending_queue.when_full"),
                        "only with storage; a full in-memory queue drops the new batch for this exporter (counted)",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `retry_on_failure`; a missing field takes its value from `Default`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub initial_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
    /// Give up on a batch after retrying this long (0: never give up).
    #[serde(with = "humantime_serde")]
    pub max_elapsed_time: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            enabled: true,
            initial_interval: Duration::from_secs(5),
            max_interval: Duration::from_secs(30),
            max_elapsed_time: Duration::from_secs(300),
        }
    }
}

impl QueueConfig {
    /// One consumer: for exporters that hand batches to something in-process, where order is
    /// kept and a second consumer would only contend.
    pub fn single_consumer() -> Self {
        QueueConfig {
            num_consumers: 1,
            ..QueueConfig::default()
        }
    }
}

impl RetryConfig {
    /// No retries: for exporters whose failures a retry cannot fix (a local write or print).
    pub fn disabled() -> Self {
        RetryConfig {
            enabled: false,
            ..RetryConfig::default()
        }
    }
}

impl RetryConfig {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        if self.enabled
            && (self.initial_interval.is_zero() || self.max_interval < self.initial_interval)
        {
            return Err(ConfigError::at(
                format!("{path}.retry_on_failure"),
                "initial_interval must be > 0 and max_interval at least initial_interval",
            ));
        }
        Ok(())
    }
}

/// When data reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Sync every group of appended records before the clients are answered: an acknowledged
    /// span survives a crash of the machine, at the cost of one fsync per group.
    Batch,
    /// Answer once the data is written to the OS, sync every `fsync_interval`: an acknowledged
    /// span survives the sidecar's crash (even `kill -9`), but up to one interval of data can be
    /// lost if the machine itself goes down.
    Interval,
}

/// What happens when the queue reaches `storage.max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Refuse new data: the receivers answer RESOURCE_EXHAUSTED / 429 with a retry hint.
    Refuse,
    /// Delete the oldest segments to make room (their unsent spans are counted as dropped).
    DropOldest,
}

/// `sending_queue.storage`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Parent folder; each exporter gets its own sub-folder named after its id.
    pub directory: PathBuf,
    /// Upper bound of the queue's files, in bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    #[serde(default = "default_fsync")]
    pub fsync: FsyncPolicy,
    /// Sync period with `fsync: interval`.
    #[serde(default = "default_fsync_interval", with = "humantime_serde")]
    pub fsync_interval: Duration,
}

fn default_max_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_fsync() -> FsyncPolicy {
    FsyncPolicy::Batch
}
fn default_fsync_interval() -> Duration {
    Duration::from_secs(1)
}

/// The smallest cap that still holds a few segments.
pub const MIN_MAX_BYTES: u64 = 64 * 1024;

impl StorageConfig {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let at = |k: &str| format!("{path}.sending_queue.storage.{k}");
        if self.directory.as_os_str().is_empty() {
            return Err(ConfigError::at(at("directory"), "must not be empty"));
        }
        if self.max_bytes < MIN_MAX_BYTES {
            return Err(ConfigError::at(
                at("max_bytes"),
                format!("{} is below the minimum of {MIN_MAX_BYTES}", self.max_bytes),
            ));
        }
        if self.fsync == FsyncPolicy::Interval {
            let at = format!("{path}.sending_queue.storage");
            require_positive(&at, "fsync_interval", self.fsync_interval)?;
        }
        Ok(())
    }

    /// Segments are a sixteenth of the cap (4 KiB to 16 MiB): small enough that `drop_oldest`
    /// frees little at a time and a replay after a crash resends little, large enough that
    /// creating files costs nothing that matters.
    pub fn segment_size(&self) -> u64 {
        (self.max_bytes / 16).clamp(4 * 1024, 16 * 1024 * 1024)
    }
}
