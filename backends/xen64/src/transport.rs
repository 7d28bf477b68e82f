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

    /// The marker of a multicall entry Xen did not run: the backend fills
    /// every outcome with it before [`HypercallTransport::multicall`], and the
    /// transport overwrites only the entries that ran. `i64::MIN` is no
    /// hypercall's result (Xen returns 0 or `-errno`, errno < 4096).
    pub const NOT_RUN: Outcome = Outcome { status: i64::MIN, done: 0 };

    /// False for [`Outcome::NOT_RUN`]: Xen ran the call (whatever it returned).
    pub const fn ran(&self) -> bool {
        self.status != i64::MIN
    }
}

/// Issues hypercalls.
pub trait HypercallTransport: Sync {
    /// Issues one hypercall (one trap into Xen).
    fn call(&self, call: &Call<'_>) -> Outcome;
    /// Issues one `multicall` of `calls`, run by Xen in order (a failing entry
    /// does not stop the next). `outcomes` (same length) arrives filled with
    /// [`Outcome::NOT_RUN`]; the transport writes the outcome of every entry
    /// Xen ran and leaves the others as they are. Returns the multicall's own
    /// status. Non-zero does not mean nothing ran: Xen's `do_multicall`
    /// (`xen/common/multicall.c`) runs entries in order and stops at the first
    /// it cannot read (-EFAULT), so entries before it ran and wrote their
    /// results. On the real hypercall page, a transport pre-sets each entry's
    /// `result` to a value Xen never returns and treats an entry whose result
    /// is still that value as not run. (An entry whose result Xen ran but
    /// could not write back, also -EFAULT, then looks not run: Xen reads and
    /// writes the same entry, so that needs a read-only entry, which a
    /// transport must not hand over.)
    fn multicall(&self, calls: &[Call<'_>], outcomes: &mut [Outcome]) -> i64;
}

/// The guest's pfn ↔ mfn maps (p2m from `start_info.mfn_list`, m2p from Xen's table).
pub trait P2m: Sync {
    /// Machine frame of a guest frame.
    fn pfn_to_mfn(&self, pfn: Pfn) -> Option<Mfn>;
    /// Guest frame of a machine frame.
    fn mfn_to_pfn(&self, mfn: Mfn) -> Option<Pfn>;
}
