//! Instruction counting with Callgrind, from inside the measured program.
//!
//! A *child* (this same executable, started with `child …` arguments) runs
//! under `valgrind --tool=callgrind` and brackets each measured region with
//! Callgrind client requests: [`zero`] before, [`dump`] with a label after.
//! Every dump is a file `cg.out.N` whose `totals:` line is the instructions
//! executed (`Ir`) since the previous zero or dump, and whose
//! `desc: Trigger: Client Request:` line is the label. Outside Valgrind the
//! requests are no-ops (the magic preamble rotates `rdi` by 128 bits in all),
//! so a child can also run natively for the hypercall counts alone.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Callgrind's `VG_USERREQ_TOOL_BASE('C','T')`.
const CALLGRIND_BASE: u64 = ((b'C' as u64) << 24) | ((b'T' as u64) << 16);
/// `VG_USERREQ__ZERO_STATS`.
const ZERO_STATS: u64 = CALLGRIND_BASE + 1;
/// `VG_USERREQ__DUMP_STATS_AT`.
const DUMP_STATS_AT: u64 = CALLGRIND_BASE + 3;
/// Valgrind core's `VG_USERREQ__RUNNING_ON_VALGRIND`.
const RUNNING_ON_VALGRIND: u64 = 0x1001;

/// Valgrind's client request (`VALGRIND_DO_CLIENT_REQUEST_EXPR`, amd64):
/// returns `default` when not running under Valgrind.
#[inline(never)]
fn client_request(request: u64, arg1: u64, default: u64) -> u64 {
    let args: [u64; 6] = [request, arg1, 0, 0, 0, 0];
    let mut result = default;
    // SAFETY: 1. the sequence is Valgrind's documented no-op preamble (four
    // rotations of rdi summing to 128 bits) followed by `xchg rbx, rbx`: on a
    // real CPU it changes only flags; under Valgrind the tool reads the six
    // words at rax (alive for the whole asm block) and writes rdx.
    unsafe {
        core::arch::asm!(
            "rol rdi, 3",
            "rol rdi, 13",
            "rol rdi, 61",
            "rol rdi, 51",
            "xchg rbx, rbx",
            inout("rdx") result,
            in("rax") args.as_ptr(),
            inout("rdi") 0u64 => _,
            options(nostack),
        );
    }
    result
}

/// True when this process runs under Valgrind.
pub fn on_valgrind() -> bool {
    client_request(RUNNING_ON_VALGRIND, 0, 0) != 0
}

/// Starts a region: Callgrind's counters restart from zero.
pub fn zero() {
    client_request(ZERO_STATS, 0, 0);
}

/// Ends a region: Callgrind writes its counters to a new dump labelled `label`
/// and restarts them from zero.
pub fn dump(label: &CString) {
    client_request(DUMP_STATS_AT, label.as_ptr() as u64, 0);
}

/// Runs `f` as a labelled region (zero, `f`, dump) and returns its value.
/// The label is prepared before the region starts: nothing but `f` and the
/// two client requests is counted.
pub fn region<T>(label: &str, f: impl FnOnce() -> T) -> T {
    let label = CString::new(label).expect("labels have no NUL");
    zero();
    let r = f();
    dump(&label);
    r
}

/// What one child run produced: its standard output and the instructions of
/// each labelled region (`None` when it did not run under Callgrind).
#[derive(Debug, Clone)]
pub struct ChildRun {
    /// The child's standard output.
    pub stdout: String,
    /// `label → Ir`, in label order.
    pub regions: Option<BTreeMap<String, u64>>,
    /// `label → per-function costs`, when asked for ([`run_child_profiled`]).
    pub profiles: BTreeMap<String, Profile>,
}

