//! Parsing what the kernel and the host report print.
//!
//! Kernel (serial log):
//! ```text
//! RESULT native backend=native conformance=39/39 user_isolation=ok attacks=B/T tlb=ok frames_leaked=0 cpus=2 smp=4/4
//! RESULT pvh backend=xen-pvh conformance=39/39 user_isolation=ok attacks=B/T tlb=ok frames_leaked=0 cpus=2 smp=12/12
//! RESULT xen backend=xen64 conformance=39/39 user_isolation=ok attacks=B/T tlb=ok frames_leaked=0 pins_left=0 typed_left=0 hypercalls=H cpus=2 smp=4/4
//! HCSTEP xen64 3 hypercalls=2 multicall_entries=6 mmu_updates=0 mmuext_ops=4 update_va_mappings=5 direct_writes=0 | activate A (first use: pin)
//! ```
//! Host report (`host-report`, `workload::render_counts`): a `[xen64] step`
//! (backend stats) or `[xen64-seams] step` (counted at the model's seams)
//! header, then one row per step: the step's name, then hypercalls, mc-ents,
//! mmu_upd, mmuext, uvm, direct.
//!
//! README: the "Hypercalls per operation" table, the expected counts.

use crate::boot::Platform;

/// The kinds counted per step, in the host table's column order.
pub const KINDS: [&str; 6] =
    ["hypercalls", "multicall_entries", "mmu_updates", "mmuext_ops", "update_va_mappings", "direct_writes"];

/// A parsed `RESULT` line.
#[derive(Clone, Debug)]
pub struct KernelResult {
    /// The whole line.
    pub line: String,
    /// "native" / "xen" / "pvh".
    pub platform: String,
    /// `backend=`.
    pub backend: String,
    /// `conformance=` ("N/M").
    pub conformance: String,
    /// `user_isolation=`.
    pub isolation: String,
    /// `attacks=` (blocked, tried): the isolation attack suite.
    pub attacks: Option<(u64, u64)>,
    /// `frames_leaked=`.
    pub frames_leaked: Option<i64>,
    /// `tlb=`: the kernel-mode TLB test ("ok" or "STALE").
    pub tlb: Option<String>,
    /// `pins_left=` (Xen): free frames Xen still held pinned at the end.
    pub pins_left: Option<u64>,
    /// `typed_left=` (Xen): free frames Xen still held typed at the end.
    pub typed_left: Option<u64>,
    /// `hypercalls=` (Xen).
    pub hypercalls: Option<u64>,
    /// `cpus=`: CPUs the kernel had online (it counts them itself).
    pub cpus: Option<usize>,
    /// `smp=` (passed, run): the concurrent cases, run when 2+ CPUs are online.
    pub smp: Option<(u64, u64)>,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// `"a/b"` as numbers.
fn parse_ratio(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v.split_once('/')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

impl KernelResult {
    /// The last `RESULT` line of a serial log.
    pub fn parse(serial: &str) -> Option<KernelResult> {
        let line = serial.lines().rev().find(|l| l.starts_with("RESULT "))?.trim().to_string();
        let platform = line.split_whitespace().nth(1)?.to_string();
        Some(KernelResult {
            platform,
            backend: field(&line, "backend")?.to_string(),
            conformance: field(&line, "conformance")?.to_string(),
            isolation: field(&line, "user_isolation")?.to_string(),
            attacks: field(&line, "attacks").and_then(parse_ratio),
            frames_leaked: field(&line, "frames_leaked").and_then(|v| v.parse().ok()),
            tlb: field(&line, "tlb").map(str::to_string),
            pins_left: field(&line, "pins_left").and_then(|v| v.parse().ok()),
            typed_left: field(&line, "typed_left").and_then(|v| v.parse().ok()),
            hypercalls: field(&line, "hypercalls").and_then(|v| v.parse().ok()),
            cpus: field(&line, "cpus").and_then(|v| v.parse().ok()),
            smp: field(&line, "smp").and_then(parse_ratio),
            line,
        })
    }

    /// Checks the line says everything held on `platform`, with every one of
    /// the `cpus` CPUs the machine was given online (a CPU that did not come
    /// up fails the run), and every concurrent case passed when 2+ are.
    pub fn check(&self, platform: Platform, cpus: usize) -> Result<(), String> {
        let mut bad = Vec::new();
        if self.platform != platform.name() {
            bad.push(format!("platform {} (expected {})", self.platform, platform.name()));
        }
        if self.backend != platform.backend() {
            bad.push(format!("backend {} (expected {})", self.backend, platform.backend()));
        }
        match self.conformance.split_once('/') {
            Some((a, b)) if a == b && a != "0" => {}
            _ => bad.push(format!("conformance {}", self.conformance)),
        }
        if self.isolation != "ok" {
            bad.push(format!("user_isolation {}", self.isolation));
        }
        match self.attacks {
            Some((blocked, tried)) if blocked == tried && tried > 0 => {}
            Some((blocked, tried)) => bad.push(format!("attacks {blocked}/{tried} blocked")),
            None => bad.push("no attacks=blocked/tried".into()),
        }
        if self.tlb.as_deref() != Some("ok") {
            bad.push(format!("tlb {:?}", self.tlb));
        }
        if self.frames_leaked != Some(0) {
            bad.push(format!("frames_leaked {:?}", self.frames_leaked));
        }
        if self.cpus != Some(cpus) {
            bad.push(format!("cpus {:?} online (the machine has {cpus})", self.cpus));
        }
        match self.smp {
            _ if cpus < 2 => {}
            Some((passed, run)) if passed == run && run > 0 => {}
            Some((passed, run)) => bad.push(format!("smp {passed}/{run} concurrent cases passed")),
            None => bad.push("no smp=passed/run".into()),
        }
        if platform == Platform::Xen {
            if self.pins_left != Some(0) {
                bad.push(format!("pins_left {:?}", self.pins_left));
            }
            if self.typed_left != Some(0) {
                bad.push(format!("typed_left {:?}", self.typed_left));
            }
            if self.hypercalls.is_none() {
                bad.push("no hypercalls count".into());
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join(", "))
        }
    }
}

/// One step of the fixed workload: its name and counts in [`KINDS`] order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The step's name.
    pub what: String,
    /// Counts by kind.
    pub counts: [u64; 6],
}

/// The kernel's `HCSTEP <backend> …` lines.
pub fn parse_kernel_steps(serial: &str, backend: &str) -> Vec<Step> {
    let prefix = format!("HCSTEP {backend} ");
    serial
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix(&prefix)?;
            let (counts, what) = rest.split_once(" | ")?;
            let mut c = [0u64; 6];
            for (i, k) in KINDS.iter().enumerate() {
                c[i] = field(counts, k)?.parse().ok()?;
            }
            Some(Step { what: what.trim().to_string(), counts: c })
        })
        .collect()
}

