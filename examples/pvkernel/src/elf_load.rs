//! The user program's ELF image and its loading into a new address space
//! (`user_elf::load`: every check of the image, and an up-front memory
//! check, before anything is allocated; `map_range` per segment, the file
//! bytes copied in, a demand-zero stack; any error after `create` tears the
//! space down).
//!
//! The image of [`USER_PROG`] is `examples/user-prog`, built by `cargo
//! xtask` (static, non-PIE, at 0x400000) and embedded here. [`check_refusals`]
//! runs the loader on bad images at boot and checks, by the allocator's
//! counts, that each refusal left nothing behind.

use pvops::PvError;
use user_elf::load::Layout;
pub use user_elf::load::{LoadError, Loaded};
use user_elf::ElfError;

use crate::kprintln;
use crate::vm::Vm;

/// The user program's ELF image (`examples/user-prog`).
pub static USER_PROG: &[u8] = include_bytes!(env!("PVOPS_USER_PROG"));

/// Top of a program's stack (16-byte aligned; the first push goes below).
pub const STACK_TOP: u64 = 0x7000_0000_0000;
/// Pages reserved for the stack, demand-zero (touched ones only cost a frame).
pub const STACK_PAGES: u64 = 16;

/// Loads `bytes` into a new address space with the stack at [`STACK_TOP`].
pub fn load(vm: &Vm, bytes: &[u8]) -> Result<Loaded, LoadError> {
    user_elf::load::load(vm.mm, vm.mem, bytes, Layout { stack_top: STACK_TOP, stack_pages: STACK_PAGES })
}

/// Tears down a space that will not run.
pub fn discard(vm: &Vm, space: kernel_glue::AddressSpace) {
    user_elf::load::discard(vm.mm, space);
}

/// What [`check_refusals`] saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct Refusals {
    /// Bad images refused with the expected error and nothing left behind.
    pub ok: u32,
    /// Bad images tried.
    pub tried: u32,
}

/// Every bad image of `user_elf::craft`, a truncated [`USER_PROG`] and an
/// image with more `.bss` than memory must be refused with its error, and the real program loaded with one frame
/// allocation failing (the first ones each, then every 8th) must fail with
/// `OutOfMemory`; after each, the allocator's free count (which the loader
/// never touches directly) must be what it was before: nothing left behind.
pub fn check_refusals(vm: &Vm) -> Refusals {
    let mut r = Refusals::default();
    // `before`: free frames and allocations made before the load; `up_front`:
    // the refusal must come before any frame is allocated.
    let mut judge = |name: &str,
                     got: Result<Loaded, LoadError>,
                     want: &dyn Fn(&LoadError) -> bool,
                     before: (u64, u64),
                     up_front: bool| {
        r.tried += 1;
        let left = before.0 as i64 - vm.frames.free_count() as i64;
        let allocated = vm.frames.allocations() - before.1;
        let verdict = match got {
            Ok(l) => {
                discard(vm, l.space);
                Err("loaded")
            }
            Err(e) if !want(&e) => {
                kprintln!("elf refusal {name}: got {e}");
                Err("wrong error")
            }
            Err(_) if left != 0 => Err("frames left behind"),
            Err(_) if up_front && allocated != 0 => Err("frames allocated before the refusal"),
            Err(_) => Ok(()),
        };
        match verdict {
            Ok(()) => r.ok += 1,
            Err(why) => kprintln!("elf refusal {name}: FAILED: {why} ({left} frames left)"),
        }
    };
    let now = || (vm.frames.free_count(), vm.frames.allocations());
    for case in user_elf::craft::bad_cases() {
        let before = now();
        judge(case.name, load(vm, &case.bytes), &|e| *e == LoadError::Elf(case.expect), before, true);
    }
    // Well-formed, but its .bss (64 GiB) is more than the machine has.
    let huge = user_elf::craft::huge_bss();
    let before = now();
    let oom = |e: &LoadError| *e == LoadError::Mm(PvError::OutOfMemory);
    judge("bss-larger-than-memory", load(vm, &huge), &oom, before, true);
    let before = now();
    let truncated = |e: &LoadError| matches!(e, LoadError::Elf(ElfError::Truncated { .. }));
    judge("user-prog-truncated", load(vm, &USER_PROG[..USER_PROG.len() / 2]), &truncated, before, true);
    let mut k = 0;
    loop {
        let before = now();
        vm.frames.fail_allocation_after(Some(k));
        let got = load(vm, USER_PROG);
        let armed = vm.frames.injection_armed();
        vm.frames.fail_allocation_after(None);
        if armed {
            // Fewer than k + 1 allocations: the whole load, which must work.
            match got {
                Ok(l) => discard(vm, l.space),
                Err(e) => {
                    kprintln!("elf loader: loading user-prog failed: {e}");
                    r.tried += 1;
                }
            }
            break;
        }
        judge("user-prog-out-of-memory", got, &oom, before, false);
        k += if k < 8 { 1 } else { 8 };
    }
    kprintln!("elf loader: {}/{} bad images and failed loads refused with nothing left behind", r.ok, r.tried);
    r
}
