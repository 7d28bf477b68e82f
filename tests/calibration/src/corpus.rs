//! The corpus: raw hypercall sequences over scratch frames 0..8.
//!
//! Each case starts from eight zeroed, untyped frames with writable aliases
//! and may leave anything behind: the runner's cleanup gives every frame
//! back. Rules probed are Xen's (`xen/arch/x86/mm.c`: `get_page_type`,
//! `get_page_from_lNe`, `mod_lN_entry`, `do_mmu_update`, `do_mmuext_op`,
//! `do_update_va_mapping`; `xen/common/multicall.c`); hostile cases follow
//! XTF's XSA tests (XSA-182, XSA-286) in spirit, not in code.

use pvops_xen64::abi::{mmuext, uvmf, Call, MmuUpdate, MmuextOp};

use crate::f::{A, D, G, P, PS, RW, U};
use crate::{Case, Ctx, MMU_PT_UPDATE_PRESERVE_AD, UVMF_ALL};

use mmuext::{
    INVLPG_LOCAL, NEW_USER_BASEPTR, PIN_L1_TABLE as PIN1, PIN_L2_TABLE as PIN2, PIN_L3_TABLE as PIN3,
    PIN_L4_TABLE as PIN4, TLB_FLUSH_LOCAL, UNPIN_TABLE,
};

/// A machine frame far beyond any RAM this domain owns.
const FOREIGN_MFN: u64 = 1 << 35;
/// A user-half address with no L1 in the kernel's tables (init_mm maps no user space).
const NO_L1_VA: u64 = 0x0000_5a5a_0000_0000;

/// Makes frames `ks` read-only.
fn ro_all(cx: &mut Ctx<'_, '_>, ks: &[usize]) {
    for &k in ks {
        cx.ro(k);
    }
}

/// L1 in frame 0 (empty), L2 in 1 -> 0, L3 in 2 -> 1, L4 in 3 -> 2 at slot 0;
/// all four made read-only.
fn build_hierarchy(cx: &mut Ctx<'_, '_>) {
    let (l1, l2, l3) = (cx.e(0, P | RW), cx.e(1, P | RW), cx.e(2, P | RW));
    cx.store(1, 0, l1);
    cx.store(2, 0, l2);
    cx.store(3, 0, l3);
    ro_all(cx, &[0, 1, 2, 3]);
}

/// A pinned, empty table of `pin` in frame `k`.
fn pinned(cx: &mut Ctx<'_, '_>, pin: u32, k: usize) {
    cx.ro(k);
    cx.pin("pin", pin, k);
}

fn alias_ro_rw(cx: &mut Ctx<'_, '_>) {
    cx.ro(0);
    cx.rw(0);
}

fn uvm_tlb_flush(cx: &mut Ctx<'_, '_>) {
    let (va, ro, rw) = (cx.va(0), cx.e(0, P | A), cx.e(0, P | RW | A | D));
    cx.uvm("uvm-ro-tlbflush", va, ro, uvmf::TLB_FLUSH);
    cx.uvm("uvm-rw-tlbflush", va, rw, uvmf::TLB_FLUSH);
}

fn uvm_all_vcpus(cx: &mut Ctx<'_, '_>) {
    let (va, ro, rw) = (cx.va(0), cx.e(0, P | A), cx.e(0, P | RW | A | D));
    cx.uvm("uvm-ro-invlpg-all", va, ro, uvmf::INVLPG | UVMF_ALL);
    cx.uvm("uvm-rw-flush-all", va, rw, uvmf::TLB_FLUSH | UVMF_ALL);
}

fn uvm_both_flush_bits(cx: &mut Ctx<'_, '_>) {
    let (va, ro, rw) = (cx.va(0), cx.e(0, P | A), cx.e(0, P | RW | A | D));
    cx.uvm("uvm-ro-flags3", va, ro, 3);
    cx.uvm("uvm-rw-flags3", va, rw, 3);
}

fn uvm_no_l1(cx: &mut Ctx<'_, '_>) {
    let val = cx.e(0, P | A);
    cx.uvm("uvm-no-l1", NO_L1_VA, val, uvmf::INVLPG);
    cx.uvm("uvm-no-l1-clear", NO_L1_VA, 0, uvmf::INVLPG);
}

