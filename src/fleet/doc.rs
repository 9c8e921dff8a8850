//! The documents kept in the coordination index, as serde types, and the phase transition table.
//!
//! * `operation` — [`OperationDoc`]: the one active operation **and** its lease. Every change is a
//!   compare-and-set on the `(_seq_no, _primary_term)` the writer last observed ([`Versioned`]).
//! * `host-<id>` — [`HostDoc`]: registration, heartbeat and the host's acknowledgement ([`Ack`]) of
//!   the current operation step. Only the host itself writes its document, so it is a plain index
//!   write, not a CAS.
//! * `history-<id>` — an [`OperationDoc`] archived once the operation is `done` or `aborted`.
//!
//! Phases only move along [`TRANSITIONS`]; [`transition`] refuses anything else with an error.
//! Wall-clock strings (`requested_at`, `PhaseChange::at`) are informational: nothing in the
//! protocol compares them.

use semver::Version;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The format of the documents this build writes. An agent that reads a newer one (written by a
/// newer kibana-rollback during the tool's own upgrade) refuses to act on it rather than misread
/// it; documents written before formats were numbered are format 1.
pub const FORMAT: u32 = 2;

fn format_v1() -> u32 {
    1
}

/// The `format` of a stored document (1 when absent).
pub fn format_of(source: &serde_json::Value) -> u32 {
    source["format"]
        .as_u64()
        .map(|f| f.min(u32::MAX as u64) as u32)
        .unwrap_or(1)
}

/// `_seq_no` and `_primary_term` of a document as last observed; the CAS precondition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DocVersion {
    pub seq_no: u64,
    pub primary_term: u64,
}

impl DocVersion {
    /// Whether `self` is a later version of the same document than `other`. `_seq_no` grows
    /// across primary terms on a shard, so it orders versions on its own; the term breaks ties.
    pub fn is_newer_than(&self, other: &DocVersion) -> bool {
        (self.seq_no, self.primary_term) > (other.seq_no, other.primary_term)
    }
}

/// A document together with the version at which it was read (or written).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versioned<T> {
    pub seq_no: u64,
    pub primary_term: u64,
    pub doc: T,
}

impl<T> Versioned<T> {
    pub fn new(version: DocVersion, doc: T) -> Self {
        Versioned {
            seq_no: version.seq_no,
            primary_term: version.primary_term,
            doc,
        }
    }
    pub fn version(&self) -> DocVersion {
        DocVersion {
            seq_no: self.seq_no,
            primary_term: self.primary_term,
        }
    }
}

/// Phases of an operation. Serialised snake_case (`safety_snapshot`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Preflight,
    Prefetching,
    Stopping,
    Barrier,
    SafetySnapshot,
    Restoring,
    Reinstalling,
    Starting,
    Aborting,
    Done,
    Aborted,
    Failed,
}

/// Where a phase lies relative to the restore point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestorePoint {
    /// Nothing in Elasticsearch has been changed; a failure aborts safely.
    Before,
    /// The restore may have been issued; a failure ends `failed`, never a silent abort.
    AtOrAfter,
    /// `failed` can be reached from either side.
    Either,
}

