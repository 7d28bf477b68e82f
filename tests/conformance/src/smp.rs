//! The SMP cases: claims that need a second CPU, run when two or more are
//! online (on the host: the models' vCPUs; in the kernel: real CPUs). The
//! other CPU acts through `Cpus::call_on` (its IPI handler runs the step and
//! acknowledges), and what it sees is read by real code on it
//! ([`crate::Machine::read_on`]).
//!
//! The stale-translation technique (as in the kernel's TLB test): CPU 1
//! reads a page so that its TLB holds the translation; CPU 0 unmaps it,
//! keeps the freed frame out of the allocator and maps a new page with
//! other contents at the same address; CPU 1 reads again. The old word
//! means CPU 1 still used the translation the unmap should have shot down.

use alloc::format;
use alloc::vec::Vec;

use kernel_glue::{AddressSpace, Mm, PageFlags};
use pvops::{CpuMask, PvError, PvMmuOps};

use crate::env::{Case, CaseResult, Env};

const VA: u64 = 0x40_0000;
const OLD: u64 = 0x01d0_01d0_01d0_0001;
const NEW: u64 = 0x0ee0_0ee0_0ee0_0002;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

fn ok<T>(r: Result<T, PvError>, what: &str) -> Result<T, alloc::string::String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// The other CPU the cases use: the lowest online one that is not this.
fn other<O: PvMmuOps + ?Sized>(mm: &Mm<'_, O>) -> Result<usize, alloc::string::String> {
    let cpus = mm.cpus();
    cpus.online()
        .without(cpus.this_cpu())
        .iter()
        .next()
        .ok_or_else(|| alloc::string::String::from("needs a second online CPU"))
}

/// Runs `step` on `cpu` (its IPI handler) and waits for it.
fn on<O: PvMmuOps + ?Sized>(
    mm: &Mm<'_, O>,
    cpu: usize,
    what: &str,
    step: &(dyn Fn() -> Result<(), PvError> + Sync),
) -> CaseResult {
    ok(mm.cpus().call_on(CpuMask::one(cpu), step), what)
}

fn read_on<O: PvMmuOps + ?Sized>(env: &Env<'_, O>, cpu: usize, va: u64) -> Result<u64, alloc::string::String> {
    env.machine.read_on(cpu, va).ok_or_else(|| format!("the oracle cannot read on CPU {cpu}"))
}

/// A new space with one page at `VA` holding `OLD` (nothing left behind on error).
fn space_with_old_page<O: PvMmuOps + ?Sized>(mm: &Mm<'_, O>) -> Result<AddressSpace, alloc::string::String> {
    let s = ok(mm.create(), "create")?;
    let filled = ok(mm.map(&s, VA, PageFlags::DATA), "map").and_then(|_| ok(mm.poke(&s, VA, OLD), "poke"));
    match filled {
        Ok(()) => Ok(s),
        Err(e) => {
            let _ = mm.exit(s);
            Err(e)
        }
    }
}

