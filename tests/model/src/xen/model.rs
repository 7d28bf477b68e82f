//! `XenModel`: one PV64 domain's memory as Xen sees it — machine frames, the
//! p2m/m2p, page types and pins, the two base pointers — plus the counters
//! and records tests read.

use std::sync::{Mutex, MutexGuard};

use pvops::pte::flags;
use pvops::{Level, Mfn, Pfn, VirtAddr, PAGE_SIZE};
use pvops_xen64::abi::XEN_L4_FIRST;
use pvops_xen64::XenPlatform;

use super::direct_map::{DirectMap, Slot};
use super::p2m::P2mTable;
use super::types::{FrameInfo, Hv, PageType};
use crate::machine::Machine;
use crate::walk::{Access, Fault};

/// Where the model expects the guest's direct map of all its frames (Linux's
/// `PAGE_OFFSET` under Xen PV, L4 slot 273). `update_va_mapping` on
/// `direct_map_base + pfn * 4096` changes pfn's alias.
pub const DEFAULT_DIRECT_MAP_BASE: u64 = 0xffff_8880_0000_0000;

/// Traffic into the modelled hypervisor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenCounters {
    /// Traps into Xen: one per hypercall, a multicall counts once.
    pub hypercalls: u64,
    /// `multicall` hypercalls.
    pub multicalls: u64,
    /// Entries run inside multicalls.
    pub multicall_entries: u64,
    /// `mmu_update` calls (alone or as a multicall entry).
    pub mmu_update_calls: u64,
    /// `mmu_update` records.
    pub mmu_updates: u64,
    /// `mmuext_op` calls (alone or as a multicall entry).
    pub mmuext_op_calls: u64,
    /// `mmuext_op` records of every command.
    pub mmuext_ops: u64,
    /// `update_va_mapping` calls.
    pub update_va_mappings: u64,
    /// `MMUEXT_PIN_Ln_TABLE` records.
    pub pins: u64,
    /// `MMUEXT_UNPIN_TABLE` records.
    pub unpins: u64,
    /// `MMUEXT_NEW_BASEPTR` records.
    pub new_baseptrs: u64,
    /// `MMUEXT_NEW_USER_BASEPTR` records.
    pub new_user_baseptrs: u64,
    /// `MMUEXT_TLB_FLUSH_LOCAL` records.
    pub tlb_flushes: u64,
    /// `MMUEXT_INVLPG_LOCAL` records.
    pub invlpgs: u64,
    /// `MMUEXT_TLB_FLUSH_MULTI` records.
    pub tlb_flush_multis: u64,
    /// `MMUEXT_INVLPG_MULTI` records.
    pub invlpg_multis: u64,
    /// Flushes done on a vCPU other than the caller (a MULTI record, a
    /// `UVMF_ALL` or a type change's flush): one per (record, vCPU).
    pub remote_flushes: u64,
    /// Records (or calls) that returned an error.
    pub failures: u64,
}

/// A direct guest access the model refused: a store through a direct-map
/// slot that is read-only (its frame is, or was made ready to be, a page
/// table) or empty, or a read through an empty slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The pfn whose direct-map address was accessed.
    pub pfn: Pfn,
    /// The word index (`None` for a whole-frame zeroing or copy).
    pub index: Option<usize>,
    /// The value that was not written (0 for a read).
    pub value: u64,
    /// A store (false: a read).
    pub write: bool,
}

/// Why a modelled access failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XenFault {
    /// A page fault the guest would see.
    Page(Fault),
    /// The address is not canonical.
    NonCanonical,
    /// User mode with no user base pointer: Xen crashes the domain
    /// ("Guest switching to user mode with no user page tables").
    DomainCrashed,
    /// The walk ended on a frame the domain does not own.
    NotGuestFrame(Mfn),
}

/// A pending failure injection: the `after`-th next item fails with `code`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Injection {
    pub(crate) after: u64,
    pub(crate) code: i64,
}

