//! Bearer tokens and per-token rules over loopback with a real tonic client: no token, a wrong
//! token, and a token outside its rules (agent id, subscription, topic, capability) each get
//! their own code, while an allowed agent keeps being served.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{event, subs, TestBridge};
use loom_bridge::auth::{Auth, UNAUTHENTICATED};
use loom_bridge::BridgeConfig;
use loom_core::proto::bridge_client::BridgeClient;
use loom_core::proto::client_message::Msg as ClientMsg;
use loom_core::proto::server_message::Msg as ServerMsg;
use loom_core::proto::{
    ActionCall, ClientMessage, HeartbeatRequest, Publish, PublishAck, RegisterAgentRequest,
    ServerMessage,
};
use tokio::sync::mpsc;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

const TOKENS: &str = "\
tokens:
  - name: sensors
    token: sensors-s3cret
    agents: [\"sensor-*\"]
    publish: [\"sensor.*\"]
    subscribe: [\"control.*\"]
    provide: []
    invoke: []
  - name: ops
    token: ops-s3cret
";

/// Adds `authorization: Bearer <token>` to every request, as the Python SDK does.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Client = BridgeClient<InterceptedService<Channel, Bearer>>;

async fn client(tb: &TestBridge, header: Option<&str>) -> Client {
    let channel = Channel::from_shared(format!("http://{}", tb.addr))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    BridgeClient::with_interceptor(channel, Bearer(header.map(|h| h.parse().unwrap())))
}

async fn start() -> TestBridge {
    let auth = Auth::parse("tokens.yaml", TOKENS).expect("token file");
    TestBridge::start(BridgeConfig {
        auth: Some(Arc::new(auth)),
        ..BridgeConfig::default()
    })
    .await
}

/// RegisterAgent through `c`: the session id, or the refusal.
async fn register(
    c: &mut Client,
    id: &str,
    patterns: &[&str],
    caps: &[&str],
) -> Result<String, Status> {
    let req = RegisterAgentRequest {
        agent_id: id.into(),
        subscriptions: subs(patterns),
        capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
        metadata: Default::default(),
    };
    c.register_agent(req)
        .await
        .map(|r| r.into_inner().session_id)
}

async fn stream(
    c: &mut Client,
    id: &str,
    session: &str,
) -> Result<(mpsc::Sender<ClientMessage>, Streaming<ServerMessage>), Status> {
    let (tx, rx) = common::hello(id, session).await;
    let resp = c.event_stream(rx).await?;
    Ok((tx, resp.into_inner()))
}

async fn publish(
    tx: &mpsc::Sender<ClientMessage>,
    rx: &mut Streaming<ServerMessage>,
    topic: &str,
) -> PublishAck {
    tx.send(ClientMessage {
        msg: Some(ClientMsg::Publish(Publish {
            topic: topic.into(),
            event: Some(event("x")),
        })),
    })
    .await
    .unwrap();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), rx.message())
            .await
            .expect("answer within 10 s")
            .expect("stream ok")
            .expect("stream open");
        if let Some(ServerMsg::PublishAck(a)) = m.msg {
            return a;
        }
    }
}

fn assert_denied(e: &Status, rule: &str) {
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("\"sensors\""), "{}", e.message());
    assert!(
        e.message().contains(&format!("`{rule}` rule")),
        "{}",
        e.message()
    );
    assert!(!e.message().contains("s3cret"), "{}", e.message());
}

#[tokio::test]
async fn no_token_and_a_wrong_token_are_unauthenticated_on_every_rpc() {
    let tb = start().await;
    // A registered agent (ops) to aim the other calls at.
    let mut ops = client(&tb, Some("Bearer ops-s3cret")).await;
    let session = register(&mut ops, "ops-1", &[], &[])
        .await
        .expect("ops registers");

    for header in [
        None,
        Some("Bearer wrong"),
        Some("Bearer ops-s3cre"),
        Some("Basic ops-s3cret"),
    ] {
        let mut c = client(&tb, header).await;
        let errs = [
            register(&mut c, "sensor-9", &[], &[]).await.unwrap_err(),
            c.heartbeat(HeartbeatRequest {
                agent_id: "ops-1".into(),
                session_id: session.clone(),
            })
            .await
            .unwrap_err(),
            c.forward_action(ActionCall {
                capability: "any".into(),
                ..ActionCall::default()
            })
            .await
            .unwrap_err(),
            stream(&mut c, "ops-1", &session).await.unwrap_err(),
        ];
        for e in errs {
            assert_eq!(e.code(), Code::Unauthenticated, "{header:?}: {e:?}");
            assert_eq!(e.message(), UNAUTHENTICATED);
        }
    }
    // Still serving the authenticated agent.
    let (tx, mut rx) = stream(&mut ops, "ops-1", &session).await.expect("stream");
    assert_eq!(publish(&tx, &mut rx, "anything").await.code, 0);
    let s = tb.bridge.stats();
    assert_eq!(s.unauthenticated, 16);
    assert_eq!(s.permission_denied, 0);
    tb.stop().await;
}

