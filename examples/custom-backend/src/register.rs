//! Registration: wrap the best other backend for the platform.

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;

use linkme::distributed_slice;
use pvops::{BackendDesc, BootEnv, PvError, PvMmuOps, BACKENDS};

use crate::backend::TraceBackend;

/// Lowest of all: chosen only when forced by name.
pub const PRIORITY: i32 = i32::MIN;

fn others() -> Vec<&'static BackendDesc> {
    pvops::backends().into_iter().filter(|d| d.name != "trace").collect()
}

fn probe(env: &BootEnv<'_>) -> Result<(), &'static str> {
    pvops::select(env, &others(), None).map(|_| ()).map_err(|_| "no other backend accepts this platform")
}

fn instantiate(env: &BootEnv<'_>) -> Result<&'static dyn PvMmuOps, PvError> {
    let inner_desc = pvops::select(env, &others(), None).map_err(|e| e.error)?;
    let inner = (inner_desc.instantiate)(env)?;
    Ok(Box::leak(Box::new(TraceBackend::new(inner))))
}

#[distributed_slice(BACKENDS)]
static TRACE: BackendDesc = BackendDesc { name: "trace", priority: PRIORITY, probe, instantiate };
