//! Memory accounting for the memory_limiter: bytes of span data held in the pipeline, and the
//! process RSS, against the configured limits.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Shared by the receivers (which take tickets) and the limiter (which checks them).
#[derive(Debug, Default)]
pub struct MemoryTracker {
    in_use: AtomicUsize,
    rss: AtomicU64,
}

impl MemoryTracker {
    pub fn new() -> Arc<MemoryTracker> {
        Arc::new(MemoryTracker::default())
    }

    /// Accounts `bytes` until the returned ticket is dropped.
    pub fn take(self: &Arc<Self>, bytes: usize) -> MemoryTicket {
        self.in_use.fetch_add(bytes, Ordering::AcqRel);
        MemoryTicket {
            tracker: self.clone(),
            bytes,
        }
    }

    /// Bytes of span data currently held by the pipeline.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }

    /// Last sampled resident set size of the process, in bytes (0 when unknown).
    pub fn rss(&self) -> u64 {
        self.rss.load(Ordering::Relaxed)
    }

    /// Sets the RSS figure directly (tests, and platforms without /proc).
    pub fn set_rss(&self, bytes: u64) {
        self.rss.store(bytes, Ordering::Relaxed);
    }

    pub fn sample_rss(&self) {
        if let Some(r) = read_rss() {
            self.rss.store(r, Ordering::Relaxed);
        }
    }
}

/// Releases its bytes from the tracker when dropped.
#[derive(Debug)]
pub struct MemoryTicket {
    tracker: Arc<MemoryTracker>,
    bytes: usize,
}

impl Drop for MemoryTicket {
    fn drop(&mut self) {
        self.tracker.in_use.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// RSS from /proc/self/statm (Linux); None elsewhere.
pub fn read_rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // Page size is 4 KiB on every platform this runs on in practice; sysconf would need libc.
    Some(pages * 4096)
}
