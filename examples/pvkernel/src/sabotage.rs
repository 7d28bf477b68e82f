//! Deliberately broken kernels (test only): each `cargo` feature below wraps
//! one seam so that a specific MMU duty is skipped, and `cargo xtask test`
//! must see the boot fail (xtask's `BROKEN` list).
//!
//! * `no-tlb-flush`: natively a [`NativeCpu`] whose `invlpg`/full flush do
//!   nothing; on Xen the transport drops `MMUEXT_INVLPG_LOCAL` and
//!   `MMUEXT_TLB_FLUSH_LOCAL` records and clears the `UVMF_*` flush flags.
//! * `no-user-baseptr`: `MMUEXT_NEW_USER_BASEPTR` records are dropped (the
//!   previous user pgd stays loaded).
//! * `zero-user-baseptr`: every `NEW_USER_BASEPTR` names frame 0 (no user pgd).
//! * `user-pgd-maps-kernel`: `NEW_USER_BASEPTR` names the kernel pgd of the
//!   same batch's `NEW_BASEPTR` (user mode then sees the kernel half).
//! * `no-lazy-batching`: the backend's `lazy_mmu_enter`/`leave` do nothing,
//!   so every queued update goes out on its own.
//! * `no-remote-flush`: the kernel's `Cpus::call_on` runs nothing on the
//!   other CPUs and returns `Ok`, so natively a shootdown flushes only the
//!   calling CPU (the SMP stale-TLB case must see it).
//! * `no-multi-flush` (Xen): `MMUEXT_TLB_FLUSH_MULTI`/`INVLPG_MULTI` keep
//!   only the calling vCPU in their mask: remote flushes never happen.
//! * `no-event-masking`: the backends' `Cpus` seam never masks events, so
//!   a cross-call handler can run inside a backend call or an open batch
//!   (the SMP case `ipi_during_batches` must see it on Xen).
//! * `no-ap-startup`: natively the APs get INIT but never STARTUP, so they
//!   stay down; the kernel carries on with one CPU and says so (`cpus=1`).
//! * `no-hvm-flush` (Xen PVH): the xen-pvh backend's `HVMOP_flush_tlbs`
//!   returns success without calling Xen, so remote flushes never happen.
//! * `no-cow`: after each `fork` of the ELF program ([`crate::program`]),
//!   every no-execute user page of parent and child is made writable again
//!   behind kernel-glue's back: the two share their frames writable, so a
//!   child's write reaches its parent (the program's `fork_cow` check).
//!
//! With no feature on, nothing here is compiled in but the pass-through
//! helpers, and the seams are the real ones.

/// `no-remote-flush`: cross-calls silently do nothing (see the module docs).
pub const NO_REMOTE_FLUSH: bool = cfg!(feature = "no-remote-flush");

/// `no-hvm-flush`: `HVMOP_flush_tlbs` is skipped (see the module docs).
pub const NO_HVM_FLUSH: bool = cfg!(feature = "no-hvm-flush");

/// `no-ap-startup`: no STARTUP IPI is sent (see the module docs).
pub const NO_AP_STARTUP: bool = cfg!(feature = "no-ap-startup");

#[cfg(any(
    feature = "no-tlb-flush",
    feature = "no-user-baseptr",
    feature = "zero-user-baseptr",
    feature = "user-pgd-maps-kernel",
    feature = "no-multi-flush"
))]
mod transport {
    use alloc::vec::Vec;

    use pvops_xen64::abi::{mmuext, uvmf, Call, MmuextOp};
    use pvops_xen64::{HypercallTransport, Outcome};

