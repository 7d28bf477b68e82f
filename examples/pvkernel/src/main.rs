//! pvkernel: one x86-64 ELF that boots natively (PVH), as a Xen PV64 dom0
//! and as a Xen PVH dom0.
//!
//! Entry paths (`entry.rs`) call [`pvh_rust_entry`] or [`xen_rust_entry`],
//! which bring up console, traps, memory, the direct map and `syscall`, build
//! the platform handles and hand them to the pvops registry ([`vm::boot`]),
//! then run [`workload::run`]: the conformance suite, the hypercall demo, the
//! user processes, the ELF user program ([`program`]) and the isolation
//! attacks ([`attacks`]), all on the libraries.

#![no_std]
#![no_main]
#![warn(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

pub mod attacks;
pub mod backends;
pub mod calibrate;
pub mod console;
pub mod directmap;
pub mod elf_load;
pub mod entry;
pub mod exit;
pub mod heap;
pub mod memory;
pub mod oracle;
pub mod platform;
pub mod probe_map;
pub mod process;
pub mod program;
pub mod pvh;
pub mod sabotage;
pub mod seams;
pub mod smp;
pub mod smp_cases;
pub mod sync;
pub mod tlb;
pub mod traps;
pub mod user;
pub mod vm;
pub mod workload;
pub mod x86;
pub mod xen;
pub mod xenpvh;
pub mod xensweep;

// Linked for their registry entries: the registry picks one at boot.
use pvops_native as _;
use pvops_xen64 as _;
use pvops_xen_pvh as _;

use alloc::boxed::Box;

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

use entry::KERNEL_VMA;
use exit::ExitCode;
use platform::PlatformServices;

const LOG_LEVEL: log::LevelFilter = log::LevelFilter::Info;