/// A space with one page at `VA` holding `OLD`, loaded on this CPU and on
/// `cpu`; `body` runs; then both CPUs go back to init_mm and it exits.
fn loaded_on_two<O: PvMmuOps + ?Sized>(
    env: &Env<'_, O>,
    body: impl FnOnce(&Mm<'_, O>, &AddressSpace, usize) -> CaseResult,
) -> CaseResult {
    let mm = env.mm;
    let cpu = other(mm)?;
    let s = space_with_old_page(mm)?;
    let r = (|| {
        ok(mm.activate(&s), "activate here")?;
        on(mm, cpu, "activate on the other CPU", &|| mm.activate(&s))?;
        body(mm, &s, cpu)
    })();
    let back_there = on(mm, cpu, "back to init_mm there", &|| mm.activate_init());
    let back = ok(mm.activate_init(), "back to init_mm");
    let gone = mm.exit(s).map_err(|(e, _)| format!("exit: {e}"));
    r.and(back_there).and(back).and(gone)
}

/// `Mm::unmap` (through `PvMmuOps::flush_tlb_multi`) flushes every CPU that
/// has the space loaded, not only the caller: afterwards the other CPU
/// reads the page mapped next at that address, never the unmapped one.
fn unmap_shoots_down_the_translation_on_every_cpu_that_holds_the_space<O: PvMmuOps + ?Sized>(
    env: &Env<'_, O>,
) -> CaseResult {
    loaded_on_two(env, |mm, s, cpu| {
        ensure!(read_on(env, cpu, VA)? == OLD, "the other CPU does not read the page before the unmap");
        ok(mm.unmap(s, VA), "unmap")?;
        // The frame just freed comes back first: hold it, so the new page is another.
        let held = ok(mm.frames().alloc_zeroed_frame(), "hold")?;
        let r = (|| {
            ok(mm.map(s, VA, PageFlags::DATA), "map again")?;
            ok(mm.poke(s, VA, NEW), "poke")?;
            let seen = read_on(env, cpu, VA)?;
            ensure!(seen != OLD, "CPU {cpu} still reads the unmapped page (no remote shootdown)");
            ensure!(seen == NEW, "CPU {cpu} reads {seen:#x}, neither page");
            Ok(())
        })();
        r.and(ok(mm.frames().free_frame(held), "free the held frame"))
    })
}

/// `PvMmuOps::flush_tlb_multi` reaches the CPUs in the set: a translation
/// the other CPU cached survives a local flush and is gone after a flush
/// aimed at it.
fn flush_tlb_multi_flushes_the_cpus_in_the_set<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    const VA2: u64 = VA + 0x1000;
    loaded_on_two(env, |mm, s, cpu| {
        let ops = mm.ops();
        let me = mm.cpus().this_cpu();
        let l1 = crate::l1_of(ops, s.pgd(), VA)?;
        let va = ok(pvops::VirtAddr::try_new(VA), "va")?;
        let index = va.index(pvops::Level::L1);
        let (old, perm) =
            ok(mm.translate(s, VA), "translate")?.ok_or_else(|| alloc::string::String::from("VA not mapped"))?;
        // A second page holding NEW; VA's leaf is then pointed at it.
        let new = ok(mm.map(s, VA2, PageFlags::DATA), "map a second page")?;
        ok(mm.poke(s, VA2, NEW), "poke")?;
        ensure!(read_on(env, cpu, VA)? == OLD, "the other CPU does not read the page");
        let r = (|| {
            let leaf = pvops::Pte::new(new, perm_bits(perm));
            ok(ops.set_entry(mm.frames(), pvops::Level::L1, l1, index, leaf), "retarget the leaf")?;
            ok(ops.flush_tlb_multi(CpuMask::one(me), pvops::Flush::Page(va)), "local flush")?;
            ok(ops.flush_tlb_multi(CpuMask::one(cpu), pvops::Flush::Page(va)), "flush on the other CPU")?;
            let after = read_on(env, cpu, VA)?;
            ensure!(after == NEW, "after a flush aimed at CPU {cpu} it still reads {after:#x} (OLD is {OLD:#x})");
            Ok(())
        })();
        // Point VA back at its own frame (flushed everywhere) so exit frees each frame once.
        let back = ops
            .set_entry(mm.frames(), pvops::Level::L1, l1, index, pvops::Pte::new(old, perm_bits(perm)))
            .and_then(|()| ops.flush_tlb_multi(CpuMask::one(cpu).with(me), pvops::Flush::All));
        r.and(ok(back, "restore the leaf"))
    })
}

fn perm_bits(p: PageFlags) -> u64 {
    use pvops::pte::flags;
    let mut f = flags::PRESENT | flags::USER;
    if p.writable {
        f |= flags::WRITABLE;
    }
    if !p.executable {
        f |= flags::NO_EXECUTE;
    }
    f
}

/// `Mm::exit` of a space another CPU still has loaded (it activated it and
/// went idle: a lazy holder) makes that CPU drop it first, then tears it
/// down: no error, every frame back, the other CPU on init_mm after.
fn exit_drops_the_root_on_a_cpu_that_still_holds_it<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    let mm = env.mm;
    let cpu = other(mm)?;
    let before = mm.frames().free_count();
    let s = ok(mm.create(), "create")?;
    let pgd = s.pgd();
    let set_up = (|| {
        ok(mm.map(&s, VA, PageFlags::DATA), "map")?;
        // It runs the space, then goes idle keeping it loaded.
        on(mm, cpu, "activate on the other CPU, then idle", &|| {
            mm.activate(&s)?;
            mm.enter_lazy();
            Ok(())
        })
    })();
    if let Err(e) = set_up {
        let _ = on(mm, cpu, "back to init_mm there", &|| mm.activate_init());
        let _ = mm.exit(s);
        return Err(e);
    }
    let gone = mm.exit(s);
    let init = mm.init_pgd();
    let where_ = on(mm, cpu, "ask the other CPU", &|| {
        if mm.ops().read_cr3() == init {
            Ok(())
        } else {
            Err(PvError::WrongState { what: "the other CPU is not on init_mm after the exit" })
        }
    });
    if let Err((e, s)) = gone {
        let _ = on(mm, cpu, "back to init_mm there", &|| mm.activate_init());
        let again = mm.exit(s).map_err(|(e, _)| e);
        return Err(format!("exit of {pgd:?} held by CPU {cpu}: {e} (cleanup: {again:?})"));
    }
    where_?;
    ensure!(mm.frames().free_count() == before, "frames not returned");
    Ok(())
}

