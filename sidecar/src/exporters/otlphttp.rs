//! otlphttp: OTLP/HTTP exporter (protobuf or JSON, gzip, headers), for vendors and gateways.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use serde::Deserialize;

use super::encoded;
use super::{
    gzip_setting, validate_headers, BoxFuture, BuildCtx, BuildError, Built, ExportError, ExportOk,
    Exporter, ExporterSpec, QueueConfig, RetryConfig, TlsConfig,
};
use crate::component::Factory;
use crate::config::{parse_as, ComponentId, ComponentYaml, ConfigError};
use crate::model::Batch;

pub const FACTORY: Factory<dyn ExporterSpec> = Factory {
    kind: "otlphttp",
    parse,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct OtlpHttpConfig {
    /// Base URL; traces go to `{endpoint}/v1/traces`.
    #[serde(default)]
    endpoint: Option<String>,
    /// Full URL for traces, overriding `endpoint`.
    #[serde(default)]
    traces_endpoint: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    compression: Option<String>,
    /// `proto` (default) or `json`.
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default)]
    tls: TlsConfig,
    #[serde(default)]
    sending_queue: QueueConfig,
    #[serde(default)]
    retry_on_failure: RetryConfig,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

struct Spec {
    c: OtlpHttpConfig,
    url: reqwest::Url,
    gzip: bool,
    json: bool,
}

fn parse(y: &ComponentYaml<'_>) -> Result<Box<dyn ExporterSpec>, ConfigError> {
    let (v, path) = (y.value, y.path);
    let c: OtlpHttpConfig = parse_as(v, path)?;
    let (raw, field) = match (&c.traces_endpoint, &c.endpoint) {
        (Some(t), _) => (t.clone(), "traces_endpoint"),
        (None, Some(e)) => (format!("{}/v1/traces", e.trim_end_matches('/')), "endpoint"),
        (None, None) => {
            return Err(ConfigError::at(
                format!("{path}.endpoint"),
                "required (or traces_endpoint)",
            ))
        }
    };
    let url = reqwest::Url::parse(&raw)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            ConfigError::at(
                format!("{path}.{field}"),
                format!("{raw:?} is not an http(s) URL"),
            )
        })?;
    // The URL's scheme decides plaintext or TLS; a contradicting `insecure` is a mistake.
    match (c.tls.insecure, url.scheme()) {
        (Some(true), "https") => {
            return Err(ConfigError::at(
                format!("{path}.tls.insecure"),
                "true contradicts the https:// endpoint",
            ))
        }
        (Some(false), "http") => {
            return Err(ConfigError::at(
                format!("{path}.tls.insecure"),
                "false contradicts the http:// endpoint; use https:// for TLS",
            ))
        }
        _ => {}
    }
    c.tls.validate(path)?;
    validate_headers(&c.headers, path)?;
    let gzip = gzip_setting(&c.compression, path)?;
    let json = match c.encoding.as_deref() {
        None | Some("proto") | Some("protobuf") => false,
        Some("json") => true,
        Some(other) => {
            return Err(ConfigError::at(
                format!("{path}.encoding"),
                format!("{other:?}: use proto or json"),
            ))
        }
    };
    c.sending_queue.validate(path)?;
    c.retry_on_failure.validate(path)?;
    Ok(Box::new(Spec { c, url, gzip, json }))
}

impl ExporterSpec for Spec {
    fn build(&self, _id: &ComponentId, _ctx: &BuildCtx) -> Result<Built, BuildError> {
        crate::component::install_crypto_provider();
        let mut b = reqwest::Client::builder()
            .timeout(self.c.timeout)
            .connect_timeout(Duration::from_secs(5))
            .tls_danger_accept_invalid_certs(self.c.tls.insecure_skip_verify);
        if let Some(ca) = &self.c.tls.ca_file {
            let pem = std::fs::read(ca).map_err(|e| BuildError::file("tls.ca_file", ca, e))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| BuildError::refused(format!("tls.ca_file {ca}"), e))?
            {
                b = b.tls_certs_merge([cert]);
            }
        }
        if let (Some(cert), Some(key)) = (&self.c.tls.cert_file, &self.c.tls.key_file) {
            let mut pem =
                std::fs::read(cert).map_err(|e| BuildError::file("tls.cert_file", cert, e))?;
            pem.extend(std::fs::read(key).map_err(|e| BuildError::file("tls.key_file", key, e))?);
            b = b.identity(
                reqwest::Identity::from_pem(&pem)
                    .map_err(|e| BuildError::refused("tls client identity", e))?,
            );
        }
        let client = b
            .build()
            .map_err(|e| BuildError::refused("http client", e))?;
        let mut headers = http::HeaderMap::new();
        for (k, v) in &self.c.headers {
            headers.insert(
                http::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|e| BuildError::refused(format!("header {k}"), e))?,
                http::HeaderValue::from_str(v)
                    .map_err(|e| BuildError::refused(format!("header {k}"), e))?,
            );
        }
        Ok(Built {
            exporter: Arc::new(OtlpHttpExporter {
                client,
                url: self.url.clone(),
                headers,
                gzip: self.gzip,
                json: self.json,
            }),
            queue: self.c.sending_queue.clone(),
            retry: self.c.retry_on_failure.clone(),
        })
    }
}

