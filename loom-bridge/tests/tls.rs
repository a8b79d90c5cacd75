//! TLS and mutual TLS on the bridge's gRPC listener, with certificates made in the test
//! (rcgen): an agent with a certificate from the right CA registers, streams and publishes; an
//! agent trusting another CA, one without a client certificate, one whose certificate another CA
//! signed, and a plaintext one are refused. Bad TLS settings are refused at load, naming them.
mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{event, subs, TestBridge};
use loom_bridge::tls::TlsFiles;
use loom_bridge::BridgeConfig;
use loom_core::proto::bridge_client::BridgeClient;
use loom_core::proto::server_message::Msg as ServerMsg;
use loom_core::proto::RegisterAgentRequest;
use loom_test_pki::{ca, leaf, ExtendedKeyUsagePurpose};
use tonic::transport::{Channel, Endpoint};

const NAMES: (&str, &str, &str) = ("--tls-cert-file", "--tls-key-file", "--tls-client-ca-file");

struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    other_ca_pem: String,
    client: (String, String),
    stranger: (String, String),
}

impl Pki {
    fn new() -> Pki {
        let root = ca("loom test CA");
        let other = ca("some other CA");
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca_pem: root.pem(),
            other_ca_pem: other.pem(),
            client: leaf(&root, &["agent-1"], ExtendedKeyUsagePurpose::ClientAuth),
            stranger: leaf(&other, &["agent-2"], ExtendedKeyUsagePurpose::ClientAuth),
        };
        let (cert, key) = leaf(
            &root,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        pki.write("server.pem", &cert);
        pki.write("server.key", &key);
        pki.write("ca.pem", &pki.ca_pem);
        pki
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p: PathBuf = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }

    fn path(&self, name: &str) -> Option<String> {
        Some(self.dir.path().join(name).to_string_lossy().into_owned())
    }

    fn files(&self, mtls: bool) -> TlsFiles {
        TlsFiles {
            cert_file: self.path("server.pem"),
            key_file: self.path("server.key"),
            client_ca_file: if mtls { self.path("ca.pem") } else { None },
        }
    }
}

async fn start(files: &TlsFiles) -> TestBridge {
    TestBridge::start(BridgeConfig {
        tls: files.load(NAMES).expect("TLS files load"),
        ..BridgeConfig::default()
    })
    .await
}

async fn tls_channel(
    tb: &TestBridge,
    ca: &str,
    identity: Option<&(String, String)>,
) -> Result<Channel, String> {
    loom_test_pki::tls_channel(&tb.addr.to_string(), ca, identity).await
}

/// Registers `id`; the error text when the connection or the call fails.
async fn register(channel: Result<Channel, String>, id: &str) -> Result<String, String> {
    let mut c = BridgeClient::new(channel?);
    c.register_agent(RegisterAgentRequest {
        agent_id: id.into(),
        subscriptions: subs(&["tls.*"]),
        ..RegisterAgentRequest::default()
    })
    .await
    .map(|r| r.into_inner().session_id)
    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test]
