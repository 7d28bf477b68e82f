//! Static dispatch of built-in backends: [`static_dispatch!`](crate::static_dispatch).
//!
//! The registry hands out `&'static dyn PvMmuOps`: every call is an indirect
//! call through a vtable, and nothing of the backend can be inlined into the
//! caller. A kernel that links its backends anyway (every kernel does: the
//! registry only sees linked crates) can instead keep the selected backend *by
//! value* in an enum whose `PvMmuOps` impl is a `match`. For a built-in
//! backend a call then costs one compare-and-branch on the enum's tag on top
//! of calling the backend directly, and the backend's `#[inline]` methods are
//! inlined into the call site. Backends that are not built in still work: the
//! enum's catch-all variant holds the registry's `&'static dyn PvMmuOps`.
//!
//! Why a `macro_rules!` and not `enum_dispatch`: `enum_dispatch` only links
//! an enum to a trait declared in the *same* crate (its registry lives in the
//! proc-macro process and cross-crate links are silently dropped), while
//! `PvMmuOps` lives here and the backends in their own crates, and `pvops`
//! must never depend on its backends. A declarative macro exported from
//! `pvops` has none of these limits: the kernel expands it naming the backend
//! types it links, and the expansion refers to the trait by `$crate` path.
//!
//! ```
//! use pvops::{BootEnv, PvError, PvMmuOps};
//! # use core::ops::Range;
//! # use pvops::{Level, MmServices, Pfn, Pte, VirtAddr};
//! # struct Fast;
//! # impl PvMmuOps for Fast {
//! #     fn name(&self) -> &'static str { "fast" }
//! #     fn reserved_l4_slots(&self) -> Range<usize> { 0..0 }
//! #     fn pgd_alloc(&self, _: &dyn MmServices, _: Pfn) -> Result<(), PvError> { Ok(()) }
//! #     fn pgd_free(&self, _: &dyn MmServices, _: Pfn) -> Result<(), PvError> { Ok(()) }
//! #     fn alloc_pt(&self, _: &dyn MmServices, _: Pfn, _: Level, _: Pfn) -> Result<(), PvError> { Ok(()) }
//! #     fn release_pt(&self, _: &dyn MmServices, _: Pfn, _: Level, _: Pfn) -> Result<(), PvError> { Ok(()) }
//! #     fn set_entry(&self, _: &dyn MmServices, _: Level, _: Pfn, _: usize, _: Pte) -> Result<(), PvError> { Ok(()) }
//! #     fn read_entry(&self, _: Level, _: Pfn, _: usize) -> Result<Pte, PvError> { Ok(Pte::EMPTY) }
//! #     fn write_cr3(&self, _: &dyn MmServices, _: Pfn) -> Result<(), PvError> { Ok(()) }
//! #     fn read_cr3(&self) -> Pfn { Pfn(0) }
//! #     fn activate_mm(&self, _: &dyn MmServices, _: Pfn) -> Result<(), PvError> { Ok(()) }
//! #     fn exit_mm(&self, _: &dyn MmServices, _: Pfn) -> Result<(), PvError> { Ok(()) }
//! #     fn flush_tlb_all(&self) -> Result<(), PvError> { Ok(()) }
//! #     fn flush_tlb_one(&self, _: VirtAddr) -> Result<(), PvError> { Ok(()) }
//! #     fn lazy_mmu_enter(&self) {}
//! #     fn lazy_mmu_leave(&self) -> Result<(), PvError> { Ok(()) }
//! #     fn lazy_mmu_flush(&self) -> Result<(), PvError> { Ok(()) }
//! #     fn protect_start(&self, _: &dyn MmServices, _: Pfn, _: usize) -> Result<Pte, PvError> { Ok(Pte::EMPTY) }
//! #     fn protect_commit(&self, _: &dyn MmServices, _: Pfn, _: usize, _: Pte, _: Pte) -> Result<(), PvError> { Ok(()) }
//! #     fn clear_accessed_dirty(&self, _: &dyn MmServices, _: Pfn, _: usize, _: u64) -> Result<Pte, PvError> { Ok(Pte::EMPTY) }
//! #     fn make_entry(&self, pte: Pte) -> Result<u64, PvError> { Ok(pte.0) }
//! #     fn entry_value(&self, raw: u64) -> Pte { Pte(raw) }
//! #     fn cpus(&self) -> &dyn pvops::Cpus { &pvops::SingleCpu }
//! # }
//! fn fast_from_env(_env: &BootEnv<'_>) -> Result<Fast, PvError> {
//!     Ok(Fast)
//! }
//!
//! pvops::static_dispatch! {
//!     /// The backends this kernel is built with.
//!     pub enum KernelOps {
//!         /// Any other registered backend, through its vtable.
//!         dyn Other,
//!         /// Registered as "fast": dispatched by `match`, inlined.
//!         Fast(Fast) = "fast" => fast_from_env,
//!     }
//! }
//!
//! let ops = KernelOps::Fast(Fast);
//! assert_eq!(ops.name(), "fast");
//! assert!(ops.is_builtin());
//! ```
//!
//! At boot, `KernelOps::init(&env)` runs the registry's own selection
//! ([`select`](crate::select) over [`backends`](crate::backends)) and builds
//! the winner: a built-in by value with its constructor, any other backend
//! through its descriptor's `instantiate`. (`KernelOps` is not published in
//! the registry's cell: the kernel keeps it in its own static.)
//!
//! When a method is added to [`PvMmuOps`](crate::PvMmuOps), add its forwarder
//! to the macro below too: a required method that is missing fails to compile,
//! a provided one would silently fall back to the trait's default.

