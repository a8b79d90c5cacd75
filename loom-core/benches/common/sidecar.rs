//! A loom-sidecar process for the benches' real-export rows (included by path from
//! `loom-core/benches/event_bus.rs` and `loom-bridge/benches/bridge.rs`).

/// A release loom-sidecar on a free loopback port (debug exporter, output discarded), or None
/// when it is not built.
pub fn start(dir: &std::path::Path) -> Option<(std::process::Child, String)> {
    use std::io::BufRead as _;
    let bin =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/loom-sidecar");
    if !bin.is_file() {
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let cfg = dir.join("sidecar.yaml");
    std::fs::write(
        &cfg,
        format!(
            "receivers: {{ otlp: {{ protocols: {{ grpc: {{ endpoint: \"127.0.0.1:{port}\" }} }} }} }}\n\
             processors: {{ batch: {{ send_batch_size: 1024, timeout: 200ms }} }}\n\
             exporters: {{ debug: {{ verbosity: basic }} }}\n\
             service:\n  pipelines: {{ traces: {{ receivers: [otlp], processors: [batch], exporters: [debug] }} }}\n\
             \x20 telemetry: {{ metrics: {{ address: \"127.0.0.1:0\" }}, logs: {{ level: warn }} }}\n"
        ),
    )
    .ok()?;
    let mut child = std::process::Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let stdout = child.stdout.take()?;
    for line in std::io::BufReader::new(stdout).lines() {
        if line.ok()?.trim() == "ready" {
            return Some((child, format!("http://127.0.0.1:{port}")));
        }
    }
    let _ = child.kill();
    None
}
