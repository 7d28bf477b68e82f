//! The guest's direct map, as far as Xen cares: every frame that is (or is
//! about to be) a page table must have a read-only alias there (notes §6.1:
//! "a frame is never both a table and writably mapped"). Aliases change with
//! `update_va_mapping` on `direct_map_base + pfn * 4096`.

use pvops::pte::flags;
use pvops::{Mfn, Pfn, PAGE_SIZE};

use crate::abi::uvmf;
use crate::multicall::Record;

/// `update_va_mapping` making `pfn`'s alias read-only or writable again.
///
/// No flush flag: Xen flushes by itself when a frame's type changes from
/// writable to table (its TLB-flush timestamps), as Linux relies on.
pub(crate) fn remap(direct_map_base: u64, pfn: Pfn, mfn: Mfn, writable: bool) -> Record {
    let mut val = mfn.addr() | flags::PRESENT | flags::ACCESSED | flags::DIRTY | flags::NO_EXECUTE;
    if writable {
        val |= flags::WRITABLE;
    }
    Record::Uvm { va: direct_map_base.wrapping_add(pfn.0.wrapping_mul(PAGE_SIZE)), val, flags: uvmf::NONE }
}
