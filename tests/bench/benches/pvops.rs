//! `cargo bench -p pvops-bench`: every benchmark, tables on stdout, nothing written.
fn main() {
    std::process::exit(pvops_bench::main(false));
}
