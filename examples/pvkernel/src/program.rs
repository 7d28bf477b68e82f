//! The ELF user program's processes: Linux x86-64 system call numbers, user
//! page faults resolved by kernel-glue, and the verdict for `RESULT`.
//!
//! ```text
//! elf_load::load(USER_PROG)  ─► pid 1 ─► run until exit or kill
//!   syscall  write(1) getpid(39) fork(57) wait4(61) exit(60, 231)
//!            mmap(9, anonymous)  munmap(11)  mprotect(10)
//!            pvops_stat(500) pvops_report(501) pvops_fault_addr(502)
//!            pvops_fail_alloc(503, a test hook: fault injection)
//!   #PF from user mode ─► Mm::handle_fault(space, cr2, write)
//!            Ok(fix)   ─► resume at the faulting instruction
//!            Err(kill) ─► the process dies; its parent's wait4 sees
//!                         SIGSEGV | reason << 8, pvops_fault_addr the address
//!   exit / kill ─► the space is torn down at once (Mm::exit): a zombie keeps
//!                  only its status
//! ```
//!
//! Scheduling is run-to-completion, as in [`crate::process`]: `wait4` runs
//! the child until it ends; fork returns to the parent first. `fork` is
//! kernel-glue's copy-on-write fork (`Mm::fork_cow`), `mmap` a demand-zero
//! reservation (`Mm::reserve_zero`), `munmap` `Mm::unmap_range`, `mprotect`
//! `Mm::protect_range`. The program's verdicts arrive through
//! `pvops_report`; [`EXPECTED`] names the checks that must all pass.

use alloc::string::String;
use alloc::vec::Vec;

use kernel_glue::{AddressSpace, FaultFix, FaultKill, PageFlags};
use pvops::{PvError, PvMmuOps, PAGE_SIZE, USER_LIMIT};

use crate::elf_load::{self, LoadError};
use crate::kprintln;
use crate::seams::SeamCounts;
use crate::user::{UserExit, UserFault, UserTask};
use crate::vm::Vm;

/// Linux x86-64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
pub mod nr {
    pub const WRITE: u64 = 1;
    pub const MMAP: u64 = 9;
    pub const MPROTECT: u64 = 10;
    pub const MUNMAP: u64 = 11;
    pub const GETPID: u64 = 39;
    pub const FORK: u64 = 57;
    pub const EXIT: u64 = 60;
    pub const WAIT4: u64 = 61;
    pub const EXIT_GROUP: u64 = 231;
    /// pvkernel's own: `pvops_stat(which)`, 0 = frames in use, 1 = pages copied on write.
    pub const PVOPS_STAT: u64 = 500;
    /// pvkernel's own: `pvops_report(name, len, ok, figure)`.
    pub const PVOPS_REPORT: u64 = 501;
    /// pvkernel's own: `pvops_fault_addr(pid)`: where child `pid`'s fatal fault was.
    pub const PVOPS_FAULT_ADDR: u64 = 502;
    /// pvkernel's own test hook: `pvops_fail_alloc(k)`, the k-th frame
    /// allocation from now fails; disarmed when the calling process ends.
    pub const PVOPS_FAIL_ALLOC: u64 = 503;
}

/// The checks `examples/user-prog` must report, every one passing.
pub const EXPECTED: &[&str] = &[
    "getpid",
    "sparse_mmap",
    "fork_cow",
    "cow_oom",
    "mprotect_kill",
    "munmap_kill",
    "exec_nx",
    "fork_exit_100",
    "bad_calls",
];

const EBADF: u64 = (-9i64) as u64;
const ECHILD: u64 = (-10i64) as u64;
const ENOMEM: u64 = (-12i64) as u64;
const EFAULT: u64 = (-14i64) as u64;
const EEXIST: u64 = (-17i64) as u64;
const EINVAL: u64 = (-22i64) as u64;
const ENOSYS: u64 = (-38i64) as u64;

const PROT_READ: u64 = 1;
const PROT_WRITE: u64 = 2;
const PROT_EXEC: u64 = 4;
const MAP_SHARED: u64 = 0x01;
const MAP_PRIVATE: u64 = 0x02;
const MAP_FIXED: u64 = 0x10;
const MAP_ANONYMOUS: u64 = 0x20;

/// Where `mmap` without `MAP_FIXED` places mappings (bottom-up, never reused).
pub const MMAP_BASE: u64 = 0x1000_0000_0000;

