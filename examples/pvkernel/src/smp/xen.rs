//! Xen PV SMP: starting the other vCPUs (`VCPUOP_initialise` +
//! `VCPUOP_up`), which vCPU runs (a per-CPU block at the kernel gs base),
//! event-channel IPIs (`EVTCHNOP_bind_ipi` / `EVTCHNOP_send`), the event
//! upcall's port scan, and event masking (`vcpu_info.evtchn_upcall_mask`,
//! the PV "IF").
//!
//! Bring-up follows Linux `arch/x86/xen/smp_pv.c` (`xen_pv_cpu_up`,
//! `cpu_initialize_context`): the new vCPU starts in kernel mode on the
//! kernel's init root (`ctrlreg[3]`, like `swapper_pg_dir`), with its own
//! stacks, trap table (indexed by vector), callbacks and gs base, events
//! masked; it unmasks them itself once it runs. Facts and measured costs:
//! ../shared/reference/smp-notes.md §2, §3.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use alloc::boxed::Box;
use core::arch::{asm, global_asm};
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

use pvops::CpuMask;

use crate::traps;
use crate::xen::{self, hypercall, time, vcpu};

/// vCPUs this kernel can run: one `vcpu_info` each in shared_info.
pub const MAX_VCPUS: usize = xen::LEGACY_MAX_VCPUS;
/// An AP's kernel stack.
const AP_STACK_SIZE: usize = 64 * 1024;
/// An AP's stack for entries from user mode (`kernel_sp`).
const AP_TRAP_STACK_SIZE: usize = 16 * 1024;
/// How long `VCPUOP_up` may take to show a running vCPU (measured: 6–31 ms
/// under TCG; a loaded host can stretch that a lot).
const UP_TIMEOUT_NS: u64 = 2_000_000_000;
/// How long a remote probe read may take (the self-check's cross-call).
const PROBE_TIMEOUT_NS: u64 = 1_000_000_000;
/// Ports the upcall can attribute to a vCPU (IPI ports are small numbers).
const MAX_PORTS: usize = 1024;

/// The per-CPU block the kernel gs base points at (`%gs:0` = CPU id): how a
/// vCPU knows who it is without a hypercall, as Linux's `per_cpu_offset`.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub struct PerCpu {
    /// This CPU's number (= its Xen vCPU id).
    pub id: u64,
}

const fn percpu_table() -> [PerCpu; MAX_VCPUS] {
    let mut t = [PerCpu { id: 0 }; MAX_VCPUS];
    let mut i = 0;
    while i < MAX_VCPUS {
        t[i].id = i as u64;
        i += 1;
    }
    t
}

static PERCPU: [PerCpu; MAX_VCPUS] = percpu_table();
/// Set once vCPU 0's gs base names `PERCPU[0]`; before that every caller is
/// vCPU 0.
static GS_READY: AtomicBool = AtomicBool::new(false);
static BROUGHT_UP: AtomicBool = AtomicBool::new(false);

/// Each vCPU's IPI port (0 = none; Xen never hands out port 0).
static IPI_PORT: [AtomicU32; MAX_VCPUS] = [const { AtomicU32::new(0) }; MAX_VCPUS];
/// Owner of each port + 1 (0 = not ours): the 2-level `evtchn_pending`
/// words are shared by all vCPUs, so a vCPU only takes its own bits.
static PORT_OWNER: [AtomicU8; MAX_PORTS] = [const { AtomicU8::new(0) }; MAX_PORTS];
/// IPIs each vCPU has taken.
static IPIS_TAKEN: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
/// `EVTCHNOP_send` failures (no logging on paths an upcall may take).
static SEND_FAILURES: AtomicU64 = AtomicU64::new(0);

const STARTING: u8 = 0;
const ALIVE: u8 = 1;
const GAVE_UP: u8 = 2;
/// Bring-up handshake: the AP moves STARTING -> ALIVE, vCPU 0 STARTING ->
/// GAVE_UP after its timeout; whoever loses the exchange yields.
static START_STATE: [AtomicU8; MAX_VCPUS] = [const { AtomicU8::new(STARTING) }; MAX_VCPUS];

