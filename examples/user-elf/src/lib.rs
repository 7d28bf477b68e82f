//! User program images: a static, non-PIE x86-64 ELF executable, parsed by
//! the [`elf`] crate and checked against the user half *before* anything is
//! allocated for it, so a bad file is refused with nothing to undo; then
//! loaded into a new kernel-glue address space ([`load::load`]), torn down
//! whole if anything fails.
//!
//! ```text
//! let image = user_elf::parse(bytes)?;      // every check below, no allocation
//! for s in image.segments() { map s.first_page()..s.end_page() with s's permissions,
//!                             copy s.data to s.vaddr (the rest of memsz stays zero) }
//! start a task at image.entry()
//! ```
//!
//! Refused, each with its own [`ElfError`]: a truncated file (header,
//! program headers or a segment's bytes past the end), anything but a
//! little-endian x86-64 `ET_EXEC` (a PIE or shared object would need
//! relocating; an interpreter or TLS is not supported), segments that share
//! a page (one page cannot carry two sets of permissions), a segment
//! reaching page 0 or `USER_LIMIT` and above, and an entry point outside an
//! executable segment. Like Linux's `load_elf_binary` (fs/binfmt_elf.c)
//! only `PT_LOAD` segments are mapped; other program headers are ignored.

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod craft;
pub mod load;

use core::fmt;

use elf::abi;
use elf::endian::LittleEndian;
use elf::ElfBytes;
use pvops::{PAGE_SIZE, USER_LIMIT};

/// Most `PT_LOAD` segments an image may have (a static executable has 3-4).
pub const MAX_SEGMENTS: usize = 8;
/// Lowest address a segment may reach: page 0 stays unmapped, so a null
/// pointer dereference faults.
pub const MIN_VADDR: u64 = PAGE_SIZE;

/// Why an image cannot be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// The file ends before `needed` bytes (it has `len`).
    Truncated { needed: u64, len: u64 },
    /// A header field the `elf` crate refused, or one whose arithmetic overflows.
    Malformed { what: &'static str },
    /// Well-formed, but not something this loader runs.
    Unsupported { what: &'static str },
    /// No `PT_LOAD` segment.
    NoLoadableSegment,
    /// More than [`MAX_SEGMENTS`] `PT_LOAD` segments.
    TooManySegments,
    /// A segment whose file size exceeds its memory size.
    BadSegment { vaddr: u64 },
    /// A segment reaching below [`MIN_VADDR`] or to `USER_LIMIT` and above.
    OutsideUserSpace { vaddr: u64, end: u64 },
    /// Two segments whose pages overlap (by their start addresses).
    Overlapping { first: u64, second: u64 },
    /// The entry point is in no executable segment.
    BadEntry { entry: u64 },
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ElfError::Truncated { needed, len } => write!(f, "truncated ELF: needs {needed} bytes, has {len}"),
            ElfError::Malformed { what } => write!(f, "malformed ELF: {what}"),
            ElfError::Unsupported { what } => write!(f, "unsupported ELF: {what}"),
            ElfError::NoLoadableSegment => f.write_str("ELF has no PT_LOAD segment"),
            ElfError::TooManySegments => write!(f, "ELF has more than {MAX_SEGMENTS} PT_LOAD segments"),
            ElfError::BadSegment { vaddr } => write!(f, "ELF segment at {vaddr:#x}: file size above memory size"),
            ElfError::OutsideUserSpace { vaddr, end } => {
                write!(f, "ELF segment {vaddr:#x}..{end:#x} is outside user space {MIN_VADDR:#x}..{USER_LIMIT:#x}")
            }
            ElfError::Overlapping { first, second } => {
                write!(f, "ELF segments at {first:#x} and {second:#x} overlap (share a page)")
            }
            ElfError::BadEntry { entry } => write!(f, "ELF entry point {entry:#x} is in no executable segment"),
        }
    }
}

/// The `elf` crate's error, as one of ours: reads past the end are truncation.
fn from_parse(e: elf::ParseError, len: usize) -> ElfError {
    use elf::ParseError as P;
    let len = len as u64;
    match e {
        P::SliceReadError((_, end)) => ElfError::Truncated { needed: end as u64, len },
        P::TryFromSliceError(_) => ElfError::Truncated { needed: len + 1, len },
        P::BadMagic(_) => ElfError::Malformed { what: "bad magic" },
        P::UnsupportedElfClass(_) => ElfError::Unsupported { what: "ELF class" },
        P::UnsupportedElfEndianness(_) => ElfError::Unsupported { what: "byte order (not little-endian)" },
        P::UnsupportedVersion(_) => ElfError::Unsupported { what: "ELF version" },
        P::BadEntsize(_) => ElfError::Malformed { what: "program header entry size" },
        P::BadOffset(_) => ElfError::Malformed { what: "table offset" },
        P::IntegerOverflow => ElfError::Malformed { what: "offset arithmetic overflows" },
        _ => ElfError::Malformed { what: "header" },
    }
}