impl Phase {
    pub const ALL: [Phase; 12] = [
        Phase::Preflight,
        Phase::Prefetching,
        Phase::Stopping,
        Phase::Barrier,
        Phase::SafetySnapshot,
        Phase::Restoring,
        Phase::Reinstalling,
        Phase::Starting,
        Phase::Aborting,
        Phase::Done,
        Phase::Aborted,
        Phase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Preflight => "preflight",
            Phase::Prefetching => "prefetching",
            Phase::Stopping => "stopping",
            Phase::Barrier => "barrier",
            Phase::SafetySnapshot => "safety_snapshot",
            Phase::Restoring => "restoring",
            Phase::Reinstalling => "reinstalling",
            Phase::Starting => "starting",
            Phase::Aborting => "aborting",
            Phase::Done => "done",
            Phase::Aborted => "aborted",
            Phase::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Done | Phase::Aborted | Phase::Failed)
    }

    /// The phases whose steps touch the kibana feature state (the safety snapshot, the
    /// restore), which a claim on an expected host id holds.
    pub fn is_restore_side(self) -> bool {
        matches!(
            self,
            Phase::Barrier | Phase::SafetySnapshot | Phase::Restoring
        )
    }

    pub fn restore_point(self) -> RestorePoint {
        match self {
            Phase::Preflight
            | Phase::Prefetching
            | Phase::Stopping
            | Phase::Barrier
            | Phase::SafetySnapshot
            | Phase::Aborting
            | Phase::Aborted => RestorePoint::Before,
            Phase::Restoring | Phase::Reinstalling | Phase::Starting | Phase::Done => {
                RestorePoint::AtOrAfter
            }
            Phase::Failed => RestorePoint::Either,
        }
    }

    pub fn is_before_restore_point(self) -> bool {
        self.restore_point() == RestorePoint::Before
    }

    /// The step every expected host performs and acknowledges in this phase.
    /// `barrier`, `safety_snapshot` and `restoring` have none of their own: hosts hold their unit
    /// stopped and their `stop_unit` acknowledgement stays the evidence (see [`Phase::holds_stopped`]).
    pub fn host_step(self) -> Option<Step> {
        match self {
            Phase::Preflight => Some(Step::CheckAvailable),
            Phase::Prefetching => Some(Step::Prefetch),
            Phase::Stopping => Some(Step::StopUnit),
            Phase::Reinstalling => Some(Step::Reinstall),
            Phase::Starting => Some(Step::StartUnit),
            Phase::Aborting => Some(Step::AbortRestart),
            _ => None,
        }
    }

    /// The step whose acknowledgement this phase looks at: its own host step, or `stop_unit` in
    /// the phases between the stop and the restore (the stop ack is the barrier's evidence).
    pub fn ack_step(self) -> Option<Step> {
        match self {
            Phase::Barrier | Phase::SafetySnapshot | Phase::Restoring => Some(Step::StopUnit),
            p => p.host_step(),
        }
    }

    /// Phases in which every expected unit must stay stopped (the agent stops it again if
    /// anything started it).
    pub fn holds_stopped(self) -> bool {
        matches!(
            self,
            Phase::Barrier | Phase::SafetySnapshot | Phase::Restoring | Phase::Reinstalling
        )
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who may perform a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mover {
    /// The lease holder, in the daemon.
    Leader,
    /// An operator command (`start --resume`, `abort` before any agent acted); never the daemon.
    Operator,
}

/// One row of the transition table: `to` may be entered from any of `from`, by `by`.
#[derive(Debug, Clone, Copy)]
pub struct Transition {
    pub to: Phase,
    pub from: &'static [Phase],
    pub by: Mover,
}

use Phase::*;

/// The whole transition table. Anything not listed is refused by [`transition`].
pub const TRANSITIONS: &[Transition] = &[
    Transition {
        to: Prefetching,
        from: &[Preflight],
        by: Mover::Leader,
    },
    Transition {
        to: Stopping,
        from: &[Prefetching],
        by: Mover::Leader,
    },
    Transition {
        to: Barrier,
        from: &[Stopping],
        by: Mover::Leader,
    },
    // Back from `restoring` (before any restore is recorded) when a unit ran since the safety
    // snapshot was taken: a new one first.
    Transition {
        to: SafetySnapshot,
        from: &[Barrier, Restoring],
        by: Mover::Leader,
    },
    // Straight from the barrier only when the operator disabled the safety snapshot explicitly.
    Transition {
        to: Restoring,
        from: &[Barrier, SafetySnapshot],
        by: Mover::Leader,
    },
    Transition {
        to: Reinstalling,
        from: &[Restoring],
        by: Mover::Leader,
    },
    Transition {
        to: Starting,
        from: &[Reinstalling],
        by: Mover::Leader,
    },
    Transition {
        to: Done,
        from: &[Starting],
        by: Mover::Leader,
    },
    // Preflight changed nothing anywhere, so it ends `aborted` directly.
    // From `restoring` only while no restore has been recorded (the leader checks): the restore
    // point is the write-ahead restore record, not the phase name.
    Transition {
        to: Aborting,
        from: &[Prefetching, Stopping, Barrier, SafetySnapshot, Restoring],
        by: Mover::Leader,
    },
    Transition {
        to: Aborted,
        from: &[Preflight, Aborting],
        by: Mover::Leader,
    },
    // `aborting` fails when a unit cannot be brought back: `aborted` promises every unit is back.
    // A resumed operation whose earlier restore may have run fails from the barrier or the
    // safety snapshot too: it cannot abort.
    Transition {
        to: Failed,
        from: &[
            Barrier,
            SafetySnapshot,
            Restoring,
            Reinstalling,
            Starting,
            Aborting,
        ],
        by: Mover::Leader,
    },
    // `start --resume`: re-enter the phase a failed operation failed in. A restore that never
    // completed is resumed from the barrier: fresh evidence and a new safety snapshot first.
    Transition {
        to: Barrier,
        from: &[Failed],
        by: Mover::Operator,
    },
    Transition {
        to: Restoring,
        from: &[Failed],
        by: Mover::Operator,
    },
    Transition {
        to: Reinstalling,
        from: &[Failed],
        by: Mover::Operator,
    },
    Transition {
        to: Starting,
        from: &[Failed],
        by: Mover::Operator,
    },
    Transition {
        to: Aborting,
        from: &[Failed],
        by: Mover::Operator,
    },
    // `abort` of an operation no agent ever picked up: nothing happened, so the operator may end
    // it (see `status::withdraw`).
    Transition {
        to: Aborted,
        from: &[Preflight],
        by: Mover::Operator,
    },
];

/// Whether `from -> to` is in the table for `by`.
pub fn is_legal(from: Phase, to: Phase, by: Mover) -> bool {
    TRANSITIONS
        .iter()
        .any(|t| t.to == to && t.by == by && t.from.contains(&from))
}

/// Errors of the pure document helpers. Never a panic: a refused transition is a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    #[error("illegal phase transition {from} -> {to}")]
    IllegalTransition { from: Phase, to: Phase },
    #[error("invalid operation: {0}")]
    Invalid(String),
}

