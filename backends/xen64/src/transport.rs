//! The hypercall seam: the only way the backend reaches Xen.
//!
//! On a real Xen guest this is the hypercall page (see `examples/pvkernel`);
//! on the host it is the PV MMU model in `tests/model`.
//!
//! Design note: Xen's `mmu_update` and `mmuext_op` take a `done` pointer
//! (`xen/include/public/xen.h`: "`success_count`") that tells the guest how
//! many records of an array took effect before one failed. The backend needs
//! it to undo exactly what a failed batch did (nothing may be left
//! half-pinned), so the transport returns it with the status: an [`Outcome`].

use pvops::{Mfn, Pfn};

use crate::abi::Call;

/// What one hypercall (or one multicall entry) returned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Xen's status: 0, or a negative errno.
    pub status: i64,
    /// Records of the call's array that took effect (`mmu_update`,
    /// `mmuext_op`: Xen's `done` count; `update_va_mapping`: 1 on success).
    /// On success this equals the number of records.
    pub done: u32,
}

impl Outcome {
    /// Success after `done` records.
    pub const fn ok(done: u32) -> Self {
        Outcome { status: 0, done }
    }

    /// Failure with `status` after `done` records took effect.
    pub const fn failed(status: i64, done: u32) -> Self {
        Outcome { status, done }
    }

    /// True when the status is 0.
    pub const fn is_ok(&self) -> bool {
        self.status == 0
    }
}

/// Issues hypercalls.
pub trait HypercallTransport: Sync {
    /// Issues one hypercall (one trap into Xen).
    fn call(&self, call: &Call<'_>) -> Outcome;
    /// Issues one `multicall` of `calls`, run by Xen in order (a failing entry
    /// does not stop the next), writing each entry's outcome to `outcomes`
    /// (same length). Returns the multicall's own status: non-zero means no
    /// entry ran.
    fn multicall(&self, calls: &[Call<'_>], outcomes: &mut [Outcome]) -> i64;
}

/// The guest's pfn ↔ mfn maps (p2m from `start_info.mfn_list`, m2p from Xen's table).
pub trait P2m: Sync {
    /// Machine frame of a guest frame.
    fn pfn_to_mfn(&self, pfn: Pfn) -> Option<Mfn>;
    /// Guest frame of a machine frame.
    fn mfn_to_pfn(&self, mfn: Mfn) -> Option<Pfn>;
}
