//! Live progress on a terminal (`start --wait`, `abort --wait`, `status --watch` when stdout is
//! a terminal and `--json` is not given): one block — the operation, its phase, epoch, leader,
//! what it waits for, and a row per host with its unit, step and result — redrawn in place
//! every second, with phase changes printed above it as they happen and kept. Everywhere else
//! (the journal, Ansible, pipes) the followers print plain lines instead, unchanged.
//!
//! Every line of the block fits the terminal's width (80 columns when it cannot be read):
//! the host table is laid out by comfy-table to that width with display-width-correct
//! alignment, one line per host (a long cause is cut with "…"; `--json` keeps it whole), and
//! the text lines are cut by display width too.

use std::io::{IsTerminal, Write};

use comfy_table::{presets, ContentArrangement, Row, Table};
use kibana_rollback::fleet::{describe_error, HostDoc, OperationDoc, StepResult};
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use super::outcome::outcome_name;

/// Whether progress goes to a terminal (and so is drawn live).
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// The terminal's width in columns; 80 when it cannot be read.
pub fn width() -> usize {
    terminal_size::terminal_size_of(std::io::stdout())
        .map(|(w, _)| w.0 as usize)
        .filter(|w| *w >= 20)
        .unwrap_or(80)
}

/// `s` cut to at most `width` display columns, ending in "…" when cut.
pub fn fit(s: &str, width: usize) -> String {
    if s.width() <= width {
        return s.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
}

fn step_name<T: serde::Serialize>(s: &T) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// One host's row: HOST, UNIT, VERSION, STEP, RESULT.
fn host_row(id: &str, doc: Option<&HostDoc>, op: Option<&OperationDoc>) -> Vec<String> {
    let Some(h) = doc else {
        return vec![
            id.into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "not registered".into(),
        ];
    };
    let version = h
        .installed_version
        .as_ref()
        .map(|v| format!("{v}{}", if h.held { " held" } else { "" }))
        .unwrap_or_else(|| "-".into());
    let (step, result) = match (op, &h.ack) {
        (Some(op), Some(ack)) if ack.operation_id == op.id => {
            let current = op.phase.ack_step() == Some(ack.step) && ack.epoch >= op.phase_epoch;
            let step = if current || op.phase.is_terminal() {
                step_name(&ack.step)
            } else {
                format!("{} (earlier)", step_name(&ack.step))
            };
            let result = match &ack.result {
                StepResult::Ok => "ok".to_string(),
                StepResult::InProgress => "in progress".to_string(),
                StepResult::Failed { cause } => format!("failed: {cause}"),
            };
            (step, result)
        }
        _ => ("-".into(), "-".into()),
    };
    let result = match op.and_then(|o| o.hosts_failed.iter().find(|f| f.host == h.host_id)) {
        Some(f) => format!("set aside: {}", f.cause),
        None => result,
    };
    vec![
        h.host_id.clone(),
        step_name(&h.unit_state),
        version,
        step,
        result,
    ]
}

/// What the block shows.
pub struct View<'a> {
    pub op: Option<&'a OperationDoc>,
    /// The hosts to list, each with its document if it has one.
    pub hosts: Vec<(String, Option<&'a HostDoc>)>,
    pub waiting: Option<&'a str>,
    /// With no operation running: the newest finished one.
    pub last: Option<&'a OperationDoc>,
}

/// The block's lines, each at most `width` display columns.
pub fn render(v: &View, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    match v.op {
        Some(op) => {
            lines.push(format!(
                "operation {}  phase {}  epoch {}  leader {}",
                op.id,
                op.phase,
                op.epoch,
                op.leader_id().unwrap_or("none yet")
            ));
            lines.push(format!(
                "Kibana {} from {}/{}, requested by {}",
                op.target_version, op.snapshot.repository, op.snapshot.name, op.requested_by
            ));
            lines.push(format!("waiting for: {}", v.waiting.unwrap_or("-")));
            if let Some(e) = &op.error {
                lines.push(format!("error: {}", describe_error(Some(e))));
            }
        }
        None => {
            lines.push("no operation running".into());
            lines.push(match v.last {
                Some(l) => format!(
                    "last: {} {} (Kibana {}){}",
                    l.id,
                    outcome_name(l),
                    l.target_version,
                    l.error
                        .as_ref()
                        .map(|e| format!(": {}", describe_error(Some(e))))
                        .unwrap_or_default()
                ),
                None => "no finished operation recorded".into(),
            });
        }
    }
    let mut lines: Vec<String> = lines.iter().map(|l| fit(l, width)).collect();
    if v.hosts.is_empty() {
        lines.push("no host registered".into());
        return lines;
    }
    let mut t = Table::new();
    t.load_style(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(width.min(u16::MAX as usize) as u16)
        .set_truncation_indicator("…")
        .set_header(vec!["HOST", "UNIT", "VERSION", "STEP", "RESULT"]);
    for (id, doc) in &v.hosts {
        let mut row = Row::from(host_row(id, *doc, v.op));
        row.max_height(1);
        t.add_row(row);
    }
    // comfy-table keeps to the width when it can; cut anyway, so a very narrow terminal never
    // wraps (a wrapped line would break the redraw).
    lines.extend(t.lines().map(|l| fit(&l, width)));
    lines
}

/// The block on the terminal: redrawn in place, with lines logged above it.
#[derive(Debug, Default)]
pub struct Screen {
    /// Lines of the block currently on the screen (the cursor is on the line below them).
    drawn: usize,
}

impl Screen {
    fn erase(&mut self, out: &mut impl Write) {
        if self.drawn > 0 {
            // Up to the block's first line, then clear to the end of the screen.
            let _ = write!(out, "\r\x1b[{}A\x1b[J", self.drawn);
            self.drawn = 0;
        }
    }

    /// Prints `line` above the block, where it stays.
    pub fn log(&mut self, line: &str) {
        let mut out = std::io::stdout().lock();
        self.erase(&mut out);
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// Replaces the block with `lines`.
    pub fn draw(&mut self, lines: &[String]) {
        let mut out = std::io::stdout().lock();
        self.erase(&mut out);
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
        self.drawn = lines.len();
        let _ = out.flush();
    }

    /// Leaves the block as it is (the next output goes below it).
    pub fn keep(&mut self) {
        self.drawn = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_cuts_by_display_width() {
        assert_eq!(fit("abc", 3), "abc");
        assert_eq!(fit("abcdef", 4), "abc…");
        // Wide characters take two columns each.
        assert_eq!(fit("日本語テキスト", 7), "日本語…");
        assert!(fit("日本語テキスト", 7).width() <= 7);
    }
}
