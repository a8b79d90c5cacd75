//! Extensions: things beside the pipelines (health checks).

pub mod health_check;

pub use crate::component::extension::{ExtensionCtx, ExtensionSpec, Health};
use crate::component::Factory;

/// Every extension type, by YAML name.
pub const FACTORIES: &[Factory<dyn ExtensionSpec>] = &[health_check::FACTORY];
