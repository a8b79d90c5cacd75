//! The consistent-hash ring: each backend owns many points (virtual nodes) on a 64-bit circle;
//! a key belongs to the first point at or after its hash. Adding or removing one of N backends
//! moves only the keys of that backend's arcs, about 1/N of them.
//!
//! The hash is spelled out here (FNV-1a, then a 64-bit finalizer), never a library's default
//! hasher: every agent-tier sidecar must place a trace id on the same backend, whatever its
//! build.

/// Points per backend: enough that each backend's share stays within a few percent of 1/N.
pub const DEFAULT_VIRTUAL_NODES: usize = 200;

/// A stable, well-mixed 64-bit hash.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // murmur3's fmix64: FNV alone leaves similar inputs (host:port#1, #2) close together.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[derive(Debug, Clone, Default)]
pub struct Ring {
    /// Sorted by hash; the index is into `backends`.
    points: Vec<(u64, usize)>,
    backends: Vec<String>,
}

impl Ring {
    /// A ring over `backends` (order and duplicates do not matter).
    pub fn new(backends: &[String], virtual_nodes: usize) -> Ring {
        let mut backends = backends.to_vec();
        backends.sort();
        backends.dedup();
        let mut points = Vec::with_capacity(backends.len() * virtual_nodes);
        for (ix, b) in backends.iter().enumerate() {
            for v in 0..virtual_nodes {
                points.push((hash64(format!("{b}#{v}").as_bytes()), ix));
            }
        }
        // Ties (vanishingly rare) go to the lower backend name, the same on every sidecar.
        points.sort_unstable();
        Ring { points, backends }
    }

    pub fn backends(&self) -> &[String] {
        &self.backends
    }

    /// The backend (index into [`Ring::backends`]) that owns `key`.
    pub fn pick(&self, key: &[u8]) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let h = hash64(key);
        let i = self.points.partition_point(|(p, _)| *p < h);
        Some(self.points[i % self.points.len()].1)
    }

    /// The backend name that owns `key`.
    pub fn owner(&self, key: &[u8]) -> Option<&str> {
        self.pick(key).map(|i| self.backends[i].as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u32) -> impl Iterator<Item = [u8; 16]> {
        (0..n).map(|i| {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            id[8..12].copy_from_slice(&i.wrapping_mul(0x9e37_79b9).to_le_bytes());
            id
        })
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{}:4317", i + 1)).collect()
    }

    #[test]
    fn a_fourth_backend_takes_about_a_quarter_of_the_ids_from_the_others() {
        let three = Ring::new(&names(3), DEFAULT_VIRTUAL_NODES);
        let four = Ring::new(&names(4), DEFAULT_VIRTUAL_NODES);
        let n = 20_000;
        let mut moved = 0;
        for id in ids(n) {
            let (a, b) = (three.owner(&id), four.owner(&id));
            if a != b {
                moved += 1;
                assert_eq!(b, Some("10.0.0.4:4317"), "ids only move to the new backend");
            }
        }
        let share = f64::from(moved) / f64::from(n);
        assert!((0.15..=0.35).contains(&share), "moved {share:.3}");
    }

    #[test]
    fn shares_are_even_and_the_ring_ignores_list_order() {
        let ring = Ring::new(&names(3), DEFAULT_VIRTUAL_NODES);
        let mut reversed = names(3);
        reversed.reverse();
        let other = Ring::new(&reversed, DEFAULT_VIRTUAL_NODES);
        let mut count = [0u32; 3];
        for id in ids(30_000) {
            let ix = ring.pick(&id).expect("non-empty");
            assert_eq!(other.pick(&id), Some(ix));
            count[ix] += 1;
        }
        for c in count {
            assert!((8_000..12_000).contains(&c), "shares {count:?}");
        }
        assert_eq!(Ring::new(&[], 10).pick(b"x"), None);
    }

    #[test]
    fn the_hash_is_fixed() {
        // Agents of different builds must agree: pin a value.
        assert_eq!(hash64(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(hash64(b"10.0.0.1:4317#0"), 0x653e_2d5c_867d_249b);
    }
}
