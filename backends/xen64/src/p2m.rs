//! Entry encoding: the neutral, pfn-based [`Pte`] to and from the machine
//! form Xen and the hardware see (Linux's `pte_pfn_to_mfn`/`pte_mfn_to_pfn`).
//!
//! * Writing, a present entry's pfn becomes its mfn through the p2m; a pfn
//!   with no mfn is an error ([`PvError::NoTranslation`]), never a guess.
//!   A non-present entry is passed through unchanged (it holds no frame).
//! * Reading, a present entry's mfn becomes its pfn through the m2p. Xen's
//!   own frames (its L4 slots) have no pfn: like Linux, such an entry reads
//!   as empty. The asymmetry is deliberate: a pfn-based entry cannot name a
//!   frame the guest does not own.
//! * Xen rewrites entries it validates (notes §6.4): kernel L1es gain
//!   U + bit 52 (`_PAGE_GUEST_KERNEL`), user L1es gain G, L2–L4 gain U (and
//!   A at L4). Decoding undoes what it can tell apart — bit 52 means "the
//!   guest wrote no U", U without bit 52 on an L1e means "Xen added G" — and
//!   keeps the rest: an L2–L4 entry may read back with U (and A) set. Never
//!   compare read-back entries bit for bit on Xen.

use pvops::pte::flags;
use pvops::{Mfn, Pfn, Pte, PvError};

use crate::abi::PAGE_GUEST_KERNEL;
use crate::transport::P2m;

/// The machine frame of `pfn`.
pub(crate) fn mfn_of(p2m: &dyn P2m, pfn: Pfn) -> Result<Mfn, PvError> {
    p2m.pfn_to_mfn(pfn).ok_or(PvError::NoTranslation { pfn })
}

/// Encodes a pfn-based entry in machine form.
pub(crate) fn encode(p2m: &dyn P2m, pte: Pte) -> Result<u64, PvError> {
    if !pte.is_present() {
        return Ok(pte.0);
    }
    let mfn = mfn_of(p2m, pte.pfn())?;
    Ok(mfn.addr() | pte.flags())
}

/// Decodes a machine-form entry back to pfn form.
pub(crate) fn decode(p2m: &dyn P2m, raw: u64) -> Pte {
    if raw & flags::PRESENT == 0 {
        return Pte(raw);
    }
    let Some(pfn) = p2m.mfn_to_pfn(Mfn((raw & flags::ADDR_MASK) >> 12)) else {
        return Pte::EMPTY;
    };
    let mut bits = raw & !flags::ADDR_MASK;
    if bits & PAGE_GUEST_KERNEL != 0 {
        bits &= !(PAGE_GUEST_KERNEL | flags::USER);
    } else if bits & flags::USER != 0 {
        bits &= !flags::GLOBAL;
    }
    Pte::new(pfn, bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// mfn = pfn + 0x100.
    struct Offset;
    impl P2m for Offset {
        fn pfn_to_mfn(&self, pfn: Pfn) -> Option<Mfn> {
            (pfn.0 < 0x10).then_some(Mfn(pfn.0 + 0x100))
        }
        fn mfn_to_pfn(&self, mfn: Mfn) -> Option<Pfn> {
            mfn.0.checked_sub(0x100).filter(|p| *p < 0x10).map(Pfn)
        }
    }

    const KERNEL: u64 = flags::PRESENT | flags::WRITABLE;
    const USER: u64 = KERNEL | flags::USER;

    #[test]
    fn present_entries_are_translated_both_ways() {
        let pte = Pte::new(Pfn(3), KERNEL);
        let raw = encode(&Offset, pte).unwrap();
        assert_eq!(raw, 0x103 << 12 | KERNEL);
        assert_eq!(decode(&Offset, raw), pte);
    }

    #[test]
    fn a_pfn_without_mfn_is_an_error() {
        assert_eq!(encode(&Offset, Pte::new(Pfn(0x42), KERNEL)), Err(PvError::NoTranslation { pfn: Pfn(0x42) }));
    }

    #[test]
    fn non_present_entries_pass_through() {
        assert_eq!(encode(&Offset, Pte(0x42 << 12)).unwrap(), 0x42 << 12);
        assert_eq!(decode(&Offset, 0x42 << 12), Pte(0x42 << 12));
    }

    #[test]
    fn xens_l1_rewrites_are_undone() {
        let kernel = Pte::new(Pfn(1), KERNEL);
        let raw = encode(&Offset, kernel).unwrap() | flags::USER | PAGE_GUEST_KERNEL;
        assert_eq!(decode(&Offset, raw), kernel);
        let user = Pte::new(Pfn(2), USER);
        let raw = encode(&Offset, user).unwrap() | flags::GLOBAL;
        assert_eq!(decode(&Offset, raw), user);
    }

    #[test]
    fn a_foreign_frame_reads_as_empty() {
        assert_eq!(decode(&Offset, 0x9999 << 12 | KERNEL), Pte::EMPTY);
    }

    /// An entry Xen has not rewritten (an unpinned table, written directly)
    /// keeps the guest's own GLOBAL bit: only Xen's G on user entries is undone.
    #[test]
    fn a_guest_global_kernel_entry_keeps_its_global_bit() {
        let global = Pte::new(Pfn(3), KERNEL | flags::GLOBAL);
        assert_eq!(decode(&Offset, encode(&Offset, global).unwrap()), global);
    }
}
