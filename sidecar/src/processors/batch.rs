//! batch: groups spans into export requests of `send_batch_size`, never above
//! `send_batch_max_size`, flushing after `timeout` and on shutdown.

use super::{BuildCtx, ProcessorSpec, Stage};
use crate::component::{BatchSettings, Factory};
use crate::config::{parse_as, ComponentId, ConfigError, ParseCtx};

pub const FACTORY: Factory<dyn ProcessorSpec> = Factory {
    kind: "batch",
    parse,
};

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
