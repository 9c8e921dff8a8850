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
//! # fn facts() -> HostFacts { HostFacts { unit: UnitState::Active, installed_version: None, held: false } }
//! # fn boottime() -> std::time::Duration { std::time::Duration::ZERO }
//! # fn execute(_: Action) {}
//! # fn collect_results() -> Vec<Event> { vec![] }
//! let mut node = NodeState::new("host-a", FleetConfig::default(), /* local progress file */ None);
//! loop {
//!     let events = collect_results();          // results of actions finished since last round
//!     let input = Inputs { now: boottime(), wall: "2026-01-01T00:00:00Z".into(),
//!                          op: read_op(), hosts: read_hosts(), facts: facts(), events };
//!     for action in step(&mut node, input) {
//!         execute(action);                      // spawn; feed its result back as an Event
//!     }
//!     // sleep ~1 s or until a result arrives
//! #   break;
//! }
//! ```
//!
//! Adapters may run actions concurrently (a restore takes a while; the leader must keep
//! renewing meanwhile), except: `RecordProgress` must be durable before the `RunHostStep` that
//! follows it; `ClusterStep::Restore` must not be sent after its `deadline`.

pub mod agent;
pub mod doc;
pub mod leader;
pub mod lease;
pub mod node;
pub mod status;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use agent::{decide_host, HostDecision, HostFacts, HostStep, LocalProgress, ProgressState};
pub use doc::{
    history_doc_id, is_legal, transition, AbortRequest, Ack, DocError, DocVersion, HostDoc, LeaderInfo, Mover, OpError, OperationDoc,
    Phase, PhaseChange, RestorePoint, RestoreRecord, SafetySnapshot, SnapshotRef, Step, StepResult, UnitState, Versioned,
    OPERATION_DOC_ID, TRANSITIONS,
};
pub use leader::{ClusterOutcome, ClusterStep, RestoreInspection, RestoreReport};
pub use lease::{HeldLease, LeaseConfig, LeaseObserver};
pub use node::{step, Action, Event, Inputs, NodeState, OpRead, RequestId, WriteResult};
pub use status::{new_operation, outcome, request_abort, resume, waiting_for, NewOperation, Outcome};

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
    /// Host document heartbeat period.
    pub heartbeat_every: Duration,
    /// Written into the host document.
    pub agent_version: String,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            lease: LeaseConfig { duration: Duration::from_secs(30), margin: Duration::from_secs(5) },
            barrier_timeout: Duration::from_secs(120),
            phase_timeout: Some(Duration::from_secs(900)),
            retry_every: Duration::from_secs(10),
            heartbeat_every: Duration::from_secs(15),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}
