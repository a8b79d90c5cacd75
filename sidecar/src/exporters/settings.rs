//! Settings shared by the network exporters: TLS, header checks, compression.

use serde::Deserialize;

use crate::config::ConfigError;

/// TLS settings of a network exporter (Collector names).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Plaintext; the default only for `http://` endpoints.
    #[serde(default)]
    pub insecure: Option<bool>,
    /// Accept any server certificate (otlphttp only). Testing only.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub cert_file: Option<String>,
    #[serde(default)]
    pub key_file: Option<String>,
    #[serde(default)]
    pub server_name_override: Option<String>,
}

impl TlsConfig {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(ConfigError::at(
                format!("{path}.tls"),
                "cert_file and key_file go together (client certificate for mTLS)",
            ));
        }
        for (k, f) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ] {
            if let Some(f) = f {
                if !std::path::Path::new(f).is_file() {
                    return Err(ConfigError::at(
                        format!("{path}.tls.{k}"),
                        format!("{f:?} is not a readable file"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Checks header names/values so a typo fails at load, not at the first export.
pub fn validate_headers(
    headers: &std::collections::BTreeMap<String, String>,
    path: &str,
) -> Result<(), ConfigError> {
    for (k, v) in headers {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            return Err(ConfigError::at(
                format!("{path}.headers.{k}"),
                "not a valid HTTP header name",
            ));
        }
        if http::HeaderValue::from_str(v).is_err() {
            return Err(ConfigError::at(
                format!("{path}.headers.{k}"),
                "value is not a valid HTTP header value",
            ));
        }
    }
    Ok(())
}

/// Parses the `compression` setting: gzip (default) or none.
pub fn gzip_setting(v: &Option<String>, path: &str) -> Result<bool, ConfigError> {
    match v.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("gzip") => Ok(true),
        Some("none") | Some("") => Ok(false),
        Some(other) => Err(ConfigError::at(
            format!("{path}.compression"),
            format!("{other:?} is not supported; use gzip or none"),
        )),
    }
}
