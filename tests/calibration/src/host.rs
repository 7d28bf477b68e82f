//! The host side: the corpus on `pvops_model::XenModel`, the kernel's `CAL`
//! lines parsed, and the record-by-record comparison.

use std::collections::BTreeMap;
use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

use pvops::Pfn;
use pvops_model::xen::XenModel;

use crate::corpus::CASES;
use crate::{run, Record, Summary, SCRATCH_FRAMES};

/// Frames of the modelled domain (the corpus needs few).
pub const MODEL_PAGES: u64 = 64;
/// The model's p2m seed (any works: the corpus is symbolic).
pub const MODEL_SEED: u64 = 0xca1b;

/// Where the model deliberately differs from the real Xen: `(case, label,
/// reason)`. Such a record counts as disagreeing in `A/T` but does not fail.
/// Empty: the last entry (`alias-other-frame`, a direct-map slot pointed at
/// another frame writable) went when the model's direct map became real
/// slots with per-frame writable counts (`pvops_model::xen::direct_map`).
pub const DELIBERATE: &[(&str, &str, &str)] = &[];

/// One `CAL` line, as printed by the kernel (or by the model run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Case name.
    pub case: String,
    /// Record number in the case.
    pub step: u32,
    /// What was done.
    pub label: String,
    /// Status (or read-back flags).
    pub status: i64,
    /// `done` count.
    pub done: u32,
}

impl From<&Record> for Line {
    fn from(r: &Record) -> Self {
        Line { case: r.case.to_string(), step: r.step, label: r.label.to_string(), status: r.status, done: r.done }
    }
}

/// The corpus on a fresh model: its records, its summary, and the direct
/// stores the model refused (must be none: the corpus never stores into a
/// read-only alias).
pub fn model_run(seed: u64) -> (Vec<Record>, Summary, usize) {
    model_run_cases(seed, CASES)
}

/// [`model_run`] of any list of cases (tests of the runner itself).
pub fn model_run_cases(seed: u64, cases: &[crate::Case]) -> (Vec<Record>, Summary, usize) {
    let model = XenModel::boot(MODEL_PAGES, seed);
    // Past the builder's frames; every alias writable, every frame untyped.
    let scratch: Vec<Pfn> = (16..16 + SCRATCH_FRAMES as u64).map(Pfn).collect();
    let p = crate::Platform {
        transport: &model,
        p2m: &model,
        mem: &model,
        direct_map_base: model.direct_map_base(),
        scratch: &scratch,
        user_base: model.user_base().0,
        kernel_base: model.kernel_base().0,
    };
    let mut out = Vec::new();
    let sum = run(&p, cases, &mut out);
    (out, sum, model.violations().len())
}

/// Every `CAL` line in `text` (a serial log or a saved result file).
pub fn parse(text: &str) -> Vec<Line> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            if w.next()? != "CAL" {
                return None;
            }
            let case = w.next()?.to_string();
            let step = w.next()?.parse().ok()?;
            let label = w.next()?.to_string();
            let status = w.next()?.parse().ok()?;
            let done = w.next()?.parse().ok()?;
            Some(Line { case, step, label, status, done })
        })
        .collect()
}

/// The `CALSUM` line's `key=value` fields, if present.
pub fn parse_summary(text: &str) -> Option<BTreeMap<String, u64>> {
    let line = text.lines().find(|l| l.trim_start().starts_with("CALSUM "))?;
    Some(
        line.split_whitespace()
            .skip(1)
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect(),
    )
}

/// One compared record.
#[derive(Clone, Debug)]
pub struct Row {
    /// Case name.
    pub case: String,
    /// Record number.
    pub step: u32,
    /// Label (the Xen side's, else the model's).
    pub label: String,
    /// Xen's `(status, done)`.
    pub xen: Option<(i64, u32)>,
    /// The model's `(status, done)`.
    pub model: Option<(i64, u32)>,
    /// Why the model differs on purpose, if listed in [`DELIBERATE`].
    pub deliberate: Option<&'static str>,
}

impl Row {
    /// Same label on both sides and the same status and `done`.
    pub fn agrees(&self) -> bool {
        self.xen.is_some() && self.xen == self.model
    }
}

/// The comparison of a Xen run with a model run.
#[derive(Clone, Debug, Default)]
pub struct Comparison {
    /// Every record of either side, in case order.
    pub rows: Vec<Row>,
}

