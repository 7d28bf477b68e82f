//! The oracle's probe page, mapped and unmapped without the backend.
//!
//! The measuring oracle must neither go through the code under test nor
//! disturb the state it measures: a backend call (`set_entry`, `alloc_pt`,
//! `lazy_mmu_flush`) would issue whatever the caller has queued in an open
//! lazy-MMU section. So the probe's code page gets its own L3/L2/L1 under
//! L4 slot [`PROBE_L4_SLOT`] of the loaded roots, built here:
//!
//! * **Native**: direct stores through the kernel's direct map, `invlpg`
//!   after linking, `invlpg` plus a cr3 reload after unlinking.
//! * **Xen PV**: the tables are filled while still writable, their aliases
//!   (direct map, initial region) remapped read-only with `update_va_mapping`
//!   and `UVMF_INVLPG` (a frame Xen validates as a page table may have no
//!   writable mapping: `get_page_type` in xen/arch/x86/mm.c), then linked into
//!   the kernel pgd and the user pgd with one `mmu_update` (machine addresses
//!   from the p2m; Xen validates the new L3 and everything under it, as
//!   `mod_l4_entry` -> `get_page_from_l4e` does). Teardown is the reverse:
//!   unlink both, `TLB_FLUSH_LOCAL`, aliases writable again (Xen accepts only
//!   once the type references are gone). Every call goes through
//!   [`ORACLE_TRANSPORT`], a hypercall-page transport of its own, so the
//!   backend's batch, its lazy state and the workload's trap counters are
//!   untouched.
//!
//! Frames come from, and go back to, the frame allocator, so a case's frame
//! balance is unchanged; a table Xen still holds typed is never freed (that
//! would hand a read-only frame to the allocator): it shows up as a leak.

use pvops::pte::flags;
use pvops::{MmServices, Pfn, PvError};
use pvops_xen64::abi::{mmuext, uvmf, Call, MmuUpdate, MmuextOp, MMU_NORMAL_PT_UPDATE};
use pvops_xen64::HypercallTransport;

use crate::directmap;
use crate::xen::transport::{HypercallPage, TrapCounts};
use crate::{platform, x86, xen};

/// The L4 slot of the probe page (no conformance case uses it).
pub const PROBE_L4_SLOT: usize = 200;
/// User VA of the probe's code page: the first page of [`PROBE_L4_SLOT`].
pub const PROBE_CODE_VA: u64 = (PROBE_L4_SLOT as u64) << 39;

/// The oracle's own hypercall transport (its counters are the oracle's).
pub static ORACLE_TRANSPORT: HypercallPage = HypercallPage::new();

/// What the oracle trapped into Xen for, so far.
pub fn oracle_traps() -> TrapCounts {
    ORACLE_TRANSPORT.counts()
}

/// Intermediate entries: user-reachable and writable, so the leaf decides.
const TABLE_FLAGS: u64 = flags::PRESENT | flags::WRITABLE | flags::USER;
/// The code page: present, user, read-only, executable.
const CODE_FLAGS: u64 = flags::PRESENT | flags::USER;

/// Slot `i` of table `pfn`, read through the direct map.
fn read_slot(pfn: Pfn, i: usize) -> Result<u64, PvError> {
    if !directmap::is_mapped(pfn.0) || i >= 512 {
        return Err(PvError::BadFrame { pfn });
    }
    // SAFETY: the direct map maps the whole frame (read-only at least, on
    // Xen for page tables) and `i < 512` keeps the read inside it.
    Ok(unsafe { (directmap::pfn_to_virt(pfn.0) as *const u64).add(i).read_volatile() })
}

/// Stores `val` in slot `i` of `pfn` through the direct map. Natively any
/// frame; on Xen only a frame whose alias is still writable (not a table).
fn write_slot(pfn: Pfn, i: usize, val: u64) -> Result<(), PvError> {
    if !directmap::is_mapped(pfn.0) || i >= 512 {
        return Err(PvError::BadFrame { pfn });
    }
    // SAFETY: as in `read_slot`; the caller only stores into frames whose
    // direct-map alias is writable (every frame natively; on Xen a frame
    // before it is made read-only).
    unsafe { (directmap::pfn_to_virt(pfn.0) as *mut u64).add(i).write_volatile(val) };
    Ok(())
}