    /// A transport that rewrites `mmuext_op` records (and `update_va_mapping`
    /// flags) before the real one traps.
    pub struct Sabotage(pub &'static dyn HypercallTransport);

    const DROP_FLUSHES: bool = cfg!(feature = "no-tlb-flush");
    const DROP_USER_BASE: bool = cfg!(feature = "no-user-baseptr");
    const ZERO_USER_BASE: bool = cfg!(feature = "zero-user-baseptr");
    const KERNEL_AS_USER_BASE: bool = cfg!(feature = "user-pgd-maps-kernel");
    const LOCAL_MULTI: bool = cfg!(feature = "no-multi-flush");

    /// What becomes of one record: kept (maybe changed) or dropped.
    fn rewrite_op(op: &MmuextOp, kernel_root: u64) -> Option<MmuextOp> {
        let flush = op.cmd == mmuext::INVLPG_LOCAL || op.cmd == mmuext::TLB_FLUSH_LOCAL;
        if DROP_FLUSHES && flush {
            return None;
        }
        if LOCAL_MULTI && (op.cmd == mmuext::TLB_FLUSH_MULTI || op.cmd == mmuext::INVLPG_MULTI) {
            // The typed record holds the vCPU bitmap value: keep this vCPU only.
            let mine = op.arg2 & pvops::CpuMask::one(crate::smp::this_cpu()).0;
            return (mine != 0).then_some(MmuextOp { arg2: mine, ..*op });
        }
        if op.cmd != mmuext::NEW_USER_BASEPTR {
            return Some(*op);
        }
        if DROP_USER_BASE {
            None
        } else if ZERO_USER_BASE {
            Some(MmuextOp { arg1: 0, ..*op })
        } else if KERNEL_AS_USER_BASE && kernel_root != 0 && op.arg1 != 0 {
            Some(MmuextOp { arg1: kernel_root, ..*op })
        } else {
            Some(*op)
        }
    }

    /// The records kept, and for each the index of the original record.
    fn rewrite_ops(ops: &[MmuextOp]) -> (Vec<MmuextOp>, Vec<usize>) {
        let mut kernel_root = 0;
        let mut out = Vec::new();
        let mut from = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            if op.cmd == mmuext::NEW_BASEPTR {
                kernel_root = op.arg1;
            }
            if let Some(o) = rewrite_op(op, kernel_root) {
                out.push(o);
                from.push(i);
            }
        }
        (out, from)
    }

    /// The outcome in terms of the original array: dropped records "succeed".
    fn map_back(o: Outcome, original: usize, from: &[usize]) -> Outcome {
        if o.status == 0 {
            return Outcome::ok(original as u32);
        }
        let done = from.get(o.done as usize).copied().unwrap_or(original);
        Outcome::failed(o.status, done as u32)
    }

    fn rewrite_flags(flags: u64) -> u64 {
        if DROP_FLUSHES {
            flags & !(uvmf::INVLPG | uvmf::TLB_FLUSH)
        } else {
            flags
        }
    }

    impl HypercallTransport for Sabotage {
        fn call(&self, call: &Call<'_>) -> Outcome {
            match *call {
                Call::MmuextOp(ops) => {
                    let (kept, from) = rewrite_ops(ops);
                    if kept.is_empty() {
                        return Outcome::ok(ops.len() as u32);
                    }
                    map_back(self.0.call(&Call::MmuextOp(&kept)), ops.len(), &from)
                }
                Call::UpdateVaMapping { va, val, flags } => {
                    self.0.call(&Call::UpdateVaMapping { va, val, flags: rewrite_flags(flags) })
                }
                Call::MmuUpdate(_) => self.0.call(call),
            }
        }

