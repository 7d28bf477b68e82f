//! The runner's own safety rules, on the model: the kernel relies on them to
//! survive hostile cases on the real Xen.

use pvops_calibration::host::{model_run_cases, MODEL_SEED};
use pvops_calibration::{Case, Ctx};
use pvops_xen64::abi::mmuext;

fn store_through_read_only_alias(cx: &mut Ctx<'_, '_>) {
    cx.ro(0);
    cx.store(0, 1, 0x42);
}

fn read_through_foreign_alias(cx: &mut Ctx<'_, '_>) {
    let (va, other) = (cx.va(0), cx.e(1, 1));
    cx.uvm("alias-elsewhere", va, other, 2);
    cx.read("refused", 0, 0);
}

fn leave_loaded_as_kernel_base(cx: &mut Ctx<'_, '_>) {
    cx.ro(0);
    let m = cx.mfn(0);
    cx.ext("load-as-kernel-base", &[(mmuext::NEW_BASEPTR, m)]);
}

fn nothing(_: &mut Ctx<'_, '_>) {}

const fn case(name: &'static str, run: fn(&mut Ctx<'_, '_>)) -> Case {
    Case { name, what: "runner test", run }
}

#[test]
fn a_store_to_a_read_only_alias_is_refused_not_performed() {
    let (_, sum, violations) = model_run_cases(MODEL_SEED, &[case("store-ro", store_through_read_only_alias)]);
    assert_eq!(sum.harness_errors, 1);
    assert_eq!(violations, 0, "the store must never reach the (modelled) hardware");
    assert!(sum.poisoned.is_empty());
}

#[test]
fn a_read_through_an_alias_naming_another_frame_is_refused() {
    let (records, sum, _) = model_run_cases(MODEL_SEED, &[case("read-elsewhere", read_through_foreign_alias)]);
    assert_eq!(sum.harness_errors, 1);
    assert_eq!(records.iter().find(|r| r.label == "refused").map(|r| r.status), Some(0));
}

#[test]
fn a_frame_left_typed_is_poisoned_and_the_run_stops() {
    let cases = [case("poison", leave_loaded_as_kernel_base), case("after", nothing)];
    let (records, sum, _) = model_run_cases(MODEL_SEED, &cases);
    assert_eq!(sum.cases, 1, "no case runs after a poisoned frame");
    assert_eq!(sum.poisoned.len(), 1);
    let restored = records.iter().find(|r| r.label == "cleanup-restored").expect("cleanup record");
    assert_eq!((restored.status, restored.done), (-16, 7), "-EBUSY for the one frame still typed");
    assert!(records.iter().all(|r| r.case == "poison"));
}

#[test]
fn every_case_starts_from_clean_frames() {
    // The same case twice gives the same records: cleanup really reset everything.
    let (records, sum, _) =
        model_run_cases(MODEL_SEED, &[case("a", leave_nothing_behind), case("b", leave_nothing_behind)]);
    assert_eq!(sum.harness_errors, 0);
    let a: Vec<_> = records.iter().filter(|r| r.case == "a").map(|r| (r.label, r.status, r.done)).collect();
    let b: Vec<_> = records.iter().filter(|r| r.case == "b").map(|r| (r.label, r.status, r.done)).collect();
    assert_eq!(a, b);
}

/// Pins a table with an entry and leaves it pinned: cleanup must unpin and zero it.
fn leave_nothing_behind(cx: &mut Ctx<'_, '_>) {
    cx.read("word-before", 0, 0);
    let e = cx.e(1, 3);
    cx.store(0, 0, e);
    cx.ro(0);
    cx.pin("pin", mmuext::PIN_L1_TABLE, 0);
}
