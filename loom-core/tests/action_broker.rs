//! ActionBroker behaviour: routing, timeout, errors, idempotency, trace headers.
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Tracing;
use loom_core::action_broker::{ActionBroker, ActionProvider, BrokerConfig, BrokerError};
use loom_core::envelope::Envelope;
use loom_core::proto::{ActionCall, ActionStatus};

fn call(cap: &str, id: &str) -> ActionCall {
    ActionCall {
        id: id.into(),
        capability: cap.into(),
        args: b"2".to_vec(),
        ..ActionCall::default()
    }
}

fn doubler(counter: Arc<AtomicUsize>) -> Arc<dyn ActionProvider> {
    Arc::new(move |c: ActionCall| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let n: i64 = String::from_utf8_lossy(&c.args)
                .parse()
                .map_err(|e| format!("bad args: {e}"))?;
            Ok((n * 2).to_string().into_bytes())
        }
    })
}

#[tokio::test]
async fn invokes_the_registered_provider() {
    let broker = ActionBroker::default();
    broker.register("double", doubler(Arc::default())).unwrap();
    let r = broker.invoke(call("double", "")).await.unwrap();
    assert_eq!(r.status, ActionStatus::Ok as i32);
    assert_eq!(r.output, b"4");
    assert_eq!(r.call_id.len(), 36, "generated id");
    assert_eq!(broker.capabilities(), vec!["double".to_string()]);
}

#[tokio::test]
async fn unknown_capability_is_a_typed_error() {
    let broker = ActionBroker::default();
    let err = broker.invoke(call("nope", "1")).await.unwrap_err();
    assert_eq!(err, BrokerError::UnknownCapability("nope".into()));
    assert_eq!(
        err.to_result("1").status,
        ActionStatus::UnknownCapability as i32
    );
    assert!(matches!(
        broker.invoke(call("", "2")).await,
        Err(BrokerError::Invalid(_))
    ));
}

#[tokio::test]
async fn provider_failure_is_reported() {
    let broker = ActionBroker::default();
    broker.register("double", doubler(Arc::default())).unwrap();
    let mut c = call("double", "x");
    c.args = b"not a number".to_vec();
    match broker.invoke(c).await.unwrap_err() {
        BrokerError::ProviderFailed {
            capability,
            message,
        } => {
            assert_eq!(capability, "double");
            assert!(message.contains("bad args"), "{message}");
        }
        e => panic!("unexpected {e:?}"),
    }
}

#[tokio::test]
async fn timeout_is_enforced_from_the_call_and_the_default() {
    let broker = ActionBroker::new(BrokerConfig {
        default_timeout: Duration::from_millis(50),
        ..BrokerConfig::default()
    });
    let slow: Arc<dyn ActionProvider> = Arc::new(|_c: ActionCall| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(Vec::new())
    });
    broker.register("slow", slow).unwrap();
    let mut c = call("slow", "t1");
    c.timeout_ms = 20;
    assert_eq!(
        broker.invoke(c).await.unwrap_err(),
        BrokerError::Timeout {
            capability: "slow".into(),
            timeout_ms: 20
        }
    );
    assert_eq!(
        broker.invoke(call("slow", "t2")).await.unwrap_err(),
        BrokerError::Timeout {
            capability: "slow".into(),
            timeout_ms: 50
        }
    );
}

#[tokio::test]
async fn repeated_call_id_returns_the_first_result_without_rerunning() {
    let broker = ActionBroker::default();
    let counter = Arc::new(AtomicUsize::new(0));
    broker.register("double", doubler(counter.clone())).unwrap();
    let first = broker.invoke(call("double", "same")).await.unwrap();
    let mut again = call("double", "same");
    again.args = b"100".to_vec();
    let second = broker.invoke(again).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(second.output, b"4");
    assert_eq!(counter.load(Ordering::SeqCst), 1);
    // Concurrent duplicates share one execution too.
    let (a, b) = tokio::join!(
        broker.invoke(call("double", "c")),
        broker.invoke(call("double", "c"))
    );
    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(counter.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_timed_out_call_may_be_retried_with_the_same_id() {
    let broker = ActionBroker::default();
    let attempts = Arc::new(AtomicUsize::new(0));
    let a2 = attempts.clone();
    let flaky: Arc<dyn ActionProvider> = Arc::new(move |_c: ActionCall| {
        let n = a2.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            Ok(b"ok".to_vec())
        }
    });
    broker.register("flaky", flaky).unwrap();
    let mut c = call("flaky", "retry-me");
    c.timeout_ms = 20;
    assert!(matches!(
        broker.invoke(c.clone()).await,
        Err(BrokerError::Timeout { .. })
    ));
    assert_eq!(broker.invoke(c).await.unwrap().output, b"ok");
}

#[tokio::test]
async fn duplicate_registration_and_unregister() {
    let broker = ActionBroker::default();
    broker.register("double", doubler(Arc::default())).unwrap();
    assert_eq!(
        broker.register("double", doubler(Arc::default())),
        Err(BrokerError::AlreadyRegistered("double".into()))
    );
    assert!(broker.unregister("double"));
    assert!(!broker.unregister("double"));
    assert!(matches!(
        broker.invoke(call("double", "z")).await,
        Err(BrokerError::UnknownCapability(_))
    ));
}

#[tokio::test]
async fn call_headers_carry_the_invoke_span_as_parent() {
    let t = Tracing::new();
    let broker = ActionBroker::default();
    let seen = Arc::new(parking_lot::Mutex::new(None));
    let seen2 = seen.clone();
    let provider: Arc<dyn ActionProvider> = Arc::new(move |c: ActionCall| {
        *seen2.lock() = Some(c.headers.clone());
        async { Ok(Vec::new()) }
    });
    broker.register("probe", provider).unwrap();
    {
        let caller = tracing::info_span!("caller");
        let _g = caller.enter();
        broker.invoke(call("probe", "h")).await.unwrap();
    }
    let headers = seen.lock().clone().expect("provider ran");
    let env = Envelope::from_metadata(&headers);
    let invoke = t.span("action_broker.invoke");
    let caller = t.span("caller");
    assert_eq!(
        env.trace_id,
        Some(invoke.span_context.trace_id().to_string())
    );
    assert_eq!(env.span_id, Some(invoke.span_context.span_id().to_string()));
    assert_eq!(invoke.parent_span_id, caller.span_context.span_id());
    assert_eq!(invoke.span_kind, opentelemetry::trace::SpanKind::Client);
}
