//! `trace_store_bench`: latency of the trace_store exporter's `GET /api/v3/traces/{id}` for a
//! 1000-span trace, over loopback HTTP (keep-alive), with the store otherwise full of other
//! traces; once idle and once while another task keeps inserting batches (lock contention).
//! Repeated GETs of an unchanged trace are served from the API's last rendering; the first
//! rows time the rendering itself (what a GET costs when the trace changed since): the OTLP/JSON
//! writer the API uses, and the prost + serde path it replaced (still its reference), then GETs
//! that alternate between two such traces, so that every one renders.
//! Prints one markdown table (p50/p99/max per row).
//!
//! `cargo run --release -p loom-sidecar --bin trace_store_bench [-- --requests 2000]`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use loom_sidecar::exporters::trace_store::{api, store};
use loom_sidecar::model::otlp::string_attr as kv;
use loom_sidecar::model::ResourceSpans;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as pb;
use parking_lot::Mutex;

#[derive(Parser)]
struct Args {
    /// Requests per row.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Spans of the trace that is read.
    #[arg(long, default_value_t = 1000)]
    spans: usize,
    /// Other traces in the store (10 spans each).
    #[arg(long, default_value_t = 2000)]
    background: usize,
}

/// A span shaped like an agent's: a dozen attributes, an event.
fn span(trace: [u8; 16], i: u64) -> pb::Span {
    pb::Span {
        trace_id: trace.to_vec(),
        span_id: (i + 1).to_be_bytes().to_vec(),
        parent_span_id: if i == 0 {
            vec![]
        } else {
            1u64.to_be_bytes().to_vec()
        },
        name: format!("agent.step {}", i % 20),
        kind: 1 + (i % 3) as i32,
        start_time_unix_nano: 1_714_564_800_000_000_000 + i * 1_000_000,
        end_time_unix_nano: 1_714_564_800_000_000_000 + i * 1_000_000 + 500_000,
        attributes: (0..12)
            .map(|a| kv(&format!("loom.attr.{a}"), &format!("value-{i}-{a}")))
            .collect(),
        events: vec![pb::span::Event {
            name: "tool.call".into(),
            time_unix_nano: 1_714_564_800_000_000_000 + i * 1_000_000 + 1000,
            attributes: vec![kv("tool", "search")],
            ..Default::default()
        }],
        ..pb::Span::default()
    }
}

fn batch(trace: [u8; 16], from: u64, n: u64) -> Vec<ResourceSpans> {
    let rs = pb::ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv("service.name", "agent-7"), kv("loom.agent.id", "7")],
            ..Resource::default()
        }),
        scope_spans: vec![pb::ScopeSpans {
            scope: Some(InstrumentationScope {
                name: "loom".into(),
                version: "0.1".into(),
                ..Default::default()
            }),
            spans: (from..from + n).map(|i| span(trace, i)).collect(),
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    };
    vec![ResourceSpans::from_proto(&rs).expect("valid span")]
}

