//! Whether this operation's restore happened, judged from the shard recoveries Elasticsearch
//! reports for the snapshot's kibana indices (`GET <indices>/_recovery`), once neither the
//! cluster state nor the task list shows a restore running. The leader asks this after a
//! restore request whose fate it does not know (`ClusterStep::InspectRestore`).
//!
//! Pure: the adapter reads the snapshot's indices, which of them exist and their recoveries;
//! this decides. The rule that matters: `_recovery` answers `{}` both for indices that do not
//! exist and for indices the caller may not see (it filters what the key lacks `monitor` on),
//! so an empty answer for indices that exist is **unknown**, never "not started" — a "not
//! started" leads the leader to restore again.

use serde::{Deserialize, Serialize};

use super::leader::RestoreInspection;

/// One shard recovery from `_recovery`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecovery {
    pub index: String,
    /// `SNAPSHOT`, `EMPTY_STORE`, `EXISTING_STORE`, `PEER`, ...
    pub kind: String,
    /// `INIT` ... `DONE`.
    pub stage: String,
    pub snapshot: Option<String>,
    pub repository: Option<String>,
    /// When the recovery started (the recovering node's clock, ms).
    #[serde(default)]
    pub start_time_ms: Option<i64>,
}

/// What the adapter read about the snapshot's kibana indices, no restore running.
#[derive(Debug, Clone, Copy)]
pub struct RecoveryEvidence<'a> {
    pub repository: &'a str,
    pub snapshot: &'a str,
    /// When this operation's safety snapshot started (ms, master's clock), if it has one:
    /// recoveries from the same snapshot before it belong to an earlier rollback.
    pub not_before_ms: Option<i64>,
    /// The indices of the snapshot's kibana feature state.
    pub indices: &'a [String],
    /// How many of them exist now.
    pub existing: usize,
    /// Their shard recoveries, as `_recovery` answered.
    pub recoveries: &'a [ShardRecovery],
}

/// The verdict; `Recovered` still needs the indices' health before it is `Completed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryVerdict {
    Decided(RestoreInspection),
    /// Every shard recovery from this snapshot, in this operation, is done.
    Recovered,
}

/// Slack for the recovering nodes' clocks against the master's (which dated the snapshot).
pub const CLOCK_SLACK_MS: i64 = 1000;

