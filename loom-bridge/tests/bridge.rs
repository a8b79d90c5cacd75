//! Bridge behaviour over loopback with a real tonic client.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{event, eventually, open_stream, subs, TestAgent, TestBridge};
use loom_bridge::BridgeConfig;
use loom_core::action_broker::ActionProvider;
use loom_core::envelope::{Envelope, TRACEPARENT};
use loom_core::proto::client_message::Msg as ClientMsg;
use loom_core::proto::server_message::Msg as ServerMsg;
use loom_core::proto::{
    ActionCall, ActionResult, ActionStatus, ClientMessage, HeartbeatRequest, Publish,
    RegisterAgentRequest,
};
use tonic::Code;

#[tokio::test]
async fn publish_reaches_a_wildcard_subscriber_with_sender_and_ack() {
    let tb = TestBridge::start(BridgeConfig::default()).await;
    let mut sensor = TestAgent::join(&tb, "sensor", &[], &[]).await;
    let mut proc = TestAgent::join(&tb, "processor", &["sensor.*"], &[]).await;
    let mut other = TestAgent::join(&tb, "other", &["processed.*"], &[]).await;

    let mut e = event("21.5");
    e.id = "ev-1".into();
    e.r#type = "reading".into();
    // A spoofed sender is overwritten by the stream's own agent id.
    e.metadata
        .insert("loom.sender".into(), "somebody-else".into());
    sensor.publish("sensor.data", e).await;
    let ack = sensor.next_ack().await;
    assert_eq!((ack.event_id.as_str(), ack.code), ("ev-1", 0));

    let d = proc.next_delivery().await;
    assert_eq!(d.topic, "sensor.data");
    let ev = d.event.expect("event");
    assert_eq!(ev.payload, b"21.5");
    assert_eq!(ev.r#type, "reading");
    assert_eq!(ev.metadata["loom.sender"], "sensor");

    // "other" subscribed to processed.* only: its next message is the processed event.
    proc.publish("processed.data", event("32.25")).await;
    assert_eq!(proc.next_ack().await.code, 0);
    let d = other.next_delivery().await;
    assert_eq!(d.topic, "processed.data");

    let stats = tb.bridge.stats();
    assert_eq!(stats.published, 2);
    assert_eq!(stats.delivered, 2);
    tb.stop().await;
}

#[tokio::test]
async fn duplicate_live_agent_id_is_refused() {
    let tb = TestBridge::start(BridgeConfig::default()).await;
    let _a = TestAgent::join(&tb, "dup", &[], &[]).await;
    let err = tb
        .client()
        .await
        .register_agent(RegisterAgentRequest {
            agent_id: "dup".into(),
            ..RegisterAgentRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("dup"), "{}", err.message());
    tb.stop().await;
}

#[tokio::test]
async fn invalid_registrations_are_refused_clearly() {
    let tb = TestBridge::start(BridgeConfig::default()).await;
    let mut c = tb.client().await;
    for (req, needle) in [
        (RegisterAgentRequest::default(), "agent_id"),
        (
            RegisterAgentRequest {
                agent_id: "a b".into(),
                ..Default::default()
            },
            "agent_id",
        ),
        (
            RegisterAgentRequest {
                agent_id: "ok".into(),
                subscriptions: subs(&[""]),
                ..Default::default()
            },
            "subscriptions",
        ),
        (
            RegisterAgentRequest {
                agent_id: "ok".into(),
                capabilities: vec!["".into()],
                ..Default::default()
            },
            "capability",
        ),
    ] {
        let err = c.register_agent(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(needle), "{}", err.message());
    }
    tb.stop().await;
}

#[tokio::test]
async fn publish_before_register_fails_the_stream_with_failed_precondition() {
    let tb = TestBridge::start(BridgeConfig::default()).await;
    let mut client = tb.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ClientMessage {
        msg: Some(ClientMsg::Publish(Publish {
            topic: "t".into(),
            event: Some(event("x")),
        })),
    })
    .await
    .unwrap();
    let err = client
        .event_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("RegisterAgent"), "{}", err.message());
    // A Hello with an unknown session is refused the same way.
    let err = open_stream(&mut client, "ghost", "no-such-session")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    // The bridge is still healthy.
    let _a = TestAgent::join(&tb, "after", &[], &[]).await;
    tb.stop().await;
}

