//! The cases. Each name is the claim it checks.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use kernel_glue::{AddressSpace, Mm, PageFlags};
use pvops::pte::flags;
use pvops::{Level, Pte, PvError, PvMmuOps, USER_LIMIT};

use crate::env::{Case, CaseResult, Env};

/// A user address in L4 slot 0.
const VA: u64 = 0x40_0000;
/// A user address in the last user L4 slot.
const VA_HIGH: u64 = USER_LIMIT - 0x1000;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

fn ok<T>(r: Result<T, PvError>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn exit<O: PvMmuOps + ?Sized>(mm: &Mm<'_, O>, s: AddressSpace) -> CaseResult {
    mm.exit(s).map_err(|(e, _)| format!("exit: {e}"))
}

/// Runs `body` with a fresh space, activating nothing; always exits it.
fn with_space<O: PvMmuOps + ?Sized>(
    env: &Env<'_, O>,
    body: impl FnOnce(&Mm<'_, O>, &mut AddressSpace) -> CaseResult,
) -> CaseResult {
    let mm = env.mm;
    let mut s = ok(mm.create(), "create")?;
    let r = body(mm, &mut s);
    let back = mm.activate_init();
    let e = exit(mm, s);
    r.and(ok(back, "activate init")).and(e)
}

fn expect_err<T>(r: Result<T, PvError>, want: fn(&PvError) -> bool, what: &str) -> CaseResult {
    match r {
        Ok(_) => Err(format!("{what}: succeeded, expected an error")),
        Err(e) if want(&e) => Ok(()),
        Err(e) => Err(format!("{what}: wrong error {e}")),
    }
}

fn create_then_exit_returns_every_frame<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    let before = env.mm.frames().free_count();
    let s = ok(env.mm.create(), "create")?;
    exit(env.mm, s)?;
    ensure!(env.mm.frames().free_count() == before, "frames not returned");
    Ok(())
}

fn map_then_translate_gives_the_frame<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        let f = ok(mm.map(s, VA, PageFlags::DATA), "map")?;
        let t = ok(mm.translate(s, VA), "translate")?;
        ensure!(t == Some((f, PageFlags::DATA)), "translate gave {t:?}, mapped {f:?}");
        Ok(())
    })
}

fn map_rejects_unaligned_address<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        expect_err(mm.map(s, VA + 8, PageFlags::DATA), |e| matches!(e, PvError::Unaligned { .. }), "map")?;
        ensure!(ok(mm.translate(s, VA), "translate")?.is_none(), "something got mapped");
        Ok(())
    })
}

fn map_rejects_non_canonical_address<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        expect_err(
            mm.map(s, 0x0000_9000_0000_0000, PageFlags::DATA),
            |e| matches!(e, PvError::NonCanonical { .. }),
            "map",
        )
    })
}

fn map_rejects_address_at_user_limit<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        expect_err(
            mm.map(s, 0xffff_8880_0000_0000, PageFlags::DATA),
            |e| matches!(e, PvError::NotUserAddress { .. }),
            "kernel half",
        )?;
        expect_err(
            mm.map(s, 0xffff_ffff_ffff_f000, PageFlags::DATA),
            |e| matches!(e, PvError::NotUserAddress { .. }),
            "top page",
        )
    })
}

fn map_accepts_last_user_page<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        let f = ok(mm.map(s, VA_HIGH, PageFlags::DATA), "map")?;
        ensure!(ok(mm.translate(s, VA_HIGH), "translate")? == Some((f, PageFlags::DATA)), "not mapped");
        Ok(())
    })
}

fn double_map_is_rejected_and_keeps_the_first<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        let f = ok(mm.map(s, VA, PageFlags::DATA), "map")?;
        expect_err(mm.map(s, VA, PageFlags::CODE), |e| matches!(e, PvError::AlreadyMapped { .. }), "second map")?;
        ensure!(ok(mm.translate(s, VA), "translate")? == Some((f, PageFlags::DATA)), "first mapping changed");
        Ok(())
    })
}

fn unmap_of_nothing_is_rejected<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        expect_err(mm.unmap(s, VA), |e| matches!(e, PvError::NotMapped { .. }), "unmap, no tables")?;
        ok(mm.map(s, VA, PageFlags::DATA), "map")?;
        expect_err(mm.unmap(s, VA + 0x1000), |e| matches!(e, PvError::NotMapped { .. }), "unmap, tables present")
    })
}

fn unmap_removes_the_mapping_and_frees_the_frame<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        ok(mm.map(s, VA, PageFlags::DATA), "map")?;
        let before = mm.frames().free_count();
        ok(mm.unmap(s, VA), "unmap")?;
        ensure!(mm.frames().free_count() == before + 1, "frame not freed");
        ensure!(ok(mm.translate(s, VA), "translate")?.is_none(), "still mapped");
        Ok(())
    })
}

