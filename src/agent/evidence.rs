//! This host's evidence of when each Kibana version was installed, published in its host
//! document for snapshot eligibility (`snapshots::upgrade_window`): the package manager's own
//! records ([`crate::host::install_history`]) and the agent's observations of the installed
//! version, all converted to the Elasticsearch master's clock, which also stamps snapshots.
//!
//! Host clocks are not trusted: the agent reads the master's clock around a request and takes
//! the offset from the midpoint, ± half the round trip. Observations are kept in
//! `<state_dir>/observed-versions.json`: the first and last moment (master's clock) each
//! installed version was seen, so a change from A to B proves B arrived after A was last seen.
//! Refreshed at start, when the installed version changes and every [`REFRESH_EVERY`]: reading a
//! few log files and one small request, cheap next to the heartbeat.

use std::path::{Path, PathBuf};
use std::time::Duration;

use semver::Version;
use serde::{Deserialize, Serialize};

use crate::config::PackageManagerKind;
use crate::es::Es;
use crate::fleet::{InstallEvent, InstallHistory};
use crate::host::install_history::{self, LocalHistory};

/// How often the logs are re-read and the clock offset re-measured when nothing changes.
pub const REFRESH_EVERY: Duration = Duration::from_secs(600);
/// dpkg's log has whole seconds.
const LOG_RESOLUTION_MS: i64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockOffset {
    /// master's clock − this host's clock.
    pub offset_ms: i64,
    pub uncertainty_ms: i64,
}

/// Reads the master's clock between two readings of ours.
pub async fn measure_offset(es: &Es) -> Option<ClockOffset> {
    let before = wall_ms();
    let master = es.master_clock_ms(Duration::from_secs(2)).await.ok()?;
    let after = wall_ms();
    Some(ClockOffset {
        offset_ms: master - (before + after) / 2,
        uncertainty_ms: (after - before) / 2 + 1,
    })
}

pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    version: Version,
    /// Master's clock.
    first_ms: i64,
    last_ms: i64,
}

/// The agent's record of installed versions and what it last published.
pub struct Evidence {
    path: PathBuf,
    log_dir: PathBuf,
    package: String,
    kind: PackageManagerKind,
    seen: Vec<Seen>,
    offset: Option<ClockOffset>,
    /// CLOCK_BOOTTIME of the last refresh.
    refreshed_at: Option<Duration>,
    history: Option<InstallHistory>,
}

impl Evidence {
    pub fn open(state_dir: &Path, package: &str, kind: PackageManagerKind) -> Self {
        let path = state_dir.join("observed-versions.json");
        let seen = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        Evidence {
            path,
            log_dir: PathBuf::from("/var/log"),
            package: package.to_string(),
            kind,
            seen,
            offset: None,
            refreshed_at: None,
            history: None,
        }
    }

    /// Now on the master's clock, once the offset was measured.
    pub fn master_now_ms(&self) -> Option<i64> {
        self.offset.map(|o| wall_ms() + o.offset_ms)
    }

    /// What to publish now.
    pub fn history(&self) -> Option<InstallHistory> {
        self.history.clone()
    }

    /// Records the installed version seen now; refreshes the history when it changed or is due.
    pub async fn update(&mut self, es: &Es, installed: Option<&Version>, now: Duration) {
        let changed = match (installed, self.seen.last()) {
            (Some(v), Some(last)) => &last.version != v,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let due = self
            .refreshed_at
            .is_none_or(|t| now.saturating_sub(t) >= REFRESH_EVERY);
        if due || changed || self.offset.is_none() {
            if let Some(o) = measure_offset(es).await {
                self.offset = Some(o);
            }
        }
        let Some(offset) = self.offset else {
            return; // no clock to convert to yet (Elasticsearch unreachable): publish nothing
        };
        if let Some(v) = installed {
            let at = wall_ms() + offset.offset_ms;
            match self.seen.last_mut() {
                Some(last) if &last.version == v => last.last_ms = at,
                _ => self.seen.push(Seen {
                    version: v.clone(),
                    first_ms: at,
                    last_ms: at,
                }),
            }
        }
        if !(due || changed) {
            return;
        }
        self.refreshed_at = Some(now);
        self.store();
        let local = match self.kind {
            PackageManagerKind::Dnf => {
                let t = install_history::rpm_installtime(&self.package).await;
                install_history::rpm_history(&self.log_dir, &self.package, t)
            }
            _ => install_history::dpkg_history(&self.log_dir, &self.package),
        };
        self.history = Some(build(&local, &self.seen, offset));
    }

    fn store(&self) {
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string(&self.seen).expect("serializes");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.path))
        {
            tracing::warn!(path = %self.path.display(), "cannot keep the observed versions: {e}");
        }
    }
}

/// The published history: log entries converted to the master's clock, and one event per
/// observed version change (B arrived after A was last seen and before B was first seen).
fn build(local: &LocalHistory, seen: &[Seen], offset: ClockOffset) -> InstallHistory {
    let mut installs: Vec<InstallEvent> = local
        .installs
        .iter()
        .map(|i| InstallEvent {
            version: i.version.clone(),
            earliest_ms: i.at_ms + offset.offset_ms,
            latest_ms: i.at_ms + offset.offset_ms + LOG_RESOLUTION_MS,
            source: i.source.to_string(),
        })
        .collect();
    for w in seen.windows(2) {
        installs.push(InstallEvent {
            version: w[1].version.clone(),
            earliest_ms: w[0].last_ms,
            latest_ms: w[1].first_ms,
            source: "agent".into(),
        });
    }
    installs.sort_by_key(|e| e.earliest_ms);
    InstallHistory {
        installs,
        covers_since_ms: local.covers_since_ms.map(|t| t + offset.offset_ms),
        uncertainty_ms: offset.uncertainty_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::install_history::LocalInstall;

    #[test]
    fn logs_are_shifted_to_the_master_clock_and_observed_changes_become_intervals() {
        let local = LocalHistory {
            installs: vec![LocalInstall {
                version: Version::new(8, 15, 0),
                at_ms: 10_000,
                source: "dpkg.log",
            }],
            covers_since_ms: Some(1_000),
        };
        let seen = vec![
            Seen {
                version: Version::new(8, 14, 3),
                first_ms: 100,
                last_ms: 20_000,
            },
            Seen {
                version: Version::new(8, 15, 0),
                first_ms: 25_000,
                last_ms: 30_000,
            },
        ];
        let h = build(
            &local,
            &seen,
            ClockOffset {
                offset_ms: 500,
                uncertainty_ms: 7,
            },
        );
        assert_eq!(h.uncertainty_ms, 7);
        assert_eq!(h.covers_since_ms, Some(1_500));
        assert_eq!(h.installs.len(), 2);
        assert_eq!(
            (h.installs[0].earliest_ms, h.installs[0].latest_ms),
            (10_500, 11_500)
        );
        assert_eq!(h.installs[0].source, "dpkg.log");
        assert_eq!(
            (h.installs[1].earliest_ms, h.installs[1].latest_ms),
            (20_000, 25_000)
        );
        assert_eq!(h.installs[1].source, "agent");
    }
}
