//! The hypercall sweeps on the real Xen (issue 15 item 7): the Xen kernel's
//! `XENSWEEP` lines (`examples/pvkernel/src/xensweep.rs`, counted at its
//! hypercall transport) against [`EXPECTED`], and, for `cargo xtask bench`,
//! beside the model's and Linux's figures in `docs/PERFORMANCE.md` §2.

use std::path::{Path, PathBuf};

/// One row: the kernel's kind (`pin`, `unpin`, `lazy-map`) and size word
/// (`K=…` L1 pages, `N=…` pages) with the hypercalls and multicall entries it
/// must cost on the real Xen: the model's figures of `docs/PERFORMANCE.md` §2
/// (a pin of K table pages is ⌈(pages + 3) / 32⌉ hypercalls, pages + 3
/// entries; N lazy `set_pte`s are ⌈N / 32⌉ `mmu_update`s, no multicall).
pub const EXPECTED: &[(&str, &str, u64, u64)] = &[
    ("pin", "K=1", 1, 6),
    ("unpin", "K=1", 1, 6),
    ("pin", "K=10", 1, 15),
    ("unpin", "K=10", 1, 15),
    ("pin", "K=100", 4, 105),
    ("unpin", "K=100", 4, 105),
    ("pin", "K=1000", 32, 1006),
    ("unpin", "K=1000", 32, 1006),
    ("lazy-map", "N=1", 1, 0),
    ("lazy-map", "N=32", 1, 0),
    ("lazy-map", "N=33", 2, 0),
    ("lazy-map", "N=100", 4, 0),
    ("lazy-map", "N=1000", 32, 0),
];

/// A measured row: (kind, size, hypercalls, entries, failed calls).
pub type Measured = (String, String, u64, u64, u64);

/// The `XENSWEEP` rows of a serial log.
pub fn parse(serial: &str) -> Vec<Measured> {
    let mut out = Vec::new();
    for line in serial.lines() {
        let Some(rest) = line.find("XENSWEEP ").map(|i| &line[i + "XENSWEEP ".len()..]) else { continue };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let field = |k: &str| {
            words.iter().find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('='))).and_then(|v| v.parse().ok())
        };
        if let ([kind, size, ..], Some(hc), Some(en), Some(fail)) =
            (words.as_slice(), field("hypercalls"), field("entries"), field("failures"))
        {
            out.push((kind.to_string(), size.to_string(), hc, en, fail));
        }
    }
    out
}

/// Checks the Xen kernel's sweep rows against [`EXPECTED`]: every row
/// present, equal, no failed call. Returns the table either way (in `Err`
/// with the mismatch count).
pub fn check(serial: &str) -> Result<String, String> {
    let got = parse(serial);
    let mut table = format!(
        "{:<9} {:>7} {:>11} {:>9} {:>9} {:>9}\n",
        "sweep", "size", "hypercalls", "expected", "entries", "expected"
    );
    let mut bad = 0;
    for &(kind, size, hc, en) in EXPECTED {
        match got.iter().find(|r| r.0 == kind && r.1 == size) {
            Some((_, _, h, e, fail)) => {
                let ok = *h == hc && *e == en && *fail == 0;
                bad += usize::from(!ok);
                let note = if *fail > 0 { format!(" {fail} failed calls") } else { String::new() };
                table += &format!(
                    "{kind:<9} {size:>7} {h:>11} {hc:>9} {e:>9} {en:>9}  {}{note}\n",
                    if ok { "ok" } else { "MISMATCH" }
                );
            }
            None => {
                bad += 1;
                table += &format!("{kind:<9} {size:>7} {:>11} {hc:>9} {:>9} {en:>9}  MISSING\n", "-", "-");
            }
        }
    }
    if bad == 0 {
        Ok(table)
    } else {
        Err(format!(
            "{bad} sweep row(s) of the real Xen kernel differ from xtask's table (xtask/src/sweep.rs):\n{table}"
        ))
    }
}