/// Native entry (from `pvh_start`, already in long mode, higher half).
#[no_mangle]
extern "C" fn pvh_rust_entry(start_info_paddr: u64) -> ! {
    // Xen PVH or bare PVH: decided before anything else, since the
    // hypercall MSR #GPs natively and COM1 is dead under Xen.
    let xen = xenpvh::find_xen(xenpvh::hw_cpuid);
    if let Some(leaves) = xen {
        platform::set(platform::XenPvh.into());
        // SAFETY: `leaves` came from this CPU's CPUID with Xen's signature.
        unsafe { xenpvh::init_hypercall_page(leaves) };
    } else {
        platform::set(platform::Native.into());
        console::init_serial();
    }
    console::init_logger(LOG_LEVEL);
    let entry = platform::get().entry_name();
    log::info!("pvkernel: entry {entry} (hvm_start_info at {:#x})", start_info_paddr);
    if let Some(leaves) = xen {
        let (major, minor) = xen::hypercall::version();
        log::info!("Xen {major}.{minor} (CPUID base {:#x}, hypercall MSR {:#x})", leaves.base, leaves.hypercall_msr);
    }

    // SAFETY: the value QEMU or Xen passed in %ebx; boot tables are live.
    let mut pvh = match unsafe { pvh::read(start_info_paddr, xen.is_some()) } {
        Ok(p) => p,
        Err(e) => panic!("bad PVH start info: {:?}", e),
    };
    if pvh.e820_len == 0 {
        match xenpvh::memory_map(&mut pvh.e820) {
            Ok(n) => pvh.e820_len = n,
            Err(e) => panic!("no memmap in the PVH start info, and {e}"),
        }
    }
    traps::mask_pic();
    traps::init_native();
    if let Err(e) = user::init() {
        panic!("syscall setup failed: {}", e);
    }

    let (ks, ke) = entry::kernel_image_range();
    let mut reserved = [(0u64, 0u64); 10];
    reserved[0] = (ks - KERNEL_VMA, ke - KERNEL_VMA);
    for (i, m) in pvh.modules[..pvh.nr_modules].iter().enumerate() {
        reserved[i + 1] = *m;
    }
    let mut nr_reserved = pvh.nr_modules + 1;
    if xen.is_some() {
        // Xen's PVH builder puts the modules, command lines, modlist and the
        // start info in RAM right after the image (`pvh_load_kernel`); keep
        // all of it, up to the end of the start info page.
        let end = (start_info_paddr + core::mem::size_of::<pvh::HvmStartInfo>() as u64 + 4095) & !4095;
        reserved[nr_reserved] = (ke - KERNEL_VMA, end.max(ke - KERNEL_VMA));
        nr_reserved += 1;
    }
    if let Err(e) = memory::init_native(&pvh.e820[..pvh.e820_len], &reserved[..nr_reserved]) {
        panic!("memory map: {:?}", e);
    }
    let source = if pvh.start_info.memmap_entries == 0 { "XENMEM_memory_map" } else { "PVH E820" };
    log::info!("memory map ({source}, {} entries):", pvh.e820_len);
    for e in &pvh.e820[..pvh.e820_len] {
        log::info!("  {:#012x}-{:#012x} {}", e.addr, e.addr + e.size, e.kind_name());
    }
    if let Err(e) = directmap::init_native() {
        panic!("direct map: {}", e);
    }
    log::info!("direct map ready at {:#x} (2 MiB pages)", directmap::DIRECT_MAP_BASE);
    init_heap();
    start_native_cpus(&pvh);

    let nr_frames = directmap::mapped_from_zero();
    // SAFETY: the direct map covers every frame below `nr_frames` (the
    // mapped range starting at pfn 0) and is never torn down.
    let mem: &'static pvops_native::DirectMap =
        Box::leak(Box::new(unsafe { pvops_native::DirectMap::new(directmap::DIRECT_MAP_BASE, nr_frames) }));
    static CPU: pvops_native::BareMetalCpu = pvops_native::BareMetalCpu;
    // The backend stores through a counting seam; its CPU seam may be sabotaged.
    let native = pvops_native::NativePlatform {
        mem: seams::count_backend_stores(mem),
        cpu: sabotage::native_cpu(&CPU),
        cpus: sabotage::backend_cpus(),
    };
    // Under Xen the registry gets the same handles in a XenPvhPlatform: the
    // xen-pvh probe re-reads CPUID, and native's probe refuses the type.
    let platform: &'static (dyn core::any::Any + Send + Sync) = if xen.is_some() {
        Box::leak(Box::new(pvops_xen_pvh::XenPvhPlatform { native, cpuid: xenpvh::hw_cpuid, hvm: &xenpvh::HVM }))
    } else {
        Box::leak(Box::new(native))
    };
    let boot_root = pvops::Pfn(((&raw const entry::boot_pml4) as u64 - KERNEL_VMA) >> 12);
    let handover = "hvm_start_info 0x336ec578";
    match vm::boot(pvops::EntryKind::Pvh, handover, platform, mem, nr_frames, boot_root) {
        Ok(v) => workload::run(v),
        Err(e) => panic!("memory management: {}", e),
    }
}

/// Finds the other CPUs (ACPI MADT) and starts them; they idle until the
/// SMP cases give them jobs. A machine without them runs on one CPU.
fn start_native_cpus(pvh: &pvh::PvhInfo) {
    match smp::native::init(pvh.start_info.rsdp_paddr, &pvh.e820[..pvh.e820_len]) {
        Ok(madt) => {
            log::info!(
                "smp: MADT lists {} enabled CPUs (APIC ids {:?}; {} disabled, {} beyond {}), LAPIC at {:#x}",
                madt.count,
                &madt.apic_ids[..madt.count],
                madt.disabled,
                madt.skipped,
                smp::NR_CPUS,
                madt.lapic_base
            );
            let n = smp::bring_up(smp::NR_CPUS);
            log::info!("smp: {} of {} CPUs online {:?}", n, madt.count, smp::online());
        }
        Err(e) => log::warn!("smp: cannot start other CPUs ({e:?}); running on one"),
    }
}

