//! Dashboard: the page (embedded assets), its JSON API and event stream, behind auth and a CSP.
//!
//! Routes are listed in [`router`]; what each answers is documented in `docs/dashboard.md`.
//! Everything an agent sent reaches the browser as JSON and is rendered there as text.

mod api;
mod proxy;
mod sse;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::DashboardSettings;
use crate::service::Bridge;

/// Forbids inline script and style and any third-party origin: a string that slipped into
/// markup still could not run.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Cookie the page's requests carry once `/?token=…` was opened with the right token
/// (`EventSource` cannot send an `Authorization` header).
const TOKEN_COOKIE: &str = "loom_dashboard_token";

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Dashboard-wide counters, shown by `/api/metrics`.
#[derive(Debug, Default)]
pub(crate) struct DashCounters {
    /// Live events event-stream clients skipped because they fell behind.
    pub sse_lagged: AtomicU64,
    /// Event-stream connections refused at the client limit.
    pub sse_refused: AtomicU64,
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub bridge: Bridge,
    pub settings: Arc<DashboardSettings>,
    pub sse_slots: Arc<Semaphore>,
    pub counters: Arc<DashCounters>,
    pub http: reqwest::Client,
    pub stop: CancellationToken,
    /// Last (time, actions forwarded) seen by `/api/metrics`, for a rate between two looks.
    pub action_sample: Arc<Mutex<Option<(std::time::Instant, u64)>>>,
}

/// The dashboard's routes over `bridge`; event streams end when `stop` is cancelled (so a
/// graceful shutdown does not wait on open browsers).
pub fn router(bridge: Bridge, stop: CancellationToken) -> Router {
    let settings = Arc::new(bridge.config().dashboard.clone());
    // Built in one workspace with loom-sidecar, reqwest carries its `rustls-no-provider` feature
    // and panics in `build()` unless a process-wide crypto provider is installed: install ring's
    // (a no-op when one already is), so the bridge starts however it was built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(settings.query_timeout)
        // The trace query service is named explicitly; an HTTP(S)_PROXY meant for the internet
        // must not route it.
        .no_proxy()
        .build()
        .unwrap_or_default();
    let state = AppState {
        sse_slots: Arc::new(Semaphore::new(settings.max_sse_clients)),
        bridge,
        settings,
        counters: Arc::default(),
        http,
        stop,
        action_sample: Arc::default(),
    };
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/app.css", get(app_css))
        .route("/api/config", get(api::config))
        .route("/api/agents", get(api::agents))
        .route("/api/stats", get(api::stats))
        .route("/api/flows", get(api::flows))
        .route("/api/topology", get(api::topology))
        .route("/api/flow", get(api::flow_graph))
        .route("/api/metrics", get(api::metrics))
        .route("/api/events/stream", get(sse::events_stream))
        .route("/api/spans/recent", get(proxy::spans_recent))
        .route("/api/traces", get(api::traces_recent))
        .route("/api/traces/{trace_id}", get(proxy::trace))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

async fn not_found(req: Request) -> Response {
    api::error(
        StatusCode::NOT_FOUND,
        format!("no such dashboard route: {}", req.uri().path()),
    )
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Equal-time comparison, so the token cannot be guessed byte by byte from response times.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return v.strip_prefix("Bearer ").map(str::trim);
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == TOKEN_COOKIE)
        .map(|(_, v)| v)
}

/// Security headers on every answer; the bearer token (header, cookie, or `/?token=` once) when
/// one is configured.
async fn guard(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let mut resp = match st.settings.token.as_deref() {
        None => next.run(req).await,
        Some(want) => {
            let from_query = (req.uri().path() == "/")
                .then(|| {
                    req.uri().query().and_then(|q| {
                        q.split('&')
                            .filter_map(|kv| kv.split_once('='))
                            .find(|(k, _)| *k == "token")
                            .map(|(_, v)| v.to_owned())
                    })
                })
                .flatten();
            if let Some(t) = from_query {
                if same(t.as_bytes(), want.as_bytes()) {
                    // Trade the URL token for a cookie and drop it from the address bar.
                    let mut r = Redirect::to("/").into_response();
                    if let Ok(v) = HeaderValue::from_str(&format!(
                        "{TOKEN_COOKIE}={want}; HttpOnly; SameSite=Strict; Path=/"
                    )) {
                        r.headers_mut().insert(header::SET_COOKIE, v);
                    }
                    r
                } else {
                    unauthorized()
                }
            } else if presented_token(req.headers())
                .is_some_and(|t| same(t.as_bytes(), want.as_bytes()))
            {
                next.run(req).await
            } else {
                unauthorized()
            }
        }
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

fn unauthorized() -> Response {
    let mut r = api::error(
        StatusCode::UNAUTHORIZED,
        "dashboard token required: send Authorization: Bearer <LOOM_DASHBOARD_TOKEN> or open /?token=<LOOM_DASHBOARD_TOKEN>",
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}
