//! Runs the demo workload and the conformance suite on every registered backend
//! over its host model, and prints the tables `cargo xtask run` shows.
//!
//! `host-report [--backend NAME]` restricts the run to one backend.

use pvops_integration::platform::{boot_backend, platform_for};
use pvops_integration::workload::{measured_xen_demo, print_demo, render_counts};
use pvops_native as _;
use pvops_trace as _;
use pvops_xen64 as _;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let forced = args.iter().position(|a| a == "--backend").and_then(|i| args.get(i + 1)).cloned();
    let all = pvops::backends();
    if let Some(name) = &forced {
        if !all.iter().any(|d| d.name == name) {
            let names: Vec<_> = all.iter().map(|d| d.name).collect();
            eprintln!("error: no backend named {name:?}; registered: {}", names.join(", "));
            std::process::exit(2);
        }
    }
    let mut failed = false;
    // Without --backend: every backend a platform would choose by itself (the
    // lowest-priority `trace` wrapper only runs when forced).
    for desc in all.iter().filter(|d| forced.as_deref().map_or(d.priority > i32::MIN, |n| n == d.name)) {
        let Some(host) = platform_for(desc) else {
            let why: Vec<String> = pvops_integration::platforms()
                .iter()
                .map(|p| format!("{}: {}", p.label, (desc.probe)(&p.env()).err().unwrap_or("accepted")))
                .collect();
            eprintln!("error: backend {} refuses every host platform ({})", desc.name, why.join("; "));
            std::process::exit(2);
        };
        let booted = match boot_backend(desc, &host) {
            Ok(b) => b,
            Err(e) => {
                println!("{}: boot on {} failed: {e}", desc.name, host.label);
                failed = true;
                continue;
            }
        };
        failed |= !print_demo(desc.name, booted.mm, &host, 8);
        if desc.name == "xen64" {
            // The same steps counted at the model's transport and PhysMem seam
            // (what xtask checks against the README table).
            match measured_xen_demo(8) {
                Ok(rows) => print!("{}", render_counts("[xen64-seams] step", &rows)),
                Err(e) => {
                    println!("xen64: measured demo failed: {e}");
                    failed = true;
                }
            }
        }
        let report = pvops_integration::conformance::run_booted(desc.name, &host, &booted, None);
        failed |= !pvops_integration::conformance::print_report(&report);
    }
    if failed {
        std::process::exit(1);
    }
}