/// The host report's table for `backend`.
pub fn parse_host_steps(report: &str, backend: &str) -> Vec<Step> {
    let header = format!("[{backend}] step");
    let mut lines = report.lines().skip_while(|l| !l.starts_with(&header));
    if lines.next().is_none() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for l in lines {
        let words: Vec<&str> = l.split_whitespace().collect();
        if words.len() < 7 || l.starts_with('[') {
            break;
        }
        let nums: Option<Vec<u64>> = words[words.len() - 6..].iter().map(|w| w.parse().ok()).collect();
        let Some(nums) = nums else { break };
        let mut counts = [0u64; 6];
        counts.copy_from_slice(&nums);
        out.push(Step { what: words[..words.len() - 6].join(" "), counts });
    }
    out
}

/// The README's checked table ("Hypercalls per operation"): rows
/// `| n | step | hypercalls | multicall entries | mmu_update records |
/// mmuext_op records | update_va_mapping calls | direct stores | … |`.
pub fn parse_readme_steps(readme: &str) -> Result<Vec<Step>, String> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Hypercalls per operation"))
        .ok_or("README.md has no \"Hypercalls per operation\" section")?;
    let mut out = Vec::new();
    for line in section.lines().filter(|l| l.trim_start().starts_with('|')) {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        let Some(n) = cells.first().and_then(|c| c.parse::<usize>().ok()) else { continue };
        if n != out.len() + 1 || cells.len() < 8 {
            return Err(format!("README table row {n} is malformed: {line}"));
        }
        let mut counts = [0u64; 6];
        for (i, c) in counts.iter_mut().enumerate() {
            *c =
                cells[2 + i].parse().map_err(|_| format!("README table row {n}: {:?} is not a count", cells[2 + i]))?;
        }
        out.push(Step { what: cells[1].replace("\\|", "|"), counts });
    }
    if out.is_empty() {
        return Err("README's hypercall table has no rows".into());
    }
    Ok(out)
}

