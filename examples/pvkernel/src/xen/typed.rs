//! Asking Xen, not our bookkeeping, whether a frame still has a page-table
//! type: a writable mapping of a frame is refused while any type reference
//! on it is held (a pin, a loaded base pointer, a reference from a validated
//! table). Xen's rule (xen/arch/x86/mm.c): `mod_l1_entry` takes
//! `get_page_from_l1e`, which for a `_PAGE_RW` entry calls
//! `get_page_type(page, PGT_writable_page)`; `_get_page_type` fails while the
//! page's type is a page-table type with a non-zero type count, so the
//! `update_va_mapping` returns an error and changes nothing.
//!
//! These calls go straight to the hypercall page (not through the counted
//! transport the backend uses): they are the oracle's, not the workload's.

use alloc::vec::Vec;

use pvops::Pfn;
use pvops_xen64::abi::mmuext;

use super::hypercall::{self, UVMF_INVLPG};
use super::mmu::{make_pte, PTE_A, PTE_D, PTE_P, PTE_RW};
use crate::directmap;
use crate::vm::Vm;

fn alias_va(pfn: Pfn) -> u64 {
    directmap::pfn_to_virt(pfn.0) as u64
}

/// Tries to map `pfn`'s direct-map alias writable. `Ok(true)`: Xen accepted
/// (no type held; the alias is writable now), `Ok(false)`: Xen refused.
pub fn make_writable(pfn: Pfn) -> Result<bool, hypercall::XenError> {
    let pte = make_pte(pfn.0, PTE_P | PTE_RW | PTE_A | PTE_D)?;
    Ok(hypercall::update_va_mapping(alias_va(pfn), pte, UVMF_INVLPG).is_ok())
}

/// Maps `pfn`'s direct-map alias read-only again.
pub fn make_read_only(pfn: Pfn) -> Result<(), hypercall::XenError> {
    let pte = make_pte(pfn.0, PTE_P | PTE_A | PTE_D)?;
    hypercall::update_va_mapping(alias_va(pfn), pte, UVMF_INVLPG)
}

/// Whether Xen holds `l4` (a pinned L4 table) as a loaded base pointer: the
/// pin is dropped, a writable alias is tried (refused only while another
/// type reference, i.e. the base pointer, remains), then the alias goes back
/// to read-only and the table is pinned again.
pub fn is_loaded_base(l4: Pfn) -> Result<bool, hypercall::XenError> {
    let mfn = make_pte(l4.0, 0)? >> 12;
    hypercall::mmuext(mmuext::UNPIN_TABLE, mfn)?;
    let writable = make_writable(l4);
    if matches!(writable, Ok(true)) {
        make_read_only(l4)?;
    }
    hypercall::mmuext(mmuext::PIN_L4_TABLE, mfn)?;
    writable.map(|w| !w)
}

/// At the end of the run, for every frame the allocator holds free (all the
/// run's page tables are back there by now, except those in `keep`): how
/// many Xen still held pinned, and how many it still held typed at all.
/// A pinned one is unpinned (it is free: nothing may use it).
pub fn leftovers(v: &Vm, keep: &[Pfn]) -> (u64, u64) {
    let (mut pins, mut typed) = (0, 0);
    let free: Vec<Pfn> =
        (0..v.frames.nr_frames()).map(Pfn).filter(|&p| v.frames.is_free(p) && !keep.contains(&p)).collect();
    for pfn in free {
        if matches!(make_writable(pfn), Ok(true)) {
            continue;
        }
        typed += 1;
        let Ok(pte) = make_pte(pfn.0, 0) else { continue };
        if hypercall::mmuext(mmuext::UNPIN_TABLE, pte >> 12).is_ok() {
            pins += 1;
        }
        crate::kprintln!("typed_left: free frame {pfn:?} is still typed in Xen");
    }
    (pins, typed)
}