        fn multicall(&self, calls: &[Call<'_>], outcomes: &mut [Outcome]) -> i64 {
            if calls.len() != outcomes.len() {
                return -22;
            }
            let rewritten: Vec<(Vec<MmuextOp>, Vec<usize>)> = calls
                .iter()
                .map(|c| match c {
                    Call::MmuextOp(ops) => rewrite_ops(ops),
                    _ => (Vec::new(), Vec::new()),
                })
                .collect();
            let mut sent: Vec<Call<'_>> = Vec::new();
            let mut which: Vec<usize> = Vec::new();
            for (i, c) in calls.iter().enumerate() {
                let new = match *c {
                    Call::MmuextOp(ops) if rewritten[i].0.is_empty() => {
                        outcomes[i] = Outcome::ok(ops.len() as u32);
                        continue;
                    }
                    Call::MmuextOp(_) => Call::MmuextOp(&rewritten[i].0),
                    Call::UpdateVaMapping { va, val, flags } => {
                        Call::UpdateVaMapping { va, val, flags: rewrite_flags(flags) }
                    }
                    Call::MmuUpdate(r) => Call::MmuUpdate(r),
                };
                sent.push(new);
                which.push(i);
            }
            if sent.is_empty() {
                return 0;
            }
            let mut got = alloc::vec![Outcome::ok(0); sent.len()];
            let rc = self.0.multicall(&sent, &mut got);
            for (k, &i) in which.iter().enumerate() {
                outcomes[i] = match calls[i] {
                    Call::MmuextOp(ops) => map_back(got[k], ops.len(), &rewritten[i].1),
                    _ => got[k],
                };
            }
            rc
        }
    }
}

/// The transport the xen64 backend gets: the real one, or its sabotaged wrapper.
pub fn xen_transport(
    real: &'static dyn pvops_xen64::HypercallTransport,
) -> &'static dyn pvops_xen64::HypercallTransport {
    #[cfg(any(
        feature = "no-tlb-flush",
        feature = "no-user-baseptr",
        feature = "zero-user-baseptr",
        feature = "user-pgd-maps-kernel",
        feature = "no-multi-flush"
    ))]
    {
        log::warn!("sabotage: the Xen transport rewrites mmuext/update_va_mapping records");
        alloc::boxed::Box::leak(alloc::boxed::Box::new(transport::Sabotage(real)))
    }
    #[cfg(not(any(
        feature = "no-tlb-flush",
        feature = "no-user-baseptr",
        feature = "zero-user-baseptr",
        feature = "user-pgd-maps-kernel",
        feature = "no-multi-flush"
    )))]
    real
}

