//! # pvops-trace — an out-of-tree backend
//!
//! A backend that lives in its own crate and needs no change anywhere else:
//! it registers itself in `pvops::BACKENDS` as `trace`, wraps whichever other
//! backend the platform would have chosen, and records every successful MMU
//! operation as a replayable, one-line-per-event trace ([`Event`]). Replaying a
//! trace onto a fresh backend ([`replay`]) reproduces the page tables: a tool
//! for bisecting MMU bugs and for comparing backends.
//!
//! Its priority is the lowest, so it never wins by accident: select it with
//! `pvops::init_forced(&env, "trace")` (or `cargo xtask run --backend trace`).
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

extern crate alloc;

mod backend;
mod event;
mod register;
mod replay;

pub use backend::TraceBackend;
pub use event::{Event, ParseError};
pub use register::PRIORITY;
pub use replay::{apply, replay, ReplayError};