/// `got` against the expected table, every column (direct stores included):
/// a side-by-side table (got/expected) and the number of rows that differ
/// (a missing or extra step counts).
pub fn compare_with_expected(got: &[Step], expected: &[Step]) -> (String, usize) {
    let short = ["hc", "mc-ents", "mmu_upd", "mmuext", "uvm", "direct"];
    let mut t = format!("{:<40}", "step (measured/README)");
    for s in short {
        t += &format!(" {s:>9}");
    }
    t += "\n";
    let mut mismatches = 0;
    for i in 0..got.len().max(expected.len()) {
        let (g, e) = (got.get(i), expected.get(i));
        let what = g.or(e).map_or("?", |s| s.what.as_str());
        let same = matches!((g, e), (Some(g), Some(e)) if g == e);
        if !same {
            mismatches += 1;
        }
        t += &format!("{:<40}", if same { what.to_string() } else { format!("{what} <- DIFFERS") });
        for j in 0..6 {
            let gv = g.map_or("-".to_string(), |s| s.counts[j].to_string());
            let ev = e.map_or("-".to_string(), |s| s.counts[j].to_string());
            t += &format!(" {:>9}", format!("{gv}/{ev}"));
        }
        t += "\n";
    }
    (t, mismatches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_parse_and_check() {
        let log = "noise\nRESULT xen backend=xen64 conformance=32/32 user_isolation=ok attacks=21/21 tlb=ok frames_leaked=0 pins_left=0 typed_left=0 hypercalls=41 cpus=2 smp=4/4\n";
        let r = KernelResult::parse(log).unwrap();
        assert_eq!(r.hypercalls, Some(41));
        assert_eq!(r.attacks, Some((21, 21)));
        assert!(r.check(Platform::Xen, 2).is_ok());
        assert!(r.check(Platform::Native, 2).is_err());
        // A CPU that did not come up, or a concurrent case that failed, fails.
        assert!(r.check(Platform::Xen, 3).unwrap_err().contains("cpus"));
        for smp in ["smp=3/4", "smp=0/0", ""] {
            let line = format!("RESULT xen backend=xen64 conformance=32/32 user_isolation=ok attacks=21/21 tlb=ok frames_leaked=0 pins_left=0 typed_left=0 hypercalls=41 cpus=2 {smp}");
            assert!(KernelResult::parse(&line).unwrap().check(Platform::Xen, 2).unwrap_err().contains("smp"), "{line}");
        }
        // A table Xen still holds typed (or no measurement at all) fails.
        for typed in ["typed_left=1", ""] {
            let line = format!("RESULT xen backend=xen64 conformance=32/32 user_isolation=ok attacks=21/21 tlb=ok frames_leaked=0 pins_left=0 {typed} hypercalls=41 cpus=2 smp=4/4");
            assert!(KernelResult::parse(&line).unwrap().check(Platform::Xen, 2).unwrap_err().contains("typed_left"));
        }
        let bad =
            KernelResult::parse("RESULT native backend=native conformance=31/32 user_isolation=FAILED frames_leaked=1")
                .unwrap();
        assert!(bad.check(Platform::Native, 1).is_err());
        let good =
            "RESULT native backend=native conformance=32/32 user_isolation=ok attacks=21/21 tlb=ok frames_leaked=0 cpus=1";
        assert!(KernelResult::parse(good).unwrap().check(Platform::Native, 1).is_ok());
        // A stale translation, or no TLB verdict at all, fails.
        for tlb in ["tlb=STALE", ""] {
            let line = format!(
                "RESULT native backend=native conformance=32/32 user_isolation=ok attacks=21/21 {tlb} frames_leaked=0 cpus=1"
            );
            assert!(KernelResult::parse(&line).unwrap().check(Platform::Native, 1).unwrap_err().contains("tlb"));
        }
        // An attack that got through, no attacks at all, or no field: each fails.
        for attacks in ["attacks=19/21", "attacks=0/0", "attacks=x/21", ""] {
            let line = format!(
                "RESULT native backend=native conformance=32/32 user_isolation=ok {attacks} tlb=ok frames_leaked=0 cpus=1"
            );
            let r = KernelResult::parse(&line).unwrap();
            let err = r.check(Platform::Native, 1).unwrap_err();
            assert!(err.contains("attacks"), "{line}: {err}");
        }
    }

    #[test]
    fn a_pvh_result_is_judged_as_pvh() {
        let line = format!(
            "RESULT pvh backend={} conformance=39/39 user_isolation=ok attacks=21/21 tlb=ok frames_leaked=0 cpus=2 smp=12/12",
            Platform::Pvh.backend()
        );
        let r = KernelResult::parse(&line).unwrap();
        assert!(r.check(Platform::Pvh, 2).is_ok());
        // The kernel must know it runs on Xen PVH: a line naming another platform fails.
        assert!(r.check(Platform::Native, 2).unwrap_err().contains("platform"));
        let native = line.replacen("RESULT pvh", "RESULT native", 1);
        assert!(KernelResult::parse(&native).unwrap().check(Platform::Pvh, 2).unwrap_err().contains("platform"));
    }

    #[test]
    fn steps_parse_on_both_sides_and_compare() {
        let serial = "HCSTEP xen64 1 hypercalls=0 multicall_entries=0 mmu_updates=0 mmuext_ops=0 update_va_mappings=0 direct_writes=1 | create A\n\
                      HCSTEP xen64 2 hypercalls=2 multicall_entries=6 mmu_updates=0 mmuext_ops=4 update_va_mappings=5 direct_writes=0 | activate A (first use: pin)\n";
        let host = "[xen64] step                               hypercalls  mc-ents  mmu_upd   mmuext      uvm   direct\n\
                    create A                                            0        0        0        0        0        1\n\
                    activate A (first use: pin)                         2        6        0        4        5        1\n\
                    [xen64] frames leaked: 0\n";
        let k = parse_kernel_steps(serial, "xen64");
        let m = parse_host_steps(host, "xen64");
        assert_eq!(k.len(), 2);
        assert_eq!(m.len(), 2);
        assert_eq!(k[0], m[0]);
        // Direct stores differ in the second row: that is a difference too.
        assert_eq!(compare_with_expected(&k, &m).1, 1);
        let mut m2 = m.clone();
        m2[1].counts[5] = 0;
        assert_eq!(compare_with_expected(&k, &m2).1, 0);
    }

    #[test]
    fn readme_table_parses_and_any_column_difference_counts() {
        let readme = "# x\n\n## Hypercalls per operation (xen64)\n\ntext\n\n\
                      | # | demo step | hc | mc | mmu | ext | uvm | direct | what |\n|---|---|---|---|---|---|---|---|---|\n\
                      | 1 | create A | 0 | 0 | 0 | 0 | 0 | 3 | stores |\n\
                      | 2 | activate A (first use: pin) | 2 | 6 | 0 | 4 | 5 | 0 | pins |\n\n## Next\n| 3 | x | 9 | 9 | 9 | 9 | 9 | 9 | other section |\n";
        let want = parse_readme_steps(readme).unwrap();
        assert_eq!(want.len(), 2);
        assert_eq!(want[1], Step { what: "activate A (first use: pin)".into(), counts: [2, 6, 0, 4, 5, 0] });
        assert_eq!(compare_with_expected(&want, &want).1, 0);
        for col in 0..6 {
            let mut got = want.clone();
            got[1].counts[col] += 1;
            assert_eq!(compare_with_expected(&got, &want).1, 1, "column {col}");
        }
        assert_eq!(compare_with_expected(&want[..1], &want).1, 1, "a missing step differs");
        let mut renamed = want.clone();
        renamed[0].what = "create B".into();
        assert_eq!(compare_with_expected(&renamed, &want).1, 1, "a renamed step differs");
        assert!(parse_readme_steps("## Hypercalls per operation\n| 1 | a | x | 0 | 0 | 0 | 0 | 0 | w |\n").is_err());
        assert!(parse_readme_steps("## Other\n").is_err());
    }

    #[test]
    fn the_checked_in_readme_table_parses() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let steps = parse_readme_steps(&readme).unwrap();
        assert_eq!(steps.len(), 11);
        assert_eq!(steps[0].what, "create A");
    }
}
