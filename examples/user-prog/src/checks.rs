//! What the program checks, from user space. Each check returns its verdict
//! and one figure, printed and reported to the kernel (`pvops_report`).
//! Memory is read and written by plain loads and stores (volatile, so each
//! one really happens): the hardware, not the kernel's word, says what a
//! process sees. The kernel's counters (`pvops_stat`) are only used for
//! what user space cannot see: frames in use and pages copied.

use core::ptr::{read_volatile, write_volatile};

use crate::sys::{self, PROT_READ, PROT_WRITE};

const PAGE: u64 = 4096;
const RW: u64 = PROT_READ | PROT_WRITE;
/// Top of the user half (x86-64, 4-level paging).
const USER_LIMIT: u64 = 0x8000_0000_0000;

/// A check: its name (the kernel expects each one) and its body.
pub type Check = (&'static str, fn() -> (bool, i64));

/// Every check, in order.
pub const CHECKS: &[Check] = &[
    ("getpid", getpid),
    ("sparse_mmap", sparse_mmap),
    ("fork_cow", fork_cow),
    ("cow_oom", cow_oom),
    ("mprotect_kill", mprotect_kill),
    ("munmap_kill", munmap_kill),
    ("exec_nx", exec_nx),
    ("fork_exit_100", fork_exit_100),
    ("bad_calls", bad_calls),
];

fn peek(addr: u64) -> u64 {
    // SAFETY: a user address: either mapped (the read is plain memory) or
    // not, and then the access faults into the kernel, which zero-fills,
    // copies, or kills this process on purpose (the checks below rely on it).
    unsafe { read_volatile(addr as *const u64) }
}

fn poke(addr: u64, value: u64) {
    // SAFETY: as for `peek`; nothing else holds a reference to these
    // addresses (mmap'd regions and `PAGES` are only used through here).
    unsafe { write_volatile(addr as *mut u64, value) }
}

/// `Some(code)` if `status` says the child exited.
fn exited(status: u32) -> Option<u32> {
    (status & 0x7f == 0).then_some((status >> 8) & 0xff)
}

/// `Some((signal, pvkernel's reason))` if `status` says the child was killed.
fn killed(status: u32) -> Option<(u32, u32)> {
    let sig = status & 0x7f;
    (sig != 0 && sig != 0x7f).then_some((sig, (status >> 8) & 0xff))
}

fn frames() -> i64 {
    sys::stat(sys::STAT_FRAMES_IN_USE)
}

/// getpid in the parent, getpid in a child (its exit code), and what fork
/// and wait4 said about that child all agree.
fn getpid() -> (bool, i64) {
    let me = sys::getpid();
    let child = sys::fork();
    if child == 0 {
        sys::exit((sys::getpid() & 0xff) as u64);
    }
    let (reaped, status) = sys::wait(child);
    let ok = me >= 1 && child > 0 && child != me && reaped == child && exited(status) == Some((child & 0xff) as u32);
    crate::say!("  getpid: parent {me}, child {child} exited with {:?}", exited(status));
    (ok, me)
}

/// A 256 MiB anonymous mapping touched at 4 pages costs those 4 frames and
/// a few page tables, not 65536 frames; the touched pages read back, the
/// rest of each is zero; munmap gives the frames back.
fn sparse_mmap() -> (bool, i64) {
    const LEN: u64 = 256 << 20;
    const TOUCH: [u64; 4] = [0, (64 << 20) + 5 * PAGE, (128 << 20) + 17 * PAGE, LEN - PAGE];
    const TABLES: i64 = 8;
    let before = frames();
    let base = sys::mmap(0, LEN, RW, false);
    if base < 0 {
        crate::say!("  sparse_mmap: mmap failed {base}");
        return (false, base);
    }
    let base = base as u64;
    let reserved = frames() - before;
    for (i, off) in TOUCH.iter().enumerate() {
        poke(base + off, 0x5eed_0000 + i as u64);
    }
    let cost = frames() - before;
    let read_back = TOUCH.iter().enumerate().all(|(i, off)| peek(base + off) == 0x5eed_0000 + i as u64)
        && TOUCH.iter().all(|off| peek(base + off + 8) == 0 && peek(base + (off | (PAGE - 8))) == 0);
    // SAFETY: nothing refers into the region any more.
    let unmapped = unsafe { sys::munmap(base, LEN) };
    let left = frames() - before;
    crate::say!(
        "  sparse_mmap: {} MiB at {base:#x}: {reserved} frames after mmap, {cost} after touching {} pages, {left} after munmap",
        LEN >> 20,
        TOUCH.len()
    );
    let touched = TOUCH.len() as i64;
    let ok = read_back && unmapped == 0 && reserved <= TABLES && (touched..=touched + TABLES).contains(&cost);
    (ok && left <= TABLES, cost)
}

/// Pages of `PAGES`, the fork check's data.
const FORK_PAGES: usize = 64;

#[repr(C, align(4096))]
struct Pages([u8; FORK_PAGES * PAGE as usize]);

static mut PAGES: Pages = Pages([0; FORK_PAGES * PAGE as usize]);

fn page(i: usize) -> u64 {
    (&raw mut PAGES) as u64 + i as u64 * PAGE
}

/// After fork, parent and child each see their own writes and only the
/// pages written were copied: fork itself copies nothing (its frame cost is
/// page tables, far below the 64 data pages), the child writes pages 0 and
/// 1 and the parent page 2, so the copies are those 3 plus the stack pages
/// the two write (at most 2 more).
fn fork_cow() -> (bool, i64) {
    const PARENT: u64 = 0xa11c_e000_0000_0000;
    const CHILD: u64 = 0xc41d_0000_0000_0000;
    for i in 0..FORK_PAGES {
        poke(page(i), PARENT + i as u64);
    }
    let frames_before = frames();
    let copies_before = sys::stat(sys::STAT_COW_COPIES);
    let child = sys::fork();
    if child == 0 {
        let saw_parent = (0..FORK_PAGES).all(|i| peek(page(i)) == PARENT + i as u64);
        poke(page(0), CHILD);
        poke(page(1), CHILD + 1);
        let own = peek(page(0)) == CHILD && peek(page(1)) == CHILD + 1 && peek(page(2)) == PARENT + 2;
        sys::exit(if saw_parent && own { 0 } else { 1 });
    }
    let fork_cost = frames() - frames_before;
    poke(page(2), PARENT + 0x222);
    let (reaped, status) = sys::wait(child);
    let copies = sys::stat(sys::STAT_COW_COPIES) - copies_before;
    let own = peek(page(0)) == PARENT && peek(page(1)) == PARENT + 1 && peek(page(2)) == PARENT + 0x222;
    let rest = (3..FORK_PAGES).all(|i| peek(page(i)) == PARENT + i as u64);
    crate::say!(
        "  fork_cow: fork cost {fork_cost} frames for {FORK_PAGES} data pages; child {:?}; parent sees its own pages: {own}; {copies} pages copied",
        exited(status)
    );
    let ok = child > 0
        && reaped == child
        && exited(status) == Some(0)
        && own
        && rest
        && fork_cost < FORK_PAGES as i64 / 2
        && (3..=5).contains(&copies);
    (ok, copies)
}

/// A child whose next frame allocation fails writes a page it shares with
/// its parent: the copy cannot be made, so it dies of the page fault there
/// (reason: out of memory); the parent's page is unchanged and no frame is
/// left behind once the child is reaped.
fn cow_oom() -> (bool, i64) {
    const VALUE: u64 = 0x00c0_ffee;
    poke(page(5), VALUE);
    let before = frames();
    let child = sys::fork();
    if child == 0 {
        if sys::fail_alloc(0) != 0 {
            sys::exit(2);
        }
        poke(page(5), 0x0bad);
        sys::exit(3);
    }
    let (reaped, status) = sys::wait(child);
    let at = sys::fault_addr(child);
    let left = frames() - before;
    let parent_ok = peek(page(5)) == VALUE;
    crate::say!("  cow_oom: child status {status:#x}, fault at {at:#x} (page {:#x}); {left} frames left; parent's page intact: {parent_ok}", page(5));
    let ok = reaped == child
        && killed(status) == Some((sys::SIGSEGV, sys::KILL_OUT_OF_MEMORY))
        && at as u64 == page(5)
        && left == 0
        && parent_ok;
    (ok, status as i64)
}

/// A child makes a page read-only, reads it, writes it: it dies of a page
/// fault at that address (reason: write to read-only), and the parent's
/// own mapping of the page stays writable.
fn mprotect_kill() -> (bool, i64) {
    let page = sys::mmap(0, PAGE, RW, false);
    if page < 0 {
        return (false, page);
    }
    let page = page as u64;
    poke(page, 0x0123);
    let child = sys::fork();
    if child == 0 {
        // SAFETY: the write below is meant to kill this process.
        if unsafe { sys::mprotect(page, PAGE, PROT_READ) } != 0 {
            sys::exit(2);
        }
        if peek(page) != 0x0123 {
            sys::exit(3);
        }
        poke(page, 0x0bad);
        sys::exit(4);
    }
    let (reaped, status) = sys::wait(child);
    let at = sys::fault_addr(child);
    poke(page, 0x4567);
    let parent_ok = peek(page) == 0x4567;
    // SAFETY: nothing refers into the page any more.
    let unmapped = unsafe { sys::munmap(page, PAGE) };
    crate::say!("  mprotect_kill: child status {status:#x}, fault at {at:#x} (page {page:#x}); parent still writes: {parent_ok}");
    let ok = reaped == child
        && killed(status) == Some((sys::SIGSEGV, sys::KILL_WRITE_TO_READ_ONLY))
        && at as u64 == page
        && parent_ok
        && unmapped == 0;
    (ok, status as i64)
}

/// A child unmaps the first of two pages, reads the second, then the first:
/// it dies of a page fault there (reason: not mapped); the parent's two
/// pages are untouched.
fn munmap_kill() -> (bool, i64) {
    let base = sys::mmap(0, 2 * PAGE, RW, false);
    if base < 0 {
        return (false, base);
    }
    let base = base as u64;
    poke(base, 0x1111);
    poke(base + PAGE, 0x2222);
    let child = sys::fork();
    if child == 0 {
        // SAFETY: the read below is meant to kill this process.
        if unsafe { sys::munmap(base, PAGE) } != 0 {
            sys::exit(2);
        }
        if peek(base + PAGE) != 0x2222 {
            sys::exit(3);
        }
        let _ = peek(base);
        sys::exit(4);
    }
    let (reaped, status) = sys::wait(child);
    let at = sys::fault_addr(child);
    let parent_ok = peek(base) == 0x1111 && peek(base + PAGE) == 0x2222;
    // SAFETY: nothing refers into the region any more.
    let unmapped = unsafe { sys::munmap(base, 2 * PAGE) };
    crate::say!("  munmap_kill: child status {status:#x}, fault at {at:#x} (page {base:#x}); parent's pages intact: {parent_ok}");
    let ok = reaped == child
        && killed(status) == Some((sys::SIGSEGV, sys::KILL_NOT_MAPPED))
        && at as u64 == base
        && parent_ok
        && unmapped == 0;
    (ok, status as i64)
}

/// A child calls code it wrote into an anonymous read-write page: the
/// fetch faults (the page is no-execute), and the child dies of it at that
/// address (reason: fetch from a no-execute page), not in a fault loop.
fn exec_nx() -> (bool, i64) {
    const RET: u64 = 0xc3;
    let page = sys::mmap(0, PAGE, RW, false);
    if page < 0 {
        return (false, page);
    }
    let page = page as u64;
    poke(page, RET);
    let child = sys::fork();
    if child == 0 {
        // SAFETY: a function pointer to a `ret` instruction; the call is
        // meant to fault before it runs (the page is mapped no-execute).
        let f = unsafe { core::mem::transmute::<usize, extern "C" fn()>(page as usize) };
        f();
        sys::exit(2);
    }
    let (reaped, status) = sys::wait(child);
    let at = sys::fault_addr(child);
    // SAFETY: nothing refers into the page any more.
    let unmapped = unsafe { sys::munmap(page, PAGE) };
    crate::say!("  exec_nx: child status {status:#x}, fault at {at:#x} (page {page:#x})");
    let ok = reaped == child
        && killed(status) == Some((sys::SIGSEGV, sys::KILL_NO_EXECUTE))
        && at as u64 == page
        && unmapped == 0;
    (ok, status as i64)
}

/// 100 fork/exit/wait cycles: every child's exit code comes back, and the
/// frames in use are the same after as before.
fn fork_exit_100() -> (bool, i64) {
    let before = frames();
    let mut bad = 0;
    for i in 0..100u32 {
        let child = sys::fork();
        if child == 0 {
            sys::exit(u64::from(i));
        }
        let (reaped, status) = sys::wait(child);
        if child <= 0 || reaped != child || exited(status) != Some(i) {
            bad += 1;
        }
    }
    let leaked = frames() - before;
    crate::say!("  fork_exit_100: {bad} bad cycles, {leaked} frames more in use than before");
    (bad == 0 && leaked == 0, leaked)
}

/// Bad arguments are refused with Linux's errno and change nothing; the
/// code page still runs afterwards (this very function returning is that).
fn bad_calls() -> (bool, i64) {
    let before = frames();
    let odd = 0x1000_0000_0800;
    // SAFETY: refused before anything changes (unaligned, or beyond the user half).
    let (munmap_odd, munmap_high) = unsafe { (sys::munmap(odd, PAGE), sys::munmap(USER_LIMIT, PAGE)) };
    // SAFETY: refused before anything changes (unaligned, or nothing mapped there).
    let (mprotect_odd, mprotect_hole) =
        unsafe { (sys::mprotect(odd, PAGE, PROT_READ), sys::mprotect(0x5000_0000_0000, PAGE, PROT_READ)) };
    // The program's own code page: MAP_FIXED never replaces a mapping here
    // (Linux would; pvkernel treats it as MAP_FIXED_NOREPLACE).
    let code_page = (fork_cow as *const () as u64) & !(PAGE - 1);
    let cases: [(&str, i64, i64); 9] = [
        ("mmap over the code", sys::mmap(code_page, PAGE, RW, true), -sys::EEXIST),
        ("mmap across USER_LIMIT", sys::mmap(USER_LIMIT - PAGE, 2 * PAGE, RW, true), -sys::ENOMEM),
        ("mmap at USER_LIMIT", sys::mmap(USER_LIMIT, PAGE, RW, true), -sys::ENOMEM),
        ("mmap of 0 bytes", sys::mmap(0, 0, RW, false), -sys::EINVAL),
        ("mmap unaligned fixed", sys::mmap(odd, PAGE, RW, true), -sys::EINVAL),
        ("munmap unaligned", munmap_odd, -sys::EINVAL),
        ("munmap beyond USER_LIMIT", munmap_high, -sys::EINVAL),
        ("mprotect unaligned", mprotect_odd, -sys::EINVAL),
        ("mprotect unmapped", mprotect_hole, -sys::ENOMEM),
    ];
    let mut refused = 0;
    for (what, got, want) in cases {
        if got == want {
            refused += 1;
        } else {
            crate::say!("  bad_calls: {what}: got {got}, expected {want}");
        }
    }
    let unchanged = frames() == before;
    crate::say!("  bad_calls: {refused}/{} refused with the right errno; frames unchanged: {unchanged}", cases.len());
    (refused == cases.len() && unchanged, refused as i64)
}
