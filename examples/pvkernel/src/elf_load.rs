//! Loading a user program from its ELF image into a new address space.
//!
//! ```text
//! user_elf::parse(bytes)?            every check (truncation, overlap, user half, entry)
//!                                    before anything is allocated
//! mm.create()                        the space
//! per PT_LOAD segment: mm.map_range(first_page.., pages, R/W/X of the segment)
//!                      copy its file bytes in (the rest stays zero: .bss)
//! mm.reserve_zero(stack)             demand-zero stack below STACK_TOP
//! any error after create: mm.exit(space) — no partial space, no frame left
//! ```
//!
//! The image of [`USER_PROG`] is `examples/user-prog`, built by `cargo
//! xtask` (static, non-PIE, at 0x400000) and embedded here. [`check_refusals`]
//! runs the loader on bad images at boot and checks, by the allocator's free
//! count, that each refusal left nothing behind.

use alloc::vec::Vec;
use core::fmt;

use kernel_glue::{AddressSpace, PageFlags};
use pvops::{Pfn, PhysMem, PvError, PAGE_SIZE};
use user_elf::{ElfError, Image};

use crate::kprintln;
use crate::vm::Vm;

/// The user program's ELF image (`examples/user-prog`).
pub static USER_PROG: &[u8] = include_bytes!(env!("PVOPS_USER_PROG"));

/// Top of a program's stack (16-byte aligned; the first push goes below).
pub const STACK_TOP: u64 = 0x7000_0000_0000;
/// Pages reserved for the stack, demand-zero (touched ones only cost a frame).
pub const STACK_PAGES: u64 = 16;

/// Pages per `Mm::map_range` call while loading a segment.
const MAP_CHUNK: u64 = 512;

/// Why a program was not loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// The image was refused before anything was allocated.
    Elf(ElfError),
    /// Building the space failed; it was torn down.
    Mm(PvError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Elf(e) => write!(f, "{e}"),
            LoadError::Mm(e) => write!(f, "loading: {e}"),
        }
    }
}

/// A loaded program: its space and where its task starts.
#[derive(Debug)]
pub struct Loaded {
    pub space: AddressSpace,
    pub entry: u64,
    pub stack_top: u64,
}

/// Loads `bytes` into a new address space (see the module doc).
pub fn load(vm: &Vm, bytes: &[u8]) -> Result<Loaded, LoadError> {
    let image = user_elf::parse(bytes).map_err(LoadError::Elf)?;
    // More pages than free frames cannot load (a huge .bss, say): refused up
    // front, as Linux's overcommit check refuses the mapping, rather than
    // after taking every free frame.
    if image.pages() > vm.frames.free_frames() {
        return Err(LoadError::Mm(PvError::OutOfMemory));
    }
    let space = vm.mm.create().map_err(LoadError::Mm)?;
    match populate(vm, &space, &image) {
        Ok(()) => Ok(Loaded { space, entry: image.entry(), stack_top: STACK_TOP }),
        Err(e) => {
            discard(vm, space);
            Err(LoadError::Mm(e))
        }
    }
}

fn populate(vm: &Vm, space: &AddressSpace, image: &Image<'_>) -> Result<(), PvError> {
    for seg in image.segments() {
        let perm = PageFlags { writable: seg.writable, executable: seg.executable };
        // One L1 table's worth per map_range: its bookkeeping grows with
        // the range, and the kernel heap is small.
        let mut page = seg.first_page();
        while page < seg.end_page() {
            let n = MAP_CHUNK.min((seg.end_page() - page) / PAGE_SIZE);
            vm.mm.map_range(space, page, n, perm)?;
            page += n * PAGE_SIZE;
        }
        copy_to_frames(vm, space, seg.vaddr, seg.data)?;
    }
    vm.mm.reserve_zero(space, STACK_TOP - STACK_PAGES * PAGE_SIZE, STACK_PAGES, PageFlags::DATA)
}

/// Tears down a space that will not run (retried once, as `Mm::exit` allows).
pub fn discard(vm: &Vm, space: AddressSpace) {
    if let Err((first, space)) = vm.mm.exit(space) {
        if let Err((again, space)) = vm.mm.exit(space) {
            kprintln!("elf_load: teardown of {:?} refused ({first}, {again}); its frames are lost", space.pgd());
        }
    }
}

/// Copies `data` to user address `va` of `space` through the frames mapped
/// there (the kernel's direct map), whatever their user permissions: for
/// loading, before the process runs.
pub fn copy_to_frames(vm: &Vm, space: &AddressSpace, va: u64, data: &[u8]) -> Result<(), PvError> {
    let mut done = 0usize;
    while done < data.len() {
        let at = va + done as u64;
        let (frame, _) = vm
            .mm
            .translate(space, at & !(PAGE_SIZE - 1))?
            .ok_or(PvError::NotMapped { addr: pvops::VirtAddr::try_new(at)? })?;
        let off = (at % PAGE_SIZE) as usize;
        let n = (PAGE_SIZE as usize - off).min(data.len() - done);
        write_frame(vm.mem, frame, off, &data[done..done + n]);
        done += n;
    }
    Ok(())
}

/// Writes `bytes` at byte `off` of `frame` (`off + len <= 4096`), word by
/// word through the `PhysMem` seam (a partial word is read, merged, written).
pub fn write_frame(mem: &dyn PhysMem, frame: Pfn, off: usize, bytes: &[u8]) {
    let mut i = 0;
    while i < bytes.len() {
        let pos = off + i;
        let (word, shift) = (pos / 8, pos % 8);
        let n = (8 - shift).min(bytes.len() - i);
        let mut w = mem.read_entry(frame, word).to_le_bytes();
        w[shift..shift + n].copy_from_slice(&bytes[i..i + n]);
        mem.write_entry(frame, word, u64::from_le_bytes(w));
        i += n;
    }
}

/// Reads `len` bytes at byte `off` of `frame` (`off + len <= 4096`).
pub fn read_frame(mem: &dyn PhysMem, frame: Pfn, off: usize, out: &mut Vec<u8>, len: usize) {
    for pos in off..off + len {
        out.push(mem.read_entry(frame, pos / 8).to_le_bytes()[pos % 8]);
    }
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
        let left = before.0 as i64 - vm.frames.free_frames() as i64;
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
    let now = || (vm.frames.free_frames(), vm.frames.allocations());
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
