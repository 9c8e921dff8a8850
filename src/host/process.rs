//! Which Kibana a running process is, from evidence tied to the process itself — needed when
//! Kibana's status is redacted (8.9+ without credentials: no version in it). The installed
//! package alone proves nothing: a Kibana started before the install still runs the old code.
//! Two facts together do:
//!
//! * the process **started after the install finished**: its start time (`/proc/PID/stat`
//!   field 22, clock ticks since boot on `CLOCK_BOOTTIME` since Linux 5.x) against the end of
//!   the install — on `CLOCK_BOOTTIME` when this agent did the install, else the package
//!   database's timestamp (whole seconds of wall time: dpkg's file list, rpm's `INSTALLTIME`);
//! * the `package.json` **of the Kibana home that process runs** says the version: the home is
//!   the process's `KBN_HOME` (Elastic's unit sets it), else its working directory (the unit's
//!   `WorkingDirectory=/usr/share/kibana`), else the nearest ancestor of its executable with a
//!   `package.json` (`/usr/share/kibana/node/bin/node` → `/usr/share/kibana`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::local::Local;

/// The end of the last install of the package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallEnd {
    /// Measured by this agent on `CLOCK_BOOTTIME` right after the install returned.
    Boottime(Duration),
    /// The package database's timestamp, whole seconds since the epoch.
    WallSecs(u64),
}

/// What the process of a running Kibana is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KibanaProcess {
    pub pid: u32,
    /// Start time on `CLOCK_BOOTTIME`.
    pub started: Duration,
    /// The Kibana home, as the host sees it.
    pub home: PathBuf,
    /// How the home was found (`KBN_HOME`, `working directory`, `executable`).
    pub home_from: &'static str,
    /// `version` of `<home>/package.json`.
    pub version: Option<String>,
}

/// Reads the evidence of process `pid` (as the host numbers it).
pub fn inspect(local: &Local, pid: u32) -> Result<KibanaProcess, String> {
    let proc_dir = local.path(format!("/proc/{pid}"));
    let stat = std::fs::read_to_string(proc_dir.join("stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    let ticks = start_ticks(&stat).ok_or_else(|| format!("/proc/{pid}/stat is not understood"))?;
    let hz = clock_ticks_per_second();
    let started = Duration::from_secs_f64(ticks as f64 / hz as f64);

    let environ = std::fs::read(proc_dir.join("environ")).unwrap_or_default();
    let kbn_home = environ
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix("KBN_HOME="))
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    let link = |name: &str| std::fs::read_link(proc_dir.join(name)).ok();
    let has_package_json = |home: &Path| local.path(home).join("package.json").is_file();
    let (home, home_from) = if let Some(h) = kbn_home {
        (h, "KBN_HOME")
    } else if let Some(cwd) = link("cwd").filter(|c| has_package_json(c)) {
        (cwd, "working directory")
    } else if let Some(exe) = link("exe") {
        let home = exe
            .ancestors()
            .skip(1)
            .find(|a| has_package_json(a))
            .map(Path::to_path_buf)
            .ok_or_else(|| {
                format!(
                    "no package.json above the executable {} of pid {pid}",
                    exe.display()
                )
            })?;
        (home, "executable")
    } else {
        return Err(format!(
            "cannot tell the Kibana home of pid {pid} (no KBN_HOME, cwd or exe)"
        ));
    };
    let version = std::fs::read_to_string(local.path(&home).join("package.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["version"].as_str().map(str::to_string));
    Ok(KibanaProcess {
        pid,
        started,
        home,
        home_from,
        version,
    })
}

/// Field 22 (`starttime`) of `/proc/PID/stat`; the command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`.
fn start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts at field 3 (state): field 22 is the 20th from there
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn clock_ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .map_or(100, |t| t as u64)
}

/// `CLOCK_BOOTTIME` now.
pub fn boottime_now() -> Duration {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .expect("CLOCK_BOOTTIME is available on Linux");
    Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32)
}

/// Whether a process started at `started` (boottime) started after the install ended.
/// `None`: cannot tell (the database's whole seconds and the start fall into the same second).
/// `now_boot`/`now_wall` convert between the clocks when the install end is wall time.
pub fn started_after_install(
    started: Duration,
    install: InstallEnd,
    now_boot: Duration,
    now_wall: SystemTime,
) -> Option<bool> {
    match install {
        InstallEnd::Boottime(end) => Some(started > end),
        InstallEnd::WallSecs(secs) => {
            let ago = now_boot.saturating_sub(started);
            let started_wall = now_wall.checked_sub(ago)?.duration_since(UNIX_EPOCH).ok()?;
            let end = Duration::from_secs(secs);
            if started_wall >= end + Duration::from_secs(1) {
                Some(true)
            } else if started_wall < end {
                Some(false)
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_are_read_after_the_command_name() {
        let stat = "4242 (node (kibana) x) S 1 4242 4242 0 -1 4194560 9 0 0 0 1 2 0 0 20 0 11 0 177239 1000 10 18446744073709551615";
        assert_eq!(start_ticks(stat), Some(177239));
        assert_eq!(start_ticks("garbage"), None);
    }

    #[test]
    fn install_end_against_process_start() {
        let now_boot = Duration::from_secs(10_000);
        let now_wall = UNIX_EPOCH + Duration::from_secs(1_700_010_000);
        // boot at wall 1_700_000_000; a process started 9_000 s after boot = wall 1_700_009_000
        let started = Duration::from_secs(9_000);
        let b = |s| InstallEnd::Boottime(Duration::from_secs(s));
        assert_eq!(
            started_after_install(started, b(8_999), now_boot, now_wall),
            Some(true)
        );
        assert_eq!(
            started_after_install(started, b(9_001), now_boot, now_wall),
            Some(false)
        );
        let w = InstallEnd::WallSecs;
        assert_eq!(
            started_after_install(started, w(1_700_008_999), now_boot, now_wall),
            Some(true)
        );
        assert_eq!(
            started_after_install(started, w(1_700_009_001), now_boot, now_wall),
            Some(false)
        );
        assert_eq!(
            started_after_install(started, w(1_700_009_000), now_boot, now_wall),
            None
        );
    }

    #[test]
    fn this_process_is_inspected() {
        // The test binary: no KBN_HOME, its cwd is the crate root (which has no package.json),
        // and no package.json above its executable either.
        let me = std::process::id();
        let e = inspect(&Local::this_host(), me).unwrap_err();
        assert!(e.contains("no package.json above the executable"), "{e}");
        let stat = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
        let started = Duration::from_secs_f64(
            start_ticks(&stat).unwrap() as f64 / clock_ticks_per_second() as f64,
        );
        assert!(
            started <= boottime_now(),
            "start {started:?} is in the future"
        );
    }
}