/// Why a vCPU could not be started.
#[derive(Clone, Copy, Debug)]
pub enum StartError {
    /// A hypercall failed.
    Xen(hypercall::XenError),
    /// No memory for its stacks or context.
    NoMemory,
    /// Its port number is beyond what the upcall can attribute.
    PortTooLarge(u32),
    /// `VCPUOP_up` succeeded but the vCPU never reported in.
    Timeout {
        /// How long vCPU 0 waited.
        waited_ns: u64,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Xen(e) => write!(f, "{e}"),
            StartError::NoMemory => write!(f, "no memory for its stacks"),
            StartError::PortTooLarge(p) => write!(f, "IPI port {p} beyond {MAX_PORTS}"),
            StartError::Timeout { waited_ns } => write!(f, "not running after {} ms", waited_ns / 1_000_000),
        }
    }
}

impl From<hypercall::XenError> for StartError {
    fn from(e: hypercall::XenError) -> Self {
        StartError::Xen(e)
    }
}

extern "C" {
    fn xen_ap_entry();
}

global_asm!(
    r#"
    .section .text.smp_xen, "ax"
    /* A new vCPU starts here in kernel mode: rsp = its stack top, rdi = its
       CPU number, events masked (vcpu_guest_context, set by bring_up). */
    .globl xen_ap_entry
xen_ap_entry:
    and $-16, %rsp
    xor %ebp, %ebp
    call xen_ap_main
    ud2
"#,
    options(att_syntax)
);

/// Points vCPU 0's kernel gs base at its per-CPU block
/// (`set_segment_base(SEGBASE_GS_KERNEL)`); until it has, [`this_cpu`] says
/// 0. Runs first thing in the Xen start of day.
pub fn init_boot_cpu() {
    match hypercall::set_segment_base(hypercall::SEGBASE_GS_KERNEL, (&raw const PERCPU[0]) as u64) {
        Ok(()) => GS_READY.store(true, Ordering::Release),
        Err(e) => log::error!("xen smp: no per-CPU gs base: {e}; one vCPU only"),
    }
}

/// The CPU running this code: `%gs:0` (its per-CPU block's id).
pub fn this_cpu() -> usize {
    if !GS_READY.load(Ordering::Acquire) {
        return 0;
    }
    let id: u64;
    // SAFETY: every vCPU's kernel gs base points at its `PerCpu` block
    // (vCPU 0: `init_boot_cpu`, before GS_READY; APs: `gs_base_kernel`), whose
    // first word is the id; the kernel never changes gs.
    unsafe { asm!("mov %gs:0, {}", out(reg) id, options(att_syntax, nostack, readonly, preserves_flags)) };
    id as usize
}

/// This vCPU's `evtchn_upcall_pending` (u8 @0) and `evtchn_upcall_mask`
/// (u8 @1), if shared_info is mapped.
fn upcall_flags(cpu: usize) -> Option<(&'static AtomicU8, &'static AtomicU8)> {
    let vi = xen::vcpu_info_va(cpu)?;
    // SAFETY: `vi` is vcpu_info[cpu] in shared_info, mapped for ever; Xen
    // and this vCPU access the bytes atomically.
    Some(unsafe { (&*(vi as *const AtomicU8), &*((vi + 1) as *const AtomicU8)) })
}

/// Masks event delivery on this vCPU; returns whether it was masked.
pub fn mask_events() -> bool {
    match upcall_flags(this_cpu()) {
        Some((_, mask)) => mask.swap(1, Ordering::SeqCst) != 0,
        None => true,
    }
}

/// Unmasks again unless `was_masked`; an event that arrived while masked is
/// delivered at once (Linux `xen_irq_enable`: clear the mask, then if
/// `upcall_pending`, force the callback with a hypercall).
pub fn restore_events(was_masked: bool) {
    if was_masked {
        return;
    }
    if let Some((pending, mask)) = upcall_flags(this_cpu()) {
        mask.store(0, Ordering::SeqCst);
        if pending.load(Ordering::SeqCst) != 0 {
            hypercall::force_event_delivery();
        }
    }
}

