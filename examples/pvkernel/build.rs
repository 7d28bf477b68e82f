//! Passes the linker script by absolute path (a relative `-T` would resolve
//! against rustc's working directory), and checks that `PVOPS_USER_PROG`
//! names the user program's ELF (`include_bytes!` in `src/elf_load.rs`),
//! which `cargo xtask` builds first.
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let script = dir.join("link.ld");
    println!("cargo:rustc-link-arg=-T{}", script.display());
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PVOPS_USER_PROG");
    match std::env::var("PVOPS_USER_PROG") {
        Ok(p) if std::path::Path::new(&p).is_file() => println!("cargo:rerun-if-changed={p}"),
        Ok(p) => panic!("PVOPS_USER_PROG={p} is not a file: build the kernel with `cargo xtask run`"),
        Err(_) => panic!(
            "PVOPS_USER_PROG is not set: build the kernel with `cargo xtask run` (it builds examples/user-prog first)"
        ),
    }
}
