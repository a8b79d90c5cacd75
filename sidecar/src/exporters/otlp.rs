//! otlp: OTLP/gRPC exporter (how Jaeger ≥ 1.35 and most backends ingest).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;
use tonic_types::StatusExt;

use super::encoded::{self, ExportCodec};
use super::{
    gzip_setting, validate_headers, BoxFuture, BuildCtx, BuildError, Built, ExportError, ExportOk,
    Exporter, ExporterSpec, QueueConfig, RetryConfig, TlsConfig,
};
use crate::component::Factory;
use crate::config::{parse_as, ComponentId, ComponentYaml, ConfigError};
use crate::model::otlp::{EXPORT_PATH, TRACE_SERVICE};
use crate::model::Batch;

pub const FACTORY: Factory<dyn ExporterSpec> = Factory {
    kind: "otlp",
    parse,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct OtlpConfig {
    endpoint: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    compression: Option<String>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default)]
    tls: TlsConfig,
    #[serde(default)]
    sending_queue: QueueConfig,
    #[serde(default)]
    retry_on_failure: RetryConfig,
    /// Largest response accepted from the backend.
    #[serde(default = "default_max_msg")]
    max_recv_msg_size_mib: usize,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_msg() -> usize {
    16
}

struct Spec {
    c: OtlpConfig,
    uri: String,
    tls: bool,
    gzip: bool,
}

fn parse(y: &ComponentYaml<'_>) -> Result<Box<dyn ExporterSpec>, ConfigError> {
    spec_from(y.value, y.path)
}

/// Checks an `otlp` exporter's settings at `path`; the loadbalancing exporter builds one per
/// backend this way, with the backend's endpoint filled in.
pub fn spec_from(v: &serde_yaml::Value, path: &str) -> Result<Box<dyn ExporterSpec>, ConfigError> {
    let c: OtlpConfig = parse_as(v, path)?;
    let ep = c.endpoint.trim();
    // Collector semantics: an explicit scheme decides; a bare host:port means TLS unless
    // tls.insecure is set.
    let (uri, tls) = if let Some(rest) = ep.strip_prefix("http://") {
        (format!("http://{rest}"), false)
    } else if let Some(rest) = ep.strip_prefix("https://") {
        (format!("https://{rest}"), true)
    } else if ep.contains("://") {
        return Err(ConfigError::at(
            format!("{path}.endpoint"),
            format!("{ep:?}: only http:// and https:// are supported"),
        ));
    } else {
        let insecure = c.tls.insecure.unwrap_or(false);
        (
            format!("{}://{ep}", if insecure { "http" } else { "https" }),
            !insecure,
        )
    };
    if ep.is_empty()
        || uri
            .parse::<http::Uri>()
            .map(|u| u.host().is_none())
            .unwrap_or(true)
    {
        return Err(ConfigError::at(
            format!("{path}.endpoint"),
            format!("{ep:?} is not a valid endpoint (host:port or http(s)://host:port)"),
        ));
    }
    if tls && c.tls.insecure == Some(true) && ep.starts_with("https://") {
        return Err(ConfigError::at(
            format!("{path}.tls.insecure"),
            "true contradicts the https:// endpoint",
        ));
    }
    if c.tls.insecure == Some(false) && ep.starts_with("http://") {
        return Err(ConfigError::at(
            format!("{path}.tls.insecure"),
            "false contradicts the http:// endpoint; use https:// or host:port for TLS",
        ));
    }
    if c.tls.insecure_skip_verify {
        return Err(ConfigError::at(
            format!("{path}.tls.insecure_skip_verify"),
            "not supported by the gRPC exporter; give the server's CA in tls.ca_file",
        ));
    }
    c.tls.validate(path)?;
    validate_headers(&c.headers, path)?;
    for k in c.headers.keys() {
        if MetadataKey::<tonic::metadata::Ascii>::from_bytes(k.to_ascii_lowercase().as_bytes())
            .is_err()
        {
            return Err(ConfigError::at(
                format!("{path}.headers.{k}"),
                "not a valid gRPC metadata key",
            ));
        }
    }
    let gzip = gzip_setting(&c.compression, path)?;
    c.sending_queue.validate(path)?;
    c.retry_on_failure.validate(path)?;
    if c.timeout.is_zero() {
        return Err(ConfigError::at(
            format!("{path}.timeout"),
            "must be greater than 0",
        ));
    }
    Ok(Box::new(Spec { c, uri, tls, gzip }))
}

