//! Percentiles, per-run metrics, the median-of-runs table and the JSON report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Value};

/// Latency samples in microseconds; percentiles by nearest rank on the sorted samples.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    values: Vec<u64>,
    sorted: bool,
}

impl Samples {
    pub fn with_capacity(n: usize) -> Self {
        Samples {
            values: Vec::with_capacity(n),
            sorted: true,
        }
    }

    pub fn push(&mut self, micros: u64) {
        self.values.push(micros);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: &Samples) {
        self.values.extend_from_slice(&other.values);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.values.sort_unstable();
            self.sorted = true;
        }
    }

    /// The `p`-th percentile (0..=100) in milliseconds, NaN without samples.
    pub fn pct_ms(&mut self, p: f64) -> f64 {
        self.sort();
        if self.values.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.values.len() as f64).ceil() as usize;
        let i = rank.clamp(1, self.values.len()) - 1;
        self.values[i] as f64 / 1000.0
    }

    pub fn max_ms(&mut self) -> f64 {
        self.pct_ms(100.0)
    }

    pub fn mean_ms(&self) -> f64 {
        if self.values.is_empty() {
            return f64::NAN;
        }
        self.values.iter().sum::<u64>() as f64 / self.values.len() as f64 / 1000.0
    }
}

/// The numbers one run of one case produced, in the order they were added.
#[derive(Debug, Default, Clone)]
pub struct Run {
    pub metrics: Vec<(String, f64)>,
    /// Anything else worth keeping in the JSON (error counts by code, ...).
    pub extra: BTreeMap<String, Value>,
}

impl Run {
    pub fn set(&mut self, name: &str, value: f64) {
        match self.metrics.iter_mut().find(|(n, _)| n == name) {
            Some(m) => m.1 = value,
            None => self.metrics.push((name.to_string(), value)),
        }
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.metrics.iter().find(|(n, _)| n == name).map(|m| m.1)
    }

    pub fn note(&mut self, key: &str, value: Value) {
        self.extra.insert(key.to_string(), value);
    }
}

/// One configuration of a scenario, with every run of it.
#[derive(Debug, Clone)]
pub struct Case {
    pub label: String,
    pub params: Value,
    pub runs: Vec<Run>,
}

/// Median, min and max of a metric over runs (NaN runs ignored).
#[derive(Debug, Clone, Copy)]
pub struct Agg {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Case {
    pub fn agg(&self, name: &str) -> Option<Agg> {
        let mut v: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|r| r.get(name))
            .filter(|x| !x.is_nan())
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Agg {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    /// Every metric name any run has, in first-seen order.
    fn metric_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for r in &self.runs {
            for (n, _) in &r.metrics {
                if !names.contains(n) {
                    names.push(n.clone());
                }
            }
        }
        names
    }
}

/// A target from the issue, checked against a case's median.
#[derive(Debug, Clone)]
pub struct Target {
    pub what: String,
    pub case: String,
    pub metric: String,
    /// `<=` or `>=`.
    pub op: &'static str,
    pub bound: f64,
    pub measured: Option<f64>,
}

impl Target {
    pub fn met(&self) -> Option<bool> {
        let m = self.measured?;
        Some(match self.op {
            "<=" => m <= self.bound,
            _ => m >= self.bound,
        })
    }
}

/// Everything one invocation of a scenario measured.
pub struct Report {
    pub scenario: String,
    pub settings: Value,
    pub cases: Vec<Case>,
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
    pub load_before: String,
    started: std::time::SystemTime,
}

impl Report {
    pub fn new(scenario: &str, settings: Value) -> Self {
        Report {
            scenario: scenario.to_string(),
            settings,
            cases: Vec::new(),
            targets: Vec::new(),
            notes: Vec::new(),
            load_before: loadavg(),
            started: std::time::SystemTime::now(),
        }
    }

    pub fn case(&self, label: &str) -> Option<&Case> {
        self.cases.iter().find(|c| c.label == label)
    }

    /// Adds a target checked against the median of `metric` in the case `case`.
    pub fn target(&mut self, what: &str, case: &str, metric: &str, op: &'static str, bound: f64) {
        let measured = self
            .case(case)
            .and_then(|c| c.agg(metric))
            .map(|a| a.median);
        self.targets.push(Target {
            what: what.to_string(),
            case: case.to_string(),
            metric: metric.to_string(),
            op,
            bound,
            measured,
        });
    }