#[tokio::test]
async fn a_token_outside_its_rules_is_permission_denied_naming_the_rule() {
    let tb = start().await;
    let mut c = client(&tb, Some("Bearer sensors-s3cret")).await;

    // Agent id outside `agents`.
    let e = register(&mut c, "processor", &[], &[]).await.unwrap_err();
    assert_denied(&e, "agents");
    // Subscription outside `subscribe` (`*` would cover far more than `control.*`).
    let e = register(&mut c, "sensor-1", &["*"], &[]).await.unwrap_err();
    assert_denied(&e, "subscribe");
    // Capability outside `provide` (an empty list allows none).
    let e = register(&mut c, "sensor-1", &[], &["sensor.read"])
        .await
        .unwrap_err();
    assert_denied(&e, "provide");

    // Inside the rules (its own reply topics are always allowed): registered and streaming.
    let session = register(
        &mut c,
        "sensor-1",
        &[
            "control.*",
            "_loom.reply.sensor-1",
            "agent.sensor-1.replies",
        ],
        &[],
    )
    .await
    .expect("allowed registration");
    let (tx, mut rx) = stream(&mut c, "sensor-1", &session).await.expect("stream");
    assert_eq!(publish(&tx, &mut rx, "sensor.data").await.code, 0);
    // A topic outside `publish` is refused per event; the stream goes on.
    let ack = publish(&tx, &mut rx, "control.stop").await;
    assert_eq!(ack.code, Code::PermissionDenied as i32);
    assert!(ack.message.contains("`publish` rule"), "{}", ack.message);
    assert_eq!(publish(&tx, &mut rx, "sensor.more").await.code, 0);

    // Capability calls outside `invoke`, and speaking for another agent.
    let e = c
        .forward_action(ActionCall {
            capability: "ops.restart".into(),
            ..ActionCall::default()
        })
        .await
        .unwrap_err();
    assert_denied(&e, "invoke");

    // An agent registered with the ops token cannot be streamed or heartbeated as by sensors.
    let mut ops = client(&tb, Some("Bearer ops-s3cret")).await;
    let ops_session = register(&mut ops, "processor", &["*"], &["proc.run"])
        .await
        .expect("ops may do anything");
    let e = stream(&mut c, "processor", &ops_session).await.unwrap_err();
    assert_denied(&e, "agents");
    let e = c
        .heartbeat(HeartbeatRequest {
            agent_id: "processor".into(),
            session_id: ops_session.clone(),
        })
        .await
        .unwrap_err();
    assert_denied(&e, "agents");
    let e = c
        .forward_action(ActionCall {
            capability: "ops.restart".into(),
            caller: "processor".into(),
            ..ActionCall::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    let (otx, mut orx) = stream(&mut ops, "processor", &ops_session)
        .await
        .expect("ops streams its own agent");
    assert_eq!(publish(&otx, &mut orx, "anything").await.code, 0);
    let s = tb.bridge.stats();
    assert_eq!(s.permission_denied, 8);
    assert_eq!(s.unauthenticated, 0);
    tb.stop().await;
}

#[test]
fn the_binary_refuses_bad_security_settings_naming_them_and_never_prints_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        "tokens:\n  - name: x\n    token: topsecret-123\n    agents: [\"a b\"]\n",
    )
    .unwrap();
    let tokens = tokens.to_string_lossy().into_owned();
    for (args, vars, needle) in [
        (
            vec!["--tokens-file", tokens.as_str()],
            vec![],
            "tokens[0].agents[0]",
        ),
        (
            vec!["--tokens-file", "/nonexistent/tokens"],
            vec![],
            "cannot read the token file",
        ),
        (
            vec![],
            vec![("LOOM_BRIDGE_TLS_CERT_FILE", "/nonexistent/cert.pem")],
            "--tls-cert-file \"/nonexistent/cert.pem\": needs --tls-key-file too",
        ),
        (
            vec!["--max-agents", "0"],
            vec![],
            "--max-agents must be at least 1",
        ),
        (vec!["--publish-rate=-1"], vec![], "--publish-rate -1"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_loom-bridge"))
            .args(["--listen", "127.0.0.1:0", "--dashboard-listen", "off"])
            .args(&args)
            .env_remove("LOOM_BRIDGE_TOKENS_FILE")
            .env_remove("LOOM_BRIDGE_TLS_CERT_FILE")
            .env_remove("LOOM_BRIDGE_TLS_KEY_FILE")
            .env_remove("LOOM_BRIDGE_TLS_CLIENT_CA_FILE")
            .envs(vars.iter().copied())
            .output()
            .expect("run loom-bridge");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{args:?} started: {stdout}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("topsecret") && !stdout.contains("topsecret"));
        assert!(!stdout.contains("listening"), "{args:?} bound a port");
    }
}