fn user_mode_reads_its_own_page<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        let f = ok(mm.map(s, VA, PageFlags::DATA), "map")?;
        ok(mm.activate(s), "activate")?;
        ensure!(env.machine.user_access(VA, false) == Some(f), "user read failed");
        ensure!(env.machine.user_access(VA, true) == Some(f), "user write failed");
        Ok(())
    })
}

fn user_mode_cannot_write_a_read_only_page<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        let f = ok(mm.map(s, VA, PageFlags::RODATA), "map")?;
        ok(mm.activate(s), "activate")?;
        ensure!(env.machine.user_access(VA, false) == Some(f), "user read failed");
        ensure!(env.machine.user_access(VA, true).is_none(), "user wrote a read-only page");
        Ok(())
    })
}

fn user_mode_cannot_read_kernel_mappings<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        ok(mm.map(s, VA, PageFlags::DATA), "map")?;
        ok(mm.activate(s), "activate")?;
        ensure!(env.machine.user_access(env.kernel_va, false).is_none(), "user read a kernel page");
        Ok(())
    })
}

fn user_mode_cannot_write_kernel_mappings<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        ok(mm.activate(s), "activate")?;
        ensure!(env.machine.user_access(env.kernel_va, true).is_none(), "user wrote a kernel page");
        Ok(())
    })
}

fn kernel_half_is_shared_with_init_mm<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    let want = env.machine.kernel_access(env.kernel_va, false);
    ensure!(want.is_some(), "kernel page not mapped in init_mm");
    with_space(env, |mm, s| {
        ok(mm.activate(s), "activate")?;
        ensure!(env.machine.kernel_access(env.kernel_va, false) == want, "kernel half differs in a user space");
        Ok(())
    })
}

fn switching_address_spaces_changes_what_user_mode_sees<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    let mm = env.mm;
    let a = ok(mm.create(), "create a")?;
    let b = ok(mm.create(), "create b")?;
    let r = (|| {
        let fa = ok(mm.map(&a, VA, PageFlags::DATA), "map a")?;
        let fb = ok(mm.map(&b, VA, PageFlags::DATA), "map b")?;
        ok(mm.map(&b, VA + 0x1000, PageFlags::DATA), "map b2")?;
        ok(mm.activate(&a), "activate a")?;
        ensure!(env.machine.user_access(VA, false) == Some(fa), "a: wrong frame");
        ensure!(env.machine.user_access(VA + 0x1000, false).is_none(), "a sees b's page");
        ok(mm.activate(&b), "activate b")?;
        ensure!(env.machine.user_access(VA, false) == Some(fb), "b: wrong frame");
        ok(mm.activate(&a), "activate a again")?;
        ensure!(env.machine.user_access(VA, false) == Some(fa), "a again: wrong frame");
        Ok(())
    })();
    let back = ok(mm.activate_init(), "init");
    r.and(back).and(exit(mm, a)).and(exit(mm, b))
}

fn init_mm_gives_user_mode_nothing<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        ok(mm.map(s, VA, PageFlags::DATA), "map")?;
        ok(mm.activate(s), "activate")?;
        ok(mm.activate_init(), "activate init")?;
        ensure!(env.machine.user_access(VA, false).is_none(), "user page visible under init_mm");
        ensure!(env.machine.user_access(env.kernel_va, false).is_none(), "kernel page visible to user under init_mm");
        Ok(())
    })
}

fn fork_copies_contents<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        ok(mm.map(s, VA, PageFlags::DATA), "map")?;
        ok(mm.map(s, VA_HIGH, PageFlags::RODATA), "map high")?;
        ok(mm.poke(s, VA + 16, 0xfeed_f00d), "poke")?;
        ok(mm.poke(s, VA_HIGH, 0x1234), "poke high")?;
        let c = ok(mm.fork(s), "fork")?;
        let r = (|| {
            ensure!(ok(mm.peek(&c, VA + 16), "peek")? == 0xfeed_f00d, "contents not copied");
            ensure!(ok(mm.peek(&c, VA_HIGH), "peek")? == 0x1234, "high contents not copied");
            let (pf, pp) = ok(mm.translate(s, VA_HIGH), "t")?.ok_or("parent lost page")?;
            let (cf, cp) = ok(mm.translate(&c, VA_HIGH), "t")?.ok_or("child lacks page")?;
            ensure!(pf != cf, "child shares the parent's frame");
            ensure!(pp == cp, "permissions not preserved");
            Ok(())
        })();
        r.and(exit(mm, c))
    })
}