fn pin_l1_empty(cx: &mut Ctx<'_, '_>) {
    pinned(cx, PIN1, 0);
    cx.unpin("unpin", 0);
    cx.rw(0);
}

fn pin_l1_entries_rewritten(cx: &mut Ctx<'_, '_>) {
    let (a, b, c, d) = (cx.e(1, P | RW), cx.e(2, P), cx.e(3, P | RW | U), cx.e(4, P | U | G));
    cx.store(0, 0, a);
    cx.store(0, 1, b);
    cx.store(0, 2, c);
    cx.store(0, 3, d);
    pinned(cx, PIN1, 0);
    cx.read("l1e-kernel-rw", 0, 0);
    cx.read("l1e-kernel-ro", 0, 1);
    cx.read("l1e-user-rw", 0, 2);
    cx.read("l1e-user-global", 0, 3);
    cx.unpin("unpin", 0);
}

fn l1_update_pinned(cx: &mut Ctx<'_, '_>) {
    pinned(cx, PIN1, 0);
    let (p5, p6) = (cx.at(0, 5), cx.at(0, 6));
    let (rw1, ro2) = (cx.e(1, P | RW), cx.e(2, P));
    cx.mmu("mmu-3-records", &[(p5, rw1), (p6, ro2), (p5, 0)]);
    cx.read("l1e-after", 0, 6);
    cx.mmu("mmu-clear", &[(p6, 0)]);
    cx.unpin("unpin", 0);
}

fn pin_l4_hierarchy(cx: &mut Ctx<'_, '_>) {
    build_hierarchy(cx);
    cx.pin("pin-l4", PIN4, 3);
    cx.read("l4e", 3, 0);
    cx.read("l3e", 2, 0);
    cx.read("l2e", 1, 0);
    cx.rw(0);
    cx.unpin("unpin-l4", 3);
    cx.rw(0);
}

fn pin_l2_then_l3(cx: &mut Ctx<'_, '_>) {
    build_hierarchy(cx);
    cx.pin("pin-l2", PIN2, 1);
    cx.pin("pin-l3", PIN3, 2);
    cx.unpin("unpin-l2", 1);
    cx.rw(1);
    cx.unpin("unpin-l3", 2);
    cx.rw(1);
}

fn pin_wrong_level(cx: &mut Ctx<'_, '_>) {
    build_hierarchy(cx);
    cx.pin("pin-l2-as-l3", PIN3, 1);
    cx.pin("pin-l4-as-l1", PIN1, 3);
    cx.pin("pin-l1-as-l2", PIN2, 0);
}

fn mmuext_array_done(cx: &mut Ctx<'_, '_>) {
    ro_all(cx, &[0, 2]);
    let (m0, m1, m2) = (cx.mfn(0), cx.mfn(1), cx.mfn(2));
    cx.ext("pin-3-second-writable", &[(PIN1, m0), (PIN1, m1), (PIN1, m2)]);
    cx.ext("unpin-3", &[(UNPIN_TABLE, m0), (UNPIN_TABLE, m2), (UNPIN_TABLE, m0)]);
}

fn mmu_update_array_done(cx: &mut Ctx<'_, '_>) {
    pinned(cx, PIN1, 0);
    pinned(cx, PIN1, 2);
    let (p0, p1, p2) = (cx.at(0, 0), cx.at(0, 1), cx.at(0, 2));
    let (rw1, rw2, ro3) = (cx.e(1, P | RW), cx.e(2, P | RW), cx.e(3, P));
    cx.mmu("mmu-second-maps-table-rw", &[(p0, rw1), (p1, rw2), (p2, ro3)]);
    cx.read("l1e-0", 0, 0);
    cx.read("l1e-2", 0, 2);
}

fn flush_ops(cx: &mut Ctx<'_, '_>) {
    let va = cx.va(0);
    cx.ext("flush-invlpg", &[(TLB_FLUSH_LOCAL, 0), (INVLPG_LOCAL, va)]);
}

fn mmuext_unknown(cx: &mut Ctx<'_, '_>) {
    cx.ext("cmd-99", &[(TLB_FLUSH_LOCAL, 0), (99, 0)]);
}

