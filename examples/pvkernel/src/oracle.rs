//! `KernelOracle`: the conformance suite's `Machine`, answered by measuring.
//!
//! * **User mode** is asked by running user code: a probe of a few
//!   instructions (load from, or store to, the address in rdi, then
//!   `syscall` back) entered with [`UserTask`] in the address space that is
//!   loaded now, without switching. A fault at the address means "not
//!   reachable". Which frame was reached is measured with a nonce: before a
//!   read the kernel plants a fresh value in the frame the loaded kernel root
//!   maps at that address (walked from the real cr3), and the probe must
//!   read it back; after a write the kernel looks for the probe's nonce
//!   there. Anything else is [`UNKNOWN_FRAME`], which fails every check.
//!   The probe's code page is mapped at [`PROBE_CODE_VA`] (an L4 slot no
//!   conformance case uses) into the loaded roots with its own L3/L2/L1
//!   tables, and torn down (flushed, freed) before the answer is returned,
//!   so each case's frame balance is unchanged. This never goes through the
//!   backend under test ([`ProbeMap`]: direct stores natively, raw
//!   hypercalls on Xen), so it neither issues updates a case has queued in
//!   an open lazy-MMU section nor depends on the backend being right.
//! * **Xen**: user mode translates through the user root Xen has loaded. The
//!   oracle first asks Xen whether the user pgd attached to the loaded kernel
//!   pgd really is a loaded base pointer ([`typed::is_loaded_base`]): if not
//!   (e.g. `NEW_USER_BASEPTR` never sent, or sent as 0), it answers
//!   [`UNKNOWN_FRAME`] without entering user mode, which would crash the
//!   domain when there is no user root. Under init_mm (kernel root = init_mm's
//!   pgd, read from cr3) there is no user root to run code in, so the oracle
//!   asks Xen instead: no user pgd of a pinned space may still be a loaded
//!   base pointer (else [`UNKNOWN_FRAME`]); then the answer is "nothing".
//!   Natively the probe runs under init_mm too.
//! * **Kernel mode** is a software walk of the root in the real cr3 with the
//!   x86 rules (present at every level, writable at every level for a write,
//!   1 GiB / 2 MiB leaves). No software convention (Xen's bit 52
//!   `_PAGE_GUEST_KERNEL` or any other) is treated as protection: for user
//!   mode only the hardware's answer counts.

use core::arch::global_asm;
use core::cell::Cell;
use core::sync::atomic::{AtomicU64, Ordering};

use pvops::pte::flags;
use pvops::{Pfn, PvError, VirtAddr};

use crate::probe_map::ProbeMap;
use crate::user::{UserExit, UserTask};
use crate::vm::Vm;
use crate::xen::typed;
use crate::{kprintln, platform, probe_map, x86, xen};

pub use crate::probe_map::PROBE_CODE_VA;

/// "User mode reached some frame, but not the one the loaded root maps":
/// compares unequal to every real frame and is not `None`.
pub const UNKNOWN_FRAME: Pfn = Pfn(u64::MAX);

/// The probe's `syscall` number (it only ever makes this one).
const PROBE_DONE: u64 = 0x70be;

global_asm!(
    r#"
    .section .rodata.oracle_probe, "a"
    .p2align 4
    .globl oracle_probe_start, oracle_probe_end
oracle_probe_start:
    test %rdx, %rdx
    jnz 1f
    mov (%rdi), %rdi                /* read: the value goes back in rdi */
    mov ${done}, %eax
    syscall
    ud2
1:  mov %rsi, (%rdi)                /* write the nonce */
    xor %edi, %edi
    mov ${done}, %eax
    syscall
    ud2
oracle_probe_end:
"#,
    done = const PROBE_DONE,
    options(att_syntax)
);

extern "C" {
    static oracle_probe_start: u8;
    static oracle_probe_end: u8;
}

fn probe_code() -> &'static [u8] {
    // SAFETY: the two labels delimit one contiguous blob in .rodata.
    unsafe {
        let start = &raw const oracle_probe_start;
        let end = &raw const oracle_probe_end;
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// The measuring oracle.
pub struct KernelOracle {
    vm: Vm,
    nonce: Cell<u64>,
    /// Probes run in user mode.
    probes: Cell<u64>,
    /// Times Xen had not loaded the user pgd of the loaded space.
    missing_user_root: Cell<u64>,
}

impl core::fmt::Debug for KernelOracle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("KernelOracle")
    }
}

impl KernelOracle {
    /// An oracle for the memory manager in `vm`.
    pub fn new(vm: Vm) -> Self {
        KernelOracle {
            vm,
            nonce: Cell::new(0x6e6f_6e63_6500_0000),
            probes: Cell::new(0),
            missing_user_root: Cell::new(0),
        }
    }