/// Where the `XENSWEEP` lines of the last Xen boot of kernel `name` (the
/// kernel file's name: `pvkernel`, or `pvkernel-<features>`) are kept.
pub fn saved_path(name: &str) -> PathBuf {
    crate::boot::workspace_root().join("target").join("boot").join(format!("xensweep-{name}.log"))
}

/// Keeps the `XENSWEEP` lines of a Xen boot of `kernel`, for `cargo xtask
/// bench` (best effort: the bench says when there are none).
pub fn save(serial: &str, kernel: &Path) {
    let name = kernel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let lines: String = serial.lines().filter(|l| l.contains("XENSWEEP ")).map(|l| format!("{l}\n")).collect();
    let _ = std::fs::write(saved_path(&name), lines);
}

/// The model's and Linux's hypercalls for a row, read from
/// `docs/PERFORMANCE.md` §2 (`| pin, K = 10 L1 pages | 12 | **1** | 15 | 1 |…`).
fn model_and_linux(perf: &str, kind: &str, size: &str) -> Option<(String, String)> {
    let n = size.split('=').nth(1)?;
    let what = match kind {
        "pin" | "unpin" => format!("| {kind}, K = {n} L1 pages |"),
        _ => format!("| map {n} pages, lazy MMU |"),
    };
    let line = perf.lines().find(|l| l.starts_with(&what))?;
    let cols: Vec<&str> = line.split('|').map(str::trim).collect();
    // ["", what, table pages, ours, entries, Linux, target, verdict, ""]
    Some((cols.get(3)?.trim_matches('*').to_string(), cols.get(5)?.to_string()))
}

/// For `cargo xtask bench`: the sweep rows saved by the unmodified kernel's
/// last Xen boot ([`save`]) beside the model's and Linux's.
pub fn bench_table(serial_log: &Path, perf_md: &Path) -> String {
    let Ok(serial) = std::fs::read_to_string(serial_log) else {
        return format!("no saved sweep at {}: run `cargo xtask run` for the real-Xen column", serial_log.display());
    };
    let perf = std::fs::read_to_string(perf_md).unwrap_or_default();
    let got = parse(&serial);
    if got.is_empty() {
        return format!(
            "{} has no XENSWEEP lines: run `cargo xtask run` for the real-Xen column",
            serial_log.display()
        );
    }
    let mut t = format!(
        "real Xen from {} (the unmodified kernel's last Xen boot)\n{:<9} {:>7} {:>9} {:>8} {:>7}\n",
        serial_log.display(),
        "sweep",
        "size",
        "real Xen",
        "model",
        "Linux"
    );
    for (kind, size, hc, _, _) in &got {
        let (m, l) = model_and_linux(&perf, kind, size).unwrap_or(("?".into(), "?".into()));
        t += &format!("{kind:<9} {size:>7} {hc:>9} {m:>8} {l:>7}\n");
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(rows: &[(&str, &str, u64, u64)]) -> String {
        rows.iter().map(|(k, s, h, e)| format!("XENSWEEP {k} {s} hypercalls={h} entries={e} failures=0\n")).collect()
    }

    #[test]
    fn the_expected_rows_pass_and_one_changed_count_fails() {
        assert!(check(&log(EXPECTED)).is_ok());
        let mut rows = EXPECTED.to_vec();
        rows[9].2 = 32; // lazy-map N=32 unbatched
        assert!(check(&log(&rows)).is_err());
        assert!(check(&log(&EXPECTED[..EXPECTED.len() - 1])).is_err(), "a missing row fails");
    }

    #[test]
    fn model_and_linux_are_read_from_the_performance_table() {
        let perf = "| pin, K = 100 L1 pages | 102 | **4** | 105 | 7 | 4 | met |\n| map 33 pages, lazy MMU |  | **2** | 0 | 2 | 2 | met |";
        assert_eq!(model_and_linux(perf, "pin", "K=100"), Some(("4".into(), "7".into())));
        assert_eq!(model_and_linux(perf, "lazy-map", "N=33"), Some(("2".into(), "2".into())));
    }
}
