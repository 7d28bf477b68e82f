//! Loading a user program into a new kernel-glue address space.
//!
//! ```text
//! parse(bytes)?                      every check, before anything is allocated
//! pages > free frames?               OutOfMemory, before anything is allocated
//! mm.create()                        the space
//! per PT_LOAD segment: mm.map_range(pages, R/W/X of the segment), at most
//!                      MAP_CHUNK pages a call; copy its file bytes in (the
//!                      rest stays zero: .bss)
//! mm.reserve_zero(stack)             demand-zero stack below layout.stack_top
//! any error after create: mm.exit(space) — no partial space, no frame left
//! ```

use core::fmt;

use kernel_glue::{AddressSpace, Mm, PageFlags};
use pvops::{Pfn, PhysMem, PvError, PvMmuOps, VirtAddr, PAGE_SIZE};

use crate::{parse, ElfError, Image};

/// Pages per `Mm::map_range` call: its bookkeeping grows with the range,
/// and a kernel heap is small.
pub const MAP_CHUNK: u64 = 512;

/// Where the stack goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Top of the stack (page aligned; the first push goes below it).
    pub stack_top: u64,
    /// Pages reserved below it, demand-zero.
    pub stack_pages: u64,
}

/// Why a program was not loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// The image was refused before anything was allocated.
    Elf(ElfError),
    /// No room (refused up front), or building the space failed and it was torn down.
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

/// Loads `bytes` into a new address space of `mm` (see the module doc);
/// `mem` is the page memory `mm` runs on (for copying the file bytes).
pub fn load<O: PvMmuOps + ?Sized>(
    mm: &Mm<'_, O>,
    mem: &dyn PhysMem,
    bytes: &[u8],
    layout: Layout,
) -> Result<Loaded, LoadError> {
    let image = parse(bytes).map_err(LoadError::Elf)?;
    // More pages than free frames cannot load (a huge .bss, say): refused up
    // front, as Linux's overcommit check refuses the mapping, rather than
    // after taking every free frame.
    if image.pages() > mm.frames().free_count() {
        return Err(LoadError::Mm(PvError::OutOfMemory));
    }
    let space = mm.create().map_err(LoadError::Mm)?;
    match populate(mm, mem, &space, &image, layout) {
        Ok(()) => Ok(Loaded { space, entry: image.entry(), stack_top: layout.stack_top }),
        Err(e) => {
            discard(mm, space);
            Err(LoadError::Mm(e))
        }
    }
}

fn populate<O: PvMmuOps + ?Sized>(
    mm: &Mm<'_, O>,
    mem: &dyn PhysMem,
    space: &AddressSpace,
    image: &Image<'_>,
    layout: Layout,
) -> Result<(), PvError> {
    for seg in image.segments() {
        let perm = PageFlags { writable: seg.writable, executable: seg.executable };
        let mut page = seg.first_page();
        while page < seg.end_page() {
            let n = MAP_CHUNK.min((seg.end_page() - page) / PAGE_SIZE);
            mm.map_range(space, page, n, perm)?;
            page += n * PAGE_SIZE;
        }
        copy_to_frames(mm, mem, space, seg.vaddr, seg.data)?;
    }
    let stack = layout.stack_pages.checked_mul(PAGE_SIZE).and_then(|len| layout.stack_top.checked_sub(len));
    let stack = stack.ok_or(PvError::NotUserAddress { addr: VirtAddr::try_new(layout.stack_top)? })?;
    mm.reserve_zero(space, stack, layout.stack_pages, PageFlags::DATA)
}

/// Tears down a space that will not run (retried once, as `Mm::exit`
/// allows; only if the backend refuses that too is what is left lost, logged).
pub fn discard<O: PvMmuOps + ?Sized>(mm: &Mm<'_, O>, space: AddressSpace) {
    if let Err((first, space)) = mm.exit(space) {
        if let Err((again, space)) = mm.exit(space) {
            log::error!("user-elf: teardown of {:?} refused ({first}, {again}); its frames are lost", space.pgd());
        }
    }
}

/// Copies `data` to user address `va` of `space` through the frames mapped
/// there, whatever their user permissions: for loading, before the process runs.
pub fn copy_to_frames<O: PvMmuOps + ?Sized>(
    mm: &Mm<'_, O>,
    mem: &dyn PhysMem,
    space: &AddressSpace,
    va: u64,
    data: &[u8],
) -> Result<(), PvError> {
    let mut done = 0usize;
    while done < data.len() {
        let at = va + done as u64;
        let (frame, _) =
            mm.translate(space, at & !(PAGE_SIZE - 1))?.ok_or(PvError::NotMapped { addr: VirtAddr::try_new(at)? })?;
        let off = (at % PAGE_SIZE) as usize;
        let n = (PAGE_SIZE as usize - off).min(data.len() - done);
        write_frame(mem, frame, off, &data[done..done + n]);
        done += n;
    }
    Ok(())
}

/// Writes `bytes` at byte `off` of `frame` (`off + len <= 4096`), word by
/// word through `PhysMem` (a partial word is read, merged, written).
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

/// Appends the `len` bytes at byte `off` of `frame` to `out` (`off + len <= 4096`).
pub fn read_frame(mem: &dyn PhysMem, frame: Pfn, off: usize, len: usize, out: &mut alloc::vec::Vec<u8>) {
    for pos in off..off + len {
        out.push(mem.read_entry(frame, pos / 8).to_le_bytes()[pos % 8]);
    }
}
