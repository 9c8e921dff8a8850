//! Host-side decisions: what this host's agent does for the operation as it is now.
//!
//! [`decide_host`] is a pure function of the operation document, this host's last ack, the local
//! facts and the local progress record. Re-deciding with the same inputs gives the same answer,
//! which is what makes a crash harmless: after a restart the agent reads its progress record and
//! either reports the result it had already reached ([`HostDecision::Report`]) or re-runs the
//! same, idempotent step with `resumed = true` so the adapter can repair a half-done step
//! (e.g. `dpkg --configure -a`). It never picks a different step.
//!
//! Guards encoded here:
//! * in `barrier`, `safety_snapshot`, `restoring` and `reinstalling` the unit must stay stopped:
//!   if anything started it, the agent stops it again before anything else;
//! * invariant 3: `start_unit` is only run when the operation document records the restore as
//!   completed, whatever phase the document claims.

use super::doc::{Ack, OperationDoc, Phase, Readiness, Step, StepResult, UnitState};
use semver::Version;
use serde::{Deserialize, Serialize};

/// What the host adapters report about this host, read fresh for each decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub unit: UnitState,
    pub installed_version: Option<Version>,
    /// Package held / versionlocked.
    pub held: bool,
    /// Evidence of when each Kibana version was installed, published in the host document.
    pub install_history: Option<super::doc::InstallHistory>,
    /// When these facts were read (the same monotonic clock as `Inputs::now`): a probe is
    /// answered only with facts read after it was seen.
    pub read_at: std::time::Duration,
    /// The addresses this host's Kibana connects to Elasticsearch from.
    pub client_addresses: Vec<String>,
    /// The host's latest readiness report (published in its host document as it is).
    pub readiness: Option<Readiness>,
    /// When the unit's main process last started (systemd's `ExecMainStartTimestampMonotonic`,
    /// opaque): a different value later means Kibana ran in between.
    pub kibana_started: Option<u64>,
    /// A failed upgrade seen on this host (published in its host document as it is).
    pub detection: Option<super::doc::Detection>,
}

/// A host step with its parameters, for the host adapters to run. Every one is idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum HostStep {
    /// Check this host is ready for `version`: its readiness checks, fresh (the package lists
    /// refreshed first; `version` installable from the configured repositories among them).
    CheckAvailable { version: Version },
    /// Download `version` without installing it.
    Prefetch { version: Version },
    /// Stop the kibana unit and wait until it is inactive, then block every other start until
    /// `start_unit` or `abort_restart` (the agent's hold survives a reboot; see `host::hold`).
    StopUnit,
    /// Install exactly `version` (downgrade allowed), hold it, verify.
    Reinstall { version: Version },
    /// Unblock and start the unit; wait until active and Kibana reports `available` at `expect_version`.
    StartUnit { expect_version: Version },
    /// Unblock and make sure the unit runs on the installed (unchanged) package; start it if it is
    /// not active, leave it alone if it is.
    AbortRestart,
}

impl HostStep {
    pub fn kind(&self) -> Step {
        match self {
            HostStep::CheckAvailable { .. } => Step::CheckAvailable,
            HostStep::Prefetch { .. } => Step::Prefetch,
            HostStep::StopUnit => Step::StopUnit,
            HostStep::Reinstall { .. } => Step::Reinstall,
            HostStep::StartUnit { .. } => Step::StartUnit,
            HostStep::AbortRestart => Step::AbortRestart,
        }
    }

    /// The parameterised step for `kind` in operation `op`.
    pub fn for_op(kind: Step, op: &OperationDoc) -> HostStep {
        let v = op.target_version.clone();
        match kind {
            Step::CheckAvailable => HostStep::CheckAvailable { version: v },
            Step::Prefetch => HostStep::Prefetch { version: v },
            Step::StopUnit => HostStep::StopUnit,
            Step::Reinstall => HostStep::Reinstall { version: v },
            Step::StartUnit => HostStep::StartUnit { expect_version: v },
            Step::AbortRestart => HostStep::AbortRestart,
        }
    }
}

