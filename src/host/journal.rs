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