fn fork_copies_are_independent<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        ok(mm.map(s, VA, PageFlags::DATA), "map")?;
        ok(mm.poke(s, VA, 1), "poke")?;
        let c = ok(mm.fork(s), "fork")?;
        let r = (|| {
            ok(mm.poke(&c, VA, 2), "poke child")?;
            ensure!(ok(mm.peek(s, VA), "peek")? == 1, "child's write reached the parent");
            ok(mm.map(&c, VA + 0x1000, PageFlags::DATA), "map in child")?;
            ensure!(ok(mm.translate(s, VA + 0x1000), "t")?.is_none(), "child's map reached the parent");
            ok(mm.activate(&c), "activate child")?;
            let cf = env.machine.user_access(VA, false);
            ok(mm.activate(s), "activate parent")?;
            let pf = env.machine.user_access(VA, false);
            ensure!(cf.is_some() && pf.is_some() && cf != pf, "user mode sees the same frame in both");
            ok(mm.activate_init(), "init")
        })();
        let _ = mm.activate_init();
        r.and(exit(mm, c))
    })
}

fn fork_of_an_empty_space_is_empty<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        let before = mm.frames().free_count();
        let c = ok(mm.fork(s), "fork")?;
        let used = before - mm.frames().free_count();
        let r = ok(mm.translate(&c, VA), "t").and_then(|t| {
            ensure!(t.is_none(), "child has a page");
            Ok(())
        });
        r.and(exit(mm, c)).and_then(|()| {
            ensure!(used <= 2, "empty fork used {used} frames (pgd + user pgd at most)");
            Ok(())
        })
    })
}

fn exit_of_the_active_space_is_refused<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    let mm = env.mm;
    let s = ok(mm.create(), "create")?;
    let f = ok(mm.map(&s, VA, PageFlags::DATA), "map");
    let r = f.and_then(|f| {
        ok(mm.activate(&s), "activate")?;
        Ok(f)
    });
    let f = match r {
        Ok(f) => f,
        Err(e) => {
            let _ = mm.activate_init();
            let _ = exit(mm, s);
            return Err(e);
        }
    };
    match mm.exit(s) {
        Ok(()) => Err(String::from("exit of the active space succeeded")),
        Err((e, s)) => {
            let r = (|| {
                ensure!(matches!(e, PvError::WrongState { .. }), "wrong error {e}");
                ensure!(env.machine.user_access(VA, false) == Some(f), "refused exit damaged the space");
                Ok(())
            })();
            r.and(ok(mm.activate_init(), "init")).and(exit(mm, s))
        }
    }
}

fn exit_returns_every_frame_of_a_large_space<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    let before = env.mm.frames().free_count();
    with_space(env, |mm, s| {
        for i in 0..40u64 {
            // Spread over several L1, L2 and L3 tables.
            let va = VA + i * 0x1000 + (i % 4) * (1 << 21) + (i % 3) * (1 << 30) + (i % 2) * (1 << 39);
            ok(mm.map(s, va, PageFlags::DATA), "map")?;
        }
        ok(mm.activate(s), "activate")
    })?;
    ensure!(env.mm.frames().free_count() == before, "frames leaked");
    Ok(())
}

fn map_in_the_active_space_is_visible_at_once<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        ok(mm.activate(s), "activate")?;
        let f = ok(mm.map(s, VA, PageFlags::DATA), "map")?;
        ensure!(env.machine.user_access(VA, true) == Some(f), "new page not visible");
        let g = ok(mm.map(s, VA + (1 << 39), PageFlags::DATA), "map in a new slot")?;
        ensure!(
            env.machine.user_access(VA + (1 << 39), true) == Some(g),
            "page in a new L4 slot not visible to user mode"
        );
        Ok(())
    })
}

fn unmap_in_the_active_space_is_invisible_at_once<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        ok(mm.map(s, VA, PageFlags::DATA), "map")?;
        ok(mm.activate(s), "activate")?;
        ok(mm.unmap(s, VA), "unmap")?;
        ensure!(env.machine.user_access(VA, false).is_none(), "unmapped page still reachable");
        Ok(())
    })
}