    /// One line on how it measured, for the log.
    pub fn describe(&self) -> alloc::string::String {
        if platform::is_xen() {
            alloc::format!(
                "oracle: {} user-mode probes, {} times Xen had not loaded the user root of the loaded space; its own hypercalls: {}",
                self.probes.get(),
                self.missing_user_root.get(),
                probe_map::oracle_traps()
            )
        } else {
            alloc::format!("oracle: {} user-mode probes", self.probes.get())
        }
    }

    /// True if Xen was ever found without the user root it should have.
    pub fn user_root_missing(&self) -> bool {
        self.missing_user_root.get() != 0
    }

    /// Whether `want` is the root user mode translates through now, as the
    /// hardware (native cr3) or Xen (a loaded base pointer) says.
    pub fn user_root_loaded(&self, want: Pfn) -> bool {
        if platform::is_xen() {
            typed::is_loaded_base(want).unwrap_or(false)
        } else {
            Self::kernel_root() == Some(want)
        }
    }

    /// (Xen) A user pgd of a pinned address space that Xen holds as a loaded
    /// base pointer, if any.
    fn loaded_user_pgd(&self) -> Option<Pfn> {
        let frames = self.vm.frames;
        (0..frames.nr_frames()).map(Pfn).filter(|&p| p != self.vm.mm.init_pgd()).find_map(|p| {
            if !frames.info(p).is_some_and(|i| i.pinned) {
                return None;
            }
            let u = pvops_xen64::attached_user_pgd(frames, p).ok().flatten()?;
            let pinned = frames.info(u).is_some_and(|i| i.pinned);
            (pinned && typed::is_loaded_base(u).unwrap_or(true)).then_some(u)
        })
    }

    /// The guest frame an entry points to.
    fn target(entry: u64) -> Option<u64> {
        let frame = (entry & flags::ADDR_MASK) >> 12;
        if platform::is_xen() {
            xen::mfn_to_pfn_checked(frame)
        } else {
            Some(frame)
        }
    }

    /// The kernel root that is loaded now (the real cr3).
    pub fn kernel_root() -> Option<Pfn> {
        let cr3 = x86::read_cr3() & flags::ADDR_MASK;
        if platform::is_xen() {
            xen::mfn_to_pfn_checked(cr3 >> 12).map(Pfn)
        } else {
            Some(Pfn(cr3 >> 12))
        }
    }

    /// Walks the tree at `root` for a kernel-mode access to `va`.
    pub fn walk(&self, root: Pfn, va: u64, write: bool) -> Option<Pfn> {
        let va = VirtAddr::try_new(va).ok()?.as_u64();
        let mut table = root.0;
        for level in (1..=4u32).rev() {
            let shift = 12 + 9 * (level - 1);
            let index = ((va >> shift) & 511) as usize;
            let e = self.vm.mem.read_entry(Pfn(table), index);
            if e & flags::PRESENT == 0 || (write && e & flags::WRITABLE == 0) {
                return None;
            }
            let frame = Self::target(e)?;
            let leaf = level == 1 || ((level == 2 || level == 3) && e & flags::HUGE != 0);
            if leaf {
                let offset = (va >> 12) & ((1u64 << (9 * (level - 1))) - 1);
                return Some(Pfn(frame + offset));
            }
            table = frame;
        }
        None
    }

    fn next_nonce(&self) -> u64 {
        let n = self.nonce.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.nonce.set(n);
        n
    }

    /// Runs the probe in the loaded space; `Ok(value)` (what a read saw), or
    /// `Err(addr)` with the faulting address.
    fn run_probe(&self, va: u64, write: bool, nonce: u64) -> Result<u64, (u64, u64)> {
        let mut task = UserTask::new(PROBE_CODE_VA, 0);
        task.regs.rdi = va;
        task.regs.rsi = nonce;
        task.regs.rdx = u64::from(write);
        self.probes.set(self.probes.get() + 1);
        match task.resume() {
            UserExit::Syscall { nr: PROBE_DONE, args } => Ok(args[0]),
            UserExit::Syscall { nr, .. } => Err((u64::MAX, nr)),
            UserExit::Faulted(f) => Err((f.addr, f.vector)),
        }
    }

