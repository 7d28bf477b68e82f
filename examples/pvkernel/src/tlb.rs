//! The kernel-mode TLB test: a translation the CPU has just used must not
//! outlive `Mm::unmap`.
//!
//! With a user space loaded, the kernel reads a page of it (the CPU caches
//! the translation), unmaps it with `Mm::unmap` (which must flush that
//! address), keeps the freed frame out of the allocator, maps a new page at
//! the same address and writes a marker into it, then reads the address
//! again. A read that does not return the marker went through a stale TLB
//! entry. Unlike the user-mode test (process 5 of the user workload), there
//! is no switch between guest user and kernel mode in between, which on Xen
//! reloads cr3 and flushes by itself (xen/arch/x86/pv/domain.c,
//! `_toggle_guest_pt`); the only cr3 writes left are those of hypercalls
//! when Xen runs with XPTI.

use kernel_glue::PageFlags;
use pvops::PvError;

use crate::kprintln;
use crate::vm::Vm;

/// The user address the test maps (L4 slot 0, unused by anything else then).
const TLB_TEST_VA: u64 = 0x50_0000;
const OLD: u64 = 0x01d0_01d0_01d0_01d0;
const NEW: u64 = 0x0ee0_0ee0_0ee0_0ee0;

fn read(va: u64) -> u64 {
    // SAFETY: `va` is mapped (readable) in the address space loaded now, as
    // the caller just checked with `Mm::map`/`poke`; on Xen the kernel pgd
    // maps the user half too and the guest kernel may read user pages.
    unsafe { core::ptr::read_volatile(va as *const u64) }
}

/// Runs the test; `Ok(true)` when the second read saw the new page.
pub fn kernel_tlb_test(v: &Vm) -> Result<bool, PvError> {
    let mm = v.mm;
    let space = mm.create()?;
    let mut held = None;
    let r = (|| {
        mm.map(&space, TLB_TEST_VA, PageFlags::DATA)?;
        mm.poke(&space, TLB_TEST_VA, OLD)?;
        mm.activate(&space)?;
        let first = read(TLB_TEST_VA);
        mm.unmap(&space, TLB_TEST_VA)?;
        // The frame just freed comes back first: hold it, so the new
        // mapping gets another frame.
        held = Some(v.frames.alloc_zeroed_frame()?);
        mm.map(&space, TLB_TEST_VA, PageFlags::DATA)?;
        mm.poke(&space, TLB_TEST_VA, NEW)?;
        let second = read(TLB_TEST_VA);
        kprintln!(
            "tlb: kernel read {first:#x} before unmap, {second:#x} after unmap + new page ({})",
            if second == NEW { "fresh translation" } else { "STALE translation" }
        );
        Ok(first == OLD && second == NEW)
    })();
    let back = mm.activate_init();
    let gone = mm.exit(space).map_err(|(e, _)| e);
    if let Some(f) = held {
        v.frames.free_frame(f)?;
    }
    let ok = r?;
    back?;
    gone?;
    Ok(ok)
}