fn mmu_update_unknown_cmd(cx: &mut Ctx<'_, '_>) {
    pinned(cx, PIN1, 0);
    let p = cx.at(0, 0);
    cx.mmu("mmu-cmd-3", &[(p | 3, 0)]);
}

fn mmu_update_plain_frame(cx: &mut Ctx<'_, '_>) {
    let p = cx.at(0, 3);
    cx.mmu("mmu-untyped-frame", &[(p, 0x1234_5000)]);
    cx.read("word", 0, 3);
    cx.ro(0);
    cx.mmu("mmu-untyped-ro-alias", &[(p, 0x6000)]);
    cx.read("word", 0, 3);
}

fn mmu_update_misaligned(cx: &mut Ctx<'_, '_>) {
    let p = cx.at(0, 3);
    cx.mmu("mmu-misaligned-untyped", &[(p | 4, 0)]);
    pinned(cx, PIN1, 1);
    let p = cx.at(1, 3);
    cx.mmu("mmu-misaligned-l1", &[(p | 4, 0)]);
}

fn mmu_update_foreign_ptr(cx: &mut Ctx<'_, '_>) {
    cx.mmu("mmu-foreign-table", &[(FOREIGN_MFN << 12, 0)]);
}

fn l1_maps_foreign(cx: &mut Ctx<'_, '_>) {
    pinned(cx, PIN1, 0);
    let p = cx.at(0, 0);
    cx.mmu("l1e-foreign-ro", &[(p, (FOREIGN_MFN << 12) | P)]);
    cx.mmu("l1e-clear", &[(p, 0)]);
}

fn writable_alias_pin(cx: &mut Ctx<'_, '_>) {
    cx.pin("pin-l1-alias-rw", PIN1, 0);
    cx.pin("pin-l4-alias-rw", PIN4, 1);
}

fn writable_alias_link(cx: &mut Ctx<'_, '_>) {
    pinned(cx, PIN2, 1);
    let (p, l1) = (cx.at(1, 0), cx.e(0, P | RW));
    cx.mmu("link-l1-alias-rw", &[(p, l1)]);
    cx.ro(0);
    cx.mmu("link-l1-alias-ro", &[(p, l1)]);
    cx.rw(0);
    cx.mmu("unlink", &[(p, 0)]);
    cx.rw(0);
}

fn pin_mapped_writable(cx: &mut Ctx<'_, '_>) {
    let rw1 = cx.e(1, P | RW);
    cx.store(0, 0, rw1);
    pinned(cx, PIN1, 0);
    cx.ro(1);
    cx.pin("pin-l1-mapped-rw", PIN1, 1);
    let p = cx.at(0, 0);
    let ro1 = cx.e(1, P);
    cx.mmu("l1e-make-ro", &[(p, ro1)]);
    cx.pin("pin-l1-mapped-ro", PIN1, 1);
}

fn table_alias_writable(cx: &mut Ctx<'_, '_>) {
    pinned(cx, PIN1, 0);
    cx.rw(0);
    let (va, val) = (cx.va(0), cx.e(0, P | RW | A | D));
    cx.uvm("uvm-rw-noflush", va, val, uvmf::NONE);
    cx.unpin("unpin", 0);
}

fn pse_l2(cx: &mut Ctx<'_, '_>) {
    pinned(cx, PIN2, 1);
    let (p, e) = (cx.at(1, 0), cx.e(0, P | RW | PS));
    cx.mmu("l2e-pse", &[(p, e)]);
    let e = cx.e(0, P | PS);
    cx.store(2, 7, e);
    cx.ro(2);
    cx.pin("pin-l2-with-pse", PIN2, 2);
}

fn pse_l3(cx: &mut Ctx<'_, '_>) {
    pinned(cx, PIN3, 1);
    let (p, e) = (cx.at(1, 0), cx.e(0, P | RW | PS));
    cx.mmu("l3e-pse", &[(p, e)]);
    let e = cx.e(0, P | PS);
    cx.store(2, 7, e);
    cx.ro(2);
    cx.pin("pin-l3-with-pse", PIN3, 2);
}