/// The frame an entry points to, in the form entries carry (mfn on Xen).
fn entry_frame(pfn: Pfn) -> Result<u64, PvError> {
    if platform::is_xen() {
        xen::pfn_to_mfn(pfn.0).ok_or(PvError::NoTranslation { pfn })
    } else {
        Ok(pfn.0)
    }
}

fn xen_call(op: &'static str, call: &Call<'_>) -> Result<(), PvError> {
    let o = ORACLE_TRANSPORT.call(call);
    if o.is_ok() {
        Ok(())
    } else {
        Err(PvError::Hypercall { op, index: o.done as usize, code: o.status })
    }
}

/// (Xen) Remaps every kernel alias of `pfn` writable or read-only.
fn xen_set_alias(pfn: Pfn, writable: bool) -> Result<(), PvError> {
    let mfn = entry_frame(pfn)?;
    let rw = if writable { flags::WRITABLE } else { 0 };
    let val = (mfn << 12) | flags::PRESENT | flags::ACCESSED | flags::DIRTY | rw;
    let op = if writable { "oracle: alias writable" } else { "oracle: alias read-only" };
    if let Some(va) = xen::initial_va(pfn.0) {
        xen_call(op, &Call::UpdateVaMapping { va, val, flags: uvmf::INVLPG })?;
    }
    let va = directmap::pfn_to_virt(pfn.0) as u64;
    xen_call(op, &Call::UpdateVaMapping { va, val, flags: uvmf::INVLPG })
}

/// (Xen) Sets slot [`PROBE_L4_SLOT`] of every root in `roots` to `val`.
fn xen_set_l4(roots: &[Pfn], val: u64) -> Result<(), PvError> {
    let mut reqs = [MmuUpdate::default(); 2];
    for (r, &root) in reqs.iter_mut().zip(roots) {
        let ptr = (entry_frame(root)? << 12) + (PROBE_L4_SLOT as u64) * 8;
        *r = MmuUpdate { ptr: ptr | MMU_NORMAL_PT_UPDATE, val };
    }
    xen_call("oracle: L4 slot", &Call::MmuUpdate(&reqs[..roots.len().min(2)]))
}

/// A full flush of the local TLB by the oracle itself (never through the
/// backend, so a backend that skips flushes cannot make the oracle run stale
/// code).
pub fn flush_tlb() -> Result<(), PvError> {
    if platform::is_xen() {
        xen_call("oracle: flush", &Call::MmuextOp(&[MmuextOp { cmd: mmuext::TLB_FLUSH_LOCAL, arg1: 0, arg2: 0 }]))
    } else {
        // SAFETY: reloading cr3 with its own value only flushes the TLB.
        unsafe { x86::write_cr3(x86::read_cr3()) };
        Ok(())
    }
}

/// The probe page mapped into the loaded roots; [`ProbeMap::unmap`] undoes it.
#[derive(Debug)]
pub struct ProbeMap {
    /// The roots slot [`PROBE_L4_SLOT`] is linked into (kernel, then user).
    roots: [Pfn; 2],
    nr_roots: usize,
    /// The code page, then L3, L2, L1 (as far as allocated).
    frames: [Pfn; 4],
    allocated: usize,
    /// (Xen) Tables whose aliases were made read-only (from `frames[1]` on).
    read_only: usize,
    linked: bool,
}

impl ProbeMap {
    /// Maps `code` (at most one page) at [`PROBE_CODE_VA`] under `root` (the
    /// loaded kernel root) and, on Xen, `user_root` (the loaded user pgd).
    /// On error everything done so far is undone.
    pub fn map(mm: &dyn MmServices, root: Pfn, user_root: Option<Pfn>, code: &[u8]) -> Result<ProbeMap, PvError> {
        let mut roots = [root; 2];
        let mut nr_roots = 1;
        if let Some(u) = user_root.filter(|_| platform::is_xen()) {
            roots[1] = u;
            nr_roots = 2;
        }
        let mut m = ProbeMap { roots, nr_roots, frames: [root; 4], allocated: 0, read_only: 0, linked: false };
        match m.build(mm, code) {
            Ok(()) => Ok(m),
            Err(e) => {
                // The first error is the one to report.
                let _ = m.unmap(mm);
                Err(e)
            }
        }
    }

