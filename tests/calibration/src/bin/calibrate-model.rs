//! `calibrate-model`: the corpus on the host model, and its comparison with a
//! real-Xen run (what `cargo xtask calibrate` and `cargo xtask test` call).
//!
//! * no argument: prints the model's `CAL` lines and its `CALSUM` line;
//! * `--compare LOG [--all]`: compares the `CAL` lines in LOG (a serial log or
//!   a saved result file) with the model, prints the records that disagree
//!   (every record with `--all`) and `calibration=A/T`, and fails on a
//!   disagreement not listed as deliberate;
//! * `--markdown LOG`: the per-case table for docs/RELIABILITY.md;
//! * `--extract LOG OUT`: saves LOG's `CAL` and `CALSUM` lines to OUT (the
//!   checked-in copy the host test compares with).

use std::process::ExitCode;

use pvops_calibration::host::{compare, markdown, model_run, parse, parse_summary, table, Line, MODEL_SEED};

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))
}

fn model_lines() -> Result<Vec<Line>, String> {
    let (records, sum, violations) = model_run(MODEL_SEED);
    if sum.harness_errors != 0 || !sum.poisoned.is_empty() || violations != 0 {
        return Err(format!("the model run is unusable: {sum} violations={violations}"));
    }
    Ok(records.iter().map(Line::from).collect())
}

fn main_inner(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        None => {
            let (records, sum, violations) = model_run(MODEL_SEED);
            for r in &records {
                println!("{r}");
            }
            println!("{sum} violations={violations}");
            Ok(())
        }
        Some("--compare") | Some("--markdown") => {
            let log = read(args.get(1).ok_or("missing LOG")?)?;
            let xen = parse(&log);
            if xen.is_empty() {
                return Err("no CAL lines in the Xen log: did the kernel run the corpus?".into());
            }
            if let Some(sum) = parse_summary(&log) {
                if sum.get("harness_errors").copied().unwrap_or(0) != 0
                    || sum.get("poisoned").copied().unwrap_or(0) != 0
                {
                    return Err(format!("the Xen run reported trouble: {sum:?}"));
                }
            }
            let c = compare(&xen, &model_lines()?);
            if args[0] == "--markdown" {
                print!("{}", markdown(&c));
                return Ok(());
            }
            let full = table(&c);
            if args.iter().any(|a| a == "--all") {
                print!("{full}");
            } else {
                let mut lines = full.lines();
                println!("{}", lines.next().unwrap_or_default());
                lines.filter(|l| !l.ends_with(" yes")).for_each(|l| println!("{l}"));
                println!("({} agreeing records not shown: `cargo xtask calibrate` shows all)", c.agreeing());
            }
            println!("calibration={} ({} unexplained disagreements)", c.fraction(), c.unexplained().len());
            if c.ok() {
                Ok(())
            } else {
                Err(format!(
                    "calibration: {} record(s) differ between the real Xen and the model",
                    c.unexplained().len()
                ))
            }
        }
        Some("--extract") => {
            let (log, out) = (read(args.get(1).ok_or("missing LOG")?)?, args.get(2).ok_or("missing OUT")?);
            let keep: Vec<&str> =
                log.lines().map(str::trim).filter(|l| l.starts_with("CAL ") || l.starts_with("CALSUM ")).collect();
            if keep.is_empty() {
                return Err("no CAL lines in LOG".into());
            }
            std::fs::write(out, keep.join("\n") + "\n").map_err(|e| format!("{out}: {e}"))
        }
        Some(other) => Err(format!("unknown argument {other:?} (--compare LOG | --markdown LOG | --extract LOG OUT)")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match main_inner(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("calibrate-model: {e}");
            ExitCode::FAILURE
        }
    }
}