/// `Mm::unmap_range` (one batch, one flush for the range) unmaps every page
/// in the range, skips holes, leaves the page after it alone, and what it
/// unmapped is unreachable at once in the loaded space.
fn unmap_range_removes_the_range_at_once_and_skips_holes<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        for off in [0, 0x1000, 0x3000, 0x4000] {
            ok(mm.map(s, VA + off, PageFlags::DATA), "map")?;
        }
        ok(mm.activate(s), "activate")?;
        for off in [0, 0x1000, 0x3000] {
            ensure!(env.machine.user_access(VA + off, false).is_some(), "page {off:#x} not reachable before");
        }
        let n = ok(mm.unmap_range(s, VA, 4), "unmap_range")?;
        ensure!(n == 3, "unmap_range reported {n} pages, 3 were mapped");
        for off in [0, 0x1000, 0x3000] {
            ensure!(env.machine.user_access(VA + off, false).is_none(), "page {off:#x} still reachable");
            ensure!(ok(mm.translate(s, VA + off), "translate")?.is_none(), "page {off:#x} still mapped");
        }
        ensure!(env.machine.user_access(VA + 0x4000, false).is_some(), "the page after the range was unmapped");
        Ok(())
    })
}

fn pages_in_first_and_last_user_slot_coexist<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        let a = ok(mm.map(s, 0x1000, PageFlags::DATA), "map low")?;
        let b = ok(mm.map(s, VA_HIGH, PageFlags::DATA), "map high")?;
        ok(mm.activate(s), "activate")?;
        ensure!(env.machine.user_access(0x1000, false) == Some(a), "low page");
        ensure!(env.machine.user_access(VA_HIGH, false) == Some(b), "high page");
        Ok(())
    })
}

fn many_address_spaces_coexist<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    let mm = env.mm;
    let mut spaces = Vec::new();
    let mut r = Ok(());
    for i in 0..8u64 {
        match mm.create() {
            Ok(s) => spaces.push(s),
            Err(e) => {
                r = Err(format!("create {i}: {e}"));
                break;
            }
        }
    }
    if r.is_ok() {
        r = (|| {
            let mut frames = Vec::new();
            for s in spaces.iter_mut() {
                frames.push(ok(mm.map(s, VA, PageFlags::DATA), "map")?);
            }
            for (s, f) in spaces.iter_mut().zip(&frames) {
                ok(mm.activate(s), "activate")?;
                ensure!(env.machine.user_access(VA, false) == Some(*f), "space sees the wrong frame");
            }
            Ok(())
        })();
    }
    let back = ok(mm.activate_init(), "init");
    let mut out = r.and(back);
    for s in spaces {
        out = out.and(exit(mm, s));
    }
    out
}

/// For every k, the k-th allocation fails: the operation errors and nothing leaks.
fn sweep<O: PvMmuOps + ?Sized>(
    env: &Env<'_, O>,
    op: &dyn Fn(&Mm<'_, O>) -> Result<(), PvError>,
    what: &str,
) -> CaseResult {
    let frames = env.mm.frames();
    let mut k = 0;
    loop {
        let before = frames.free_count();
        frames.fail_allocation_after(Some(k));
        let r = op(env.mm);
        frames.fail_allocation_after(None);
        ensure!(
            frames.free_count() == before,
            "{what}: k={k}: {} frame(s) leaked (result {r:?})",
            before as i64 - frames.free_count() as i64
        );
        match r {
            Err(PvError::OutOfMemory) => k += 1,
            Ok(()) => return Ok(()),
            Err(e) => return Err(format!("{what}: k={k}: unexpected error {e}")),
        }
        ensure!(k < 10_000, "{what}: never succeeded");
    }
}

fn out_of_memory_in_create_leaks_nothing<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    sweep(env, &|mm| mm.create().and_then(|s| mm.exit(s).map_err(|(e, _)| e)), "create")
}

fn out_of_memory_in_map_leaks_nothing<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    sweep(
        env,
        &|mm| {
            let s = mm.create()?;
            let r = mm.map(&s, VA, PageFlags::DATA).and_then(|_| mm.map(&s, VA + (1 << 39), PageFlags::DATA));
            mm.exit(s).map_err(|(e, _)| e)?;
            r.map(|_| ())
        },
        "map",
    )
}

fn out_of_memory_in_map_of_an_active_space_leaks_nothing<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    sweep(
        env,
        &|mm| {
            let s = mm.create()?;
            let r = mm
                .map(&s, VA, PageFlags::DATA)
                .and_then(|_| mm.activate(&s))
                .and_then(|()| mm.map(&s, VA + (3 << 39), PageFlags::DATA));
            mm.activate_init()?;
            mm.exit(s).map_err(|(e, _)| e)?;
            r.map(|_| ())
        },
        "map",
    )
}

fn out_of_memory_in_fork_leaks_nothing<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        ok(mm.map(s, VA, PageFlags::DATA), "map")?;
        ok(mm.map(s, VA_HIGH, PageFlags::DATA), "map")?;
        ok(mm.activate(s), "activate")?;
        let s: &AddressSpace = s;
        sweep(env, &|mm| mm.fork(s).and_then(|c| mm.exit(c).map_err(|(e, _)| e)), "fork")
    })
}

