//! TLS for receivers (`protocols.{grpc,http}.tls: { cert_file, key_file, client_ca_file }`),
//! with rustls and the ring provider.
//!
//! Certificates are parsed when the config is loaded, so `validate` reports a bad file by its
//! YAML path instead of the first client finding out. With `client_ca_file` every client must
//! present a certificate signed by that CA (mutual TLS). Without a `tls` block a protocol is
//! plaintext; that is the explicit choice, as in the Collector.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::ConfigError;

/// How long a client may take to finish its TLS handshake before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections that finished their handshake and wait for the HTTP server to take them.
const ACCEPTED_BACKLOG: usize = 64;

/// `receivers.<id>.protocols.<grpc|http>.tls`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain of the server, leaf first.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// PEM CA bundle: when given, clients must present a certificate it signed (mTLS).
    #[serde(default)]
    pub client_ca_file: Option<String>,
}

/// Loaded, checked server TLS material.
#[derive(Clone)]
pub struct ServerTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
    rustls: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mtls", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

fn read(path: &str, at: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::at(at, format!("cannot read {path:?}: {e}")))
}

fn certs(pem: &[u8], at: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ConfigError::at(at, format!("{path:?}: not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(ConfigError::at(
            at,
            format!("{path:?} holds no PEM certificate"),
        ));
    }
    Ok(certs)
}

impl ServerTlsConfig {
    /// Reads and checks the files; `path` is the YAML path of this `tls` block.
    pub fn load(&self, path: &str) -> Result<ServerTls, ConfigError> {
        let cert_at = format!("{path}.cert_file");
        let key_at = format!("{path}.key_file");
        let cert_pem = read(&self.cert_file, &cert_at)?;
        let chain = certs(&cert_pem, &cert_at, &self.cert_file)?;
        let key_pem = read(&self.key_file, &key_at)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            ConfigError::at(
                &key_at,
                format!("{:?}: no usable PEM private key: {e}", self.key_file),
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::at(path, format!("TLS set-up: {e}")))?;
        let (builder, client_ca_pem) = match &self.client_ca_file {
            Some(ca) => {
                let at = format!("{path}.client_ca_file");
                let pem = read(ca, &at)?;
                let mut roots = rustls::RootCertStore::empty();
                for c in certs(&pem, &at, ca)? {
                    roots
                        .add(c)
                        .map_err(|e| ConfigError::at(&at, format!("{ca:?}: {e}")))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| ConfigError::at(&at, format!("{ca:?}: {e}")))?;
                (builder.with_client_cert_verifier(verifier), Some(pem))
            }
            None => (builder.with_no_client_auth(), None),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            ConfigError::at(
                &key_at,
                format!("does not match the certificate in cert_file: {e}"),
            )
        })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls {
            cert_pem,
            key_pem,
            client_ca_pem,
            rustls: Arc::new(config),
        })
    }
}

impl ServerTls {
    /// The same material for tonic's gRPC server.
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

    /// Wraps a bound listener: handshakes run on their own tasks, so a slow client never holds
    /// up the others, and only finished ones reach the HTTP server.
    pub fn listener(&self, tcp: TcpListener) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(self.rustls.clone());
        let (tx, rx) = mpsc::channel(ACCEPTED_BACKLOG);
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Small answers must not wait for delayed ACKs (Nagle); best effort.
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "TLS handshake refused: {e}")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            rx,
            local,
            task: task.abort_handle(),
        })
    }
}

/// A TLS listener for `axum::serve`.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::AbortHandle,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task only ends when aborted, i.e. when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
