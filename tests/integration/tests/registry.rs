//! The registry: selection by probe and priority, its errors, and backends
//! registered from a crate other than `pvops` (this test crate and the backends).

use linkme::distributed_slice;
use pvops::{BackendDesc, BootEnv, EntryKind, PvError, PvMmuOps, BACKENDS};
use pvops_integration::native_host::native_platform;
use pvops_native as _;
use pvops_xen64 as _;

/// A backend registered from this test crate: accepts only a handover string
/// no real platform produces, so it never wins by accident.
fn test_probe(env: &BootEnv<'_>) -> Result<(), &'static str> {
    if env.handover == "test-only-platform" {
        Ok(())
    } else {
        Err("not the test platform")
    }
}

fn test_instantiate(_env: &BootEnv<'_>) -> Result<&'static dyn PvMmuOps, PvError> {
    Err(PvError::WrongState { what: "test backend cannot run" })
}

#[distributed_slice(BACKENDS)]
static TEST_BACKEND: BackendDesc =
    BackendDesc { name: "test-from-other-crate", priority: 100, probe: test_probe, instantiate: test_instantiate };

fn always(_: &BootEnv<'_>) -> Result<(), &'static str> {
    Ok(())
}
fn never(_: &BootEnv<'_>) -> Result<(), &'static str> {
    Err("never")
}

static HIGH: BackendDesc = BackendDesc { name: "high", priority: 10, probe: always, instantiate: test_instantiate };
static LOW: BackendDesc = BackendDesc { name: "low", priority: 1, probe: always, instantiate: test_instantiate };
static REFUSES: BackendDesc =
    BackendDesc { name: "refuses", priority: 50, probe: never, instantiate: test_instantiate };
static DUP: BackendDesc = BackendDesc { name: "low", priority: 3, probe: always, instantiate: test_instantiate };

#[test]
fn backends_from_other_crates_are_found() {
    let names: Vec<_> = pvops::backends().iter().map(|d| d.name).collect();
    assert!(names.contains(&"test-from-other-crate"), "{names:?}");
    assert!(names.contains(&"native"), "{names:?}");
    assert!(names.contains(&"xen64"), "{names:?}");
}

#[test]
fn the_highest_priority_accepting_backend_wins() {
    let host = native_platform(64);
    let env = host.env();
    let d = pvops::select(&env, &[&LOW, &REFUSES, &HIGH], None).expect("selects");
    assert_eq!(d.name, "high");
    let d = pvops::select(&env, &[&LOW, &REFUSES], None).expect("selects");
    assert_eq!(d.name, "low");
}

#[test]
fn no_accepting_backend_lists_every_name_and_reason() {
    let host = native_platform(64);
    let err = pvops::select(&host.env(), &[&REFUSES], None).expect_err("nothing accepts");
    assert_eq!(err.error, PvError::NoBackend);
    assert_eq!(err.tried, vec![("refuses", "never")]);
    let text = err.to_string();
    assert!(text.contains("refuses: never"), "{text}");
}

#[test]
fn duplicate_names_are_an_error() {
    let host = native_platform(64);
    let err = pvops::select(&host.env(), &[&LOW, &HIGH, &DUP], None).expect_err("duplicate");
    assert_eq!(err.error, PvError::DuplicateBackend { name: "low" });
}

#[test]
fn forcing_a_backend_by_name() {
    let host = native_platform(64);
    let env = host.env();
    assert_eq!(pvops::select(&env, &[&LOW, &HIGH], Some("low")).expect("forced").name, "low");
    let unknown = pvops::select(&env, &[&LOW, &HIGH], Some("nope")).expect_err("unknown");
    assert_eq!(unknown.error, PvError::UnknownBackend);
    assert_eq!(unknown.tried.len(), 2, "names the registered backends");
    let refused = pvops::select(&env, &[&REFUSES], Some("refuses")).expect_err("probe refuses");
    assert_eq!(refused.error, PvError::NoBackend);
}

#[test]
fn the_real_registry_picks_native_for_a_pvh_boot_and_xen64_refuses_it() {
    let host = native_platform(64);
    let env = host.env();
    assert_eq!(env.entry, EntryKind::Pvh);
    let list = pvops::backends();
    let d = pvops::select(&env, &list, None).expect("native accepts");
    assert_eq!(d.name, "native");
    let xen = list.iter().find(|d| d.name == "xen64").expect("xen64 registered");
    assert!((xen.probe)(&env).is_err());
}

/// `init` runs once per process: this is the only test in this binary that calls it.
#[test]
fn init_selects_once_and_ops_works_only_after() {
    assert_eq!(pvops::ops().err(), Some(PvError::NotInitialized));
    let host = native_platform(64);
    let ops = pvops::init(&host.env()).expect("init");
    assert_eq!(ops.name(), "native");
    assert_eq!(pvops::ops().expect("ops after init").name(), "native");
    let again = pvops::init(&host.env()).expect_err("second init");
    assert_eq!(again.error, PvError::AlreadyInitialized);
}
