//! Xen PV64 guest support: start of day, p2m/M2P, shared_info.

pub mod boot;
pub mod hypercall;
pub mod mmu;
pub mod start_info;
pub mod time;
pub mod transport;
pub mod typed;
pub mod vcpu;

use core::sync::atomic::{AtomicU64, Ordering};

use crate::entry::KERNEL_VMA;
use start_info::StartInfo;

/// `VIRT_BASE` of our image: Xen's initial region maps pfn `p` at
/// `VIRT_BASE + p * 4096`.
pub const VIRT_BASE: u64 = KERNEL_VMA;

/// Start of Xen's read-only M2P table (`MACH2PHYS_VIRT_START`).
pub const M2P_BASE: u64 = 0xffff_8000_0000_0000;

static START_INFO: AtomicU64 = AtomicU64::new(0);
static MFN_LIST: AtomicU64 = AtomicU64::new(0);
static NR_PAGES: AtomicU64 = AtomicU64::new(0);
static REGION_END_PFN: AtomicU64 = AtomicU64::new(0);
static SHARED_INFO_MAPPED: AtomicU64 = AtomicU64::new(0);
static M2P_MAX_MFN: AtomicU64 = AtomicU64::new(0);
/// Initial-region aliases removed by [`retire_initial_aliases`]: pfns in
/// `[RETIRED_START, RETIRED_END)` and below `RETIRED_LOW_END` (but >= 1)
/// have no `VIRT_BASE` mapping any more.
static RETIRED: crate::sync::SpinLock<crate::memory::RangeList> =
    crate::sync::SpinLock::new(crate::memory::RangeList::new());

/// Layout of Xen's initial region, derived from `start_info`.
#[derive(Clone, Copy, Debug)]
pub struct InitialRegion {
    /// First pfn of the bootstrap page tables (`pt_base`).
    pub pt_start_pfn: u64,
    /// One past the last bootstrap page-table pfn.
    pub pt_end_pfn: u64,
    /// One past the boot stack (first padding pfn).
    pub boot_end_pfn: u64,
    /// End of the initial mapping (4 MiB aligned): pfns below are mapped at
    /// `VIRT_BASE + pfn * 4096`.
    pub end_pfn: u64,
}

/// Validates and records `start_info`. Must run before any other function
/// of this module.
///
/// # Safety
/// `si` must be the `start_info` pointer Xen passed in `%rsi`.
pub unsafe fn init(si: *const StartInfo) -> Result<&'static StartInfo, &'static str> {
    if si.is_null() {
        return Err("start_info pointer is null");
    }
    // SAFETY: Xen maps start_info in the initial region for ever.
    let si: &'static StartInfo = unsafe { &*si };
    if !si.is_valid() {
        return Err("bad start_info magic");
    }
    START_INFO.store(si as *const _ as u64, Ordering::Release);
    // Before anything asks which vCPU it runs on.
    crate::smp::xen::init_boot_cpu();
    MFN_LIST.store(si.mfn_list, Ordering::Release);
    NR_PAGES.store(si.nr_pages, Ordering::Release);
    let r = region_from(si);
    REGION_END_PFN.store(r.end_pfn, Ordering::Release);
    if let Ok((start, _end, max_mfn)) = hypercall::machphys_mapping() {
        if start == M2P_BASE {
            M2P_MAX_MFN.store(max_mfn, Ordering::Release);
        }
    }
    Ok(si)
}

fn region_from(si: &StartInfo) -> InitialRegion {
    // xen/arch/x86/pv/dom0_build.c: boot stack is the page after the page
    // tables; the region ends 4 MiB-aligned with >= 512 KiB padding.
    let pt_start = (si.pt_base - VIRT_BASE) >> 12;
    let pt_end = pt_start + si.nr_pt_frames;
    let boot_end = pt_end + 1;
    let vstack_end = boot_end << 12;
    let mut v_end = (vstack_end + (1 << 22) - 1) & !((1u64 << 22) - 1);
    if v_end - vstack_end < (512 << 10) {
        v_end += 1 << 22;
    }
    InitialRegion { pt_start_pfn: pt_start, pt_end_pfn: pt_end, boot_end_pfn: boot_end, end_pfn: v_end >> 12 }
}

