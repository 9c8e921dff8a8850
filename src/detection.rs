//! Detecting a failed Kibana upgrade on this host — never acting on it. After the Kibana package
//! changed version, the agent watches its local Kibana ([`Watch`]) and records a [`Detection`]
//! in its host document when the upgrade went wrong; `status` then recommends a rollback, which
//! still needs the admin's `start`. Pure: what was seen goes in as values ([`Look`]), time is the
//! caller's monotonic clock, no I/O.
//!
//! A watch fails the upgrade on the first of:
//!
//! * **a saved-object migration error** in Kibana's journal ([`classify`]), matched against the
//!   lines Kibana's source emits (elastic/kibana,
//!   `packages/core/saved-objects/core-saved-objects-migration-server-internal/src/`):
//!   `migrations_state_action_machine.ts` rejects with "Unable to complete saved object
//!   migrations for the [<prefix>] index: <reason>" (the FATAL control state) or "... index.
//!   Please check the health of your Elasticsearch cluster and try again. ..." (an exception),
//!   which Kibana logs as its FATAL error; `model/retry_state.ts`'s reason "Unable to complete the
//!   <STEP> step after <N> attempts, terminating."; older versions' (7.11–8.x)
//!   `dumpExecutionLog`, "[<prefix>] migration failed, dumping execution log:"; and the
//!   transition into FATAL that `common/utils/logs.ts` logs ("[<prefix>] X -> FATAL. took: Nms.").
//!   `retry_state.ts`'s per-step retry, "Action failed with '<error>'. Retrying attempt <n> in <s>
//!   seconds.", is an error too but not a failure by itself (the step is retried): it becomes the
//!   evidence quoted when the watch fails otherwise;
//! * **the unit crash-looping** ([`CRASH_LOOP_RESTARTS`] automatic restarts since the watch
//!   began, as the start step judges it) or **hitting its start limit**;
//! * **Kibana not available** for longer than `detection.not_available_after`, counted from the
//!   version change, from the last change of what Kibana answers, from its last migration
//!   progress line and from the last look that found the unit stopped on purpose (inactive). "Available" is the start step's readiness rule (`host::kibana_status`:
//!   HTTP 200 and `available` or `degraded` — `degraded` is normal for real Kibana; a secured
//!   8.9+ status is redacted to core's level, which is judged the same way); a refused
//!   credential or TLS problem says nothing about the upgrade and stops no clock. A migration
//!   logs progress as it goes — every state transition ("[.kibana] REINDEX_SOURCE_TO_TEMP_READ ->
//!   REINDEX_SOURCE_TO_TEMP_TRANSFORM. took: 12ms.", `common/utils/logs.ts`) and every batch
//!   ("[.kibana] Processed 1000 documents out of 250000.", `model/progress.ts`) — so a slow but
//!   healthy migration keeps pushing the deadline out, while one that hangs silently trips it.
//!
//! Kibana healthy at the new version ends the watch: the upgrade worked. A finding that stronger
//! evidence may still replace (not available, a crash loop) leaves the watch running: a migration
//! error seen later replaces it ([`after_verdict`]), and Kibana healthy after all withdraws it.
//! A migration error or the start limit ends the watch.

use std::time::Duration;

use semver::Version;
use serde::{Deserialize, Serialize};

pub use crate::fleet::{Detection, DetectionKind};

/// Automatic restarts since the watch began that make a crash loop (as the start step counts).
pub const CRASH_LOOP_RESTARTS: u32 = 2;
/// The longest journal line kept as evidence (the rest is cut, marked with "…").
pub const EVIDENCE_CHARS: usize = 400;

/// What one journal line of Kibana's says about a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LineClass {
    Other,
    /// A state transition or a batch processed: the migration is moving.
    MigrationProgress,
    /// Some other error or fatal record (evidence, not a failure by itself).
    Error,
    /// A migration step failed and is retried (`retry_state.ts`).
    MigrationRetry,
    /// The migration failed (see the module docs for the lines).
    MigrationFailed,
}