impl ExporterSpec for Spec {
    fn build(&self, _id: &ComponentId, _ctx: &BuildCtx) -> Result<Built, BuildError> {
        let mut ep = Endpoint::from_shared(self.uri.clone())
            .map_err(|e| BuildError::refused(format!("endpoint {}", self.uri), e))?
            .timeout(self.c.timeout)
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if self.tls {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(ca) = &self.c.tls.ca_file {
                let pem = std::fs::read(ca).map_err(|e| BuildError::file("tls.ca_file", ca, e))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let (Some(cert), Some(key)) = (&self.c.tls.cert_file, &self.c.tls.key_file) {
                let c =
                    std::fs::read(cert).map_err(|e| BuildError::file("tls.cert_file", cert, e))?;
                let k = std::fs::read(key).map_err(|e| BuildError::file("tls.key_file", key, e))?;
                tls = tls.identity(Identity::from_pem(c, k));
            }
            if let Some(name) = &self.c.tls.server_name_override {
                tls = tls.domain_name(name.clone());
            }
            ep = ep
                .tls_config(tls)
                .map_err(|e| BuildError::refused("tls", e))?;
        }
        let channel = ep.connect_lazy();
        let mut headers = Vec::new();
        for (k, v) in &self.c.headers {
            let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                .map_err(|e| BuildError::refused(format!("header {k}"), e))?;
            let val = MetadataValue::try_from(v.as_str())
                .map_err(|e| BuildError::refused(format!("header {k}"), e))?;
            headers.push((key, val));
        }
        Ok(Built {
            exporter: Arc::new(OtlpExporter {
                channel,
                headers: Arc::new(headers),
                gzip: self.gzip,
                timeout: self.c.timeout,
                max_recv: self.c.max_recv_msg_size_mib * 1024 * 1024,
            }),
            queue: self.c.sending_queue.clone(),
            retry: self.c.retry_on_failure.clone(),
        })
    }
}

struct OtlpExporter {
    channel: Channel,
    headers: Arc<
        Vec<(
            MetadataKey<tonic::metadata::Ascii>,
            MetadataValue<tonic::metadata::Ascii>,
        )>,
    >,
    gzip: bool,
    timeout: Duration,
    max_recv: usize,
}

/// The status code as a metric label: `grpc_` + the spec's snake_case name.
fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "grpc_ok",
        Code::Cancelled => "grpc_cancelled",
        Code::Unknown => "grpc_unknown",
        Code::InvalidArgument => "grpc_invalid_argument",
        Code::DeadlineExceeded => "grpc_deadline_exceeded",
        Code::NotFound => "grpc_not_found",
        Code::AlreadyExists => "grpc_already_exists",
        Code::PermissionDenied => "grpc_permission_denied",
        Code::ResourceExhausted => "grpc_resource_exhausted",
        Code::FailedPrecondition => "grpc_failed_precondition",
        Code::Aborted => "grpc_aborted",
        Code::OutOfRange => "grpc_out_of_range",
        Code::Unimplemented => "grpc_unimplemented",
        Code::Internal => "grpc_internal",
        Code::Unavailable => "grpc_unavailable",
        Code::DataLoss => "grpc_data_loss",
        Code::Unauthenticated => "grpc_unauthenticated",
    }
}

/// OTLP spec: which gRPC failures may be retried. RESOURCE_EXHAUSTED only with a RetryInfo hint.
pub fn classify(status: &tonic::Status) -> ExportError {
    let retry_after = status.get_details_retry_info().and_then(|r| r.retry_delay);
    let code = status.code();
    let reason = code_label(code);
    let msg = format!("{code:?}: {}", status.message());
    match code {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => ExportError::retryable(reason, msg, retry_after),
        Code::ResourceExhausted if retry_after.is_some() => {
            ExportError::retryable(reason, msg, retry_after)
        }
        _ => ExportError::permanent(reason, msg),
    }
}

impl Exporter for OtlpExporter {
    fn export(&self, batch: Arc<Batch>) -> BoxFuture<'static, Result<ExportOk, ExportError>> {
        let mut client =
            tonic::client::Grpc::new(self.channel.clone()).max_decoding_message_size(self.max_recv);
        if self.gzip {
            client = client
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        let headers = self.headers.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            // Encoded once per batch, shared by retries and by other exporters of this batch.
            let body = encoded::proto(&batch);
            let mut req = tonic::Request::new(body);
            req.set_timeout(timeout);
            for (k, v) in headers.iter() {
                req.metadata_mut().insert(k.clone(), v.clone());
            }
            // The same path and method extension the generated `TraceServiceClient` uses.
            req.extensions_mut()
                .insert(tonic::GrpcMethod::new(TRACE_SERVICE, "Export"));
            // As the generated client does: a channel that is not ready fails with UNKNOWN.
            let sent = match client.ready().await {
                Ok(()) => {
                    client
                        .unary(
                            req,
                            http::uri::PathAndQuery::from_static(EXPORT_PATH),
                            ExportCodec,
                        )
                        .await
                }
                Err(e) => Err(tonic::Status::unknown(format!(
                    "Service was not ready: {e}"
                ))),
            };
            match sent {
                Ok(resp) => Ok(ExportOk {
                    rejected_spans: resp
                        .into_inner()
                        .partial_success
                        .map(|p| p.rejected_spans.max(0) as u64)
                        .unwrap_or(0),
                }),
                Err(status) => Err(classify(&status)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn retryable_codes_follow_the_otlp_spec() {
        for code in [
            Code::Unavailable,
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::DataLoss,
        ] {
            assert!(
                classify(&tonic::Status::new(code, "x")).retryable,
                "{code:?}"
            );
        }
        for code in [
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::NotFound,
            Code::Internal,
            Code::ResourceExhausted,
        ] {
            assert!(
                !classify(&tonic::Status::new(code, "x")).retryable,
                "{code:?}"
            );
        }
        let hinted = tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "slow down",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(3))),
        );
        let e = classify(&hinted);
        assert!(e.retryable);
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
        assert_eq!(e.reason, "grpc_resource_exhausted");
    }
}
