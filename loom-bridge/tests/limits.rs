//! Bridge limits over loopback with a real tonic client: each limit is hit and refused with
//! RESOURCE_EXHAUSTED and a message naming it while another agent keeps being served, and floods
//! of registrations and subscriptions leave the bridge's maps no bigger than the limits.
mod common;

use std::time::Duration;

use common::{event, subs, TestAgent, TestBridge};
use futures::StreamExt as _;
use loom_bridge::config::Limits;
use loom_bridge::BridgeConfig;
use loom_core::proto::server_message::Msg as ServerMsg;
use loom_core::proto::{ActionCall, ActionStatus, RegisterAgentRequest};
use tonic::Code;

fn config(limits: Limits) -> BridgeConfig {
    BridgeConfig {
        limits,
        ..BridgeConfig::default()
    }
}

fn req(id: &str, n_subs: usize, n_caps: usize) -> RegisterAgentRequest {
    let patterns: Vec<String> = (0..n_subs).map(|i| format!("t{i}.*")).collect();
    let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
    RegisterAgentRequest {
        agent_id: id.into(),
        subscriptions: subs(&patterns),
        capabilities: (0..n_caps).map(|i| format!("{id}.cap{i}")).collect(),
        metadata: Default::default(),
    }
}

/// `a` publishes and `b` (subscribed to `*`) receives it: the bridge still serves them.
async fn still_served(a: &mut TestAgent, b: &mut TestAgent, payload: &str) {
    a.publish("health.check", event(payload)).await;
    assert_eq!(a.next_ack().await.code, 0);
    let d = b.next_delivery().await;
    assert_eq!(d.event.expect("event").payload, payload.as_bytes());
}

fn assert_exhausted(e: &tonic::Status, limit: &str) {
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().starts_with(&format!("{limit}:")),
        "{}",
        e.message()
    );
}

