//! The coordination protocol as a pure, sans-I/O state machine.
//!
//! Nothing in here does I/O, reads a clock or spawns a task: time, documents and results come in
//! as values, decisions go out as values. The daemon loop and the simulator drive the same code.
//!
//! * [`doc`] — the documents stored in Elasticsearch, phases and the transition table;
//! * [`lease`] — the lease rules (renew, expiry by observation, deposition, takeover);
//! * [`agent`] — what a host does for the current phase (pure);
//! * [`leader`] — what the lease holder does for the current phase (pure);
//! * [`node`] — one agent's state and [`step`], gluing the above with the in-flight bookkeeping;
//! * [`status`] — helpers for the trigger and operator commands.
//!
//! # Driving it
//!
//! ```no_run
//! use kibana_rollback::fleet::*;
//! # fn read_op() -> OpRead { OpRead::Missing }
//! # fn read_hosts() -> Vec<HostDoc> { vec![] }
//! # fn facts() -> HostFacts { HostFacts { unit: UnitState::Active, installed_version: None, held: false, install_history: None, read_at: std::time::Duration::ZERO, client_addresses: vec![], readiness: None, kibana_started: None, detection: None } }
//! # fn boottime() -> std::time::Duration { std::time::Duration::ZERO }
//! # fn execute(_: Action) {}
//! # fn collect_results() -> Vec<Event> { vec![] }
//! let mut node = NodeState::new("host-a", FleetConfig::default(), /* local progress file */ None);
//! loop {
//!     let events = collect_results();          // results of actions finished since last round
//!     let input = Inputs { now: boottime(), wall: "2026-01-01T00:00:00Z".into(),
//!                          op: read_op(), hosts: read_hosts(), every_host: true,
//!                          own_version: None, facts: facts(), events,
//!                          claims: None /* read at most once a second */,
//!                          ping: None /* the ping document's version, read with the op */ };
//!     for action in step(&mut node, input) {
//!         execute(action);                      // spawn; feed its result back as an Event
//!     }
//!     // sleep ~1 s or until a result arrives
//! #   break;
//! }
//! ```
//!
//! # Decisions where DESIGN.md was silent (and why)
//!
//! * **Which acks count.** An ack counts when it names this operation and this phase's step and
//!   its epoch is at least `phase_epoch`, the epoch at which the current phase was entered
//!   ([`doc::Ack::answers`]). A lease takeover does not change `phase_epoch`: the steps are
//!   idempotent and their effects persist, and requiring fresh acks after every takeover would
//!   let one dead host block every new leader. `start --resume` bumps both, so a resumed phase
//!   is redone by every host.
//! * **Barrier evidence.** `barrier`, `safety_snapshot` and `restoring` have no host step of
//!   their own: the `stop_unit` ack plus the host document reporting the unit stopped is the
//!   evidence, re-checked before the restore is recorded and again before it is issued. From
//!   `barrier` to `reinstalling` an agent stops its unit again if anything started it, and
//!   retries a failed stop (stopping is always safe).
//! * **The restore is write-ahead.** The leader CAS-writes `restore {epoch, issued}` (a renewal),
//!   then issues `Restore{epoch, deadline}` at most once per epoch while that renewal is younger
//!   than lease/3; the adapter must not send it after `deadline` and answers `RestoreNotSent`,
//!   and the leader steps down. A successor finding an unfinished record of an older epoch
//!   inspects Elasticsearch: running → wait; completed from this snapshot → record and go on;
//!   certainly not started → issue its own (every unit is still stopped, restoring the same
//!   snapshot again yields the same state, the safety snapshot is already taken); cannot tell →
//!   `failed` with "restore outcome unknown after leader change; check snapshot ... and re-run
//!   with --resume". See [`leader`].
//! * **The restore point is the record, not the phase name.** `restoring -> aborting` is legal
//!   only while no restore is recorded ([`doc::check_guard`]); a stop that fails after the
//!   barrier would otherwise wedge the operation or fail it although nothing had changed.
//! * **Preflight aborts directly** (`preflight -> aborted`): nothing was touched anywhere.
//! * **Aborting can fail.** `aborted` promises every unit is back; if a unit cannot be brought
//!   back the operation ends `failed` naming it, the abort's reason kept in the cause.
//!   `abort_restart` makes sure the unit runs on the unchanged package and does not restart a
//!   unit that is already active.
//! * **Timeouts.** `barrier_timeout` (from entering the barrier, on the leader's clock) aborts;
//!   an optional `phase_timeout` for host phases aborts before the restore point and fails
//!   after it, naming the silent hosts; `None` waits, visibly, for ever. A new leader restarts
//!   these timers (it cannot know how long its predecessor waited; that only lengthens waits).
//! * **Leadership.** A fresh operation has no leader; any expected host takes it at once by CAS
//!   (epoch 1). A restarted former leader is an ordinary candidate and waits a whole lease.
//!   Any successful CAS by the leader renews, counted from its *send* time. Hosts not in
//!   `expected_hosts` never lead.
//! * **Endings.** `done` and `aborted` are archived (`history-<id>`, created, 409 = already
//!   there) and then the operation deleted by CAS: by the leader at once, by anyone after a
//!   lease without change. `failed` stays as the operation document: it is the lock that keeps
//!   a new `start` off a half-rolled-back fleet, `status` shows it, `start --resume` continues it.
//! * **Operator abort** is a CAS that sets `abort_requested` ([`request_abort`]); the leader
//!   honours it only before the restore point.
//! * **Clock.** `Inputs::now` must come from `CLOCK_BOOTTIME` (see [`lease`]).
//! * **Nothing outside the agent starts the unit** while it must stay stopped: `stop_unit`
//!   blocks starts (a persistent drop-in whose assertion fails every start, `host::hold`; a
//!   mask cannot replace 7.x's unit file in /etc) until `start_unit`/`abort_restart`. The leader's re-checks are defence in
//!   depth but cannot close the race with an outside start right before the restore.
//!
//! Adapters may run actions concurrently (a restore takes a while; the leader must keep
//! renewing meanwhile), except: `RecordProgress` must be durable before the `RunHostStep` that
//! follows it; `ClusterStep::Restore` must not be sent after its `deadline`.

