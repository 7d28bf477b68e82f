//! Page types, type counts, pins and table validation: the heart of Xen's PV
//! MMU rules (notes §6.1–§6.4; Xen's `xen/arch/x86/mm.c`).
//!
//! Every machine frame has one type at a time — none, writable, or a table of
//! level 1–4 — and a count of references of that type. The type can only
//! change when the count is 0. A table type is taken by linking the frame
//! under a validated table, by a pin or by a base pointer; taking it the first
//! time *validates* the frame: every present entry takes a reference of the
//! next-lower type on its target (an L1 entry with RW takes a writable
//! reference), and Xen rewrites the entries (§6.4). Dropping the last
//! reference releases them again. The guest's direct map is real L1 slots
//! ([`super::direct_map`]): a writable slot is a writable mapping of the frame
//! it names, so a frame that one names cannot become a table (-EINVAL).

use pvops::pte::flags;
use pvops::{Level, ENTRIES_PER_TABLE};
use pvops_xen64::abi::{errno, PAGE_GUEST_KERNEL, XEN_L4_END, XEN_L4_FIRST};

use super::model::XenState;
use crate::machine::Machine;
use crate::tlb::TlbHazard;

/// The type a machine frame currently has (Xen's `PGT_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PageType {
    /// No type (count 0).
    #[default]
    None,
    /// Mapped writable by at least one validated L1 entry.
    Writable,
    /// A validated page table of this level.
    Table(Level),
}

/// Xen's bookkeeping for one machine frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameInfo {
    /// Current type ([`PageType::None`] whenever `type_count` is 0).
    pub page_type: PageType,
    /// References of that type.
    pub type_count: u32,
    /// Pinned with `MMUEXT_PIN_Ln_TABLE` (the pin holds one type reference).
    pub pinned: bool,
}

impl FrameInfo {
    /// True when the frame is a validated table of any level.
    pub fn is_table(&self) -> bool {
        self.type_count > 0 && matches!(self.page_type, PageType::Table(_))
    }
}

/// True for the L4 slots the guest owns (`is_guest_l4_slot`).
pub(crate) fn is_guest_l4_slot(index: usize) -> bool {
    !(XEN_L4_FIRST..XEN_L4_END).contains(&index)
}

/// AVAIL bits 9–11 and AVAIL_HIGH 52–62: free for the guest at every level.
const AVAIL: u64 = (0x7 << 9) | (0x7ff << 52);
/// Flags Xen accepts in L2–L4 entries (§6.2): no PSE, no G, no PWT/PCD.
const UPPER_ALLOWED: u64 =
    flags::PRESENT | flags::WRITABLE | flags::USER | flags::ACCESSED | flags::DIRTY | AVAIL | flags::NO_EXECUTE;
/// Flags Xen accepts in L1 entries (dom0 has I/O capabilities: PAT/PCD/PWT allowed).
const L1_ALLOWED: u64 = UPPER_ALLOWED | flags::GLOBAL | flags::PWT | flags::PCD | flags::HUGE;

/// Xen's rewrite of a present entry (§6.4): what the guest reads back.
pub(crate) fn adjust_entry(level: Level, entry: u64) -> u64 {
    if entry & flags::PRESENT == 0 {
        return entry;
    }
    match level {
        Level::L1 => {
            let mut e = entry;
            if e & flags::USER == 0 {
                e |= flags::USER | PAGE_GUEST_KERNEL;
            }
            if e & PAGE_GUEST_KERNEL == 0 {
                e |= flags::GLOBAL | flags::USER;
            }
            e
        }
        Level::L2 | Level::L3 => entry | flags::USER,
        Level::L4 => entry | flags::USER | flags::ACCESSED,
    }
}

/// What one present entry holds on its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryRef {
    /// A type reference on this machine frame.
    Typed(u64),
    /// A read-only L1 mapping: no type reference.
    Untyped,
}

/// The hypervisor's view while it works: model state plus machine memory.
pub(crate) struct Hv<'a> {
    pub(crate) st: &'a mut XenState,
    pub(crate) mem: &'a Machine,
    /// Frames being validated right now (a cycle is refused, not recursed).
    validating: Vec<u64>,
}

