//! `nullbackend`: a null OTLP/gRPC trace backend for benchmarks. It accepts
//! `TraceService/Export` on a loopback address, counts requests, spans and bytes, and with
//! `--verify MANIFEST` checks that every span arrived intact against the template written by
//! `loadgen manifest` (or `loadgen send --verify`).
//!
//! Counting does not decode: it walks the protobuf wire format, so the backend stays cheap next
//! to the process under test. Counts go to `--stats-file` (JSON, rewritten every `--stats-interval`) and,
//! on SIGTERM/SIGINT, to stdout as one JSON line.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::{Buf, Bytes};
use clap::Parser;
use common::for_each_span;
use loom_sidecar::model::otlp::{EXPORT_PATH, TRACE_SERVICE};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;
use prost::Message as _;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder};
use tonic::codegen::{http, BoxFuture, Context, Poll, Service, StdError};
use tonic::server::{NamedService, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic::Status;

/// Resource keys the sidecar's `enrich` processor may add; anything else extra is corruption.
const ENRICH_RESOURCE_KEYS: [&str; 4] = [
    "host.name",
    "k8s.node.name",
    "k8s.pod.name",
    "k8s.namespace.name",
];

#[derive(Debug, Parser)]
#[command(
    name = "nullbackend",
    about = "Null OTLP/gRPC trace backend: counts (and optionally verifies) spans"
)]
struct Cli {
    /// Loopback address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:4319")]
    listen: SocketAddr,
    /// JSON counts, rewritten every `--stats-interval` and at exit.
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// How often the stats file is rewritten (`loadgen --max-pending` paces itself on it).
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    stats_interval: Duration,
    /// Template request from `loadgen manifest`: check every span against it. Read at start if
    /// present, else at the first request (so `loadgen send --verify` may write it).
    #[arg(long)]
    verify: Option<PathBuf>,
    /// Largest request accepted, after decompression.
    #[arg(long, default_value_t = 1024)]
    max_recv_mib: usize,
    /// Runtime threads; 1 keeps the backend to one core next to the process under test.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

// ---------------------------------------------------------------------------------------------
// Counting without decoding

/// Spans in an encoded ExportTraceServiceRequest.
fn count_spans(buf: &[u8]) -> Result<u64> {
    let mut n = 0u64;
    for_each_span(buf, |_, _| {
        n += 1;
        Ok(())
    })?;
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Verification against the generator's template

/// The template request (request number 0) of `loadgen`: one resource, one scope, N spans.
struct Manifest {
    seed: u64,
    resource: Option<Resource>,
    resource_schema_url: String,
    scope: Option<InstrumentationScope>,
    scope_schema_url: String,
    spans: Vec<Span>,
}

impl Manifest {
    fn load(path: &Path) -> Result<Manifest> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut req = ExportTraceServiceRequest::decode(bytes.as_slice())
            .with_context(|| format!("{} is not an ExportTraceServiceRequest", path.display()))?;
        if req.resource_spans.len() != 1 || req.resource_spans[0].scope_spans.len() != 1 {
            bail!(
                "{}: expected one resource with one scope (a loadgen manifest)",
                path.display()
            );
        }
        let mut rs = req.resource_spans.remove(0);
        let ss = rs.scope_spans.remove(0);
        let first = ss
            .spans
            .first()
            .ok_or_else(|| anyhow!("{}: the template has no spans", path.display()))?;
        let seed = id_u64(&first.trace_id, 0)
            .ok_or_else(|| anyhow!("{}: template trace id is not 16 bytes", path.display()))?;
        Ok(Manifest {
            seed,
            resource: rs.resource,
            resource_schema_url: rs.schema_url,
            scope: ss.scope,
            scope_schema_url: ss.schema_url,
            spans: ss.spans,
        })
    }
}

/// Big-endian u64 at `at` of an id of the expected length (16 for trace ids, 8 for span ids).
fn id_u64(id: &[u8], at: usize) -> Option<u64> {
    id.get(at..at + 8)?.try_into().ok().map(u64::from_be_bytes)
}

#[derive(Default)]
struct Verifier {
    path: PathBuf,
    manifest: Option<Manifest>,
    /// Per request number: which span indexes arrived.
    seen: HashMap<u64, Vec<u64>>,
    unique: u64,
    duplicate: u64,
    corrupt: u64,
    requests_complete: u64,
    first_error: Option<String>,
}

impl Verifier {
    fn fail(&mut self, spans: u64, msg: impl FnOnce() -> String) {
        self.corrupt += spans;
        if self.first_error.is_none() {
            self.first_error = Some(msg());
        }
    }

