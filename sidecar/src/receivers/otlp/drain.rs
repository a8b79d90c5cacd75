//! Reads and discards the rest of a refused OTLP/HTTP request body, within a byte, time and
//! concurrency bound, so a plain HTTP/1.1 client reads the refusal instead of a reset.
//!
//! hyper closes the connection when a handler answers without having read the whole body; a
//! client still writing (Python's `urllib`, the OTLP exporters) then sees a connection reset,
//! which exporters treat as retryable, so an oversized batch would be resent forever. Draining
//! first lets the answer (413, 401, 415, 400) arrive after the client has finished sending.
//! The bounds keep this from being a lever: a slow-loris client is cut off by the time bound, an
//! enormous body by the byte bound, and many at once by the concurrency bound; past any of
//! them the connection is closed as before (docs/sidecar.md, "Refusals over OTLP/HTTP").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt as _;
use tokio::sync::{Mutex, Semaphore};

/// Never drain more than this many bytes, whatever the limit.
const MIN_DRAIN_BYTES: u64 = 16 * 1024 * 1024;
/// Longest a refused request may keep its task busy while its body is drained.
pub(super) const DRAIN_TIME: Duration = Duration::from_secs(10);
/// Refused bodies drained at once per listener; more are closed at once.
const DRAIN_SLOTS: usize = 16;

/// The bounds of one listener.
#[derive(Clone)]
pub(super) struct Drain {
    max_bytes: u64,
    time: Duration,
    slots: Arc<Semaphore>,
}

impl Drain {
    /// Bounds for a listener whose request limit is `max` bytes: twice the limit, at least
    /// 16 MiB, so a body a few times over the limit is still answered.
    pub(super) fn new(max: usize) -> Self {
        Self::with(
            (max as u64).saturating_mul(2).max(MIN_DRAIN_BYTES),
            DRAIN_TIME,
            DRAIN_SLOTS,
        )
    }

    fn with(max_bytes: u64, time: Duration, slots: usize) -> Self {
        Drain {
            max_bytes,
            time,
            slots: Arc::new(Semaphore::new(slots)),
        }
    }
}

type Rest = Arc<Mutex<axum::body::BodyDataStream>>;

/// Middleware (outermost): hands the handler a body it can read as usual, and when the answer
/// is a client error, drains what the handler left unread before the answer goes out.
pub(super) async fn drain_refused(State(d): State<Drain>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    // A client that asked `Expect: 100-continue` sends nothing until told to: if the handler
    // never read, answering at once is right and draining would only invite the body.
    let expects_continue = parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let rest: Rest = Arc::new(Mutex::new(body.into_data_stream()));
    let polled = Arc::new(AtomicBool::new(false));
    let shared = (rest.clone(), polled.clone());
    let body = Body::from_stream(futures::stream::unfold(
        shared,
        |(rest, polled)| async move {
            polled.store(true, Ordering::Relaxed);
            let item = rest.lock().await.next().await;
            item.map(|i| (i, (rest, polled)))
        },
    ));
    let resp = next.run(Request::from_parts(parts, body)).await;
    if !resp.status().is_client_error() {
        return resp;
    }
    if expects_continue && !polled.load(Ordering::Relaxed) {
        return resp;
    }
    // Pointless when the client itself says more is coming than will ever be read.
    if declared.is_some_and(|n| n > d.max_bytes) {
        return resp;
    }
    let Ok(_slot) = d.slots.try_acquire() else {
        return resp;
    };
    let drained = discard(&rest, d.max_bytes, d.time).await;
    tracing::debug!(
        status = resp.status().as_u16(),
        ?drained,
        "drained a refused OTLP/HTTP body"
    );
    resp
}

/// What draining ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    /// The body ended; the connection can be reused.
    Ended(u64),
    /// A bound or a transport error stopped it; hyper closes the connection.
    Stopped(u64),
}

async fn discard(rest: &Rest, max_bytes: u64, time: Duration) -> Drained {
    let mut seen = 0u64;
    let mut stream = rest.lock().await;
    let read = async {
        while let Some(frame) = stream.next().await {
            match frame {
                Ok(b) => {
                    seen = seen.saturating_add(b.len() as u64);
                    if seen > max_bytes {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        true
    };
    match tokio::time::timeout(time, read).await {
        Ok(true) => Drained::Ended(seen),
        _ => Drained::Stopped(seen),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;

    fn rest_of(chunks: Vec<&'static [u8]>) -> Rest {
        let s = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c))),
        );
        Arc::new(Mutex::new(Body::from_stream(s).into_data_stream()))
    }

    #[tokio::test]
    async fn a_body_within_the_bound_is_read_to_its_end() {
        let rest = rest_of(vec![b"abc", b"defg"]);
        assert_eq!(discard(&rest, 7, DRAIN_TIME).await, Drained::Ended(7));
    }

    #[tokio::test]
    async fn an_enormous_body_stops_at_the_byte_bound() {
        let rest = rest_of(vec![b"abc", b"defg", b"h"]);
        assert_eq!(discard(&rest, 5, DRAIN_TIME).await, Drained::Stopped(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_client_stops_at_the_time_bound() {
        let s = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"x"))])
            .chain(futures::stream::pending());
        let rest: Rest = Arc::new(Mutex::new(Body::from_stream(s).into_data_stream()));
        let d = Drain::with(1 << 20, Duration::from_secs(3), 1);
        assert_eq!(
            discard(&rest, d.max_bytes, d.time).await,
            Drained::Stopped(1)
        );
    }

    #[test]
    fn the_byte_bound_is_twice_the_limit_and_at_least_16_mib() {
        assert_eq!(Drain::new(1 << 20).max_bytes, 16 << 20);
        assert_eq!(Drain::new(64 << 20).max_bytes, 128 << 20);
    }
}