const SIGILL: u64 = 4;
const SIGTRAP: u64 = 5;
const SIGFPE: u64 = 8;
const SIGKILL: u64 = 9;
const SIGSEGV: u64 = 11;

/// Why a process was killed; in bits 8..15 of its wait status (Linux
/// leaves them zero for a signal death), so the parent can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillReason {
    /// A page fault on nothing mapped or reserved (`FaultKill::NotMapped`).
    NotMapped = 1,
    /// A write to a read-only page (`FaultKill::WriteToReadOnly`).
    WriteToReadOnly = 2,
    /// No frame to resolve the fault (`FaultKill::OutOfMemory`).
    OutOfMemory = 3,
    /// The backend refused the fix, or the same fault came back unresolved.
    Unresolved = 4,
    /// Not a page fault (the vector says which exception).
    Exception = 5,
    /// An instruction fetch from a present no-execute page.
    NoExecute = 6,
}

impl From<FaultKill> for KillReason {
    fn from(k: FaultKill) -> Self {
        match k {
            FaultKill::NotMapped => KillReason::NotMapped,
            FaultKill::WriteToReadOnly => KillReason::WriteToReadOnly,
            FaultKill::OutOfMemory => KillReason::OutOfMemory,
            _ => KillReason::Unresolved,
        }
    }
}

/// How a process stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Runnable,
    Exited(u8),
    Killed { fault: UserFault, reason: KillReason },
}

impl State {
    /// Linux's wait status: `code << 8` for an exit, the signal (plus our
    /// reason in bits 8..15) for a kill.
    fn wait_status(self) -> Option<u32> {
        match self {
            State::Runnable => None,
            State::Exited(code) => Some(u32::from(code) << 8),
            State::Killed { fault, reason } => {
                let sig = match fault.vector {
                    11..=14 => SIGSEGV,
                    6 => SIGILL,
                    0 | 16 | 19 => SIGFPE,
                    1 | 3 => SIGTRAP,
                    _ => SIGKILL,
                };
                Some((sig | (reason as u64) << 8) as u32)
            }
        }
    }
}

struct Proc {
    /// `None` once it ended: the space goes at exit, not at reaping.
    space: Option<AddressSpace>,
    task: UserTask,
    parent: usize,
    state: State,
    reaped: bool,
    mmap_next: u64,
    /// It armed an allocation failure (`pvops_fail_alloc`).
    injected: bool,
}

/// One check the program reported.
#[derive(Clone, Debug)]
pub struct Report {
    pub name: String,
    pub ok: bool,
    pub figure: i64,
}

/// The processes of one run of the program.
pub struct Programs {
    vm: Vm,
    procs: Vec<Proc>,
    /// What the program reported, in order.
    pub reports: Vec<Report>,
    /// Page faults resolved (zero-fill, copy, reuse, spurious).
    pub faults_fixed: u64,
    /// Per kind of operation: how many, and the hypercalls they made
    /// (counted at the kernel's transport, not by the backend).
    pub costs: Vec<(&'static str, u64, u64)>,
}

/// Same fault (rip and address) resolved this many times in a row: the fix
/// does not take, and the process is killed rather than looping.
const FAULT_LOOP: u32 = 8;

impl Programs {
    /// Loads `image` as pid 1.
    pub fn load(vm: Vm, image: &[u8]) -> Result<Self, LoadError> {
        let loaded = elf_load::load(&vm, image)?;
        let task = UserTask::new(loaded.entry, loaded.stack_top);
        let first = Proc {
            space: Some(loaded.space),
            task,
            parent: 0,
            state: State::Runnable,
            reaped: false,
            mmap_next: MMAP_BASE,
            injected: false,
        };
        Ok(Programs { vm, procs: alloc::vec![first], reports: Vec::new(), faults_fixed: 0, costs: Vec::new() })
    }

    /// How pid ended, if it has.
    pub fn state(&self, pid: usize) -> Option<State> {
        self.procs.get(pid.wrapping_sub(1)).map(|p| p.state)
    }