fn kernel_mappings_are_rejected_below_user_limit<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    expect_err(env.mm.map_kernel(VA, pvops::Pfn(0), false), |e| matches!(e, PvError::WrongState { .. }), "map_kernel")
}

fn reserved_slots_are_never_used<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    let reserved = env.mm.ops().reserved_l4_slots();
    if reserved.is_empty() {
        return Ok(());
    }
    let va = pvops::VirtAddr::from_indices(reserved.start, 0, 0, 0).as_u64();
    expect_err(env.mm.map_kernel(va, pvops::Pfn(0), false), |e| matches!(e, PvError::ReservedSlot { .. }), "map_kernel")
}

fn activate_twice_is_harmless<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        let f = ok(mm.map(s, VA, PageFlags::DATA), "map")?;
        ok(mm.activate(s), "activate")?;
        ok(mm.activate(s), "activate again")?;
        ensure!(env.machine.user_access(VA, false) == Some(f), "page lost");
        Ok(())
    })
}

/// The L1 table covering `va` below `root`, read through the backend
/// (`Err` naming the level when a table is missing).
pub fn l1_of<O: PvMmuOps + ?Sized>(ops: &O, root: pvops::Pfn, va: u64) -> Result<pvops::Pfn, String> {
    let va = ok(pvops::VirtAddr::try_new(va), "va")?;
    let mut table = root;
    for level in [Level::L4, Level::L3, Level::L2] {
        let e = ok(ops.read_entry(level, table, va.index(level)), "read_entry")?;
        ensure!(e.is_present(), "no table at {level:?} for {:#x}", va.as_u64());
        table = e.pfn();
    }
    Ok(table)
}

/// Lazy-MMU sections nest (`PvMmuOps::lazy_mmu_enter`): an inner section's
/// leave must not end (or issue) the caller's section. The observable is what
/// user mode reaches: an update the caller queued that was not yet in effect
/// must still not be in effect after the inner section's leave; after the
/// outer leave both sections' updates are. (A backend that queues nothing
/// passes the first part trivially.)
fn lazy_sections_nest_and_the_outer_leave_issues_everything<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    const VA3: u64 = VA + 0x3000;
    const VA4: u64 = VA + 0x4000;
    with_space(env, |mm, s| {
        ok(mm.map(s, VA, PageFlags::DATA), "map")?;
        ok(mm.activate(s), "activate")?;
        let ops = mm.ops();
        let l1 = l1_of(ops, s.pgd(), VA3)?;
        let x = ok(pvops::MmServices::alloc_zeroed_frame(mm.frames()), "alloc")?;
        let y = match pvops::MmServices::alloc_zeroed_frame(mm.frames()) {
            Ok(y) => y,
            Err(e) => {
                let _ = pvops::MmServices::free_frame(mm.frames(), x);
                return Err(format!("alloc: {e}"));
            }
        };
        let bits = flags::PRESENT | flags::USER | flags::WRITABLE | flags::NO_EXECUTE;
        let i3 = ok(pvops::VirtAddr::try_new(VA3), "va")?.index(Level::L1);
        let i4 = ok(pvops::VirtAddr::try_new(VA4), "va")?.index(Level::L1);
        ops.lazy_mmu_enter();
        let r = (|| {
            ok(ops.set_entry(mm.frames(), Level::L1, l1, i3, Pte::new(x, bits)), "set_entry")?;
            let queued_visible = env.machine.user_access(VA3, false) == Some(x);
            ops.lazy_mmu_enter();
            let inner = ops.set_entry(mm.frames(), Level::L1, l1, i4, Pte::new(y, bits));
            let inner_left = ops.lazy_mmu_leave();
            ok(inner, "set_entry inside the inner section")?;
            ok(inner_left, "inner leave")?;
            let visible_after_inner = env.machine.user_access(VA3, false) == Some(x);
            ensure!(
                queued_visible || !visible_after_inner,
                "the inner section's leave issued the caller's queued update (it ended the caller's section)"
            );
            Ok(())
        })();
        let left = ok(ops.lazy_mmu_leave(), "outer leave");
        let checked = r.and(left).and_then(|()| {
            ensure!(
                env.machine.user_access(VA3, false) == Some(x),
                "the caller's update not in effect after the outer leave"
            );
            ensure!(
                env.machine.user_access(VA4, true) == Some(y),
                "the inner section's update not in effect after the outer leave"
            );
            Ok(())
        });
        // Unmap both again (flushed: the space is loaded) before the frames go back.
        let cleared = ops
            .set_entry(mm.frames(), Level::L1, l1, i3, Pte::EMPTY)
            .and_then(|()| ops.set_entry(mm.frames(), Level::L1, l1, i4, Pte::EMPTY))
            .and_then(|()| ops.flush_tlb_all());
        ok(cleared, "clearing the test entries")?;
        let _ = pvops::MmServices::free_frame(mm.frames(), x);
        let _ = pvops::MmServices::free_frame(mm.frames(), y);
        checked
    })
}