/// What one function cost inside one region (what `callgrind_annotate`
/// shows: `self_ir` exclusive, `inclusive` with its callees).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FnCost {
    /// Instructions executed in the function itself (inlined code included).
    pub self_ir: u64,
    /// `self_ir` plus the inclusive cost of every call it made (a direct
    /// recursive call is not added twice).
    pub inclusive: u64,
    /// Times it was called.
    pub calls: u64,
}

/// Per-function costs of one region: function name → cost. The `self_ir`
/// of all functions add up to the region's total.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// Function name (as Callgrind names it) → cost.
    pub funcs: BTreeMap<String, FnCost>,
}

/// Parses one Callgrind dump (`--compress-strings=no`, one event: `Ir`)
/// into per-function costs. A cost line right after `calls=` is the
/// inclusive cost of that call (counted in the caller's `inclusive`); any
/// other cost line is the current function's own.
pub fn parse_profile(text: &str) -> Profile {
    let mut p = Profile::default();
    let mut cur = String::new();
    let mut callee = String::new();
    let mut pending: Option<u64> = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("fn=") {
            cur = n.to_string();
        } else if let Some(n) = line.strip_prefix("cfn=") {
            callee = n.to_string();
        } else if let Some(c) = line.strip_prefix("calls=") {
            pending = Some(c.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0));
        } else if line.starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '-' || c == '*') {
            let cost: u64 = line.split_whitespace().last().and_then(|v| v.parse().ok()).unwrap_or(0);
            match pending.take() {
                Some(count) => {
                    p.funcs.entry(callee.clone()).or_default().calls += count;
                    if callee != cur {
                        p.funcs.entry(cur.clone()).or_default().inclusive += cost;
                    }
                }
                None => {
                    let f = p.funcs.entry(cur.clone()).or_default();
                    f.self_ir += cost;
                    f.inclusive += cost;
                }
            }
        }
    }
    p
}

impl ChildRun {
    /// The instructions of region `label`.
    pub fn ir(&self, label: &str) -> Option<u64> {
        self.regions.as_ref()?.get(label).copied()
    }
}

/// Finds `valgrind`; when it is missing and this process is root, installs
/// Debian's `valgrind` package (after `apt-get update`), as the xtask does for
/// QEMU. `PVOPS_VALGRIND` overrides the path. `None` (with the reason on
/// stderr) when it cannot be had: the reports then carry no instruction counts.
pub fn ensure_valgrind() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PVOPS_VALGRIND") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = find_in_path("valgrind") {
        return Some(p);
    }
    let root = Command::new("id").arg("-u").output().ok().is_some_and(|o| o.stdout.starts_with(b"0"));
    if !root {
        eprintln!("pvops-bench: valgrind not found and not root: `sudo apt-get install -y valgrind`");
        return None;
    }
    for args in [&["update"][..], &["install", "-y", "--no-install-recommends", "valgrind"][..]] {
        eprintln!("pvops-bench: $ apt-get {}", args.join(" "));
        let ok = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("pvops-bench: apt-get {} failed", args.join(" "));
            return None;
        }
    }
    find_in_path("valgrind")
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Runs this executable as `child <args>`, under Callgrind when `valgrind` is
/// given; dump files go to a fresh directory under `work`.
pub fn run_child(valgrind: Option<&Path>, work: &Path, args: &[String]) -> Result<ChildRun, String> {
    run_child_with(valgrind, work, args, false)
}

/// [`run_child`], and the per-function costs of every region ([`ChildRun::profiles`]).
pub fn run_child_profiled(valgrind: &Path, work: &Path, args: &[String]) -> Result<ChildRun, String> {
    run_child_with(Some(valgrind), work, args, true)
}

