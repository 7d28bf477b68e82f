//! The boot-time backend registry.
//!
//! Each backend crate adds a [`BackendDesc`] to the [`BACKENDS`] distributed
//! slice. `pvops` never names its backends (that is what lets a new hypervisor
//! be added without touching the core), so the list is assembled by the linker.
//! A crate nobody references is not linked: binaries and tests must
//! `use pvops_native as _;` for every backend they expect.

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::any::Any;
use core::fmt;

use linkme::distributed_slice;

use crate::error::PvError;
use crate::ops::PvMmuOps;

/// How the kernel was entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// 32-bit PVH entry (QEMU `-kernel`, bare metal-like).
    Pvh,
    /// 64-bit Xen PV entry with a `start_info`.
    XenPv,
}

/// What the boot path hands the registry: how we were entered, and the
/// platform's hardware handles (a backend downcasts to the type it expects).
#[derive(Clone, Copy)]
pub struct BootEnv<'a> {
    /// The entry point that ran.
    pub entry: EntryKind,
    /// The `start_info`/`hvm_start_info` magic string or number, as text.
    pub handover: &'a str,
    /// Hardware handles: `pvops_native::NativePlatform`, `pvops_xen64::XenPlatform`, …
    pub platform: &'a (dyn Any + Send + Sync),
}

impl fmt::Debug for BootEnv<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootEnv").field("entry", &self.entry).field("handover", &self.handover).finish_non_exhaustive()
    }
}

/// One registered backend.
///
/// A backend crate registers itself with one `static` in the [`BACKENDS`]
/// slice; nothing in `pvops` names it:
///
/// ```
/// use linkme::distributed_slice;
/// use pvops::{BackendDesc, BootEnv, EntryKind, PvError, PvMmuOps, BACKENDS};
///
/// fn probe(env: &BootEnv<'_>) -> Result<(), &'static str> {
///     if env.entry == EntryKind::XenPv { Ok(()) } else { Err("not a Xen PV guest") }
/// }
/// fn instantiate(_env: &BootEnv<'_>) -> Result<&'static dyn PvMmuOps, PvError> {
///     Err(PvError::WrongState { what: "example only" })
/// }
///
/// #[distributed_slice(BACKENDS)]
/// static EXAMPLE: BackendDesc = BackendDesc { name: "example", priority: 5, probe, instantiate };
///
/// assert!(pvops::backends().iter().any(|d| d.name == "example"));
/// ```
pub struct BackendDesc {
    /// Unique name (`"native"`, `"xen64"`, …).
    pub name: &'static str,
    /// Higher wins when several probes accept.
    pub priority: i32,
    /// Cheap, pure check: `Ok` if this backend can drive the platform, else why not.
    pub probe: fn(&BootEnv<'_>) -> Result<(), &'static str>,
    /// Builds the backend for the platform (called once, after a successful probe).
    pub instantiate: fn(&BootEnv<'_>) -> Result<&'static dyn PvMmuOps, PvError>,
}

impl fmt::Debug for BackendDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendDesc")
            .field("name", &self.name)
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

/// The linker-assembled list of backends.
#[distributed_slice]
pub static BACKENDS: [BackendDesc];

/// Why `init` failed, with every backend tried and its reason.
#[derive(Debug)]
pub struct InitError {
    /// The error kind.
    pub error: PvError,
    /// `(name, reason)` for every backend that was tried and refused.
    pub tried: Vec<(&'static str, &'static str)>,
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error)?;
        if !self.tried.is_empty() {
            write!(f, " (tried:")?;
            for (name, why) in &self.tried {
                write!(f, " {name}: {why};")?;
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}

impl From<PvError> for InitError {
    fn from(error: PvError) -> Self {
        InitError { error, tried: Vec::new() }
    }
}

/// Every registered backend, highest priority first (ties by name).
pub fn backends() -> Vec<&'static BackendDesc> {
    let mut v: Vec<&'static BackendDesc> = BACKENDS.iter().collect();
    v.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(b.name)));
    v
}