#[tokio::test]
async fn bad_publishes_get_clear_codes_and_the_stream_stays_healthy() {
    let tb = TestBridge::start(BridgeConfig {
        max_payload_bytes: 1024,
        ..BridgeConfig::default()
    })
    .await;
    let mut a = TestAgent::join(&tb, "a", &[], &[]).await;
    let mut b = TestAgent::join(&tb, "b", &["*"], &[]).await;

    a.publish("", event("x")).await;
    let ack = a.next_ack().await;
    assert_eq!(ack.code, Code::InvalidArgument as i32);
    assert!(ack.message.contains("topic"), "{}", ack.message);

    a.publish("has space", event("x")).await;
    assert_eq!(a.next_ack().await.code, Code::InvalidArgument as i32);

    a.publish("big", event(&"x".repeat(2048))).await;
    let ack = a.next_ack().await;
    assert_eq!(ack.code, Code::ResourceExhausted as i32);
    assert!(ack.message.contains("1024"), "{}", ack.message);

    a.tx.send(ClientMessage {
        msg: Some(ClientMsg::Publish(Publish {
            topic: "t".into(),
            event: None,
        })),
    })
    .await
    .unwrap();
    assert_eq!(a.next_ack().await.code, Code::InvalidArgument as i32);

    // Malformed traceparent: treated as absent, the event still flows.
    let mut e = event("ok");
    e.metadata
        .insert(TRACEPARENT.into(), "00-not-a-trace-context".into());
    a.publish("t", e).await;
    assert_eq!(a.next_ack().await.code, 0);
    let d = b.next_delivery().await;
    assert_eq!(d.event.unwrap().payload, b"ok");
    assert_eq!(tb.bridge.stats().publish_rejected, 4);
    tb.stop().await;
}