pub mod agent;
pub(crate) mod bugs;
pub mod clients;
pub mod doc;
pub mod leader;
pub mod lease;
pub mod node;
pub mod policy;
pub mod recovery;
pub mod status;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use agent::{decide_host, HostDecision, HostFacts, HostStep, LocalProgress, ProgressState};
pub use doc::{
    format_of, history_doc_id, is_legal, transition, AbortRequest, Ack, CheckStatus, ClaimDoc,
    Detection, DetectionKind, DocError, DocVersion, Exclusion, HostDoc, HostFailure, InstallEvent,
    InstallHistory, LeaderInfo, MachineIdentity, Mover, OpError, OperationDoc, Phase, PhaseChange,
    Probe, Readiness, ReadinessCheck, RestorePoint, RestoreRecord, SafetySnapshot, SnapshotRef,
    Step, StepResult, UnitState, Versioned, FORMAT, OPERATION_DOC_ID, PING_DOC_ID, TRANSITIONS,
};
pub use leader::{
    claims_can_hold, ClusterOutcome, ClusterStep, RestoreInspection, RestoreReport, RestoreResult,
};
pub use lease::{HeldLease, LeaseConfig, LeaseObserver};
pub use node::{
    step, Action, Event, Inputs, NodeState, OpRead, RequestId, RevisionSeen, WriteResult,
};
pub use status::{
    describe_error, exclude_host, new_operation, outcome, request_abort, resume, running_message,
    waiting_for, withdraw, NewOperation, Outcome,
};

use std::time::Duration;

/// Protocol timing. Comes from the validated settings (`src/config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    pub lease: LeaseConfig,
    /// How long the barrier may wait for every unit to be confirmed stopped before aborting.
    pub barrier_timeout: Duration,
    /// How long a host phase may wait for acks: before the restore point it then aborts, after it
    /// fails naming the silent hosts. `None`: wait (visibly) for ever.
    pub phase_timeout: Option<Duration>,
    /// How often a negative or in-progress cluster check is repeated (Kibana clients, restore inspection).
    pub retry_every: Duration,
    /// How long a new leader keeps looking for a predecessor's restore before it concludes the
    /// restore never started: covers a request held up on its way (a proxy, a kernel buffer)
    /// after the predecessor's own deadline dropped its connection.
    pub restore_grace: Duration,
    /// Host document heartbeat period while an operation runs.
    pub heartbeat_every: Duration,
    /// ... and with none: liveness watchers ping ([`node::Inputs::ping`]) instead of waiting.
    pub idle_heartbeat_every: Duration,
    /// Written into the host document.
    pub agent_version: String,
    /// This agent's machine: it owns its host document and leads by it.
    pub machine: MachineIdentity,
    /// What the local configuration lets an operation ask of this host.
    pub policy: policy::LocalPolicy,
}

/// How often an agent reads the operation while one exists and it waits on something (its
/// step, an acknowledgement, the next phase, the leader's decision): it learns of it this soon.
pub const READ_ACTIVE: Duration = Duration::from_millis(100);
/// ... while this agent's own host step runs and it does not lead: nothing it reads can matter
/// before the step ends (whose end wakes it at once), except a ping or a dead leader, for which
/// a second is soon enough. Keeps N-1 agents installing at once from polling at 10/s each.
pub const READ_DURING_OWN_STEP: Duration = Duration::from_secs(1);
/// ... while the operation cannot be read (Elasticsearch failing).
pub const READ_UNREADABLE: Duration = Duration::from_secs(1);

/// How often an idle agent reads the operation (its watch): a new operation, or a ping, is
/// seen this soon, and the watch is the idle agent's whole cost bar a rare heartbeat. Shorter
/// when the heartbeat period (`coordination.heartbeat`) is.
pub fn idle_watch_every(heartbeat: Duration) -> Duration {
    Duration::from_secs(5).min(heartbeat)
}

impl FleetConfig {
    /// After how long without a heartbeat (on our clock) another machine's claim on our host id
    /// counts as gone: ten heartbeats, at least a lease.
    pub fn takeover_after(&self) -> Duration {
        (self.heartbeat_every * 10).max(self.lease.duration)
    }
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            lease: LeaseConfig {
                duration: Duration::from_secs(30),
                margin: Duration::from_secs(5),
            },
            barrier_timeout: Duration::from_secs(120),
            phase_timeout: Some(Duration::from_secs(900)),
            retry_every: Duration::from_secs(10),
            restore_grace: Duration::from_secs(30),
            heartbeat_every: Duration::from_secs(15),
            idle_heartbeat_every: Duration::from_secs(600),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            machine: MachineIdentity::default(),
            policy: policy::LocalPolicy::default(),
        }
    }
}