/// What Xen keeps per vCPU for the PV MMU (`struct vcpu`'s `arch`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct VcpuMmu {
    /// `guest_table`: the kernel base pointer (mfn), holding a PGT_root
    /// (here: L4) type reference while non-zero.
    pub(crate) kernel_base: u64,
    /// `guest_table_user`: the user base pointer, holding one too.
    pub(crate) user_base: u64,
    /// The clock at this vCPU's last full flush (`tlbflush_time`).
    pub(crate) flush_time: u64,
    /// User mode may have run on the user root since the last full flush.
    pub(crate) user_cached: bool,
}

/// Everything behind the model's lock.
#[derive(Debug)]
pub(crate) struct XenState {
    pub(crate) p2m: P2mTable,
    pub(crate) frames: Vec<FrameInfo>,
    /// The guest's direct map: its L1 slots and writable counts.
    pub(crate) direct: DirectMap,
    /// Per vCPU: base pointers, flush time, user mode cached.
    pub(crate) vcpus: Vec<VcpuMmu>,
    pub(crate) counters: XenCounters,
    pub(crate) violations: Vec<Violation>,
    pub(crate) crash: Option<String>,
    pub(crate) inject_subop: Option<Injection>,
    pub(crate) inject_hypercall: Option<Injection>,
    /// A multicall failing part-way: the injection, and the entry it stops at.
    pub(crate) inject_multicall: Option<(Injection, usize)>,
    pub(crate) direct_map_base: u64,
    nr_mfns: u64,
    /// Per mfn: the type it had last (Xen keeps `PGT_type_mask` at count 0).
    pub(crate) last_type: Vec<PageType>,
    /// Per mfn: the TLB clock when its last type reference went.
    pub(crate) type_stamp: Vec<u64>,
    /// Xen's TLB clock (`tlbflush_clock`), ticked by every full flush.
    pub(crate) flush_clock: u64,
}

impl XenState {
    /// The calling vCPU ([`crate::vcpu::current`]).
    ///
    /// # Panics
    /// If the thread runs as a vCPU the domain does not have (test setup).
    pub(crate) fn me(&self) -> usize {
        let c = crate::vcpu::current();
        assert!(c < self.vcpus.len(), "running as vCPU {c} in a domain with {} vCPUs", self.vcpus.len());
        c
    }

    /// The calling vCPU's MMU state.
    pub(crate) fn cur(&mut self) -> &mut VcpuMmu {
        let me = self.me();
        &mut self.vcpus[me]
    }

    /// True when slot `pfn` maps pfn's own frame writable.
    pub(crate) fn alias_writable(&self, pfn: u64) -> bool {
        let own = self.p2m.pfn_to_mfn(pfn);
        self.direct.slot(pfn).is_some_and(|s| s.writable && Some(s.mfn) == own)
    }

    /// What Xen puts in its L4 slot `index` (256..272): frames outside the
    /// domain (and outside the modelled machine, so walks there fault).
    pub(crate) fn xen_l4_entry(&self, index: usize) -> u64 {
        let mfn = self.nr_mfns + index as u64;
        let f = if index == XEN_L4_FIRST {
            // The read-only M2P, readable by the guest.
            flags::PRESENT | flags::USER | flags::ACCESSED
        } else {
            flags::PRESENT | flags::WRITABLE | flags::ACCESSED | flags::DIRTY
        };
        (mfn << 12) | f
    }

    /// The roots whose translations `vcpu`'s TLB may hold: the kernel base
    /// pointer always (the guest kernel runs on it), the user base pointer
    /// once user mode may have run on it.
    pub(crate) fn tlb_roots(&self, vcpu: usize) -> Vec<u64> {
        let mut roots = Vec::with_capacity(2);
        let Some(v) = self.vcpus.get(vcpu) else { return roots };
        if v.kernel_base != 0 {
            roots.push(v.kernel_base);
        }
        if v.user_base != 0 && v.user_cached {
            roots.push(v.user_base);
        }
        roots
    }

    /// Consumes one step of an injection; true when this step must fail.
    pub(crate) fn injected(slot: &mut Option<Injection>) -> Option<i64> {
        let inj = slot.as_mut()?;
        if inj.after == 0 {
            let code = inj.code;
            *slot = None;
            return Some(code);
        }
        inj.after -= 1;
        None
    }
}