/// Sleeps until an event arrives (`SCHEDOP_block`, which unmasks events);
/// it has been handled when this returns.
pub fn idle_wait() {
    hypercall::sched_block();
}

/// Interrupts `cpu`: an event on its IPI port, whose upcall calls
/// `super::handle_ipi`. A CPU without a port, or a failed send, is counted
/// (see [`send_failures`]); the caller's bounded wait reports the CPU.
pub fn send_ipi(cpu: usize) {
    let port = ipi_port(cpu);
    if port == 0 || hypercall::evtchn_send(port).is_err() {
        SEND_FAILURES.fetch_add(1, Ordering::Relaxed);
    }
}

/// `cpu`'s IPI port (0: none).
pub fn ipi_port(cpu: usize) -> u32 {
    IPI_PORT.get(cpu).map_or(0, |p| p.load(Ordering::Relaxed))
}

/// IPIs that could not be sent.
pub fn send_failures() -> u64 {
    SEND_FAILURES.load(Ordering::Relaxed)
}

/// IPIs `cpu` has taken.
pub fn ipis_taken(cpu: usize) -> u64 {
    IPIS_TAKEN.get(cpu).map_or(0, |c| c.load(Ordering::Relaxed))
}

/// The event upcall (from `xen_event_callback`, events masked): takes this
/// vCPU's pending, unmasked ports from the 2-level bitmaps
/// (xen/include/public/xen.h: `evtchn_pending_sel` names the words of
/// `evtchn_pending` with news for this vCPU) and dispatches them.
#[no_mangle]
extern "C" fn xen_evtchn_upcall() {
    let me = this_cpu();
    let (Some(vi), Some((pending_flag, _))) = (xen::vcpu_info_va(me), upcall_flags(me)) else { return };
    let si = xen::shared_info_va();
    // SAFETY: vcpu_info[me].evtchn_pending_sel (u64 @8) in mapped shared_info.
    let sel = unsafe { &*((vi + 8) as *const AtomicU64) };
    loop {
        pending_flag.store(0, Ordering::SeqCst);
        let words = sel.swap(0, Ordering::SeqCst);
        if words == 0 {
            break;
        }
        for w in CpuMask(words).iter() {
            let off = (w as u64) * 8;
            // SAFETY: word w < 64 of evtchn_pending / evtchn_mask in mapped
            // shared_info; both are updated atomically by Xen and vCPUs.
            let (pend, mask) = unsafe {
                (
                    &*((si + xen::SHINFO_EVTCHN_PENDING + off) as *const AtomicU64),
                    &*((si + xen::SHINFO_EVTCHN_MASK + off) as *const AtomicU64),
                )
            };
            let ready = pend.load(Ordering::SeqCst) & !mask.load(Ordering::SeqCst);
            for b in CpuMask(ready).iter() {
                let port = w * 64 + b;
                if PORT_OWNER.get(port).map_or(0, |o| o.load(Ordering::Acquire)) as usize != me + 1 {
                    continue; // another vCPU's port in a shared word
                }
                pend.fetch_and(!(1u64 << b), Ordering::SeqCst);
                dispatch(me, port as u32);
            }
        }
    }
}

fn dispatch(me: usize, port: u32) {
    if IPI_PORT[me].load(Ordering::Acquire) == port {
        IPIS_TAKEN[me].fetch_add(1, Ordering::Relaxed);
        probe::serve(me);
        super::handle_ipi();
    }
}

/// Binds `cpu`'s IPI port and records who owns it.
fn bind_ipi_port(cpu: usize) -> Result<u32, StartError> {
    let port = hypercall::evtchn_bind_ipi(cpu as u32)?;
    if port as usize >= MAX_PORTS {
        let _ = hypercall::evtchn_close(port);
        return Err(StartError::PortTooLarge(port));
    }
    PORT_OWNER[port as usize].store(cpu as u8 + 1, Ordering::Release);
    IPI_PORT[cpu].store(port, Ordering::Release);
    Ok(port)
}

fn unbind_ipi_port(cpu: usize) {
    let port = IPI_PORT[cpu].swap(0, Ordering::AcqRel);
    if port != 0 {
        PORT_OWNER[port as usize].store(0, Ordering::Release);
        let _ = hypercall::evtchn_close(port);
    }
}

