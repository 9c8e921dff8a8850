//! Notifications: the events an operation's webhook receives, and who sends each.
//!
//! **Who sends.** Exactly one agent per event: the one whose compare-and-set wrote it. Every
//! entry of an operation's history carries the epoch it was written at, and only the leader of
//! an epoch writes entries at that epoch (the lease's fencing), so the leader of epoch E
//! announces the entries at epoch E — its takeover, its phase changes, the hosts it set aside,
//! the outcome — after Elasticsearch applied the write. The operator's entries have no leader:
//! the first leader announces the operation's start (its takeover of a fresh operation), and a
//! leader taking over a resumed operation announces the resume first. Operator-only endings
//! (`abort` of an operation no agent picked up, `lock --force-release`) are not announced.
//! A leader that crashes between its write and the announcement loses that event (at most
//! once per agent); a delivery that timed out may still have arrived and is retried (at least
//! once per attempt series): receivers deduplicate on `(operation, sequence)`.
//!
//! [`announcements`] is the pure rule; [`webhook`] delivers.

pub mod webhook;

use serde::Serialize;

use crate::fleet::{
    Detection, DetectionKind, HostFailure, OpError, OperationDoc, Phase, SnapshotRef,
};

/// What happened, as the `event` field of the JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The first agent took the lease of a new operation: it runs.
    Started,
    /// Another agent took over the lease (the previous leader went silent).
    LeaderChanged,
    /// An operator resumed a failed operation (`start --resume`).
    Resumed,
    /// The operation moved to another phase.
    PhaseChanged,
    /// A note in the same phase (hosts set aside after the restore point).
    Note,
    /// The operation reached `done`, `aborted` or `failed`: `outcome` and `error` say how.
    Finished,
    /// A host's agent saw its Kibana upgrade fail ([`UpgradeFailed`]); no operation is involved.
    RollbackRecommended,
}

/// The `rollback_recommended` event: sent once, by the agent of the host whose upgrade failed,
/// when it first records the failure (`crate::detection`). Nothing is rolled back: the admin
/// runs `kibana-rollback start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpgradeFailed {
    pub event: EventKind,
    pub host: String,
    /// `migration_failed`, `crash_loop`, `start_limited` or `not_available`.
    pub kind: DetectionKind,
    pub from_version: Option<String>,
    pub to_version: String,
    /// When the agent saw the version change, Elasticsearch's master clock (ms since the epoch).
    pub since_ms: Option<i64>,
    pub first_error: Option<String>,
    pub detail: String,
    pub sent_by: String,
}

impl UpgradeFailed {
    pub fn new(host: &str, d: &Detection) -> UpgradeFailed {
        UpgradeFailed {
            event: EventKind::RollbackRecommended,
            host: host.to_string(),
            kind: d.kind,
            from_version: d.from_version.as_ref().map(ToString::to_string),
            to_version: d.to_version.to_string(),
            since_ms: d.since_ms,
            first_error: d.first_error.clone(),
            detail: d.detail.clone(),
            sent_by: host.to_string(),
        }
    }
}

/// What the webhook delivers: an operation's event or a host's failed upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Outgoing {
    Operation(Notification),
    UpgradeFailed(UpgradeFailed),
}

impl Outgoing {
    /// For logs: which event of what.
    pub fn label(&self) -> String {
        match self {
            Outgoing::Operation(n) => {
                format!("event {:?} #{} of {}", n.event, n.sequence, n.operation)
            }
            Outgoing::UpgradeFailed(u) => format!("event rollback_recommended of {}", u.host),
        }
    }
}

/// One webhook event (the JSON body, field for field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notification {
    pub event: EventKind,
    pub operation: String,
    /// The entry's index in the operation's history: with `operation`, the key to deduplicate on.
    pub sequence: usize,
    /// The phase the operation is in after this event.
    pub phase: Phase,
    pub from: Phase,
    pub to: Phase,
    pub epoch: u64,
    pub reason: String,
    /// The writer's wall clock (informational).
    pub at: String,
    pub leader: Option<String>,
    /// The operation's expected hosts.
    pub hosts: Vec<String>,
    /// Hosts set aside after the restore point, with their cause.
    pub hosts_failed: Vec<HostFailure>,
    pub target_version: String,
    pub snapshot: SnapshotRef,
    pub requested_by: String,
    /// `done`, `aborted` or `failed` for [`EventKind::Finished`], else null.
    pub outcome: Option<Phase>,
    /// Host and cause of an `aborted` or `failed` outcome.
    pub error: Option<OpError>,
    /// The agent that sent it (the leader of `epoch`).
    pub sent_by: String,
}