async fn mtls_round_trip_and_every_wrong_party_refused() {
    let pki = Pki::new();
    let tb = start(&pki.files(true)).await;

    // The right CA and a client certificate it signed: register, stream, publish, deliver.
    let channel = tls_channel(&tb, &pki.ca_pem, Some(&pki.client))
        .await
        .expect("mTLS connect");
    let mut client = BridgeClient::new(channel);
    let session = client
        .register_agent(RegisterAgentRequest {
            agent_id: "agent-1".into(),
            subscriptions: subs(&["tls.*"]),
            ..RegisterAgentRequest::default()
        })
        .await
        .expect("register over mTLS")
        .into_inner()
        .session_id;
    let (tx, mut rx) = common::open_stream(&mut client, "agent-1", &session)
        .await
        .expect("stream over mTLS");
    let mut e = event("secret reading");
    e.id = "ev-tls".into();
    tx.send(loom_core::proto::ClientMessage {
        msg: Some(loom_core::proto::client_message::Msg::Publish(
            loom_core::proto::Publish {
                topic: "tls.data".into(),
                event: Some(e),
            },
        )),
    })
    .await
    .unwrap();
    let (mut acked, mut delivered) = (false, false);
    while !(acked && delivered) {
        let m = tokio::time::timeout(Duration::from_secs(10), rx.message())
            .await
            .expect("message within 10 s")
            .expect("stream ok")
            .expect("stream open");
        match m.msg {
            Some(ServerMsg::PublishAck(a)) => {
                assert_eq!((a.event_id.as_str(), a.code), ("ev-tls", 0));
                acked = true;
            }
            Some(ServerMsg::Delivery(d)) => {
                assert_eq!(d.event.unwrap().payload, b"secret reading");
                delivered = true;
            }
            _ => {}
        }
    }

    // A client trusting another CA does not accept the bridge.
    let wrong_ca = register(
        tls_channel(&tb, &pki.other_ca_pem, Some(&pki.client)).await,
        "agent-x",
    )
    .await;
    assert!(wrong_ca.is_err(), "client with the wrong CA got in");
    // No client certificate, or one another CA signed: the bridge refuses the handshake.
    let no_cert = register(tls_channel(&tb, &pki.ca_pem, None).await, "agent-y").await;
    assert!(no_cert.is_err(), "client without a certificate got in");
    let stranger = register(
        tls_channel(&tb, &pki.ca_pem, Some(&pki.stranger)).await,
        "agent-z",
    )
    .await;
    assert!(stranger.is_err(), "certificate from another CA accepted");
    // Plaintext to the TLS port.
    let plain = register(
        Endpoint::from_shared(format!("http://{}", tb.addr))
            .unwrap()
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| e.to_string()),
        "agent-p",
    )
    .await;
    assert!(plain.is_err(), "plaintext client got in");
    // None of them got registered; the good agent is still served.
    let ids: Vec<String> = tb.bridge.agents().into_iter().map(|a| a.agent_id).collect();
    assert_eq!(ids, ["agent-1"]);
    tb.stop().await;
}

#[tokio::test]
async fn tls_without_client_ca_takes_any_client_trusting_the_bridge() {
    let pki = Pki::new();
    let tb = start(&pki.files(false)).await;
    register(tls_channel(&tb, &pki.ca_pem, None).await, "anon")
        .await
        .expect("TLS without a client certificate");
    let wrong = register(tls_channel(&tb, &pki.other_ca_pem, None).await, "anon-2").await;
    assert!(wrong.is_err(), "client with the wrong CA got in");
    tb.stop().await;
}

#[test]
fn bad_tls_settings_are_refused_at_load_naming_the_setting() {
    let pki = Pki::new();
    let not_pem = pki.write("junk.pem", "not a certificate");
    let ok = pki.files(true);
    let cases = [
        (
            TlsFiles {
                key_file: None,
                ..ok.clone()
            },
            "--tls-cert-file",
            "needs --tls-key-file too",
        ),
        (
            TlsFiles {
                cert_file: None,
                key_file: None,
                ..ok.clone()
            },
            "--tls-client-ca-file",
            "mutual TLS is TLS first",
        ),
        (
            TlsFiles {
                cert_file: Some(not_pem.clone()),
                ..ok.clone()
            },
            "--tls-cert-file",
            "holds no PEM certificate",
        ),
        (
            TlsFiles {
                key_file: Some(not_pem.clone()),
                ..ok.clone()
            },
            "--tls-key-file",
            "no usable PEM private key",
        ),
        (
            TlsFiles {
                client_ca_file: Some("/nonexistent/ca.pem".into()),
                ..ok.clone()
            },
            "--tls-client-ca-file",
            "cannot read",
        ),
    ];
    for (files, setting, needle) in cases {
        let e = files.load(NAMES).unwrap_err();
        assert_eq!(e.setting, setting, "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
    assert!(TlsFiles::default().load(NAMES).unwrap().is_none());
    assert!(ok.load(NAMES).unwrap().unwrap().mutual());
}
