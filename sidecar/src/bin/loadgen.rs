//! `loadgen`: OTLP trace load generator for benchmarking loom-sidecar (`send`), the in-process
//! cost floor the sidecar is compared against (`limit`), and the template file that
//! `nullbackend --verify` checks deliveries against (`manifest`).
//!
//! Each shape is encoded once into a template request. A request on the wire is that template
//! with fresh ids written at fixed byte offsets, so generating one costs a memcpy, and every
//! span id of a run is unique. Ids derive from `--seed` and the request number `n` (from 1):
//!
//! - `trace_id` = seed (8 bytes, big endian) ‖ n (8 bytes, big endian): one trace per request;
//! - `span_id`  = n (40 bits) ‖ index in the request + 1 (24 bits); parents are patched alike.
//!
//! The template itself is request 0, which is what `manifest` writes: a receiver that knows the
//! template can recompute every span it should get from the span's own ids.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use common::{for_each_len_field, for_each_span, write_atomically};
use loom_sidecar::exporters::encoded::ExportCodec;
use loom_sidecar::model::otlp::EXPORT_PATH;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use tonic_types::StatusExt as _;

/// Fixed start time of every generated span, so `manifest` and `send` produce byte-identical
/// templates for the same arguments (2025-06-15T14:40:00Z).
const BASE_TIME_NS: u64 = 1_750_000_000_000_000_000;

/// The span index takes the low 24 bits of a span id; the request number the high 40.
const MAX_SPANS_PER_REQUEST: usize = (1 << 24) - 2;
const MAX_REQUEST_NUMBER: u64 = (1 << 40) - 1;

/// Length of each string value of the `large` shape.
const LARGE_VALUE_LEN: usize = 5 * 1024;

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "OTLP trace load generator for loom-sidecar benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send OTLP trace requests to an endpoint and report sent / acknowledged / refused counts.
    Send(SendArgs),
    /// In-process cost floor on one thread: prost decode + add two attributes per span + encode
    /// of the same requests `send` would send.
    Limit(LimitArgs),
    /// Write the template request (request 0) for `nullbackend --verify`.
    Manifest(ManifestArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Shape {
    /// OpenTelemetry Collector testbed span: name, kind CLIENT, two int attributes.
    Testbed,
    /// A Loom hop chain (docs/contracts.md §5): 10 loom.* / messaging.* attributes, 8 resource attributes.
    Loom,
    /// 20 attributes of 5 KiB string values each.
    Large,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// OTLP/gRPC `TraceService/Export`.
    Grpc,
    /// OTLP/HTTP `POST /v1/traces` with `application/x-protobuf`.
    Http,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http",
        }
    }
}