/// A snapshot reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRef {
    pub repository: String,
    pub name: String,
    pub uuid: String,
}

/// The safety snapshot of the current kibana feature state, taken just before the restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetySnapshot {
    /// `false` only when the operator turned it off explicitly.
    pub enabled: bool,
    /// `kibana-rollback-pre-<id>` unless configured otherwise; `None` when disabled.
    pub name: Option<String>,
    /// Uuid of the snapshot once taken.
    #[serde(default)]
    pub taken_uuid: Option<String>,
    /// Safety snapshots taken by earlier runs of this operation (before a `--resume`), or found
    /// stale before the restore.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<String>,
    /// Each expected host's [`HostDoc::kibana_started`] as confirmed by the barrier, written
    /// before the snapshot is taken: a host whose value differs right before the restore ran
    /// Kibana since (someone removed the start hold), so what it wrote is not in the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_before: Option<BTreeMap<String, Option<u64>>>,
}

/// Which machine an agent runs on: `/etc/machine-id` plus an instance id the agent keeps in its
/// state directory. Two machines that claim one host id (a cloned VM, a reused hostname) differ
/// here, so neither can answer or lead for the other.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MachineIdentity {
    pub machine_id: String,
    pub instance: String,
}

impl fmt::Display for MachineIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "machine {} (instance {})",
            self.machine_id, self.instance
        )
    }
}

/// The current lease holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    pub host_id: String,
    /// The machine that holds the lease; `None` in documents from before identities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineIdentity>,
    /// Bumped by every renewal; its only job is to change the document (and so its `_seq_no`).
    pub renewals: u64,
}

/// One entry of the operation's history. `from == to` records a lease takeover or a resume note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseChange {
    pub from: Phase,
    pub to: Phase,
    pub epoch: u64,
    pub reason: String,
    /// Wall clock of the writer, informational only.
    pub at: String,
}

/// Why an operation ended `aborted` or `failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpError {
    /// The host at fault, or `None` for the cluster side (Elasticsearch, snapshot, restore).
    pub host: Option<String>,
    pub cause: String,
}

/// The restore, recorded **before** it is issued (write-ahead), so that at most one restore is
/// issued per epoch and a successor knows one may have happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRecord {
    /// Epoch of the leader that recorded the intent and (maybe) issued it.
    pub epoch: u64,
    /// Always true once the record exists: the leader writes it immediately before issuing.
    /// Read it as "a restore may have been issued at `epoch`".
    pub issued: bool,
    /// The restore completed with 0 failed shards and the indices healthy.
    pub completed: bool,
    /// Earlier epochs whose restore outcome was inspected and found not started.
    #[serde(default)]
    pub superseded_epochs: Vec<u64>,
    #[serde(default)]
    pub detail: String,
}

/// A host the operator took out of a running operation, by whom, in which phase, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exclusion {
    pub host: String,
    pub by: String,
    pub phase: Phase,
    pub reason: String,
}

/// A host set aside after the restore point, with the step that failed and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFailure {
    pub host: String,
    pub step: Step,
    pub cause: String,
}

