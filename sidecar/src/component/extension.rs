//! The extension contract (things beside the pipelines) and the lifecycle state they report.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{BoxFuture, ListenError, Started};
use crate::config::ComponentId;

/// The sidecar's lifecycle state as health checks report it.
#[derive(Debug, Default)]
pub struct Health(AtomicU8);

impl Health {
    pub const STARTING: u8 = 0;
    pub const READY: u8 = 1;
    pub const DRAINING: u8 = 2;

    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    pub fn set(&self, s: u8) {
        self.0.store(s, Ordering::Release);
    }

    pub fn get(&self) -> u8 {
        self.0.load(Ordering::Acquire)
    }
}

pub struct ExtensionCtx {
    pub health: Arc<Health>,
    pub shutdown: CancellationToken,
}

pub trait ExtensionSpec: Send + Sync {
    fn start(
        &self,
        id: &ComponentId,
        ctx: ExtensionCtx,
    ) -> BoxFuture<'static, Result<Started, ListenError>>;
}