impl From<Notification> for Outgoing {
    fn from(n: Notification) -> Outgoing {
        Outgoing::Operation(n)
    }
}

impl From<UpgradeFailed> for Outgoing {
    fn from(u: UpgradeFailed) -> Outgoing {
        Outgoing::UpgradeFailed(u)
    }
}

/// The events agent `me` announces after its write of `doc` was applied, and the history length
/// to pass as `already` next time for this operation (entries before `already` were announced).
pub fn announcements(doc: &OperationDoc, me: &str, already: usize) -> (Vec<Notification>, usize) {
    let len = doc.history.len();
    if doc.leader_id() != Some(me) {
        return (Vec::new(), already);
    }
    let epoch = doc.epoch;
    // The first entry at our epoch is our takeover (lease::takeover writes it).
    let Some(takeover) = doc.history.iter().position(|c| c.epoch == epoch) else {
        return (Vec::new(), already);
    };
    let resume = takeover.checked_sub(1).filter(|&i| {
        let c = &doc.history[i];
        c.from == Phase::Failed && c.to != Phase::Failed && c.epoch + 1 == epoch
    });
    let first = resume.unwrap_or(takeover).max(already);
    let fresh = doc.history[..resume.unwrap_or(takeover)]
        .iter()
        .all(|c| c.epoch == 0);
    let mut out = Vec::new();
    for (i, c) in doc.history.iter().enumerate().skip(first) {
        if c.epoch != epoch && Some(i) != resume {
            continue;
        }
        let event = if Some(i) == resume {
            EventKind::Resumed
        } else if i == takeover {
            if fresh {
                EventKind::Started
            } else {
                EventKind::LeaderChanged
            }
        } else if c.from != c.to && c.to.is_terminal() {
            EventKind::Finished
        } else if c.from != c.to {
            EventKind::PhaseChanged
        } else {
            EventKind::Note
        };
        let finished = event == EventKind::Finished;
        out.push(Notification {
            event,
            operation: doc.id.clone(),
            sequence: i,
            phase: c.to,
            from: c.from,
            to: c.to,
            epoch: c.epoch,
            reason: c.reason.clone(),
            at: c.at.clone(),
            leader: doc.leader_id().map(str::to_string),
            hosts: doc.expected_hosts.clone(),
            hosts_failed: doc.hosts_failed.clone(),
            target_version: doc.target_version.to_string(),
            snapshot: doc.snapshot.clone(),
            requested_by: doc.requested_by.clone(),
            outcome: finished.then_some(c.to),
            error: if finished { doc.error.clone() } else { None },
            sent_by: me.to_string(),
        });
    }
    (out, len.max(already))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::doc::tests::sample_op;
    use crate::fleet::lease::takeover;
    use crate::fleet::{transition, MachineIdentity, Mover};

    /// A fresh operation as `start` writes it: one "requested by" entry at epoch 0.
    fn requested() -> OperationDoc {
        let mut op = sample_op();
        op.history.push(crate::fleet::PhaseChange {
            from: Phase::Preflight,
            to: Phase::Preflight,
            epoch: 0,
            reason: "requested by alice".into(),
            at: "t0".into(),
        });
        op
    }

    fn kinds(n: &[Notification]) -> Vec<(EventKind, usize, Phase)> {
        n.iter().map(|e| (e.event, e.sequence, e.phase)).collect()
    }

    #[test]
    fn each_entry_is_announced_once_by_the_leader_of_its_epoch() {
        let m = MachineIdentity::default();
        let op = requested();
        let a = takeover(&op, "a", &m, "t1");
        // Only the leader announces; a follower that sees the document announces nothing.
        assert!(announcements(&a, "b", 0).0.is_empty());
        let (n, next) = announcements(&a, "a", 0);
        assert_eq!(kinds(&n), [(EventKind::Started, 1, Phase::Preflight)]);
        assert_eq!(n[0].sent_by, "a");
        let a2 = transition(&a, Phase::Prefetching, Mover::Leader, "checks passed", "t2").unwrap();
        let (n, next) = announcements(&a2, "a", next);
        assert_eq!(
            kinds(&n),
            [(EventKind::PhaseChanged, 2, Phase::Prefetching)]
        );
        // A renewal adds no entry: nothing to announce.
        let (n, next) = announcements(&crate::fleet::lease::renew(&a2), "a", next);
        assert!(n.is_empty());

        // b takes over; a restarted b (already = 0) still announces only its own epoch.
        let b = takeover(&a2, "b", &m, "t3");
        let (n, _) = announcements(&b, "b", 0);
        assert_eq!(
            kinds(&n),
            [(EventKind::LeaderChanged, 3, Phase::Prefetching)]
        );
        assert!(announcements(&b, "a", next).0.is_empty(), "a was deposed");
        let b2 = transition(&b, Phase::Stopping, Mover::Leader, "prefetched", "t4").unwrap();
        let b3 = transition(&b2, Phase::Aborting, Mover::Leader, "stop failed", "t5").unwrap();
        let mut b4 = transition(&b3, Phase::Aborted, Mover::Leader, "units back", "t6").unwrap();
        b4.error = Some(OpError {
            host: Some("c".into()),
            cause: "stop timed out".into(),
        });
        let (n, _) = announcements(&b4, "b", 4);
        assert_eq!(
            kinds(&n),
            [
                (EventKind::PhaseChanged, 4, Phase::Stopping),
                (EventKind::PhaseChanged, 5, Phase::Aborting),
                (EventKind::Finished, 6, Phase::Aborted)
            ]
        );
        assert_eq!(n[2].outcome, Some(Phase::Aborted));
        assert_eq!(n[2].error.as_ref().unwrap().cause, "stop timed out");
        assert_eq!(n[1].error, None);
    }

    #[test]
    fn a_failed_upgrade_is_its_own_event_without_an_operation() {
        let d = Detection {
            kind: DetectionKind::MigrationFailed,
            from_version: Some(semver::Version::new(8, 14, 3)),
            to_version: semver::Version::new(8, 15, 0),
            since_ms: Some(1_700_000_000_000),
            first_error: Some(
                "Unable to complete saved object migrations for the [.kibana] index: x".into(),
            ),
            detail: "Kibana's saved-object migration failed".into(),
        };
        let body = serde_json::to_value(Outgoing::from(UpgradeFailed::new("kb1", &d))).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "event": "rollback_recommended", "host": "kb1", "kind": "migration_failed",
                "from_version": "8.14.3", "to_version": "8.15.0", "since_ms": 1_700_000_000_000i64,
                "first_error": "Unable to complete saved object migrations for the [.kibana] index: x",
                "detail": "Kibana's saved-object migration failed", "sent_by": "kb1"
            })
        );
        // An operation's event serializes as before (untagged).
        let m = MachineIdentity::default();
        let a = takeover(&requested(), "a", &m, "t1");
        let n = announcements(&a, "a", 0).0.remove(0);
        let v = serde_json::to_value(Outgoing::from(n.clone())).unwrap();
        assert_eq!(v, serde_json::to_value(n).unwrap());
    }

    #[test]
    fn the_leader_after_a_resume_announces_the_resume() {
        let m = MachineIdentity::default();
        let a = takeover(&requested(), "a", &m, "t1");
        let mut failed = a.clone();
        for p in [
            Phase::Prefetching,
            Phase::Stopping,
            Phase::Barrier,
            Phase::SafetySnapshot,
            Phase::Restoring,
            Phase::Failed,
        ] {
            failed = transition(&failed, p, Mover::Leader, "x", "t").unwrap();
        }
        let resumed = crate::fleet::resume(&failed, "ops@kb1", "t8", false).unwrap();
        let c = takeover(&resumed, "c", &m, "t9");
        let (n, _) = announcements(&c, "c", 0);
        assert_eq!(
            kinds(&n),
            [
                (EventKind::Resumed, c.history.len() - 2, Phase::Barrier),
                (
                    EventKind::LeaderChanged,
                    c.history.len() - 1,
                    Phase::Barrier
                )
            ]
        );
    }
}
