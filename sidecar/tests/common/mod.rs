//! Starts the real loom-sidecar binary for integration tests and reads back its listeners;
//! a capture backend for it to export to.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// A running sidecar, killed when dropped.
#[allow(dead_code)] // not every test binary starts one
pub struct Sidecar {
    child: Child,
    /// `component/kind` → address, from its `listening <component> <kind> <addr>` lines.
    addrs: Vec<(String, String)>,
}

#[allow(dead_code)]
impl Sidecar {
    /// Writes `config` into `dir`, starts the binary on it and waits for its `ready` line.
    /// The sidecar's stderr goes to `stderr` (its logs).
    pub fn start(config: &str, dir: &Path, stderr: Stdio) -> Sidecar {
        let path = dir.join("sidecar.yaml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_loom-sidecar"))
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start loom-sidecar");
        let mut addrs = Vec::new();
        let stdout = child.stdout.take().unwrap();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("listening ") {
                let mut parts = rest.split(' ');
                if let (Some(c), Some(k), Some(a)) = (parts.next(), parts.next(), parts.next()) {
                    addrs.push((format!("{c}/{k}"), a.to_owned()));
                }
            }
            if line == "ready" {
                break;
            }
        }
        Sidecar { child, addrs }
    }

    /// The address of a listener, e.g. `otlp/grpc` or `metrics/http`.
    pub fn addr(&self, what: &str) -> String {
        self.addrs
            .iter()
            .find(|(k, _)| k == what)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {what} listener in {:?}", self.addrs))
    }
}

impl Sidecar {
    /// The process id, to signal it (SIGHUP reloads).
    #[allow(dead_code)] // Only the reload tests signal the sidecar.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a config file `name` into `dir`; its path.
#[allow(dead_code)] // not every test binary writes one
pub fn config_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `loom-sidecar <subcommand> --config <config>` (validate, print-config) to completion.
#[allow(dead_code)] // not every test binary runs the CLI
pub fn sidecar_cli(subcommand: &str, config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loom-sidecar"))
        .args([subcommand, "--config"])
        .arg(config)
        .output()
        .expect("run loom-sidecar")
}

/// An OTLP/gRPC backend (the official proto service) that hands each request it receives to
/// its closure, then answers success.
#[allow(dead_code)] // not every test binary exports
pub struct Capture<F>(pub F);

#[tonic::async_trait]
impl<F> TraceService for Capture<F>
where
    F: Fn(ExportTraceServiceRequest) + Send + Sync + 'static,
{
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        (self.0)(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves a [`Capture`] in plaintext on `addr` (`127.0.0.1:0`: any free port); its `host:port`.
#[allow(dead_code)]
pub async fn serve_capture<F>(addr: &str, on_request: F) -> String
where
    F: Fn(ExportTraceServiceRequest) + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Capture(on_request)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    addr.to_string()
}