#[tokio::test]
async fn remote_agent_invokes_a_rust_provider() {
    let tb = TestBridge::start(BridgeConfig::default()).await;
    let provider: Arc<dyn ActionProvider> = Arc::new(|c: ActionCall| async move {
        let mut out = c.args.clone();
        out.reverse();
        Ok(out)
    });
    tb.bridge.broker().register("reverse", provider).unwrap();
    let mut a = TestAgent::join(&tb, "caller", &[], &[]).await;
    let r = a
        .forward(ActionCall {
            id: "c1".into(),
            capability: "reverse".into(),
            args: b"abc".to_vec(),
            timeout_ms: 5000,
            caller: "caller".into(),
            ..ActionCall::default()
        })
        .await
        .unwrap();
    assert_eq!(r.status, ActionStatus::Ok as i32);
    assert_eq!(r.output, b"cba");
    let missing = ActionCall {
        capability: "missing".into(),
        ..ActionCall::default()
    };
    let r = a.forward(missing).await.unwrap();
    assert_eq!(r.status, ActionStatus::UnknownCapability as i32);
    let err = a.forward(ActionCall::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    tb.stop().await;
}

#[tokio::test]
async fn rust_invokes_a_remote_agents_capability_and_timeouts_apply() {
    let tb = TestBridge::start(BridgeConfig::default()).await;
    let mut server = TestAgent::join(&tb, "math", &[], &["double", "never"]).await;
    let broker = tb.bridge.broker().clone();
    let call = tokio::spawn(async move {
        broker
            .invoke(ActionCall {
                id: "d1".into(),
                capability: "double".into(),
                args: b"21".to_vec(),
                timeout_ms: 5000,
                ..ActionCall::default()
            })
            .await
    });
    let ServerMsg::ActionCall(c) = server.next().await else {
        panic!("expected an action call")
    };
    assert_eq!((c.id.as_str(), c.capability.as_str()), ("d1", "double"));
    let n: i64 = String::from_utf8(c.args).unwrap().parse().unwrap();
    server
        .tx
        .send(ClientMessage {
            msg: Some(ClientMsg::ActionResult(ActionResult {
                call_id: c.id,
                status: ActionStatus::Ok as i32,
                output: (n * 2).to_string().into_bytes(),
                ..ActionResult::default()
            })),
        })
        .await
        .unwrap();
    let r = call.await.unwrap().unwrap();
    assert_eq!(r.output, b"42");

    // The agent never answers "never": the call's own timeout ends it.
    let err = tb
        .bridge
        .broker()
        .invoke(ActionCall {
            capability: "never".into(),
            timeout_ms: 100,
            ..ActionCall::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, loom_core::action_broker::BrokerError::Timeout { .. }),
        "{err:?}"
    );
    tb.stop().await;
}

#[tokio::test]
async fn missed_heartbeats_deregister_the_agent_and_its_capabilities() {
    let tb = TestBridge::start(BridgeConfig {
        heartbeat_timeout: Duration::from_millis(300),
        ..BridgeConfig::default()
    })
    .await;
    // A heartbeating agent survives; a silent one (registered, no stream) is removed.
    let mut live = TestAgent::join(&tb, "live", &[], &[]).await;
    let mut c = tb.client().await;
    let silent = c
        .register_agent(RegisterAgentRequest {
            agent_id: "silent".into(),
            capabilities: vec!["silent.cap".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(tb.bridge.broker().has_capability("silent.cap"));
    let hb = HeartbeatRequest {
        agent_id: "live".into(),
        session_id: live.session.clone(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(900);
    while tokio::time::Instant::now() < deadline {
        live.client.heartbeat(hb.clone()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids: Vec<_> = tb.bridge.agents().into_iter().map(|a| a.agent_id).collect();
    assert_eq!(ids, vec!["live".to_string()]);
    assert!(!tb.bridge.broker().has_capability("silent.cap"));
    let err = c
        .heartbeat(HeartbeatRequest {
            agent_id: "silent".into(),
            session_id: silent.session_id,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The id is free again.
    let _again = TestAgent::join(&tb, "silent", &[], &[]).await;
    // Stop heartbeating "live": it is removed and its stream ends with a status.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match live.rx.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(s) => return Some(s),
            }
        }
    })
    .await
    .expect("stream ends after expiry");
    assert_eq!(end.map(|s| s.code()), Some(Code::FailedPrecondition));
    tb.stop().await;
}

#[tokio::test]
async fn a_stream_closed_mid_flight_removes_the_agent_without_harm() {
    let tb = TestBridge::start(BridgeConfig::default()).await;
    let mut sender = TestAgent::join(&tb, "sender", &[], &[]).await;
    let gone = TestAgent::join(&tb, "gone", &["*"], &["gone.cap"]).await;
    // Deliveries are in flight to "gone" when it disappears.
    for i in 0..20 {
        sender.publish("t", event(&i.to_string())).await;
    }
    drop(gone);
    eventually("agent removed", || {
        tb.bridge.agents().iter().all(|a| a.agent_id != "gone")
    })
    .await;
    assert!(!tb.bridge.broker().has_capability("gone.cap"));
    // Publishing keeps working.
    for _ in 0..20 {
        sender.next_ack().await;
    }
    sender.publish("t", event("after")).await;
    assert_eq!(sender.next_ack().await.code, 0);
    tb.stop().await;
}

#[tokio::test]
async fn a_slow_agent_loses_oldest_deliveries_without_stalling_others() {
    let tb = TestBridge::start(BridgeConfig {
        subscription_queue: 4,
        outbound_queue: 4,
        shutdown_grace: Duration::from_millis(500),
        // The readers send nothing upstream (no heartbeats): on a loaded machine the 2000
        // publishes outlast the default 15 s and the reaper would remove them mid-test.
        heartbeat_timeout: Duration::from_secs(300),
        ..BridgeConfig::default()
    })
    .await;
    let mut pubr = TestAgent::join(&tb, "pub", &[], &[]).await;
    let _slow = TestAgent::join(&tb, "slow", &["t"], &[]).await; // never reads
    let mut fast = TestAgent::join(&tb, "fast", &["t"], &[]).await;
    // Payloads large enough that HTTP/2 flow-control windows fill and the queues overflow.
    let n = 2000;
    let payload = "x".repeat(4096);
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            fast.next_delivery().await;
        }
        fast
    });
    for i in 0..n {
        let mut e = event(&payload);
        e.id = i.to_string();
        pubr.publish("t", e).await;
        pubr.next_ack().await;
    }
    let _fast = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("fast agent got everything")
        .unwrap();
    eventually("drops counted", || {
        tb.bridge
            .agents()
            .iter()
            .any(|a| a.agent_id == "slow" && a.dropped > 0)
    })
    .await;
    assert!(tb.bridge.stats().dropped > 0);
    tb.stop().await;
}

#[tokio::test]
async fn shutdown_closes_streams_with_unavailable() {
    let tb = TestBridge::start(BridgeConfig::default()).await;
    let mut a = TestAgent::join(&tb, "a", &["*"], &[]).await;
    let stop = tokio::spawn(tb.stop());
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match a.rx.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(s) => return Some(s.code()),
            }
        }
    })
    .await
    .expect("stream closed on shutdown");
    assert_eq!(status, Some(Code::Unavailable));
    stop.await.unwrap();
}

#[tokio::test]
async fn events_without_trace_context_flow_unchanged() {
    let tb = TestBridge::start(BridgeConfig::default()).await;
    let a = TestAgent::join(&tb, "a", &[], &[]).await;
    let mut b = TestAgent::join(&tb, "b", &["t"], &[]).await;
    a.publish("t", event("plain")).await;
    let ev = b.next_delivery().await.event.unwrap();
    assert!(Envelope::from_event(&ev).trace_id.is_none());
    tb.stop().await;
}
