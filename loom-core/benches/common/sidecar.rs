//! A loom-sidecar process for the benches' real-export rows (included by path from
//! `loom-core/benches/event_bus.rs` and `loom-bridge/benches/bridge.rs`).
//!
//! The sidecar forwards what it receives with its otlp exporter to `nullbackend`, as a
//! deployment forwards to a backend; `nullbackend` counts spans by walking the wire format, so
//! the stand-in backend costs little on the machine's shared cores (the debug exporter would
//! format every span there).

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

/// The running sidecar and its backend; both are stopped when dropped.
pub struct Sidecar {
    procs: Vec<Child>,
    /// The sidecar's OTLP/gRPC endpoint.
    pub endpoint: String,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

fn release_bin(name: &str) -> Option<std::path::PathBuf> {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/release")
        .join(name);
    bin.is_file().then_some(bin)
}

/// The lines a process prints up to `ready`; its stdout is then drained by a thread (a full
/// pipe would stall it).
fn wait_ready(stdout: ChildStdout) -> Option<Vec<String>> {
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.ok()?;
        if line.trim() == "ready" {
            std::thread::spawn(move || lines.for_each(drop));
            return Some(seen);
        }
        seen.push(line);
    }
    None
}

/// A release loom-sidecar on a free loopback port forwarding to a release `nullbackend`, or
/// None when either is not built (`cargo build --release -p loom-sidecar`).
pub fn start(dir: &Path) -> Option<Sidecar> {
    let mut sidecar = Sidecar {
        procs: Vec::new(),
        endpoint: String::new(),
    };
    let mut backend = Command::new(release_bin("nullbackend")?)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let out = backend.stdout.take();
    sidecar.procs.push(backend);
    let backend_addr = wait_ready(out?)?.iter().find_map(|l| {
        l.strip_prefix("listening nullbackend grpc ")
            .map(str::to_owned)
    })?;
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
             exporters: {{ otlp/backend: {{ endpoint: \"http://{backend_addr}\", compression: none }} }}\n\
             service:\n  pipelines: {{ traces: {{ receivers: [otlp], processors: [batch], exporters: [otlp/backend] }} }}\n\
             \x20 telemetry: {{ metrics: {{ address: \"127.0.0.1:0\" }}, logs: {{ level: warn }} }}\n"
        ),
    )
    .ok()?;
    let mut child = Command::new(release_bin("loom-sidecar")?)
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let out = child.stdout.take();
    sidecar.procs.push(child);
    wait_ready(out?)?;
    sidecar.endpoint = format!("http://127.0.0.1:{port}");
    Some(sidecar)
}
