//! The conformance suite as a product: one call runs it against a backend.
//!
//! ```
//! // In your backend crate's tests/conformance.rs (here: the native backend):
//! use pvops_native as _; // link the crate so its registry entry exists
//! let report = pvops_integration::conformance::run_backend("native").unwrap();
//! assert!(report.all_passed(), "{report}");
//! ```

use std::fmt;

use crate::platform::{boot_backend, platform_for, Booted, HostPlatform};

/// The host platform's invariants after the SMP conformance case `case`.
/// A case of [`pvops_conformance::STALE_ON_PURPOSE`] must have left the
/// `Diverged` hazard it causes to test a flush (it is forgiven, once seen);
/// any other hazard, or a divergence in any other case, is an error.
pub fn check_after_smp_case(host: &HostPlatform, booted: &Booted, case: &str) -> Result<(), String> {
    if pvops_conformance::STALE_ON_PURPOSE.contains(&case)
        && host.machine.forgive_tlb_hazards(pvops_model::TlbHazard::Diverged) == 0
    {
        return Err("the model saw no stale translation this case makes on purpose".into());
    }
    (host.invariants)(booted.frames, &[]).map_err(|e| format!("model invariant broken: {e}"))
}

/// Per-case results of one run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The backend.
    pub backend: &'static str,
    /// The host platform it ran on.
    pub platform: &'static str,
    /// `(case, Ok | Err(reason))`; a case also fails when the host model's
    /// invariants (e.g. no direct store to a live Xen table) break during it.
    pub cases: Vec<(&'static str, Result<(), String>)>,
    /// The model's end state after the whole run (e.g. no pin left).
    pub end_state: Result<(), String>,
}

impl Report {
    /// Cases that passed.
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|(_, r)| r.is_ok()).count()
    }
    /// True when every case passed (and there was at least one).
    pub fn all_passed(&self) -> bool {
        !self.cases.is_empty() && self.passed() == self.cases.len() && self.end_state.is_ok()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, r) in &self.cases {
            match r {
                Ok(()) => writeln!(f, "  ok   {name}")?,
                Err(why) => writeln!(f, "  FAIL {name}: {why}")?,
            }
        }
        write!(
            f,
            "conformance {}: {}/{} passed (host model {})",
            self.backend,
            self.passed(),
            self.cases.len(),
            self.platform
        )
    }
}

/// Runs the whole suite (or only the case `only`) against the registered
/// backend `name` on the first host platform its probe accepts.
pub fn run_backend_cases(name: &str, only: Option<&str>) -> Result<Report, String> {
    let all = pvops::backends();
    let desc = all.iter().find(|d| d.name == name).ok_or_else(|| {
        let names: Vec<_> = all.iter().map(|d| d.name).collect();
        format!("no backend named {name:?} is linked; registered: {}", names.join(", "))
    })?;
    let host = platform_for(desc).ok_or_else(|| format!("{name}: no host platform is accepted by its probe"))?;
    let booted = boot_backend(desc, &host).map_err(|e| format!("{name}: boot on {} failed: {e}", host.label))?;
    let report = run_booted(desc.name, &host, &booted, only);
    if report.cases.is_empty() {
        return Err(format!("no case named {:?}", only.unwrap_or_default()));
    }
    Ok(report)
}

/// The suite (or only the case `only`) against backend `name` already
/// booted on `host`, the model's checks after every case, then its end state.
pub fn run_booted(name: &'static str, host: &HostPlatform, booted: &Booted, only: Option<&str>) -> Report {
    let env = pvops_conformance::Env { mm: booted.mm, machine: host.oracle, kernel_va: crate::KERNEL_VA };
    let mut cases = Vec::new();
    for case in pvops_conformance::CASES.iter().filter(|c| only.is_none_or(|o| o == c.name)) {
        // The model's checks run after every case, failed or not, so a TLB
        // hazard is reported with the case that caused it.
        let ran = env.run_case(case);
        let checked = (host.invariants)(booted.frames, &[]).map_err(|e| format!("model invariant broken: {e}"));
        let result = match (ran, checked) {
            (Ok(()), checked) => checked,
            (Err(e), Ok(())) => Err(e),
            (Err(e), Err(i)) => Err(format!("{e}; {i}")),
        };
        cases.push((case.name, result));
    }
    let end_state = (host.quiescent)();
    Report { backend: name, platform: host.label, cases, end_state }
}

/// Prints the failed cases of `report` and its summary line (the host
/// reports' format); true when everything passed.
pub fn print_report(report: &Report) -> bool {
    for (case, r) in &report.cases {
        if let Err(why) = r {
            println!("  FAIL {} {case}: {why}", report.backend);
        }
    }
    if let Err(e) = &report.end_state {
        println!("  FAIL {} end state: {e}", report.backend);
    }
    println!("{report}\n");
    report.all_passed()
}

/// Runs the whole suite against the registered backend `name`.
pub fn run_backend(name: &str) -> Result<Report, String> {
    run_backend_cases(name, None)
}