/// Pure selection over any list: checks duplicates, then returns the
/// highest-priority backend whose probe accepts `env` (or only `forced`).
///
/// ```
/// use pvops::{BackendDesc, BootEnv, EntryKind, PvError, PvMmuOps};
///
/// fn yes(_: &BootEnv<'_>) -> Result<(), &'static str> { Ok(()) }
/// fn no(_: &BootEnv<'_>) -> Result<(), &'static str> { Err("wrong platform") }
/// fn make(_: &BootEnv<'_>) -> Result<&'static dyn PvMmuOps, PvError> { Err(PvError::NoBackend) }
/// static LOW: BackendDesc = BackendDesc { name: "low", priority: 0, probe: yes, instantiate: make };
/// static HIGH: BackendDesc = BackendDesc { name: "high", priority: 9, probe: no, instantiate: make };
///
/// let env = BootEnv { entry: EntryKind::Pvh, handover: "", platform: &() };
/// assert_eq!(pvops::select(&env, &[&LOW, &HIGH], None).unwrap().name, "low");
/// let err = pvops::select(&env, &[&HIGH], None).unwrap_err();
/// assert_eq!(err.tried, vec![("high", "wrong platform")]);
/// ```
pub fn select<'d>(
    env: &BootEnv<'_>,
    list: &[&'d BackendDesc],
    forced: Option<&str>,
) -> Result<&'d BackendDesc, InitError> {
    for (i, a) in list.iter().enumerate() {
        if list[i + 1..].iter().any(|b| b.name == a.name) {
            return Err(PvError::DuplicateBackend { name: a.name }.into());
        }
    }
    let mut sorted: Vec<&'d BackendDesc> = list.to_vec();
    sorted.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(b.name)));
    let mut tried = Vec::new();
    if let Some(name) = forced {
        let Some(d) = sorted.iter().find(|d| d.name == name) else {
            for d in &sorted {
                tried.push((d.name, "registered, not the forced name"));
            }
            return Err(InitError { error: PvError::UnknownBackend, tried });
        };
        return match (d.probe)(env) {
            Ok(()) => Ok(d),
            Err(why) => Err(InitError { error: PvError::NoBackend, tried: alloc::vec![(d.name, why)] }),
        };
    }
    for d in sorted {
        match (d.probe)(env) {
            Ok(()) => return Ok(d),
            Err(why) => tried.push((d.name, why)),
        }
    }
    Err(InitError { error: PvError::NoBackend, tried })
}

/// The selected backend, published once.
#[derive(Debug)]
pub struct Selected {
    /// Its descriptor.
    pub desc: &'static BackendDesc,
    /// Its operations.
    pub ops: &'static dyn PvMmuOps,
}

impl fmt::Debug for dyn PvMmuOps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PvMmuOps({})", self.name())
    }
}

#[cfg(not(loom))]
static SELECTED: crate::publish::Cell<'static, Selected> = crate::publish::Cell::new();

#[cfg(loom)]
loom::lazy_static! {
    static ref SELECTED: crate::publish::Cell<'static, Selected> = crate::publish::Cell::new();
}

/// Picks, instantiates and publishes the backend for this boot. Runs once.
///
/// ```no_run
/// # fn env() -> pvops::BootEnv<'static> { unimplemented!() }
/// let ops = pvops::init(&env()).expect("a backend for this platform");
/// log::info!("running on {}", ops.name());
/// ```
pub fn init(env: &BootEnv<'_>) -> Result<&'static dyn PvMmuOps, InitError> {
    init_with(env, None)
}

/// Like [`init`] but only the backend called `name` is considered.
pub fn init_forced(env: &BootEnv<'_>, name: &str) -> Result<&'static dyn PvMmuOps, InitError> {
    init_with(env, Some(name))
}

fn init_with(env: &BootEnv<'_>, forced: Option<&str>) -> Result<&'static dyn PvMmuOps, InitError> {
    if SELECTED.get().is_some() {
        return Err(PvError::AlreadyInitialized.into());
    }
    let list = backends();
    let desc = select(env, &list, forced)?;
    let ops = (desc.instantiate)(env)?;
    let sel: &'static Selected = Box::leak(Box::new(Selected { desc, ops }));
    crate::publish::publish(&SELECTED, sel)?;
    log::info!("pvops: selected backend {} (priority {})", desc.name, desc.priority);
    Ok(ops)
}

/// Publishes a backend that was built outside [`init`] from the registry's
/// descriptor `desc` (e.g. by a [`static_dispatch!`](crate::static_dispatch)
/// enum's `init_static`) as this boot's selection, so [`ops`] returns it.
/// Fails with [`PvError::AlreadyInitialized`] if a backend is published already.
pub fn publish(desc: &'static BackendDesc, ops: &'static dyn PvMmuOps) -> Result<(), PvError> {
    let sel: &'static Selected = Box::leak(Box::new(Selected { desc, ops }));
    crate::publish::publish(&SELECTED, sel)?;
    log::info!("pvops: selected backend {} (priority {})", desc.name, desc.priority);
    Ok(())
}

/// The selected backend; [`PvError::NotInitialized`] before [`init`].
pub fn ops() -> Result<&'static dyn PvMmuOps, PvError> {
    SELECTED.get().map(|s| s.ops).ok_or(PvError::NotInitialized)
}

/// The selected backend's descriptor, if any.
pub fn selected() -> Option<&'static Selected> {
    SELECTED.get()
}
