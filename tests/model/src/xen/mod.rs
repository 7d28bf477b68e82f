//! Xen PV MMU model (see `model.rs`).