/// Sorts one line of Kibana's journal (any of its log formats: the 8.x+ pattern layout, ECS
/// JSON, 7.x legacy JSON or text, the stderr mirror of a fatal error).
pub fn classify(line: &str) -> LineClass {
    let failed = line.contains("Unable to complete saved object migrations for the [")
        || (line.contains("Unable to complete the ")
            && line.contains(" step after ")
            && line.contains(" attempts, terminating."))
        || line.contains("migration failed, dumping execution log:")
        || (line.contains(" -> FATAL. took: "));
    if failed {
        return LineClass::MigrationFailed;
    }
    if line.contains("Action failed with '") && line.contains("'. Retrying attempt ") {
        return LineClass::MigrationRetry;
    }
    let lower = line.to_ascii_lowercase();
    let error = line.contains("][ERROR]")
        || line.contains("][FATAL]")
        || line.trim_start().starts_with("FATAL ")
        || lower.contains("\"log.level\":\"error\"")
        || lower.contains("\"log.level\":\"fatal\"")
        || lower.contains("\"level\":\"error\"")
        || lower.contains("\"level\":\"fatal\"")
        || lower.contains("\"tags\":[\"error\"")
        || lower.contains("\"tags\":[\"fatal\"");
    if error {
        return LineClass::Error;
    }
    let transition = line.contains(" -> ") && line.contains(". took: ") && line.contains("ms.");
    let batch = (line.contains("] Processed ") && line.contains(" documents out of "))
        || (line.contains("] Starting to process ") && line.contains(" documents."));
    if transition || batch {
        return LineClass::MigrationProgress;
    }
    LineClass::Other
}

/// What Kibana's status API said, by the start step's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusLook {
    /// Healthy (HTTP 200, core available or degraded) at the new version, or redacted and
    /// healthy.
    Up,
    /// Not available: the answer, described (a different description restarts the clock).
    NotAvailable(String),
    /// Says nothing about the upgrade (credentials or TLS refused, an unexpected answer).
    Unknown,
}

/// The unit as systemd reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnitLook {
    /// `NRestarts`: automatic restarts since the unit was last started by hand.
    pub restarts: u32,
    /// `Result=start-limit-hit`.
    pub start_limit_hit: bool,
    /// `ActiveState=inactive`: stopped on purpose (not failed); Kibana is not expected to answer.
    pub inactive: bool,
}

/// One look at Kibana: values in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Look {
    pub at: Duration,
    pub unit: UnitLook,
    pub status: StatusLook,
    /// Journal lines written since the last look, oldest first.
    pub lines: Vec<String>,
}

/// A watch of one version change, kept in the agent's state directory so a restarted agent goes
/// on with it. Times are the agent's monotonic clock (`CLOCK_BOOTTIME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    pub from: Option<Version>,
    pub to: Version,
    /// When the change was seen (monotonic).
    pub began: Duration,
    /// The change on Elasticsearch's master clock (ms), when the agent could measure it.
    pub began_ms: Option<i64>,
    /// `NRestarts` at the first look.
    pub restarts_at_start: Option<u32>,
    /// The not-available clock runs from here.
    pub clock_from: Duration,
    /// The last status description, to notice when it changes.
    pub last_status: Option<String>,
    /// The strongest evidence line seen so far, and its rank.
    pub evidence: Option<(String, u8)>,
    /// When a failure line weaker than Kibana's fatal error was seen (the transition to FATAL,
    /// the dump), and `NRestarts` then: the fatal error, which carries the reason, follows once
    /// the other indices' migrations ended, so the verdict waits for it — until the unit
    /// restarted or [`FATAL_WAIT`] passed.
    #[serde(default)]
    pub failure_seen: Option<(Duration, u32)>,
}

/// What a look concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on watching.
    Watching,
    /// Kibana is healthy at the new version: the upgrade worked, the watch ends.
    Healthy,
    /// The upgrade failed.
    Failed(Detection),
}

/// What one verdict makes of what was found before: the finding to publish, whether it is
/// the first (announced once: the webhook), and whether the watch goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterVerdict {
    pub found: Option<Detection>,
    pub first: bool,
    pub watching: bool,
    /// What changed, for the journal (`None`: nothing did).
    pub change: Option<String>,
}

/// How strong a finding's evidence is: it is only ever replaced by a stronger one.
fn strength(kind: DetectionKind) -> u8 {
    match kind {
        DetectionKind::NotAvailable => 0,
        DetectionKind::CrashLoop => 1,
        DetectionKind::StartLimited => 2,
        DetectionKind::MigrationFailed => 3,
    }
}

