//! memory_limiter: refuses new data (retryably) while the pipeline holds too much.
//!
//! Two measures: bytes of span data accounted in the pipeline against the soft limit
//! (`limit_mib - spike_limit_mib`), and the process RSS against `limit_mib`. Refusals carry a
//! retry hint, so well-behaved clients back off instead of dropping.
//!
//! RSS alone never refuses: after a burst the allocator may keep freed pages, so RSS can stay
//! above the limit with the pipeline empty, and refusing then would refuse for ever (nothing the
//! pipeline could drain would bring RSS down). RSS over the limit refuses only while the pipeline
//! holds at least a sixteenth of the limit in span data, i.e. while draining it would help.

use std::sync::Arc;
use std::time::Duration;

use crate::model::ResourceSpans;
use serde::Deserialize;

use super::{BuildCtx, Processor, ProcessorSpec, Stage};
use crate::component::Factory;
use crate::component::Refusal;
use crate::config::{parse_as, require_positive, ComponentId, ComponentYaml, ConfigError};
use crate::memory::MemoryTracker;

pub const FACTORY: Factory<dyn ProcessorSpec> = Factory {
    kind: "memory_limiter",
    parse,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryLimiterConfig {
    pub limit_mib: u64,
    /// Headroom for bursts; defaults to 20 % of `limit_mib`.
    #[serde(default)]
    pub spike_limit_mib: Option<u64>,
    /// How often the process RSS is sampled.
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    pub check_interval: Duration,
    /// Retry hint given to refused clients.
    #[serde(default = "default_retry_after", with = "humantime_serde")]
    pub retry_after: Duration,
}

fn default_check_interval() -> Duration {
    Duration::from_millis(100)
}

fn default_retry_after() -> Duration {
    Duration::from_secs(1)
}

fn parse(y: &ComponentYaml<'_>) -> Result<Box<dyn ProcessorSpec>, ConfigError> {
    let (v, path) = (y.value, y.path);
    let c: MemoryLimiterConfig = parse_as(v, path)?;
    require_positive(path, "limit_mib", c.limit_mib)?;
    if let Some(s) = c.spike_limit_mib {
        if s >= c.limit_mib {
            return Err(ConfigError::at(
                format!("{path}.spike_limit_mib"),
                format!("{s} must be smaller than limit_mib ({})", c.limit_mib),
            ));
        }
    }
    require_positive(path, "check_interval", c.check_interval)?;
    Ok(Box::new(c))
}

impl MemoryLimiterConfig {
    pub fn hard_limit_bytes(&self) -> u64 {
        self.limit_mib * 1024 * 1024
    }

    pub fn soft_limit_bytes(&self) -> u64 {
        let spike = self.spike_limit_mib.unwrap_or(self.limit_mib / 5);
        (self.limit_mib - spike.min(self.limit_mib)) * 1024 * 1024
    }
}

impl ProcessorSpec for MemoryLimiterConfig {
    fn build(&self, _id: &ComponentId, ctx: &BuildCtx) -> Stage {
        let tracker = ctx.memory.clone();
        let interval = self.check_interval;
        tracker.sample_rss();
        let stage = Arc::new(MemoryLimiter {
            tracker,
            soft: self.soft_limit_bytes(),
            hard: self.hard_limit_bytes(),
            retry_after: self.retry_after,
        });
        // RSS is sampled off the request path; reading /proc per request would cost more. The
        // sampler ends with the stage (a reload that rebuilds the pipeline drops it).
        let sampler = Arc::downgrade(&stage);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                match sampler.upgrade() {
                    Some(s) => s.tracker.sample_rss(),
                    None => return,
                }
            }
        });
        Stage::Inline(stage)
    }
}

/// Pipeline data (as a fraction of the hard limit) below which a high RSS does not refuse.
const RSS_GATE_DIVISOR: u64 = 16;

pub struct MemoryLimiter {
    tracker: Arc<MemoryTracker>,
    soft: u64,
    hard: u64,
    retry_after: Duration,
}

impl Processor for MemoryLimiter {
    fn process(&self, _spans: &mut Vec<ResourceSpans>) -> Result<(), Refusal> {
        let in_use = self.tracker.in_use() as u64;
        let rss = self.tracker.rss();
        if in_use > self.soft || (rss > self.hard && in_use > self.hard / RSS_GATE_DIVISOR) {
            return Err(Refusal::MemoryLimit {
                retry_after: self.retry_after,
                detail: format!(
                    "memory limit reached (pipeline data {} MiB / soft limit {} MiB, process RSS {} MiB / limit {} MiB)",
                    in_use >> 20,
                    self.soft >> 20,
                    rss >> 20,
                    self.hard >> 20
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(tracker: &Arc<MemoryTracker>, soft: u64, hard: u64) -> MemoryLimiter {
        MemoryLimiter {
            tracker: tracker.clone(),
            soft,
            hard,
            retry_after: Duration::from_secs(1),
        }
    }

    fn refuses(lim: &MemoryLimiter) -> bool {
        matches!(
            lim.process(&mut Vec::new()),
            Err(Refusal::MemoryLimit { .. })
        )
    }

    #[test]
    fn refuses_above_the_soft_limit_and_recovers() {
        let tracker = MemoryTracker::new();
        let lim = limiter(&tracker, 1000, u64::MAX);
        assert!(lim.process(&mut Vec::new()).is_ok());
        let ticket = tracker.take(2000);
        assert!(refuses(&lim));
        drop(ticket);
        assert!(lim.process(&mut Vec::new()).is_ok());
    }

    #[test]
    fn high_rss_refuses_only_while_the_pipeline_holds_data() {
        let tracker = MemoryTracker::new();
        let lim = limiter(&tracker, u64::MAX, 16_000);
        // After a burst: RSS stays high, the pipeline is empty. Refusing would never end.
        tracker.set_rss(50_000);
        assert!(lim.process(&mut Vec::new()).is_ok());
        let ticket = tracker.take(2_000);
        assert!(refuses(&lim));
        drop(ticket);
        tracker.set_rss(10_000);
        let _ticket = tracker.take(2_000);
        assert!(lim.process(&mut Vec::new()).is_ok(), "RSS under the limit");
    }

    #[test]
    fn spike_defaults_to_a_fifth() {
        let c = MemoryLimiterConfig {
            limit_mib: 100,
            spike_limit_mib: None,
            check_interval: default_check_interval(),
            retry_after: default_retry_after(),
        };
        assert_eq!(c.soft_limit_bytes(), 80 * 1024 * 1024);
    }
}