/// The accessed and dirty bits.
const AD: u64 = flags::ACCESSED | flags::DIRTY;

/// The L1 table and slot of `va` in `s`, and its entry now.
fn leaf<O: PvMmuOps + ?Sized>(mm: &Mm<'_, O>, s: &AddressSpace, va: u64) -> Result<(pvops::Pfn, usize, Pte), String> {
    let l1 = l1_of(mm.ops(), s.pgd(), va)?;
    let index = ok(pvops::VirtAddr::try_new(va), "va")?.index(Level::L1);
    let e = ok(mm.ops().read_entry(Level::L1, l1, index), "read_entry")?;
    Ok((l1, index, e))
}

/// `old` with the permissions of `perm` and no A/D bits: what a caller
/// builds as the new entry (the backend must bring the A/D bits back).
fn with_perm(old: Pte, writable: bool) -> Pte {
    let mut bits = (old.flags() & !(AD | flags::WRITABLE)) | flags::PRESENT | flags::USER;
    if writable {
        bits |= flags::WRITABLE;
    }
    Pte::new(old.pfn(), bits)
}

/// One protection change of the leaf at `va` to `writable` (start, `between`,
/// commit, local flush); a commit that fails is followed by a commit of the
/// old entry, so no case leaves the slot withdrawn. Returns `between`'s value.
fn change_protection<O: PvMmuOps + ?Sized, T>(
    mm: &Mm<'_, O>,
    s: &AddressSpace,
    va: u64,
    writable: bool,
    between: impl FnOnce(Pte) -> T,
) -> Result<(Pte, T), String> {
    let (l1, index, _) = leaf(mm, s, va)?;
    let ops = mm.ops();
    let old = ok(ops.protect_start(mm.frames(), l1, index), "protect_start")?;
    let t = between(old);
    if let Err(e) = ops.protect_commit(mm.frames(), l1, index, old, with_perm(old, writable)) {
        let _ = ops.protect_commit(mm.frames(), l1, index, old, old);
        let _ = ops.flush_tlb_all();
        return Err(format!("protect_commit: {e}"));
    }
    ok(ops.flush_tlb_all(), "flush")?;
    Ok((old, t))
}

/// `PvMmuOps::protect_commit`: the A/D bits the hardware set before the
/// change (a user write) survive it, though the new entry the caller
/// passes has none; after the flush user mode may read but not write.
fn protect_keeps_accessed_dirty_set_before_the_change_and_refuses_writes_after_it<O: PvMmuOps + ?Sized>(
    env: &Env<'_, O>,
) -> CaseResult {
    with_space(env, |mm, s| {
        let f = ok(mm.map(s, VA, PageFlags::DATA), "map")?;
        ok(mm.activate(s), "activate")?;
        ensure!(env.machine.user_access(VA, true) == Some(f), "user write before the change failed");
        let (old, ()) = change_protection(mm, s, VA, false, |_| ())?;
        ensure!(old.0 & AD == AD, "protect_start returned {old:?}: the user write's A/D bits are missing");
        let (_, _, now) = leaf(mm, s, VA)?;
        ensure!(now.0 & AD == AD, "A/D lost by the change: {old:?} became {now:?}");
        ensure!(now.is_present() && now.pfn() == f && !now.is_writable(), "entry after the change: {now:?}");
        ensure!(env.machine.user_access(VA, true).is_none(), "user mode wrote after the change to read-only");
        ensure!(env.machine.user_access(VA, false) == Some(f), "user mode cannot read after the change");
        Ok(())
    })
}

