//! Test harness: an in-process bridge on a loopback port, and a minimal agent built on the
//! generated tonic client (the same wire protocol the Python SDK speaks).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use loom_bridge::{serve, Bridge, BridgeConfig};
use loom_core::proto::bridge_client::BridgeClient;
use loom_core::proto::client_message::Msg as ClientMsg;
use loom_core::proto::server_message::Msg as ServerMsg;
use loom_core::proto::{
    ActionCall, ActionResult, ClientMessage, Event, Hello, Publish, PublishAck, Qos,
    RegisterAgentRequest, ServerMessage, Subscription,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

pub struct TestBridge {
    pub addr: SocketAddr,
    pub bridge: Bridge,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestBridge {
    pub async fn start(config: BridgeConfig) -> TestBridge {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bridge = Bridge::new(config);
        let (tx, rx) = oneshot::channel::<()>();
        let b = bridge.clone();
        let task = tokio::spawn(async move {
            serve(b, listener, None, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        TestBridge {
            addr,
            bridge,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// A handle on a bridge served elsewhere (for [`TestAgent::join`]); `stop` does nothing.
    pub fn attach(addr: SocketAddr, bridge: Bridge) -> TestBridge {
        TestBridge {
            addr,
            bridge,
            stop: None,
            task: None,
        }
    }

    pub async fn client(&self) -> BridgeClient<Channel> {
        BridgeClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }

    /// Stops the server and waits for it (bounded).
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("bridge stops within 10 s")
                .expect("serve task");
        }
    }
}

pub fn subs(patterns: &[&str]) -> Vec<Subscription> {
    patterns
        .iter()
        .map(|p| Subscription {
            pattern: (*p).to_owned(),
            qos: Qos::Realtime as i32,
        })
        .collect()
}

pub struct TestAgent {
    pub id: String,
    pub session: String,
    pub client: BridgeClient<Channel>,
    pub tx: mpsc::Sender<ClientMessage>,
    pub rx: Streaming<ServerMessage>,
}

impl TestAgent {
    pub async fn join(tb: &TestBridge, id: &str, patterns: &[&str], caps: &[&str]) -> TestAgent {
        let mut client = tb.client().await;
        let session = client
            .register_agent(RegisterAgentRequest {
                agent_id: id.into(),
                subscriptions: subs(patterns),
                capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
                metadata: Default::default(),
            })
            .await
            .expect("register")
            .into_inner()
            .session_id;
        let (tx, rx) = open_stream(&mut client, id, &session)
            .await
            .expect("stream");
        TestAgent {
            id: id.into(),
            session,
            client,
            tx,
            rx,
        }
    }

    pub async fn publish(&self, topic: &str, event: Event) {
        self.tx
            .send(ClientMessage {
                msg: Some(ClientMsg::Publish(Publish {
                    topic: topic.into(),
                    event: Some(event),
                })),
            })
            .await
            .expect("send publish");
    }

    /// The next server message (bounded wait).
    pub async fn next(&mut self) -> ServerMsg {
        let m = tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("server message within 10 s")
            .expect("stream ok")
            .expect("stream open");
        m.msg.expect("message body")
    }

    pub async fn next_ack(&mut self) -> PublishAck {
        loop {
            if let ServerMsg::PublishAck(a) = self.next().await {
                return a;
            }
        }
    }

    /// ForwardAction from this agent's client: the ActionResult, or the call's gRPC error.
    pub async fn forward(&mut self, call: ActionCall) -> Result<ActionResult, tonic::Status> {
        self.client
            .forward_action(call)
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn next_delivery(&mut self) -> loom_core::proto::Delivery {
        loop {
            if let ServerMsg::Delivery(d) = self.next().await {
                return d;
            }
        }
    }
}

pub async fn open_stream(
    client: &mut BridgeClient<Channel>,
    id: &str,
    session: &str,
) -> Result<(mpsc::Sender<ClientMessage>, Streaming<ServerMessage>), tonic::Status> {
    let (tx, rx) = hello(id, session).await;
    let resp = client.event_stream(rx).await?;
    Ok((tx, resp.into_inner()))
}

/// The outbound half of an EventStream, its first message (the Hello for `id`'s session)
/// already queued.
pub async fn hello(
    id: &str,
    session: &str,
) -> (mpsc::Sender<ClientMessage>, ReceiverStream<ClientMessage>) {
    let (tx, rx) = mpsc::channel(64);
    tx.send(ClientMessage {
        msg: Some(ClientMsg::Hello(Hello {
            agent_id: id.into(),
            session_id: session.into(),
        })),
    })
    .await
    .expect("queue hello");
    (tx, ReceiverStream::new(rx))
}

pub fn event(payload: &str) -> Event {
    Event {
        payload: payload.as_bytes().to_vec(),
        ..Event::default()
    }
}

/// Polls `f` until it holds (bounded).
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
