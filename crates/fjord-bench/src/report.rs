//! The result table, printed and appended to a Markdown file with the git revision and machine,
//! and optionally printed as JSON lines (`--json`) for tests that read figures.

use std::io::Write;
use std::path::Path;
use std::process::Command;

/// One line of results.
#[derive(Debug, Clone)]
pub struct Row {
    /// Which scenario.
    pub scenario: String,
    /// Its parameters.
    pub setup: String,
    /// What it measured.
    pub figures: String,
    /// Some of the figures by name, for `--json` (scenarios may leave this empty).
    pub values: Vec<(&'static str, f64)>,
}

/// Rows of one run.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Row>,
}

impl Table {
    /// Adds a row (and prints it at once, so long runs show progress).
    pub fn push(&mut self, row: Row) {
        eprintln!("{}: {} -> {}", row.scenario, row.setup, row.figures);
        self.rows.push(row);
    }

    /// The table as Markdown.
    pub fn render(&self) -> String {
        let mut out = String::from("| scenario | setup | figures |\n|---|---|---|\n");
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                r.scenario, r.setup, r.figures
            ));
        }
        out
    }

    /// One JSON object per row: `{"scenario", "setup", "figures", "values": {name: number}}`.
    pub fn json_lines(&self) -> String {
        let mut out = String::new();
        for r in &self.rows {
            let values: serde_json::Map<String, serde_json::Value> = r
                .values
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                .collect();
            let row = serde_json::json!({
                "scenario": r.scenario,
                "setup": r.setup,
                "figures": r.figures,
                "values": values,
            });
            out.push_str(&row.to_string());
            out.push('\n');
        }
        out
    }
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A one-line description of this machine.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / (1024.0 * 1024.0));
    let kernel = command_output("uname", &["-r"]).unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB RAM, Linux {kernel}; client and broker on the same machine")
}

/// Appends `table` to the Markdown file `path` under a heading with the date, git revision and
/// machine.
pub fn append(path: &Path, table: &Table) -> std::io::Result<()> {
    let revision = command_output("git", &["rev-parse", "--short", "HEAD"])
        .unwrap_or_else(|| "unknown".into());
    let dirty = command_output("git", &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let command: Vec<String> = std::env::args().collect();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(
        f,
        "\n## {date}, revision {revision}{}\n\n{}\n\nCommand: `{}`\n\n{}",
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        },
        machine(),
        command.join(" "),
        table.render()
    )
}