/// The leader asks every host to confirm its unit state afresh (`n` rises with every probe):
/// asked once all stop acks are in at the barrier, and again right before the restore. A host's
/// "stopped" counts only with `probe_answered >= n`, so a dead agent's last word never does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub n: u64,
    /// The phase and epoch it was asked in: a new phase or a new leader asks again.
    pub phase: Phase,
    pub epoch: u64,
}

/// An operator's abort request; honoured only before the restore point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortRequest {
    pub by: String,
    pub reason: String,
}

/// The `operation` document: the one active operation and its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationDoc {
    /// [`FORMAT`] of the writer.
    #[serde(default = "format_v1")]
    pub format: u32,
    pub id: String,
    /// Raised by every write (the adapter raises it before signing): with the fleet key, an
    /// older signed version replayed later is told apart by its lower revision.
    #[serde(default)]
    pub revision: u64,
    pub requested_by: String,
    /// Wall clock of the trigger, informational only.
    pub requested_at: String,
    pub target_version: Version,
    pub snapshot: SnapshotRef,
    /// Who accepted a snapshot whose timing against the upgrade could not be judged
    /// (`start --accept-unjudged-snapshot`), and why it could not; `None`: it was judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_accepted_by: Option<String>,
    pub safety_snapshot: SafetySnapshot,
    pub expected_hosts: Vec<String>,
    pub phase: Phase,
    /// Epoch at which the current phase was entered. Acks older than this do not count.
    pub phase_epoch: u64,
    /// Lease generation: 0 until the first leader acquires it; every takeover adds one.
    pub epoch: u64,
    pub leader: Option<LeaderInfo>,
    /// Barrier also asks Elasticsearch whether any Kibana client is still talking to it.
    #[serde(default)]
    pub barrier_client_check: bool,
    pub history: Vec<PhaseChange>,
    pub error: Option<OpError>,
    pub restore: Option<RestoreRecord>,
    /// Hosts set aside after the restore point because their reinstall or start failed: they
    /// take no further step and stay stopped, while every other host goes on and serves; the
    /// operation then ends `failed` naming them, and `start --resume` finishes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts_failed: Vec<HostFailure>,
    /// Hosts the operator excluded (`exclude-host`, a host gone for good) before the restore
    /// point: no longer expected. (After it, an excluded host is set aside in `hosts_failed`.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<Exclusion>,
    /// The leader's current request for fresh host evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Probe>,
    /// Kibanas the barrier waits for, as Elasticsearch reports them (for `status`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub barrier_clients: Vec<super::clients::LiveClient>,
    /// Member nodes the barrier waits for because they did not answer `_nodes/stats/http`
    /// (a Kibana connected to them cannot be seen), by name (for `status`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub barrier_silent_nodes: Vec<String>,
    #[serde(default)]
    pub abort_requested: Option<AbortRequest>,
    /// The one Kibana version the expected hosts ran: what `start --undo` returns the fleet to.
    /// `start` records what the hosts last published; the leader replaces it as the operation
    /// leaves preflight with what they reported with their acknowledgements (`None` when they
    /// differ). Informational to the protocol (nothing here reads it); absent from operations
    /// requested before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<Version>,
    /// The done operation this one undoes (`start --undo`), informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undoes: Option<String>,
    /// The hosts whose agents had recorded a failed upgrade when it was requested, each as
    /// `host: kind (from -> to)`: undoing this operation returns the fleet to that state, so
    /// `start --undo` warns. Informational.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_upgrade_on: Vec<String>,
}

impl OperationDoc {
    pub fn is_expected(&self, host_id: &str) -> bool {
        self.expected_hosts.iter().any(|h| h == host_id)
    }

    pub fn leader_id(&self) -> Option<&str> {
        self.leader.as_ref().map(|l| l.host_id.as_str())
    }

    pub fn restore_completed(&self) -> bool {
        self.restore.as_ref().is_some_and(|r| r.completed)
    }

    /// Set aside after the restore point (its reinstall or start failed): no further step.
    pub fn is_set_aside(&self, host_id: &str) -> bool {
        self.hosts_failed.iter().any(|f| f.host == host_id)
    }

    /// Excluded by the operator before the restore point.
    pub fn is_excluded(&self, host_id: &str) -> bool {
        self.excluded.iter().any(|x| x.host == host_id)
    }

    /// The ack a host must have written for the current phase to count, if the phase has a step.
    pub fn ack_counts(&self, ack: &Ack) -> bool {
        match self.phase.ack_step() {
            Some(step) => ack.answers(self, step) && ack.result == StepResult::Ok,
            None => false,
        }
    }
}