/// Declares an enum of built-in backends, dispatched by `match`, plus a
/// catch-all variant for any other registered backend (`&'static dyn PvMmuOps`).
///
/// Syntax: the first line, `dyn Variant,`, names the catch-all; then each
/// built-in variant is `Variant(Type) = "registry name" => constructor`, where
/// `constructor: fn(&BootEnv<'_>) -> Result<Type, PvError>` builds the backend
/// by value. Generated:
///
/// * the enum, and `impl PvMmuOps` for it with every method `#[inline]` and
///   forwarded by `match` (built-ins statically, the catch-all through its vtable);
/// * `init(env)` / `init_forced(env, name)`: the registry's selection, then the
///   winner is built (see the module docs); `init_static(env)` also leaks it and
///   publishes it as the registry's selection;
/// * `from_desc(desc, env)`, `as_dyn()` (the backend inside, as a trait object)
///   and `is_builtin()`.
///
/// See the [module documentation](crate::dispatch) for an example.
#[macro_export]
macro_rules! static_dispatch {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $(#[$ometa:meta])*
            dyn $other:ident,
            $(#[$fmeta:meta])*
            $first:ident ( $fty:ty ) = $freg:literal => $fctor:expr
            $(
                ,
                $(#[$vmeta:meta])*
                $variant:ident ( $ty:ty ) = $reg:literal => $ctor:expr
            )* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $(#[$fmeta])*
            $first($fty),
            $(
                $(#[$vmeta])*
                $variant($ty),
            )*
            $(#[$ometa])*
            $other(&'static dyn $crate::PvMmuOps),
        }

        impl ::core::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                ::core::write!(f, "{}({})", ::core::stringify!($name), $crate::PvMmuOps::name(self))
            }
        }

        impl $name {
            /// Builds the backend the registry's descriptor `desc` names: a
            /// built-in by value with its constructor, anything else through
            /// `desc.instantiate` (the catch-all variant).
            #[allow(dead_code)]
            pub fn from_desc(
                desc: &'static $crate::BackendDesc,
                env: &$crate::BootEnv<'_>,
            ) -> ::core::result::Result<Self, $crate::PvError> {
                if desc.name == $freg {
                    let ctor: fn(&$crate::BootEnv<'_>) -> ::core::result::Result<$fty, $crate::PvError> = $fctor;
                    return ctor(env).map(Self::$first);
                }
                $(
                    if desc.name == $reg {
                        let ctor: fn(&$crate::BootEnv<'_>) -> ::core::result::Result<$ty, $crate::PvError> = $ctor;
                        return ctor(env).map(Self::$variant);
                    }
                )*
                (desc.instantiate)(env).map(Self::$other)
            }

            /// Selects the backend for `env` by the registry's rules (every
            /// registered backend, highest priority first) and builds it.
            #[allow(dead_code)]
            pub fn init(env: &$crate::BootEnv<'_>) -> ::core::result::Result<Self, $crate::InitError> {
                let list = $crate::backends();
                let desc = $crate::select(env, &list, ::core::option::Option::None)?;
                ::core::result::Result::Ok(Self::from_desc(desc, env)?)
            }

            /// Like `init`, then leaks the result and publishes it as the
            /// registry's selection (`pvops::ops()` returns it): what a kernel
            /// calls once at boot.
            #[allow(dead_code)]
            pub fn init_static(env: &$crate::BootEnv<'_>) -> ::core::result::Result<&'static Self, $crate::InitError> {
                let list = $crate::backends();
                let desc = $crate::select(env, &list, ::core::option::Option::None)?;
                let me: &'static Self = $crate::__Box::leak($crate::__Box::new(Self::from_desc(desc, env)?));
                $crate::publish(desc, me.as_dyn())?;
                ::core::result::Result::Ok(me)
            }

            /// Like `init`, but only the backend registered as `backend` is considered.
            #[allow(dead_code)]
            pub fn init_forced(
                env: &$crate::BootEnv<'_>,
                backend: &str,
            ) -> ::core::result::Result<Self, $crate::InitError> {
                let list = $crate::backends();
                let desc = $crate::select(env, &list, ::core::option::Option::Some(backend))?;
                ::core::result::Result::Ok(Self::from_desc(desc, env)?)
            }

            /// The backend inside, as a trait object (for code that takes
            /// `&dyn PvMmuOps`: it then pays one vtable call, not a match and a vtable call).
            #[allow(dead_code)]
            pub fn as_dyn(&self) -> &dyn $crate::PvMmuOps {
                match self {
                    Self::$first(b) => b,
                    $( Self::$variant(b) => b, )*
                    Self::$other(b) => *b,
                }
            }

            /// True when the backend is one of the built-ins (statically dispatched).
            #[allow(dead_code)]
            pub fn is_builtin(&self) -> bool {
                !::core::matches!(self, Self::$other(_))
            }
        }

        impl $crate::PvMmuOps for $name {
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn name(&self) -> &'static str);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn reserved_l4_slots(&self) -> ::core::ops::Range<usize>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn adopt_boot_root(&self, mm: &dyn $crate::MmServices, pgd: $crate::Pfn)
                    -> ::core::result::Result<(), $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn frame_metadata_ready(&self, mm: &dyn $crate::MmServices)
                    -> ::core::result::Result<(), $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn pgd_alloc(&self, mm: &dyn $crate::MmServices, pgd: $crate::Pfn)
                    -> ::core::result::Result<(), $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn pgd_free(&self, mm: &dyn $crate::MmServices, pgd: $crate::Pfn)
                    -> ::core::result::Result<(), $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn alloc_pt(&self, mm: &dyn $crate::MmServices, root: $crate::Pfn, level: $crate::Level, pfn: $crate::Pfn)
                    -> ::core::result::Result<(), $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn release_pt(&self, mm: &dyn $crate::MmServices, root: $crate::Pfn, level: $crate::Level, pfn: $crate::Pfn)
                    -> ::core::result::Result<(), $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn set_entry(&self, mm: &dyn $crate::MmServices, level: $crate::Level, table: $crate::Pfn, index: usize, pte: $crate::Pte)
                    -> ::core::result::Result<(), $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn read_entry(&self, level: $crate::Level, table: $crate::Pfn, index: usize)
                    -> ::core::result::Result<$crate::Pte, $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn write_cr3(&self, mm: &dyn $crate::MmServices, pgd: $crate::Pfn)
                    -> ::core::result::Result<(), $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn read_cr3(&self) -> $crate::Pfn);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn activate_mm(&self, mm: &dyn $crate::MmServices, pgd: $crate::Pfn)
                    -> ::core::result::Result<(), $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn exit_mm(&self, mm: &dyn $crate::MmServices, pgd: $crate::Pfn)
                    -> ::core::result::Result<(), $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn flush_tlb_all(&self) -> ::core::result::Result<(), $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn flush_tlb_one(&self, va: $crate::VirtAddr) -> ::core::result::Result<(), $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn cpus(&self) -> &dyn $crate::Cpus);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn flush_tlb_multi(&self, cpus: $crate::CpuMask, flush: $crate::Flush)
                    -> ::core::result::Result<(), $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn lazy_mmu_enter(&self) -> ());
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn lazy_mmu_leave(&self) -> ::core::result::Result<(), $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn lazy_mmu_flush(&self) -> ::core::result::Result<(), $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn protect_start(&self, mm: &dyn $crate::MmServices, table: $crate::Pfn, index: usize)
                    -> ::core::result::Result<$crate::Pte, $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn protect_commit(&self, mm: &dyn $crate::MmServices, table: $crate::Pfn, index: usize, old: $crate::Pte, new: $crate::Pte)
                    -> ::core::result::Result<(), $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn clear_accessed_dirty(&self, mm: &dyn $crate::MmServices, table: $crate::Pfn, index: usize, bits: u64)
                    -> ::core::result::Result<$crate::Pte, $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn make_entry(&self, pte: $crate::Pte) -> ::core::result::Result<u64, $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn entry_value(&self, raw: u64) -> $crate::Pte);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn stats(&self) -> $crate::OpStats);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn set_pgd(&self, mm: &dyn $crate::MmServices, table: $crate::Pfn, index: usize, pte: $crate::Pte)
                    -> ::core::result::Result<(), $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn set_pud(&self, mm: &dyn $crate::MmServices, table: $crate::Pfn, index: usize, pte: $crate::Pte)
                    -> ::core::result::Result<(), $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn set_pmd(&self, mm: &dyn $crate::MmServices, table: $crate::Pfn, index: usize, pte: $crate::Pte)
                    -> ::core::result::Result<(), $crate::PvError>);
            $crate::__pvops_method!($name, $other, $first, [$($variant),*],
                fn set_pte(&self, mm: &dyn $crate::MmServices, table: $crate::Pfn, index: usize, pte: $crate::Pte)
                    -> ::core::result::Result<(), $crate::PvError>);
        }
    };
}