/// The recorded `start_info`, if [`init`] ran.
pub fn start_info() -> Option<&'static StartInfo> {
    let p = START_INFO.load(Ordering::Acquire) as *const StartInfo;
    // SAFETY: set once by `init` from Xen's permanently mapped start_info.
    unsafe { p.as_ref() }
}

/// Initial-region layout, if [`init`] ran.
pub fn initial_region() -> Option<InitialRegion> {
    start_info().map(region_from)
}

/// Number of guest pseudo-physical pages.
pub fn nr_pages() -> u64 {
    NR_PAGES.load(Ordering::Relaxed)
}

/// p2m lookup: machine frame backing `pfn`.
pub fn pfn_to_mfn(pfn: u64) -> Option<u64> {
    let list = MFN_LIST.load(Ordering::Relaxed) as *const u64;
    if list.is_null() || pfn >= nr_pages() {
        return None;
    }
    // SAFETY: mfn_list holds nr_pages entries and stays mapped.
    Some(unsafe { list.add(pfn as usize).read_volatile() })
}

/// M2P lookup: pseudo-physical frame of machine frame `mfn` (Xen's
/// read-only M2P table, readable by the guest kernel). Garbage for MFNs the
/// domain does not own; see [`mfn_to_pfn_checked`].
pub fn mfn_to_pfn(mfn: u64) -> u64 {
    let max = M2P_MAX_MFN.load(Ordering::Relaxed);
    if max != 0 && mfn > max {
        return u64::MAX;
    }
    // SAFETY: Xen maps the M2P read-only in every guest kernel L4 (slot
    // 256) up to max_mfn (checked above when known).
    unsafe { ((M2P_BASE + mfn * 8) as *const u64).read_volatile() }
}

/// M2P lookup that also checks the p2m round trip (so foreign or invalid
/// MFNs give `None`).
pub fn mfn_to_pfn_checked(mfn: u64) -> Option<u64> {
    let pfn = mfn_to_pfn(mfn);
    (pfn_to_mfn(pfn)? == mfn).then_some(pfn)
}

/// Highest MFN covered by the M2P (0 if unknown).
pub fn m2p_max_mfn() -> u64 {
    M2P_MAX_MFN.load(Ordering::Relaxed)
}

/// Whether `pfn`'s initial-region alias was removed. The lock is held with
/// events masked: an IPI handler on this vCPU that walks tables must not
/// spin on it.
fn retired(pfn: u64) -> bool {
    let _masked = pvops::EventsMasked::new(&crate::smp::CPUS);
    RETIRED.lock().contains(pfn)
}

/// VA of `pfn` in Xen's initial region, if it is (still) mapped there.
pub fn initial_va(pfn: u64) -> Option<u64> {
    if pfn < REGION_END_PFN.load(Ordering::Relaxed) && !retired(pfn) {
        Some(VIRT_BASE + (pfn << 12))
    } else {
        None
    }
}

