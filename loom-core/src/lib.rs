//! Loom runtime core: the wire types, the Envelope codec for W3C trace context, and the in-process bus.
//!
//! Without the default `runtime` feature only [`proto`] (messages), [`envelope`] (the codec) and
//! [`sampler_spec`] (the sampler-variable parser) are built; that is what the Python extension
//! and the sidecar link.

/// Generated `loom.v1` wire types, and with `runtime` the `Bridge` gRPC client and server.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/loom.v1.rs"));
}

pub mod envelope;
pub mod sampler_spec;

#[cfg(feature = "runtime")]
pub mod action_broker;
#[cfg(feature = "runtime")]
pub mod event_bus;
#[cfg(feature = "runtime")]
pub mod flow;
#[cfg(feature = "runtime")]
pub mod telemetry;
#[cfg(feature = "runtime")]
mod trace_util;

pub use envelope::Envelope;
