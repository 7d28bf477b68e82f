//! The loader's checks on hand-built images: the good one parses to the
//! expected plan; each bad one is refused with exactly its error.

use user_elf::craft::{bad_cases, good, huge_bss, CODE, CODE_VA, DATA_VA};
use user_elf::{parse, ElfError};

#[test]
fn the_good_image_parses_to_its_segments() {
    let bytes = good();
    let image = parse(&bytes).expect("good image");
    assert_eq!(image.entry(), CODE_VA);
    let segs: Vec<_> = image.segments().collect();
    assert_eq!(segs.len(), 2);
    assert_eq!((segs[0].vaddr, segs[0].data, segs[0].executable, segs[0].writable), (CODE_VA, CODE, true, false));
    assert_eq!((segs[1].vaddr, segs[1].data.len(), segs[1].memsz), (DATA_VA, 4096, 3 * 4096));
    assert!(segs[1].writable && !segs[1].executable);
    assert_eq!((segs[1].first_page(), segs[1].end_page(), segs[1].pages()), (DATA_VA, DATA_VA + 3 * 4096, 3));
    assert_eq!(image.pages(), 4);
}

#[test]
fn every_bad_image_is_refused_with_its_own_error() {
    for case in bad_cases() {
        let got = parse(&case.bytes).map(|i| i.entry());
        assert_eq!(got, Err(case.expect), "{}", case.name);
    }
}

#[test]
fn every_prefix_of_the_good_image_is_refused_as_truncated() {
    let bytes = good();
    for n in 0..bytes.len() {
        match parse(&bytes[..n]) {
            Err(ElfError::Truncated { len, needed }) => assert!(len == n as u64 && needed > len, "prefix {n}"),
            other => panic!("prefix of {n} bytes: {other:?}"),
        }
    }
}

#[test]
fn errors_say_what_is_wrong() {
    let text = |e: ElfError| e.to_string();
    assert_eq!(text(ElfError::BadEntry { entry: 0x10 }), "ELF entry point 0x10 is in no executable segment");
    assert!(text(ElfError::Truncated { needed: 9, len: 8 }).contains("needs 9 bytes, has 8"));
    assert!(text(ElfError::OutsideUserSpace { vaddr: 1 << 47, end: (1 << 47) + 8 }).contains("outside user space"));
}

#[test]
fn a_huge_bss_parses_and_says_how_many_pages_it_needs() {
    let bytes = huge_bss();
    let image = parse(&bytes).expect("well-formed");
    assert_eq!(image.pages(), 1 + (1 << 36) / 4096);
}