/// Applies `verdict` to `found` (see the module docs).
pub fn after_verdict(found: Option<Detection>, verdict: Verdict) -> AfterVerdict {
    match verdict {
        Verdict::Watching => AfterVerdict {
            found,
            first: false,
            watching: true,
            change: None,
        },
        Verdict::Healthy => AfterVerdict {
            change: Some(match &found {
                Some(f) => format!(
                    "Kibana is healthy at {} after all: the finding ({}) is withdrawn",
                    f.to_version,
                    f.kind.as_str()
                ),
                None => "Kibana is healthy at the new version: the upgrade worked".into(),
            }),
            found: None,
            first: false,
            watching: false,
        },
        Verdict::Failed(d) => {
            let watching = !matches!(
                d.kind,
                DetectionKind::MigrationFailed | DetectionKind::StartLimited
            );
            match found {
                Some(f) if strength(d.kind) <= strength(f.kind) => AfterVerdict {
                    found: Some(f),
                    first: false,
                    watching,
                    change: None,
                },
                before => AfterVerdict {
                    change: Some(match &before {
                        Some(f) => format!(
                            "the finding is now {} (was {})",
                            d.kind.as_str(),
                            f.kind.as_str()
                        ),
                        None => format!("the upgrade failed: {}", d.kind.as_str()),
                    }),
                    first: before.is_none(),
                    found: Some(d),
                    watching,
                },
            }
        }
    }
}

/// How long a weaker failure line waits for Kibana's fatal error line (see [`Watch::failure_seen`]).
pub const FATAL_WAIT: Duration = Duration::from_secs(30);

/// The rank of Kibana's own fatal migration error.
const FATAL_RANK: u8 = 4;

/// How strong a line is as the evidence to quote: Kibana's own fatal migration error first (it
/// carries the reason), then the other failure lines, retries, other errors.
fn rank(line: &str, c: LineClass) -> u8 {
    match c {
        LineClass::Other | LineClass::MigrationProgress => 0,
        LineClass::Error => 1,
        LineClass::MigrationRetry => 2,
        LineClass::MigrationFailed
            if line.contains("Unable to complete saved object migrations for the [") =>
        {
            FATAL_RANK
        }
        LineClass::MigrationFailed => 3,
    }
}

/// `line` cut to [`EVIDENCE_CHARS`].
pub fn evidence_line(line: &str) -> String {
    let line = line.trim();
    if line.chars().count() <= EVIDENCE_CHARS {
        return line.to_string();
    }
    let mut s: String = line.chars().take(EVIDENCE_CHARS).collect();
    s.push('…');
    s
}

impl Watch {
    /// A watch of the change `from` → `to`, seen at `now` (`now_ms`: on the master's clock).
    pub fn new(from: Option<Version>, to: Version, now: Duration, now_ms: Option<i64>) -> Watch {
        Watch {
            from,
            to,
            began: now,
            began_ms: now_ms,
            restarts_at_start: None,
            clock_from: now,
            last_status: None,
            evidence: None,
            failure_seen: None,
        }
    }

