//! The hypercalls the PV MMU uses, as Xen runs them: `mmu_update`,
//! `mmuext_op`, `update_va_mapping` and `multicall` (notes §4.4, §6).
//!
//! Arrays (`mmu_update`, `mmuext_op`) run in order and stop at the first
//! failing record; the outcome carries Xen's `done` count. A multicall runs
//! every entry, whatever an earlier one returned, and records each outcome;
//! one that fails itself part-way leaves later entries' outcomes untouched.

use pvops::pte::flags;
use pvops::{Level, PAGE_SIZE};
use pvops_xen64::abi::{errno, mmuext, uvmf, Call, MmuUpdate, MmuextOp, MMU_NORMAL_PT_UPDATE};
use pvops_xen64::{HypercallTransport, Outcome};

use super::direct_map::Slot;
use super::model::{XenModel, XenState};
use super::types::{adjust_entry, is_guest_l4_slot, Hv, PageType};
use crate::sched::Point;

/// `MMUEXT_TLB_FLUSH_MULTI` (xen/include/public/xen.h): flush the TLBs of
/// the vCPUs in the bitmap `arg2`.
pub const TLB_FLUSH_MULTI: u32 = 8;
/// `MMUEXT_INVLPG_MULTI`: `invlpg arg1` on the vCPUs in the bitmap `arg2`.
pub const INVLPG_MULTI: u32 = 9;
/// `UVMF_ALL` in `update_va_mapping`'s flags: flush every vCPU.
pub const UVMF_ALL: u64 = 4;