/// What the hardware sets *between* start and commit survives too. If the
/// backend left the entry live (xen64), a user write in between lands and
/// its dirty bit is in the committed entry (`MMU_PT_UPDATE_PRESERVE_AD`). If
/// it withdrew the entry (natively), the write is not made: it could only
/// fault, or go through a translation cached before the start, which is
/// outside what the backend controls (the model flags it).
fn protect_keeps_dirty_set_between_start_and_commit<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        let f = ok(mm.map(s, VA, PageFlags::DATA), "map")?;
        ok(mm.activate(s), "activate")?;
        ensure!(env.machine.user_access(VA, false) == Some(f), "user read before the change failed");
        let (old, wrote) = change_protection(mm, s, VA, false, |_| {
            let live = leaf(mm, s, VA).map(|(_, _, e)| e.is_present());
            live.map(|live| live.then(|| env.machine.user_access(VA, true)))
        })?;
        let wrote = wrote?;
        ensure!(old.0 & flags::DIRTY == 0, "dirty before any write: {old:?}");
        let (_, _, now) = leaf(mm, s, VA)?;
        if let Some(reached) = wrote {
            ensure!(reached == Some(f), "the entry was live, yet the write in between reached {reached:?}, not {f:?}");
            ensure!(now.0 & AD == AD, "the write between start and commit set D, the commit lost it: {now:?}");
        }
        ensure!(env.machine.user_access(VA, true).is_none(), "user mode wrote after the change to read-only");
        ensure!(env.machine.user_access(VA, false) == Some(f), "user mode cannot read after the change");
        Ok(())
    })
}

/// A change to writable: user writes are refused before it and allowed
/// after it (and its flush); done inside a lazy-MMU section, it is in
/// effect once the section is left.
fn protect_to_writable_in_a_lazy_section_allows_writes_after_the_leave<O: PvMmuOps + ?Sized>(
    env: &Env<'_, O>,
) -> CaseResult {
    with_space(env, |mm, s| {
        let f = ok(mm.map(s, VA, PageFlags::RODATA), "map")?;
        ok(mm.activate(s), "activate")?;
        ensure!(env.machine.user_access(VA, true).is_none(), "user mode wrote a read-only page");
        let ops = mm.ops();
        ops.lazy_mmu_enter();
        let changed = change_protection(mm, s, VA, true, |_| ());
        let left = ok(ops.lazy_mmu_leave(), "lazy leave");
        changed?;
        left?;
        ok(ops.flush_tlb_all(), "flush")?;
        ensure!(env.machine.user_access(VA, true) == Some(f), "user mode cannot write after the change to writable");
        let (_, _, now) = leaf(mm, s, VA)?;
        ensure!(now.is_writable() && now.pfn() == f, "entry after the change: {now:?}");
        Ok(())
    })
}

/// `PvMmuOps::clear_accessed_dirty` returns the entry as it was (with the
/// bits a user write set) and clears exactly the bits asked for.
fn clear_accessed_dirty_returns_the_old_bits_and_clears_only_those<O: PvMmuOps + ?Sized>(
    env: &Env<'_, O>,
) -> CaseResult {
    with_space(env, |mm, s| {
        let f = ok(mm.map(s, VA, PageFlags::DATA), "map")?;
        ok(mm.activate(s), "activate")?;
        ensure!(env.machine.user_access(VA, true) == Some(f), "user write failed");
        let (l1, index, before) = leaf(mm, s, VA)?;
        ensure!(before.0 & AD == AD, "the user write set no A/D bits: {before:?}");
        let ops = mm.ops();
        let was = ok(ops.clear_accessed_dirty(mm.frames(), l1, index, flags::DIRTY), "clear D")?;
        ensure!(was == before, "clear D returned {was:?}, the entry was {before:?}");
        let (_, _, now) = leaf(mm, s, VA)?;
        ensure!(now.0 == before.0 & !flags::DIRTY, "after clearing D: {now:?} (was {before:?})");
        let was = ok(ops.clear_accessed_dirty(mm.frames(), l1, index, flags::ACCESSED), "clear A")?;
        ensure!(was == now, "clear A returned {was:?}, the entry was {now:?}");
        let (_, _, now) = leaf(mm, s, VA)?;
        ensure!(now.0 == before.0 & !AD, "after clearing A: {now:?} (was {before:?})");
        let was = ok(ops.clear_accessed_dirty(mm.frames(), l1, index, AD), "clear of clear bits")?;
        ensure!(was == now, "clearing bits that are clear returned {was:?}, the entry was {now:?}");
        ok(ops.flush_tlb_all(), "flush")?;
        ensure!(env.machine.user_access(VA, true) == Some(f), "the page is not writable after the clears");
        Ok(())
    })
}