impl Comparison {
    /// Records that agree.
    pub fn agreeing(&self) -> usize {
        self.rows.iter().filter(|r| r.agrees()).count()
    }

    /// Records compared (the union of both sides).
    pub fn total(&self) -> usize {
        self.rows.len()
    }

    /// Disagreements not listed as deliberate.
    pub fn unexplained(&self) -> Vec<&Row> {
        self.rows.iter().filter(|r| !r.agrees() && r.deliberate.is_none()).collect()
    }

    /// True when there was something to compare and every disagreement is deliberate.
    pub fn ok(&self) -> bool {
        self.total() > 0 && self.unexplained().is_empty()
    }

    /// `A/T`, as the Xen `RESULT` line shows it.
    pub fn fraction(&self) -> String {
        format!("{}/{}", self.agreeing(), self.total())
    }
}

/// Compares Xen's lines with the model's records, by `(case, step)`; a label
/// that differs is a disagreement (the sequences went different ways).
pub fn compare(xen: &[Line], model: &[Line]) -> Comparison {
    let order: BTreeMap<&str, usize> = CASES.iter().enumerate().map(|(i, c)| (c.name, i)).collect();
    let key = |l: &Line| (order.get(l.case.as_str()).copied().unwrap_or(usize::MAX), l.case.clone(), l.step);
    let mut rows: BTreeMap<(usize, String, u32), Row> = BTreeMap::new();
    for l in xen {
        rows.insert(
            key(l),
            Row {
                case: l.case.clone(),
                step: l.step,
                label: l.label.clone(),
                xen: Some((l.status, l.done)),
                model: None,
                deliberate: None,
            },
        );
    }
    for l in model {
        let row = rows.entry(key(l)).or_insert_with(|| Row {
            case: l.case.clone(),
            step: l.step,
            label: l.label.clone(),
            xen: None,
            model: None,
            deliberate: None,
        });
        if row.label == l.label {
            row.model = Some((l.status, l.done));
        } else {
            row.label = format!("{}|model:{}", row.label, l.label);
        }
    }
    let mut rows: Vec<Row> = rows.into_values().collect();
    for r in &mut rows {
        r.deliberate = DELIBERATE.iter().find(|(c, l, _)| *c == r.case && *l == r.label).map(|(_, _, why)| *why);
    }
    Comparison { rows }
}

/// `status/done`; a status that is no errno (positive, or with NX set) is a
/// read-back's flag bits, shown in hex.
fn cell(v: Option<(i64, u32)>) -> String {
    match v {
        Some((s, d)) if !(-4095..=0).contains(&s) => format!("{:#x}/{d}", s as u64),
        Some((s, d)) => format!("{s}/{d}"),
        None => "-".to_string(),
    }
}

/// A plain-text table of every record: case, step, label, Xen, model, agree?
pub fn table(c: &Comparison) -> String {
    let mut s = format!("{:<20} {:>3} {:<26} {:>14} {:>14}  agree\n", "case", "#", "record", "xen", "model");
    for r in &c.rows {
        let verdict = match (r.agrees(), r.deliberate) {
            (true, _) => "yes",
            (false, Some(_)) => "no (deliberate)",
            (false, None) => "NO",
        };
        s += &format!(
            "{:<20} {:>3} {:<26} {:>14} {:>14}  {verdict}\n",
            r.case,
            r.step,
            r.label,
            cell(r.xen),
            cell(r.model)
        );
    }
    s
}

/// The calibration table for docs/RELIABILITY.md: one row per case.
pub fn markdown(c: &Comparison) -> String {
    let mut s = String::from("| case | what | Xen (status/done per record) | model | agree |\n|---|---|---|---|---|\n");
    for case in CASES {
        let rows: Vec<&Row> = c.rows.iter().filter(|r| r.case == case.name).collect();
        if rows.is_empty() {
            continue;
        }
        let side = |f: fn(&Row) -> Option<(i64, u32)>| rows.iter().map(|r| cell(f(r))).collect::<Vec<_>>().join(" ");
        let agree = rows.iter().filter(|r| r.agrees()).count();
        let verdict = if agree == rows.len() {
            format!("yes ({agree}/{})", rows.len())
        } else {
            format!("**{agree}/{}**", rows.len())
        };
        s +=
            &format!("| `{}` | {} | {} | {} | {verdict} |\n", case.name, case.what, side(|r| r.xen), side(|r| r.model));
    }
    s
}