/// A zeroed, page-aligned stack of `size` bytes that lives for ever; its top.
fn alloc_stack(size: usize) -> Result<u64, StartError> {
    let layout = Layout::from_size_align(size, 4096).map_err(|_| StartError::NoMemory)?;
    // SAFETY: `layout` has a non-zero size.
    let p = unsafe { alloc_zeroed(layout) };
    if p.is_null() {
        return Err(StartError::NoMemory);
    }
    Ok(p as u64 + size as u64)
}

fn free_stack(top: u64, size: usize) {
    if let Ok(layout) = Layout::from_size_align(size, 4096) {
        // SAFETY: `top - size` came from `alloc_stack(size)` with this layout
        // and no vCPU runs on it (its vCPU never started).
        unsafe { dealloc((top - size as u64) as *mut u8, layout) };
    }
}

/// Machine address of the kernel's init root (the boot L4 `pt_base`, which
/// `vm::boot` adopts as init_mm): where an AP starts, like Linux's
/// `swapper_pg_dir`, so it never holds a root that could be freed.
fn init_root_maddr() -> Result<u64, StartError> {
    let no_root = StartError::Xen(hypercall::XenError { op: "init root", rc: -22 });
    let r = xen::initial_region().ok_or(no_root)?;
    Ok(xen::pfn_to_mfn(r.pt_start_pfn).ok_or(no_root)? << 12)
}

/// The initial state of vCPU `cpu` (see the module doc).
fn context_for(cpu: usize, stack_top: u64, trap_stack_top: u64) -> Result<Box<vcpu::VcpuGuestContext>, StartError> {
    let mut c = Box::new(vcpu::VcpuGuestContext::zeroed());
    // Not VGCF_online: that marks the vCPU up without waking it, and
    // VCPUOP_up then has nothing to do (smp-notes §2.4).
    c.flags = vcpu::VGCF_IN_KERNEL | vcpu::VGCF_FAILSAFE_DISABLES_EVENTS | vcpu::VGCF_SYSCALL_DISABLES_EVENTS;
    let r = &mut c.user_regs;
    r.rip = xen_ap_entry as *const () as u64;
    r.rsp = stack_top;
    r.rdi = cpu as u64;
    r.cs = hypercall::FLAT_CS64;
    r.ss = hypercall::FLAT_SS64;
    r.rflags = 0x2; // Xen forces IF; IOPL 0 (exit::exit asks for I/O itself)
    for v in 0..=255u8 {
        if let Some(t) = traps::xen_trap_info(v) {
            c.trap_ctxt[v as usize] = t;
        }
    }
    c.kernel_ss = hypercall::FLAT_SS64 as u64;
    c.kernel_sp = trap_stack_top;
    c.ctrlreg[3] = init_root_maddr()?;
    c.event_callback_eip = traps::xen_event_callback_addr();
    c.failsafe_callback_eip = traps::xen_failsafe_callback_addr();
    c.syscall_callback_eip = crate::user::xen_syscall_entry_addr();
    c.gs_base_kernel = (&raw const PERCPU[cpu]) as u64;
    Ok(c)
}

/// Starts vCPU `cpu` and waits until it runs; returns (initialise -> up ns,
/// initialise -> running ns).
fn start_vcpu(cpu: usize) -> Result<(u64, u64), StartError> {
    bind_ipi_port(cpu)?;
    let started = start_with_port(cpu);
    if started.is_err() && !super::online().contains(cpu) {
        unbind_ipi_port(cpu);
    }
    started
}

