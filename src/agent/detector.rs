//! The agent's side of [`crate::detection`]: notices the Kibana package changing version on
//! this host, then watches the local Kibana — the unit (`NRestarts`, `Result`), its status API
//! (the start step's readiness rule) and its journal (read on from a cursor) — until it is
//! healthy at the new version or the upgrade failed, and keeps what it found for the host
//! document. Runs with the facts (`agent::facts`), beside the decision loop: a look is one D-Bus
//! call, one local HTTP request and one `journalctl`, and only while a watch runs.
//!
//! Its own rollback is no upgrade: a version change while an operation runs becomes the new
//! baseline without a watch, and clears what was found (the fleet was rolled back). State in
//! `<state_dir>/detection.json`, so a restarted agent goes on watching (and does not announce
//! a finding twice).

use std::path::PathBuf;
use std::time::Duration;

use semver::Version;
use serde::{Deserialize, Serialize};

use crate::config::DetectionSettings;
use crate::detection::{Look, StatusLook, UnitLook, Watch};
use crate::fleet::Detection;
use crate::host::journal;
use crate::host::kibana_status::Answer;

use super::host_steps::Host;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    /// The installed version last seen.
    baseline: Option<Version>,
    watch: Option<Watch>,
    /// Where the journal is read on from.
    cursor: Option<String>,
    /// When the old version was last seen (host wall clock, µs): the journal is read from there.
    since_wall_us: Option<i64>,
    found: Option<Detection>,
}

pub struct Detector {
    path: PathBuf,
    settings: DetectionSettings,
    stored: Stored,
    /// Host wall clock (µs) of the previous look at the installed version.
    last_seen_wall_us: Option<i64>,
}

/// What [`Detector::observe`] returns: what to publish, and whether it is new.
pub struct Observed {
    pub detection: Option<Detection>,
    pub fresh: bool,
}

fn wall_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The start step's readiness rule, for a watch of `to`: healthy (HTTP 200 and core available or
/// degraded, whatever the plugins say: `Answer::is_healthy`), and when the answer names a
/// version, that one. Refused credentials, TLS problems and odd answers say nothing about the
/// upgrade. Descriptions are coarse, so only a real change of answer restarts the clock.
pub fn status_look(answer: &Answer, to: &Version) -> StatusLook {
    match answer {
        a if a.is_healthy() => match a.version() {
            Some(v) if Version::parse(v).ok().as_ref() != Some(to) => {
                StatusLook::NotAvailable(format!("Kibana {v} still answers"))
            }
            _ => StatusLook::Up,
        },
        Answer::NoAnswer { .. } => StatusLook::NotAvailable("no answer".into()),
        Answer::NotReady { .. } => StatusLook::NotAvailable("not ready yet (HTTP 503)".into()),
        Answer::Full(_) | Answer::Redacted { .. } => StatusLook::NotAvailable(format!(
            "core level {}",
            answer.core_level().map(|l| l.as_str()).unwrap_or("unknown")
        )),
        Answer::AuthRefused { .. } | Answer::TlsFailed { .. } | Answer::Unexpected { .. } => {
            StatusLook::Unknown
        }
    }
}

impl Detector {
    pub fn open(state_dir: &std::path::Path, settings: &DetectionSettings) -> Detector {
        let path = state_dir.join("detection.json");
        let stored = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        Detector {
            path,
            settings: settings.clone(),
            stored,
            last_seen_wall_us: None,
        }
    }

    fn save(&self) {
        let text = serde_json::to_string(&self.stored).expect("serializes");
        let tmp = self.path.with_extension("json.tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &self.path)) {
            tracing::warn!(path = %self.path.display(), "cannot record the detection state: {e}");
        }
    }

    /// What is published without a look.
    pub fn unchanged(&self) -> Observed {
        Observed {
            detection: self
                .settings
                .enabled
                .then(|| self.stored.found.clone())
                .flatten(),
            fresh: false,
        }
    }

    /// Before the loop has read the operation: the first version this agent ever sees becomes
    /// the baseline (no watch: the same as [`Detector::observe`] would do with it), so an upgrade
    /// right after the agent's first start is still a change it watches. A version other than
    /// a known baseline waits for the operation (it may be the agent's own resumed reinstall).
    pub fn first_seen(&mut self, installed: Option<&Version>) -> Observed {
        if let (None, Some(v), true) = (&self.stored.baseline, installed, self.settings.enabled) {
            self.stored.baseline = Some(v.clone());
            self.last_seen_wall_us = Some(wall_us());
            self.save();
        }
        self.unchanged()
    }