impl<'a> Hv<'a> {
    pub(crate) fn new(st: &'a mut XenState, mem: &'a Machine) -> Self {
        Hv { st, mem, validating: Vec::new() }
    }

    pub(crate) fn read(&self, mfn: u64, index: usize) -> u64 {
        self.mem.read(mfn, index).unwrap_or(0)
    }

    /// True when `mfn` is one of the domain's frames (it has an m2p entry).
    pub(crate) fn owns(&self, mfn: u64) -> bool {
        self.st.p2m.mfn_to_pfn(mfn).is_some()
    }

    fn info(&mut self, mfn: u64) -> Result<&mut FrameInfo, i64> {
        self.st.frames.get_mut(mfn as usize).ok_or(-errno::EINVAL)
    }

    /// Takes a reference of type `want` on `mfn` (Xen's `get_page_type`).
    pub(crate) fn get_type(&mut self, mfn: u64, want: PageType) -> Result<(), i64> {
        if !self.owns(mfn) {
            return Err(-errno::EINVAL);
        }
        if self.validating.contains(&mfn) {
            // Xen gives a frame its table type (unvalidated) before it
            // validates the entries, so an entry naming the frame itself
            // sees a type mismatch: a writable L1 mapping of it is -EBUSY
            // (get_page_from_l1e), anything else -EINVAL. Calibrated:
            // tests/calibration, `l1-maps-itself-rw`.
            return Err(if want == PageType::Writable { -errno::EBUSY } else { -errno::EINVAL });
        }
        let info = *self.info(mfn)?;
        if info.type_count > 0 {
            if info.page_type == want {
                self.info(mfn)?.type_count += 1;
                return Ok(());
            }
            // A table mapped writable is -EBUSY; any other mismatch is "Bad type".
            return Err(if want == PageType::Writable { -errno::EBUSY } else { -errno::EINVAL });
        }
        if self.st.direct.writable_count(mfn) > 0 {
            // Writable slots hold writable references already: Xen's count is
            // not 0, so no type change, and a table type is "Bad type".
            if want != PageType::Writable {
                return Err(-errno::EINVAL);
            }
        } else {
            self.type_change_flush(mfn, want);
            if let PageType::Table(level) = want {
                self.validate(mfn, level)?;
            }
        }
        let info = self.info(mfn)?;
        info.page_type = want;
        info.type_count = 1;
        if let Some(t) = self.st.last_type.get_mut(mfn as usize) {
            *t = want;
        }
        Ok(())
    }

    /// Entering Xen: if the calling vCPU has a user root, user mode may have
    /// run on it since the last flush, so its translations may be cached.
    pub(crate) fn trapped(&mut self) {
        let v = self.st.cur();
        if v.user_base != 0 && !v.user_cached {
            v.user_cached = true;
            self.sync_roots();
        }
    }

    /// Tells the calling vCPU's TLB which roots it may cache now.
    pub(crate) fn sync_roots(&mut self) {
        let me = self.st.me();
        self.sync_roots_of(me);
    }

    /// Tells `vcpu`'s TLB which roots it may cache now.
    pub(crate) fn sync_roots_of(&mut self, vcpu: usize) {
        let roots = self.st.tlb_roots(vcpu);
        self.mem.tlb_set_roots_of(vcpu, &roots);
    }

    /// Xen's `do_tlb_flush` on the calling vCPU.
    pub(crate) fn full_flush(&mut self) {
        let me = self.st.me();
        self.full_flush_of(me);
    }

    /// Xen's `do_tlb_flush` (cr4.PGE toggled: global entries too) on
    /// `vcpu`'s pCPU, which ticks the TLB clock (`pre_flush`/`post_flush`,
    /// flushtlb.c). A flush of another vCPU is what `flush_tlb_mask` does
    /// for it: Xen IPIs the pCPU it is dirty on and waits (smp-notes §4).
    pub(crate) fn full_flush_of(&mut self, vcpu: usize) {
        if vcpu >= self.st.vcpus.len() {
            return;
        }
        if vcpu != self.st.me() {
            self.st.counters.remote_flushes += 1;
        }
        self.mem.tlb_flush_everything_of(vcpu);
        self.st.direct.flush(vcpu);
        self.st.flush_clock += 1;
        let now = self.st.flush_clock;
        let v = &mut self.st.vcpus[vcpu];
        v.flush_time = now;
        // What user mode cached is gone; it refills only after a return to it.
        v.user_cached = false;
        self.sync_roots_of(vcpu);
    }