/// `no-tlb-flush` natively: the CPU seam forgets to invalidate.
#[cfg(feature = "no-tlb-flush")]
pub struct NoFlushCpu(pub &'static dyn pvops_native::NativeCpu);

#[cfg(feature = "no-tlb-flush")]
impl pvops_native::NativeCpu for NoFlushCpu {
    fn read_cr3(&self) -> u64 {
        self.0.read_cr3()
    }
    fn write_cr3(&self, value: u64) {
        self.0.write_cr3(value)
    }
    fn invlpg(&self, _va: pvops::VirtAddr) {}
    fn flush_all(&self) {}
}

/// The CPU seam the native backend gets: the real one, or one that never flushes.
pub fn native_cpu(real: &'static dyn pvops_native::NativeCpu) -> &'static dyn pvops_native::NativeCpu {
    #[cfg(feature = "no-tlb-flush")]
    {
        log::warn!("sabotage: invlpg and TLB flushes are no-ops");
        alloc::boxed::Box::leak(alloc::boxed::Box::new(NoFlushCpu(real)))
    }
    #[cfg(not(feature = "no-tlb-flush"))]
    real
}

/// The CPUs the backends get: the kernel's, or (`no-event-masking`) the
/// same with `mask_events`/`restore_events` doing nothing.
pub fn backend_cpus() -> &'static dyn pvops::Cpus {
    #[cfg(feature = "no-event-masking")]
    {
        log::warn!("sabotage: the backends' event masking does nothing");
        &NoMasking
    }
    #[cfg(not(feature = "no-event-masking"))]
    &crate::smp::CPUS
}

/// `no-event-masking`: the kernel's CPUs, except that masking is a no-op.
#[cfg(feature = "no-event-masking")]
struct NoMasking;

#[cfg(feature = "no-event-masking")]
impl pvops::Cpus for NoMasking {
    fn this_cpu(&self) -> usize {
        crate::smp::this_cpu()
    }
    fn online(&self) -> pvops::CpuMask {
        crate::smp::online()
    }
    fn mask_events(&self) -> bool {
        false
    }
    fn restore_events(&self, _was_masked: bool) {}
    fn call_on(
        &self,
        cpus: pvops::CpuMask,
        f: &(dyn Fn() -> Result<(), pvops::PvError> + Sync),
    ) -> Result<(), pvops::PvError> {
        pvops::Cpus::call_on(&crate::smp::CPUS, cpus, f)
    }
    fn relax(&self) {
        pvops::Cpus::relax(&crate::smp::CPUS)
    }
}

/// `no-lazy-batching`: every method forwards, but lazy-MMU sections do nothing.
#[cfg(feature = "no-lazy-batching")]
pub struct NoLazy(pub &'static crate::backends::KernelOps);

#[cfg(feature = "no-lazy-batching")]
mod no_lazy {
    use pvops::{Level, MmServices, OpStats, Pfn, Pte, PvError, PvMmuOps, VirtAddr};

    use super::NoLazy;

    impl PvMmuOps for NoLazy {
        fn name(&self) -> &'static str {
            self.0.name()
        }
        fn reserved_l4_slots(&self) -> core::ops::Range<usize> {
            self.0.reserved_l4_slots()
        }
        fn adopt_boot_root(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
            self.0.adopt_boot_root(mm, pgd)
        }
        fn frame_metadata_ready(&self, mm: &dyn MmServices) -> Result<(), PvError> {
            self.0.frame_metadata_ready(mm)
        }
        fn pgd_alloc(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
            self.0.pgd_alloc(mm, pgd)
        }
        fn pgd_free(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
            self.0.pgd_free(mm, pgd)
        }
        fn alloc_pt(&self, mm: &dyn MmServices, root: Pfn, level: Level, pfn: Pfn) -> Result<(), PvError> {
            self.0.alloc_pt(mm, root, level, pfn)
        }
        fn release_pt(&self, mm: &dyn MmServices, root: Pfn, level: Level, pfn: Pfn) -> Result<(), PvError> {
            self.0.release_pt(mm, root, level, pfn)
        }
        fn set_entry(
            &self,
            mm: &dyn MmServices,
            level: Level,
            table: Pfn,
            index: usize,
            pte: Pte,
        ) -> Result<(), PvError> {
            self.0.set_entry(mm, level, table, index, pte)
        }
        fn read_entry(&self, level: Level, table: Pfn, index: usize) -> Result<Pte, PvError> {
            self.0.read_entry(level, table, index)
        }
        fn write_cr3(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
            self.0.write_cr3(mm, pgd)
        }
        fn read_cr3(&self) -> Pfn {
            self.0.read_cr3()
        }
        fn activate_mm(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
            self.0.activate_mm(mm, pgd)
        }
        fn exit_mm(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
            self.0.exit_mm(mm, pgd)
        }
        fn flush_tlb_all(&self) -> Result<(), PvError> {
            self.0.flush_tlb_all()
        }
        fn flush_tlb_one(&self, va: VirtAddr) -> Result<(), PvError> {
            self.0.flush_tlb_one(va)
        }
        fn lazy_mmu_enter(&self) {}
        fn lazy_mmu_leave(&self) -> Result<(), PvError> {
            self.0.lazy_mmu_flush()
        }
        fn lazy_mmu_flush(&self) -> Result<(), PvError> {
            self.0.lazy_mmu_flush()
        }
        fn protect_start(&self, mm: &dyn MmServices, table: Pfn, index: usize) -> Result<Pte, PvError> {
            self.0.protect_start(mm, table, index)
        }
        fn protect_commit(
            &self,
            mm: &dyn MmServices,
            table: Pfn,
            index: usize,
            old: Pte,
            new: Pte,
        ) -> Result<(), PvError> {
            self.0.protect_commit(mm, table, index, old, new)
        }
        fn clear_accessed_dirty(
            &self,
            mm: &dyn MmServices,
            table: Pfn,
            index: usize,
            bits: u64,
        ) -> Result<Pte, PvError> {
            self.0.clear_accessed_dirty(mm, table, index, bits)
        }
        fn make_entry(&self, pte: Pte) -> Result<u64, PvError> {
            self.0.make_entry(pte)
        }
        fn entry_value(&self, raw: u64) -> Pte {
            self.0.entry_value(raw)
        }
        fn cpus(&self) -> &dyn pvops::Cpus {
            self.0.cpus()
        }
        fn flush_tlb_multi(&self, cpus: pvops::CpuMask, flush: pvops::Flush) -> Result<(), PvError> {
            self.0.flush_tlb_multi(cpus, flush)
        }
        fn stats(&self) -> OpStats {
            self.0.stats()
        }
    }
}

/// The backend handle the kernel uses: the registry's, or (with
/// `no-lazy-batching`) the same backend behind [`NoLazy`].
pub fn kernel_ops(ops: &'static crate::backends::KernelOps) -> &'static crate::backends::KernelOps {
    #[cfg(feature = "no-lazy-batching")]
    {
        log::warn!("sabotage: lazy-MMU sections are no-ops");
        let wrapped: &'static NoLazy = alloc::boxed::Box::leak(alloc::boxed::Box::new(NoLazy(ops)));
        alloc::boxed::Box::leak(alloc::boxed::Box::new(crate::backends::KernelOps::Other(wrapped)))
    }
    #[cfg(not(feature = "no-lazy-batching"))]
    ops
}

/// `no-cow` (see the module docs): every present no-execute user leaf of
/// `parent` and `child` is made writable in place, through the backend (on
/// Xen a pinned table is only writable by hypercall). A stale read-only TLB
/// entry only faults once more, and kernel-glue resolves that fault as
/// spurious, so no flush is needed for the damage to show.
#[cfg(feature = "no-cow")]
pub fn undo_cow(
    vm: &crate::vm::Vm,
    parent: &kernel_glue::AddressSpace,
    child: &kernel_glue::AddressSpace,
) -> Result<(), pvops::PvError> {
    use pvops::pte::flags;
    use pvops::{Level, Pte, PvMmuOps, ENTRIES_PER_TABLE, USER_PGD_SLOTS};
    let ops = vm.ops;
    ops.lazy_mmu_enter();
    let mut made = 0u64;
    let mut walk = || -> Result<(), pvops::PvError> {
        for root in [parent.pgd(), child.pgd()] {
            for i4 in 0..USER_PGD_SLOTS {
                let e4 = ops.read_entry(Level::L4, root, i4)?;
                if !e4.is_present() {
                    continue;
                }
                for i3 in 0..ENTRIES_PER_TABLE {
                    let e3 = ops.read_entry(Level::L3, e4.pfn(), i3)?;
                    if !e3.is_present() {
                        continue;
                    }
                    for i2 in 0..ENTRIES_PER_TABLE {
                        let e2 = ops.read_entry(Level::L2, e3.pfn(), i2)?;
                        if !e2.is_present() {
                            continue;
                        }
                        for i1 in 0..ENTRIES_PER_TABLE {
                            let e1 = ops.read_entry(Level::L1, e2.pfn(), i1)?;
                            if e1.is_present() && !e1.is_writable() && e1.0 & flags::NO_EXECUTE != 0 {
                                ops.set_entry(vm.frames, Level::L1, e2.pfn(), i1, Pte(e1.0 | flags::WRITABLE))?;
                                made += 1;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    };
    let walked = walk();
    let left = ops.lazy_mmu_leave();
    log::warn!("no-cow: {made} copy-on-write entries made writable again");
    walked.and(left)
}
