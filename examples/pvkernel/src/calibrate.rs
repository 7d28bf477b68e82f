//! The calibration corpus (`tests/calibration`) on the real Xen.
//!
//! Runs every case of `pvops_calibration::corpus` through this kernel's
//! hypercall page ([`TRANSPORT`]) over scratch frames from the frame
//! allocator, and prints each record as a `CAL` line and the totals as a
//! `CALSUM` line; `cargo xtask` compares them with the same corpus on the host
//! model. Runs before the workload, so the workload's leak and pin checks
//! cover what it leaves behind. Natively there is no Xen: nothing runs.

use alloc::vec::Vec;

use pvops::Pfn;
use pvops_calibration::{corpus::CASES, run, Platform, SCRATCH_FRAMES};
use pvops_xen64::attached_user_pgd;

use crate::directmap::DIRECT_MAP_BASE;
use crate::kprintln;
use crate::platform;
use crate::vm::Vm;
use crate::xen::transport::{XenP2m, TRANSPORT};

/// Runs the corpus on Xen (no-op natively). Frames Xen still holds a type on
/// afterwards (poisoned) are not freed (freeing them would hand a read-only
/// frame to the allocator); `CALSUM` reports them and xtask fails the run.
pub fn run_on_xen(v: &Vm) {
    if !platform::is_xen() {
        return;
    }
    let mut scratch = Vec::new();
    for _ in 0..SCRATCH_FRAMES {
        match v.frames.alloc_zeroed_frame() {
            Ok(pfn) => scratch.push(pfn),
            Err(e) => kprintln!("calibration: no scratch frame: {e}"),
        }
    }
    // The user root loaded now (init_mm has none): cases put it back.
    let user_base = attached_user_pgd(v.frames, v.mm.active_pgd())
        .ok()
        .flatten()
        .and_then(|p: Pfn| crate::xen::pfn_to_mfn(p.0))
        .unwrap_or(0);
    let kernel_base = crate::xen::pfn_to_mfn(v.mm.active_pgd().0).unwrap_or(0);
    let p2m = XenP2m;
    let p = Platform {
        transport: &TRANSPORT,
        p2m: &p2m,
        mem: v.mem,
        direct_map_base: DIRECT_MAP_BASE,
        scratch: &scratch,
        user_base,
        kernel_base,
    };
    let mut records = Vec::new();
    let sum = run(&p, CASES, &mut records);
    for r in &records {
        kprintln!("{r}");
    }
    kprintln!("{sum}");
    for pfn in scratch {
        if sum.poisoned.contains(&pfn) {
            kprintln!("calibration: frame {pfn:?} is still typed by Xen: not freed");
        } else if let Err(e) = v.frames.free_frame(pfn) {
            kprintln!("calibration: cannot free {pfn:?}: {e}");
        }
    }
}
