//! The loader on the host models, on both built-in backends: the good image
//! lands where and as its segments say; every bad image, one larger than
//! memory, and a load whose k-th frame allocation fails (every k) are
//! refused with nothing left behind — free frames as before, and on Xen no
//! free frame still typed or read-only (asked of the model of Xen).

use kernel_glue::{FaultFix, PageFlags};
use pvops::PvError;
use pvops_integration::platform::{boot_builtin_backends, Booted, HostPlatform};
use pvops_model::xen::PageType;
use pvops_native as _;
use pvops_xen64 as _;
use user_elf::craft::{bad_cases, good, huge_bss, CODE, CODE_VA, DATA_VA};
use user_elf::load::{discard, load, Layout, LoadError};

const PAGE: u64 = 4096;
const LAYOUT: Layout = Layout { stack_top: 0x7000_0000_0000, stack_pages: 4 };

/// Free frames are as before, the models' invariants hold, and under Xen
/// no free frame is still a table or read-only to the guest.
fn clean(name: &str, host: &HostPlatform, booted: &Booted, free_before: u64, what: &str) {
    assert_eq!(booted.frames.free_count(), free_before, "{name}: {what}: frames left behind");
    if let Err(e) = (host.invariants)(booted.frames, &[]) {
        panic!("{name}: {what}: {e}");
    }
    if let Err(e) = (host.quiescent)() {
        panic!("{name}: {what}: {e}");
    }
    if let Some(x) = host.xen {
        for pfn in (0..host.nr_frames).map(pvops::Pfn) {
            if booted.frames.is_free(pfn) {
                assert!(x.page_type(pfn) == PageType::None && x.alias_writable(pfn), "{name}: {what}: {pfn:?} typed");
            }
        }
    }
}

#[test]
fn the_good_image_lands_as_its_segments_say() {
    for (name, host, booted) in boot_builtin_backends() {
        let mm = booted.mm;
        let free = booted.frames.free_count();
        let bytes = good();
        let l = load(mm, host.mem, &bytes, LAYOUT).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(l.entry, CODE_VA);
        let at = |va| mm.translate(&l.space, va).unwrap();
        assert_eq!(at(CODE_VA).map(|m| m.1), Some(PageFlags::CODE), "{name}");
        let mut code = [0u8; 8];
        code[..CODE.len()].copy_from_slice(CODE);
        assert_eq!(mm.peek(&l.space, CODE_VA).unwrap(), u64::from_le_bytes(code), "{name}: code bytes");
        for p in 0..3 {
            assert_eq!(at(DATA_VA + p * PAGE).map(|m| m.1), Some(PageFlags::DATA), "{name}: data page {p}");
        }
        assert_eq!(mm.peek(&l.space, DATA_VA + PAGE - 8).unwrap(), 0x5a5a_5a5a_5a5a_5a5a, "{name}: file bytes");
        assert_eq!(mm.peek(&l.space, DATA_VA + PAGE).unwrap(), 0, "{name}: .bss is zero");
        assert_eq!(at(DATA_VA + 3 * PAGE), None, "{name}: nothing past the segment");
        // The stack is reserved, not mapped: its first touch backs it.
        let top = LAYOUT.stack_top - PAGE;
        assert_eq!(at(top), None, "{name}: stack mapped eagerly");
        assert_eq!(mm.handle_fault(&l.space, top, true), Ok(FaultFix::ZeroFilled), "{name}");
        assert_eq!(
            mm.handle_fault(&l.space, LAYOUT.stack_top - (LAYOUT.stack_pages + 1) * PAGE, true).map(|_| ()),
            Err(kernel_glue::FaultKill::NotMapped),
            "{name}: below the stack"
        );
        mm.exit(l.space).map_err(|(e, _)| e).unwrap();
        clean(name, &host, &booted, free, "good image unloaded");
    }
}

#[test]
fn bad_images_are_refused_before_anything_is_allocated() {
    for (name, host, booted) in boot_builtin_backends() {
        let mut cases: Vec<(&str, Vec<u8>, LoadError)> =
            bad_cases().into_iter().map(|c| (c.name, c.bytes, LoadError::Elf(c.expect))).collect();
        cases.push(("huge-bss", huge_bss(), LoadError::Mm(PvError::OutOfMemory)));
        for (case, bytes, want) in cases {
            let (free, allocs) = (booted.frames.free_count(), booted.frames.allocations());
            let got = load(booted.mm, host.mem, &bytes, LAYOUT);
            assert_eq!(got.as_ref().map(|l| l.entry).err(), Some(&want), "{name}: {case}");
            assert_eq!(booted.frames.allocations(), allocs, "{name}: {case}: allocated before refusing");
            clean(name, &host, &booted, free, case);
        }
    }
}

#[test]
fn a_load_failing_at_any_allocation_leaves_nothing_behind() {
    for (name, host, booted) in boot_builtin_backends() {
        let bytes = good();
        let mut k = 0;
        loop {
            let free = booted.frames.free_count();
            booted.frames.fail_allocation_after(Some(k));
            let got = load(booted.mm, host.mem, &bytes, LAYOUT);
            let armed = booted.frames.injection_armed();
            booted.frames.fail_allocation_after(None);
            match got {
                Ok(l) => {
                    assert!(armed, "{name}: k={k}: an allocation failed and the load still succeeded");
                    discard(booted.mm, l.space);
                    clean(name, &host, &booted, free, "unloaded");
                    break;
                }
                Err(e) => {
                    assert_eq!(e, LoadError::Mm(PvError::OutOfMemory), "{name}: k={k}");
                    clean(name, &host, &booted, free, &format!("k={k}"));
                }
            }
            k += 1;
        }
        // pgd (+ the user pgd on Xen), L3, L2, L1, 1 code page, 3 data pages.
        assert!(k >= 8, "{name}: only {k} allocations in a load");
    }
}
