//! TLS end to end with certificates made in the test (rcgen): clients → sidecar receivers
//! (gRPC with mutual TLS, HTTP with TLS) → sidecar `otlp` exporter over TLS → a TLS backend.
//! The round trip works with the right CA; a client trusting another CA, a client without a
//! certificate (mTLS), plaintext to a TLS port, and an exporter trusting another CA are refused.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use loom_test_pki::{ca, leaf, tls_channel, ExtendedKeyUsagePurpose};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use tokio::sync::mpsc;
use tonic::transport::{Identity, ServerTlsConfig};

mod common;
use common::{config_file, sidecar_cli, Capture, Sidecar};

struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    ca_pem: String,
    other_ca_pem: String,
    server_pem: (String, String),
    client_pem: (String, String),
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let root = ca("loom test CA");
    let other = ca("some other CA");
    let server_pem = leaf(
        &root,
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let client_pem = leaf(&root, &["agent-1"], ExtendedKeyUsagePurpose::ClientAuth);
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", &root.pem()),
        other_ca: write("other-ca.pem", &other.pem()),
        server_cert: write("server.pem", &server_pem.0),
        server_key: write("server-key.pem", &server_pem.1),
        ca_pem: root.pem(),
        other_ca_pem: other.pem(),
        server_pem,
        client_pem,
        _dir: dir,
    }
}

fn spans(name: &str, n: usize) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (0..n)
                    .map(|i| Span {
                        trace_id: vec![7; 16],
                        span_id: vec![i as u8 + 1; 8],
                        name: format!("{name}-{i}"),
                        ..Span::default()
                    })
                    .collect(),
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

