//! Loom Bridge: joins remote agents (Python first) to the EventBus and ActionBroker over gRPC.
//!
//! [`Bridge`] owns the bus, the broker and the agent registry; [`serve`] runs the gRPC service,
//! the heartbeat reaper and the dashboard until a shutdown signal.
//!
//! Modules: [`bridge`] (the state handle), `registry` (the agent map and its operations),
//! [`service`] (the gRPC RPCs, stream loops and remote action provider), [`config`] (settings
//! and limits), [`auth`] (bearer tokens and their rules), [`tls`] (TLS / mTLS), [`dashboard`].

pub mod auth;
pub mod bridge;
pub mod config;
pub mod dashboard;
mod registry;
pub mod service;
pub mod tls;

use std::future::Future;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

pub use bridge::{Bridge, BridgeStats};
pub use config::BridgeConfig;
pub use registry::AgentInfo;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("dashboard server failed: {0}")]
    Dashboard(std::io::Error),
}

/// Serves `bridge` on `listener` (and the dashboard on `dashboard`, if given) until `shutdown`
/// completes; then closes every agent stream and waits for the servers to finish.
pub async fn serve(
    bridge: Bridge,
    listener: TcpListener,
    dashboard: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let reaper = tokio::spawn(bridge.clone().run_reaper());
    let stop = tokio_util::sync::CancellationToken::new();

    let dash = dashboard.map(|l| {
        let router = dashboard::router(bridge.clone(), stop.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            axum::serve(l, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    });

    let grpc_stop = stop.clone();
    let b = bridge.clone();
    let grace = bridge.config().shutdown_grace;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &bridge.config().tls {
        // Built in one workspace with the sidecar, rustls may see more than one provider and
        // then picks none: name ring (tonic's `tls-ring`) once for the process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        builder = builder.tls_config(tls.tonic())?;
    }
    let grpc = builder
        .add_service(bridge.service())
        // Deliveries are small frames on long-lived streams: with Nagle on, each one after the first
        // waits for the agent's delayed ACK (~40 ms on Linux) before it leaves.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                shutdown.await;
                // Streams are long-lived: end them, or graceful shutdown would wait forever.
                b.shutdown();
                grpc_stop.cancel();
            },
        );
    tokio::pin!(grpc);
    let result = tokio::select! {
        r = &mut grpc => r,
        _ = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "agents did not drain their streams in time: stopping anyway");
            Ok(())
        }
    };
    stop.cancel();
    bridge.shutdown();
    reaper.abort();
    if let Some(d) = dash {
        if let Ok(Err(e)) = d.await {
            return Err(ServeError::Dashboard(e));
        }
    }
    result.map_err(ServeError::from)
}
