//! Loom runtime core: the wire types, the Envelope codec for W3C trace context, and the in-process bus.

/// Generated `loom.v1` wire types and the `Bridge` gRPC service (client and server).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("loom.v1");
}