fn run_child_with(valgrind: Option<&Path>, work: &Path, args: &[String], profile: bool) -> Result<ChildRun, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let dir = work.join(args.join("-"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let out_file = dir.join("cg.out");
    let mut cmd = match valgrind {
        Some(vg) => {
            let mut c = Command::new(vg);
            c.arg("--tool=callgrind")
                .arg(format!("--callgrind-out-file={}", out_file.display()))
                .arg("--dump-instr=no")
                .arg("--compress-strings=no")
                .arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.arg("child").args(args);
    let out = cmd.output().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "child {} failed with {}:\n{}\n{}",
            args.join(" "),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut profiles = BTreeMap::new();
    let regions = if valgrind.is_some() { Some(read_dumps(&dir, profile.then_some(&mut profiles))?) } else { None };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ChildRun { stdout, regions, profiles })
}

/// Reads every `cg.out.N` dump in `dir`: `label → totals` (and, if asked,
/// `label → per-function costs` into `profiles`).
fn read_dumps(
    dir: &Path,
    mut profiles: Option<&mut BTreeMap<String, Profile>>,
) -> Result<BTreeMap<String, u64>, String> {
    let mut regions = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("cg.out.") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).map_err(|e| format!("{name}: {e}"))?;
        if let Some((label, ir)) = parse_dump(&text) {
            if regions.insert(label.clone(), ir).is_some() {
                return Err(format!("region {label:?} dumped twice"));
            }
            if let Some(p) = profiles.as_deref_mut() {
                p.insert(label, parse_profile(&text));
            }
        }
    }
    Ok(regions)
}

/// The label and `Ir` total of one Callgrind dump.
fn parse_dump(text: &str) -> Option<(String, u64)> {
    let mut label = None;
    let mut total = None;
    for line in text.lines() {
        if let Some(l) = line.strip_prefix("desc: Trigger: Client Request: ") {
            label = Some(l.trim().to_string());
        } else if let Some(t) = line.strip_prefix("totals:") {
            total = t.split_whitespace().next().and_then(|v| v.parse().ok());
        } else if total.is_none() {
            if let Some(t) = line.strip_prefix("summary:") {
                total = t.split_whitespace().next().and_then(|v| v.parse().ok());
            }
        }
    }
    Some((label?, total?))
}

/// Runs `jobs` on up to `parallel` threads, started in order; results in job order.
pub fn run_parallel<T: Send>(parallel: usize, jobs: Vec<Box<dyn FnOnce() -> T + Send + '_>>) -> Vec<T> {
    let n = jobs.len();
    let queue = std::sync::Mutex::new(jobs.into_iter().enumerate().collect::<std::collections::VecDeque<_>>());
    let results = std::sync::Mutex::new((0..n).map(|_| None).collect::<Vec<Option<T>>>());
    std::thread::scope(|s| {
        for _ in 0..parallel.max(1) {
            s.spawn(|| loop {
                let job = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                let Some((i, job)) = job else { break };
                let r = job();
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
    });
    results.into_inner().unwrap_or_else(|e| e.into_inner()).into_iter().map(|r| r.expect("every job ran")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Self costs are the function's own lines; a line after `calls=` is
    /// the call's inclusive cost, added to the caller's inclusive cost and
    /// not to its self cost; the callee's calls are counted; a direct
    /// recursive call is not added to the caller twice.
    #[test]
    fn a_dump_is_split_into_self_and_inclusive_costs() {
        let dump = "events: Ir\nsummary: 160\n\nfn=outer\n3 10\ncfn=inner\ncalls=4 0 \n5 100\n+1 5\n\n\
                    fn=inner\n0 100\n\nfn=rec\n1 45\ncfn=rec\ncalls=2 0\n1 30\n";
        let p = parse_profile(dump);
        assert_eq!(p.funcs["outer"], FnCost { self_ir: 15, inclusive: 115, calls: 0 });
        assert_eq!(p.funcs["inner"], FnCost { self_ir: 100, inclusive: 100, calls: 4 });
        assert_eq!(p.funcs["rec"], FnCost { self_ir: 45, inclusive: 45, calls: 2 });
        assert_eq!(p.funcs.values().map(|f| f.self_ir).sum::<u64>(), 160);
    }
}