    fn check_request(&mut self, req: ExportTraceServiceRequest) {
        if self.manifest.is_none() {
            match Manifest::load(&self.path) {
                Ok(m) => self.manifest = Some(m),
                Err(e) => {
                    let n = req
                        .resource_spans
                        .iter()
                        .flat_map(|r| &r.scope_spans)
                        .map(|s| s.spans.len() as u64)
                        .sum();
                    return self.fail(n, || format!("cannot verify: {e:#}"));
                }
            }
        }
        for rs in req.resource_spans {
            let n: u64 = rs.scope_spans.iter().map(|s| s.spans.len() as u64).sum();
            if let Err(e) = self.check_resource(rs.resource.as_ref(), &rs.schema_url) {
                self.fail(n, || e.to_string());
                continue;
            }
            for ss in rs.scope_spans {
                let m = self.manifest.as_ref().expect("loaded above");
                if ss.scope != m.scope || ss.schema_url != m.scope_schema_url {
                    let n = ss.spans.len() as u64;
                    self.fail(n, || {
                        "instrumentation scope differs from the template".into()
                    });
                    continue;
                }
                for span in ss.spans {
                    self.check_span(span);
                }
            }
        }
    }

    /// The template's resource attributes, in order, then only what `enrich` may add.
    fn check_resource(&self, got: Option<&Resource>, schema_url: &str) -> Result<()> {
        let m = self.manifest.as_ref().expect("manifest loaded");
        if schema_url != m.resource_schema_url {
            bail!("resource schema_url {schema_url:?} differs");
        }
        let want = m.resource.clone().unwrap_or_default();
        let got = got.cloned().unwrap_or_default();
        if got.attributes.len() < want.attributes.len()
            || got.attributes[..want.attributes.len()] != want.attributes[..]
            || got.dropped_attributes_count != want.dropped_attributes_count
        {
            bail!("resource attributes differ from the template");
        }
        if let Some(extra) = got.attributes[want.attributes.len()..]
            .iter()
            .find(|kv| !ENRICH_RESOURCE_KEYS.contains(&kv.key.as_str()))
        {
            bail!(
                "resource has an attribute the generator did not make: {}",
                extra.key
            );
        }
        Ok(())
    }

    fn check_span(&mut self, span: Span) {
        let (n, index) = match self.match_template(span) {
            Ok(v) => v,
            Err(e) => return self.fail(1, || e.to_string()),
        };
        let spr = self.manifest.as_ref().map_or(0, |m| m.spans.len() as u64);
        let bits = self
            .seen
            .entry(n)
            .or_insert_with(|| vec![0; spr.div_ceil(64) as usize]);
        let (w, b) = ((index / 64) as usize, 1u64 << (index % 64));
        if bits[w] & b != 0 {
            self.duplicate += 1;
            return;
        }
        bits[w] |= b;
        self.unique += 1;
        if bits.iter().map(|w| u64::from(w.count_ones())).sum::<u64>() == spr {
            self.requests_complete += 1;
        }
    }

