//! The guest's pseudo-physical to machine map, scrambled on purpose.
//!
//! A real PV guest gets `start_info.mfn_list` (p2m) and reads Xen's m2p. The
//! model builds both from a seed so that no pfn equals its mfn and the mapping
//! is not monotonic: a backend that forgets a translation points at the wrong
//! frame and a test notices.

use pvops::{Mfn, Pfn};

/// A deterministic pfn ↔ mfn bijection over the domain's frames.
#[derive(Clone, Debug)]
pub struct P2mTable {
    p2m: Vec<u64>,
    m2p: Vec<Option<u64>>,
}

/// xorshift64*: small, deterministic, good enough to shuffle frames.
fn next(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

impl P2mTable {
    /// `nr_pages` guest frames scattered over machine frames `1..nr_mfns`
    /// (mfn 0 is never the guest's: Xen treats it as the "none" sentinel).
    ///
    /// Needs `nr_mfns > nr_pages`; extra machine frames stay unowned.
    pub fn scrambled(nr_pages: u64, nr_mfns: u64, seed: u64) -> Self {
        let mut pool: Vec<u64> = (1..nr_mfns).collect();
        let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
        if state == 0 {
            state = 1;
        }
        for i in (1..pool.len()).rev() {
            let j = (next(&mut state) % (i as u64 + 1)) as usize;
            pool.swap(i, j);
        }
        let mut p2m: Vec<u64> = pool.into_iter().take(nr_pages as usize).collect();
        // No identity entries: a forgotten translation must never be harmless.
        let len = p2m.len();
        for pfn in 0..len {
            if p2m[pfn] == pfn as u64 && len > 1 {
                p2m.swap(pfn, (pfn + 1) % len);
            }
        }
        // And not monotonic (the shuffle makes this all but certain; make it so).
        if len > 2 && p2m.windows(2).all(|w| w[0] < w[1]) {
            p2m.swap(1, 2);
        }
        let mut m2p = vec![None; nr_mfns as usize];
        for (pfn, &mfn) in p2m.iter().enumerate() {
            m2p[mfn as usize] = Some(pfn as u64);
        }
        P2mTable { p2m, m2p }
    }

    /// Number of guest frames.
    pub fn nr_pages(&self) -> u64 {
        self.p2m.len() as u64
    }

    /// The machine frame of `pfn`.
    pub fn pfn_to_mfn(&self, pfn: u64) -> Option<u64> {
        self.p2m.get(pfn as usize).copied()
    }

    /// The guest frame of `mfn` (`None` for frames the domain does not own).
    pub fn mfn_to_pfn(&self, mfn: u64) -> Option<u64> {
        self.m2p.get(mfn as usize).copied().flatten()
    }

    /// Typed form of [`P2mTable::pfn_to_mfn`].
    pub fn mfn(&self, pfn: Pfn) -> Option<Mfn> {
        self.pfn_to_mfn(pfn.0).map(Mfn)
    }

    /// Typed form of [`P2mTable::mfn_to_pfn`].
    pub fn pfn(&self, mfn: Mfn) -> Option<Pfn> {
        self.mfn_to_pfn(mfn.0).map(Pfn)
    }
}