fn global_above_l1(cx: &mut Ctx<'_, '_>) {
    ro_all(cx, &[0]);
    pinned(cx, PIN2, 1);
    let (p, e) = (cx.at(1, 0), cx.e(0, P | RW | G));
    cx.mmu("l2e-global", &[(p, e)]);
    let e = cx.e(0, P | RW);
    cx.mmu("l2e-plain", &[(p, e)]);
    cx.read("l2e", 1, 0);
    cx.mmu("l2e-clear", &[(p, 0)]);
}

fn xsa182_l4_rw_flip(cx: &mut Ctx<'_, '_>) {
    let self_ro = cx.e(0, P);
    cx.store(0, 0, self_ro);
    pinned(cx, PIN4, 0);
    let p = cx.at(0, 0);
    let (self_rw, self_ro_a) = (cx.e(0, P | RW), cx.e(0, P | A));
    cx.mmu("l4e-self-flip-rw", &[(p, self_rw)]);
    cx.mmu("l4e-self-set-a", &[(p, self_ro_a)]);
    cx.mmu("l4e-self-clear", &[(p, 0)]);
    cx.mmu("l4e-self-rw-new", &[(p, self_rw)]);
}

fn linear_l4_by_update(cx: &mut Ctx<'_, '_>) {
    pinned(cx, PIN4, 0);
    let p = cx.at(0, 5);
    let self_ro = cx.e(0, P);
    cx.mmu("l4e-self-ro", &[(p, self_ro)]);
    cx.read("l4e-self", 0, 5);
    cx.unpin("unpin", 0);
    cx.rw(0);
}

fn linear_l2(cx: &mut Ctx<'_, '_>) {
    pinned(cx, PIN2, 1);
    let p = cx.at(1, 9);
    let (self_ro, self_rw) = (cx.e(1, P), cx.e(1, P | RW));
    cx.mmu("l2e-self-rw", &[(p, self_rw)]);
    cx.mmu("l2e-self-ro", &[(p, self_ro)]);
    cx.mmu("l2e-self-clear", &[(p, 0)]);
}

fn linear_other_l4(cx: &mut Ctx<'_, '_>) {
    pinned(cx, PIN4, 0);
    pinned(cx, PIN4, 1);
    let p = cx.at(0, 3);
    let other = cx.e(1, P);
    cx.mmu("l4e-other-l4-ro", &[(p, other)]);
    cx.mmu("l4e-clear", &[(p, 0)]);
}

fn xen_l4_slots(cx: &mut Ctx<'_, '_>) {
    pinned(cx, PIN4, 0);
    let (s255, s256, s271, s272) = (cx.at(0, 255), cx.at(0, 256), cx.at(0, 271), cx.at(0, 272));
    cx.mmu("slot-255-then-256", &[(s255, 0), (s256, 0), (s272, 0)]);
    cx.mmu("slot-271", &[(s271, 0)]);
    cx.mmu("slot-272", &[(s272, 0)]);
    let (s260, l3) = (cx.at(0, 260), cx.e(1, P | RW));
    cx.ro(1);
    cx.mmu("slot-260-l3", &[(s260, l3)]);
}

fn xen_l4_slots_at_pin(cx: &mut Ctx<'_, '_>) {
    let junk = cx.e(1, P | RW);
    cx.store(0, 256, junk);
    cx.store(0, 270, junk);
    pinned(cx, PIN4, 0);
}

fn new_user_baseptr_valid(cx: &mut Ctx<'_, '_>) {
    pinned(cx, PIN4, 0);
    let (m, old) = (cx.mfn(0), cx.old_user_base());
    cx.user_base("user-base-load", m);
    cx.user_base("user-base-again", m);
    cx.user_base("user-base-restore", old);
    cx.unpin("unpin", 0);
}

fn new_user_baseptr_invalid(cx: &mut Ctx<'_, '_>) {
    let m0 = cx.mfn(0);
    cx.user_base("user-base-alias-rw", m0);
    pinned(cx, PIN1, 1);
    let m1 = cx.mfn(1);
    cx.user_base("user-base-l1", m1);
    cx.user_base("user-base-foreign", FOREIGN_MFN);
    let bad = cx.e(2, P | PS);
    cx.store(3, 0, bad);
    cx.ro(3);
    let m3 = cx.mfn(3);
    cx.user_base("user-base-bad-l4", m3);
}

