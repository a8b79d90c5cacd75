//! Receivers: where spans enter. They decode, hand the request to their pipelines through a
//! [`Consumer`](crate::component::Consumer), and map refusals to retryable protocol answers
//! with retry hints.

pub mod auth;
pub mod otlp;
pub mod tls;

pub use crate::component::receiver::{
    Consumer, ListenError, Listening, ReceiverCtx, ReceiverSpec, Started,
};
use crate::component::Factory;

/// Every receiver type, by YAML name.
pub const FACTORIES: &[Factory<dyn ReceiverSpec>] = &[otlp::FACTORY];