    /// `_get_page_type` on a type change (xen/arch/x86/mm.c): "On type change
    /// we check to flush stale TLB entries. It is vital that no other CPUs are
    /// left with writeable mappings to a frame which is intending to become
    /// pgtable/segdesc." It flushes (`FLUSH_TLB`, i.e. `do_tlb_flush`) the
    /// domain's dirty CPUs (`d->dirty_cpumask`: here every vCPU, as a
    /// descheduled one is flushed when it runs again) except those that
    /// flushed since the frame's last type reference went (`tlbflush_filter`
    /// on `page->tlbflush_timestamp`). Then, for a table, any writable
    /// translation still cached is a hazard the model records.
    pub(crate) fn type_change_flush(&mut self, mfn: u64, want: PageType) {
        let last = self.st.last_type.get(mfn as usize).copied().unwrap_or_default();
        let stamp = self.st.type_stamp.get(mfn as usize).copied().unwrap_or(0);
        if last != want {
            for vcpu in 0..self.st.vcpus.len() {
                if self.st.vcpus[vcpu].flush_time <= stamp {
                    self.full_flush_of(vcpu);
                }
            }
        }
        if matches!(want, PageType::Table(_)) {
            self.mem.tlb_check_frame(mfn, TlbHazard::BecameTable, true);
            self.check_stale_slots(mfn);
        }
    }

    /// `page->tlbflush_timestamp = tlbflush_current_time()`: the last
    /// reference of the frame's type went now.
    pub(crate) fn stamp(&mut self, mfn: u64) {
        let now = self.st.flush_clock;
        if let Some(t) = self.st.type_stamp.get_mut(mfn as usize) {
            *t = now;
        }
    }

    /// Drops a type reference (Xen's `put_page_type`); the last one of a table
    /// releases what its entries hold.
    pub(crate) fn put_type(&mut self, mfn: u64) {
        let Ok(info) = self.info(mfn) else { return };
        if info.type_count == 0 {
            return;
        }
        info.type_count -= 1;
        if info.type_count > 0 {
            return;
        }
        let old = info.page_type;
        info.page_type = PageType::None;
        if let PageType::Table(level) = old {
            self.devalidate(mfn, level);
        }
        // Xen's one count reaches 0 only when no writable slot names it either.
        if self.st.direct.writable_count(mfn) == 0 {
            self.stamp(mfn);
        }
    }

    /// The checks `get_page_from_l1e` makes of a present L1 entry before any
    /// reference (xen/arch/x86/mm.c); the frame it names.
    pub(crate) fn check_l1e(&self, entry: u64) -> Result<u64, i64> {
        if entry & !flags::ADDR_MASK & !L1_ALLOWED != 0 {
            return Err(-errno::EINVAL);
        }
        let target = (entry & flags::ADDR_MASK) >> 12;
        if target >= self.st.frames.len() as u64 {
            // Not RAM: Xen's get_page_from_l1e treats it as I/O memory and
            // refuses it without I/O permission (-EPERM). Calibrated:
            // tests/calibration, `l1-maps-foreign`.
            return Err(-errno::EPERM);
        }
        if !self.owns(target) {
            return Err(-errno::EINVAL);
        }
        Ok(target)
    }

