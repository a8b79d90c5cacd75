//! TLS for tests (dev-dependency only): a CA and leaf certificates it signs, as PEM, and a gRPC
//! client channel that trusts them.

use std::time::Duration;

pub use rcgen::ExtendedKeyUsagePurpose;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A CA that can sign leaves.
pub type Issuer = CertifiedIssuer<'static, KeyPair>;

/// A self-signed CA whose common name is `name`.
pub fn ca(name: &str) -> Issuer {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("no names to check");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key pair")).expect("self-signed CA")
}

/// A leaf certificate for `sans` (the first is also its common name) signed by `issuer`, for
/// `usage`: `(certificate PEM, private key PEM)`.
pub fn leaf(issuer: &Issuer, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let key = KeyPair::generate().expect("key pair");
    let names: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut p = CertificateParams::new(names).expect("valid subject alternative names");
    p.distinguished_name.push(DnType::CommonName, sans[0]);
    p.extended_key_usages = vec![usage];
    let cert = p.signed_by(&key, issuer).expect("signed leaf");
    (cert.pem(), key.serialize_pem())
}

/// A gRPC channel to `https://{addr}` (server name `localhost`) trusting `ca_pem`, presenting
/// `identity` (certificate PEM, key PEM) when given; the error as text when it cannot connect.
pub async fn tls_channel(
    addr: &str,
    ca_pem: &str,
    identity: Option<&(String, String)>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .timeout(Duration::from_secs(5))
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))
}