/// One `PT_LOAD` segment, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Where its first byte goes.
    pub vaddr: u64,
    /// Its size in memory (bytes past `data` are zero: `.bss`).
    pub memsz: u64,
    /// Its bytes in the file (`p_filesz` of them).
    pub data: &'a [u8],
    /// `PF_W`.
    pub writable: bool,
    /// `PF_X`.
    pub executable: bool,
}

impl Segment<'_> {
    /// The address of its first page.
    pub fn first_page(&self) -> u64 {
        self.vaddr & !(PAGE_SIZE - 1)
    }
    /// The address just past its last page (no overflow: checked below `USER_LIMIT`).
    pub fn end_page(&self) -> u64 {
        (self.vaddr + self.memsz).next_multiple_of(PAGE_SIZE)
    }
    /// How many pages it spans.
    pub fn pages(&self) -> u64 {
        (self.end_page() - self.first_page()) / PAGE_SIZE
    }
    fn contains(&self, va: u64) -> bool {
        (self.vaddr..self.vaddr + self.memsz).contains(&va)
    }
}

/// A checked image: its entry point and its `PT_LOAD` segments.
#[derive(Clone, Debug)]
pub struct Image<'a> {
    entry: u64,
    segments: [Option<Segment<'a>>; MAX_SEGMENTS],
    count: usize,
}

impl<'a> Image<'a> {
    /// The entry point (inside an executable segment).
    pub fn entry(&self) -> u64 {
        self.entry
    }
    /// The segments, in file order.
    pub fn segments(&self) -> impl Iterator<Item = &Segment<'a>> {
        self.segments[..self.count].iter().flatten()
    }
    /// Pages all segments span together.
    pub fn pages(&self) -> u64 {
        self.segments().map(Segment::pages).sum()
    }
}

/// Parses and checks `bytes` (see the module doc); allocates nothing.
pub fn parse(bytes: &[u8]) -> Result<Image<'_>, ElfError> {
    let len = bytes.len();
    let file = ElfBytes::<LittleEndian>::minimal_parse(bytes).map_err(|e| from_parse(e, len))?;
    let ehdr = file.ehdr;
    if ehdr.class != elf::file::Class::ELF64 {
        return Err(ElfError::Unsupported { what: "not ELF64" });
    }
    if ehdr.e_machine != abi::EM_X86_64 {
        return Err(ElfError::Unsupported { what: "not x86-64" });
    }
    if ehdr.e_type != abi::ET_EXEC {
        return Err(ElfError::Unsupported { what: "not a static non-PIE executable (ET_EXEC)" });
    }
    let table = file.segments().ok_or(ElfError::NoLoadableSegment)?;
    let mut image = Image { entry: ehdr.e_entry, segments: [None; MAX_SEGMENTS], count: 0 };
    for ph in table.iter() {
        match ph.p_type {
            abi::PT_LOAD => {}
            abi::PT_INTERP | abi::PT_DYNAMIC => return Err(ElfError::Unsupported { what: "dynamically linked" }),
            abi::PT_TLS => return Err(ElfError::Unsupported { what: "thread-local storage" }),
            _ => continue,
        }
        if image.count == MAX_SEGMENTS {
            return Err(ElfError::TooManySegments);
        }
        let overflow = ElfError::Malformed { what: "segment bounds overflow" };
        let file_end = ph.p_offset.checked_add(ph.p_filesz).ok_or(overflow)?;
        if file_end > len as u64 {
            return Err(ElfError::Truncated { needed: file_end, len: len as u64 });
        }
        if ph.p_filesz > ph.p_memsz {
            return Err(ElfError::BadSegment { vaddr: ph.p_vaddr });
        }
        if ph.p_memsz == 0 {
            continue;
        }
        let end = ph.p_vaddr.checked_add(ph.p_memsz).ok_or(overflow)?;
        if ph.p_vaddr < MIN_VADDR || end > USER_LIMIT {
            return Err(ElfError::OutsideUserSpace { vaddr: ph.p_vaddr, end });
        }
        let data = &bytes[ph.p_offset as usize..file_end as usize];
        let seg = Segment {
            vaddr: ph.p_vaddr,
            memsz: ph.p_memsz,
            data,
            writable: ph.p_flags & abi::PF_W != 0,
            executable: ph.p_flags & abi::PF_X != 0,
        };
        if let Some(other) =
            image.segments().find(|o| o.first_page() < seg.end_page() && seg.first_page() < o.end_page())
        {
            return Err(ElfError::Overlapping { first: other.vaddr, second: seg.vaddr });
        }
        image.segments[image.count] = Some(seg);
        image.count += 1;
    }
    if image.count == 0 {
        return Err(ElfError::NoLoadableSegment);
    }
    if !image.segments().any(|s| s.executable && s.contains(image.entry)) {
        return Err(ElfError::BadEntry { entry: image.entry });
    }
    Ok(image)
}