    /// Runs `pid` until it exits or is killed (its children as it waits for them).
    pub fn run(&mut self, pid: usize) -> Result<(), PvError> {
        let mut last_fault = (0u64, 0u64, 0u32);
        while self.procs[pid - 1].state == State::Runnable {
            self.switch_to(pid)?;
            match self.procs[pid - 1].task.resume() {
                UserExit::Syscall { nr, args } => {
                    last_fault.2 = 0;
                    if let Some(ret) = self.syscall(pid, nr, args)? {
                        self.procs[pid - 1].task.set_syscall_return(ret);
                    }
                }
                UserExit::Faulted(f) => {
                    let again = (f.rip, f.addr) == (last_fault.0, last_fault.1);
                    last_fault = (f.rip, f.addr, if again { last_fault.2 + 1 } else { 1 });
                    if let Err(reason) = self.fault(pid, f, last_fault.2) {
                        kprintln!(
                            "pid {pid}: killed by {} at {:#x} ({reason:?}; error {:#x}, rip {:#x})",
                            crate::traps::vector_name(f.vector),
                            f.addr,
                            f.error_code,
                            f.rip
                        );
                        self.end(pid, State::Killed { fault: f, reason })?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A user-mode exception: a page fault goes to `Mm::handle_fault`.
    fn fault(&mut self, pid: usize, f: UserFault, repeats: u32) -> Result<(), KillReason> {
        const PRESENT: u64 = 1;
        const WRITE: u64 = 2;
        const FETCH: u64 = 0x10;
        if f.vector != 14 {
            return Err(KillReason::Exception);
        }
        if repeats > FAULT_LOOP {
            return Err(KillReason::Unresolved);
        }
        if f.error_code & (PRESENT | FETCH) == PRESENT | FETCH {
            // An instruction fetch from a present no-execute page: nothing to fix.
            return Err(KillReason::NoExecute);
        }
        let space = self.procs[pid - 1].space.as_ref().ok_or(KillReason::Unresolved)?;
        let before = SeamCounts::now();
        match self.vm.mm.handle_fault(space, f.addr, f.error_code & WRITE != 0) {
            Ok(fix) => {
                self.faults_fixed += 1;
                let what = match fix {
                    FaultFix::CopiedOnWrite => "cow-copy",
                    FaultFix::ReusedSoleOwner => "cow-reuse",
                    FaultFix::ZeroFilled => "zero-fill",
                    _ => "spurious",
                };
                self.tally(what, &before);
                Ok(())
            }
            Err(k) => Err(k.into()),
        }
    }

    /// Counts one `what` and the hypercalls it made since `before`.
    fn tally(&mut self, what: &'static str, before: &SeamCounts) {
        let hc = SeamCounts::now().since(before).hypercalls();
        match self.costs.iter_mut().find(|c| c.0 == what) {
            Some(c) => {
                c.1 += 1;
                c.2 += hc;
            }
            None => self.costs.push((what, 1, hc)),
        }
    }

    /// Loads `pid`'s space unless it is the active one.
    fn switch_to(&mut self, pid: usize) -> Result<(), PvError> {
        let mm = self.vm.mm;
        let space = self.procs[pid - 1].space.as_ref().ok_or(PvError::WrongState { what: "no address space" })?;
        if mm.active_pgd() != space.pgd() {
            mm.activate(space)?;
        }
        Ok(())
    }

    /// `pid` ends with `state`: its space is torn down now (from init_mm).
    fn end(&mut self, pid: usize, state: State) -> Result<(), PvError> {
        self.procs[pid - 1].state = state;
        if core::mem::take(&mut self.procs[pid - 1].injected) {
            self.vm.frames.fail_allocation_after(None);
        }
        if let Some(space) = self.procs[pid - 1].space.take() {
            let mm = self.vm.mm;
            if mm.active_pgd() == space.pgd() {
                mm.activate_init()?;
            }
            if let Err((e, space)) = mm.exit(space) {
                kprintln!("pid {pid}: exit of its address space failed: {e}");
                self.procs[pid - 1].space = Some(space);
                return Err(e);
            }
        }
        Ok(())
    }

    /// One system call; `None` when the process ended.
    fn syscall(&mut self, pid: usize, nr: u64, a: [u64; 6]) -> Result<Option<u64>, PvError> {
        let ret = match nr {
            nr::EXIT | nr::EXIT_GROUP => {
                self.end(pid, State::Exited(a[0] as u8))?;
                return Ok(None);
            }
            nr::WRITE if a[0] == 1 || a[0] == 2 => {
                let space = self.space(pid)?;
                crate::process::write_user(&self.vm, space, a[1], a[2])
            }
            nr::WRITE => EBADF,
            nr::GETPID => pid as u64,
            nr::FORK => self.fork(pid)?,
            nr::WAIT4 => self.wait4(pid, a[0] as i64, a[1])?,
            nr::MMAP => self.mmap(pid, a),
            nr::MUNMAP => self.munmap(pid, a[0], a[1]),
            nr::MPROTECT => self.mprotect(pid, a[0], a[1], a[2]),
            nr::PVOPS_STAT => match a[0] {
                0 => self.vm.frames.nr_frames() - self.vm.frames.free_count(),
                1 => self.vm.mm.cow_copies(),
                _ => EINVAL,
            },
            nr::PVOPS_REPORT => self.report(pid, a),
            // Reaped or not: the parent asks after its wait4.
            nr::PVOPS_FAULT_ADDR => match self.procs.get((a[0] as usize).wrapping_sub(1)) {
                Some(c) if c.parent == pid => match c.state {
                    State::Killed { fault, .. } => fault.addr,
                    _ => EINVAL,
                },
                _ => ECHILD,
            },
            nr::PVOPS_FAIL_ALLOC => {
                self.vm.frames.fail_allocation_after(Some(a[0]));
                self.procs[pid - 1].injected = true;
                0
            }
            _ => ENOSYS,
        };
        Ok(Some(ret))
    }

    fn space(&self, pid: usize) -> Result<&AddressSpace, PvError> {
        self.procs[pid - 1].space.as_ref().ok_or(PvError::WrongState { what: "no address space" })
    }

    fn fork(&mut self, pid: usize) -> Result<u64, PvError> {
        let before = SeamCounts::now();
        let forked = self.vm.mm.fork_cow(self.space(pid)?);
        self.tally("fork", &before);
        let child_space = match forked {
            Ok(s) => s,
            Err(PvError::OutOfMemory) => return Ok(ENOMEM),
            Err(e) => return Err(e),
        };
        #[cfg(feature = "no-cow")]
        crate::sabotage::undo_cow(&self.vm, self.space(pid)?, &child_space)?;
        let mut task = UserTask { regs: self.procs[pid - 1].task.regs };
        task.set_syscall_return(0);
        let mmap_next = self.procs[pid - 1].mmap_next;
        self.procs.push(Proc {
            space: Some(child_space),
            task,
            parent: pid,
            state: State::Runnable,
            reaped: false,
            mmap_next,
            injected: false,
        });
        Ok(self.procs.len() as u64)
    }

    /// The unreaped child of `parent` that `which` names (-1: the first one).
    fn child_of(&self, parent: usize, which: i64) -> Option<usize> {
        let is_child = |c: usize| self.procs.get(c - 1).is_some_and(|p| p.parent == parent && !p.reaped);
        match which {
            -1 => (1..=self.procs.len()).find(|&c| is_child(c)),
            c if c > 0 && is_child(c as usize) => Some(c as usize),
            _ => None,
        }
    }

    /// `wait4(pid, status, options, rusage)`: runs the child to its end,
    /// stores its status, reaps it.
    fn wait4(&mut self, pid: usize, which: i64, status_ptr: u64) -> Result<u64, PvError> {
        let Some(child) = self.child_of(pid, which) else { return Ok(ECHILD) };
        if self.procs[child - 1].state == State::Runnable {
            self.run(child)?;
        }
        let status = self.procs[child - 1].state.wait_status().unwrap_or(0);
        if status_ptr != 0 && self.copy_to_user(pid, status_ptr, &status.to_le_bytes()).is_err() {
            return Ok(EFAULT);
        }
        self.procs[child - 1].reaped = true;
        Ok(child as u64)
    }

    /// Stores `bytes` at user address `va` of `pid` as a user write would:
    /// an absent demand-zero page is backed and a copy-on-write page copied
    /// first (`Mm::handle_fault`, Linux's `get_user_pages` with FOLL_WRITE),
    /// and a read-only or unmapped page refuses the copy.
    fn copy_to_user(&mut self, pid: usize, va: u64, bytes: &[u8]) -> Result<(), PvError> {
        let space = self.space(pid)?;
        let mm = self.vm.mm;
        let end = va.checked_add(bytes.len() as u64).filter(|&e| e <= USER_LIMIT);
        let bad = PvError::NotUserAddress { addr: pvops::VirtAddr::try_new(va & !(PAGE_SIZE - 1))? };
        end.ok_or(bad)?;
        let mut done = 0;
        while done < bytes.len() {
            let at = va + done as u64;
            let page = at & !(PAGE_SIZE - 1);
            let frame = match mm.translate(space, page)? {
                Some((frame, perm)) if perm.writable => frame,
                _ => {
                    mm.handle_fault(space, page, true).map_err(|_| PvError::NotMapped { addr: bad_addr(page) })?;
                    match mm.translate(space, page)? {
                        Some((frame, perm)) if perm.writable => frame,
                        _ => return Err(PvError::NotMapped { addr: bad_addr(page) }),
                    }
                }
            };
            let off = (at % PAGE_SIZE) as usize;
            let n = (PAGE_SIZE as usize - off).min(bytes.len() - done);
            user_elf::load::write_frame(self.vm.mem, frame, off, &bytes[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// Reads up to `len` bytes from user address `va` of `pid` (present pages only).
    fn copy_from_user(&self, pid: usize, va: u64, len: usize) -> Option<Vec<u8>> {
        let space = self.procs[pid - 1].space.as_ref()?;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let at = va.checked_add(out.len() as u64)?;
            let (frame, _) = self.vm.mm.translate(space, at & !(PAGE_SIZE - 1)).ok()??;
            let off = (at % PAGE_SIZE) as usize;
            let n = (PAGE_SIZE as usize - off).min(len - out.len());
            user_elf::load::read_frame(self.vm.mem, frame, off, n, &mut out);
        }
        Some(out)
    }

    fn report(&mut self, pid: usize, a: [u64; 6]) -> u64 {
        let Some(name) = self.copy_from_user(pid, a[0], (a[1] as usize).min(64)) else { return EFAULT };
        let name = String::from_utf8_lossy(&name).into_owned();
        let (ok, figure) = (a[2] != 0, a[3] as i64);
        kprintln!("PROGCHECK {} {name} {} figure={figure}", pid, if ok { "ok" } else { "FAILED" });
        self.reports.push(Report { name, ok, figure });
        0
    }

    fn mmap(&mut self, pid: usize, a: [u64; 6]) -> u64 {
        let [addr, len, prot, flags, _fd, _off] = a;
        if len == 0 || prot & !(PROT_READ | PROT_WRITE | PROT_EXEC) != 0 || prot & PROT_READ == 0 {
            // PROT_NONE is not supported: a present x86 page is always readable.
            return EINVAL;
        }
        if flags & MAP_ANONYMOUS == 0 || flags & MAP_SHARED != 0 || flags & MAP_PRIVATE == 0 {
            return EINVAL;
        }
        let pages = len.div_ceil(PAGE_SIZE);
        let fixed = flags & MAP_FIXED != 0;
        let start = if fixed { addr } else { self.procs[pid - 1].mmap_next };
        if !start.is_multiple_of(PAGE_SIZE) {
            return EINVAL;
        }
        // Linux: a range past TASK_SIZE is ENOMEM (get_unmapped_area).
        match pages.checked_mul(PAGE_SIZE).and_then(|l| start.checked_add(l)) {
            Some(end) if end <= USER_LIMIT => {}
            _ => return ENOMEM,
        }
        let perm = PageFlags { writable: prot & PROT_WRITE != 0, executable: prot & PROT_EXEC != 0 };
        let Ok(space) = self.space(pid) else { return EINVAL };
        match self.vm.mm.reserve_zero(space, start, pages, perm) {
            Ok(()) => {
                if !fixed {
                    // A guard page between mappings.
                    self.procs[pid - 1].mmap_next = start + (pages + 1) * PAGE_SIZE;
                }
                start
            }
            Err(PvError::AlreadyMapped { .. }) => EEXIST,
            Err(PvError::OutOfMemory | PvError::NotUserAddress { .. }) => ENOMEM,
            Err(e) => {
                kprintln!("pid {pid}: mmap({start:#x}, {pages} pages): {e}");
                EINVAL
            }
        }
    }

    fn munmap(&mut self, pid: usize, addr: u64, len: u64) -> u64 {
        let Some(pages) = user_pages(addr, len) else { return EINVAL };
        let Ok(space) = self.space(pid) else { return EINVAL };
        let before = SeamCounts::now();
        let done = self.vm.mm.unmap_range(space, addr, pages);
        self.tally("munmap", &before);
        match done {
            Ok(_) => 0,
            Err(e) => {
                kprintln!("pid {pid}: munmap({addr:#x}, {pages} pages): {e}");
                EINVAL
            }
        }
    }

    fn mprotect(&mut self, pid: usize, addr: u64, len: u64, prot: u64) -> u64 {
        if !addr.is_multiple_of(PAGE_SIZE) || prot & !(PROT_READ | PROT_WRITE | PROT_EXEC) != 0 || prot & PROT_READ == 0
        {
            return EINVAL;
        }
        // Linux: a range not (wholly) mapped is ENOMEM.
        let Some(pages) = user_pages(addr, len) else { return ENOMEM };
        let perm = PageFlags { writable: prot & PROT_WRITE != 0, executable: prot & PROT_EXEC != 0 };
        let Ok(space) = self.space(pid) else { return EINVAL };
        let before = SeamCounts::now();
        let done = self.vm.mm.protect_range(space, addr, pages, perm);
        self.tally("mprotect", &before);
        match done {
            Ok(_) => 0,
            Err(PvError::NotMapped { .. } | PvError::NotUserAddress { .. }) => ENOMEM,
            Err(e) => {
                kprintln!("pid {pid}: mprotect({addr:#x}, {pages} pages): {e}");
                EINVAL
            }
        }
    }

    /// Tears down every space still held (processes that never ran).
    pub fn teardown(mut self) -> Result<(), PvError> {
        let mm = self.vm.mm;
        mm.activate_init()?;
        let mut first = Ok(());
        for (i, p) in self.procs.iter_mut().enumerate() {
            if let Some(space) = p.space.take() {
                if let Err((e, space)) = mm.exit(space) {
                    kprintln!("pid {}: exit of its address space failed: {e}", i + 1);
                    elf_load::discard(&self.vm, space);
                    first = first.and(Err(e));
                }
            }
        }
        first
    }
}

/// `page`, known to be below `USER_LIMIT`, as a `VirtAddr`.
fn bad_addr(page: u64) -> pvops::VirtAddr {
    pvops::VirtAddr::new_const(page & (USER_LIMIT - 1))
}

/// Pages of a page-aligned, non-empty range inside the user half.
fn user_pages(addr: u64, len: u64) -> Option<u64> {
    let pages = len.div_ceil(PAGE_SIZE);
    let end = addr.checked_add(pages.checked_mul(PAGE_SIZE)?)?;
    (addr.is_multiple_of(PAGE_SIZE) && len != 0 && end <= USER_LIMIT).then_some(pages)
}

/// What the run of the program showed, for the `RESULT` line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    /// Expected checks reported passing.
    pub passed: usize,
    /// Expected checks.
    pub total: usize,
    /// Pages copied by COW faults during the run.
    pub cow_copies: u64,
    /// Bad ELF images and failed loads refused with nothing left behind / tried.
    pub elf_refused: (u32, u32),
    /// pid 1 exited 0 and every space was given back.
    pub clean_exit: bool,
}

impl Summary {
    /// Everything held.
    pub fn ok(&self) -> bool {
        self.passed == self.total && self.total > 0 && self.clean_exit && self.elf_refused.0 == self.elf_refused.1
    }
}

/// Loads and runs the ELF program, then judges what it reported.
pub fn run(vm: &Vm) -> Summary {
    let refused = elf_load::check_refusals(vm);
    let mut s = Summary { total: EXPECTED.len(), elf_refused: (refused.ok, refused.tried), ..Summary::default() };
    let copies_before = vm.mm.cow_copies();
    let mut progs = match Programs::load(*vm, elf_load::USER_PROG) {
        Ok(p) => p,
        Err(e) => {
            kprintln!("user program: not loaded: {e}");
            return s;
        }
    };
    kprintln!("user program: {} bytes of ELF loaded as pid 1", elf_load::USER_PROG.len());
    let ran = progs.run(1);
    if let Err(e) = &ran {
        kprintln!("user program: the kernel failed running it: {e}");
    }
    s.cow_copies = vm.mm.cow_copies() - copies_before;
    let first_report = |name: &str| progs.reports.iter().find(|r| r.name == name);
    s.passed = EXPECTED.iter().filter(|n| first_report(n).is_some_and(|r| r.ok)).count();
    for n in EXPECTED.iter().filter(|n| first_report(n).is_none()) {
        kprintln!("user program: check {n} was never reported");
    }
    let exited = progs.state(1) == Some(State::Exited(0));
    if !exited {
        kprintln!("user program: pid 1 ended {:?}", progs.state(1));
    }
    let faults = progs.faults_fixed;
    let mut costs = String::new();
    for (what, n, hc) in &progs.costs {
        costs += &alloc::format!(" {what}={n}x/{hc}hc");
    }
    kprintln!("PROGCOST {}{costs}", vm.ops.name());
    let torn = progs.teardown();
    s.clean_exit = ran.is_ok() && exited && torn.is_ok();
    kprintln!(
        "user program: {}/{} checks passed, {} pages copied on write, {faults} faults resolved",
        s.passed,
        s.total,
        s.cow_copies
    );
    s
}