/// Bad slots, non-present entries, bits other than A/D and a commit that
/// remaps: each a clear error, and the entry (and what user mode reaches)
/// unchanged.
fn protect_and_clear_reject_bad_index_and_non_present_entries<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    with_space(env, |mm, s| {
        let f = ok(mm.map(s, VA, PageFlags::DATA), "map")?;
        let g = ok(mm.map(s, VA + 0x2000, PageFlags::DATA), "map second")?;
        ok(mm.activate(s), "activate")?;
        let (l1, index, before) = leaf(mm, s, VA)?;
        let (_, hole, _) = leaf(mm, s, VA + 0x1000)?;
        let ops = mm.ops();
        let mm_ = mm.frames();
        let bad = |e: &PvError| matches!(e, PvError::BadIndex { index: 512 });
        let state = |e: &PvError| matches!(e, PvError::WrongState { .. });
        expect_err(ops.protect_start(mm_, l1, 512), bad, "protect_start index 512")?;
        expect_err(ops.protect_commit(mm_, l1, 512, before, before), bad, "protect_commit index 512")?;
        expect_err(ops.clear_accessed_dirty(mm_, l1, 512, AD), bad, "clear_accessed_dirty index 512")?;
        expect_err(ops.protect_start(mm_, l1, hole), state, "protect_start of a hole")?;
        expect_err(ops.clear_accessed_dirty(mm_, l1, hole, AD), state, "clear_accessed_dirty of a hole")?;
        expect_err(ops.clear_accessed_dirty(mm_, l1, index, flags::WRITABLE), state, "clearing W")?;
        expect_err(
            ops.protect_commit(mm_, l1, hole, Pte::EMPTY, with_perm(before, false)),
            state,
            "protect_commit from a non-present entry",
        )?;
        let remap = Pte::new(g, before.flags());
        expect_err(ops.protect_commit(mm_, l1, index, before, remap), state, "protect_commit to another frame")?;
        ok(ops.flush_tlb_all(), "flush")?;
        let (_, _, now) = leaf(mm, s, VA)?;
        ensure!(now == before, "a refused call changed the entry: {before:?} became {now:?}");
        let (_, _, h) = leaf(mm, s, VA + 0x1000)?;
        ensure!(h == Pte::EMPTY, "a refused call filled the hole: {h:?}");
        ensure!(env.machine.user_access(VA, true) == Some(f), "the page is no longer writable");
        ensure!(env.machine.user_access(VA + 0x1000, false).is_none(), "the hole is reachable");
        Ok(())
    })
}

macro_rules! cases {
    ($($f:ident),* $(,)?) => {
        /// Every case, in the order they run, for `Mm<dyn PvMmuOps>`.
        pub static CASES: &[Case] = &[$(Case { name: stringify!($f), run: $f::<dyn PvMmuOps> }),*];

        /// Every case for an `Mm` over any backend type `O` (e.g. a
        /// `pvops::static_dispatch!` enum), in the same order as [`CASES`].
        pub fn cases<O: PvMmuOps + ?Sized>() -> Vec<Case<O>> {
            alloc::vec![$(Case { name: stringify!($f), run: $f::<O> }),*]
        }
    };
}

cases!(
    create_then_exit_returns_every_frame,
    map_then_translate_gives_the_frame,
    map_rejects_unaligned_address,
    map_rejects_non_canonical_address,
    map_rejects_address_at_user_limit,
    map_accepts_last_user_page,
    double_map_is_rejected_and_keeps_the_first,
    unmap_of_nothing_is_rejected,
    unmap_removes_the_mapping_and_frees_the_frame,
    user_mode_reads_its_own_page,
    user_mode_cannot_write_a_read_only_page,
    user_mode_cannot_read_kernel_mappings,
    user_mode_cannot_write_kernel_mappings,
    kernel_half_is_shared_with_init_mm,
    switching_address_spaces_changes_what_user_mode_sees,
    init_mm_gives_user_mode_nothing,
    fork_copies_contents,
    fork_copies_are_independent,
    fork_of_an_empty_space_is_empty,
    exit_of_the_active_space_is_refused,
    exit_returns_every_frame_of_a_large_space,
    map_in_the_active_space_is_visible_at_once,
    unmap_in_the_active_space_is_invisible_at_once,
    unmap_range_removes_the_range_at_once_and_skips_holes,
    pages_in_first_and_last_user_slot_coexist,
    many_address_spaces_coexist,
    out_of_memory_in_create_leaks_nothing,
    out_of_memory_in_map_leaks_nothing,
    out_of_memory_in_map_of_an_active_space_leaks_nothing,
    out_of_memory_in_fork_leaks_nothing,
    kernel_mappings_are_rejected_below_user_limit,
    reserved_slots_are_never_used,
    activate_twice_is_harmless,
    lazy_sections_nest_and_the_outer_leave_issues_everything,
    protect_keeps_accessed_dirty_set_before_the_change_and_refuses_writes_after_it,
    protect_keeps_dirty_set_between_start_and_commit,
    protect_to_writable_in_a_lazy_section_allows_writes_after_the_leave,
    clear_accessed_dirty_returns_the_old_bits_and_clears_only_those,
    protect_and_clear_reject_bad_index_and_non_present_entries,
);
