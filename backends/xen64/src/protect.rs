//! Protection changes that keep the accessed/dirty bits, and clearing them
//! (Linux's `xen_ptep_modify_prot_start`/`commit` in arch/x86/xen/mmu_pv.c).
//!
//! A live L1 entry stays live during a protection change: `protect_start`
//! only reads it, and `protect_commit` is one `mmu_update` with
//! `MMU_PT_UPDATE_PRESERVE_AD`, which Xen applies in a `cmpxchg` loop that
//! ORs in whatever A/D bits the entry has at that moment (`update_intpte`,
//! xen/arch/x86/pv/mm.h; `mod_l1_entry`, xen/arch/x86/mm.c). Queued like any
//! update in a lazy-MMU section: N changes cost ⌈N/32⌉ hypercalls.
//!
//! Clearing A/D has no hypercall: `PRESERVE_AD` can only add bits, and a
//! normal update overwrites any bit the hardware sets between the guest's
//! read and Xen's write. Linux stores into the read-only L1 and lets Xen
//! emulate the `cmpxchg` (`ptwr_emulated_cmpxchg`,
//! xen/arch/x86/pv/ro-page-fault.c), which needs
//! `VMASST_TYPE_writable_pagetables`; our domain does not enable it, so a
//! store there is a plain page fault. Instead the entry is withdrawn
//! atomically and put back without the bits, by two `mmu_update`s issued at
//! once:
//!
//! 1. `PRESERVE_AD` of the empty entry: the slot becomes "not present" with
//!    exactly the A/D bits it had at the exchange (address bits zero, so the
//!    non-present entry is L1TF-safe). From then on the hardware can set
//!    nothing in it.
//! 2. A read of the slot (the captured bits), then a normal update to the
//!    entry as it was, minus `bits`.
//!
//! Cost: 2 hypercalls (2 traps) per clear that clears something; a clear of
//! bits that are not set costs none. If Xen refuses the second update, the
//! entry is put back as it was (a third call) and the error returned. Between the two updates an access to
//! the page faults, as natively between `protect_start` and
//! `protect_commit`: the fault handler must take the page-table lock the
//! caller holds and look again.

use pvops::pte::flags;
use pvops::{MmServices, Pfn, Pte, PvError, ENTRIES_PER_TABLE};

use crate::abi::{MmuUpdate, MMU_PT_UPDATE_PRESERVE_AD};
use crate::backend::Cx;
use crate::mmu_update::entry_update;
use crate::multicall::Record;
use crate::p2m;

/// The bits the hardware sets on its own.
const AD: u64 = flags::ACCESSED | flags::DIRTY;

fn check_index(index: usize) -> Result<(), PvError> {
    if index >= ENTRIES_PER_TABLE {
        return Err(PvError::BadIndex { index });
    }
    Ok(())
}

/// `MMU_PT_UPDATE_PRESERVE_AD` of slot `index` of `table` (machine frame of
/// the guest's `table`).
fn preserve_ad_update(cx: &Cx<'_>, table: Pfn, index: usize, val: u64) -> Result<Record, PvError> {
    let Record::Mmu(MmuUpdate { ptr, .. }) = entry_update(cx.mfn(table)?, index, 0) else {
        return Err(PvError::WrongState { what: "entry_update is an mmu_update" });
    };
    Ok(Record::Mmu(MmuUpdate { ptr: ptr | MMU_PT_UPDATE_PRESERVE_AD, val }))
}

/// `PvMmuOps::protect_start`: a read (queued updates included).
pub(crate) fn protect_start(cx: &mut Cx<'_>, table: Pfn, index: usize) -> Result<Pte, PvError> {
    check_index(index)?;
    let pte = crate::mmu_update::read_entry(cx.platform, &cx.st.batch, pvops::Level::L1, table, index)?;
    if !pte.is_present() {
        return Err(PvError::WrongState { what: "protect_start of a non-present entry" });
    }
    Ok(pte)
}

/// `PvMmuOps::protect_commit`: `mmu_update` with `PRESERVE_AD` on a live
/// table, queued when lazy; a direct store into a table Xen does not use.
pub(crate) fn protect_commit(
    cx: &mut Cx<'_>,
    mm: &dyn MmServices,
    table: Pfn,
    index: usize,
    old: Pte,
    new: Pte,
) -> Result<(), PvError> {
    check_index(index)?;
    if !new.is_present() || !old.is_present() || new.pfn() != old.pfn() {
        return Err(PvError::WrongState { what: "protect_commit: not a protection change of a present entry" });
    }
    let raw = p2m::encode(cx.platform.p2m, Pte(new.0 | (old.0 & AD)))?;
    if cx.steady(mm)? && !mm.is_pinned(table)? {
        // Not part of a pinned tree: no hardware walks it, nothing to keep.
        cx.store(table, index, raw);
        return Ok(());
    }
    let record = preserve_ad_update(cx, table, index, raw)?;
    cx.push(record);
    cx.issue_unless_lazy()
}

/// `PvMmuOps::clear_accessed_dirty`: withdraw with `PRESERVE_AD`, read what
/// was captured, put back without `bits` (see the module doc).
pub(crate) fn clear_accessed_dirty(
    cx: &mut Cx<'_>,
    mm: &dyn MmServices,
    table: Pfn,
    index: usize,
    bits: u64,
) -> Result<Pte, PvError> {
    check_index(index)?;
    if bits & !AD != 0 {
        return Err(PvError::WrongState { what: "clear_accessed_dirty: bits other than accessed/dirty" });
    }
    let mem = cx.platform.mem;
    let entry_ptr = match entry_update(cx.mfn(table)?, index, 0) {
        Record::Mmu(MmuUpdate { ptr, .. }) => ptr,
        _ => return Err(PvError::WrongState { what: "entry_update is an mmu_update" }),
    };
    if cx.st.batch.queued_value(entry_ptr).is_some() {
        // The slot's queued update must be in the table before it is read;
        // failures of records queued by others stay theirs.
        cx.finish()?;
    }
    let cur = mem.read_entry(table, index);
    if cur & flags::PRESENT == 0 {
        return Err(PvError::WrongState { what: "clear_accessed_dirty of a non-present entry" });
    }
    if cur & bits == 0 {
        return Ok(p2m::decode(cx.platform.p2m, cur));
    }
    if cx.steady(mm)? && !mm.is_pinned(table)? {
        // Not live: no hardware sets bits in it, a plain exchange will do.
        let was = match mem.compare_exchange_entry(table, index, cur, cur & !bits) {
            Ok(v) | Err(v) => v,
        };
        cx.st.batch.stats.direct_writes += 1;
        if was != cur {
            return Err(PvError::WrongState { what: "clear_accessed_dirty: entry changed under an unpinned table" });
        }
        return Ok(p2m::decode(cx.platform.p2m, cur));
    }
    let withdraw = preserve_ad_update(cx, table, index, 0)?;
    cx.raw(withdraw)?;
    let captured = mem.read_entry(table, index) & AD;
    let old = (cur & !AD) | captured;
    let table_mfn = cx.mfn(table)?;
    if let Err(e) = cx.raw(entry_update(table_mfn, index, old & !bits)) {
        // Put the entry back as it was (nothing cleared, nothing lost);
        // only if Xen refuses that too does it stay withdrawn.
        if let Err(e2) = cx.raw(entry_update(table_mfn, index, old)) {
            log::error!("xen64: clear_accessed_dirty left {table:?}[{index}] withdrawn (was {old:#x}): {e}, then {e2}");
        }
        return Err(e);
    }
    Ok(p2m::decode(cx.platform.p2m, old))
}