/// `Mm::exit` of a space another CPU is running (not merely holding
/// lazily) is refused with `RootInUse` naming that CPU, and changes nothing:
/// the other CPU still reads its page, and the space exits later.
fn exit_of_a_space_another_cpu_runs_is_refused_and_changes_nothing<O: PvMmuOps + ?Sized>(
    env: &Env<'_, O>,
) -> CaseResult {
    let mm = env.mm;
    let cpu = other(mm)?;
    let s = space_with_old_page(mm)?;
    let r = on(mm, cpu, "activate on the other CPU", &|| mm.activate(&s));
    let (refusal, s) = match mm.exit(s) {
        Ok(()) => return r.and(Err(format!("exit of a space CPU {cpu} runs succeeded"))),
        Err(refused) => refused,
    };
    let verdict = r.and_then(|()| match refusal {
        PvError::RootInUse { cpu: c, .. } if c == cpu => Ok(()),
        e => Err(format!("exit: {e}, expected RootInUse on CPU {cpu}")),
    });
    let still = read_on(env, cpu, VA);
    let back = on(mm, cpu, "back to init_mm there", &|| mm.activate_init());
    let gone = mm.exit(s).map_err(|(e, _)| format!("exit after: {e}"));
    verdict?;
    ensure!(still? == OLD, "the other CPU no longer reads its page after the refused exit");
    back.and(gone)
}

/// `PvMmuOps::exit_mm` of a root another CPU has loaded MUST fail with
/// `RootInUse` and change nothing (on Xen the unpin itself would succeed and
/// leave the frames typed: the hazard Linux's `xen_drop_mm_ref` avoids).
fn exit_mm_of_a_root_loaded_on_another_cpu_is_refused<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    loaded_on_two(env, |mm, s, cpu| {
        ok(mm.activate_init(), "back to init_mm here")?;
        let r = mm.ops().exit_mm(mm.frames(), s.pgd());
        match r {
            Err(PvError::RootInUse { cpu: c, .. }) if c == cpu => {}
            Err(e) => return Err(format!("exit_mm: {e}, expected RootInUse on CPU {cpu}")),
            Ok(()) => {
                // Put it back as it was for the teardown.
                let _ = mm.ops().activate_mm(mm.frames(), s.pgd());
                return Err(format!("exit_mm of a root loaded on CPU {cpu} succeeded"));
            }
        }
        ensure!(s.is_pinned(), "the space lost its pinned state");
        // Still usable on the other CPU: it reads its page.
        ensure!(read_on(env, cpu, VA)? == OLD, "the other CPU no longer reads its page");
        Ok(())
    })
}

/// Each CPU has its own loaded root: loading B on the other CPU does not
/// change what this one has loaded, and back.
fn each_cpu_has_its_own_loaded_root<O: PvMmuOps + ?Sized>(env: &Env<'_, O>) -> CaseResult {
    loaded_on_two(env, |mm, s, cpu| {
        let b = ok(mm.create(), "create B")?;
        let r = (|| {
            on(mm, cpu, "activate B there", &|| mm.activate(&b))?;
            ensure!(mm.ops().read_cr3() == s.pgd(), "this CPU's root changed when the other loaded B");
            let pgd_b = b.pgd();
            on(mm, cpu, "ask the other CPU", &|| {
                if mm.ops().read_cr3() == pgd_b {
                    Ok(())
                } else {
                    Err(PvError::WrongState { what: "the other CPU does not report B loaded" })
                }
            })?;
            on(mm, cpu, "back to A there", &|| mm.activate(s))
        })();
        let gone = mm.exit(b).map_err(|(e, _)| format!("exit B: {e}"));
        r.and(gone)
    })
}

macro_rules! smp_cases {
    ($($f:ident),* $(,)?) => {
        /// Every SMP case, in order, for an `Mm` over any backend type `O`.
        pub fn smp_cases<O: PvMmuOps + ?Sized>() -> Vec<Case<O>> {
            alloc::vec![$(Case { name: stringify!($f), run: $f::<O> }),*]
        }
    };
}

/// SMP cases that leave another CPU with a stale translation of a page
/// whose leaf they pointed at another frame, on purpose: a flush that does
/// not reach that CPU only shows as it still reading the old frame. A host
/// model that records such a divergence as a hazard (the machine model's
/// `Diverged`) must expect it in these cases, and only in these.
pub const STALE_ON_PURPOSE: &[&str] = &["flush_tlb_multi_flushes_the_cpus_in_the_set"];

smp_cases!(
    each_cpu_has_its_own_loaded_root,
    unmap_shoots_down_the_translation_on_every_cpu_that_holds_the_space,
    flush_tlb_multi_flushes_the_cpus_in_the_set,
    exit_drops_the_root_on_a_cpu_that_still_holds_it,
    exit_of_a_space_another_cpu_runs_is_refused_and_changes_nothing,
    exit_mm_of_a_root_loaded_on_another_cpu_is_refused,
);
