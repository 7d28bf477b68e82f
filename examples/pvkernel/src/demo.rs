//! Phase-1 workload: build a user address space, run a user program that
//! prints through `syscall`, then reads a kernel address (must #PF and be
//! caught), run a second one that does syscall round trips and exits, then
//! leave QEMU with "pass".

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::arch::global_asm;

use crate::exit::{self, ExitCode};
use crate::memory;
use crate::paging::{self, UserSpaceBuilder};
use crate::platform;
use crate::user::{self, UserExit};
use crate::{directmap, kprintln};

/// User VA of the code page.
pub const USER_CODE_VA: u64 = 0x40_0000;
/// User VA of the (single) stack page.
pub const USER_STACK_VA: u64 = 0x80_0000;
/// Number of null syscalls the second program makes.
pub const ROUND_TRIPS: u64 = 1000;

// Position-independent user program, copied into a user page.
global_asm!(
    r#"
    .section .rodata.user_prog, "a"
    .p2align 4
    .globl user_prog_start, user_prog_entry2, user_prog_end
user_prog_start:
    /* program 1: hello, then read a kernel address */
    lea .Luser_msg(%rip), %rdi
    mov $(.Luser_msg_end - .Luser_msg), %esi
    mov $1, %eax                    /* write */
    syscall
    mov $2, %eax                    /* probe -> kernel address */
    syscall
    mov (%rax), %rbx                /* must fault */
    mov $0xbad, %edi
    xor %eax, %eax                  /* exit(0xbad) */
    syscall
    ud2
user_prog_entry2:
    /* program 2: N null syscalls (checks r12 survives), then exit(42) */
    mov ${round_trips}, %r12d
.Lloop:
    mov $3, %eax
    syscall
    test %rax, %rax
    jnz .Lbad
    dec %r12d
    jnz .Lloop
    mov $42, %edi
    xor %eax, %eax
    syscall
    ud2
.Lbad:
    mov $0xbad2, %edi
    xor %eax, %eax
    syscall
    ud2
.Luser_msg:
    .ascii "hello from user\n"
.Luser_msg_end:
user_prog_end:
"#,
    round_trips = const ROUND_TRIPS,
    options(att_syntax)
);

extern "C" {
    static user_prog_start: u8;
    static user_prog_entry2: u8;
    static user_prog_end: u8;
}

fn user_program() -> (&'static [u8], u64) {
    // SAFETY: the three labels delimit one contiguous .rodata blob.
    unsafe {
        let start = &raw const user_prog_start;
        let end = &raw const user_prog_end;
        let entry2 = &raw const user_prog_entry2;
        let len = end as usize - start as usize;
        (core::slice::from_raw_parts(start, len), (entry2 as usize - start as usize) as u64)
    }
}

fn print_memory() {
    let free = memory::free_frames();
    kprintln!(
        "memory: {} RAM pages, {} free pages in {} ranges, direct map {:?}",
        memory::ram_ranges().total(),
        free.total(),
        free.as_slice().len(),
        directmap::mapped_ranges().as_slice()
    );
    for r in free.as_slice() {
        kprintln!("  free {}", r);
    }
}

fn heap_check() {
    use core::hint::black_box;
    let mut v: Vec<u64> = Vec::new();
    for i in 0..10_000u64 {
        black_box(&mut v).push(i * i);
    }
    let b = black_box(Box::new([7u8; 3000]));
    let (in_use, size) = crate::heap::usage();
    let sum: u64 = black_box(&v).iter().sum();
    if sum != 333_283_335_000 || b[2999] != 7 || in_use < 80_000 {
        panic!("heap check failed (sum {}, in use {})", sum, in_use);
    }
    drop(v);
    drop(b);
    let (after, _) = crate::heap::usage();
    if after != 0 {
        panic!("heap leak: {} bytes still in use", after);
    }
    kprintln!("heap: ok ({} KiB in use at peak check, {} KiB total)", in_use / 1024, size / 1024);
}

/// The phase-1 demo. Never returns.
pub fn run() -> ! {
    let p = platform::get();
    kprintln!("pvkernel: booted via {} entry ({:?})", p.entry_name(), p);
    print_memory();

    heap_check();

    let (code, entry2) = user_program();
    let code_pfn = memory::alloc_frame().unwrap_or_else(|| panic!("no frame for user code"));
    let stack_pfn = memory::alloc_frame().unwrap_or_else(|| panic!("no frame for user stack"));
    // SAFETY: fresh frames, writable through the direct map; code.len() < 4096.
    unsafe {
        let dst = directmap::pfn_to_virt(code_pfn);
        core::ptr::write_bytes(dst, 0xcc, 4096);
        core::ptr::copy_nonoverlapping(code.as_ptr(), dst, code.len());
        core::ptr::write_bytes(directmap::pfn_to_virt(stack_pfn), 0, 4096);
    }
    let mut b = UserSpaceBuilder::new().unwrap_or_else(|e| panic!("user space: {}", e));
    if let Err(e) = b.map_page(USER_CODE_VA, code_pfn, false) {
        panic!("map user code: {}", e);
    }
    if let Err(e) = b.map_page(USER_STACK_VA, stack_pfn, true) {
        panic!("map user stack: {}", e);
    }
    let root = b.finish().unwrap_or_else(|e| panic!("user root: {}", e));
    kprintln!("user space: root pfn {:#x}, kernel root pfn {:#x}", root.pfn(), paging::kernel_root().pfn());

    let probe = crate::entry::kernel_image_range().0;
    let stack_top = USER_STACK_VA + 4096;
    match user::run_user(USER_CODE_VA, stack_top, root) {
        UserExit::Faulted(f) if f.vector == 14 && f.addr == probe && f.error_code & 4 != 0 => {
            kprintln!("user task 1 killed: #PF at {:#x} (error {:#x}) rip {:#x}", f.addr, f.error_code, f.rip);
            kprintln!("user isolation: ok");
        }
        other => {
            kprintln!("user isolation: FAILED ({:?})", other);
            exit::exit(ExitCode::Fail);
        }
    }

    match user::run_user(USER_CODE_VA + entry2, stack_top, root) {
        UserExit::Exited(42) => kprintln!("user task 2: {} syscall round trips, exit(42): ok", ROUND_TRIPS),
        other => {
            kprintln!("user task 2: FAILED ({:?})", other);
            exit::exit(ExitCode::Fail);
        }
    }

    kprintln!("pvkernel: all phase-1 checks passed on {}", p.entry_name());
    exit::exit(ExitCode::Pass)
}