/// Where the agent persists what it is doing, so a restart resumes the same step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalProgress {
    pub operation_id: String,
    pub epoch: u64,
    pub step: Step,
    pub state: ProgressState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ProgressState {
    Started,
    Finished { result: StepResult, detail: String },
}

impl LocalProgress {
    /// Whether this record is about `step` of `op` as it is now (same rule as acks).
    pub fn matches(&self, op: &OperationDoc, step: Step) -> bool {
        self.operation_id == op.id && self.step == step && self.epoch >= op.phase_epoch
    }
}

/// What the host should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostDecision {
    /// Nothing for this host (no operation, not expected, finished, or acked already).
    Idle,
    /// Run this step. `acks`: its result becomes this host's ack (false for a re-stop that only
    /// enforces "stay stopped" during `reinstalling`). `resumed`: a previous run was interrupted.
    Run {
        step: HostStep,
        acks: bool,
        resumed: bool,
    },
    /// The step had finished before a crash; write this ack without re-running it.
    Report(Ack),
    /// Blocked by a guard; the text says on what.
    Wait(String),
}

/// Decide this host's part. `ack` is the host's latest own ack (memory, else its host doc).
pub fn decide_host(
    op: Option<&OperationDoc>,
    me: &str,
    ack: Option<&Ack>,
    facts: &HostFacts,
    progress: Option<&LocalProgress>,
) -> HostDecision {
    decide_host_within(
        op,
        me,
        ack,
        facts,
        progress,
        &super::policy::LocalPolicy::default(),
    )
}