    /// Takes one look; `not_available_after` is `detection.not_available_after`.
    pub fn look(&mut self, look: &Look, not_available_after: Duration) -> Verdict {
        // A reboot restarts the monotonic clock: times from before it count from now.
        if self.clock_from > look.at || self.began > look.at {
            self.began = look.at;
            self.clock_from = look.at;
        }
        let mut failed_line = false; // in this look's lines
        for line in &look.lines {
            let class = classify(line);
            if class == LineClass::MigrationProgress {
                self.clock_from = self.clock_from.max(look.at);
            }
            let r = rank(line, class);
            if r > 0 && self.evidence.as_ref().is_none_or(|(_, best)| r > *best) {
                self.evidence = Some((evidence_line(line), r));
            }
            failed_line |= class == LineClass::MigrationFailed;
        }
        let restarts_at_start = *self.restarts_at_start.get_or_insert(look.unit.restarts);
        let fatal_quoted = self
            .evidence
            .as_ref()
            .is_some_and(|(_, r)| *r >= FATAL_RANK);
        if failed_line && self.failure_seen.is_none() {
            self.failure_seen = Some((look.at, look.unit.restarts));
        }
        let migration_failed = fatal_quoted
            || self.failure_seen.is_some_and(|(at, restarts)| {
                look.unit.restarts != restarts || look.at.saturating_sub(at) >= FATAL_WAIT
            });
        let kind = if migration_failed {
            Some(DetectionKind::MigrationFailed)
        } else if look.unit.start_limit_hit {
            Some(DetectionKind::StartLimited)
        } else if look.unit.restarts.saturating_sub(restarts_at_start) >= CRASH_LOOP_RESTARTS {
            Some(DetectionKind::CrashLoop)
        } else {
            None
        };
        let detail = match (&look.status, kind) {
            (_, Some(DetectionKind::StartLimited)) => {
                "the kibana unit hit its start limit and stays failed".to_string()
            }
            (_, Some(DetectionKind::CrashLoop)) => format!(
                "the kibana unit restarted {} times since the version change",
                look.unit.restarts.saturating_sub(restarts_at_start)
            ),
            (_, Some(_)) => "Kibana's saved-object migration failed".to_string(),
            (StatusLook::Up, None) => return Verdict::Healthy,
            (_, None) if look.unit.inactive => {
                // Stopped by someone: no clock runs until it is started again.
                self.clock_from = self.clock_from.max(look.at);
                return Verdict::Watching;
            }
            (StatusLook::Unknown, None) => return Verdict::Watching,
            (StatusLook::NotAvailable(what), None) => {
                // A different answer than before restarts the clock (the first one does not:
                // the clock runs from the change).
                if self.last_status.as_deref() != Some(what.as_str()) {
                    if self.last_status.is_some() {
                        self.clock_from = self.clock_from.max(look.at);
                    }
                    self.last_status = Some(what.clone());
                }
                let quiet = look.at.saturating_sub(self.clock_from);
                if quiet < not_available_after {
                    return Verdict::Watching;
                }
                return Verdict::Failed(self.detection(
                    DetectionKind::NotAvailable,
                    format!(
                        "Kibana not available for {} without migration progress ({what})",
                        humantime::format_duration(Duration::from_secs(quiet.as_secs()))
                    ),
                ));
            }
        };
        Verdict::Failed(self.detection(kind.expect("a kind"), detail))
    }