/// Removes the initial-region (`VIRT_BASE`) mappings of the frames in
/// `ranges` (clipped to the region), so that afterwards their only kernel
/// mapping is the direct map. Frames handed to page-table code must have a
/// single alias the MMU backend knows about.
pub fn retire_initial_aliases(ranges: &crate::memory::RangeList) -> Result<u64, hypercall::XenError> {
    let region_end = REGION_END_PFN.load(Ordering::Relaxed);
    let root = initial_region().map(|r| r.pt_start_pfn).ok_or(hypercall::XenError { op: "retire", rc: -22 })?;
    let mut batch = [hypercall::MmuUpdate::default(); 64];
    let mut n = 0;
    let mut count = 0;
    for r in ranges.as_slice() {
        let end = r.end.min(region_end);
        for pfn in r.start..end {
            let va = VIRT_BASE + (pfn << 12);
            let ptr = mmu::l1_entry_maddr(root, va).ok_or(hypercall::XenError { op: "retire: no L1", rc: -22 })?;
            batch[n] = hypercall::MmuUpdate { ptr, val: 0 };
            n += 1;
            count += 1;
            if n == batch.len() {
                hypercall::mmu_update(&batch[..n])?;
                n = 0;
            }
        }
        if r.start < end {
            let _masked = pvops::EventsMasked::new(&crate::smp::CPUS);
            RETIRED
                .lock()
                .push(crate::memory::FrameRange { start: r.start, end })
                .map_err(|_| hypercall::XenError { op: "retire: too many ranges", rc: -12 })?;
        }
    }
    if n > 0 {
        hypercall::mmu_update(&batch[..n])?;
    }
    hypercall::mmuext(hypercall::mmuext::TLB_FLUSH_LOCAL, 0)?;
    Ok(count)
}

#[repr(C, align(4096))]
struct PageBuf([u8; 4096]);

/// Page of `.bss` whose mapping is replaced by the shared_info frame
/// (referenced by name from the event-callback assembly in `traps`).
#[no_mangle]
static mut SHARED_INFO_PAGE: PageBuf = PageBuf([0; 4096]);

/// Maps shared_info over a `.bss` page (`update_va_mapping`).
pub fn map_shared_info() -> Result<(), hypercall::XenError> {
    let si = start_info().ok_or(hypercall::XenError { op: "map_shared_info (no start_info)", rc: -22 })?;
    let va = (&raw const SHARED_INFO_PAGE) as u64;
    let pte = (si.shared_info & !0xfff) | mmu::PTE_P | mmu::PTE_RW | mmu::PTE_A | mmu::PTE_D;
    hypercall::update_va_mapping(va, pte, hypercall::UVMF_INVLPG)?;
    SHARED_INFO_MAPPED.store(va, Ordering::Release);
    Ok(())
}

/// VA of the mapped shared_info page (0 if not mapped yet).
pub fn shared_info_va() -> u64 {
    SHARED_INFO_MAPPED.load(Ordering::Acquire)
}

/// `vcpu_info` slots in shared_info (`XEN_LEGACY_MAX_VCPUS`): vCPUs past
/// them would need `VCPUOP_register_vcpu_info`, which this kernel does not do.
pub const LEGACY_MAX_VCPUS: usize = 32;

/// Offset of `evtchn_pending[64]` (u64 words) in shared_info.
pub const SHINFO_EVTCHN_PENDING: u64 = 2048;
/// Offset of `evtchn_mask[64]` (u64 words) in shared_info.
pub const SHINFO_EVTCHN_MASK: u64 = 2560;

/// VA of `shared_info.vcpu_info[vcpu]` (64 bytes: `evtchn_upcall_pending`
/// u8 @0, `evtchn_upcall_mask` u8 @1, `evtchn_pending_sel` u64 @8,
/// `arch.cr2` @16, `time` @32), if shared_info is mapped.
pub fn vcpu_info_va(vcpu: usize) -> Option<u64> {
    let va = shared_info_va();
    (va != 0 && vcpu < LEGACY_MAX_VCPUS).then_some(va + (vcpu as u64) * 64)
}

/// The running vCPU's virtual CR2 (`vcpu_info[me].arch.cr2`: Xen writes the
/// faulting address there for each vCPU), 0 if shared_info is not mapped
/// yet.
pub fn current_cr2() -> u64 {
    let Some(vi) = vcpu_info_va(crate::smp::xen::this_cpu()) else { return 0 };
    // SAFETY: shared_info is mapped; vcpu_info[me].arch.cr2 is at +16.
    unsafe { ((vi + 16) as *const u64).read_volatile() }
}