struct OtlpHttpExporter {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: http::HeaderMap,
    gzip: bool,
    json: bool,
}

/// `Retry-After`: delay-seconds, or an HTTP-date (IMF-fixdate) turned into a delay from now.
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_imf_fixdate(v)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    // A date in the past means "now"; still a hint, so no backoff of our own is added.
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` → seconds since the Unix epoch (RFC 9110 §5.6.7).
fn parse_imf_fixdate(s: &str) -> Option<u64> {
    let rest = s.split_once(", ")?.1;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: u64 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as u64
        + 1;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<u64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    if !(1..=31).contains(&day) || *h > 23 || *m > 59 || *sec > 60 || year < 1970 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm), shifted so the year starts in March.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days)
        .ok()
        .map(|d| d * 86_400 + h * 3600 + m * 60 + sec)
}

/// OTLP/HTTP spec: 429, 502, 503, 504 are retryable (honouring Retry-After); others permanent.
pub fn classify_http(status: u16, headers: &http::HeaderMap, body: &str) -> ExportError {
    let msg = format!(
        "HTTP {status}: {}",
        body.chars().take(300).collect::<String>()
    );
    let reason = format!("http_{status}");
    match status {
        429 | 502 | 503 | 504 => ExportError::retryable(reason, msg, retry_after(headers)),
        _ => ExportError::permanent(reason, msg),
    }
}

impl Exporter for OtlpHttpExporter {
    fn export(&self, batch: Arc<Batch>) -> BoxFuture<'static, Result<ExportOk, ExportError>> {
        let json = self.json;
        let gzip = self.gzip;
        let client = self.client.clone();
        let url = self.url.clone();
        let headers = self.headers.clone();
        Box::pin(async move {
            // Encoded (and gzipped) once per batch, shared by retries and by other exporters of
            // this batch; reqwest sends the shared bytes without copying them.
            let body = encoded::http(&batch, json, gzip)?;
            let mut rb = client.post(url).headers(headers).header(
                http::header::CONTENT_TYPE,
                if json {
                    "application/json"
                } else {
                    "application/x-protobuf"
                },
            );
            if gzip {
                rb = rb.header(http::header::CONTENT_ENCODING, "gzip");
            }
            let resp = rb.body(body).send().await.map_err(|e| {
                let reason = if e.is_timeout() { "timeout" } else { "connect" };
                ExportError::retryable(reason, e.to_string(), None)
            })?;
            let status = resp.status().as_u16();
            let resp_headers = resp.headers().clone();
            let bytes = resp.bytes().await.unwrap_or_default();
            if (200..300).contains(&status) {
                let partial = if json {
                    serde_json::from_slice::<ExportTraceServiceResponse>(&bytes).ok()
                } else {
                    ExportTraceServiceResponse::decode(bytes.as_ref()).ok()
                };
                return Ok(ExportOk {
                    rejected_spans: partial
                        .and_then(|p| p.partial_success)
                        .map(|p| p.rejected_spans.max(0) as u64)
                        .unwrap_or(0),
                });
            }
            Err(classify_http(
                status,
                &resp_headers,
                &String::from_utf8_lossy(&bytes),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_follow_the_otlp_spec() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        let e = classify_http(503, &h, "busy");
        assert!(e.retryable);
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
        for s in [429, 502, 504] {
            assert!(
                classify_http(s, &http::HeaderMap::new(), "").retryable,
                "{s}"
            );
        }
        assert_eq!(
            parse_imf_fixdate("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_imf_fixdate("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_imf_fixdate("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        let mut past = http::HeaderMap::new();
        past.insert(
            http::header::RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&past), Some(Duration::ZERO));
        for s in [400, 401, 403, 404, 413, 500] {
            assert!(
                !classify_http(s, &http::HeaderMap::new(), "").retryable,
                "{s}"
            );
        }
    }
}