    fn detection(&self, kind: DetectionKind, detail: String) -> Detection {
        Detection {
            kind,
            from_version: self.from.clone(),
            to_version: self.to.clone(),
            since_ms: self.began_ms,
            first_error: self.evidence.as_ref().map(|(l, _)| l.clone()),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const LIMIT: Duration = Duration::from_secs(600);

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn finding(kind: DetectionKind) -> Detection {
        Detection {
            kind,
            from_version: Some(v("8.14.3")),
            to_version: v("8.15.0"),
            since_ms: None,
            first_error: None,
            detail: String::new(),
        }
    }

    #[test]
    fn a_weaker_finding_is_refined_by_stronger_evidence_or_withdrawn_when_healthy() {
        use DetectionKind::*;
        // Not available first (a loaded machine: the error line comes later): recorded,
        // announced once, the watch goes on.
        let a = after_verdict(None, Verdict::Failed(finding(NotAvailable)));
        assert!(a.first && a.watching);
        // The same or weaker again: kept as it was.
        let b = after_verdict(a.found.clone(), Verdict::Failed(finding(NotAvailable)));
        assert_eq!((b.found, b.first, b.change), (a.found.clone(), false, None));
        // The migration error: replaces it, not announced again, the watch ends.
        let c = after_verdict(a.found.clone(), Verdict::Failed(finding(MigrationFailed)));
        assert_eq!(c.found.unwrap().kind, MigrationFailed);
        assert!(!c.first && !c.watching);
        // A slow but healthy migration flagged not available comes up after all: withdrawn.
        let d = after_verdict(a.found, Verdict::Healthy);
        assert!(d.found.is_none() && !d.watching);
        assert!(d.change.unwrap().contains("withdrawn"));
        // A crash loop is not replaced by "not available".
        let e = after_verdict(
            Some(finding(CrashLoop)),
            Verdict::Failed(finding(NotAvailable)),
        );
        assert_eq!(e.found.unwrap().kind, CrashLoop);
    }

    fn watch() -> Watch {
        Watch::new(
            Some(v("8.14.3")),
            v("8.15.0"),
            S * 100,
            Some(1_700_000_000_000),
        )
    }

    fn look(at: u64, status: StatusLook, lines: &[&str]) -> Look {
        Look {
            at: Duration::from_secs(at),
            unit: UnitLook::default(),
            status,
            lines: lines.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn na(what: &str) -> StatusLook {
        StatusLook::NotAvailable(what.into())
    }

    // Lines as Kibana writes them: the pattern layout of 8.x+ (`[date][LEVEL][logger] msg`),
    // the stderr mirror of a fatal error, 7.x legacy JSON.
    const FATAL_REASON: &str = "[2026-03-01T10:00:05.123+00:00][FATAL][root] Error: Unable to complete saved object migrations for the [.kibana] index: Migrations failed. Reason: 1 transformation errors were encountered:\n - dashboard:3: Error: Migration function for version 8.15.0 threw an error";
    const FATAL_ES: &str = " FATAL  Error: Unable to complete saved object migrations for the [.kibana_task_manager] index. Please check the health of your Elasticsearch cluster and try again. Unexpected Elasticsearch ResponseError: statusCode: 500, method: PUT, url: /.kibana_task_manager_8.15.0_001 error: [internal_server_error]";
    const STEP_GAVE_UP: &str = "[2026-03-01T10:00:05.123+00:00][ERROR][savedobjects-service] [.kibana] Unable to complete the CLONE_TEMP_TO_TARGET step after 15 attempts, terminating. The last failure message was: timeout";
    const DUMP: &str = "[2026-03-01T10:00:05.100+00:00][ERROR][savedobjects-service] [.kibana] migration failed, dumping execution log:";
    const TO_FATAL: &str = "[2026-03-01T10:00:05.000+00:00][INFO ][savedobjects-service] [.kibana] REINDEX_SOURCE_TO_TEMP_TRANSFORM -> FATAL. took: 3ms.";
    const RETRY: &str = "[2026-03-01T10:00:02.000+00:00][ERROR][savedobjects-service] [.kibana] Action failed with 'no_shard_available_action_exception'. Retrying attempt 1 in 2 seconds.";
    const TRANSITION: &str = "[2026-03-01T10:00:01.000+00:00][INFO ][savedobjects-service] [.kibana] REINDEX_SOURCE_TO_TEMP_READ -> REINDEX_SOURCE_TO_TEMP_TRANSFORM. took: 12ms.";
    const BATCH: &str = "[2026-03-01T10:00:01.500+00:00][INFO ][savedobjects-service] [.kibana] Processed 1000 documents out of 250000.";
    const STARTING: &str = "[2026-03-01T10:00:01.400+00:00][INFO ][savedobjects-service] [.kibana] Starting to process 250000 documents.";
    const LEGACY_TRANSITION: &str = r#"{"type":"log","@timestamp":"2026-03-01T10:00:01+00:00","tags":["info","savedobjects-service"],"pid":7,"message":"[.kibana] INIT -> WAIT_FOR_YELLOW_SOURCE. took: 3ms."}"#;
    const LEGACY_ERROR: &str = r#"{"type":"log","@timestamp":"2026-03-01T10:00:01+00:00","tags":["error","elasticsearch-service"],"pid":7,"message":"Unable to retrieve version information from Elasticsearch nodes."}"#;
    const ECS_ERROR: &str = r#"{"log.level":"error","@timestamp":"2026-03-01T10:00:01.000Z","log":{"logger":"plugins.taskManager"},"message":"boom"}"#;

    #[test]
    fn kibanas_migration_lines_are_classified() {
        for l in [FATAL_REASON, FATAL_ES, STEP_GAVE_UP, DUMP, TO_FATAL] {
            assert_eq!(classify(l), LineClass::MigrationFailed, "{l}");
        }
        assert_eq!(classify(RETRY), LineClass::MigrationRetry);
        for l in [TRANSITION, BATCH, STARTING, LEGACY_TRANSITION] {
            assert_eq!(classify(l), LineClass::MigrationProgress, "{l}");
        }
        for l in [LEGACY_ERROR, ECS_ERROR] {
            assert_eq!(classify(l), LineClass::Error, "{l}");
        }
        // The dump's transitions have no "took": they are not progress.
        let dumped = "[2026-03-01T10:00:05.101+00:00][INFO ][savedobjects-service] [.kibana] INIT -> WAIT_FOR_YELLOW_SOURCE";
        assert_eq!(classify(dumped), LineClass::Other);
        for l in [
            "[2026-03-01T10:00:06.000+00:00][INFO ][status] Kibana is now available (was unavailable)",
            "[2026-03-01T10:00:00.000+00:00][INFO ][savedobjects-service] Starting saved objects migrations",
            "[2026-03-01T10:00:00.000+00:00][INFO ][savedobjects-service] [.kibana] Migration completed after 1234ms",
        ] {
            assert_eq!(classify(l), LineClass::Other, "{l}");
        }
    }

    #[test]
    fn a_migration_failure_in_the_journal_fails_the_upgrade_quoting_the_fatal_line() {
        let mut w = watch();
        assert_eq!(
            w.look(&look(101, na("no answer"), &[TRANSITION]), LIMIT),
            Verdict::Watching
        );
        let Verdict::Failed(d) = w.look(
            &look(102, na("no answer"), &[TO_FATAL, DUMP, FATAL_REASON]),
            LIMIT,
        ) else {
            panic!("not failed")
        };
        assert_eq!(d.kind, DetectionKind::MigrationFailed);
        // The transition to FATAL and the dump come first; the quote is Kibana's fatal error,
        // which carries the reason.
        assert_eq!(d.first_error.as_deref(), Some(FATAL_REASON));
        assert_eq!(d.from_version, Some(v("8.14.3")));
        assert_eq!(d.to_version, v("8.15.0"));
        assert_eq!(d.since_ms, Some(1_700_000_000_000));
    }

    #[test]
    fn a_weaker_failure_line_waits_for_kibanas_fatal_error() {
        let mut w = watch();
        let first = look(101, na("no answer"), &[TO_FATAL, DUMP]);
        assert_eq!(w.look(&first, LIMIT), Verdict::Watching);
        assert_eq!(
            w.look(&look(110, na("no answer"), &[]), LIMIT),
            Verdict::Watching
        );
        let Verdict::Failed(d) = w.look(&look(112, na("no answer"), &[FATAL_ES]), LIMIT) else {
            panic!("not failed")
        };
        assert_eq!(d.first_error.as_deref(), Some(FATAL_ES.trim()));
        // Without the fatal line (the process was killed first): failed once the unit
        // restarted, or after FATAL_WAIT.
        let mut w = watch();
        w.look(&look(101, na("no answer"), &[TO_FATAL]), LIMIT);
        let mut restarted = look(104, na("no answer"), &[]);
        restarted.unit.restarts = 1;
        let Verdict::Failed(d) = w.look(&restarted, LIMIT) else {
            panic!("not failed")
        };
        assert_eq!(d.kind, DetectionKind::MigrationFailed);
        assert_eq!(d.first_error.as_deref(), Some(TO_FATAL));
        let mut w = watch();
        w.look(&look(101, na("no answer"), &[DUMP]), LIMIT);
        assert_eq!(
            w.look(&look(130, na("no answer"), &[]), LIMIT),
            Verdict::Watching
        );
        assert!(matches!(
            w.look(&look(131, na("no answer"), &[]), LIMIT),
            Verdict::Failed(_)
        ));
    }

    #[test]
    fn a_crash_loop_or_start_limit_fails_it_with_the_best_error_seen() {
        let mut w = watch();
        let mut l = look(101, na("no answer"), &[LEGACY_ERROR]);
        l.unit.restarts = 5; // restarts from before the change do not count
        assert_eq!(w.look(&l, LIMIT), Verdict::Watching);
        l.unit.restarts = 6;
        l.lines = vec![RETRY.into()];
        assert_eq!(w.look(&l, LIMIT), Verdict::Watching);
        l.unit.restarts = 7;
        l.lines.clear();
        let Verdict::Failed(d) = w.look(&l, LIMIT) else {
            panic!()
        };
        assert_eq!(d.kind, DetectionKind::CrashLoop);
        assert_eq!(d.first_error.as_deref(), Some(RETRY));
        assert!(d.detail.contains("restarted 2 times"), "{}", d.detail);

        let mut w = watch();
        let mut l = look(101, na("no answer"), &[]);
        l.unit.start_limit_hit = true;
        let Verdict::Failed(d) = w.look(&l, LIMIT) else {
            panic!()
        };
        assert_eq!(d.kind, DetectionKind::StartLimited);
        assert_eq!(d.first_error, None);
    }

    #[test]
    fn not_available_counts_from_the_change_and_healthy_ends_the_watch() {
        let mut w = watch();
        assert_eq!(
            w.look(&look(200, na("no answer"), &[]), LIMIT),
            Verdict::Watching
        );
        assert_eq!(
            w.look(&look(699, na("no answer"), &[]), LIMIT),
            Verdict::Watching
        );
        let Verdict::Failed(d) = w.look(&look(700, na("no answer"), &[]), LIMIT) else {
            panic!()
        };
        assert_eq!(d.kind, DetectionKind::NotAvailable);
        assert!(
            d.detail.contains("10m") && d.detail.contains("no answer"),
            "{}",
            d.detail
        );

        let mut w = watch();
        assert_eq!(
            w.look(&look(150, StatusLook::Up, &[]), LIMIT),
            Verdict::Healthy
        );
        // Credentials refused say nothing: no verdict, however long.
        let mut w = watch();
        assert_eq!(
            w.look(&look(5000, StatusLook::Unknown, &[]), LIMIT),
            Verdict::Watching
        );
    }

    #[test]
    fn a_slow_migration_that_keeps_logging_progress_never_trips_the_timer() {
        let mut w = watch();
        // Two hours of migration, a batch every 5 minutes, never available until the end.
        let mut t = 100;
        while t < 100 + 7200 {
            t += 300;
            assert_eq!(
                w.look(&look(t, na("not ready (HTTP 503)"), &[BATCH]), LIMIT),
                Verdict::Watching,
                "at {t}"
            );
        }
        assert_eq!(
            w.look(&look(t + 30, StatusLook::Up, &[]), LIMIT),
            Verdict::Healthy
        );
        // ... and once it stops logging, the timer runs from its last line.
        let mut w = watch();
        w.look(&look(400, na("not ready (HTTP 503)"), &[TRANSITION]), LIMIT);
        assert_eq!(
            w.look(&look(999, na("not ready (HTTP 503)"), &[]), LIMIT),
            Verdict::Watching
        );
        assert!(matches!(
            w.look(&look(1000, na("not ready (HTTP 503)"), &[]), LIMIT),
            Verdict::Failed(Detection {
                kind: DetectionKind::NotAvailable,
                ..
            })
        ));
    }

    #[test]
    fn a_change_of_answer_restarts_the_clock_and_a_reboot_does_not_confuse_it() {
        let mut w = watch();
        w.look(&look(600, na("no answer"), &[]), LIMIT);
        // From no answer to "not ready yet": the server came up; the clock restarts.
        assert_eq!(
            w.look(&look(650, na("not ready"), &[]), LIMIT),
            Verdict::Watching
        );
        assert_eq!(
            w.look(&look(1249, na("not ready"), &[]), LIMIT),
            Verdict::Watching
        );
        assert!(matches!(
            w.look(&look(1250, na("not ready"), &[]), LIMIT),
            Verdict::Failed(_)
        ));
        // After a reboot the monotonic clock is smaller than the recorded times.
        let mut w = watch();
        assert_eq!(
            w.look(&look(5, na("no answer"), &[]), LIMIT),
            Verdict::Watching
        );
        assert_eq!(
            w.look(&look(604, na("no answer"), &[]), LIMIT),
            Verdict::Watching
        );
        assert!(matches!(
            w.look(&look(605, na("no answer"), &[]), LIMIT),
            Verdict::Failed(_)
        ));
    }

    #[test]
    fn a_unit_stopped_on_purpose_stops_the_clock() {
        let mut w = watch();
        let mut stopped = look(650, na("no answer"), &[]);
        stopped.unit.inactive = true;
        assert_eq!(w.look(&stopped, LIMIT), Verdict::Watching);
        stopped.at = S * 5000;
        assert_eq!(w.look(&stopped, LIMIT), Verdict::Watching);
        // Started again: the clock runs from the last look that saw it stopped.
        assert_eq!(
            w.look(&look(5599, na("no answer"), &[]), LIMIT),
            Verdict::Watching
        );
        assert!(matches!(
            w.look(&look(5600, na("no answer"), &[]), LIMIT),
            Verdict::Failed(_)
        ));
    }

    #[test]
    fn evidence_is_cut_to_a_readable_length() {
        let long = "x".repeat(1000);
        let e = evidence_line(&long);
        assert_eq!(e.chars().count(), EVIDENCE_CHARS + 1);
        assert!(e.ends_with('…'));
        assert_eq!(evidence_line("  short  "), "short");
    }
}