/// Refuses `restoring -> aborting` once a restore is recorded (it may have happened).
pub fn check_guard(op: &OperationDoc, to: Phase) -> Result<(), DocError> {
    // Once a restore may have been issued (even one a resumed operation goes past again from
    // the barrier), bringing the old units back would run them on whatever it left.
    if to == Phase::Aborting && op.restore.is_some() {
        return Err(DocError::IllegalTransition { from: op.phase, to });
    }
    if op.phase == Phase::Restoring && to == Phase::SafetySnapshot && op.restore.is_some() {
        return Err(DocError::IllegalTransition { from: op.phase, to });
    }
    Ok(())
}

/// Apply a phase change to `op`: checks the table, records history, sets `phase_epoch`.
/// `error` is stored when given (aborted/failed causes).
pub fn transition(
    op: &OperationDoc,
    to: Phase,
    by: Mover,
    reason: impl Into<String>,
    at: impl Into<String>,
) -> Result<OperationDoc, DocError> {
    if !is_legal(op.phase, to, by) {
        return Err(DocError::IllegalTransition { from: op.phase, to });
    }
    check_guard(op, to)?;
    let mut next = op.clone();
    next.history.push(PhaseChange {
        from: op.phase,
        to,
        epoch: op.epoch,
        reason: reason.into(),
        at: at.into(),
    });
    next.phase = to;
    next.phase_epoch = op.epoch;
    Ok(next)
}

/// State of the kibana systemd unit (`ActiveState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitState {
    Active,
    Activating,
    Deactivating,
    Reloading,
    Inactive,
    Failed,
    /// Not read (D-Bus unavailable) or the unit does not exist.
    Unknown,
}

impl UnitState {
    /// Not running and not about to run. `failed` counts: the process is gone.
    pub fn is_stopped(self) -> bool {
        matches!(self, UnitState::Inactive | UnitState::Failed)
    }
}

/// Kind of a host step, as recorded in acks. The parameters live in [`HostStep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    CheckAvailable,
    Prefetch,
    StopUnit,
    Reinstall,
    StartUnit,
    AbortRestart,
}

/// Result of a host step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StepResult {
    Ok,
    Failed { cause: String },
    InProgress,
}

/// A host's acknowledgement of an operation step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub operation_id: String,
    /// The operation epoch the host saw when it ran the step.
    pub epoch: u64,
    pub step: Step,
    pub result: StepResult,
    #[serde(default)]
    pub detail: String,
}

impl Ack {
    /// Whether this ack answers `step` of `op` as it is now: same operation, same step, and not
    /// older than the epoch at which the current phase was entered. Only a resumed phase has a
    /// newer `phase_epoch` than its step's acks, and then the step must be redone. A lease
    /// takeover does not change `phase_epoch`, so acks survive it (the steps are idempotent and
    /// their effect persists; a dead host must not block a new leader).
    pub fn answers(&self, op: &OperationDoc, step: Step) -> bool {
        self.operation_id == op.id && self.step == step && self.epoch >= op.phase_epoch
    }
}

/// The `host-<id>` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDoc {
    /// [`FORMAT`] of the writer.
    #[serde(default = "format_v1")]
    pub format: u32,
    pub host_id: String,
    pub agent_version: String,
    pub unit_state: UnitState,
    pub installed_version: Option<Version>,
    pub held: bool,
    /// Bumped by each heartbeat write; observers watch it change on their own clock.
    pub heartbeat: u64,
    pub ack: Option<Ack>,
    /// What this host can prove about when each Kibana version was installed (snapshot
    /// eligibility: a snapshot started after a newer Kibana was installed may hold its state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_history: Option<InstallHistory>,
    /// The machine that owns this host id; `None` in documents from before identities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineIdentity>,
    /// The highest [`Probe`] this host answered with facts read after it saw the probe: the
    /// leader's evidence that the unit state in this document is fresh.
    #[serde(default)]
    pub probe_answered: u64,
    /// The addresses this host's Kibana connects to Elasticsearch from, so the barrier can
    /// attribute the clients Elasticsearch reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_addresses: Vec<String>,
    /// What this host will need during a rollback, checked before anything stops (absent from
    /// agents that predate it, and until the first report is made).
    #[serde(default)]
    pub readiness: Option<Readiness>,
    /// [`super::agent::HostFacts::kibana_started`] as read with the rest of this document: the
    /// leader compares it with the value recorded before the safety snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kibana_started: Option<u64>,
    /// A failed upgrade this host's agent saw (`crate::detection`): `status` recommends a
    /// rollback. Absent from older agents' documents and while nothing failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection: Option<Detection>,
}