    /// The span's request number and index, if it is exactly what the generator made for them.
    fn match_template(&self, mut span: Span) -> Result<(u64, u64)> {
        let m = self
            .manifest
            .as_ref()
            .ok_or_else(|| anyhow!("no manifest loaded"))?;
        let spr = m.spans.len() as u64;
        let (seed, n) = match (id_u64(&span.trace_id, 0), id_u64(&span.trace_id, 8)) {
            (Some(s), Some(n)) if span.trace_id.len() == 16 => (s, n),
            _ => bail!("a trace id is not 16 bytes"),
        };
        let sid = match id_u64(&span.span_id, 0) {
            Some(v) if span.span_id.len() == 8 => v,
            _ => bail!("a span id is not 8 bytes"),
        };
        let index = (sid & 0xff_ffff).wrapping_sub(1);
        if seed != m.seed || n == 0 || sid >> 24 != n || index >= spr {
            bail!(
                "span {} / {}: ids were not made by the generator (seed {}, request {n})",
                hex(&span.trace_id),
                hex(&span.span_id),
                m.seed
            );
        }
        let want = &m.spans[index as usize];
        // Ids of request n are the template's (request 0) with n in their high bits.
        let parent_ok = match id_u64(&want.parent_span_id, 0) {
            None => span.parent_span_id == want.parent_span_id,
            Some(p) => {
                span.parent_span_id.len() == 8
                    && id_u64(&span.parent_span_id, 0) == Some(p | (n << 24))
            }
        };
        if !parent_ok {
            bail!(
                "span {}: parent {} is not the generator's",
                hex(&span.span_id),
                hex(&span.parent_span_id)
            );
        }
        // Put the template's ids back; then the whole span must equal the template's.
        span.trace_id.clone_from(&want.trace_id);
        span.span_id.clone_from(&want.span_id);
        span.parent_span_id.clone_from(&want.parent_span_id);
        if span != *want {
            bail!(
                "request {n} span {index}: {} differs from what the generator sent",
                first_difference(&span, want)
            );
        }
        Ok((n, index))
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "manifest": self.path.display().to_string(),
            "unique_spans": self.unique,
            "duplicate_spans": self.duplicate,
            "corrupt_spans": self.corrupt,
            "requests_seen": self.seen.len(),
            "requests_complete": self.requests_complete,
            "requests_incomplete": self.seen.len() as u64 - self.requests_complete,
            "first_error": self.first_error,
        })
    }
}

/// Names the first field that differs, for a useful error message.
fn first_difference(got: &Span, want: &Span) -> &'static str {
    if got.name != want.name {
        "name"
    } else if got.kind != want.kind {
        "kind"
    } else if got.start_time_unix_nano != want.start_time_unix_nano
        || got.end_time_unix_nano != want.end_time_unix_nano
    {
        "a timestamp"
    } else if got.attributes != want.attributes {
        "attributes"
    } else if got.flags != want.flags {
        "flags"
    } else if got.trace_state != want.trace_state {
        "trace_state"
    } else if got.events != want.events || got.links != want.links {
        "events or links"
    } else {
        "status or a dropped-count"
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// State and stats

struct State {
    requests: AtomicU64,
    spans: AtomicU64,
    bytes: AtomicU64,
    bad_requests: AtomicU64,
    verifier: Option<Mutex<Verifier>>,
}

impl State {
    fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests.load(Ordering::Relaxed),
            "spans": self.spans.load(Ordering::Relaxed),
            "bytes": self.bytes.load(Ordering::Relaxed),
            "bad_requests": self.bad_requests.load(Ordering::Relaxed),
            "verify": self.verifier.as_ref().map(|v| v.lock().stats()),
        })
    }

    fn export(&self, body: Bytes) -> Result<(), Status> {
        let spans = count_spans(&body).map_err(|e| {
            self.bad_requests.fetch_add(1, Ordering::Relaxed);
            Status::invalid_argument(format!("malformed ExportTraceServiceRequest: {e}"))
        })?;
        if let Some(v) = &self.verifier {
            // Only verification decodes; counting alone stays a wire walk.
            let req = ExportTraceServiceRequest::decode(body.clone()).map_err(|e| {
                self.bad_requests.fetch_add(1, Ordering::Relaxed);
                Status::invalid_argument(format!("undecodable ExportTraceServiceRequest: {e}"))
            })?;
            v.lock().check_request(req);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.spans.fetch_add(spans, Ordering::Relaxed);
        self.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

fn write_stats(path: &Path, stats: &serde_json::Value) -> Result<()> {
    common::write_atomically(path, format!("{stats}\n").as_bytes())
}

// ---------------------------------------------------------------------------------------------
// The gRPC service, by hand: the generated server would prost-decode every request.

/// Takes the request as raw bytes; answers with an empty ExportTraceServiceResponse.
#[derive(Debug, Clone, Copy, Default)]
struct RawRequestCodec;

struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

impl Codec for RawRequestCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = tonic_prost::ProstEncoder<ExportTraceServiceResponse>;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

struct ExportMethod(Arc<State>);

impl UnaryService<Bytes> for ExportMethod {
    type Response = ExportTraceServiceResponse;
    type Future = std::future::Ready<Result<tonic::Response<Self::Response>, Status>>;
    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let r = self.0.export(request.into_inner()).map(|()| {
            tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            })
        });
        std::future::ready(r)
    }
}