    fn build(&mut self, mm: &dyn MmServices, code: &[u8]) -> Result<(), PvError> {
        if code.len() > 4096 {
            return Err(PvError::WrongState { what: "oracle: probe code larger than a page" });
        }
        for &root in &self.roots[..self.nr_roots] {
            if read_slot(root, PROBE_L4_SLOT)? & flags::PRESENT != 0 {
                return Err(PvError::WrongState { what: "oracle: the probe's L4 slot is in use" });
            }
        }
        for i in 0..4 {
            self.frames[i] = mm.alloc_zeroed_frame()?;
            self.allocated = i + 1;
        }
        let [page, l3, l2, l1] = self.frames;
        for (i, chunk) in code.chunks(8).enumerate() {
            let mut word = [0xccu8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            write_slot(page, i, u64::from_le_bytes(word))?;
        }
        // PROBE_CODE_VA is slot 0 of its L3, L2 and L1.
        write_slot(l1, 0, (entry_frame(page)? << 12) | CODE_FLAGS)?;
        write_slot(l2, 0, (entry_frame(l1)? << 12) | TABLE_FLAGS)?;
        write_slot(l3, 0, (entry_frame(l2)? << 12) | TABLE_FLAGS)?;
        let link = (entry_frame(l3)? << 12) | TABLE_FLAGS;
        // From here on the teardown clears the slots (clearing an empty one
        // is harmless), so a half-done link is undone too.
        if platform::is_xen() {
            for &t in &[l3, l2, l1] {
                xen_set_alias(t, false)?;
                self.read_only += 1;
            }
            self.linked = true;
            xen_set_l4(&self.roots[..self.nr_roots], link)
        } else {
            self.linked = true;
            write_slot(self.roots[0], PROBE_L4_SLOT, link)?;
            // SAFETY: native ring 0 (checked just above).
            unsafe { x86::invlpg(PROBE_CODE_VA) };
            Ok(())
        }
    }

    /// Unlinks, flushes and frees what [`ProbeMap::map`] built. Goes on
    /// after an error (returning the first), but frees nothing if the
    /// unlinking or the flush failed, and no table Xen may still hold typed.
    pub fn unmap(self, mm: &dyn MmServices) -> Result<(), PvError> {
        let mut first: Option<PvError> = None;
        if self.linked {
            if platform::is_xen() {
                keep_first(&mut first, xen_set_l4(&self.roots[..self.nr_roots], 0));
            } else {
                keep_first(&mut first, write_slot(self.roots[0], PROBE_L4_SLOT, 0));
                // SAFETY: native ring 0.
                unsafe { x86::invlpg(PROBE_CODE_VA) };
            }
        }
        keep_first(&mut first, flush_tlb());
        // Nothing is freed while it may still be reachable.
        let mut free = [first.is_none(); 4];
        // Tables back to ordinary, writable frames (top down: L3, L2, L1).
        for (i, f) in free.iter_mut().enumerate().skip(1).take(self.read_only) {
            if *f {
                let r = xen_set_alias(self.frames[i], true);
                *f = r.is_ok();
                keep_first(&mut first, r);
            }
        }
        for (i, &f) in self.frames[..self.allocated].iter().enumerate() {
            if free[i] {
                keep_first(&mut first, mm.free_frame(f));
            } else {
                crate::kprintln!("oracle: probe frame {f:?} may still be mapped or typed: not freed");
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Records `r`'s error in `first` unless one is there already.
fn keep_first(first: &mut Option<PvError>, r: Result<(), PvError>) {
    if let Err(e) = r {
        first.get_or_insert(e);
    }
}