fn unpin_loaded_root(cx: &mut Ctx<'_, '_>) {
    pinned(cx, PIN4, 0);
    let (m, old) = (cx.mfn(0), cx.old_user_base());
    cx.user_base("user-base-load", m);
    cx.unpin("unpin-loaded", 0);
    cx.rw(0);
    cx.pin("repin-loaded", PIN4, 0);
    cx.unpin("unpin-again", 0);
    cx.user_base("user-base-restore", old);
    cx.rw(0);
}

fn unpin_untyped(cx: &mut Ctx<'_, '_>) {
    cx.unpin("unpin-untyped", 0);
    build_hierarchy(cx);
    cx.pin("pin-l4", PIN4, 3);
    cx.unpin("unpin-linked-l3", 2);
    cx.unpin("unpin-l4", 3);
}

fn pin_twice(cx: &mut Ctx<'_, '_>) {
    pinned(cx, PIN1, 0);
    cx.pin("pin-again", PIN1, 0);
    cx.unpin("unpin", 0);
    cx.unpin("unpin-again", 0);
}

fn xsa286_multicall(cx: &mut Ctx<'_, '_>) {
    let (va0, m0, p0) = (cx.va(0), cx.mfn(0), cx.at(0, 0));
    let (ro0, rw0, rw1, rw0_self) = (cx.e(0, P | A), cx.e(0, P | RW | A | D), cx.e(1, P | RW), cx.e(0, P | RW));
    let pin = [MmuextOp { cmd: PIN1, arg1: m0, arg2: 0 }];
    let unpin = [MmuextOp { cmd: UNPIN_TABLE, arg1: m0, arg2: 0 }];
    let link = [MmuUpdate { ptr: p0, val: rw1 }];
    let link_self = [MmuUpdate { ptr: p0, val: rw0_self }];
    let clear = [MmuUpdate { ptr: p0, val: 0 }];
    cx.multi(
        "mc",
        &[
            Call::UpdateVaMapping { va: va0, val: ro0, flags: uvmf::INVLPG },
            Call::MmuextOp(&pin),
            Call::MmuUpdate(&link),
            Call::MmuUpdate(&link_self),
            Call::UpdateVaMapping { va: va0, val: rw0, flags: uvmf::INVLPG },
            Call::MmuUpdate(&clear),
            Call::MmuextOp(&unpin),
            Call::UpdateVaMapping { va: va0, val: rw0, flags: uvmf::INVLPG },
        ],
    );
}

fn multicall_failure_does_not_stop(cx: &mut Ctx<'_, '_>) {
    let (va0, m0) = (cx.va(0), cx.mfn(0));
    let ro0 = cx.e(0, P | A);
    let pin = [MmuextOp { cmd: PIN1, arg1: m0, arg2: 0 }];
    let twice = [MmuextOp { cmd: PIN1, arg1: m0, arg2: 0 }, MmuextOp { cmd: PIN1, arg1: m0, arg2: 0 }];
    let unpin = [MmuextOp { cmd: UNPIN_TABLE, arg1: m0, arg2: 0 }];
    cx.multi(
        "mc",
        &[
            Call::MmuextOp(&pin),
            Call::UpdateVaMapping { va: va0, val: ro0, flags: uvmf::INVLPG },
            Call::MmuextOp(&twice),
            Call::MmuextOp(&unpin),
        ],
    );
}

fn preserve_ad(cx: &mut Ctx<'_, '_>) {
    let e = cx.e(1, P | A | D);
    cx.store(0, 0, e);
    pinned(cx, PIN1, 0);
    let p = cx.at(0, 0);
    let plain = cx.e(1, P);
    cx.mmu("preserve-ad", &[(p | MMU_PT_UPDATE_PRESERVE_AD, plain)]);
    cx.read("l1e-after-preserve", 0, 0);
    cx.mmu("normal", &[(p, plain)]);
    cx.read("l1e-after-normal", 0, 0);
    let (p1, rw2) = (cx.at(0, 1), cx.e(2, P | RW));
    cx.mmu("preserve-ad-new", &[(p1 | MMU_PT_UPDATE_PRESERVE_AD, rw2)]);
}