/// How an upgrade of a host's Kibana was seen to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectionKind {
    /// A saved-object migration error in Kibana's journal.
    MigrationFailed,
    /// The unit restarted automatically again and again.
    CrashLoop,
    /// The unit hit its start limit and stays failed.
    StartLimited,
    /// Kibana stayed not available, without migration progress, too long.
    NotAvailable,
}

impl DetectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DetectionKind::MigrationFailed => "migration_failed",
            DetectionKind::CrashLoop => "crash_loop",
            DetectionKind::StartLimited => "start_limited",
            DetectionKind::NotAvailable => "not_available",
        }
    }
}

/// A failed upgrade, as the host's agent recorded it (evidence for the admin, never acted on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detection {
    pub kind: DetectionKind,
    /// The version change it followed.
    pub from_version: Option<Version>,
    pub to_version: Version,
    /// When the agent saw the version change, on Elasticsearch's master clock (ms since the
    /// epoch); `None` when it could not measure that clock.
    #[serde(default)]
    pub since_ms: Option<i64>,
    /// The first, strongest error line of Kibana's journal since the change (cut to 400
    /// characters), if any.
    #[serde(default)]
    pub first_error: Option<String>,
    /// What the agent saw, in words.
    pub detail: String,
}

impl Detection {
    /// `8.14.3 -> 8.15.0` (`?` for an unknown earlier version).
    pub fn change(&self) -> String {
        let from = self
            .from_version
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "?".into());
        format!("{from} -> {}", self.to_version)
    }
}

/// `claim-<host id>-<instance>`: written by an agent that finds its host id owned by another
/// live machine. It does nothing else; `plan`, `start` and `status` name both machines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimDoc {
    pub host_id: String,
    pub machine: MachineIdentity,
    /// The machine that owns the host document, as the claimer saw it.
    pub owner: Option<MachineIdentity>,
    pub heartbeat: u64,
}

impl ClaimDoc {
    pub fn doc_id(host_id: &str, machine: &MachineIdentity) -> String {
        format!("claim-{host_id}-{}", machine.instance)
    }
}

/// A host's evidence of Kibana package installs, on Elasticsearch's clock (ms since the epoch,
/// as the master reports it): host clocks are not trusted, so each agent measures its offset to
/// the master's clock and converts, widening every moment by the measurement's uncertainty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallHistory {
    /// Installs seen, oldest first.
    pub installs: Vec<InstallEvent>,
    /// The oldest moment the package manager's logs still cover; an install before it is not
    /// seen (rotated away). `None`: no log at all.
    #[serde(default)]
    pub covers_since_ms: Option<i64>,
    /// ± this much on every converted moment (clock offset measurement and log resolution).
    pub uncertainty_ms: i64,
}

/// Version `version` became installed at a moment in `[earliest_ms, latest_ms]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallEvent {
    pub version: Version,
    pub earliest_ms: i64,
    pub latest_ms: i64,
    /// Where it was read: `dpkg.log`, `dnf.rpm.log`, `rpm`, or `agent` (the agent saw the
    /// previous version until `earliest_ms` and this one from `latest_ms`).
    pub source: String,
}

/// The verdict of one readiness check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Ok,
    /// Passes, with something the operator should know.
    Warn,
    Fail,
    /// Not run (not applicable, or nothing to check it against).
    Skipped,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Ok => "OK",
            CheckStatus::Warn => "WARN",
            CheckStatus::Fail => "FAIL",
            CheckStatus::Skipped => "SKIPPED",
        }
    }
}

/// One host check of a [`Readiness`] report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadinessCheck {
    /// Its id (`kibana_yml`, `repository`, ...).
    pub check: String,
    pub status: CheckStatus,
    pub detail: String,
    #[serde(default)]
    pub fix: Option<String>,
    /// The verdict depends on the target version (repository, plugins, status credentials):
    /// it does not carry over to a request for another version.
    #[serde(default)]
    pub for_target: bool,
}

impl ReadinessCheck {
    /// `check: detail; fix: fix`.
    pub fn one_line(&self) -> String {
        match &self.fix {
            Some(fix) => format!("{}: {}; fix: {fix}", self.check, self.detail),
            None => format!("{}: {}", self.check, self.detail),
        }
    }
}

