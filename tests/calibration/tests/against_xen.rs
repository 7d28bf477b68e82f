//! The corpus on the model, compared with the checked-in copy of the last
//! real-Xen run (`xen-results.txt`, refreshed by `cargo xtask calibrate
//! --save`): model drift fails `cargo test` without booting anything.

use std::collections::BTreeSet;

use pvops_calibration::corpus::CASES;
use pvops_calibration::host::{compare, model_run, parse, parse_summary, table, Line, DELIBERATE, MODEL_SEED};

const XEN: &str = include_str!("../xen-results.txt");

fn model_lines(seed: u64) -> Vec<Line> {
    let (records, sum, violations) = model_run(seed);
    assert_eq!((sum.harness_errors, sum.poisoned.len(), violations), (0, 0, 0), "model run unusable: {sum}");
    assert_eq!(sum.cases, CASES.len(), "every case ran");
    records.iter().map(Line::from).collect()
}

#[test]
fn the_model_agrees_with_the_real_xen_record_by_record() {
    let xen = parse(XEN);
    let c = compare(&xen, &model_lines(MODEL_SEED));
    let bad = c.unexplained();
    assert!(
        bad.is_empty(),
        "{} record(s) differ from the real Xen (calibration={}):\n{}",
        bad.len(),
        c.fraction(),
        table(&c).lines().filter(|l| l.ends_with("NO")).collect::<Vec<_>>().join("\n")
    );
    assert_eq!(c.total(), xen.len(), "the model produced records Xen did not");
    assert_eq!(c.agreeing(), c.total(), "calibration={}: every record agrees (T/T)", c.fraction());
}

#[test]
fn the_result_does_not_depend_on_the_p2m() {
    let a = model_lines(MODEL_SEED);
    for seed in [1, 2, 0xdead] {
        assert_eq!(model_lines(seed), a, "seed {seed}");
    }
}

#[test]
fn the_saved_xen_run_is_whole_and_clean() {
    let sum = parse_summary(XEN).expect("CALSUM line");
    assert_eq!(sum.get("harness_errors"), Some(&0));
    assert_eq!(sum.get("poisoned"), Some(&0));
    assert_eq!(
        sum.get("cases"),
        Some(&(CASES.len() as u64)),
        "saved run is older than the corpus: cargo xtask calibrate --save"
    );
    assert_eq!(sum.get("records"), Some(&(parse(XEN).len() as u64)));
}

#[test]
fn the_corpus_is_big_enough_and_covers_the_hostile_patterns() {
    assert!(CASES.len() >= 30);
    let names: BTreeSet<&str> = CASES.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), CASES.len(), "case names are unique");
    for must in [
        "alias-rw-link",
        "pin-mapped-rw",
        "pse-l2",
        "pse-l3",
        "xsa182-l4-rw",
        "xen-l4-slots",
        "user-base-invalid",
        "unpin-loaded-root",
        "pin-twice",
        "xsa286-multicall",
        "uvm-no-l1",
        "preserve-ad",
        "linear-l4",
    ] {
        assert!(names.contains(must), "{must} missing");
    }
    for (case, label, _) in DELIBERATE {
        assert!(names.contains(case), "deliberate entry for unknown case {case}/{label}");
    }
}

#[test]
fn a_changed_xen_record_is_a_disagreement() {
    let model = model_lines(MODEL_SEED);
    let mut xen = model.clone();
    xen[3].status = -99;
    let c = compare(&xen, &model);
    assert!(!c.ok());
    assert_eq!(c.agreeing(), model.len() - 1);
    xen.pop();
    xen[3].status = model[3].status;
    assert!(!compare(&xen, &model).ok(), "a record missing on the Xen side is a disagreement");
}