#[derive(Clone)]
struct NullTraceService {
    state: Arc<State>,
    max_recv: usize,
}

impl NamedService for NullTraceService {
    const NAME: &'static str = TRACE_SERVICE;
}

impl<B> Service<http::Request<B>> for NullTraceService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(async {
                Ok(Status::unimplemented("only TraceService/Export is served").into_http())
            });
        }
        let method = ExportMethod(self.state.clone());
        let max = self.max_recv;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawRequestCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(max);
            Ok(grpc.unary(method, req).await)
        })
    }
}

// ---------------------------------------------------------------------------------------------

async fn run(cli: Cli) -> Result<()> {
    if !cli.listen.ip().is_loopback() {
        bail!(
            "--listen {}: the null backend only listens on loopback (127.0.0.1 or ::1)",
            cli.listen
        );
    }
    if cli.max_recv_mib == 0 {
        bail!("--max-recv-mib must be greater than 0");
    }
    if cli.stats_interval.is_zero() {
        bail!("--stats-interval must be greater than 0");
    }
    let verifier = cli.verify.as_ref().map(|path| {
        // A manifest that exists now is read now, so a bad one fails before any load.
        let manifest = if path.exists() {
            Some(Manifest::load(path))
        } else {
            None
        };
        (path.clone(), manifest)
    });
    let verifier = match verifier {
        None => None,
        Some((path, Some(Err(e)))) => return Err(e.context(format!("--verify {}", path.display()))),
        Some((path, m)) => Some(Mutex::new(Verifier {
            path,
            manifest: m.and_then(Result::ok),
            ..Verifier::default()
        })),
    };
    let state = Arc::new(State {
        requests: AtomicU64::new(0),
        spans: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        bad_requests: AtomicU64::new(0),
        verifier,
    });
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let local = listener.local_addr().context("local address")?;

    let interval = cli.stats_interval;
    let stats_task = cli.stats_file.clone().map(|path| {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                if let Err(e) = write_stats(&path, &state.stats()) {
                    eprintln!("nullbackend: {e:#}");
                }
            }
        })
    });

    // The bench script waits for these lines (same form as loom-sidecar's).
    println!("listening nullbackend grpc {local}");
    println!("ready");

    let service = NullTraceService {
        state: state.clone(),
        max_recv: cli.max_recv_mib * 1024 * 1024,
    };
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            loom_sidecar::service::wait_for_signal(),
        )
        .await
        .context("gRPC server failed")?;

    if let Some(t) = stats_task {
        t.abort();
    }
    let stats = state.stats();
    if let Some(path) = &cli.stats_file {
        write_stats(path, &stats)?;
    }
    println!("{stats}");
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = common::runtime(cli.threads).and_then(|rt| rt.block_on(run(cli)));
    common::exit_code("nullbackend", result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

    #[test]
    fn counts_spans_without_decoding() {
        let rs = |n: usize| ResourceSpans {
            scope_spans: vec![
                ScopeSpans {
                    spans: vec![Span::default(); n],
                    ..ScopeSpans::default()
                },
                ScopeSpans {
                    spans: vec![Span::default(); 1],
                    ..ScopeSpans::default()
                },
            ],
            ..ResourceSpans::default()
        };
        let req = ExportTraceServiceRequest {
            resource_spans: vec![rs(3), rs(0)],
        };
        assert_eq!(count_spans(&req.encode_to_vec()).unwrap(), 5);
        assert!(count_spans(&[0x0a, 0x05, 0x01]).is_err());
    }
}
