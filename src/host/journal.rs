//! The last lines a unit wrote to the journal, quoted when a start fails. systemd's journal has
//! no D-Bus API for reading, so this runs `journalctl -u UNIT -n N -o cat` on the host, bounded
//! twice: `timeout` around journalctl itself (so it also ends when run through a prefix such as
//! a test host's `host exec`) and the runner's own time limit.

use std::time::Duration;

use super::local::Local;
use super::pkg::run::Runner;

/// How long journalctl may take; a journal that cannot be read in that time is not worth waiting
/// for in a failing start.
const JOURNAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The unit's last `lines` journal lines, oldest first; on failure, one line saying why.
pub async fn last_lines(local: &Local, unit: &str, lines: usize) -> Vec<String> {
    let run = Runner {
        prefix: local.command_prefix.clone(),
        timeout: JOURNAL_TIMEOUT + Duration::from_secs(2),
    };
    let args: Vec<String> = [
        &format!("{}", JOURNAL_TIMEOUT.as_secs()),
        "journalctl",
        "--no-pager",
        "-u",
        unit,
        "-n",
        &lines.to_string(),
        "-o",
        "cat",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    match run.run("timeout", &args).await {
        Ok(out) if out.success() => out
            .stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
        Ok(out) => vec![format!("(journalctl failed: {})", out.error())],
        Err(e) => vec![format!("(journalctl could not run: {e})")],
    }
}

/// Where [`lines_after`] starts reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum From {
    /// After this journal cursor (the last read's).
    Cursor(String),
    /// From this wall-clock moment of the host (µs since the epoch): the journal stamps entries
    /// with the host's own clock, so no other clock is involved.
    WallUs(i64),
}

/// How many lines one read takes at most (a read every few seconds never comes near).
const READ_LIMIT: usize = 5000;

/// The unit's journal lines after `from`, oldest first, and the cursor to read on from
/// (journalctl's `--show-cursor` line). `Err`: why it could not be read.
pub async fn lines_after(
    local: &Local,
    unit: &str,
    from: &From,
) -> Result<(Vec<String>, Option<String>), String> {
    let run = Runner {
        prefix: local.command_prefix.clone(),
        timeout: JOURNAL_TIMEOUT + Duration::from_secs(2),
    };
    let mut args: Vec<String> = [
        &format!("{}", JOURNAL_TIMEOUT.as_secs()),
        "journalctl",
        "--no-pager",
        "-u",
        unit,
        "-o",
        "cat",
        "--show-cursor",
        "-n",
        &READ_LIMIT.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    match from {
        From::Cursor(c) => args.push(format!("--after-cursor={c}")),
        From::WallUs(us) => args.push(format!(
            "--since=@{}.{:06}",
            us.div_euclid(1_000_000),
            us.rem_euclid(1_000_000)
        )),
    }
    let out = run
        .run("timeout", &args)
        .await
        .map_err(|e| format!("journalctl could not run: {e}"))?;
    if !out.success() {
        return Err(format!("journalctl failed: {}", out.error()));
    }
    Ok(split_cursor(&out.stdout))
}

/// journalctl's output with `--show-cursor`: the lines, then `-- cursor: <cursor>`.
fn split_cursor(stdout: &str) -> (Vec<String>, Option<String>) {
    let mut lines = Vec::new();
    let mut cursor = None;
    for l in stdout.lines() {
        if let Some(c) = l.strip_prefix("-- cursor: ") {
            cursor = Some(c.trim().to_string());
        } else if !l.trim().is_empty() && l.trim() != "-- No entries --" {
            lines.push(l.to_string());
        }
    }
    (lines, cursor)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cursor_line_is_split_off() {
        let (lines, cursor) = super::split_cursor("a line\n\n second\n-- cursor: s=abc;i=1f\n");
        assert_eq!(lines, ["a line", " second"]);
        assert_eq!(cursor.as_deref(), Some("s=abc;i=1f"));
        let (lines, cursor) = super::split_cursor("-- No entries --\n");
        assert!(lines.is_empty() && cursor.is_none());
    }
}