async fn grpc_export(
    addr: &str,
    ca: &str,
    identity: Option<&(String, String)>,
    req: ExportTraceServiceRequest,
) -> Result<(), String> {
    let channel = tls_channel(addr, ca, identity).await?;
    TraceServiceClient::new(channel)
        .export(req)
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

async fn http_export(url: &str, ca: &str) -> Result<u16, String> {
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    client
        .post(url)
        .header("content-type", "application/x-protobuf")
        .body(spans("http", 1).encode_to_vec())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

async fn metric(addr: &str, line_prefix: &str) -> u64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(line_prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_round_trip_with_mtls_and_every_wrong_party_refused() {
    loom_sidecar::service::install_crypto_provider();
    let pki = pki();

    // The TLS backend the sidecar exports to.
    let (tx, mut received) = mpsc::channel(1000);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_port = listener.local_addr().unwrap().port();
    let server = tonic::transport::Server::builder()
        .tls_config(
            ServerTlsConfig::new()
                .identity(Identity::from_pem(&pki.server_pem.0, &pki.server_pem.1)),
        )
        .unwrap()
        .add_service(
            TraceServiceServer::new(Capture(move |req| {
                let _ = tx.try_send(req);
            }))
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
        )
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    let backend = tokio::spawn(server);

    let dir = tempfile::tempdir().unwrap();
    let p = |p: &PathBuf| p.display().to_string();
    let sidecar = Sidecar::start(
        &format!(
            r#"
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: 127.0.0.1:0, tls: {{ cert_file: "{cert}", key_file: "{key}", client_ca_file: "{ca}" }} }}
      http: {{ endpoint: 127.0.0.1:0, tls: {{ cert_file: "{cert}", key_file: "{key}" }} }}
processors:
  batch: {{ send_batch_size: 100, timeout: 50ms }}
exporters:
  otlp/good:
    endpoint: "https://127.0.0.1:{backend_port}"
    tls: {{ ca_file: "{ca}" }}
    retry_on_failure: {{ initial_interval: 100ms, max_interval: 200ms }}
  otlp/wrongca:
    endpoint: "https://127.0.0.1:{backend_port}"
    timeout: 2s
    tls: {{ ca_file: "{other}" }}
    retry_on_failure: {{ initial_interval: 100ms, max_interval: 200ms }}
service:
  pipelines:
    traces: {{ receivers: [otlp], processors: [batch], exporters: [otlp/good, otlp/wrongca] }}
  telemetry:
    metrics: {{ address: 127.0.0.1:0 }}
    logs: {{ level: error }}
"#,
            cert = p(&pki.server_cert),
            key = p(&pki.server_key),
            ca = p(&pki.ca),
            other = p(&pki.other_ca),
        ),
        dir.path(),
        Stdio::inherit(),
    );
    let grpc = sidecar.addr("otlp/grpc");
    let http = sidecar.addr("otlp/http");
    let metrics = sidecar.addr("metrics/http");

    let mtls_ok = grpc_export(&grpc, &pki.ca_pem, Some(&pki.client_pem), spans("grpc", 3)).await;
    let no_client_cert = grpc_export(&grpc, &pki.ca_pem, None, spans("nocert", 1)).await;
    let wrong_ca = grpc_export(
        &grpc,
        &pki.other_ca_pem,
        Some(&pki.client_pem),
        spans("wrongca", 1),
    )
    .await;
    let http_ok = http_export(&format!("https://{http}/v1/traces"), &pki.ca_pem).await;
    let http_wrong_ca = http_export(&format!("https://{http}/v1/traces"), &pki.other_ca_pem).await;
    let http_plain = http_export(&format!("http://{http}/v1/traces"), &pki.ca_pem).await;

    // Only the two accepted requests (3 + 1 spans) reach the backend, through otlp/good.
    let mut names = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while names.len() < 4 && Instant::now() < deadline {
        if let Ok(Some(req)) =
            tokio::time::timeout(Duration::from_millis(200), received.recv()).await
        {
            for rs in req.resource_spans {
                for ss in rs.scope_spans {
                    names.extend(ss.spans.into_iter().map(|s| s.name));
                }
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut wrong_retries = 0;
    while wrong_retries == 0 && Instant::now() < deadline {
        wrong_retries = metric(
            &metrics,
            "loom_sidecar_exporter_retries_total{exporter=\"otlp/wrongca\"}",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let good_sent = metric(
        &metrics,
        "loom_sidecar_exporter_sent_spans_total{exporter=\"otlp/good\"}",
    )
    .await;
    let wrong_sent = metric(
        &metrics,
        "loom_sidecar_exporter_sent_spans_total{exporter=\"otlp/wrongca\"}",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let extra = received.try_recv().is_ok();
    names.sort();
    println!("gRPC mTLS with the CA's client cert: {mtls_ok:?}");
    println!("gRPC without a client cert: {no_client_cert:?}");
    println!("gRPC trusting another CA: {wrong_ca:?}");
    println!("HTTPS with the CA: {http_ok:?}; trusting another CA: {http_wrong_ca:?}; plaintext to the TLS port: {http_plain:?}");
    println!("backend (TLS) received {names:?}; exporter otlp/good sent={good_sent}; otlp/wrongca sent={wrong_sent} retries={wrong_retries}");
    assert!(mtls_ok.is_ok());
    assert!(no_client_cert.is_err());
    assert!(wrong_ca.is_err());
    assert_eq!(http_ok, Ok(200));
    assert!(http_wrong_ca.is_err());
    assert!(http_plain.is_err() || http_plain.as_ref().is_ok_and(|s| *s != 200));
    assert_eq!(names, ["grpc-0", "grpc-1", "grpc-2", "http-0"]);
    assert!(!extra, "nothing else reached the backend");
    assert_eq!(good_sent, 4);
    assert_eq!(wrong_sent, 0);
    assert!(
        wrong_retries > 0,
        "the exporter that trusts another CA fails its handshake (retryable)"
    );
    backend.abort();
}

#[test]
fn bad_tls_files_fail_validation_with_their_yaml_path() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let cases = [
        (
            format!(
                "cert_file: \"{}\", key_file: \"{}\"",
                garbage.display(),
                pki.server_key.display()
            ),
            "receivers.otlp.protocols.grpc.tls.cert_file:",
        ),
        (
            format!(
                "cert_file: \"{}\", key_file: \"{}\"",
                pki.server_cert.display(),
                garbage.display()
            ),
            "receivers.otlp.protocols.grpc.tls.key_file:",
        ),
        (
            format!(
                "cert_file: \"{}\", key_file: \"{}\", client_ca_file: /nonexistent/ca.pem",
                pki.server_cert.display(),
                pki.server_key.display()
            ),
            "receivers.otlp.protocols.grpc.tls.client_ca_file: cannot read",
        ),
    ];
    for (tls, want) in cases {
        let yaml = format!(
            "receivers:\n  otlp:\n    protocols:\n      grpc: {{ endpoint: 127.0.0.1:0, tls: {{ {tls} }} }}\nexporters:\n  debug: {{}}\nservice:\n  pipelines:\n    traces: {{ receivers: [otlp], exporters: [debug] }}\n"
        );
        let cfg = config_file(dir.path(), "c.yaml", &yaml);
        let out = sidecar_cli("validate", &cfg);
        let err = String::from_utf8_lossy(&out.stderr);
        println!("validate → exit {:?}: {}", out.status.code(), err.trim());
        assert_eq!(out.status.code(), Some(1));
        assert!(err.contains(want), "want {want:?} in {err}");
    }
}