fn l1_maps_itself_writable(cx: &mut Ctx<'_, '_>) {
    let e = cx.e(0, P | RW);
    cx.store(0, 0, e);
    pinned(cx, PIN1, 0);
    let e = cx.e(0, P);
    cx.store(1, 0, e);
    pinned(cx, PIN1, 1);
}

fn l1_maps_table(cx: &mut Ctx<'_, '_>) {
    pinned(cx, PIN1, 0);
    pinned(cx, PIN1, 1);
    let (p, rw1, ro1) = (cx.at(0, 0), cx.e(1, P | RW), cx.e(1, P));
    cx.mmu("l1e-table-rw", &[(p, rw1)]);
    cx.mmu("l1e-table-ro", &[(p, ro1)]);
    cx.mmu("l1e-table-ro-to-rw", &[(p, rw1)]);
}

fn unlink_releases(cx: &mut Ctx<'_, '_>) {
    build_hierarchy(cx);
    cx.pin("pin-l4", PIN4, 3);
    let p = cx.at(1, 0);
    cx.mmu("unlink-l1", &[(p, 0)]);
    cx.rw(0);
    let l1 = cx.e(0, P | RW);
    cx.mmu("relink-l1-alias-rw", &[(p, l1)]);
}

fn new_user_baseptr_zero(cx: &mut Ctx<'_, '_>) {
    let old = cx.old_user_base();
    cx.ext("user-base-zero", &[(NEW_USER_BASEPTR, 0)]);
    cx.user_base("user-base-restore", old);
}

fn alias_unmap(cx: &mut Ctx<'_, '_>) {
    let va = cx.va(0);
    cx.uvm("alias-unmap", va, 0, uvmf::INVLPG);
    let m = cx.mfn(0);
    cx.ext("pin-l1-unmapped", &[(PIN1, m)]);
    cx.rw(0);
}

fn alias_other_frame(cx: &mut Ctx<'_, '_>) {
    let (va, other) = (cx.va(0), cx.e(1, P | A));
    cx.uvm("alias-names-frame-1", va, other, uvmf::INVLPG);
    let m0 = cx.mfn(0);
    cx.ext("pin-l1-unaliased", &[(PIN1, m0)]);
    cx.unpin("unpin", 0);
    let other_rw = cx.e(1, P | RW | A | D);
    cx.uvm("alias-names-frame-1-rw", va, other_rw, uvmf::INVLPG);
    cx.rw(0);
}

fn kernel_base(cx: &mut Ctx<'_, '_>) {
    let (m0, kb) = (cx.mfn(0), cx.kernel_base());
    cx.ext("kernel-base-alias-rw", &[(mmuext::NEW_BASEPTR, m0)]);
    pinned(cx, PIN1, 1);
    let m1 = cx.mfn(1);
    cx.ext("kernel-base-l1", &[(mmuext::NEW_BASEPTR, m1)]);
    cx.ext("kernel-base-foreign", &[(mmuext::NEW_BASEPTR, FOREIGN_MFN)]);
    cx.ext("kernel-base-reload", &[(mmuext::NEW_BASEPTR, kb)]);
}

fn pin_l4_rollback(cx: &mut Ctx<'_, '_>) {
    build_hierarchy(cx);
    let bad_l3 = cx.e(4, P | RW);
    // Frame 3 is read-only now: link the bad L3 by a second pass below.
    cx.rw(3);
    cx.store(3, 1, bad_l3);
    cx.ro(3);
    cx.pin("pin-l4-second-l3-writable", PIN4, 3);
    cx.rw(0);
    cx.rw(1);
    cx.rw(2);
    cx.rw(3);
}

fn replace_releases(cx: &mut Ctx<'_, '_>) {
    ro_all(cx, &[0, 5]);
    pinned(cx, PIN2, 1);
    let (p, l1a, l1b) = (cx.at(1, 0), cx.e(0, P | RW), cx.e(5, P | RW));
    cx.mmu("link-l1-a", &[(p, l1a)]);
    cx.mmu("replace-with-l1-b", &[(p, l1b)]);
    cx.rw(0);
    cx.rw(5);
    cx.mmu("clear", &[(p, 0)]);
    cx.rw(5);
}

