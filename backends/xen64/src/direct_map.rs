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

#[cfg(test)]
mod tests {
    use super::*;

    /// An alias is present, NX (the direct map never executes), and has A and D
    /// preset (the CPU never needs to write them back into a read-only alias).
    #[test]
    fn an_alias_is_present_nx_with_a_and_d_preset_and_writable_only_when_asked() {
        let base = 0xffff_8880_0000_0000;
        let mfn = Mfn(0x1234);
        let bits = 0x0123_4000 | 1 | (1 << 5) | (1 << 6) | (1 << 63);
        let want_ro = Record::Uvm { va: base + 7 * 4096, val: bits, flags: uvmf::NONE };
        assert_eq!(remap(base, Pfn(7), mfn, false), want_ro);
        let want_rw = Record::Uvm { va: base + 7 * 4096, val: bits | 2, flags: uvmf::NONE };
        assert_eq!(remap(base, Pfn(7), mfn, true), want_rw);
    }
}