    /// The table: one row per case, one column per metric, `median (min-max)` when there are several runs.
    pub fn table(&self, columns: Option<&[&str]>) -> String {
        let names: Vec<String> = match columns {
            Some(c) => c.iter().map(|s| s.to_string()).collect(),
            None => {
                let mut names: Vec<String> = Vec::new();
                for c in &self.cases {
                    for n in c.metric_names() {
                        if !names.contains(&n) {
                            names.push(n);
                        }
                    }
                }
                names
            }
        };
        let mut rows: Vec<Vec<String>> = Vec::new();
        let mut header = vec!["case".to_string()];
        header.extend(names.iter().cloned());
        rows.push(header);
        for c in &self.cases {
            let mut row = vec![c.label.clone()];
            for n in &names {
                row.push(match c.agg(n) {
                    None => "-".to_string(),
                    Some(a) if c.runs.len() > 1 && a.min != a.max => {
                        format!(
                            "{} ({}-{})",
                            fmt_num(a.median),
                            fmt_num(a.min),
                            fmt_num(a.max)
                        )
                    }
                    Some(a) => fmt_num(a.median),
                });
            }
            rows.push(row);
        }
        let mut widths = vec![0; rows[0].len()];
        for r in &rows {
            for (i, cell) in r.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for (ri, r) in rows.iter().enumerate() {
            out.push('|');
            for (i, cell) in r.iter().enumerate() {
                let _ = write!(out, " {:w$} |", cell, w = widths[i]);
            }
            out.push('\n');
            if ri == 0 {
                out.push('|');
                for w in &widths {
                    let _ = write!(out, "{}|", "-".repeat(w + 2));
                }
                out.push('\n');
            }
        }
        out
    }

    pub fn targets_text(&self) -> String {
        let mut out = String::new();
        for t in &self.targets {
            let verdict = match t.met() {
                Some(true) => "MET ",
                Some(false) => "MISS",
                None => "n/a ",
            };
            let measured = t.measured.map_or("-".to_string(), fmt_num);
            let _ = writeln!(
                out,
                "  [{verdict}] {}: {} {} {} (measured {measured}, case {})",
                t.what,
                t.metric,
                t.op,
                fmt_num(t.bound),
                t.case
            );
        }
        out
    }

    pub fn to_json(&self) -> Value {
        let cases: Vec<Value> = self
            .cases
            .iter()
            .map(|c| {
                let mut summary = serde_json::Map::new();
                for n in c.metric_names() {
                    if let Some(a) = c.agg(&n) {
                        summary.insert(
                            n,
                            json!({"median": num(a.median), "min": num(a.min), "max": num(a.max)}),
                        );
                    }
                }
                let runs: Vec<Value> = c
                    .runs
                    .iter()
                    .map(|r| {
                        let metrics: serde_json::Map<String, Value> = r
                            .metrics
                            .iter()
                            .map(|(n, v)| (n.clone(), num(*v)))
                            .collect();
                        json!({"metrics": metrics, "extra": r.extra})
                    })
                    .collect();
                json!({"label": c.label, "params": c.params, "summary": summary, "runs": runs})
            })
            .collect();
        let targets: Vec<Value> = self
            .targets
            .iter()
            .map(|t| {
                json!({"what": t.what, "case": t.case, "metric": t.metric, "op": t.op,
                       "bound": t.bound, "measured": t.measured.map(num), "met": t.met()})
            })
            .collect();
        json!({
            "scenario": self.scenario,
            "started_unix": self.started.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "machine": machine(),
            "source": source(),
            "load_before": self.load_before,
            "load_after": loadavg(),
            "settings": self.settings,
            "cases": cases,
            "targets": targets,
            "notes": self.notes,
        })
    }

    /// Prints the table and targets, writes the JSON to `path`.
    pub fn finish(&self, columns: Option<&[&str]>, path: &Path) -> anyhow::Result<()> {
        println!(
            "\n== {} ==  (load before: {}, after: {})",
            self.scenario,
            self.load_before,
            loadavg()
        );
        print!("{}", self.table(columns));
        if !self.targets.is_empty() {
            println!("targets:");
            print!("{}", self.targets_text());
        }
        for n in &self.notes {
            println!("note: {n}");
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&self.to_json())? + "\n")?;
        println!("wrote {}", path.display());
        Ok(())
    }
}

fn num(v: f64) -> Value {
    if v.is_finite() {
        json!((v * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

/// A number as a person reads it: no more digits than matter.
pub fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        return "-".to_string();
    }
    let a = v.abs();
    if a >= 1000.0 || v == v.trunc() && a >= 10.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a == 0.0 {
        "0".to_string()
    } else {
        format!("{v:.3}")
    }
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The 1-minute load average.
pub fn load1() -> f64 {
    loadavg()
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

/// What the numbers were measured on.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": (mem_kib as f64 / 1048576.0 * 10.0).round() / 10.0,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

/// Which code was measured: the commit the work tree is on and the server binary's build time.
pub fn source() -> Value {
    let dir = env!("CARGO_MANIFEST_DIR");
    let head = std::process::Command::new("git")
        .args(["-C", dir, "rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let bin = std::path::Path::new(dir).join("target/release/talus-tally");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .ok()
        .map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339());
    json!({"git_head": head, "server_binary_built": built})
}