/// A host's readiness report: each check of what the rollback will need on this host, made
/// while Kibana still runs (after a failed migration none answers, and a problem found after
/// the restore is too late).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// The target version the `for_target` checks were made for; `None`: no target configured
    /// on the host, those checks are skipped.
    pub target: Option<Version>,
    /// What made the agent check (agent start, a changed file, the period, the preflight phase).
    pub trigger: String,
    pub checks: Vec<ReadinessCheck>,
}

impl Readiness {
    pub fn failures(&self) -> impl Iterator<Item = &ReadinessCheck> {
        self.checks.iter().filter(|c| c.status == CheckStatus::Fail)
    }

    /// `N checks OK` or the failed checks' ids, plus warnings.
    pub fn summary(&self) -> String {
        let failed: Vec<&str> = self.failures().map(|c| c.check.as_str()).collect();
        let warned: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| c.status == CheckStatus::Warn)
            .map(|c| c.check.as_str())
            .collect();
        let mut s = if failed.is_empty() {
            format!(
                "{} readiness checks passed",
                self.checks
                    .iter()
                    .filter(|c| c.status != CheckStatus::Skipped)
                    .count()
            )
        } else {
            format!("readiness checks failed: {}", failed.join(", "))
        };
        if !warned.is_empty() {
            s.push_str(&format!(" (warnings: {})", warned.join(", ")));
        }
        s
    }
}

impl HostDoc {
    pub fn doc_id(host_id: &str) -> String {
        format!("host-{host_id}")
    }
}

/// The id of the archived copy of an operation.
pub fn history_doc_id(operation_id: &str) -> String {
    format!("history-{operation_id}")
}

/// The id of the active operation document.
pub const OPERATION_DOC_ID: &str = "operation";

/// `ping`: any write of it asks every agent to heartbeat now (see [`crate::fleet::Inputs::ping`]):
/// idle agents heartbeat rarely, so whoever watches them for liveness pings first. Only its
/// version counts, so it is not signed: a forged one makes agents write their own documents,
/// at most once a second.
pub const PING_DOC_ID: &str = "ping";

