//! health_check: `GET /health` → 200 while pipelines run, 503 while starting or draining.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::{ExtensionCtx, ExtensionSpec, Health};
use crate::component::BoxFuture;
use crate::component::Factory;
use crate::component::{ListenError, Listening, Started};
use crate::config::{endpoint_at, parse_as, ComponentId, ComponentYaml, ConfigError};

pub const FACTORY: Factory<dyn ExtensionSpec> = Factory {
    kind: "health_check",
    parse,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HealthConfig {
    endpoint: String,
    path: String,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            endpoint: "127.0.0.1:13133".into(),
            path: "/health".into(),
        }
    }
}

struct Spec {
    addr: SocketAddr,
    path: String,
}

fn parse(y: &ComponentYaml<'_>) -> Result<Box<dyn ExtensionSpec>, ConfigError> {
    let (v, path) = (y.value, y.path);
    let c: HealthConfig = parse_as(v, path)?;
    let addr = endpoint_at(path, &c.endpoint)?;
    if !c.path.starts_with('/') {
        return Err(ConfigError::at(format!("{path}.path"), "must start with /"));
    }
    Ok(Box::new(Spec { addr, path: c.path }))
}

async fn health(State(h): State<Arc<Health>>) -> impl IntoResponse {
    match h.get() {
        Health::READY => (StatusCode::OK, "{\"status\":\"Server available\"}"),
        Health::DRAINING => (
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"status\":\"Server is shutting down\"}",
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"status\":\"Server not available\"}",
        ),
    }
}

impl ExtensionSpec for Spec {
    fn start(
        &self,
        id: &ComponentId,
        ctx: ExtensionCtx,
    ) -> BoxFuture<'static, Result<Started, ListenError>> {
        let addr = self.addr;
        let path = self.path.clone();
        let id = id.to_string();
        Box::pin(async move {
            let (listener, local) = ListenError::bind(format!("extensions.{id}"), addr).await?;
            let mut app = Router::new().route(&path, get(health));
            if path != "/" {
                app = app.route("/", get(health));
            }
            let app = app.with_state(ctx.health.clone());
            let stop = ctx.shutdown.clone();
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
            });
            Ok(Started {
                listening: vec![Listening {
                    component: id,
                    kind: "http",
                    addr: local,
                }],
                tasks: vec![task],
            })
        })
    }
}