#[tokio::test]
async fn agents_subscriptions_and_capabilities_past_their_limits_are_refused() {
    let tb = TestBridge::start(config(Limits {
        max_agents: 3,
        max_subscriptions_per_agent: 4,
        max_capabilities_per_agent: 2,
        ..Limits::default()
    }))
    .await;
    let mut a = TestAgent::join(&tb, "a", &[], &[]).await;
    let mut b = TestAgent::join(&tb, "b", &["*"], &[]).await;
    let mut c = tb.client().await;

    let e = c.register_agent(req("x", 5, 0)).await.unwrap_err();
    assert_exhausted(&e, "max_subscriptions_per_agent");
    assert!(e.message().contains("5 subscriptions requested, at most 4"));
    let e = c.register_agent(req("x", 0, 3)).await.unwrap_err();
    assert_exhausted(&e, "max_capabilities_per_agent");
    // Duplicates count once: two distinct capabilities are within the limit.
    let mut dup = req("x", 4, 2);
    dup.capabilities.push("x.cap0".into());
    c.register_agent(dup).await.expect("at the limits");
    still_served(&mut a, &mut b, "1").await;

    // Three agents now: a fourth id is refused, a live duplicate still gets ALREADY_EXISTS.
    let e = c.register_agent(req("y", 0, 0)).await.unwrap_err();
    assert_exhausted(&e, "max_agents");
    assert!(e.message().contains("limit of 3 agents"), "{}", e.message());
    let e = c.register_agent(req("a", 0, 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    still_served(&mut a, &mut b, "2").await;

    // When one leaves, a new one fits.
    drop(a);
    common::eventually("a deregistered", || tb.bridge.stats().agents == 2).await;
    let mut y = TestAgent::join(&tb, "y", &[], &[]).await;
    still_served(&mut y, &mut b, "3").await;
    assert_eq!(tb.bridge.stats().limit_refused, 3);
    tb.stop().await;
}

#[tokio::test]
async fn action_calls_in_flight_are_bounded_per_caller_and_per_serving_agent() {
    let tb = TestBridge::start(config(Limits {
        max_inflight_actions_per_agent: 2,
        ..Limits::default()
    }))
    .await;
    // "slow" serves a capability and never answers: its calls stay in flight.
    let mut slow = TestAgent::join(&tb, "slow", &[], &["slow.op"]).await;
    let mut a = TestAgent::join(&tb, "a", &[], &[]).await;
    let mut b = TestAgent::join(&tb, "b", &["*"], &[]).await;
    let call = |caller: &str, id: &str| ActionCall {
        id: id.into(),
        capability: "slow.op".into(),
        caller: caller.into(),
        timeout_ms: 30_000,
        ..ActionCall::default()
    };
    let mut waiting = Vec::new();
    for i in 0..2 {
        let mut c = tb.client().await;
        let call = call("caller-1", &format!("c{i}"));
        waiting.push(tokio::spawn(async move { c.forward_action(call).await }));
    }
    // Both reached the serving agent.
    for _ in 0..2 {
        assert!(matches!(slow.next().await, ServerMsg::ActionCall(_)));
    }
    // The caller's third is refused with a gRPC code...
    let e = tb
        .client()
        .await
        .forward_action(call("caller-1", "c2"))
        .await
        .unwrap_err();
    assert_exhausted(&e, "max_inflight_actions_per_agent");
    assert!(e.message().contains("\"caller-1\""), "{}", e.message());
    // ...and another caller's call to the saturated agent fails fast, naming the limit.
    let r = tb
        .client()
        .await
        .forward_action(call("caller-2", "d0"))
        .await
        .expect("answered as an ActionResult")
        .into_inner();
    assert_eq!(r.status, ActionStatus::Failed as i32);
    assert!(
        r.error
            .contains("max_inflight_actions_per_agent: agent slow already serves 2 calls"),
        "{}",
        r.error
    );
    still_served(&mut a, &mut b, "during").await;

    // The serving agent leaves: its callers are answered and the counts go back to nothing.
    drop(slow);
    for w in waiting {
        let r = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("answered")
            .expect("task")
            .expect("an ActionResult");
        assert_ne!(r.into_inner().status, ActionStatus::Ok as i32);
    }
    assert_eq!(tb.bridge.stats().limit_refused, 2);
    still_served(&mut a, &mut b, "after").await;
    tb.stop().await;
}

#[tokio::test]
async fn a_publisher_over_its_rate_is_refused_per_event_and_others_are_not() {
    let tb = TestBridge::start(config(Limits {
        // One token every 10 s after the burst: nothing refills during the test.
        publish_rate: 0.1,
        publish_burst: 3,
        ..Limits::default()
    }))
    .await;
    let mut fast = TestAgent::join(&tb, "fast", &[], &[]).await;
    let mut a = TestAgent::join(&tb, "a", &[], &[]).await;
    let mut b = TestAgent::join(&tb, "b", &["*"], &[]).await;
    let mut codes = Vec::new();
    for i in 0..6 {
        fast.publish("fast.data", event(&i.to_string())).await;
        let ack = fast.next_ack().await;
        if ack.code != 0 {
            assert_eq!(ack.code, Code::ResourceExhausted as i32);
            assert!(
                ack.message
                    .starts_with("publish_rate: agent fast exceeds 0.1 events/s (burst 3)"),
                "{}",
                ack.message
            );
        }
        codes.push(ack.code);
    }
    let r = Code::ResourceExhausted as i32;
    assert_eq!(codes, [0, 0, 0, r, r, r]);
    // b got the burst, and a (its own bucket) publishes freely.
    for i in 0..3 {
        let d = b.next_delivery().await;
        assert_eq!(d.event.unwrap().payload, i.to_string().as_bytes());
    }
    still_served(&mut a, &mut b, "a1").await;
    still_served(&mut a, &mut b, "a2").await;
    let s = tb.bridge.stats();
    assert_eq!((s.limit_refused, s.publish_rejected), (3, 3));
    tb.stop().await;
}

#[tokio::test]
async fn floods_of_registrations_and_subscriptions_leave_the_maps_within_the_limits() {
    const MAX_AGENTS: usize = 100;
    const ATTEMPTS: usize = 20_000;
    let tb = TestBridge::start(config(Limits {
        max_agents: MAX_AGENTS,
        max_subscriptions_per_agent: 16,
        ..Limits::default()
    }))
    .await;
    let mut a = TestAgent::join(&tb, "a", &[], &[]).await;
    let mut b = TestAgent::join(&tb, "b", &["*"], &[]).await;
    let subscribers = tb.bridge.bus().stats().subscribers;

    // 20 000 registrations with distinct ids, each with a subscription and a capability.
    let client = tb.client().await;
    let results: Vec<Result<(), Code>> = futures::stream::iter(0..ATTEMPTS)
        .map(|i| {
            let mut c = client.clone();
            async move {
                c.register_agent(req(&format!("flood-{i}"), 1, 1))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.code())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, MAX_AGENTS - 2);
    assert!(results
        .iter()
        .all(|r| matches!(r, Ok(()) | Err(Code::ResourceExhausted))));
    assert_eq!(tb.bridge.stats().agents, MAX_AGENTS);
    assert_eq!(tb.bridge.broker().capabilities().len(), MAX_AGENTS - 2);
    still_served(&mut a, &mut b, "after registrations").await;

    // A subscription flood: 200 registrations asking for 5 000 patterns each.
    let results: Vec<Code> = futures::stream::iter(0..200)
        .map(|i| {
            let mut c = client.clone();
            async move {
                c.register_agent(req(&format!("subs-{i}"), 5_000, 0))
                    .await
                    .map_or_else(|e| e.code(), |_| Code::Ok)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(results.iter().all(|c| *c == Code::ResourceExhausted));
    // Nothing was subscribed or entered: the bus holds the two test agents' subscriptions only.
    assert_eq!(tb.bridge.bus().stats().subscribers, subscribers);
    assert_eq!(tb.bridge.stats().agents, MAX_AGENTS);
    assert_eq!(
        tb.bridge.stats().limit_refused as usize,
        ATTEMPTS - (MAX_AGENTS - 2) + 200
    );
    still_served(&mut a, &mut b, "after subscriptions").await;
    tb.stop().await;
}

#[tokio::test]
async fn a_caller_that_is_no_agent_id_is_invalid_argument() {
    let tb = TestBridge::start(BridgeConfig::default()).await;
    for caller in ["a b".to_owned(), "x".repeat(129)] {
        let e = tb
            .client()
            .await
            .forward_action(ActionCall {
                capability: "any".into(),
                caller,
                ..ActionCall::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("caller must be an agent id"));
    }
    tb.stop().await;
}
