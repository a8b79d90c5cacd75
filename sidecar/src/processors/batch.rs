//! batch: groups spans into export requests of `send_batch_size`, never above
//! `send_batch_max_size`, flushing after `timeout` and on shutdown.

use std::time::Duration;

use serde::Deserialize;

use super::{BuildCtx, ProcessorSpec, Stage};
use crate::config::{parse_as, ComponentId, ConfigError, ParseCtx};
use crate::Factory;

pub const FACTORY: Factory<dyn ProcessorSpec> = Factory {
    kind: "batch",
    parse,
};

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSettings {
    /// Flush once this many spans are pending.
    #[serde(default = "default_size")]
    pub send_batch_size: usize,
    /// Upper bound of one export request (0: no bound beyond send_batch_size's flushes).
    #[serde(default)]
    pub send_batch_max_size: usize,
    /// Flush pending spans at least this often.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Requests queued between the receivers and the batcher before receivers refuse.
    #[serde(default = "default_queue")]
    pub queue_size: usize,
}

fn default_size() -> usize {
    8192
}

fn default_timeout() -> Duration {
    Duration::from_millis(200)
}

fn default_queue() -> usize {
    1024
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            send_batch_size: default_size(),
            send_batch_max_size: 0,
            timeout: default_timeout(),
            queue_size: default_queue(),
        }
    }
}

fn parse(
    _id: &ComponentId,
    v: &serde_yaml::Value,
    path: &str,
    _ctx: &ParseCtx<'_>,
) -> Result<Box<dyn ProcessorSpec>, ConfigError> {
    let c: BatchSettings = parse_as(v, path)?;
    if c.send_batch_size == 0 {
        return Err(ConfigError::at(
            format!("{path}.send_batch_size"),
            "must be greater than 0",
        ));
    }
    if c.send_batch_max_size != 0 && c.send_batch_max_size < c.send_batch_size {
        return Err(ConfigError::at(
            format!("{path}.send_batch_max_size"),
            format!(
                "{} must be 0 (unbounded) or at least send_batch_size ({})",
                c.send_batch_max_size, c.send_batch_size
            ),
        ));
    }
    if c.timeout.is_zero() {
        return Err(ConfigError::at(
            format!("{path}.timeout"),
            "must be greater than 0",
        ));
    }
    if c.queue_size == 0 {
        return Err(ConfigError::at(
            format!("{path}.queue_size"),
            "must be greater than 0",
        ));
    }
    Ok(Box::new(c))
}

impl ProcessorSpec for BatchSettings {
    fn build(&self, _id: &ComponentId, _ctx: &BuildCtx) -> Stage {
        Stage::Batch(*self)
    }
}
