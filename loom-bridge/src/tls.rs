//! TLS and mutual TLS for the gRPC listener: `cert_file`, `key_file`, `client_ca_file`, the
//! same shape as the sidecar's receivers (`sidecar/src/receivers/tls.rs`).
//!
//! The files are read and parsed at start-up, so a bad path or a non-PEM file stops the bridge
//! with the setting's name instead of the first agent finding out. With `client_ca_file` every
//! agent must present a certificate that CA signed.

use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the TLS material is (paths as given by flags or variables).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// PEM certificate chain of the bridge, leaf first.
    pub cert_file: Option<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<String>,
    /// PEM CA bundle: when given, agents must present a certificate it signed (mTLS).
    pub client_ca_file: Option<String>,
}

/// A TLS setting that cannot be used; `setting` is the flag (or variable) it came from.
#[derive(Debug, thiserror::Error)]
#[error("{setting} {path:?}: {message}")]
pub struct TlsError {
    pub setting: &'static str,
    pub path: String,
    pub message: String,
}

/// Loaded, checked TLS material.
#[derive(Clone)]
pub struct ServerTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mtls", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

fn read(setting: &'static str, path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError {
        setting,
        path: path.to_owned(),
        message: format!("cannot read: {e}"),
    })
}

fn certs(setting: &'static str, path: &str) -> Result<Vec<u8>, TlsError> {
    let pem = read(setting, path)?;
    let bad = |message: String| TlsError {
        setting,
        path: path.to_owned(),
        message,
    };
    let n = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM certificates: {e}")))?
        .len();
    if n == 0 {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(pem)
}

impl TlsFiles {
    /// `None` when no file is set (plaintext); an error when only some of cert/key are, or a file
    /// cannot be read or parsed. `names` are the settings' names for errors: (cert, key, ca).
    pub fn load(
        &self,
        names: (&'static str, &'static str, &'static str),
    ) -> Result<Option<ServerTls>, TlsError> {
        let (cert_name, key_name, ca_name) = names;
        let (cert, key) = match (&self.cert_file, &self.key_file) {
            (None, None) => {
                return match &self.client_ca_file {
                    None => Ok(None),
                    Some(ca) => Err(TlsError {
                        setting: ca_name,
                        path: ca.clone(),
                        message: format!(
                            "needs {cert_name} and {key_name}: mutual TLS is TLS first"
                        ),
                    }),
                };
            }
            (Some(c), Some(k)) => (c, k),
            (Some(c), None) => {
                return Err(TlsError {
                    setting: cert_name,
                    path: c.clone(),
                    message: format!("needs {key_name} too"),
                })
            }
            (None, Some(k)) => {
                return Err(TlsError {
                    setting: key_name,
                    path: k.clone(),
                    message: format!("needs {cert_name} too"),
                })
            }
        };
        let cert_pem = certs(cert_name, cert)?;
        let key_pem = read(key_name, key)?;
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError {
            setting: key_name,
            path: key.clone(),
            message: format!("no usable PEM private key: {e}"),
        })?;
        let client_ca_pem = match &self.client_ca_file {
            Some(ca) => Some(certs(ca_name, ca)?),
            None => None,
        };
        Ok(Some(ServerTls {
            cert_pem,
            key_pem,
            client_ca_pem,
        }))
    }
}

impl ServerTls {
    /// Whether agents must present a client certificate.
    pub fn mutual(&self) -> bool {
        self.client_ca_pem.is_some()
    }

    /// The material as tonic's server TLS settings.
    pub fn tonic(&self) -> tonic::transport::ServerTlsConfig {
        let mut c = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.client_ca_pem {
            c = c.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        c
    }
}