    /// Checks one entry of table `table` (of `level`) and takes what it needs.
    pub(crate) fn get_entry_ref(&mut self, table: u64, level: Level, entry: u64) -> Result<EntryRef, i64> {
        let target = if level == Level::L1 {
            self.check_l1e(entry)?
        } else {
            if entry & !flags::ADDR_MASK & !UPPER_ALLOWED != 0 {
                // PSE in L2/L3 (PV is 4 KiB only), G/PWT/PCD above L1: "Bad L?E flags".
                return Err(-errno::EINVAL);
            }
            let target = (entry & flags::ADDR_MASK) >> 12;
            if !self.owns(target) {
                return Err(-errno::EINVAL);
            }
            target
        };
        match level.lower() {
            Some(lower) => match self.get_type(target, PageType::Table(lower)) {
                Ok(()) => Ok(EntryRef::Typed(target)),
                Err(code) if code == -errno::EINVAL => self.get_linear(table, level, entry, target).ok_or(code),
                Err(code) => Err(code),
            },
            None if entry & flags::WRITABLE != 0 => {
                self.get_type(target, PageType::Writable)?;
                Ok(EntryRef::Typed(target))
            }
            None => Ok(EntryRef::Untyped),
        }
    }

    /// A linear (recursive) entry, tried when the next-lower type cannot be
    /// taken (Xen's `get_lN_linear_pagetable` in xen/arch/x86/mm.c, L2–L4,
    /// `pv-linear-pt` on by default): read-only only; naming its own table
    /// it takes nothing, naming another validated table of the same level it
    /// takes a type reference. Not modelled: Xen's limits on tables that are
    /// both linear targets and hold linear entries. Calibrated:
    /// tests/calibration, `xsa182-l4-rw`, `linear-l4`, `linear-l2`,
    /// `linear-other-l4`.
    fn get_linear(&mut self, table: u64, level: Level, entry: u64, target: u64) -> Option<EntryRef> {
        if entry & flags::WRITABLE != 0 {
            return None;
        }
        if target == table {
            return Some(EntryRef::Untyped);
        }
        let info = self.st.frames.get_mut(target as usize)?;
        if info.type_count == 0 || info.page_type != PageType::Table(level) || self.validating.contains(&target) {
            return None;
        }
        info.type_count += 1;
        Some(EntryRef::Typed(target))
    }

    /// Releases what a present entry of table `table` (of `level`) holds.
    pub(crate) fn put_entry_ref(&mut self, table: u64, level: Level, entry: u64) {
        if entry & flags::PRESENT == 0 {
            return;
        }
        if level != Level::L1 && (entry & flags::ADDR_MASK) >> 12 == table {
            // A linear self-reference holds nothing.
            return;
        }
        if level == Level::L1 && entry & flags::WRITABLE == 0 {
            return;
        }
        self.put_type((entry & flags::ADDR_MASK) >> 12);
    }

    /// Validates `mfn` as a table of `level` (Xen's `alloc_lN_table`).
    fn validate(&mut self, mfn: u64, level: Level) -> Result<(), i64> {
        self.validating.push(mfn);
        let mut taken: Vec<EntryRef> = Vec::new();
        let mut adjusted: Vec<(usize, u64)> = Vec::new();
        let mut result = Ok(());
        for index in 0..ENTRIES_PER_TABLE {
            if level == Level::L4 && !is_guest_l4_slot(index) {
                continue;
            }
            let entry = self.read(mfn, index);
            if entry & flags::PRESENT == 0 {
                continue;
            }
            match self.get_entry_ref(mfn, level, entry) {
                Ok(r) => {
                    taken.push(r);
                    adjusted.push((index, adjust_entry(level, entry)));
                }
                Err(code) => {
                    result = Err(code);
                    break;
                }
            }
        }
        self.validating.pop();
        if let Err(code) = result {
            for r in taken.into_iter().rev() {
                if let EntryRef::Typed(target) = r {
                    self.put_type(target);
                }
            }
            return Err(code);
        }
        for (index, value) in adjusted {
            self.mem.write(mfn, index, value);
        }
        if level == Level::L4 {
            // Xen overwrites its own slots in every L4 it validates.
            for index in XEN_L4_FIRST..XEN_L4_END {
                self.mem.write(mfn, index, self.st.xen_l4_entry(index));
            }
        }
        Ok(())
    }

    /// Releases every reference a table's entries hold (Xen's `free_lN_table`).
    fn devalidate(&mut self, mfn: u64, level: Level) {
        for index in 0..ENTRIES_PER_TABLE {
            if level == Level::L4 && !is_guest_l4_slot(index) {
                continue;
            }
            let entry = self.read(mfn, index);
            self.put_entry_ref(mfn, level, entry);
        }
    }
}
