//! User processes on kernel-glue address spaces.
//!
//! A process is an [`AddressSpace`] (built with `Mm::create`/`map`/`poke`,
//! or `Mm::fork`) plus its user registers. Before a process runs, the kernel
//! loads its address space with `Mm::activate` — the backend's `write_cr3`:
//! natively `cr3`, on Xen `NEW_BASEPTR` + `NEW_USER_BASEPTR` of its user pgd.
//! It enters user mode (`iretq` / the `iret` hypercall) and comes back on a
//! `syscall` or an exception ([`crate::user`]).
//!
//! Scheduling is run-to-completion: `wait(pid)` runs that child until it
//! exits or is killed, then the parent continues. A user-mode fault kills
//! only the process that took it.
//!
//! The program (position independent, below) prints through `write`, forks
//! a child that overwrites its copy of the data page and exits, checks that
//! its own page is unchanged (`check` reports what it read), then forks two
//! more children that read and write a kernel address: each must page-fault,
//! be caught and killed, while the parent lives on and exits.
//!
//! The same machinery runs the isolation attack suite ([`crate::attacks`]):
//! its driver is a process here, and `attack(n)` runs each attacker as a
//! process outside `procs`, reaped before the call returns.

use alloc::vec::Vec;
use core::arch::global_asm;

use kernel_glue::{AddressSpace, PageFlags};
use pvops::{PvError, PAGE_SIZE};

use crate::user::{UserExit, UserFault, UserTask};
use crate::vm::Vm;
use crate::{console, directmap, kprintln};

/// User VA of the program's first code page.
pub const USER_CODE_VA: u64 = 0x40_0000;
/// User VA of the stack page.
pub const USER_STACK_VA: u64 = 0x80_0000;
/// User VA of the data page whose copies fork must keep apart.
pub const USER_DATA_VA: u64 = 0x60_0000;
/// What the parent's data page holds (written by the kernel at load time).
pub const PARENT_VALUE: u64 = 0x1111_2222_3333_4444;
/// What the first child writes into its copy.
pub const CHILD_VALUE: u64 = 0x5555_6666_7777_8888;
/// The first child's exit code.
pub const CHILD_EXIT: u64 = 0x77;

/// Syscall numbers (number in rax; arguments in rdi, rsi; result in rax).
pub mod sys {
    /// `exit(code)`.
    pub const EXIT: u64 = 0;
    /// `write(buf, len) -> len`: print to the kernel console.
    pub const WRITE: u64 = 1;
    /// `probe() -> addr`: a kernel address user mode must not reach.
    pub const PROBE: u64 = 2;
    /// `fork() -> pid` (0 in the child).
    pub const FORK: u64 = 3;
    /// `wait(pid) -> status`: runs the child to its end; its exit code, or
    /// [`super::KILLED`] | vector << 16 | error code if it was killed.
    pub const WAIT: u64 = 4;
    /// `check(value)`: the parent reports what it reads in its data page.
    pub const CHECK: u64 = 5;
    /// `attack(n, seen) -> status`: runs isolation attack `n` (1-based) in a
    /// new process, reaps it and returns its status as `wait` does; `seen` is
    /// what the caller just read from its own secret page. `-ENOENT` past
    /// the last attack ([`crate::attacks`]).
    pub const ATTACK: u64 = 6;
    /// `unmap(va) -> 0`: unmaps the page at `va` from the caller's own,
    /// loaded address space (`Mm::unmap`, which must flush the TLB entry).
    pub const UNMAP: u64 = 7;
}

/// Status bit: the child was killed by an exception.
pub const KILLED: u64 = 1 << 62;
/// `-ENOSYS`.
pub const ENOSYS: u64 = (-38i64) as u64;
const EFAULT: u64 = (-14i64) as u64;
const ECHILD: u64 = (-10i64) as u64;
const ENOMEM: u64 = (-12i64) as u64;