    /// One look, with the installed version just read. `operation`: an operation is running
    /// (the agent's own steps change the version and stop the unit). `now`: the monotonic
    /// clock; `master_ms`: now on Elasticsearch's master clock, if known.
    pub async fn observe(
        &mut self,
        host: &Host,
        installed: Option<&Version>,
        operation: bool,
        now: Duration,
        master_ms: Option<i64>,
    ) -> Observed {
        let seen_at = wall_us();
        let previous_look = self.last_seen_wall_us.replace(seen_at);
        let quiet = |d: &Detector| Observed {
            detection: d.stored.found.clone(),
            fresh: false,
        };
        if !self.settings.enabled {
            return Observed {
                detection: None,
                fresh: false,
            };
        }
        let Some(installed) = installed else {
            return quiet(self);
        };
        if self.stored.baseline.as_ref() != Some(installed) {
            let from = self.stored.baseline.replace(installed.clone());
            self.stored.found = None;
            self.stored.cursor = None;
            if operation || from.is_none() {
                // The agent's own reinstall, or the first version this agent ever saw.
                self.stored.watch = None;
            } else {
                tracing::info!(
                    "the {} package changed version ({} -> {installed}): watching Kibana for a failed upgrade",
                    host.settings.kibana.package,
                    from.as_ref().map(ToString::to_string).unwrap_or_default()
                );
                self.stored.watch = Some(Watch::new(from, installed.clone(), now, master_ms));
                // The journal from the last moment the old version was seen (the agent's start
                // when this is its first look): Kibana may have failed before this look.
                self.stored.since_wall_us = Some(previous_look.unwrap_or(seen_at));
            }
            self.save();
        }
        if operation || self.stored.watch.is_none() {
            return quiet(self);
        }
        let look = self.look(host, now).await;
        let limit = self.settings.not_available_after;
        let watch = self.stored.watch.as_mut().expect("watching");
        let verdict = watch.look(&look, limit);
        let to = watch.to.clone();
        let after = crate::detection::after_verdict(self.stored.found.take(), verdict);
        if let Some(change) = &after.change {
            match &after.found {
                Some(d) => tracing::warn!(
                    kind = d.kind.as_str(),
                    "{change}: the upgrade of Kibana to {to}: {}{}; rollback recommended (`kibana-rollback status` shows the evidence; run `kibana-rollback start` to roll back)",
                    d.detail,
                    d.first_error
                        .as_deref()
                        .map(|l| format!("; first error: {l}"))
                        .unwrap_or_default()
                ),
                None => tracing::info!("{change} (Kibana {to})"),
            }
        }
        if !after.watching {
            self.stored.watch = None;
        }
        self.stored.found = after.found.clone();
        self.save();
        Observed {
            detection: after.found,
            fresh: after.first,
        }
    }