fn start_with_port(cpu: usize) -> Result<(u64, u64), StartError> {
    // Linux sets it too; Xen's builder already did. The AP unmasks itself.
    if let Some((_, mask)) = upcall_flags(cpu) {
        mask.store(1, Ordering::SeqCst);
    }
    let stack = alloc_stack(AP_STACK_SIZE)?;
    let trap_stack = match alloc_stack(AP_TRAP_STACK_SIZE) {
        Ok(t) => t,
        Err(e) => {
            free_stack(stack, AP_STACK_SIZE);
            return Err(e);
        }
    };
    let ctx = match context_for(cpu, stack, trap_stack) {
        Ok(c) => c,
        Err(e) => {
            free_stack(stack, AP_STACK_SIZE);
            free_stack(trap_stack, AP_TRAP_STACK_SIZE);
            return Err(e);
        }
    };
    let t0 = time::now_ns();
    // SAFETY: `ctx` is a complete vcpu_guest_context, live for the call.
    let rc = unsafe { hypercall::vcpu_op(hypercall::vcpuop::INITIALISE, cpu as u32, (&raw const *ctx) as u64) };
    if rc < 0 {
        free_stack(stack, AP_STACK_SIZE);
        free_stack(trap_stack, AP_TRAP_STACK_SIZE);
        return Err(hypercall::XenError { op: "vcpu_op(initialise)", rc }.into());
    }
    // From here the stacks belong to the vCPU, whatever happens.
    // SAFETY: VCPUOP_up takes no argument.
    let rc = unsafe { hypercall::vcpu_op(hypercall::vcpuop::UP, cpu as u32, 0) };
    let t_up = time::now_ns();
    if rc < 0 {
        return Err(hypercall::XenError { op: "vcpu_op(up)", rc }.into());
    }
    let mut deadline = t0 + UP_TIMEOUT_NS;
    let mut extended = false;
    loop {
        if super::online().contains(cpu) {
            return Ok((t_up - t0, time::now_ns() - t0));
        }
        let now = time::now_ns();
        if now > deadline {
            let gave_up = START_STATE[cpu].compare_exchange(STARTING, GAVE_UP, Ordering::SeqCst, Ordering::SeqCst);
            if gave_up.is_ok() || extended {
                return Err(StartError::Timeout { waited_ns: now - t0 });
            }
            // It is running and about to say so: give it one more period.
            extended = true;
            deadline = now + UP_TIMEOUT_NS;
        }
        // Linux `xen_pv_cpu_up` yields too: with fewer pCPUs than vCPUs the
        // new vCPU needs this one's time slice.
        hypercall::sched_yield();
    }
}

/// Where a started vCPU goes (from `xen_ap_entry`): check its identity,
/// claim the handshake, unmask events, then `smp::ap_main` (online, idle,
/// jobs).
#[no_mangle]
extern "C" fn xen_ap_main(cpu: u64) -> ! {
    let cpu = cpu as usize;
    let me = this_cpu();
    let claimed = START_STATE
        .get(cpu)
        .is_some_and(|s| s.compare_exchange(STARTING, ALIVE, Ordering::SeqCst, Ordering::SeqCst).is_ok());
    if me != cpu || !claimed {
        // vCPU 0 gave up on it (or its gs base is wrong): stay out of the
        // way without burning a pCPU. VCPUOP_down on itself is synchronous
        // (Linux `xen_pv_play_dead`); it should not return.
        // SAFETY: VCPUOP_down takes no argument.
        unsafe { hypercall::vcpu_op(hypercall::vcpuop::DOWN, cpu as u32, 0) };
        loop {
            hypercall::sched_block();
        }
    }
    restore_events(false);
    log::info!("xen smp: vCPU {cpu} running (gs per-CPU id {me}, events on)");
    // Online, then the platform-neutral idle loop that also runs jobs.
    super::ap_main(cpu)
}