/// [`decide_host`] under this host's policy: an operation outside it gets no step at all.
pub fn decide_host_within(
    op: Option<&OperationDoc>,
    me: &str,
    ack: Option<&Ack>,
    facts: &HostFacts,
    progress: Option<&LocalProgress>,
    policy: &super::policy::LocalPolicy,
) -> HostDecision {
    let Some(op) = op else {
        return HostDecision::Idle;
    };
    if op.phase.is_terminal() {
        return HostDecision::Idle;
    }
    if let Err(why) = super::policy::check(op, policy) {
        return HostDecision::Wait(format!("{why}: taking no step"));
    }
    let stopped = facts.unit.is_stopped();
    // Excluded by the operator (a host given up for dead) but back: keep Kibana stopped while
    // the operation runs — the fleet may be restoring without it.
    if op.is_excluded(me) && !matches!(op.phase, Phase::Preflight | Phase::Prefetching) {
        return if stopped {
            HostDecision::Wait(format!(
                "excluded from operation {}: kept stopped until it ends",
                op.id
            ))
        } else {
            HostDecision::Run {
                step: HostStep::StopUnit,
                acks: false,
                resumed: false,
            }
        };
    }
    if !op.is_expected(me) {
        return HostDecision::Idle;
    }
    // Set aside after the restore point: no further step, and the unit stays stopped (it may
    // hold a Kibana of the newer version, which must not run against the restored state).
    if op.is_set_aside(me) {
        return if stopped {
            HostDecision::Wait(format!(
                "set aside in operation {}: kept stopped until `kibana-rollback start --resume`",
                op.id
            ))
        } else {
            HostDecision::Run {
                step: HostStep::StopUnit,
                acks: false,
                resumed: false,
            }
        };
    }
    let Some(step) = op.phase.ack_step() else {
        return HostDecision::Idle;
    };
    // Once the restore completed, a unit on the target version may run (a resumed operation's
    // healthy hosts keep serving through `reinstalling`); only a newer one must stay stopped.
    let on_target = facts.installed_version.as_ref() == Some(&op.target_version);
    let must_stay_stopped = op.phase.holds_stopped()
        && !(op.phase == Phase::Reinstalling && op.restore_completed() && on_target);
    // Enforcement first: a unit that must stay stopped and is not gets stopped again.
    if must_stay_stopped && !stopped {
        return HostDecision::Run {
            step: HostStep::StopUnit,
            acks: step == Step::StopUnit,
            resumed: false,
        };
    }
    match ack.filter(|a| a.answers(op, step)).map(|a| &a.result) {
        Some(StepResult::Ok) => {
            if step == Step::StopUnit && !stopped {
                return HostDecision::Run {
                    step: HostStep::StopUnit,
                    acks: true,
                    resumed: false,
                };
            }
            return HostDecision::Idle;
        }
        // While the unit must stay stopped, stopping again is always safe: retry.
        Some(StepResult::Failed { .. }) if step == Step::StopUnit && op.phase.holds_stopped() => {
            return HostDecision::Run {
                step: HostStep::StopUnit,
                acks: true,
                resumed: false,
            };
        }
        // Reported; the leader decides what a failure means. Not retried on our own.
        Some(StepResult::Failed { .. }) => return HostDecision::Idle,
        Some(StepResult::InProgress) | None => {}
    }
    let mut resumed = false;
    // The same step of this operation run at an earlier epoch that failed or was cut (a `start
    // --resume` redoes it at a new epoch): it may have left the package half-installed, so the
    // redo repairs first, as after a crash.
    if let Some(p) =
        progress.filter(|p| p.operation_id == op.id && p.step == step && !p.matches(op, step))
    {
        resumed = !matches!(
            p.state,
            ProgressState::Finished {
                result: StepResult::Ok,
                ..
            }
        );
    }
    if let Some(p) = progress.filter(|p| p.matches(op, step)) {
        match &p.state {
            ProgressState::Finished { result, detail } => {
                return HostDecision::Report(Ack {
                    operation_id: op.id.clone(),
                    epoch: p.epoch,
                    step,
                    result: result.clone(),
                    detail: detail.clone(),
                });
            }
            ProgressState::Started => resumed = true,
        }
    }
    if step == Step::StartUnit && !op.restore_completed() {
        return HostDecision::Wait(format!(
            "refusing to start kibana {}: the operation does not record the restore as completed",
            op.target_version
        ));
    }
    if op.phase == Phase::Reinstalling && !stopped && !on_target {
        // Unreachable through the hold above; kept as a second lock on the door.
        return HostDecision::Run {
            step: HostStep::StopUnit,
            acks: false,
            resumed: false,
        };
    }
    HostDecision::Run {
        step: HostStep::for_op(step, op),
        acks: true,
        resumed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::doc::tests::sample_op;
    use crate::fleet::doc::RestoreRecord;

    fn facts(unit: UnitState) -> HostFacts {
        HostFacts {
            unit,
            installed_version: Some(Version::new(8, 15, 0)),
            held: false,
            install_history: None,
            read_at: std::time::Duration::ZERO,
            client_addresses: vec![],
            readiness: None,
            kibana_started: None,
            detection: None,
        }
    }
    fn op_in(phase: Phase) -> OperationDoc {
        let mut op = sample_op();
        op.phase = phase;
        op.epoch = 2;
        op.phase_epoch = 2;
        if phase.restore_point() == crate::fleet::doc::RestorePoint::AtOrAfter
            && phase != Phase::Restoring
        {
            op.restore = Some(RestoreRecord {
                epoch: 2,
                issued: true,
                completed: true,
                superseded_epochs: vec![],
                detail: String::new(),
            });
        }
        op
    }
    fn ack(step: Step, epoch: u64, result: StepResult) -> Ack {
        Ack {
            operation_id: "op1".into(),
            epoch,
            step,
            result,
            detail: String::new(),
        }
    }
    fn run(step: HostStep) -> HostDecision {
        HostDecision::Run {
            step,
            acks: true,
            resumed: false,
        }
    }

    #[test]
    fn each_phase_asks_for_its_step() {
        let v = Version::new(8, 14, 3);
        let cases = [
            (
                Phase::Preflight,
                UnitState::Active,
                run(HostStep::CheckAvailable { version: v.clone() }),
            ),
            (
                Phase::Prefetching,
                UnitState::Active,
                run(HostStep::Prefetch { version: v.clone() }),
            ),
            (Phase::Stopping, UnitState::Active, run(HostStep::StopUnit)),
            (Phase::Barrier, UnitState::Inactive, run(HostStep::StopUnit)),
            (
                Phase::Reinstalling,
                UnitState::Inactive,
                run(HostStep::Reinstall { version: v.clone() }),
            ),
            (
                Phase::Starting,
                UnitState::Inactive,
                run(HostStep::StartUnit {
                    expect_version: v.clone(),
                }),
            ),
            (
                Phase::Aborting,
                UnitState::Inactive,
                run(HostStep::AbortRestart),
            ),
        ];
        for (phase, unit, want) in cases {
            assert_eq!(
                decide_host(Some(&op_in(phase)), "a", None, &facts(unit), None),
                want,
                "{phase}"
            );
        }
    }

    #[test]
    fn idle_without_operation_when_not_expected_or_finished() {
        let f = facts(UnitState::Active);
        assert_eq!(decide_host(None, "a", None, &f, None), HostDecision::Idle);
        assert_eq!(
            decide_host(Some(&op_in(Phase::Stopping)), "z", None, &f, None),
            HostDecision::Idle
        );
        for p in [Phase::Done, Phase::Aborted, Phase::Failed] {
            assert_eq!(
                decide_host(Some(&op_in(p)), "a", None, &f, None),
                HostDecision::Idle
            );
        }
    }

    #[test]
    fn acked_step_is_not_rerun_but_stale_or_foreign_acks_are_ignored() {
        let op = op_in(Phase::Prefetching);
        let f = facts(UnitState::Active);
        let ok = ack(Step::Prefetch, 2, StepResult::Ok);
        assert_eq!(
            decide_host(Some(&op), "a", Some(&ok), &f, None),
            HostDecision::Idle
        );
        let stale = ack(Step::Prefetch, 1, StepResult::Ok);
        assert!(matches!(
            decide_host(Some(&op), "a", Some(&stale), &f, None),
            HostDecision::Run { .. }
        ));
        let mut other = ok.clone();
        other.operation_id = "op0".into();
        assert!(matches!(
            decide_host(Some(&op), "a", Some(&other), &f, None),
            HostDecision::Run { .. }
        ));
        let failed = ack(
            Step::Prefetch,
            2,
            StepResult::Failed {
                cause: "404".into(),
            },
        );
        assert_eq!(
            decide_host(Some(&op), "a", Some(&failed), &f, None),
            HostDecision::Idle
        );
    }

    #[test]
    fn acks_survive_a_takeover() {
        let mut op = op_in(Phase::Stopping);
        op.epoch = 3; // taken over; phase_epoch still 2
        let ok = ack(Step::StopUnit, 2, StepResult::Ok);
        assert_eq!(
            decide_host(Some(&op), "a", Some(&ok), &facts(UnitState::Inactive), None),
            HostDecision::Idle
        );
    }

    #[test]
    fn a_unit_that_came_back_is_stopped_again_while_it_must_stay_stopped() {
        for phase in [
            Phase::Stopping,
            Phase::Barrier,
            Phase::SafetySnapshot,
            Phase::Restoring,
        ] {
            let op = op_in(phase);
            let ok = ack(Step::StopUnit, 2, StepResult::Ok);
            let d = decide_host(
                Some(&op),
                "a",
                Some(&ok),
                &facts(UnitState::Activating),
                None,
            );
            assert_eq!(d, run(HostStep::StopUnit), "{phase}");
        }
        let op = op_in(Phase::Reinstalling);
        let d = decide_host(Some(&op), "a", None, &facts(UnitState::Active), None);
        assert_eq!(
            d,
            HostDecision::Run {
                step: HostStep::StopUnit,
                acks: false,
                resumed: false
            }
        );
    }

    #[test]
    fn never_starts_target_version_before_restore_completed() {
        let mut op = op_in(Phase::Starting);
        op.restore.as_mut().unwrap().completed = false;
        let d = decide_host(Some(&op), "a", None, &facts(UnitState::Inactive), None);
        assert!(
            matches!(d, HostDecision::Wait(ref w) if w.contains("restore")),
            "{d:?}"
        );
        op.restore = None;
        assert!(matches!(
            decide_host(Some(&op), "a", None, &facts(UnitState::Inactive), None),
            HostDecision::Wait(_)
        ));
    }

    #[test]
    fn redeciding_after_a_crash_gives_the_same_step() {
        let op = op_in(Phase::Reinstalling);
        let f = facts(UnitState::Inactive);
        let first = decide_host(Some(&op), "a", None, &f, None);
        let HostDecision::Run { step, .. } = &first else {
            panic!("{first:?}")
        };
        // Crash after the progress record said "started": same step again, marked resumed.
        let p = LocalProgress {
            operation_id: "op1".into(),
            epoch: 2,
            step: step.kind(),
            state: ProgressState::Started,
        };
        let again = decide_host(Some(&op), "a", None, &f, Some(&p));
        assert_eq!(
            again,
            HostDecision::Run {
                step: step.clone(),
                acks: true,
                resumed: true
            }
        );
        assert_eq!(
            decide_host(Some(&op), "a", None, &f, Some(&p)),
            again,
            "deterministic"
        );
        // Crash after it finished but before the ack was written: report, do not re-run.
        let done = LocalProgress {
            state: ProgressState::Finished {
                result: StepResult::Ok,
                detail: "8.14.3 held".into(),
            },
            ..p.clone()
        };
        let d = decide_host(Some(&op), "a", None, &f, Some(&done));
        assert_eq!(
            d,
            HostDecision::Report(Ack {
                operation_id: "op1".into(),
                epoch: 2,
                step: Step::Reinstall,
                result: StepResult::Ok,
                detail: "8.14.3 held".into()
            })
        );
        // A record for another step or operation is not used.
        let other = LocalProgress {
            step: Step::Prefetch,
            ..done.clone()
        };
        assert_eq!(decide_host(Some(&op), "a", None, &f, Some(&other)), first);
        // An ack still "in progress" (written before the crash) re-runs the same step.
        let inprog = ack(Step::Reinstall, 2, StepResult::InProgress);
        assert_eq!(
            decide_host(Some(&op), "a", Some(&inprog), &f, Some(&p)),
            again
        );
    }

    #[test]
    fn redoing_a_step_that_failed_at_an_earlier_epoch_repairs_first() {
        // `start --resume`: the phase runs again at a new epoch; this host's last run of the
        // step failed (dpkg may have left the package unpacked, not configured).
        let mut op = op_in(Phase::Reinstalling);
        op.epoch = 3;
        op.phase_epoch = 3;
        let f = facts(UnitState::Inactive);
        let failed = LocalProgress {
            operation_id: op.id.clone(),
            epoch: 2,
            step: Step::Reinstall,
            state: ProgressState::Finished {
                result: StepResult::Failed {
                    cause: "dpkg: error: error executing hook".into(),
                },
                detail: String::new(),
            },
        };
        let HostDecision::Run { resumed, .. } =
            decide_host(Some(&op), "a", None, &f, Some(&failed))
        else {
            panic!("the step runs again")
        };
        assert!(resumed, "the redo repairs first");
        // One that succeeded at the earlier epoch (redone because another host failed): no repair.
        let ok = LocalProgress {
            state: ProgressState::Finished {
                result: StepResult::Ok,
                detail: String::new(),
            },
            ..failed.clone()
        };
        assert!(matches!(
            decide_host(Some(&op), "a", None, &f, Some(&ok)),
            HostDecision::Run { resumed: false, .. }
        ));
        // Another operation's record: no repair.
        let other = LocalProgress {
            operation_id: "another".into(),
            ..failed
        };
        assert!(matches!(
            decide_host(Some(&op), "a", None, &f, Some(&other)),
            HostDecision::Run { resumed: false, .. }
        ));
    }
}
