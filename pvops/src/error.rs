//! One error type with a variant per failure a caller can act on.

use core::fmt;

use crate::addr::{Level, Pfn, VirtAddr};

/// Everything that can go wrong in a pvops operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvError {
    /// No frame could be allocated.
    OutOfMemory,
    /// A virtual address is not in canonical form.
    NonCanonical {
        /// The offending value.
        addr: u64,
    },
    /// An address that must be page aligned is not.
    Unaligned {
        /// The offending value.
        addr: u64,
    },
    /// A user mapping was requested at a canonical address at or above
    /// [`crate::USER_LIMIT`] (the kernel half), or a range would cross it.
    /// `USER_LIMIT` itself and everything up to the kernel half are
    /// non-canonical: those are [`PvError::NonCanonical`].
    NotUserAddress {
        /// The offending address.
        addr: VirtAddr,
    },
    /// The page is already mapped.
    AlreadyMapped {
        /// The address.
        addr: VirtAddr,
    },
    /// Nothing is mapped at the address.
    NotMapped {
        /// The address.
        addr: VirtAddr,
    },
    /// A table slot index is out of range (>= 512).
    BadIndex {
        /// The index.
        index: usize,
    },
    /// The slot belongs to the hypervisor (Xen's L4 slots 256..=271).
    ReservedSlot {
        /// The index.
        index: usize,
    },
    /// The operation is not valid in the object's current state.
    WrongState {
        /// What was wrong, for the log.
        what: &'static str,
    },
    /// A frame has no metadata or is outside managed memory.
    BadFrame {
        /// The frame.
        pfn: Pfn,
    },
    /// A frame has no machine-frame translation (p2m hole).
    NoTranslation {
        /// The frame.
        pfn: Pfn,
    },
    /// A table was expected at this level and was not one.
    NotATable {
        /// The frame.
        pfn: Pfn,
        /// The level expected.
        level: Level,
    },
    /// A hypercall (or one entry of a batch) failed.
    Hypercall {
        /// Which operation, for the log.
        op: &'static str,
        /// Index of the failing entry in its batch (0 for a single call).
        index: usize,
        /// Xen's (negative errno) return code.
        code: i64,
    },
    /// `pvops::init` found no backend that accepts this platform.
    NoBackend,
    /// Two registered backends share a name.
    DuplicateBackend {
        /// The name.
        name: &'static str,
    },
    /// `pvops::init` was called twice.
    AlreadyInitialized,
    /// `pvops::ops()` was used before `pvops::init`.
    NotInitialized,
    /// A forced backend name is not registered.
    UnknownBackend,
    /// A cross-call or shootdown named a CPU that is not online.
    CpuOffline {
        /// The CPU.
        cpu: usize,
    },
    /// A CPU did not acknowledge a cross-call (IPI) within the bounded wait.
    CpuTimeout {
        /// The CPU.
        cpu: usize,
    },
    /// The root is still loaded on another CPU (unpin or free refused).
    RootInUse {
        /// The root.
        pgd: Pfn,
        /// A CPU that has it loaded.
        cpu: usize,
    },
    /// An address space was handed to a memory manager that did not make
    /// it (kernel-glue's `Mm`): its tables, pins and frames belong to
    /// another `Mm`'s allocator and backend state. Refused; nothing changed.
    ForeignSpace {
        /// The space's root.
        pgd: Pfn,
    },
    /// A backend was entered again on the same CPU while one of its calls
    /// was in progress there (an interrupt handler ran with events unmasked).
    Reentered {
        /// The CPU.
        cpu: usize,
    },
}

impl fmt::Display for PvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PvError::OutOfMemory => write!(f, "out of memory"),
            PvError::NonCanonical { addr } => write!(f, "non-canonical address {addr:#x}"),
            PvError::Unaligned { addr } => write!(f, "unaligned address {addr:#x}"),
            PvError::NotUserAddress { addr } => {
                write!(f, "{:#x} is not a user address", addr.as_u64())
            }
            PvError::AlreadyMapped { addr } => write!(f, "{:#x} is already mapped", addr.as_u64()),
            PvError::NotMapped { addr } => write!(f, "{:#x} is not mapped", addr.as_u64()),
            PvError::BadIndex { index } => write!(f, "table index {index} out of range"),
            PvError::ReservedSlot { index } => write!(f, "L4 slot {index} belongs to the hypervisor"),
            PvError::WrongState { what } => write!(f, "wrong state: {what}"),
            PvError::BadFrame { pfn } => write!(f, "frame {:#x} is not managed", pfn.0),
            PvError::NoTranslation { pfn } => write!(f, "pfn {:#x} has no machine frame", pfn.0),
            PvError::NotATable { pfn, level } => {
                write!(f, "frame {:#x} is not an {level:?} table", pfn.0)
            }
            PvError::Hypercall { op, index, code } => {
                write!(f, "hypercall {op} failed at entry {index} with {code}")
            }
            PvError::NoBackend => write!(f, "no backend accepts this platform"),
            PvError::DuplicateBackend { name } => write!(f, "backend {name} registered twice"),
            PvError::AlreadyInitialized => write!(f, "pvops::init called twice"),
            PvError::NotInitialized => write!(f, "pvops used before pvops::init"),
            PvError::UnknownBackend => write!(f, "no backend of that name is registered"),
            PvError::CpuOffline { cpu } => write!(f, "CPU {cpu} is not online"),
            PvError::CpuTimeout { cpu } => write!(f, "CPU {cpu} did not acknowledge the cross-call"),
            PvError::RootInUse { pgd, cpu } => write!(f, "root {:#x} is still loaded on CPU {cpu}", pgd.0),
            PvError::ForeignSpace { pgd } => {
                write!(f, "address space {:#x} belongs to another memory manager", pgd.0)
            }
            PvError::Reentered { cpu } => {
                write!(f, "backend re-entered on CPU {cpu} (an interrupt ran inside a call)")
            }
        }
    }
}