/// One forwarded method: the first built-in is tested inline (one
/// compare-and-branch, then its method, inlinable); every other variant goes
/// through an out-of-line `#[cold]` function holding the full `match`, so the
/// fast path carries no code for them. Internal to [`static_dispatch!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __pvops_method {
    ($name:ident, $other:ident, $first:ident, [$($rest:ident),*],
        fn $method:ident(&self $(, $arg:ident : $aty:ty)*) -> $ret:ty) => {
        #[inline]
        fn $method(&self $(, $arg: $aty)*) -> $ret {
            // The receiver and the arguments travel as one tuple, which the
            // slow path alone builds on the stack: no register is reserved
            // for the slow call, so the fast path's registers stay its own.
            #[cold]
            #[inline(never)]
            fn slow(args: (&$name, $($aty,)*)) -> $ret {
                let (this, $($arg,)*) = args;
                $crate::__pvops_forward!(this, $name, $other, [$first $(, $rest)*], $method($($arg),*))
            }
            match self {
                $name::$first(b) => $crate::PvMmuOps::$method(b $(, $arg)*),
                #[allow(unreachable_patterns)]
                _ => slow((self, $($arg,)*)),
            }
        }
    };
}

/// A `match` over every variant: built-ins by direct call, the catch-all
/// through its vtable. Internal to [`static_dispatch!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __pvops_forward {
    ($scrutinee:expr, $name:ident, $other:ident, [$($variant:ident),+], $method:ident $args:tt) => {
        match $scrutinee {
            $( $name::$variant(b) => $crate::__pvops_call!(b, $method $args), )+
            $name::$other(b) => $crate::__pvops_call!(*b, $method $args),
        }
    };
}