/// Xen PV entry (from `_start`, on our own stack).
#[no_mangle]
extern "C" fn xen_rust_entry(si: *const xen::start_info::StartInfo) -> ! {
    platform::set(platform::XenPv.into());
    console::init_logger(LOG_LEVEL);
    // SAFETY: `si` is the start_info pointer Xen passed in %rsi.
    let si = match unsafe { xen::init(si) } {
        Ok(si) => si,
        Err(e) => panic!("Xen start of day: {}", e),
    };
    let (major, minor) = xen::hypercall::version();
    log::info!("pvkernel: entry xen (Xen {}.{}, magic {:?})", major, minor, si.magic_str());
    if let Err(e) = xen::map_shared_info() {
        panic!("shared_info: {}", e);
    }
    if let Err(e) = traps::init_xen() {
        panic!("trap setup: {}", e);
    }
    if let Err(e) = user::init() {
        panic!("syscall callback: {}", e);
    }
    let Some(region) = xen::initial_region() else { panic!("no initial region") };
    let (ks, _) = entry::kernel_image_range();
    log::info!(
        "start_info: nr_pages {} ({} MiB), flags {:#x}, pt_base {:#x} ({} frames), mfn_list {:#x}, cmdline {:?}",
        si.nr_pages,
        si.nr_pages / 256,
        si.flags,
        si.pt_base,
        si.nr_pt_frames,
        si.mfn_list,
        si.cmdline()
    );
    log::info!(
        "initial region: pfn 0..{:#x}, boot tables {:#x}..{:#x}, padding {:#x}..{:#x}",
        region.end_pfn,
        region.pt_start_pfn,
        region.pt_end_pfn,
        region.boot_end_pfn,
        region.end_pfn
    );
    let root = region.pt_start_pfn;
    let last = xen::VIRT_BASE + ((region.end_pfn - 1) << 12);
    if xen::mmu::lookup(root, last).is_none() || xen::mmu::lookup(root, last + 4096).is_some() {
        panic!("initial region end {:#x} does not match the boot page tables", region.end_pfn);
    }
    if xen::mmu::lookup(root, xen::VIRT_BASE + 4096).is_none() {
        panic!("pfn 1 is not mapped in the initial region");
    }
    if let Err(e) = memory::init_xen(si.nr_pages, region.boot_end_pfn, region.end_pfn, (ks - KERNEL_VMA) >> 12) {
        panic!("memory map: {:?}", e);
    }
    if xen::mmu::lookup(root, 0).is_some() {
        if let Err(e) = xen::hypercall::update_va_mapping(0, 0, xen::hypercall::UVMF_INVLPG) {
            panic!("unmapping VA 0: {}", e);
        }
        log::info!("unmapped VA 0");
    } else {
        log::info!("VA 0 is not mapped (VIRT_BASE is high)");
    }
    if let Err(e) = directmap::init_xen() {
        panic!("direct map: {}", e);
    }
    log::info!("direct map ready at {:#x} (4 KiB pages, {} pfns)", directmap::DIRECT_MAP_BASE, si.nr_pages);
    // From here on a free frame's only kernel mapping is the direct map.
    match xen::retire_initial_aliases(&memory::free_frames()) {
        Ok(n) => log::info!("unmapped the initial-region alias of {} free frames", n),
        Err(e) => panic!("retiring initial-region aliases: {}", e),
    }
    init_heap();
    xen::boot::run()
}

fn init_heap() {
    match heap::init(heap::DEFAULT_HEAP_PAGES) {
        Ok(pfn) => log::info!("heap: {} KiB at pfn {:#x}", heap::DEFAULT_HEAP_PAGES * 4, pfn),
        Err(e) => panic!("heap: {:?}", e),
    }
}

static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    if PANICKING.swap(true, Ordering::SeqCst) {
        exit::exit(ExitCode::Fail);
    }
    match info.location() {
        Some(l) => console::print_fmt_unlocked(format_args!(
            "\nKERNEL PANIC at {}:{}:{}: {}\n",
            l.file(),
            l.line(),
            l.column(),
            info.message()
        )),
        None => console::print_fmt_unlocked(format_args!("\nKERNEL PANIC: {}\n", info.message())),
    }
    exit::exit(ExitCode::Fail)
}
