//! Hand-built ELF images, for the loader's tests on the host and in the
//! booted kernel: a small good image and one bad image per refusal the
//! loader must make (each with the exact error it must give).

use alloc::vec;
use alloc::vec::Vec;

use elf::abi;
use pvops::{PAGE_SIZE, USER_LIMIT};

use crate::ElfError;

/// A segment to write: flags are `PF_R`/`PF_W`/`PF_X`.
#[derive(Clone, Copy, Debug)]
pub struct Seg<'a> {
    pub vaddr: u64,
    pub flags: u32,
    pub data: &'a [u8],
    pub memsz: u64,
}

const EHDR: usize = 64;
const PHDR: usize = 56;

/// An ELF64 little-endian x86-64 `ET_EXEC` with `segs` as `PT_LOAD`
/// segments, each's bytes at a file offset congruent to its address modulo
/// a page (as linkers lay them out), no section headers.
pub fn build(entry: u64, segs: &[Seg<'_>]) -> Vec<u8> {
    let mut out = vec![0u8; EHDR + PHDR * segs.len()];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = abi::ELFCLASS64;
    out[5] = abi::ELFDATA2LSB;
    out[6] = abi::EV_CURRENT;
    put16(&mut out, 16, abi::ET_EXEC);
    put16(&mut out, 18, abi::EM_X86_64);
    put32(&mut out, 20, u32::from(abi::EV_CURRENT));
    put64(&mut out, 24, entry);
    put64(&mut out, 32, EHDR as u64);
    put16(&mut out, 52, EHDR as u16);
    put16(&mut out, 54, PHDR as u16);
    put16(&mut out, 56, segs.len() as u16);
    for (i, s) in segs.iter().enumerate() {
        let offset = (out.len() as u64).next_multiple_of(PAGE_SIZE) + s.vaddr % PAGE_SIZE;
        out.resize(offset as usize, 0);
        out.extend_from_slice(s.data);
        let ph = EHDR + PHDR * i;
        put32(&mut out, ph, abi::PT_LOAD);
        put32(&mut out, ph + 4, s.flags);
        put64(&mut out, ph + 8, offset);
        put64(&mut out, ph + 16, s.vaddr);
        put64(&mut out, ph + 24, s.vaddr);
        put64(&mut out, ph + 32, s.data.len() as u64);
        put64(&mut out, ph + 40, s.memsz);
        put64(&mut out, ph + 48, PAGE_SIZE);
    }
    out
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Code of the good image: `syscall; ud2`.
pub const CODE: &[u8] = &[0x0f, 0x05, 0x0f, 0x0b];
/// Where the good image's code goes.
pub const CODE_VA: u64 = 0x40_0000;
/// Where its data (one page of bytes, then two of `.bss`) goes.
pub const DATA_VA: u64 = 0x40_2000;

/// Read-write data.
pub const RW: u32 = abi::PF_R | abi::PF_W;
/// Read-only code.
pub const RX: u32 = abi::PF_R | abi::PF_X;

/// A good image: code at [`CODE_VA`], 3 pages of data at [`DATA_VA`].
pub fn good() -> Vec<u8> {
    build(
        CODE_VA,
        &[
            Seg { vaddr: CODE_VA, flags: RX, data: CODE, memsz: CODE.len() as u64 },
            Seg { vaddr: DATA_VA, flags: RW, data: &[0x5a; 4096], memsz: 3 * PAGE_SIZE },
        ],
    )
}

/// A well-formed image whose `.bss` is 64 GiB: it parses, and a loader
/// must refuse it for want of memory, not take every frame trying.
pub fn huge_bss() -> Vec<u8> {
    build(
        CODE_VA,
        &[
            Seg { vaddr: CODE_VA, flags: RX, data: CODE, memsz: CODE.len() as u64 },
            Seg { vaddr: DATA_VA, flags: RW, data: &[], memsz: 1 << 36 },
        ],
    )
}

/// A bad image and the error the loader must give for it.
#[derive(Clone, Debug)]
pub struct BadCase {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub expect: ElfError,
}

/// One bad image per refusal (see the crate doc).
pub fn bad_cases() -> Vec<BadCase> {
    let good = good();
    let len = good.len() as u64;
    let code = Seg { vaddr: CODE_VA, flags: RX, data: CODE, memsz: CODE.len() as u64 };
    let data = |vaddr, memsz| Seg { vaddr, flags: RW, data: &[1, 2, 3], memsz };
    let mut cases = vec![
        BadCase {
            name: "truncated-segment",
            bytes: good[..good.len() - 1].to_vec(),
            expect: ElfError::Truncated { needed: len, len: len - 1 },
        },
        BadCase {
            name: "truncated-header",
            bytes: good[..40].to_vec(),
            expect: ElfError::Truncated { needed: EHDR as u64, len: 40 },
        },
        BadCase {
            name: "truncated-program-headers",
            bytes: good[..EHDR + PHDR + 10].to_vec(),
            expect: ElfError::Truncated { needed: (EHDR + 2 * PHDR) as u64, len: (EHDR + PHDR + 10) as u64 },
        },
        BadCase {
            // The code's second page is the data's first.
            name: "overlapping-segments",
            bytes: build(CODE_VA, &[Seg { memsz: 0x1800, ..code }, data(CODE_VA + 0x1000, 8)]),
            expect: ElfError::Overlapping { first: CODE_VA, second: CODE_VA + 0x1000 },
        },
        BadCase {
            name: "segment-across-user-limit",
            bytes: build(CODE_VA, &[code, data(USER_LIMIT - PAGE_SIZE, 2 * PAGE_SIZE)]),
            expect: ElfError::OutsideUserSpace { vaddr: USER_LIMIT - PAGE_SIZE, end: USER_LIMIT + PAGE_SIZE },
        },
        BadCase {
            name: "segment-at-user-limit",
            bytes: build(CODE_VA, &[code, data(USER_LIMIT, 8)]),
            expect: ElfError::OutsideUserSpace { vaddr: USER_LIMIT, end: USER_LIMIT + 8 },
        },
        BadCase {
            name: "segment-in-page-0",
            bytes: build(CODE_VA, &[code, data(0x10, 8)]),
            expect: ElfError::OutsideUserSpace { vaddr: 0x10, end: 0x18 },
        },
        BadCase {
            name: "entry-in-data-segment",
            bytes: build(DATA_VA, &[code, data(DATA_VA, 8)]),
            expect: ElfError::BadEntry { entry: DATA_VA },
        },
        BadCase {
            name: "entry-outside-segments",
            bytes: build(0x1234_5000, &[code, data(DATA_VA, 8)]),
            expect: ElfError::BadEntry { entry: 0x1234_5000 },
        },
    ];
    // A position-independent executable (ET_DYN) would need relocating.
    let mut pie = good.clone();
    put16(&mut pie, 16, abi::ET_DYN);
    cases.push(BadCase {
        name: "pie",
        bytes: pie,
        expect: ElfError::Unsupported { what: "not a static non-PIE executable (ET_EXEC)" },
    });
    let mut bss_below_file = build(CODE_VA, &[code, data(DATA_VA, 8)]);
    put64(&mut bss_below_file, EHDR + PHDR + 40, 2);
    cases.push(BadCase {
        name: "memsz-below-filesz",
        bytes: bss_below_file,
        expect: ElfError::BadSegment { vaddr: DATA_VA },
    });
    cases
}
