//! Runs every benchmark and writes `docs/PERFORMANCE.md` and `docs/scaling.svg`
//! (what `cargo xtask bench` runs). `--help` for options.
fn main() {
    std::process::exit(pvops_bench::main(true));
}
