//! The DNS resolver: looks `hostname` up every `interval`; each address is a backend. A failed
//! or empty answer keeps the last set (counted), so a DNS hiccup never empties the ring.

use std::sync::Weak;

use super::config::DnsResolver;
use super::LoadBalancer;
use crate::metrics::Metric;

/// Runs until the exporter is gone.
pub async fn run(lb: Weak<LoadBalancer>, d: DnsResolver) {
    loop {
        let answer = tokio::time::timeout(
            d.timeout,
            tokio::net::lookup_host((d.hostname.as_str(), d.port)),
        )
        .await;
        let Some(lb) = lb.upgrade() else { return };
        let found: Option<Vec<String>> = match answer {
            Ok(Ok(addrs)) => Some(addrs.map(|a| a.to_string()).collect()),
            Ok(Err(e)) => {
                tracing::warn!(exporter = %lb.id, host = %d.hostname, error = %e, "loadbalancing: DNS lookup failed; keeping the last backend set");
                None
            }
            Err(_) => {
                tracing::warn!(exporter = %lb.id, host = %d.hostname, "loadbalancing: DNS lookup timed out; keeping the last backend set");
                None
            }
        };
        match found.filter(|f| !f.is_empty()) {
            Some(backends) => lb.set_backends(&backends),
            None => lb.metrics.count(
                Metric::LoadBalancingResolveFailures,
                &[("exporter", &lb.id)],
                1,
            ),
        }
        drop(lb);
        tokio::time::sleep(d.interval).await;
    }
}