global_asm!(
    r#"
    .section .rodata.user_prog, "a"
    .p2align 4
    .globl user_prog_start, user_prog_end
user_prog_start:
    lea .Lhello(%rip), %rdi
    mov $(.Lhello_end - .Lhello), %esi
    mov ${write}, %eax
    syscall
    /* fork 1: the child overwrites its copy of the data page */
    mov ${fork}, %eax
    syscall
    test %rax, %rax
    jz .Lchild_copy
    js .Lfail
    mov %rax, %rdi
    mov ${wait}, %eax
    syscall
    cmp ${child_exit}, %rax
    jne .Lfail
    movabs ${data_va}, %rbx
    mov (%rbx), %rdi
    mov ${check}, %eax
    syscall
    /* fork 2: the child reads a kernel address */
    mov ${fork}, %eax
    syscall
    test %rax, %rax
    jz .Lchild_read
    js .Lfail
    mov %rax, %rdi
    mov ${wait}, %eax
    syscall
    /* fork 3: the child writes a kernel address */
    mov ${fork}, %eax
    syscall
    test %rax, %rax
    jz .Lchild_write
    js .Lfail
    mov %rax, %rdi
    mov ${wait}, %eax
    syscall
    /* fork 4: the child reads its data page, has it unmapped, reads again:
       wait must report a page fault (killed | vector 14 << 16 | error) */
    mov ${fork}, %eax
    syscall
    test %rax, %rax
    jz .Lchild_unmap
    js .Lfail
    mov %rax, %rdi
    mov ${wait}, %eax
    syscall
    shr $16, %rax
    movabs ${killed_pf}, %rbx
    cmp %rbx, %rax
    jne .Lfail
    lea .Lbye(%rip), %rdi
    mov $(.Lbye_end - .Lbye), %esi
    mov ${write}, %eax
    syscall
    xor %edi, %edi
    mov ${exit}, %eax
    syscall
    ud2
.Lfail:
    mov $0xbad, %edi
    mov ${exit}, %eax
    syscall
    ud2
.Lchild_copy:
    movabs ${data_va}, %rbx
    movabs ${child_value}, %rax
    mov %rax, (%rbx)
    cmp (%rbx), %rax
    jne .Lfail
    lea .Lchild(%rip), %rdi
    mov $(.Lchild_end - .Lchild), %esi
    mov ${write}, %eax
    syscall
    mov ${child_exit}, %edi
    mov ${exit}, %eax
    syscall
    ud2
.Lchild_read:
    mov ${probe}, %eax
    syscall
    mov (%rax), %rbx                /* must fault */
    mov $0xbad1, %edi
    mov ${exit}, %eax
    syscall
    ud2
.Lchild_write:
    mov ${probe}, %eax
    syscall
    movq $0x42, (%rax)              /* must fault */
    mov $0xbad2, %edi
    mov ${exit}, %eax
    syscall
    ud2
.Lchild_unmap:
    movabs ${data_va}, %rbx
    mov (%rbx), %rax                /* the translation is now in the TLB */
    mov %rbx, %rdi
    mov ${unmap}, %eax
    syscall
    test %rax, %rax
    jnz .Lfail
    mov (%rbx), %rax                /* must fault: a stale TLB entry reads on */
    mov $0xbad3, %edi
    mov ${exit}, %eax
    syscall
    ud2
.Lhello:
    .ascii "user: hello from the parent, forking\n"
.Lhello_end:
.Lchild:
    .ascii "user: child wrote its copy of the data page\n"
.Lchild_end:
.Lbye:
    .ascii "user: parent done, exiting\n"
.Lbye_end:
user_prog_end:
"#,
    write = const sys::WRITE,
    fork = const sys::FORK,
    wait = const sys::WAIT,
    check = const sys::CHECK,
    exit = const sys::EXIT,
    probe = const sys::PROBE,
    unmap = const sys::UNMAP,
    killed_pf = const (KILLED | (14 << 16)) >> 16,
    data_va = const USER_DATA_VA,
    child_value = const CHILD_VALUE,
    child_exit = const CHILD_EXIT,
    options(att_syntax)
);

extern "C" {
    static user_prog_start: u8;
    static user_prog_end: u8;
}

/// The user program's bytes.
pub fn user_program() -> &'static [u8] {
    // SAFETY: the two labels delimit one contiguous blob in .rodata.
    unsafe {
        let start = &raw const user_prog_start;
        let end = &raw const user_prog_end;
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not finished.
    Runnable,
    /// Called `exit(code)`.
    Exited(u64),
    /// Killed by a user-mode exception.
    Killed(UserFault),
}

/// One process.
#[derive(Debug)]
pub struct Process {
    /// Its address space.
    pub space: AddressSpace,
    /// Its registers.
    pub task: UserTask,
    /// How it ended.
    pub state: State,
}