fn not_present_junk(cx: &mut Ctx<'_, '_>) {
    pinned(cx, PIN2, 1);
    pinned(cx, PIN1, 0);
    let (p2, p1) = (cx.at(1, 3), cx.at(0, 3));
    cx.mmu("l2e-not-present-junk", &[(p2, 0xdead_b000 | RW | PS | G)]);
    cx.mmu("l1e-not-present-junk", &[(p1, 0xdead_b000 | RW | U)]);
    cx.read("l2e-junk", 1, 3);
    cx.read("l1e-junk", 0, 3);
}

fn nx_above_l1(cx: &mut Ctx<'_, '_>) {
    ro_all(cx, &[0]);
    pinned(cx, PIN2, 1);
    let (p, e) = (cx.at(1, 0), cx.e(0, P | RW | pvops::pte::flags::NO_EXECUTE));
    cx.mmu("l2e-nx", &[(p, e)]);
    cx.read("l2e", 1, 0);
    cx.mmu("l2e-clear", &[(p, 0)]);
}

fn pin_foreign(cx: &mut Ctx<'_, '_>) {
    cx.ext("pin-foreign-l1", &[(PIN1, FOREIGN_MFN)]);
    cx.ext("unpin-foreign", &[(UNPIN_TABLE, FOREIGN_MFN)]);
}