/// A strict model of Xen's 64-bit PV MMU for one domain.
///
/// Implements [`pvops_xen64::HypercallTransport`] (`hypercalls.rs`),
/// [`pvops_xen64::P2m`] and [`pvops::PhysMem`] (the guest's direct-map view,
/// `guest_mem.rs`).
pub struct XenModel {
    pub(crate) mem: Machine,
    pub(crate) state: Mutex<XenState>,
    reserved: Vec<Pfn>,
    pt_base: Pfn,
}

impl std::fmt::Debug for XenModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "XenModel({} pages)", self.nr_pages())
    }
}

/// Pfns the modelled domain builder uses: start_info, the boot stack, the boot L4.
const BUILDER_START_INFO: u64 = 0;
const BUILDER_STACK: u64 = 1;
const BUILDER_PT_BASE: u64 = 2;

impl XenModel {
    /// A domain of `nr_pages` frames as Xen's builder leaves it: a scrambled
    /// p2m from `seed`; an empty boot L4 (the guest fills its kernel half),
    /// read-only in the direct map, pinned and loaded as the kernel base
    /// pointer; no user base pointer; every other pfn's direct-map slot
    /// mapping its own frame writable. One vCPU.
    ///
    /// # Panics
    /// If `nr_pages < 4` (the builder needs its frames). Test setup only.
    pub fn boot(nr_pages: u64, seed: u64) -> Self {
        XenModel::boot_smp(nr_pages, seed, 1)
    }

    /// [`XenModel::boot`] with `vcpus` vCPUs (1..=64), every one up on the
    /// boot L4 as `VCPUOP_initialise` with `ctrlreg[3]` = `pt_base` leaves
    /// it (smp-notes §2.3): each holds its own type reference on it, no user
    /// base pointer, events unmasked.
    ///
    /// # Panics
    /// If `nr_pages < 4` or `vcpus` is not in 1..=64. Test setup only.
    pub fn boot_smp(nr_pages: u64, seed: u64, vcpus: usize) -> Self {
        assert!(nr_pages >= 4, "XenModel::boot needs at least 4 pages");
        // Spare machine frames beyond the domain's, so mfns are not a mere
        // permutation of the pfns.
        let nr_mfns = nr_pages + nr_pages / 4 + 17;
        let p2m = P2mTable::scrambled(nr_pages, nr_mfns, seed);
        let state = XenState {
            direct: DirectMap::identity(
                (0..nr_pages).filter_map(|p| p2m.pfn_to_mfn(p)),
                nr_mfns,
                BUILDER_PT_BASE,
                vcpus,
            ),
            p2m,
            frames: vec![FrameInfo::default(); nr_mfns as usize],
            // The CPU flushed when Xen loaded the boot tables: after every stamp.
            vcpus: vec![VcpuMmu { flush_time: 1, ..VcpuMmu::default() }; vcpus],
            counters: XenCounters::default(),
            violations: Vec::new(),
            crash: None,
            inject_subop: None,
            inject_hypercall: None,
            inject_multicall: None,
            direct_map_base: DEFAULT_DIRECT_MAP_BASE,
            nr_mfns,
            // Every frame starts mapped writable by the builder's direct map.
            last_type: vec![PageType::Writable; nr_mfns as usize],
            type_stamp: vec![0; nr_mfns as usize],
            flush_clock: 1,
        };
        let model = XenModel {
            mem: Machine::with_vcpus(nr_mfns, vcpus),
            state: Mutex::new(state),
            reserved: vec![Pfn(BUILDER_START_INFO), Pfn(BUILDER_STACK), Pfn(BUILDER_PT_BASE)],
            pt_base: Pfn(BUILDER_PT_BASE),
        };
        {
            let mut st = model.lock();
            let mfn = st.p2m.pfn_to_mfn(BUILDER_PT_BASE).unwrap_or(0);
            let mut hv = Hv::new(&mut st, &model.mem);
            let pinned = hv.get_type(mfn, PageType::Table(Level::L4));
            assert_eq!(pinned, Ok(()), "boot L4 must validate");
            for v in 0..vcpus {
                let loaded = hv.get_type(mfn, PageType::Table(Level::L4));
                assert_eq!(loaded, Ok(()), "boot L4 must validate");
                hv.st.vcpus[v].kernel_base = mfn;
                hv.sync_roots_of(v);
            }
            st.frames[mfn as usize].pinned = true;
        }
        model
    }