/// Every process of the workload; pid = index + 1.
pub struct Processes {
    pub(crate) vm: Vm,
    probe_va: u64,
    /// All processes (never removed before teardown). Attack processes are
    /// not among them: `attack` reaps each one before it returns.
    pub procs: Vec<Process>,
    /// The value the parent reported with `check`.
    pub checked: Option<u64>,
    /// What the attack processes did ([`crate::attacks`]).
    pub attacks: crate::attacks::Log,
}

impl core::fmt::Debug for Processes {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Processes({} procs)", self.procs.len())
    }
}

/// Loads the user program into a new address space: code pages (read-only,
/// executable), a data page holding [`PARENT_VALUE`] and a stack page.
pub fn load(vm: &Vm) -> Result<AddressSpace, PvError> {
    load_program(vm, user_program(), |space| vm.mm.poke(space, USER_DATA_VA, PARENT_VALUE))
}

/// Loads `code` into a new address space at [`USER_CODE_VA`] (read-only,
/// executable), maps a data page at [`USER_DATA_VA`] and a stack page at
/// [`USER_STACK_VA`] (both read-write, no-execute), then runs `setup` on it.
/// On any error the half-built space is torn down.
pub fn load_program(
    vm: &Vm,
    code: &[u8],
    setup: impl FnOnce(&AddressSpace) -> Result<(), PvError>,
) -> Result<AddressSpace, PvError> {
    let mm = vm.mm;
    let space = mm.create()?;
    let r = (|| {
        let pages = (code.len() as u64).div_ceil(PAGE_SIZE).max(1);
        for p in 0..pages {
            mm.map(&space, USER_CODE_VA + p * PAGE_SIZE, PageFlags::CODE)?;
        }
        for (i, chunk) in code.chunks(8).enumerate() {
            let mut word = [0xccu8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            mm.poke(&space, USER_CODE_VA + 8 * i as u64, u64::from_le_bytes(word))?;
        }
        mm.map(&space, USER_DATA_VA, PageFlags::DATA)?;
        mm.map(&space, USER_STACK_VA, PageFlags::DATA)?;
        setup(&space)
    })();
    match r {
        Ok(()) => Ok(space),
        Err(e) => {
            let _ = mm.exit(space);
            Err(e)
        }
    }
}

impl Processes {
    /// The first process, `pid 1`, in `space`.
    pub fn new(vm: Vm, space: AddressSpace, probe_va: u64) -> Self {
        let task = UserTask::new(USER_CODE_VA, USER_STACK_VA + PAGE_SIZE);
        Processes {
            vm,
            probe_va,
            procs: alloc::vec![Process { space, task, state: State::Runnable }],
            checked: None,
            attacks: crate::attacks::Log::default(),
        }
    }

    /// Runs process `pid` until it exits or is killed.
    pub fn run(&mut self, pid: usize) -> Result<(), PvError> {
        loop {
            self.switch_to(pid)?;
            let exit = self.procs[pid - 1].task.resume();
            let ret = match exit {
                UserExit::Syscall { nr, args } => match nr {
                    sys::EXIT => {
                        kprintln!("pid {pid}: exit({:#x})", args[0]);
                        self.procs[pid - 1].state = State::Exited(args[0]);
                        return Ok(());
                    }
                    sys::WRITE => write_user(&self.vm, &self.procs[pid - 1].space, args[0], args[1]),
                    sys::PROBE => self.probe_va,
                    sys::FORK => self.fork(pid)?,
                    sys::WAIT => self.wait(pid, args[0])?,
                    sys::CHECK => {
                        self.checked = Some(args[0]);
                        0
                    }
                    sys::ATTACK => crate::attacks::attack(self, pid, args[0], args[1])?,
                    sys::UNMAP => match self.vm.mm.unmap(&self.procs[pid - 1].space, args[0]) {
                        Ok(()) => 0,
                        Err(e) => {
                            kprintln!("pid {pid}: unmap({:#x}): {e}", args[0]);
                            EFAULT
                        }
                    },
                    _ => ENOSYS,
                },
                UserExit::Faulted(f) => {
                    kprintln!(
                        "pid {pid}: killed by {} at {:#x} (error {:#x}, rip {:#x})",
                        crate::traps::vector_name(f.vector),
                        f.addr,
                        f.error_code,
                        f.rip
                    );
                    self.procs[pid - 1].state = State::Killed(f);
                    return Ok(());
                }
            };
            self.procs[pid - 1].task.set_syscall_return(ret);
        }
    }

    /// Loads `pid`'s address space unless it is the active one.
    fn switch_to(&mut self, pid: usize) -> Result<(), PvError> {
        let mm = self.vm.mm;
        let space = &mut self.procs[pid - 1].space;
        if mm.active_pgd() != space.pgd() {
            mm.activate(space)?;
        }
        Ok(())
    }

    fn fork(&mut self, parent: usize) -> Result<u64, PvError> {
        let space = match self.vm.mm.fork(&self.procs[parent - 1].space) {
            Ok(s) => s,
            Err(PvError::OutOfMemory) => return Ok(ENOMEM),
            Err(e) => return Err(e),
        };
        #[cfg(feature = "broken-isolation")]
        expose_probe_page_in(&self.vm, &space)?;
        let mut task = UserTask { regs: self.procs[parent - 1].task.regs };
        task.set_syscall_return(0);
        self.procs.push(Process { space, task, state: State::Runnable });
        let child = self.procs.len();
        kprintln!("pid {parent}: fork -> pid {child}");
        Ok(child as u64)
    }

    fn wait(&mut self, parent: usize, child: u64) -> Result<u64, PvError> {
        let child = child as usize;
        if child <= parent || child > self.procs.len() {
            return Ok(ECHILD);
        }
        if self.procs[child - 1].state == State::Runnable {
            self.run(child)?;
        }
        Ok(match self.procs[child - 1].state {
            State::Exited(code) => code,
            State::Killed(f) => KILLED | (f.vector << 16) | (f.error_code & 0xffff),
            State::Runnable => ECHILD,
        })
    }

    /// Back to init_mm, then every address space is torn down.
    pub fn teardown(self) -> Result<(), PvError> {
        let mm = self.vm.mm;
        mm.activate_init()?;
        let mut first = Ok(());
        for (i, p) in self.procs.into_iter().enumerate() {
            if let Err((e, _)) = mm.exit(p.space) {
                kprintln!("pid {}: exit of its address space failed: {e}", i + 1);
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

/// `write(buf, len)` for a process running in `space`: copies the user
/// buffer page by page through the kernel's direct map (after checking each
/// page is mapped in `space`) to the console.
pub fn write_user(vm: &Vm, space: &AddressSpace, buf: u64, len: u64) -> u64 {
    let mut done = 0u64;
    while done < len.min(4096) {
        let va = buf.wrapping_add(done);
        let Ok(Some((frame, _))) = vm.mm.translate(space, va & !0xfff) else {
            return if done == 0 { EFAULT } else { done };
        };
        let off = va & 0xfff;
        let n = (PAGE_SIZE - off).min(len - done) as usize;
        let src = directmap::pfn_to_virt(frame.0).wrapping_add(off as usize);
        // SAFETY: `frame` is a user page of this process (just translated),
        // mapped by the direct map; `off + n <= 4096`.
        let bytes = unsafe { core::slice::from_raw_parts(src, n) };
        console::write_bytes(bytes);
        done += n as u64;
    }
    done
}

/// `broken-isolation` (test only) on Xen: the user pgd of `space` gets
/// init_mm's L4 entry covering the kernel probe page. Xen marks every page
/// of a PV64 guest user-accessible, so user mode then reaches kernel memory.
#[cfg(feature = "broken-isolation")]
pub fn expose_probe_page_in(vm: &Vm, space: &AddressSpace) -> Result<(), PvError> {
    use pvops::{Level, PvMmuOps, VirtAddr};
    if vm.ops.name() != "xen64" {
        return Ok(());
    }
    let slot = VirtAddr::try_new(crate::vm::KERNEL_PROBE_VA)?.index(Level::L4);
    let entry = vm.ops.read_entry(Level::L4, vm.mm.init_pgd(), slot)?;
    let user = pvops_xen64::attached_user_pgd(vm.frames, space.pgd())?
        .ok_or(PvError::WrongState { what: "broken-isolation: no user pgd" })?;
    vm.ops.set_entry(vm.frames, Level::L4, user, slot, entry)?;
    vm.ops.lazy_mmu_flush()?;
    log::warn!("broken-isolation: user pgd {user:?} maps kernel slot {slot}");
    Ok(())
}