fn trace_id(n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id[8] = 0xab;
    id
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// Timed GETs of one trace; checks that the answer holds all its spans.
async fn row(
    client: &reqwest::Client,
    url: &str,
    requests: usize,
    spans: usize,
) -> Result<(Vec<Duration>, usize)> {
    let timed = alternating(client, [url, url], requests).await?;
    let v: serde_json::Value = serde_json::from_slice(&reqwest::get(url).await?.bytes().await?)?;
    let n: usize = v["result"]["resourceSpans"]
        .as_array()
        .context("no resourceSpans")?
        .iter()
        .flat_map(|rs| rs["scopeSpans"].as_array().into_iter().flatten())
        .map(|ss| ss["spans"].as_array().map_or(0, Vec::len))
        .sum();
    if n != spans {
        bail!("read {n} spans, stored {spans}");
    }
    Ok(timed)
}

/// GETs alternating between two URLs (the first tenth not timed: warm-up), sorted latencies
/// and the last body's size. Two traces: the API keeps one rendering, so each GET renders.
async fn alternating(
    client: &reqwest::Client,
    urls: [&str; 2],
    requests: usize,
) -> Result<(Vec<Duration>, usize)> {
    let mut lat = Vec::with_capacity(requests);
    let mut body_len = 0;
    for i in 0..requests + requests / 10 {
        let url = urls[i % 2];
        let t = Instant::now();
        let r = client.get(url).send().await?;
        if r.status() != 200 {
            bail!("GET {url}: {}", r.status());
        }
        let body = r.bytes().await?;
        let d = t.elapsed();
        // The first tenth warms connections and caches.
        if i >= requests / 10 {
            lat.push(d);
        }
        body_len = body.len();
    }
    lat.sort();
    Ok((lat, body_len))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    loom_sidecar::service::install_crypto_provider();
    let limits = store::Limits {
        max_bytes: 512 * 1024 * 1024,
        max_traces: 1_000_000,
        ttl: Duration::from_secs(3600),
    };
    let shared: api::Shared = Arc::new(Mutex::new(store::Store::new(limits)));
    for t in 0..args.background as u64 {
        let p = store::prepare(&batch(trace_id(t + 1_000_000), 0, 10));
        shared.lock().insert(p, Instant::now());
    }
    // The read traces arrive in batches of 100, as a batch processor would cut them.
    let target = trace_id(42);
    let other = trace_id(43);
    for t in [target, other] {
        let mut sent = 0u64;
        while sent < args.spans as u64 {
            let n = 100.min(args.spans as u64 - sent);
            let p = store::prepare(&batch(t, sent, n));
            shared.lock().insert(p, Instant::now());
            sent += n;
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = api::router(shared.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url_of = |id: [u8; 16]| {
        format!(
            "http://{addr}/api/v3/traces/{}",
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    };
    let url = url_of(target);
    let client = reqwest::Client::new();

    // Where the time goes: decoding the stored bytes and writing OTLP/JSON, without HTTP.
    let pieces = shared
        .lock()
        .get(&target, Instant::now())
        .context("stored")?;
    let time_render = |f: fn(&[bytes::Bytes]) -> Result<Vec<u8>, api::ApiError>| {
        let mut lat = Vec::with_capacity(args.requests);
        for _ in 0..args.requests {
            let t = Instant::now();
            let body = f(&pieces).map_err(|e| anyhow::anyhow!(e.message))?;
            lat.push(t.elapsed());
            std::hint::black_box(body);
        }
        lat.sort();
        anyhow::Ok(lat)
    };
    if api::render_traces(&pieces).ok() != api::render_traces_decoded(&pieces).ok() {
        bail!("the OTLP/JSON writer and the serde path disagree");
    }
    let render = time_render(api::render_traces)?;
    let decoded = time_render(api::render_traces_decoded)?;

    println!(
        "| trace_store GET /api/v3/traces/{{id}} | spans | response | p50 ms | p99 ms | max ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (what, lat) in [
        ("render only, OTLP/JSON from the bytes (no HTTP)", &render),
        (
            "render only, prost decode + serde (before; no HTTP)",
            &decoded,
        ),
    ] {
        println!(
            "| {what} | {} | | {} | {} | {} |",
            args.spans,
            ms(pct(lat, 0.5)),
            ms(pct(lat, 0.99)),
            ms(*lat.last().context("no samples")?)
        );
    }
    let (lat, len) = alternating(&client, [&url, &url_of(other)], args.requests).await?;
    println!(
        "| GET, idle store, alternating two traces (each GET renders) | {} | {} KB | {} | {} | {} |",
        args.spans,
        len / 1024,
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
        ms(*lat.last().context("no samples")?)
    );
    let (lat, len) = row(&client, &url, args.requests, args.spans).await?;
    println!(
        "| GET, idle store ({} other traces; body cached after the first) | {} | {} KB | {} | {} | {} |",
        args.background,
        args.spans,
        len / 1024,
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
        ms(*lat.last().context("no samples")?)
    );

    // Ingestion alongside: 100-span batches of fresh traces, as fast as one task inserts.
    let stop = Arc::new(AtomicBool::new(false));
    let inserted = Arc::new(AtomicU64::new(0));
    let (s, st, ins) = (shared.clone(), stop.clone(), inserted.clone());
    let writer = tokio::task::spawn_blocking(move || {
        let mut t = 2_000_000u64;
        while !st.load(Ordering::Relaxed) {
            let p = store::prepare(&batch(trace_id(t), 0, 100));
            s.lock().insert(p, Instant::now());
            ins.fetch_add(100, Ordering::Relaxed);
            t += 1;
        }
    });
    let started = Instant::now();
    let (lat, len) = row(&client, &url, args.requests, args.spans).await?;
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    println!(
        "| GET while inserting other traces ({:.0} spans/s) | {} | {} KB | {} | {} | {} |",
        inserted.load(Ordering::Relaxed) as f64 / secs,
        args.spans,
        len / 1024,
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
        ms(*lat.last().context("no samples")?)
    );
    Ok(())
}