/// Starts vCPUs 1..`want` (at most what Xen gave the domain, and
/// [`MAX_VCPUS`]); returns how many are online. A vCPU that fails is logged
/// and skipped. A second call only reports.
pub fn bring_up(want: usize) -> usize {
    if BROUGHT_UP.swap(true, Ordering::SeqCst) {
        return super::online().count();
    }
    if xen::shared_info_va() == 0 || !GS_READY.load(Ordering::Acquire) {
        log::warn!("xen smp: no shared_info or per-CPU block: one vCPU");
        return 1;
    }
    let mut present = 1;
    loop {
        match hypercall::vcpu_is_up(present as u32) {
            Ok(_) if present < MAX_VCPUS => present += 1,
            Ok(_) => {
                log::warn!("xen smp: more than {MAX_VCPUS} vCPUs; using {MAX_VCPUS} (no VCPUOP_register_vcpu_info)");
                break;
            }
            Err(e) if e.rc == hypercall::ENOENT => break,
            Err(e) => {
                log::warn!("xen smp: counting vCPUs: {e}");
                break;
            }
        }
    }
    let n = want.min(present);
    log::info!("xen smp: the domain has {present} vCPU(s); starting {}", n.saturating_sub(1));
    if let Err(e) = bind_ipi_port(0) {
        log::error!("xen smp: no IPI port for vCPU 0: {e}; one vCPU");
        return 1;
    }
    // Xen starts vCPU 0 with events masked (Linux turns them on once its
    // handlers are in place): from now on vCPU 0 takes IPIs whenever no
    // caller has them masked.
    let was_masked = mask_events();
    restore_events(false);
    log::info!("xen smp: vCPU 0 events on (they were {})", if was_masked { "masked" } else { "on" });
    for cpu in 1..n {
        match start_vcpu(cpu) {
            Ok((up, alive)) => log::info!(
                "xen smp: vCPU {cpu} up: initialise+up {} us, initialise -> running {} us, IPI port {}",
                up / 1000,
                alive / 1000,
                ipi_port(cpu)
            ),
            Err(e) => log::error!("xen smp: vCPU {cpu} not started: {e}; carrying on without it"),
        }
    }
    let online = super::online();
    log::info!("xen smp: {} vCPU(s) online {:?}", online.count(), online);
    online.count()
}

pub mod probe {
    //! The Xen plumbing's own check on the real hypervisor: vCPU 0 changes
    //! a kernel mapping another vCPU has cached, with a local flush only
    //! (that vCPU's read is expected stale), then with
    //! `MMUEXT_INVLPG_MULTI` / `MMUEXT_TLB_FLUSH_MULTI` through a
    //! hypercall-page transport (its read MUST be fresh). The reads are
    //! done by that vCPU in its IPI handler, so the check also proves the
    //! IPI path. The oracle is the hardware TLB as the other vCPU sees it.

    use core::sync::atomic::{AtomicU64, Ordering};

    use pvops_xen64::abi::{Call, MmuextOp};
    use pvops_xen64::{HypercallTransport, Outcome};

    use super::{MAX_VCPUS, PROBE_TIMEOUT_NS};
    use crate::xen::hypercall::{self, mmuext, UVMF_INVLPG};
    use crate::xen::mmu::{PTE_A, PTE_D, PTE_P, PTE_RW};
    use crate::xen::transport::HypercallPage;
    use crate::xen::{self, time};

    /// A transport of the check's own, so the workload's counters do not
    /// see it (the MULTI records go through its marshalling all the same).
    static CHECK_TRANSPORT: HypercallPage = HypercallPage::new();

    #[repr(C, align(4096))]
    struct Page([u64; 512]);

    /// The probe VA: its mapping is switched between frames A and B.
    static mut PROBE: Page = Page([0; 512]);
    /// Frames A and B (first word: a marker written at run time).
    static mut FRAMES: [Page; 2] = [Page([0; 512]), Page([0; 512])];
    const MARK_A: u64 = 0xa11c_e000_0000_000a;
    const MARK_B: u64 = 0xb0b0_0000_0000_000b;