    async fn look(&mut self, host: &Host, now: Duration) -> Look {
        let unit = &host.settings.kibana.unit;
        let unit_look = match host.units.service_status(unit).await {
            Ok(s) => UnitLook {
                restarts: s.n_restarts,
                start_limit_hit: s.unit.result.as_deref() == Some("start-limit-hit"),
                inactive: s.unit.active_state == crate::host::systemd::ActiveState::Inactive,
            },
            Err(e) => {
                tracing::debug!("cannot read {unit} for detection: {e}");
                UnitLook::default()
            }
        };
        let to = self
            .stored
            .watch
            .as_ref()
            .map(|w| w.to.clone())
            .expect("watching");
        let status = status_look(&host.probe.probe(Some(&to)).await, &to);
        let from = match (&self.stored.cursor, self.stored.since_wall_us) {
            (Some(c), _) => journal::From::Cursor(c.clone()),
            (None, Some(us)) => journal::From::WallUs(us),
            (None, None) => journal::From::WallUs(wall_us()),
        };
        let lines = match journal::lines_after(&host.local, unit, &from).await {
            Ok((lines, cursor)) => {
                if cursor.is_some() {
                    self.stored.cursor = cursor;
                }
                lines
            }
            Err(e) => {
                tracing::debug!("cannot read the journal of {unit} for detection: {e}");
                vec![]
            }
        };
        Look {
            at: now,
            unit: unit_look,
            status,
            lines,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::kibana_status::{FullStatus, Level};

    fn full(level: Level, version: &str) -> Answer {
        with_core(level, level, version)
    }

    /// A full status with overall level `overall` and core level `core`, answered with the HTTP
    /// code Kibana gives that core level.
    fn with_core(overall: Level, core: Level, version: &str) -> Answer {
        Answer::Full(FullStatus {
            http_status: if core.is_up() { 200 } else { 503 },
            level: overall,
            core_level: core,
            version: version.into(),
            not_available: vec![],
            summary: String::new(),
            legacy_format: false,
        })
    }

    #[test]
    fn the_first_version_seen_before_the_operation_is_read_becomes_the_baseline() {
        let dir = tempfile::tempdir().unwrap();
        let old = Version::new(8, 14, 3);
        let mut d = Detector::open(dir.path(), &DetectionSettings::default());
        assert!(d.first_seen(Some(&old)).detection.is_none());
        assert_eq!(d.stored.baseline, Some(old.clone()));
        // Kept across a restart, and a later version seen before the operation is read is not
        // taken as the baseline (it may be the agent's own reinstall).
        let mut d = Detector::open(dir.path(), &DetectionSettings::default());
        assert_eq!(d.stored.baseline, Some(old.clone()));
        d.first_seen(Some(&Version::new(8, 15, 0)));
        assert_eq!(d.stored.baseline, Some(old));
        assert!(d.stored.watch.is_none());
    }

    #[test]
    fn the_status_is_judged_by_the_start_steps_rule() {
        let to = Version::new(8, 15, 0);
        assert_eq!(
            status_look(&full(Level::Available, "8.15.0"), &to),
            StatusLook::Up
        );
        // Degraded is normal for real Kibana.
        assert_eq!(
            status_look(&full(Level::Degraded, "8.15.0"), &to),
            StatusLook::Up
        );
        // A redacted status (8.9+ with security, no credentials) carries core's level only.
        let redacted = Answer::Redacted {
            http_status: 200,
            level: Level::Available,
        };
        assert_eq!(status_look(&redacted, &to), StatusLook::Up);
        assert!(matches!(
            status_look(&full(Level::Available, "8.14.3"), &to),
            StatusLook::NotAvailable(_)
        ));
        assert!(matches!(
            status_look(&full(Level::Critical, "8.15.0"), &to),
            StatusLook::NotAvailable(_)
        ));
        let not_ready = Answer::NotReady {
            http_status: 503,
            detail: "Kibana server is not ready yet".into(),
        };
        assert!(matches!(
            status_look(&not_ready, &to),
            StatusLook::NotAvailable(_)
        ));
        let refused = Answer::AuthRefused {
            http_status: 401,
            with_credentials: false,
        };
        assert_eq!(status_look(&refused, &to), StatusLook::Unknown);
    }

    /// Core decides, as it does Kibana's HTTP code: a plugin unavailable with core up is Up; core
    /// down is not, whatever the overall level says.
    #[test]
    fn the_status_look_follows_core_not_the_plugins() {
        let to = Version::new(8, 15, 0);
        assert_eq!(
            status_look(&with_core(Level::Critical, Level::Available, "8.15.0"), &to),
            StatusLook::Up
        );
        assert_eq!(
            status_look(
                &with_core(Level::Unavailable, Level::Degraded, "8.15.0"),
                &to
            ),
            StatusLook::Up
        );
        assert_eq!(
            status_look(
                &with_core(Level::Unavailable, Level::Unavailable, "8.15.0"),
                &to
            ),
            StatusLook::NotAvailable("core level unavailable".into())
        );
        let redacted_down = Answer::Redacted {
            http_status: 503,
            level: Level::Critical,
        };
        assert_eq!(
            status_look(&redacted_down, &to),
            StatusLook::NotAvailable("core level critical".into())
        );
        // A plugin's state does not hide an old version.
        assert_eq!(
            status_look(&with_core(Level::Critical, Level::Available, "8.14.3"), &to),
            StatusLook::NotAvailable("Kibana 8.14.3 still answers".into())
        );
    }
}