    /// [`XenModel::boot`], leaked: for platforms that need `'static` handles.
    pub fn leaked(nr_pages: u64, seed: u64) -> &'static XenModel {
        Box::leak(Box::new(XenModel::boot(nr_pages, seed)))
    }

    /// [`XenModel::boot_smp`], leaked.
    pub fn leaked_smp(nr_pages: u64, seed: u64, vcpus: usize) -> &'static XenModel {
        Box::leak(Box::new(XenModel::boot_smp(nr_pages, seed, vcpus)))
    }

    /// Moves the direct map the model expects `update_va_mapping` on.
    pub fn with_direct_map_base(self, base: u64) -> Self {
        self.lock().direct_map_base = base;
        self
    }

    /// The `XenPlatform` a guest on this model hands the registry.
    pub fn platform(&'static self) -> XenPlatform {
        XenPlatform {
            mem: self,
            transport: self,
            p2m: self,
            direct_map_base: self.direct_map_base(),
            boot_root: self.pt_base,
            cpus: self.mem.cpus(),
        }
    }

    /// The vCPUs: event (upcall) masks, event-channel cross-calls.
    pub fn cpus(&self) -> &crate::cpus::ModelCpus {
        self.mem.cpus()
    }

    /// Number of vCPUs.
    pub fn nr_vcpus(&self) -> usize {
        self.mem.nr_vcpus()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, XenState> {
        // Poisoned only if a test panicked mid-call; the data is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The boot L4's pfn (`start_info.pt_base`).
    pub fn pt_base(&self) -> Pfn {
        self.pt_base
    }

    /// Pfns the builder used; a guest allocator must skip them.
    pub fn reserved_pfns(&self) -> &[Pfn] {
        &self.reserved
    }

    /// The domain's size in frames.
    pub fn nr_pages(&self) -> u64 {
        self.lock().p2m.nr_pages()
    }

    /// Base of the direct map `update_va_mapping` acts on.
    pub fn direct_map_base(&self) -> u64 {
        self.lock().direct_map_base
    }

    /// The direct-map address of `pfn`.
    pub fn direct_map_va(&self, pfn: Pfn) -> u64 {
        self.direct_map_base() + pfn.0 * PAGE_SIZE
    }

    /// The machine memory, indexed by mfn.
    pub fn machine(&self) -> &Machine {
        &self.mem
    }

    /// The mfn of `pfn`.
    pub fn mfn_of(&self, pfn: Pfn) -> Option<Mfn> {
        self.lock().p2m.mfn(pfn)
    }

    /// The pfn of `mfn`.
    pub fn pfn_of(&self, mfn: Mfn) -> Option<Pfn> {
        self.lock().p2m.pfn(mfn)
    }

    /// Word `index` of machine frame `mfn`, as Xen stores it.
    pub fn read_machine(&self, mfn: Mfn, index: usize) -> u64 {
        self.mem.read(mfn.0, index).unwrap_or(0)
    }

    /// Word `index` of guest frame `pfn`, as stored (Xen's rewrites included).
    pub fn read_guest(&self, pfn: Pfn, index: usize) -> u64 {
        self.mfn_of(pfn).map_or(0, |m| self.read_machine(m, index))
    }

    /// Xen's bookkeeping for the frame behind `pfn`.
    pub fn frame_info(&self, pfn: Pfn) -> FrameInfo {
        let st = self.lock();
        st.p2m.pfn_to_mfn(pfn.0).and_then(|m| st.frames.get(m as usize).copied()).unwrap_or_default()
    }

    /// The type of the frame behind `pfn`.
    pub fn page_type(&self, pfn: Pfn) -> PageType {
        self.frame_info(pfn).page_type
    }

    /// True when the frame behind `pfn` is pinned.
    pub fn is_pinned(&self, pfn: Pfn) -> bool {
        self.frame_info(pfn).pinned
    }

    /// True when `pfn`'s direct-map slot maps `pfn`'s own frame writable.
    pub fn alias_writable(&self, pfn: Pfn) -> bool {
        self.lock().alias_writable(pfn.0)
    }

    /// What `pfn`'s direct-map slot maps now (`None`: nothing).
    pub fn direct_map_slot(&self, pfn: Pfn) -> Option<Slot> {
        self.lock().direct.slot(pfn.0)
    }

    /// Writable mappings of the frame behind `pfn` in Xen's sense: writable
    /// direct-map slots naming it (any pfn's) plus validated writable L1es.
    pub fn writable_mappings(&self, pfn: Pfn) -> u32 {
        let mut st = self.lock();
        let Some(mfn) = st.p2m.pfn_to_mfn(pfn.0) else { return 0 };
        Hv::new(&mut st, &self.mem).writable_refs(mfn)
    }

    /// The calling vCPU's kernel base pointer (mfn; 0 = none).
    pub fn kernel_base(&self) -> Mfn {
        let mut st = self.lock();
        Mfn(st.cur().kernel_base)
    }

    /// The calling vCPU's user base pointer (mfn; 0 = none).
    pub fn user_base(&self) -> Mfn {
        let mut st = self.lock();
        Mfn(st.cur().user_base)
    }

    /// `vcpu`'s kernel base pointer (`guest_table`; 0 = none).
    pub fn kernel_base_of(&self, vcpu: usize) -> Mfn {
        Mfn(self.lock().vcpus.get(vcpu).map_or(0, |v| v.kernel_base))
    }

    /// `vcpu`'s user base pointer (`guest_table_user`; 0 = none).
    pub fn user_base_of(&self, vcpu: usize) -> Mfn {
        Mfn(self.lock().vcpus.get(vcpu).map_or(0, |v| v.user_base))
    }

    /// Frames pinned now.
    pub fn pinned_count(&self) -> usize {
        self.lock().frames.iter().filter(|f| f.pinned).count()
    }

    /// Frames that are validated tables now.
    pub fn typed_count(&self) -> usize {
        self.lock().frames.iter().filter(|f| f.is_table()).count()
    }

    /// The counters so far.
    pub fn counters(&self) -> XenCounters {
        self.lock().counters
    }

    /// Zeroes the counters.
    pub fn reset_counters(&self) {
        self.lock().counters = XenCounters::default();
    }

    /// Direct stores the model refused, oldest first.
    pub fn violations(&self) -> Vec<Violation> {
        self.lock().violations.clone()
    }

    /// Forgets recorded violations.
    pub fn clear_violations(&self) {
        self.lock().violations.clear();
    }

    /// Why the domain crashed, if it did.
    pub fn crashed(&self) -> Option<String> {
        self.lock().crash.clone()
    }

    /// Makes the sub-operation (one `mmu_update` record, one `mmuext_op`
    /// record or one `update_va_mapping`) `after` steps from now fail with
    /// `code` without effect: `after == 0` fails the very next one.
    pub fn inject_subop_failure(&self, after: u64, code: i64) {
        self.lock().inject_subop = Some(Injection { after, code });
    }

    /// Makes the hypercall (trap) `after` calls from now fail with `code`
    /// before anything in it runs (a failing multicall runs no entry).
    pub fn inject_hypercall_failure(&self, after: u64, code: i64) {
        self.lock().inject_hypercall = Some(Injection { after, code });
    }

    /// Makes the multicall `after` multicalls from now stop at entry `entry`
    /// (the last one if it has fewer) and return `code`, as Xen's
    /// `do_multicall` (`xen/common/multicall.c`) does when it cannot copy an
    /// entry in (-EFAULT): the entries before it have run and their results
    /// are written; that entry and the later ones never run.
    pub fn inject_multicall_failure(&self, after: u64, entry: usize, code: i64) {
        self.lock().inject_multicall = Some((Injection { after, code }, entry));
    }

    /// Disarms any pending injection; true if one was still armed.
    pub fn clear_injections(&self) -> bool {
        let mut st = self.lock();
        let armed = st.inject_subop.is_some() || st.inject_hypercall.is_some() || st.inject_multicall.is_some();
        st.inject_subop = None;
        st.inject_hypercall = None;
        st.inject_multicall = None;
        armed
    }

    /// An access as the calling vCPU would do it for the guest, through its TLB.
    ///
    /// Kernel mode walks from the kernel base pointer, user mode from the user
    /// base pointer Xen has loaded. The PV64 kernel runs in ring 3, so both
    /// walks are user-privilege walks with the user bit required at every
    /// level, on the entries as Xen rewrote them: the guest kernel's own L1
    /// mappings carry U too (Xen adds U and `_PAGE_GUEST_KERNEL`, §6.4), and
    /// bit 52 protects nothing — what keeps user mode out of the kernel is
    /// only that the user root does not map it. In user mode only global
    /// stale leaves can still be cached (entering user mode rewrote cr3:
    /// `toggle_guest_pt`, xen/arch/x86/pv/domain.c). User mode with no user
    /// base pointer crashes the domain.
    pub fn access(&self, va: u64, user_mode: bool, write: bool) -> Result<Pfn, XenFault> {
        self.translate(va, user_mode, write, true)
    }

    /// [`XenModel::access`] as a question, not an event: "what would this
    /// access reach?" A user-mode probe with no user base pointer answers
    /// [`XenFault::DomainCrashed`] but records no crash. For access oracles
    /// that ask about user mode while the guest is in kernel mode.
    pub fn probe(&self, va: u64, user_mode: bool, write: bool) -> Result<Pfn, XenFault> {
        self.translate(va, user_mode, write, false)
    }

    fn translate(&self, va: u64, user_mode: bool, write: bool, record_crash: bool) -> Result<Pfn, XenFault> {
        let va = VirtAddr::try_new(va).map_err(|_| XenFault::NonCanonical)?;
        self.translate_access(va, Access { user: user_mode, write, execute: false }, record_crash)
    }

    /// [`XenModel::probe`] for any [`Access`] (an instruction fetch too):
    /// `access.user` picks the base pointer (user or kernel); the walk
    /// itself is ring 3 either way (PV64).
    pub(crate) fn translate_access(&self, va: VirtAddr, access: Access, record_crash: bool) -> Result<Pfn, XenFault> {
        let (user_mode, write) = (access.user, access.write);
        let root = {
            let mut st = self.lock();
            let me = st.me();
            let v = st.vcpus[me];
            if user_mode && v.user_base == 0 {
                if record_crash {
                    st.crash = Some(String::from("Guest switching to user mode with no user page tables"));
                }
                return Err(XenFault::DomainCrashed);
            }
            if user_mode {
                if record_crash && !v.user_cached {
                    // User mode really ran: its root's translations may be cached.
                    st.vcpus[me].user_cached = true;
                    Hv::new(&mut st, &self.mem).sync_roots();
                }
                v.user_base
            } else {
                v.kernel_base
            }
        };
        let access = Access { user: true, write, execute: access.execute };
        let mfn = self.mem.tlb_access(root, va, access, user_mode).map_err(XenFault::Page)?;
        self.pfn_of(Mfn(mfn)).ok_or(XenFault::NotGuestFrame(Mfn(mfn)))
    }

    /// TLB hazards recorded so far (frames as pfns where the domain owns
    /// them): the machine's TLB's, then those of direct-map translations.
    pub fn tlb_violations(&self) -> Vec<crate::tlb::TlbViolation> {
        let st = self.lock();
        self.mem
            .tlb_violations()
            .into_iter()
            .chain(st.direct.hazards.iter().copied())
            .map(|mut v| {
                if let Some(pfn) = st.p2m.mfn_to_pfn(v.frame) {
                    v.frame = pfn;
                }
                v
            })
            .collect()
    }
}