/// `PvMmuOps::method(receiver, args…)`. Internal to [`static_dispatch!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __pvops_call {
    ($recv:expr, $method:ident ($($arg:expr),*)) => {
        $crate::PvMmuOps::$method($recv $(, $arg)*)
    };
}

#[cfg(test)]
mod tests {
    use core::ops::Range;
    use core::sync::atomic::{AtomicU64, Ordering};

    use crate::{BootEnv, EntryKind, Level, MmServices, OpStats, Pfn, Pte, PvError, PvMmuOps, VirtAddr};

    /// A backend that records the last entry written and reports its own name.
    struct Probe {
        name: &'static str,
        last: AtomicU64,
    }

    impl PvMmuOps for Probe {
        fn name(&self) -> &'static str {
            self.name
        }
        fn reserved_l4_slots(&self) -> Range<usize> {
            0..0
        }
        fn pgd_alloc(&self, _: &dyn MmServices, _: Pfn) -> Result<(), PvError> {
            Ok(())
        }
        fn pgd_free(&self, _: &dyn MmServices, _: Pfn) -> Result<(), PvError> {
            Ok(())
        }
        fn alloc_pt(&self, _: &dyn MmServices, _: Pfn, _: Level, _: Pfn) -> Result<(), PvError> {
            Ok(())
        }
        fn release_pt(&self, _: &dyn MmServices, _: Pfn, _: Level, _: Pfn) -> Result<(), PvError> {
            Ok(())
        }
        fn set_entry(&self, _: &dyn MmServices, level: Level, _: Pfn, index: usize, pte: Pte) -> Result<(), PvError> {
            self.last.store(pte.0 ^ index as u64 ^ ((level as u64) << 60), Ordering::Relaxed);
            Ok(())
        }
        fn read_entry(&self, _: Level, _: Pfn, _: usize) -> Result<Pte, PvError> {
            Ok(Pte(self.last.load(Ordering::Relaxed)))
        }
        fn write_cr3(&self, _: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
            self.last.store(pgd.0, Ordering::Relaxed);
            Ok(())
        }
        fn read_cr3(&self) -> Pfn {
            Pfn(self.last.load(Ordering::Relaxed))
        }
        fn activate_mm(&self, _: &dyn MmServices, _: Pfn) -> Result<(), PvError> {
            Ok(())
        }
        fn exit_mm(&self, _: &dyn MmServices, _: Pfn) -> Result<(), PvError> {
            Ok(())
        }
        fn flush_tlb_all(&self) -> Result<(), PvError> {
            Ok(())
        }
        fn flush_tlb_one(&self, _: VirtAddr) -> Result<(), PvError> {
            Ok(())
        }
        fn lazy_mmu_enter(&self) {}
        fn lazy_mmu_leave(&self) -> Result<(), PvError> {
            Ok(())
        }
        fn lazy_mmu_flush(&self) -> Result<(), PvError> {
            Ok(())
        }
        fn protect_start(&self, _: &dyn MmServices, _: Pfn, index: usize) -> Result<Pte, PvError> {
            Ok(Pte(self.last.load(Ordering::Relaxed) ^ index as u64))
        }
        fn protect_commit(&self, _: &dyn MmServices, _: Pfn, index: usize, old: Pte, new: Pte) -> Result<(), PvError> {
            self.last.store(old.0 ^ new.0 ^ index as u64, Ordering::Relaxed);
            Ok(())
        }
        fn clear_accessed_dirty(&self, _: &dyn MmServices, _: Pfn, index: usize, bits: u64) -> Result<Pte, PvError> {
            Ok(Pte(self.last.fetch_and(!bits, Ordering::Relaxed) ^ index as u64))
        }
        fn make_entry(&self, pte: Pte) -> Result<u64, PvError> {
            Ok(pte.0)
        }
        fn cpus(&self) -> &dyn crate::Cpus {
            &crate::SingleCpu
        }
        fn entry_value(&self, raw: u64) -> Pte {
            Pte(raw)
        }
        fn stats(&self) -> OpStats {
            OpStats { hypercalls: 7, ..OpStats::default() }
        }
    }

    struct Mm;
    impl MmServices for Mm {
        fn has_metadata(&self) -> bool {
            true
        }
        fn alloc_zeroed_frame(&self) -> Result<Pfn, PvError> {
            Err(PvError::OutOfMemory)
        }
        fn free_frame(&self, _: Pfn) -> Result<(), PvError> {
            Ok(())
        }
        fn private(&self, _: Pfn) -> Result<u64, PvError> {
            Ok(0)
        }
        fn set_private(&self, _: Pfn, _: u64) -> Result<(), PvError> {
            Ok(())
        }
        fn is_pinned(&self, _: Pfn) -> Result<bool, PvError> {
            Ok(false)
        }
        fn set_pinned(&self, _: Pfn, _: bool) -> Result<(), PvError> {
            Ok(())
        }
    }

    fn built_in(_: &BootEnv<'_>) -> Result<Probe, PvError> {
        Ok(Probe { name: "built-in", last: AtomicU64::new(0) })
    }

    crate::static_dispatch! {
        /// Test enum.
        enum Ops {
            /// Everything else.
            dyn Other,
            /// The built-in.
            BuiltIn(Probe) = "built-in" => built_in,
        }
    }

    static OTHER: Probe = Probe { name: "other", last: AtomicU64::new(0) };

    #[test]
    fn built_in_and_catch_all_forward_every_call_to_the_backend_inside() {
        let env = BootEnv { entry: EntryKind::Pvh, handover: "", platform: &() };
        let ops = [built_in(&env).map(Ops::BuiltIn).unwrap(), Ops::Other(&OTHER)];
        for (ops, name) in ops.iter().zip(["built-in", "other"]) {
            assert_eq!(ops.name(), name);
            assert_eq!(ops.as_dyn().name(), name);
            assert_eq!(ops.is_builtin(), name == "built-in");
            ops.set_pte(&Mm, Pfn(3), 5, Pte(0x1000)).unwrap();
            assert_eq!(ops.read_entry(Level::L1, Pfn(3), 0), Ok(Pte(0x1000 ^ 5 ^ ((Level::L1 as u64) << 60))));
            ops.write_cr3(&Mm, Pfn(9)).unwrap();
            assert_eq!(ops.read_cr3(), Pfn(9));
            assert_eq!(ops.stats().hypercalls, 7, "overridden provided methods are forwarded");
            ops.protect_commit(&Mm, Pfn(3), 1, Pte(0x60), Pte(0x7)).unwrap();
            assert_eq!(ops.protect_start(&Mm, Pfn(3), 2), Ok(Pte(0x67 ^ 1 ^ 2)), "protect_* forwarded");
            assert_eq!(ops.clear_accessed_dirty(&Mm, Pfn(3), 0, 0x20), Ok(Pte(0x67 ^ 1)));
            assert_eq!(ops.protect_start(&Mm, Pfn(3), 0), Ok(Pte(0x47 ^ 1)), "clear_accessed_dirty forwarded");
            assert_eq!(ops.make_entry(Pte(4)), Ok(4));
            assert_eq!(alloc::format!("{ops:?}"), alloc::format!("Ops({name})"));
        }
    }
}