/// What a ping says of itself, for a reader of the index (never decided on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingDoc {
    pub format: u32,
    /// `plan@host`, `claim@host`: who asked.
    pub by: String,
    /// Wall clock of the asker; informational.
    pub at: String,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample_op() -> OperationDoc {
        OperationDoc {
            format: crate::fleet::doc::FORMAT,
            id: "op1".into(),
            revision: 0,
            requested_by: "alice".into(),
            requested_at: "2026-01-01T00:00:00Z".into(),
            target_version: Version::new(8, 14, 3),
            snapshot: SnapshotRef {
                repository: "repo".into(),
                name: "snap".into(),
                uuid: "u1".into(),
            },
            snapshot_accepted_by: None,
            safety_snapshot: SafetySnapshot {
                enabled: true,
                name: Some("kibana-rollback-pre-op1".into()),
                taken_uuid: None,
                earlier: vec![],
                starts_before: None,
            },
            expected_hosts: vec!["a".into(), "b".into(), "c".into()],
            phase: Phase::Preflight,
            phase_epoch: 0,
            epoch: 0,
            leader: None,
            barrier_client_check: false,
            history: vec![],
            error: None,
            restore: None,
            hosts_failed: vec![],
            excluded: vec![],
            probe: None,
            barrier_clients: vec![],
            barrier_silent_nodes: vec![],
            abort_requested: None,
            from_version: None,
            undoes: None,
            failed_upgrade_on: vec![],
        }
    }

    #[test]
    fn phases_serialise_snake_case() {
        for p in Phase::ALL {
            let s = serde_json::to_string(&p).unwrap();
            assert_eq!(s, format!("\"{}\"", p.as_str()));
            assert_eq!(serde_json::from_str::<Phase>(&s).unwrap(), p);
        }
    }

    #[test]
    fn operation_doc_round_trips_through_json() {
        let mut op = sample_op();
        op.restore = Some(RestoreRecord {
            epoch: 2,
            issued: true,
            completed: false,
            superseded_epochs: vec![],
            detail: String::new(),
        });
        op.leader = Some(LeaderInfo {
            host_id: "a".into(),
            machine: None,
            renewals: 7,
        });
        let v = serde_json::to_value(&op).unwrap();
        assert_eq!(v["phase"], "preflight");
        assert_eq!(v["target_version"], "8.14.3");
        assert_eq!(serde_json::from_value::<OperationDoc>(v).unwrap(), op);
    }

    #[test]
    fn step_result_is_tagged() {
        let v = serde_json::to_value(StepResult::Failed { cause: "x".into() }).unwrap();
        assert_eq!(v, serde_json::json!({"status": "failed", "cause": "x"}));
        let h = HostDoc {
            format: crate::fleet::doc::FORMAT,
            host_id: "a".into(),
            agent_version: "0.1.0".into(),
            unit_state: UnitState::Inactive,
            installed_version: Some(Version::new(8, 15, 0)),
            held: false,
            heartbeat: 3,
            readiness: Some(Readiness {
                target: Some(Version::new(8, 14, 3)),
                trigger: "agent start".into(),
                checks: vec![ReadinessCheck {
                    check: "kibana_yml".into(),
                    status: CheckStatus::Fail,
                    detail: "port 5601 vs 5611".into(),
                    fix: Some("set status_url".into()),
                    for_target: false,
                }],
            }),
            kibana_started: None,
            detection: None,
            ack: Some(Ack {
                operation_id: "op1".into(),
                epoch: 1,
                step: Step::StopUnit,
                result: StepResult::Ok,
                detail: String::new(),
            }),
            install_history: None,
            machine: None,
            probe_answered: 0,
            client_addresses: vec![],
        };
        let v = serde_json::to_value(&h).unwrap();
        assert_eq!(v["unit_state"], "inactive");
        assert_eq!(v["ack"]["step"], "stop_unit");
        assert_eq!(v["readiness"]["checks"][0]["status"], "fail");
        // a host document of an older agent has no readiness report
        let mut old = v.clone();
        old.as_object_mut().unwrap().remove("readiness");
        assert_eq!(
            serde_json::from_value::<HostDoc>(old).unwrap().readiness,
            None
        );
        assert_eq!(serde_json::from_value::<HostDoc>(v).unwrap(), h);
    }

    #[test]
    fn every_listed_transition_is_applied_and_every_other_refused() {
        for by in [Mover::Leader, Mover::Operator] {
            for from in Phase::ALL {
                for to in Phase::ALL {
                    let mut op = sample_op();
                    op.phase = from;
                    op.epoch = 4;
                    let r = transition(&op, to, by, "test", "t");
                    let listed = TRANSITIONS
                        .iter()
                        .any(|t| t.to == to && t.by == by && t.from.contains(&from));
                    match r {
                        Ok(next) => {
                            assert!(listed, "{from} -> {to} by {by:?} applied but not listed");
                            assert_eq!(next.phase, to);
                            assert_eq!(next.phase_epoch, 4);
                            assert_eq!(next.history.last().unwrap().from, from);
                        }
                        Err(e) => {
                            assert!(!listed, "{from} -> {to} by {by:?} listed but refused");
                            assert_eq!(e, DocError::IllegalTransition { from, to });
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn leader_never_leaves_a_terminal_phase_and_never_goes_back_before_restore() {
        for t in TRANSITIONS.iter().filter(|t| t.by == Mover::Leader) {
            for from in t.from {
                assert!(!from.is_terminal(), "{from} -> {}", t.to);
                if from.restore_point() == RestorePoint::AtOrAfter && *from != Phase::Restoring {
                    assert_ne!(
                        t.to.restore_point(),
                        RestorePoint::Before,
                        "{from} -> {} silently undoes a restore",
                        t.to
                    );
                }
            }
        }
    }

    #[test]
    fn acks_from_older_phase_epoch_or_other_operation_do_not_answer() {
        let mut op = sample_op();
        op.phase = Phase::Reinstalling;
        op.epoch = 5;
        op.phase_epoch = 4;
        let ack = |id: &str, epoch, step| Ack {
            operation_id: id.into(),
            epoch,
            step,
            result: StepResult::Ok,
            detail: String::new(),
        };
        assert!(op.ack_counts(&ack("op1", 4, Step::Reinstall)));
        assert!(op.ack_counts(&ack("op1", 5, Step::Reinstall)));
        assert!(
            !op.ack_counts(&ack("op1", 3, Step::Reinstall)),
            "stale epoch"
        );
        assert!(
            !op.ack_counts(&ack("op0", 5, Step::Reinstall)),
            "other operation"
        );
        assert!(
            !op.ack_counts(&ack("op1", 5, Step::StartUnit)),
            "other step"
        );
        let mut failed = ack("op1", 5, Step::Reinstall);
        failed.result = StepResult::Failed { cause: "x".into() };
        assert!(!op.ack_counts(&failed));
    }
}