/// What the requests look like; the same arguments always give the same template.
#[derive(Debug, Clone, Args)]
struct ShapeArgs {
    #[arg(long, value_enum, default_value_t = Shape::Testbed)]
    shape: Shape,
    #[arg(long, default_value_t = 100)]
    spans_per_request: usize,
    /// Goes into the high half of every trace id, so runs with different seeds never collide.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, Args)]
struct SendArgs {
    #[command(flatten)]
    shape: ShapeArgs,
    /// Receiver address; default http://127.0.0.1:4317 (grpc) or http://127.0.0.1:4318 (http).
    /// For http, a bare base URL gets `/v1/traces` appended.
    #[arg(long)]
    endpoint: Option<String>,
    #[arg(long, value_enum, default_value_t = Protocol::Grpc)]
    protocol: Protocol,
    /// Target spans per second over all connections; 0 sends as fast as acknowledgements come.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// How long to send, e.g. `10s`, `500ms`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Connections, each with one request in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Runtime threads of the generator; 1 keeps it to one core next to the sidecar.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Also write the template request to this file (as `manifest` does) before sending, for
    /// `nullbackend --verify`. Ids are unique and seed-derived with or without this flag.
    #[arg(long)]
    verify: Option<PathBuf>,
    /// Pause after a refusal (the sidecar's retry hint is seconds; a benchmark keeps pushing).
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    refused_pause: Duration,
    /// End-to-end window: hold back while this many sent spans have not reached the backend
    /// (read from `--delivered-from`). A receiver acknowledges on enqueue, so without a window
    /// an unthrottled run measures a growing backlog instead of sustained throughput.
    #[arg(long, requires = "delivered_from")]
    max_pending: Option<u64>,
    /// JSON file with the backend's delivered span count under `"spans"`
    /// (`nullbackend --stats-file`).
    #[arg(long, requires = "max_pending")]
    delivered_from: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct LimitArgs {
    #[command(flatten)]
    shape: ShapeArgs,
    /// How long to loop (at least 3 requests are processed).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// What prost decodes from.
    #[arg(long, value_enum, default_value_t = DecodeFrom::Slice)]
    decode_from: DecodeFrom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DecodeFrom {
    /// A contiguous `&[u8]`, as the sidecar's HTTP receiver decodes.
    Slice,
    /// A `BytesMut` (copied from the request first), as tonic's `DecodeBuf` hands it to prost
    /// in the gRPC receiver: every bytes/string field becomes a `split_to` + refcount.
    BytesMut,
}

#[derive(Debug, Args)]
struct ManifestArgs {
    #[command(flatten)]
    shape: ShapeArgs,
    /// Where to write the encoded template `ExportTraceServiceRequest`.
    #[arg(long)]
    out: PathBuf,
}

// ---------------------------------------------------------------------------------------------
// Shapes

fn str_kv(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

fn int_kv(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..KeyValue::default()
    }
}

fn trace_id(seed: u64, request: u64) -> Vec<u8> {
    let mut id = Vec::with_capacity(16);
    id.extend_from_slice(&seed.to_be_bytes());
    id.extend_from_slice(&request.to_be_bytes());
    id
}

fn span_id(request: u64, index: usize) -> Vec<u8> {
    ((request << 24) | (index as u64 + 1))
        .to_be_bytes()
        .to_vec()
}

/// A UUID-formatted string made from two numbers: realistic length, reproducible content.
fn uuidish(a: u64, b: u64) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (a >> 32) as u32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) & 0xfff,
        b & 0xffff_ffff_ffff
    )
}

/// Reproducible incompressible-looking text (xorshift64*), so sizes are honest if compressed.
fn pseudo_text(mut state: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    state = state.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            ALPHABET[(r >> 58) as usize % ALPHABET.len()] as char
        })
        .collect()
}

/// One hop of a Loom request, in docs/contracts.md §5 order: span name, kind, messaging operation.
const LOOM_HOPS: [(&str, SpanKind, &str); 5] = [
    ("agent.emit", SpanKind::Producer, "send"),
    ("bridge.publish", SpanKind::Server, "receive"),
    ("event_bus.publish", SpanKind::Producer, "send"),
    ("bridge.forward", SpanKind::Client, "send"),
    ("agent.on_event", SpanKind::Consumer, "process"),
];