/// Every case, in the order they run.
pub const CASES: &[Case] = &[
    Case {
        name: "alias-ro-rw",
        what: "update_va_mapping makes a frame's alias read-only and writable again",
        run: alias_ro_rw,
    },
    Case { name: "uvm-tlb-flush", what: "update_va_mapping with UVMF_TLB_FLUSH", run: uvm_tlb_flush },
    Case { name: "uvm-all-vcpus", what: "update_va_mapping with UVMF_ALL (flush every vCPU)", run: uvm_all_vcpus },
    Case { name: "uvm-flags-3", what: "update_va_mapping with both flush-type bits", run: uvm_both_flush_bits },
    Case { name: "uvm-no-l1", what: "hostile: update_va_mapping where no L1 exists", run: uvm_no_l1 },
    Case { name: "pin-l1-empty", what: "pin and unpin an empty L1", run: pin_l1_empty },
    Case { name: "l1-rewrites", what: "validation rewrites L1 entries (U, bit 52, G)", run: pin_l1_entries_rewritten },
    Case { name: "l1-update", what: "mmu_update of a pinned L1, three records", run: l1_update_pinned },
    Case { name: "pin-l4-tree", what: "pin an L4 over L3, L2, L1; read back the upper entries", run: pin_l4_hierarchy },
    Case { name: "pin-l2-l3", what: "pin an L2, then the L3 above it", run: pin_l2_then_l3 },
    Case { name: "pin-wrong-level", what: "hostile: pin tables as the wrong level", run: pin_wrong_level },
    Case { name: "ext-array-done", what: "mmuext_op array failing mid-way: done count", run: mmuext_array_done },
    Case { name: "mmu-array-done", what: "mmu_update array failing mid-way: done count", run: mmu_update_array_done },
    Case { name: "flush-ops", what: "MMUEXT_TLB_FLUSH_LOCAL and MMUEXT_INVLPG_LOCAL", run: flush_ops },
    Case { name: "ext-unknown-cmd", what: "hostile: mmuext_op with an unknown command", run: mmuext_unknown },
    Case { name: "mmu-unknown-cmd", what: "hostile: mmu_update command 3", run: mmu_update_unknown_cmd },
    Case { name: "mmu-plain-frame", what: "mmu_update into a frame that is no table", run: mmu_update_plain_frame },
    Case { name: "mmu-misaligned", what: "hostile: mmu_update ptr not 8-byte aligned", run: mmu_update_misaligned },
    Case {
        name: "mmu-foreign-ptr",
        what: "hostile: mmu_update into a frame the domain does not own",
        run: mmu_update_foreign_ptr,
    },
    Case { name: "l1-maps-foreign", what: "hostile: an L1 entry naming a non-RAM frame", run: l1_maps_foreign },
    Case { name: "alias-rw-pin", what: "hostile: pin a frame whose alias is writable", run: writable_alias_pin },
    Case {
        name: "alias-rw-link",
        what: "hostile: link a frame with a writable alias as a table",
        run: writable_alias_link,
    },
    Case {
        name: "pin-mapped-rw",
        what: "hostile: pin a table still mapped writable by an L1",
        run: pin_mapped_writable,
    },
    Case { name: "table-alias-rw", what: "hostile: make a pinned table's alias writable", run: table_alias_writable },
    Case { name: "pse-l2", what: "hostile: a PSE entry at L2 (update and validation)", run: pse_l2 },
    Case { name: "pse-l3", what: "hostile: a PSE entry at L3 (update and validation)", run: pse_l3 },
    Case { name: "global-l2", what: "hostile: G in an L2 entry", run: global_above_l1 },
    Case {
        name: "xsa182-l4-rw",
        what: "hostile (XSA-182): flip only RW of an L4 entry mapping the L4 itself",
        run: xsa182_l4_rw_flip,
    },
    Case { name: "linear-l4", what: "a read-only self-referencing L4 entry by mmu_update", run: linear_l4_by_update },
    Case { name: "linear-l2", what: "hostile: self-referencing L2 entries, writable and read-only", run: linear_l2 },
    Case { name: "linear-other-l4", what: "an L4 entry naming another pinned L4", run: linear_other_l4 },
    Case { name: "xen-l4-slots", what: "hostile: mmu_update into Xen's L4 slots 256-271", run: xen_l4_slots },
    Case {
        name: "xen-l4-slots-pin",
        what: "junk in Xen's L4 slots is ignored by validation",
        run: xen_l4_slots_at_pin,
    },
    Case { name: "user-base-valid", what: "NEW_USER_BASEPTR with a pinned L4, then back", run: new_user_baseptr_valid },
    Case {
        name: "user-base-invalid",
        what: "hostile: NEW_USER_BASEPTR with frames that are no valid L4",
        run: new_user_baseptr_invalid,
    },
    Case { name: "user-base-zero", what: "NEW_USER_BASEPTR 0 (none), then back", run: new_user_baseptr_zero },
    Case {
        name: "unpin-loaded-root",
        what: "hostile: unpin an L4 loaded as the user base pointer",
        run: unpin_loaded_root,
    },
    Case { name: "unpin-untyped", what: "hostile: unpin frames that are not pinned", run: unpin_untyped },
    Case { name: "pin-twice", what: "hostile: pin twice, unpin twice", run: pin_twice },
    Case {
        name: "xsa286-multicall",
        what: "hostile (XSA-286): one multicall mixing update_va_mapping and mmu_update on one table",
        run: xsa286_multicall,
    },
    Case {
        name: "multicall-failures",
        what: "a failing multicall entry does not stop the next",
        run: multicall_failure_does_not_stop,
    },
    Case { name: "preserve-ad", what: "MMU_PT_UPDATE_PRESERVE_AD", run: preserve_ad },
    Case {
        name: "l1-maps-itself-rw",
        what: "hostile: an L1 mapping itself writable, then read-only",
        run: l1_maps_itself_writable,
    },
    Case { name: "l1-maps-table", what: "hostile: an L1 entry mapping a pinned table writable", run: l1_maps_table },
    Case { name: "unlink-releases", what: "unlinking an L1 from a live tree releases its type", run: unlink_releases },
    Case {
        name: "alias-unmap",
        what: "update_va_mapping removes a frame's alias; the frame can then be pinned",
        run: alias_unmap,
    },
    Case {
        name: "alias-other-frame",
        what: "update_va_mapping points a frame's alias at another frame, read-only, then writable",
        run: alias_other_frame,
    },
    Case {
        name: "kernel-base",
        what: "hostile: NEW_BASEPTR with frames that are no valid L4; reload of the loaded root",
        run: kernel_base,
    },
    Case {
        name: "pin-l4-rollback",
        what: "hostile: an L4 pin failing deep in validation takes nothing",
        run: pin_l4_rollback,
    },
    Case { name: "replace-releases", what: "replacing an L2 entry releases the old L1's type", run: replace_releases },
    Case {
        name: "not-present-junk",
        what: "non-present entries with junk bits are accepted at L1 and L2",
        run: not_present_junk,
    },
    Case { name: "nx-above-l1", what: "NX in an L2 entry", run: nx_above_l1 },
    Case { name: "pin-foreign", what: "hostile: pin and unpin a frame the domain does not own", run: pin_foreign },
];
