//! Span ids and sampling decisions for native spans, with the OpenTelemetry Python SDK's rules.
//!
//! A native span must be sampled exactly as the SDK's tracer would sample it under the same
//! sampler variables: an agent's trace is decided by whichever process starts it, and a user span
//! nested under a native one is decided by the SDK (parent-based, so it follows).

use rand::Rng as _;

/// The samplers `loom._native.parse_sampler_env` names, as the SDK implements them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// `TraceIdRatioBased`: sampled when the trace id's low 64 bits are below the bound.
    Ratio(u128),
    /// `ParentBased(root)`: a valid parent's sampled flag decides, else `root`.
    ParentBased(Root),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Root {
    AlwaysOn,
    AlwaysOff,
    Ratio(u128),
}

/// `TraceIdRatioBased.get_bound_for_rate`: `round(rate * 2**64)` (Python rounds half to even).
fn bound(rate: f64) -> u128 {
    (rate.clamp(0.0, 1.0) * 18_446_744_073_709_551_616.0).round_ties_even() as u128
}

fn ratio_samples(bound: u128, trace_id: u128) -> bool {
    u128::from(trace_id as u64) < bound
}

impl Sampler {
    /// The sampler for a canonical name (docs/contracts.md §3) and its ratio.
    pub(crate) fn from_name(name: &str, ratio: Option<f64>) -> Option<Sampler> {
        let r = || ratio.map(bound);
        Some(match name {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::Ratio(r()?),
            "parentbased_always_on" => Sampler::ParentBased(Root::AlwaysOn),
            "parentbased_always_off" => Sampler::ParentBased(Root::AlwaysOff),
            "parentbased_traceidratio" => Sampler::ParentBased(Root::Ratio(r()?)),
            _ => return None,
        })
    }

    /// Whether a span of `trace_id` is sampled; `parent_sampled` is the valid parent's flag.
    pub(crate) fn samples(self, parent_sampled: Option<bool>, trace_id: u128) -> bool {
        match self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::Ratio(b) => ratio_samples(b, trace_id),
            Sampler::ParentBased(root) => match (parent_sampled, root) {
                (Some(sampled), _) => sampled,
                (None, Root::AlwaysOn) => true,
                (None, Root::AlwaysOff) => false,
                (None, Root::Ratio(b)) => ratio_samples(b, trace_id),
            },
        }
    }
}

/// A non-zero random trace id (the SDK's `RandomIdGenerator` redraws zero too).
pub(crate) fn new_trace_id() -> u128 {
    let mut rng = rand::rng();
    loop {
        let id: u128 = rng.random();
        if id != 0 {
            return id;
        }
    }
}

/// A non-zero random span id.
pub(crate) fn new_span_id() -> u64 {
    let mut rng = rand::rng();
    loop {
        let id: u64 = rng.random();
        if id != 0 {
            return id;
        }
    }
}

/// A forked child inherits its parent's generator state: without a reseed, both would draw the
/// same ids. Only the forking thread exists in the child, so reseeding its generator suffices.
pub(crate) fn reseed_after_fork() {
    // Failing to reach the OS entropy source leaves the (still random) inherited state.
    let _ = rand::rng().reseed();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_bound_matches_the_python_sdk() {
        // TraceIdRatioBased(0.5).bound == 2**63; (0.25) == 2**62; (1.0) == 2**64.
        assert_eq!(bound(0.5), 1u128 << 63);
        assert_eq!(bound(0.25), 1u128 << 62);
        assert_eq!(bound(1.0), 1u128 << 64);
        let s = Sampler::Ratio(bound(0.5));
        // Only the low 64 bits count.
        assert!(s.samples(None, (u128::MAX << 64) | ((1u128 << 63) - 1)));
        assert!(!s.samples(None, 1u128 << 63));
    }

    #[test]
    fn parent_based_follows_a_valid_parent() {
        let s = Sampler::from_name("parentbased_always_off", None).expect("known");
        assert!(s.samples(Some(true), 1));
        assert!(!s.samples(None, 1));
        let s = Sampler::from_name("parentbased_traceidratio", Some(0.0)).expect("known");
        assert!(s.samples(Some(true), 1));
        assert!(!s.samples(Some(false), u128::MAX));
        assert!(Sampler::from_name("traceidratio", None).is_none());
    }
}