    static REQ: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
    static DONE: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
    static VAL: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];

    fn probe_va() -> u64 {
        (&raw const PROBE) as u64
    }

    fn read_probe() -> u64 {
        // SAFETY: the probe VA is always mapped (to PROBE's own frame, A or B).
        unsafe { (probe_va() as *const u64).read_volatile() }
    }

    /// In `cpu`'s IPI handler: answers a pending probe request.
    pub(super) fn serve(cpu: usize) {
        let req = REQ[cpu].load(Ordering::Acquire);
        if req != DONE[cpu].load(Ordering::Relaxed) {
            VAL[cpu].store(read_probe(), Ordering::Relaxed);
            DONE[cpu].store(req, Ordering::Release);
        }
    }

    /// `cpu` reads the probe VA in its IPI handler; (value, round trip ns).
    fn remote_read(cpu: usize) -> Result<(u64, u64), &'static str> {
        let seq = REQ[cpu].load(Ordering::Relaxed) + 1;
        REQ[cpu].store(seq, Ordering::Release);
        let t0 = time::now_ns();
        super::send_ipi(cpu);
        let mut spins = 0u32;
        while DONE[cpu].load(Ordering::Acquire) != seq {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) {
                if time::now_ns() - t0 > PROBE_TIMEOUT_NS {
                    return Err("no answer to the IPI");
                }
                hypercall::sched_yield();
            }
            core::hint::spin_loop();
        }
        Ok((VAL[cpu].load(Ordering::Relaxed), time::now_ns() - t0))
    }

    fn frame_pte(va: u64) -> Result<u64, &'static str> {
        let pfn = (va - xen::VIRT_BASE) >> 12;
        let mfn = xen::pfn_to_mfn(pfn).ok_or("no mfn for a probe frame")?;
        Ok((mfn << 12) | PTE_P | PTE_A | PTE_D) // read-only alias
    }

    fn map_probe(pte: u64) -> Result<(), &'static str> {
        hypercall::update_va_mapping(probe_va(), pte, UVMF_INVLPG).map_err(|_| "update_va_mapping (local flush)")
    }

    fn multi(cmd: u32, arg1: u64, mask: u64) -> Result<(), &'static str> {
        let ops = [MmuextOp { cmd, arg1, arg2: mask }];
        let out = CHECK_TRANSPORT.call(&Call::MmuextOp(&ops));
        if out.status == 0 && out.done == 1 {
            Ok(())
        } else {
            log::error!("xen smp check: {} -> status {}, done {}", mmuext::name(cmd), out.status, out.done);
            Err("MULTI flush refused")
        }
    }

    /// One multicall: `[INVLPG_LOCAL(va), INVLPG_MULTI(va, mask)]` then
    /// `[TLB_FLUSH_MULTI(mask)]`, so the transport marshals two bitmaps at
    /// different places of its copy; every record MUST take effect.
    fn multi_batched(va: u64, mask: u64) -> Result<(), &'static str> {
        let first = [
            MmuextOp { cmd: mmuext::INVLPG_LOCAL, arg1: va, arg2: 0 },
            MmuextOp { cmd: mmuext::INVLPG_MULTI, arg1: va, arg2: mask },
        ];
        let second = [MmuextOp { cmd: mmuext::TLB_FLUSH_MULTI, arg1: 0, arg2: mask }];
        let calls = [Call::MmuextOp(&first), Call::MmuextOp(&second)];
        let mut out = [Outcome::NOT_RUN; 2];
        let rc = CHECK_TRANSPORT.multicall(&calls, &mut out);
        if rc == 0 && out[0].status == 0 && out[0].done == 2 && out[1].status == 0 && out[1].done == 1 {
            Ok(())
        } else {
            log::error!("xen smp check: multicall of MULTI flushes -> {rc}, outcomes {out:?}");
            Err("MULTI flushes in a multicall refused")
        }
    }

    /// Event masking on the calling vCPU, with an IPI to itself: while
    /// masked (also after a nested mask/restore and a hypercall) the IPI
    /// MUST NOT be taken; `restore_events` MUST deliver it before it
    /// returns (an unmask alone would leave it pending until the next
    /// hypercall or block). The oracle is the upcall's own count of IPIs
    /// taken, which the masking code does not touch.
    pub fn events(me: usize) -> Result<(), &'static str> {
        if super::ipi_port(me) == 0 {
            return Err("no IPI port");
        }
        let before = super::ipis_taken(me);
        let was = super::mask_events();
        let nested = super::mask_events();
        super::restore_events(nested);
        super::send_ipi(me);
        hypercall::force_event_delivery();
        let masked = super::ipis_taken(me) - before;
        super::restore_events(false);
        let after = super::ipis_taken(me) - before;
        super::restore_events(was);
        log::info!(
            "xen smp events: nested mask {nested} (want true); self-IPI taken while masked {masked} (want 0), \
             right after restore_events {after} (want 1)"
        );
        match (nested, masked, after) {
            (true, 0, 1) => Ok(()),
            (false, _, _) => Err("a nested mask_events did not report events masked"),
            (_, 0, _) => Err("restore_events left the pending IPI undelivered"),
            _ => Err("an IPI was taken while events were masked"),
        }
    }

    fn name(v: u64) -> &'static str {
        match v {
            MARK_A => "A",
            MARK_B => "B",
            _ => "?",
        }
    }

    /// What the check saw.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Report {
        /// The other vCPU still read the old frame after the local-only
        /// change (INVLPG round, TLB_FLUSH round).
        pub stale: [bool; 2],
        /// Fastest and mean IPI round trip (send -> answer seen), ns.
        pub ipi_min_ns: u64,
        pub ipi_mean_ns: u64,
    }

    /// Runs the check from the calling vCPU against vCPU `other`.
    pub fn run(other: usize) -> Result<Report, &'static str> {
        let me = super::this_cpu();
        if other == me || other >= MAX_VCPUS || !super::super::online().contains(other) {
            return Err("no other online vCPU");
        }
        // SAFETY: the frames are only written here, before any vCPU maps
        // them through the probe VA.
        let (a, b) = unsafe {
            let f = &raw mut FRAMES;
            (*f)[0].0[0] = MARK_A;
            (*f)[1].0[0] = MARK_B;
            ((&raw const (*f)[0]) as u64, (&raw const (*f)[1]) as u64)
        };
        let (pte_a, pte_b, pte_own) = (frame_pte(a)?, frame_pte(b)?, frame_pte(probe_va())? | PTE_RW);
        let mask = 1u64 << other;
        let mut r = Report::default();

        let result = (|| {
            map_probe(pte_a)?;
            let (v, _) = remote_read(other)?;
            if v != MARK_A || read_probe() != MARK_A {
                log::error!("xen smp check: vCPU {other} reads {v:#x}, vCPU {me} reads {:#x}", read_probe());
                return Err("probe does not read A after a mapping both vCPUs share");
            }
            // Round 1: INVLPG_MULTI.
            map_probe(pte_b)?;
            if read_probe() != MARK_B {
                return Err("the local flush did not take on this vCPU");
            }
            let (stale1, _) = remote_read(other)?;
            multi(mmuext::INVLPG_MULTI, probe_va(), mask)?;
            let (fresh1, _) = remote_read(other)?;
            // Round 2: the MULTI records inside a multicall (the batched
            // path), one after a local record in the same array.
            map_probe(pte_a)?;
            let (stale2, _) = remote_read(other)?;
            multi_batched(probe_va(), mask)?;
            let (fresh2, _) = remote_read(other)?;
            log::info!(
                "xen smp check: vCPU {other} reads A; vCPU {me} maps B with a local flush: vCPU {other} reads {} ({}); \
                 after INVLPG_MULTI {{{other}}}: {}; back to A locally: {} ({}); after a multicall with INVLPG_MULTI and TLB_FLUSH_MULTI {{{other}}}: {}",
                name(stale1),
                if stale1 == MARK_A { "stale, as without a shootdown" } else { "fresh: entry was not cached" },
                name(fresh1),
                name(stale2),
                if stale2 == MARK_B { "stale" } else { "fresh: entry was not cached" },
                name(fresh2)
            );
            r.stale = [stale1 == MARK_A, stale2 == MARK_B];
            if fresh1 != MARK_B {
                return Err("vCPU still reads the old frame after MMUEXT_INVLPG_MULTI");
            }
            if fresh2 != MARK_A {
                return Err("vCPU still reads the old frame after the batched MULTI flushes");
            }
            Ok(())
        })();
        // Put the probe page back on its own frame everywhere.
        let restored = map_probe(pte_own).and_then(|_| multi(mmuext::TLB_FLUSH_MULTI, 0, mask));
        result.and(restored)?;

        // IPI round trips, last: each read caches the probe VA on `other`.
        let (mut min, mut sum) = (u64::MAX, 0);
        const PINGS: u64 = 50;
        for _ in 0..PINGS {
            let (_, ns) = remote_read(other)?;
            min = min.min(ns);
            sum += ns;
        }
        r.ipi_min_ns = min;
        r.ipi_mean_ns = sum / PINGS;
        Ok(r)
    }
}