/// Judges the recoveries (module doc).
pub fn judge(e: &RecoveryEvidence) -> RecoveryVerdict {
    use RecoveryVerdict::{Decided, Recovered};
    let unknown = |why: String| Decided(RestoreInspection::Unknown(why));
    if e.indices.is_empty() {
        return unknown("the snapshot's kibana feature state holds no index".into());
    }
    if e.existing == 0 {
        return unknown(format!(
            "none of the snapshot's indices ({}) exists and no restore runs",
            e.indices.join(", ")
        ));
    }
    if e.recoveries.is_empty() {
        return unknown(
            "_recovery answered nothing for indices that exist: the key may lack the monitor privilege on them".into(),
        );
    }
    let from_snap: Vec<&ShardRecovery> = e
        .recoveries
        .iter()
        .filter(|r| {
            r.kind == "SNAPSHOT"
                && r.snapshot.as_deref() == Some(e.snapshot)
                && r.repository.as_deref() == Some(e.repository)
        })
        .filter(|r| match (e.not_before_ms, r.start_time_ms) {
            (Some(t), Some(s)) => s >= t - CLOCK_SLACK_MS,
            _ => true,
        })
        .collect();
    if from_snap.is_empty() {
        return Decided(RestoreInspection::NotStarted);
    }
    if e.not_before_ms.is_none() {
        return unknown(
            "these indices were recovered from this snapshot, but without a safety snapshot \
             nothing dates this operation's restore against an earlier one"
                .into(),
        );
    }
    if from_snap.iter().any(|r| r.stage != "DONE") {
        return Decided(RestoreInspection::InProgress);
    }
    Recovered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: &str, stage: &str, snap: &str, start: Option<i64>) -> ShardRecovery {
        ShardRecovery {
            index: ".kibana_8.14.3_001".into(),
            kind: kind.into(),
            stage: stage.into(),
            snapshot: (kind == "SNAPSHOT").then(|| snap.into()),
            repository: (kind == "SNAPSHOT").then(|| "repo".into()),
            start_time_ms: start,
        }
    }

    fn judge_with(
        not_before: Option<i64>,
        indices: &[&str],
        existing: usize,
        recs: &[ShardRecovery],
    ) -> RecoveryVerdict {
        let indices: Vec<String> = indices.iter().map(|s| s.to_string()).collect();
        judge(&RecoveryEvidence {
            repository: "repo",
            snapshot: "pre",
            not_before_ms: not_before,
            indices: &indices,
            existing,
            recoveries: recs,
        })
    }

    fn unknown_containing(v: RecoveryVerdict, part: &str) {
        match v {
            RecoveryVerdict::Decided(RestoreInspection::Unknown(why)) => {
                assert!(why.contains(part), "{why}")
            }
            other => panic!("expected Unknown({part}..), got {other:?}"),
        }
    }

    const IDX: &[&str] = &[".kibana_8.14.3_001", ".kibana_task_manager_8.14.3_001"];

    /// The case this module exists for: `{}` from `_recovery` for indices that exist (a key
    /// without `monitor` on them) is unknown, never "not started".
    #[test]
    fn an_empty_recovery_answer_for_existing_indices_is_unknown() {
        for not_before in [None, Some(5_000)] {
            unknown_containing(
                judge_with(not_before, IDX, 2, &[]),
                "_recovery answered nothing for indices that exist",
            );
        }
    }

    #[test]
    fn no_index_in_the_snapshot_or_none_existing_is_unknown() {
        unknown_containing(judge_with(Some(5_000), &[], 0, &[]), "holds no index");
        unknown_containing(
            judge_with(Some(5_000), IDX, 0, &[]),
            "none of the snapshot's indices (.kibana_8.14.3_001, .kibana_task_manager_8.14.3_001) exists",
        );
    }

    #[test]
    fn recoveries_not_from_this_snapshot_mean_not_started() {
        let recs = [
            rec("EXISTING_STORE", "DONE", "", Some(9_000)),
            rec("PEER", "DONE", "", Some(9_000)),
            rec("SNAPSHOT", "DONE", "other", Some(9_000)),
        ];
        assert_eq!(
            judge_with(Some(5_000), IDX, 2, &recs),
            RecoveryVerdict::Decided(RestoreInspection::NotStarted)
        );
        // Same snapshot name from another repository: not this restore either.
        let mut elsewhere = rec("SNAPSHOT", "DONE", "pre", Some(9_000));
        elsewhere.repository = Some("other-repo".into());
        assert_eq!(
            judge_with(Some(5_000), IDX, 2, &[elsewhere]),
            RecoveryVerdict::Decided(RestoreInspection::NotStarted)
        );
    }

    #[test]
    fn a_recovery_from_an_earlier_rollback_is_not_this_one() {
        // Started before the safety snapshot, beyond the clock slack.
        let old = [rec(
            "SNAPSHOT",
            "DONE",
            "pre",
            Some(5_000 - CLOCK_SLACK_MS - 1),
        )];
        assert_eq!(
            judge_with(Some(5_000), IDX, 2, &old),
            RecoveryVerdict::Decided(RestoreInspection::NotStarted)
        );
        // Within the slack it counts.
        let close = [rec("SNAPSHOT", "DONE", "pre", Some(5_000 - CLOCK_SLACK_MS))];
        assert_eq!(
            judge_with(Some(5_000), IDX, 2, &close),
            RecoveryVerdict::Recovered
        );
        // No start time: cannot be dated away, so it counts.
        let undated = [rec("SNAPSHOT", "DONE", "pre", None)];
        assert_eq!(
            judge_with(Some(5_000), IDX, 2, &undated),
            RecoveryVerdict::Recovered
        );
    }

    #[test]
    fn recovered_without_a_safety_snapshot_cannot_be_dated() {
        let recs = [rec("SNAPSHOT", "DONE", "pre", Some(9_000))];
        unknown_containing(
            judge_with(None, IDX, 2, &recs),
            "without a safety snapshot nothing dates",
        );
    }

    #[test]
    fn a_shard_not_done_is_in_progress_and_all_done_is_recovered() {
        let recs = [
            rec("SNAPSHOT", "DONE", "pre", Some(9_000)),
            rec("SNAPSHOT", "INDEX", "pre", Some(9_000)),
        ];
        assert_eq!(
            judge_with(Some(5_000), IDX, 2, &recs),
            RecoveryVerdict::Decided(RestoreInspection::InProgress)
        );
        let done = [
            rec("SNAPSHOT", "DONE", "pre", Some(9_000)),
            rec("SNAPSHOT", "DONE", "pre", Some(9_100)),
            rec("PEER", "INDEX", "", Some(9_200)),
        ];
        assert_eq!(
            judge_with(Some(5_000), IDX, 2, &done),
            RecoveryVerdict::Recovered
        );
    }
}