    fn measure_user(&self, va: u64, write: bool) -> Result<Option<Pfn>, PvError> {
        let root = Self::kernel_root().ok_or(PvError::WrongState { what: "oracle: cr3 names no guest frame" })?;
        // (Xen) The user pgd Xen has loaded; natively user mode uses `root`.
        let mut user = None;
        if platform::is_xen() {
            if root == self.vm.mm.init_pgd() {
                // No user root under init_mm: nothing to run user code in.
                // Xen must not still hold any user pgd as a base pointer
                // (user mode would reach that space): ask it, for the user
                // pgd of every pinned kernel pgd.
                if let Some(u) = self.loaded_user_pgd() {
                    kprintln!("oracle: under init_mm, Xen still has user pgd {u:?} loaded");
                    return Ok(Some(UNKNOWN_FRAME));
                }
                return Ok(None);
            }
            let attached = pvops_xen64::attached_user_pgd(self.vm.frames, root)?;
            // Which pgd that is comes from the backend's bookkeeping; that
            // Xen really holds it as the user base pointer, Xen says.
            match attached.filter(|&u| typed::is_loaded_base(u).unwrap_or(false)) {
                Some(u) => user = Some(u),
                None => {
                    self.missing_user_root.set(self.missing_user_root.get() + 1);
                    kprintln!("oracle: Xen has not loaded the user pgd of the loaded space {root:?}");
                    return Ok(Some(UNKNOWN_FRAME));
                }
            }
        }
        // The nonce goes into the frame the loaded kernel root maps there;
        // frame metadata is consulted only to never store into a pinned
        // table (on Xen that store would fault), not to decide the answer.
        let candidate = self
            .walk(root, va, false)
            .filter(|&c| c.0 < self.vm.frames.nr_frames() && !self.vm.frames.info(c).is_some_and(|i| i.pinned));
        let word = ((va & 0xfff) / 8) as usize;
        let nonce = self.next_nonce();
        let saved = candidate.map(|c| self.vm.mem.read_entry(c, word));
        if let (Some(c), false) = (candidate, write) {
            self.vm.mem.write_entry(c, word, nonce);
        }
        let m = ProbeMap::map(self.vm.frames, root, user, probe_code());
        let result = match &m {
            Ok(_) => Some(self.run_probe(va, write, nonce)),
            Err(_) => None,
        };
        let answer = match result {
            None => Some(UNKNOWN_FRAME),
            Some(Err((addr, vector))) if vector == 14 && addr == va => None,
            Some(Err((addr, vector))) => {
                kprintln!("oracle: probe of {va:#x} stopped by vector {vector} at {addr:#x}");
                Some(UNKNOWN_FRAME)
            }
            Some(Ok(read)) => {
                let seen = if write { candidate.map(|c| self.vm.mem.read_entry(c, word)) } else { Some(read) };
                match candidate {
                    Some(c) if seen == Some(nonce) => Some(c),
                    _ => Some(UNKNOWN_FRAME),
                }
            }
        };
        if let (Some(c), Some(old)) = (candidate, saved) {
            self.vm.mem.write_entry(c, word, old);
        }
        match m {
            Ok(m) => {
                if let Err(e) = m.unmap(self.vm.frames) {
                    kprintln!("oracle: unmapping the probe failed: {e}");
                }
            }
            Err(e) => kprintln!("oracle: mapping the probe failed: {e}"),
        }
        Ok(answer)
    }
}

impl pvops_conformance::Machine for KernelOracle {
    fn user_access(&self, va: u64, write: bool) -> Option<Pfn> {
        match self.measure_user(va, write) {
            Ok(a) => a,
            Err(e) => {
                kprintln!("oracle: cannot measure user access to {va:#x}: {e}");
                Some(UNKNOWN_FRAME)
            }
        }
    }

    fn kernel_access(&self, va: u64, write: bool) -> Option<Pfn> {
        self.walk(Self::kernel_root()?, va, write)
    }

    /// Real code on `cpu` reads the word: here directly, elsewhere in that
    /// CPU's cross-call handler, through its own TLB.
    fn read_on(&self, cpu: usize, va: u64) -> Option<u64> {
        static SEEN: AtomicU64 = AtomicU64::new(0);
        // SAFETY: the conformance contract (`Machine::read_on`): `va` is
        // mapped, readable by the kernel, in the space loaded on `cpu` when
        // a case asks; a guest kernel may read user pages (on Xen PV the
        // kernel pgd maps the user half).
        let read = || unsafe { core::ptr::read_volatile(va as *const u64) };
        if cpu == crate::smp::this_cpu() {
            return Some(read());
        }
        let asked = pvops::Cpus::call_on(&crate::smp::CPUS, pvops::CpuMask::one(cpu), &|| {
            SEEN.store(read(), Ordering::SeqCst);
            Ok(())
        });
        match asked {
            Ok(()) => Some(SEEN.load(Ordering::SeqCst)),
            Err(e) => {
                kprintln!("oracle: cannot read {va:#x} on CPU {cpu}: {e}");
                None
            }
        }
    }
}