impl Hv<'_> {
    /// Runs one call (not a multicall) and returns its outcome.
    pub(crate) fn run(&mut self, call: &Call<'_>) -> Outcome {
        match *call {
            Call::MmuUpdate(reqs) => {
                self.st.counters.mmu_update_calls += 1;
                self.run_array(reqs, |hv, r| {
                    hv.st.counters.mmu_updates += 1;
                    hv.mmu_update(r)
                })
            }
            Call::MmuextOp(ops) => {
                self.st.counters.mmuext_op_calls += 1;
                self.run_array(ops, |hv, op| {
                    hv.st.counters.mmuext_ops += 1;
                    hv.mmuext_op(op)
                })
            }
            Call::UpdateVaMapping { va, val, flags } => {
                self.st.counters.update_va_mappings += 1;
                match self.subop(|hv| hv.update_va_mapping(va, val, flags)) {
                    Ok(()) => Outcome::ok(1),
                    Err(code) => Outcome::failed(code, 0),
                }
            }
        }
    }

    fn run_array<T>(&mut self, items: &[T], mut one: impl FnMut(&mut Self, &T) -> Result<(), i64>) -> Outcome {
        for (done, item) in items.iter().enumerate() {
            if let Err(code) = self.subop(|hv| one(hv, item)) {
                return Outcome::failed(code, done as u32);
            }
        }
        Outcome::ok(items.len() as u32)
    }

    /// One sub-operation, with failure injection and failure counting.
    fn subop(&mut self, f: impl FnOnce(&mut Self) -> Result<(), i64>) -> Result<(), i64> {
        let result = match XenState::injected(&mut self.st.inject_subop) {
            Some(code) => Err(code),
            None => f(self),
        };
        if result.is_err() {
            self.st.counters.failures += 1;
        }
        result
    }

    /// `MMU_NORMAL_PT_UPDATE`: a checked write of one entry.
    fn mmu_update(&mut self, req: &MmuUpdate) -> Result<(), i64> {
        // Xen's `do_mmu_update` (xen/arch/x86/mm.c) takes the command from
        // bits 2:0 of `ptr` (so a misaligned ptr is an unknown command,
        // -ENOSYS). For a PV guest, `MMU_PT_UPDATE_NO_TRANSLATE` (3) is a
        // normal update and `MMU_PT_UPDATE_PRESERVE_AD` (2) one that keeps
        // the A/D bits already set. `MMU_MACHPHYS_UPDATE` (1) is not modelled.
        // Calibrated: tests/calibration, `mmu-unknown-cmd`, `mmu-misaligned`,
        // `preserve-ad`.
        const PRESERVE_AD: u64 = 2;
        const NO_TRANSLATE: u64 = 3;
        let cmd = req.ptr & 7;
        if !matches!(cmd, MMU_NORMAL_PT_UPDATE | PRESERVE_AD | NO_TRANSLATE) {
            return Err(-errno::ENOSYS);
        }
        let preserve_ad = cmd == PRESERVE_AD;
        let mfn = req.ptr >> 12;
        let index = ((req.ptr & (PAGE_SIZE - 1)) >> 3) as usize;
        if !self.owns(mfn) {
            return Err(-errno::EINVAL);
        }
        let info = self.st.frames.get(mfn as usize).copied().unwrap_or_default();
        let PageType::Table(level) = info.page_type else {
            // Not a table (Xen's writable_page case): a plain write.
            self.mem.write(mfn, index, req.val);
            return Ok(());
        };
        if info.type_count == 0 {
            self.mem.write(mfn, index, req.val);
            return Ok(());
        }
        if level == Level::L4 && !is_guest_l4_slot(index) {
            return Err(-errno::EINVAL);
        }
        if req.val & flags::PRESENT != 0 {
            self.get_entry_ref(mfn, level, req.val)?;
        }
        let new = adjust_entry(level, req.val);
        let old = if preserve_ad {
            // Xen's `update_intpte` (xen/arch/x86/pv/mm.h): a cmpxchg loop
            // that ORs in the A/D bits of the entry as it is at the exchange,
            // so a bit the hardware sets while Xen works is not lost (present
            // or not: Xen does not look).
            let mut old = self.read(mfn, index);
            loop {
                match self.mem.compare_exchange(mfn, index, old, new | (old & (flags::ACCESSED | flags::DIRTY))) {
                    Ok(_) => break old,
                    Err(actual) => old = actual,
                }
            }
        } else {
            let old = self.read(mfn, index);
            self.mem.write(mfn, index, new);
            old
        };
        self.put_entry_ref(mfn, level, old);
        Ok(())
    }

    fn mmuext_op(&mut self, op: &MmuextOp) -> Result<(), i64> {
        let mfn = op.arg1;
        match op.cmd {
            mmuext::PIN_L1_TABLE | mmuext::PIN_L2_TABLE | mmuext::PIN_L3_TABLE | mmuext::PIN_L4_TABLE => {
                self.st.counters.pins += 1;
                let level = match op.cmd {
                    mmuext::PIN_L1_TABLE => Level::L1,
                    mmuext::PIN_L2_TABLE => Level::L2,
                    mmuext::PIN_L3_TABLE => Level::L3,
                    _ => Level::L4,
                };
                if !self.owns(mfn) || self.st.frames[mfn as usize].pinned {
                    return Err(-errno::EINVAL);
                }
                self.get_type(mfn, PageType::Table(level))?;
                self.st.frames[mfn as usize].pinned = true;
                Ok(())
            }
            mmuext::UNPIN_TABLE => {
                self.st.counters.unpins += 1;
                if !self.owns(mfn) || !self.st.frames[mfn as usize].pinned {
                    return Err(-errno::EINVAL);
                }
                self.st.frames[mfn as usize].pinned = false;
                self.put_type(mfn);
                Ok(())
            }
            mmuext::NEW_BASEPTR => {
                // The calling vCPU's `guest_table` only (smp-notes §4: batching
                // is per vCPU, NEW_BASEPTR changes only the caller's cr3).
                self.st.counters.new_baseptrs += 1;
                if mfn == 0 {
                    return Err(-errno::EINVAL);
                }
                self.get_type(mfn, PageType::Table(Level::L4))?;
                let old = core::mem::replace(&mut self.st.cur().kernel_base, mfn);
                if old != 0 {
                    self.put_type(old);
                }
                // new_guest_cr3 → write_ptbase → switch_cr3_cr4, which turns
                // cr4.PGE off and on: everything is flushed, global entries
                // too (xen/arch/x86/mm.c, flushtlb.c), even when old == new.
                self.full_flush();
                Ok(())
            }
            mmuext::NEW_USER_BASEPTR => {
                self.st.counters.new_user_baseptrs += 1;
                if mfn != 0 {
                    self.get_type(mfn, PageType::Table(Level::L4))?;
                }
                let old = core::mem::replace(&mut self.st.cur().user_base, mfn);
                // Xen flushes nothing here (mm.c, MMUEXT_NEW_USER_BASEPTR). If
                // user mode ran on the old root since the last flush, leaving
                // it rewrote cr3 (toggle_guest_pt: non-global entries gone),
                // but its global leaves — Xen sets G on guest user L1es,
                // adjust_guest_l1e in pv/mm.h — are still cached.
                if old != mfn {
                    if old != 0 && self.st.cur().user_cached {
                        self.mem.tlb_retire_root(old, true);
                    }
                    // The new root has not run user mode yet.
                    self.st.cur().user_cached = false;
                    self.sync_roots();
                }
                if old != 0 {
                    self.put_type(old);
                }
                Ok(())
            }
            mmuext::TLB_FLUSH_LOCAL => {
                self.st.counters.tlb_flushes += 1;
                // flush_tlb_local() = flush_area_local(FLUSH_TLB) → do_tlb_flush:
                // a cr4.PGE toggle, global entries included (flushtlb.c).
                self.full_flush();
                Ok(())
            }
            mmuext::INVLPG_LOCAL => {
                self.st.counters.invlpgs += 1;
                // paging_invlpg → invlpg: the address's leaf and, per the SDM,
                // every paging-structure-cache entry.
                let me = self.st.me();
                self.invlpg(me, op.arg1);
                Ok(())
            }
            TLB_FLUSH_MULTI => {
                // flush_tlb_mask(vcpumask_to_pcpumask(arg2)): Xen IPIs the
                // pCPUs those vCPUs are dirty on and waits, so on return their
                // TLBs are flushed; the targets do nothing (xen/arch/x86/mm.c,
                // smp-notes §4). Bits for vCPUs the domain lacks are ignored.
                self.st.counters.tlb_flush_multis += 1;
                for vcpu in self.mask_vcpus(op.arg2) {
                    self.full_flush_of(vcpu);
                }
                Ok(())
            }
            INVLPG_MULTI => {
                // flush_tlb_one_mask(mask, arg1): `invlpg arg1` on each target.
                self.st.counters.invlpg_multis += 1;
                let me = self.st.me();
                for vcpu in self.mask_vcpus(op.arg2) {
                    if vcpu != me {
                        self.st.counters.remote_flushes += 1;
                    }
                    self.invlpg(vcpu, op.arg1);
                }
                Ok(())
            }
            _ => Err(-errno::ENOSYS),
        }
    }

    /// `update_va_mapping` on the direct map: changes slot `pfn`'s L1e.
    ///
    /// The model knows only the direct map's L1 entries; any other address
    /// is -EINVAL (Xen: the L1 must exist in the current tables). The slot
    /// may name any frame of the domain, read-only or writable (calibrated:
    /// tests/calibration, `alias-other-frame`); references move as in
    /// [`Hv::set_slot`].
    fn update_va_mapping(&mut self, va: u64, val: u64, uvm_flags: u64) -> Result<(), i64> {
        let base = self.st.direct_map_base;
        // Bits above the flush type select the vCPUs to flush: `UVMF_ALL`
        // (4) is accepted; any other value is a guest pointer to a vCPU
        // mask, which the model does not read (Xen: -EFAULT if unreadable).
        // Calibrated: tests/calibration, case `uvm-all-vcpus`.
        if va < base || va & (PAGE_SIZE - 1) != 0 || !matches!(uvm_flags & !3, 0 | UVMF_ALL) {
            return Err(-errno::EINVAL);
        }
        let pfn = (va - base) / PAGE_SIZE;
        if self.st.p2m.pfn_to_mfn(pfn).is_none() {
            return Err(-errno::EINVAL);
        }
        let new = if val & flags::PRESENT != 0 {
            // mod_l1_entry → get_page_from_l1e, as for any L1e.
            let target = self.check_l1e(val)?;
            Some(Slot { mfn: target, writable: val & flags::WRITABLE != 0 })
        } else {
            None
        };
        self.set_slot(pfn, new)?;
        self.uvm_flush(va, uvm_flags)
    }

    /// The domain's vCPUs named in a vCPU bitmap word (the typed MULTI
    /// record carries the bitmap's value in `arg2`; Xen reads
    /// `ceil(max_vcpus/64)` words and ignores bits >= max_vcpus).
    fn mask_vcpus(&self, bitmap: u64) -> Vec<usize> {
        let n = self.st.vcpus.len();
        pvops::CpuMask(bitmap).iter().filter(|&v| v < n).collect()
    }

    /// `invlpg va` on `vcpu`: its TLB, and a stale direct-map translation.
    fn invlpg(&mut self, vcpu: usize, va: u64) {
        self.mem.tlb_invlpg_of(vcpu, va);
        let base = self.st.direct_map_base;
        if va >= base {
            self.st.direct.invlpg(vcpu, (va - base) / PAGE_SIZE);
        }
    }

    /// The flush `update_va_mapping` asks for, once the L1e changed
    /// (`__do_update_va_mapping` flushes only after the update, mm.c): on
    /// the calling vCPU (`UVMF_LOCAL`) or on all of them (`UVMF_ALL`,
    /// `flush_tlb_mask(d->dirty_cpumask)`).
    fn uvm_flush(&mut self, va: u64, uvm_flags: u64) -> Result<(), i64> {
        let targets: Vec<usize> =
            if uvm_flags & !3 == UVMF_ALL { (0..self.st.vcpus.len()).collect() } else { vec![self.st.me()] };
        let me = self.st.me();
        match uvm_flags & 3 {
            uvmf::INVLPG => {
                self.st.counters.invlpgs += 1;
                for vcpu in targets {
                    if vcpu != me {
                        self.st.counters.remote_flushes += 1;
                    }
                    self.invlpg(vcpu, va);
                }
            }
            uvmf::TLB_FLUSH => {
                self.st.counters.tlb_flushes += 1;
                for vcpu in targets {
                    self.full_flush_of(vcpu);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Hypercalls run on the calling vCPU; each is a preemption point.
impl HypercallTransport for XenModel {
    fn call(&self, call: &Call<'_>) -> Outcome {
        self.cpus().yield_point(Point::Hypercall);
        let mut st = self.lock();
        st.counters.hypercalls += 1;
        Hv::new(&mut st, &self.mem).trapped();
        if let Some(code) = XenState::injected(&mut st.inject_hypercall) {
            st.counters.failures += 1;
            return Outcome::failed(code, 0);
        }
        Hv::new(&mut st, &self.mem).run(call)
    }

    fn multicall(&self, calls: &[Call<'_>], outcomes: &mut [Outcome]) -> i64 {
        self.cpus().yield_point(Point::Hypercall);
        let mut st = self.lock();
        st.counters.hypercalls += 1;
        st.counters.multicalls += 1;
        Hv::new(&mut st, &self.mem).trapped();
        if calls.len() != outcomes.len() {
            return -errno::EINVAL;
        }
        if let Some(code) = XenState::injected(&mut st.inject_hypercall) {
            st.counters.failures += 1;
            return code;
        }
        // A part-way failure (`inject_multicall_failure`): entries before
        // `stop` run and write their outcomes; the rest are never touched.
        let stop = match st.inject_multicall.as_mut() {
            Some((inj, entry)) => {
                let entry = (*entry).min(calls.len().saturating_sub(1));
                let mut slot = Some(*inj);
                let fired = XenState::injected(&mut slot);
                match slot {
                    Some(left) => *inj = left,
                    None => st.inject_multicall = None,
                }
                fired.map(|code| (entry, code))
            }
            None => None,
        };
        let mut hv = Hv::new(&mut st, &self.mem);
        for (i, (call, outcome)) in calls.iter().zip(outcomes.iter_mut()).enumerate() {
            if let Some((entry, code)) = stop {
                if i == entry {
                    hv.st.counters.failures += 1;
                    return code;
                }
            }
            hv.st.counters.multicall_entries += 1;
            *outcome = hv.run(call);
        }
        0
    }
}