/// The template request (request number 0) of a shape: one resource, one scope, `spans` spans.
fn build_template(s: &ShapeArgs) -> ExportTraceServiceRequest {
    let n = s.spans_per_request;
    let tid = trace_id(s.seed, 0);
    let timed = |i: usize, span: Span| Span {
        trace_id: tid.clone(),
        span_id: span_id(0, i),
        // 1 µs apart, each lasting 1 ms, as the Collector testbed does.
        start_time_unix_nano: BASE_TIME_NS + i as u64 * 1_000,
        end_time_unix_nano: BASE_TIME_NS + i as u64 * 1_000 + 1_000_000,
        ..span
    };
    let (resource, scope, spans) = match s.shape {
        Shape::Testbed => {
            let spans = (0..n)
                .map(|i| {
                    timed(
                        i,
                        Span {
                            name: format!("load-generator-span{}", i + 1),
                            kind: SpanKind::Client as i32,
                            attributes: vec![
                                int_kv("load_generator.span_seq_num", i as i64 + 1),
                                // The testbed numbers traces; templates are shared by all
                                // requests, so the trace number is the constant 1.
                                int_kv("load_generator.trace_seq_num", 1),
                            ],
                            ..Span::default()
                        },
                    )
                })
                .collect();
            (Resource::default(), None, spans)
        }
        Shape::Loom => {
            let agent = "sensor-7";
            let topic = "sensor.temperature.kitchen";
            let resource = Resource {
                attributes: vec![
                    str_kv("service.name", format!("agent-{agent}")),
                    str_kv("service.instance.id", uuidish(s.seed, 0x51de)),
                    str_kv("service.version", "0.1.0"),
                    str_kv("loom.agent.id", agent),
                    str_kv("telemetry.sdk.name", "opentelemetry"),
                    str_kv("telemetry.sdk.language", "python"),
                    str_kv("telemetry.sdk.version", "1.36.0"),
                    int_kv("process.pid", 4242),
                ],
                ..Resource::default()
            };
            let scope = InstrumentationScope {
                name: "loom".into(),
                version: "0.1.0".into(),
                ..InstrumentationScope::default()
            };
            let spans = (0..n)
                .map(|i| {
                    let (name, kind, op) = LOOM_HOPS[i % LOOM_HOPS.len()];
                    // A new event every full hop chain, as one emit → deliver cycle.
                    let event = (i / LOOM_HOPS.len()) as u64;
                    let event_id = uuidish(s.seed ^ 0xe7e7, event);
                    timed(
                        i,
                        Span {
                            // A chain: each span's parent is the one before it (docs/contracts.md §1).
                            parent_span_id: if i == 0 {
                                Vec::new()
                            } else {
                                span_id(0, i - 1)
                            },
                            // Sampled, with the is-remote bit known (OTLP Span.flags).
                            flags: 0x101,
                            name: name.into(),
                            kind: kind as i32,
                            attributes: vec![
                                str_kv("loom.agent.id", agent),
                                str_kv("loom.topic", topic),
                                str_kv("loom.event.id", event_id.clone()),
                                str_kv("loom.event.type", "sensor.reading"),
                                str_kv("loom.thread_id", format!("thread-{:08x}", s.seed)),
                                str_kv("loom.correlation_id", uuidish(s.seed ^ 0xc0, event)),
                                str_kv("messaging.system", "loom"),
                                str_kv("messaging.destination.name", topic),
                                str_kv("messaging.message.id", event_id),
                                str_kv("messaging.operation.type", op),
                            ],
                            ..Span::default()
                        },
                    )
                })
                .collect();
            (resource, Some(scope), spans)
        }
        Shape::Large => {
            let resource = Resource {
                attributes: vec![str_kv("service.name", "loadgen-large")],
                ..Resource::default()
            };
            let spans = (0..n)
                .map(|i| {
                    timed(
                        i,
                        Span {
                            name: "large-span".into(),
                            kind: SpanKind::Internal as i32,
                            attributes: (0..20)
                                .map(|j| {
                                    str_kv(
                                        &format!("large.attr.{j:02}"),
                                        pseudo_text((i * 20 + j) as u64, LARGE_VALUE_LEN),
                                    )
                                })
                                .collect(),
                            ..Span::default()
                        },
                    )
                })
                .collect();
            (resource, None, spans)
        }
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                scope,
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

// ---------------------------------------------------------------------------------------------
// Template: encoded once, ids patched per request

/// Where an id sits in the encoded template.
#[derive(Debug, Clone, Copy)]
enum Patch {
    /// Offset of a 16-byte trace id: its low 8 bytes take the request number.
    Trace(usize),
    /// Offset of an 8-byte span id: its high 5 bytes take the request number.
    Span(usize),
}

struct Template {
    bytes: Vec<u8>,
    patches: Vec<Patch>,
    spans: usize,
}

impl Template {
    fn new(s: &ShapeArgs) -> Result<Template> {
        if s.spans_per_request == 0 || s.spans_per_request > MAX_SPANS_PER_REQUEST {
            bail!(
                "--spans-per-request {} must be from 1 to {MAX_SPANS_PER_REQUEST}",
                s.spans_per_request
            );
        }
        let bytes = build_template(s).encode_to_vec();
        let patches = id_offsets(&bytes).context("locating ids in the encoded template")?;
        // Each span has a trace id and a span id (plus a parent in the loom shape).
        if patches.len() < 2 * s.spans_per_request {
            bail!(
                "template has {} id fields for {} spans",
                patches.len(),
                s.spans_per_request
            );
        }
        Ok(Template {
            bytes,
            patches,
            spans: s.spans_per_request,
        })
    }

    /// Writes request number `n`'s ids into `buf`, a copy of the template (any earlier
    /// request's ids are overwritten, every other byte is the template's).
    fn patch(&self, buf: &mut [u8], n: u64) {
        let be = n.to_be_bytes();
        for p in &self.patches {
            match *p {
                Patch::Trace(off) => buf[off + 8..off + 16].copy_from_slice(&be),
                Patch::Span(off) => buf[off..off + 5].copy_from_slice(&be[3..8]),
            }
        }
    }
}

/// Offsets of every span's trace id, span id and parent span id in an encoded request.
fn id_offsets(buf: &[u8]) -> Result<Vec<Patch>> {
    let mut out = Vec::new();
    // Span.trace_id = 1, span_id = 2, parent_span_id = 4.
    for_each_span(buf, |s, e| {
        for_each_len_field(buf, s, e, |f, s, e| {
            match (f, e - s) {
                (1, 16) => out.push(Patch::Trace(s)),
                (2, 8) | (4, 8) => out.push(Patch::Span(s)),
                _ => {}
            }
            Ok(())
        })
    })?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// send

enum Client {
    Grpc(tonic::client::Grpc<Channel>),
    Http(reqwest::Client, String),
}

enum Outcome {
    /// Accepted; the backend may still report some spans rejected (partial success).
    Acked {
        rejected: u64,
    },
    /// Refused for load with a retry hint (gRPC RESOURCE_EXHAUSTED/UNAVAILABLE + RetryInfo,
    /// HTTP 429/503).
    Refused,
    Failed(String),
}

impl Client {
    async fn connect(protocol: Protocol, endpoint: &str) -> Result<Client> {
        match protocol {
            Protocol::Grpc => {
                let channel = Endpoint::from_shared(endpoint.to_owned())
                    .with_context(|| format!("--endpoint {endpoint:?}"))?
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .with_context(|| format!("connecting to {endpoint}"))?;
                Ok(Client::Grpc(tonic::client::Grpc::new(channel)))
            }
            Protocol::Http => {
                let client = reqwest::Client::builder()
                    .tcp_nodelay(true)
                    .build()
                    .context("building the HTTP client")?;
                Ok(Client::Http(client, endpoint.to_owned()))
            }
        }
    }

    async fn send(&mut self, body: Bytes) -> Outcome {
        match self {
            Client::Grpc(grpc) => {
                if let Err(e) = grpc.ready().await {
                    return Outcome::Failed(format!("gRPC channel not ready: {e}"));
                }
                let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
                match grpc
                    .unary(tonic::Request::new(body), path, ExportCodec)
                    .await
                {
                    Ok(resp) => Outcome::Acked {
                        rejected: rejected(&resp.into_inner()),
                    },
                    Err(s)
                        if matches!(s.code(), Code::ResourceExhausted | Code::Unavailable)
                            && s.get_details_retry_info().is_some() =>
                    {
                        Outcome::Refused
                    }
                    Err(s) => Outcome::Failed(format!("gRPC {:?}: {}", s.code(), s.message())),
                }
            }
            Client::Http(client, url) => {
                let resp = client
                    .post(url.as_str())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(body)
                    .send()
                    .await;
                let resp = match resp {
                    Ok(r) => r,
                    Err(e) => return Outcome::Failed(format!("HTTP request: {e}")),
                };
                let status = resp.status();
                let body = resp.bytes().await.unwrap_or_default();
                match status.as_u16() {
                    200 => match ExportTraceServiceResponse::decode(body) {
                        Ok(r) => Outcome::Acked {
                            rejected: rejected(&r),
                        },
                        Err(e) => Outcome::Failed(format!("undecodable HTTP 200 body: {e}")),
                    },
                    429 | 503 => Outcome::Refused,
                    code => Outcome::Failed(format!("HTTP {code}")),
                }
            }
        }
    }
}

fn rejected(r: &ExportTraceServiceResponse) -> u64 {
    r.partial_success
        .as_ref()
        .map(|p| p.rejected_spans.max(0) as u64)
        .unwrap_or(0)
}

#[derive(Debug, Default)]
struct Tally {
    requests: u64,
    spans_sent: u64,
    spans_acked: u64,
    spans_refused: u64,
    spans_failed: u64,
    /// Request round trips in microseconds.
    latencies_us: Vec<u32>,
    first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.requests += o.requests;
        self.spans_sent += o.spans_sent;
        self.spans_acked += o.spans_acked;
        self.spans_refused += o.spans_refused;
        self.spans_failed += o.spans_failed;
        self.latencies_us.extend(o.latencies_us);
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// When each request may go: all workers draw request numbers from one counter, so the rate is
/// global and every request number (hence every id) is used once.
struct Schedule {
    start: Instant,
    end: Instant,
    /// Seconds between requests; None: unthrottled.
    interval: Option<f64>,
    next: AtomicU64,
    /// Spans sent and not refused or failed: on their way to the backend, or there.
    admitted: AtomicU64,
    window: Option<Window>,
    /// Total time workers waited on the window, µs.
    window_wait_us: AtomicU64,
}

/// The end-to-end window: spans admitted minus spans the backend reports delivered.
struct Window {
    max_pending: u64,
    stats_file: PathBuf,
    /// Last read (when, count): the file is re-read at most once a millisecond.
    cache: parking_lot::Mutex<Option<(Instant, u64)>>,
}

impl Window {
    fn delivered(&self) -> u64 {
        let mut c = self.cache.lock();
        match *c {
            Some((at, n)) if at.elapsed() < Duration::from_millis(1) => n,
            last => {
                // A missing or unreadable file is "no news"; the writer renames atomically.
                let n = std::fs::read(&self.stats_file)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .and_then(|v| v.get("spans")?.as_u64())
                    .or(last.map(|(_, n)| n))
                    .unwrap_or(0);
                *c = Some((Instant::now(), n));
                n
            }
        }
    }

    /// Waits until `spans` more fit in the window (or nothing is pending, so a request larger
    /// than the window still goes). False when the run ended while waiting.
    async fn admit(&self, admitted: &AtomicU64, spans: u64, end: Instant) -> bool {
        loop {
            let pending = admitted
                .load(Ordering::Relaxed)
                .saturating_sub(self.delivered());
            if pending == 0 || pending + spans <= self.max_pending {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

async fn worker(
    mut client: Client,
    template: Arc<Template>,
    schedule: Arc<Schedule>,
    refused_pause: Duration,
) -> Tally {
    let mut t = Tally::default();
    let mut buf = template.bytes.clone();
    let spans = template.spans as u64;
    loop {
        let k = schedule.next.fetch_add(1, Ordering::Relaxed);
        match schedule.interval {
            Some(iv) => {
                let due = schedule.start + Duration::from_secs_f64(iv * k as f64);
                if due >= schedule.end {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
            }
            None if Instant::now() >= schedule.end => break,
            None => {}
        }
        if let Some(w) = &schedule.window {
            let waited = Instant::now();
            let admitted = w.admit(&schedule.admitted, spans, schedule.end).await;
            schedule
                .window_wait_us
                .fetch_add(waited.elapsed().as_micros() as u64, Ordering::Relaxed);
            if !admitted {
                break;
            }
        }
        let n = k + 1;
        if n > MAX_REQUEST_NUMBER {
            t.first_error
                .get_or_insert_with(|| "request numbers exhausted".into());
            break;
        }
        template.patch(&mut buf, n);
        let body = Bytes::copy_from_slice(&buf);
        schedule.admitted.fetch_add(spans, Ordering::Relaxed);
        let sent_at = Instant::now();
        let outcome = client.send(body).await;
        t.latencies_us
            .push(sent_at.elapsed().as_micros().min(u32::MAX as u128) as u32);
        t.requests += 1;
        t.spans_sent += spans;
        match outcome {
            Outcome::Acked { rejected } => {
                let rejected = rejected.min(spans);
                schedule.admitted.fetch_sub(rejected, Ordering::Relaxed);
                t.spans_acked += spans - rejected;
                t.spans_refused += rejected;
            }
            Outcome::Refused => {
                schedule.admitted.fetch_sub(spans, Ordering::Relaxed);
                t.spans_refused += spans;
                tokio::time::sleep(refused_pause).await;
            }
            Outcome::Failed(e) => {
                schedule.admitted.fetch_sub(spans, Ordering::Relaxed);
                t.spans_failed += spans;
                t.first_error.get_or_insert(e);
                // A dead endpoint would otherwise spin; failures are for the report, not load.
                tokio::time::sleep(refused_pause).await;
            }
        }
    }
    t
}

fn endpoint_for(protocol: Protocol, endpoint: Option<&str>) -> String {
    let raw = endpoint.unwrap_or(match protocol {
        Protocol::Grpc => "http://127.0.0.1:4317",
        Protocol::Http => "http://127.0.0.1:4318",
    });
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    };
    match protocol {
        Protocol::Grpc => with_scheme,
        Protocol::Http => {
            // A base URL (no path) means the standard OTLP traces path.
            let after_scheme = with_scheme.split_once("://").map_or("", |(_, r)| r);
            if after_scheme.trim_end_matches('/').contains('/') {
                with_scheme
            } else {
                format!("{}/v1/traces", with_scheme.trim_end_matches('/'))
            }
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

async fn send(args: SendArgs) -> Result<()> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a finite number of spans per second, 0 for unthrottled");
    }
    let template = Arc::new(Template::new(&args.shape)?);
    if let Some(path) = &args.verify {
        write_atomically(path, &template.bytes)?;
    }
    let endpoint = endpoint_for(args.protocol, args.endpoint.as_deref());
    // Connect first, so start-up time is not counted and a wrong endpoint fails fast.
    let mut clients = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        clients.push(Client::connect(args.protocol, &endpoint).await?);
    }
    let start = Instant::now();
    let schedule = Arc::new(Schedule {
        start,
        end: start + args.duration,
        interval: (args.rate > 0.0).then(|| template.spans as f64 / args.rate),
        next: AtomicU64::new(0),
        admitted: AtomicU64::new(0),
        window: match (args.max_pending, &args.delivered_from) {
            (Some(max_pending), Some(file)) => Some(Window {
                max_pending,
                stats_file: file.clone(),
                cache: parking_lot::Mutex::new(None),
            }),
            _ => None,
        },
        window_wait_us: AtomicU64::new(0),
    });
    // Spans already at the backend (a shared backend) are not this run's pending ones.
    if let Some(w) = &schedule.window {
        let before = w.delivered();
        schedule.admitted.store(before, Ordering::Relaxed);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| {
            tokio::spawn(worker(
                c,
                template.clone(),
                schedule.clone(),
                args.refused_pause,
            ))
        })
        .collect();
    let mut total = Tally::default();
    for t in tasks {
        total.merge(t.await.context("a sender task panicked")?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let window_wait_s = schedule.window_wait_us.load(Ordering::Relaxed) as f64 / 1e6;
    total.latencies_us.sort_unstable();
    let lat = &total.latencies_us;
    let acked_per_s = total.spans_acked as f64 / elapsed;

    println!(
        "loadgen: {} {} x{} spans/request -> {endpoint} for {:.2}s (concurrency {}, rate {})",
        args.protocol.name(),
        shape_name(args.shape.shape),
        template.spans,
        elapsed,
        args.concurrency,
        if args.rate > 0.0 {
            format!("{} spans/s", args.rate)
        } else {
            "unthrottled".into()
        },
    );
    println!(
        "  sent {} spans in {} requests; acknowledged {}; refused {}; failed {}",
        total.spans_sent,
        total.requests,
        total.spans_acked,
        total.spans_refused,
        total.spans_failed
    );
    println!(
        "  {:.0} acknowledged spans/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        acked_per_s,
        percentile(lat, 0.5),
        percentile(lat, 0.99),
        percentile(lat, 1.0)
    );
    if let Some(w) = &schedule.window {
        println!(
            "  window of {} pending spans: workers waited {:.2}s in total",
            w.max_pending, window_wait_s
        );
    }
    if let Some(e) = &total.first_error {
        println!("  first error: {e}");
    }
    let summary = serde_json::json!({
        "mode": "send",
        "protocol": args.protocol.name(),
        "shape": shape_name(args.shape.shape),
        "spans_per_request": template.spans,
        "request_bytes": template.bytes.len(),
        "seed": args.shape.seed,
        "concurrency": args.concurrency,
        "rate": args.rate,
        "elapsed_s": elapsed,
        "requests": total.requests,
        "spans_sent": total.spans_sent,
        "spans_acked": total.spans_acked,
        "spans_refused": total.spans_refused,
        "spans_failed": total.spans_failed,
        "acked_spans_per_s": acked_per_s,
        "max_pending": args.max_pending,
        "window_wait_s": window_wait_s,
        "latency_ms": {
            "p50": percentile(lat, 0.5),
            "p99": percentile(lat, 0.99),
            "max": percentile(lat, 1.0),
        },
        "first_error": total.first_error,
    });
    println!("{summary}");
    Ok(())
}

fn shape_name(s: Shape) -> &'static str {
    match s {
        Shape::Testbed => "testbed",
        Shape::Loom => "loom",
        Shape::Large => "large",
    }
}

// ---------------------------------------------------------------------------------------------
// limit

/// The least work any OTLP-in/OTLP-out pipeline does per request: decode, touch every span,
/// encode. The sidecar's CPU per span is judged against this.
fn limit(args: LimitArgs) -> Result<()> {
    let template = Template::new(&args.shape)?;
    let mut buf = template.bytes.clone();
    let mut out = Vec::with_capacity(buf.len() + buf.len() / 4);
    let mut n = 0u64;
    let start = Instant::now();
    while n < 3 || start.elapsed() < args.duration {
        n += 1;
        template.patch(&mut buf, n);
        let decoded = match args.decode_from {
            DecodeFrom::Slice => ExportTraceServiceRequest::decode(buf.as_slice()),
            DecodeFrom::BytesMut => {
                ExportTraceServiceRequest::decode(bytes::BytesMut::from(buf.as_slice()))
            }
        };
        let mut req = decoded.context("decoding the template request")?;
        for rs in &mut req.resource_spans {
            for ss in &mut rs.scope_spans {
                for span in &mut ss.spans {
                    span.attributes.push(str_kv("loom.agent.id", "bench"));
                    span.attributes.push(str_kv("loom.topic", "bench"));
                }
            }
        }
        out.clear();
        req.encode(&mut out).context("encoding")?;
        std::hint::black_box(&out);
    }
    let secs = start.elapsed().as_secs_f64();
    let spans = n * template.spans as u64;
    let us_per_span = secs * 1e6 / spans as f64;
    println!(
        "limit: {} x{} spans/request ({} bytes): {} requests in {:.2}s = {:.0} spans/s, {:.3} µs/span (decode + 2 attributes + encode, one thread)",
        shape_name(args.shape.shape),
        template.spans,
        template.bytes.len(),
        n,
        secs,
        spans as f64 / secs,
        us_per_span
    );
    let summary = serde_json::json!({
        "mode": "limit",
        "decode_from": format!("{:?}", args.decode_from).to_ascii_lowercase(),
        "shape": shape_name(args.shape.shape),
        "spans_per_request": template.spans,
        "request_bytes": template.bytes.len(),
        "requests": n,
        "spans": spans,
        "elapsed_s": secs,
        "spans_per_s": spans as f64 / secs,
        "us_per_span": us_per_span,
    });
    println!("{summary}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Send(args) => {
            // reqwest is built with rustls but no default crypto provider; the sidecar library
            // installs the one it uses (needed even for plaintext HTTP client construction).
            loom_sidecar::service::install_crypto_provider();
            common::runtime(args.threads).and_then(|rt| rt.block_on(send(args)))
        }
        Command::Limit(args) => limit(args),
        Command::Manifest(args) => Template::new(&args.shape).and_then(|t| {
            write_atomically(&args.out, &t.bytes)?;
            println!(
                "manifest: {} x{} spans/request, seed {} -> {}",
                shape_name(args.shape.shape),
                t.spans,
                args.shape.seed,
                args.out.display()
            );
            Ok(())
        }),
    };
    common::exit_code("loadgen", result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(shape: Shape, n: usize) -> ShapeArgs {
        ShapeArgs {
            shape,
            spans_per_request: n,
            seed: 42,
        }
    }

    #[test]
    fn patched_template_decodes_to_the_request_with_that_number() {
        for shape in [Shape::Testbed, Shape::Loom, Shape::Large] {
            let a = args(shape, 7);
            let t = Template::new(&a).expect("template");
            let mut buf = t.bytes.clone();
            t.patch(&mut buf, 5);
            t.patch(&mut buf, 123_456_789);
            let got = ExportTraceServiceRequest::decode(buf.as_slice()).expect("decodes");
            let spans = &got.resource_spans[0].scope_spans[0].spans;
            assert_eq!(spans.len(), 7);
            for (i, s) in spans.iter().enumerate() {
                assert_eq!(s.trace_id, trace_id(42, 123_456_789), "{shape:?}");
                assert_eq!(s.span_id, span_id(123_456_789, i), "{shape:?}");
                if shape == Shape::Loom && i > 0 {
                    assert_eq!(s.parent_span_id, span_id(123_456_789, i - 1));
                }
            }
        }
    }

    #[test]
    fn http_endpoints_get_the_traces_path() {
        assert_eq!(
            endpoint_for(Protocol::Http, Some("127.0.0.1:4318")),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            endpoint_for(Protocol::Http, Some("http://h:1/custom")),
            "http://h:1/custom"
        );
        assert_eq!(endpoint_for(Protocol::Grpc, Some("h:1")), "http://h:1");
    }
}
