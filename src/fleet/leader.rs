//! Cluster-side decisions, taken only by the lease holder while its lease is valid.
//!
//! [`decide_leader`] is pure: the operation document, the host documents, what this leader
//! remembers of its cluster steps ([`LeaderMemory`]) and the time on its own clock in, one
//! [`LeaderDecision`] out. The node ([`super::node`]) turns decisions into actions and makes sure
//! only one write is in flight.
//!
//! The restore (the one step that cannot be fenced by Elasticsearch) is done write-ahead:
//! 1. every expected host has acked `stop_unit` for this operation and reports its unit stopped;
//! 2. the leader CAS-writes `restore = {epoch: E, issued: true, completed: false}` — this write
//!    is also a lease renewal;
//! 3. only while that renewal is fresh (younger than lease/3) is `Restore{epoch: E, deadline}`
//!    issued, at most once per epoch; the adapter must not send it after `deadline` (the end of
//!    the lease on this leader's clock) and reports [`ClusterOutcome::RestoreNotSent`] instead,
//!    whereupon this leader steps down.
//!
//! A successor that finds a restore recorded at an older epoch and not completed does **not**
//! re-issue blindly. It asks the adapter to inspect Elasticsearch ([`ClusterStep::InspectRestore`]:
//! active recoveries of the kibana feature indices, and whether their recovery source is this
//! snapshot). Running → wait and inspect again; completed from this snapshot and healthy →
//! record completion and go on; certainly not started → issue its own restore (safe: every unit is
//! still stopped, restoring the same snapshot twice gives the same state, and the safety snapshot
//! already holds what was there before); anything else → `failed` with a cause telling the
//! operator what to check and to re-run with `--resume`. Elasticsearch restores are not fenced,
//! so a restore request delayed in the network past the old leader's deadline could still land;
//! the deadline check right before sending keeps that window to the adapter's send path.

use super::clients::{judge as judge_clients, ClientStats, ClientsVerdict, Purpose};
use super::doc::Probe;
use super::doc::{
    transition, ClaimDoc, HostDoc, HostFailure, Mover, OpError, OperationDoc, Phase, PhaseChange,
    RestoreRecord, SnapshotRef, Step, StepResult,
};
use super::lease::{renew, HeldLease};
use super::status::waiting_for;
use super::FleetConfig;
use semver::Version;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// A cluster-wide step, run by the Elasticsearch adapter for the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum ClusterStep {
    /// ES reachable; every node compatible with `target_version`; snapshot SUCCESS with the
    /// `kibana` feature state; coordination index safe. Read-only.
    Preflight {
        target_version: Version,
        snapshot: SnapshotRef,
        expected_hosts: Vec<String>,
        /// The operator accepted a snapshot whose timing cannot be judged.
        accepted_unjudged: bool,
    },
    /// Every node's HTTP clients (`_nodes/stats/http`), read after every host answered probe
    /// `probe`; judged by [`super::clients::judge`]. Read-only.
    CheckKibanaClients { probe: u64 },
    /// Snapshot the kibana feature state as `name`. Idempotent: an existing SUCCESS snapshot of
    /// that name taken for this operation counts as done.
    SafetySnapshot { repository: String, name: String },
    /// Restore the kibana feature state. Must not be sent once the monotonic clock passed `deadline`.
    Restore {
        snapshot: SnapshotRef,
        epoch: u64,
        deadline: Duration,
    },
    /// What became of a restore recorded at `recorded_epoch`. Read-only. `after`: the safety
    /// snapshot taken right before it (its start bounds when this operation's restore can have
    /// begun: an older recovery from the same snapshot is another operation's).
    InspectRestore {
        snapshot: SnapshotRef,
        recorded_epoch: u64,
        after: Option<String>,
    },
    /// After every host started: the restored indices are healthy and Kibana reports the target. Read-only.
    VerifyFinal { target_version: Version },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterStepKind {
    Preflight,
    CheckKibanaClients,
    SafetySnapshot,
    Restore,
    InspectRestore,
    VerifyFinal,
}

impl ClusterStep {
    pub fn kind(&self) -> ClusterStepKind {
        match self {
            ClusterStep::Preflight { .. } => ClusterStepKind::Preflight,
            ClusterStep::CheckKibanaClients { .. } => ClusterStepKind::CheckKibanaClients,
            ClusterStep::SafetySnapshot { .. } => ClusterStepKind::SafetySnapshot,
            ClusterStep::Restore { .. } => ClusterStepKind::Restore,
            ClusterStep::InspectRestore { .. } => ClusterStepKind::InspectRestore,
            ClusterStep::VerifyFinal { .. } => ClusterStepKind::VerifyFinal,
        }
    }
}

/// The restore reply: `snapshot.shards.failed` and the health of the restored indices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    pub shards_failed: u32,
    pub healthy: bool,
    pub detail: String,
}

/// What [`ClusterStep::InspectRestore`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestoreInspection {
    /// A restore of the kibana feature indices is still running.
    InProgress,
    /// The kibana feature indices were recovered from this snapshot and are healthy.
    Completed,
    /// Certainly not restored from this snapshot and nothing running.
    NotStarted,
    /// Cannot tell.
    Unknown(String),
}

/// What became of the restore request, as its sender can tell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestoreResult {
    /// It ran; the report says how (failed shards, health).
    Completed(RestoreReport),
    /// Elasticsearch refused it before doing anything (validation, a missing snapshot).
    Refused(String),
    /// It started and failed.
    Failed(String),
    /// No answer that says either (a timeout, a cut connection): it may have started. Never
    /// assumed either way — the leader inspects.
    Unknown(String),
}

/// Result of a cluster step, fed back as [`super::node::Event::Cluster`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterOutcome {
    /// `Err` lists the problems, one per line.
    Preflight(Result<(), String>),
    /// The nodes' HTTP clients, read for probe `probe`.
    KibanaClients {
        probe: u64,
        stats: Result<ClientStats, String>,
    },
    /// `Ok(uuid)`.
    SafetySnapshot(Result<String, String>),
    Restore(RestoreResult),
    /// The adapter did not send the restore: the deadline had passed.
    RestoreNotSent,
    InspectRestore(RestoreInspection),
    VerifyFinal(Result<(), String>),
}

/// What a leader remembers while it leads one phase. Reset on every phase change and takeover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderMemory {
    pub phase: Phase,
    /// When this leader first saw the phase, on its own clock (phase and barrier timeouts).
    pub phase_since: Duration,
    pub preflight: Option<Result<(), String>>,
    /// The client reading for a probe, and when it came in.
    pub clients: Option<(u64, Result<ClientStats, String>, Duration)>,
    pub safety: Option<Result<String, String>>,
    pub restore: Option<RestoreResult>,
    pub inspect: Option<(RestoreInspection, Duration)>,
    pub verify: Option<Result<(), String>>,
    /// The epoch at which this leader issued a restore, if it did.
    pub restore_issued_epoch: Option<u64>,
    /// Cluster step in flight (request id, kind).
    pub cluster_inflight: Option<(u64, ClusterStepKind)>,
}

impl LeaderMemory {
    pub fn new(phase: Phase, now: Duration) -> Self {
        LeaderMemory {
            phase,
            phase_since: now,
            preflight: None,
            clients: None,
            safety: None,
            restore: None,
            inspect: None,
            verify: None,
            restore_issued_epoch: None,
            cluster_inflight: None,
        }
    }

    /// Store a result that answers the step in flight. Returns false for a stale one.
    pub fn record(&mut self, id: u64, outcome: ClusterOutcome, now: Duration) -> bool {
        match self.cluster_inflight {
            Some((want, _)) if want == id => self.cluster_inflight = None,
            _ => return false,
        }
        match outcome {
            ClusterOutcome::Preflight(r) => self.preflight = Some(r),
            ClusterOutcome::KibanaClients { probe, stats } => {
                self.clients = Some((probe, stats, now))
            }
            ClusterOutcome::SafetySnapshot(r) => self.safety = Some(r),
            ClusterOutcome::Restore(r) => self.restore = Some(r),
            ClusterOutcome::RestoreNotSent => {}
            ClusterOutcome::InspectRestore(r) => self.inspect = Some((r, now)),
            ClusterOutcome::VerifyFinal(r) => self.verify = Some(r),
        }
        true
    }
}

/// The leader's decision for this round. (One per round and short-lived: not worth boxing.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderDecision {
    /// CAS-write this document (phase change, restore record).
    Write {
        doc: OperationDoc,
        why: String,
    },
    /// Run this cluster step (unless one is in flight).
    Run(ClusterStep),
    /// Issue the restore at the current epoch now.
    IssueRestore,
    /// Renew the lease first (needed before the restore).
    Renew,
    /// Give up the lease (the outcome of our own restore is unknown and Elasticsearch shows no
    /// trace of it): a successor takes over at a new epoch, inspects, and restores at most once
    /// at its epoch.
    StepDown(String),
    Wait(String),
}

/// Whether every expected host answered the current probe of this phase and epoch with its
/// unit stopped; the next probe to ask when there is none yet.
enum Fresh {
    /// Ask (write) this probe.
    Ask(Probe),
    /// These hosts have not confirmed yet.
    Waiting(Vec<String>),
    /// Every host confirmed, for probe `n`.
    Confirmed(u64),
}

fn fresh_evidence(op: &OperationDoc, hosts: &[HostDoc]) -> Fresh {
    let current = op
        .probe
        .as_ref()
        .filter(|p| p.phase == op.phase && p.epoch == op.epoch);
    if super::bugs::on(super::bugs::Bug::StaleStopped) {
        return Fresh::Confirmed(op.probe.as_ref().map_or(0, |p| p.n));
    }
    let Some(p) = current else {
        return Fresh::Ask(Probe {
            n: op.probe.as_ref().map_or(1, |p| p.n + 1),
            phase: op.phase,
            epoch: op.epoch,
        });
    };
    let waiting: Vec<String> = op
        .expected_hosts
        .iter()
        .filter(|h| {
            !hosts
                .iter()
                .any(|d| &d.host_id == *h && d.probe_answered >= p.n && d.unit_state.is_stopped())
        })
        .cloned()
        .collect();
    if waiting.is_empty() {
        Fresh::Confirmed(p.n)
    } else {
        Fresh::Waiting(waiting)
    }
}

/// Whether a claim can hold `op` now: restore-side, with no restore recorded yet.
pub fn claims_can_hold(op: &OperationDoc) -> bool {
    op.phase.is_restore_side() && op.restore.is_none()
}

/// Why the claims stop the restore-side steps (the safety snapshot, the restore), if they do:
/// a claim naming an expected host id means a second machine runs an agent with that id, and
/// perhaps a Kibana nobody stops. The one check the leader and `status` share.
pub fn claims_blocking(op: &OperationDoc, claims: &[ClaimDoc]) -> Option<String> {
    let claimed: Vec<String> = claims
        .iter()
        .filter(|c| op.is_expected(&c.host_id))
        .map(|c| format!("{} (also claimed by {})", c.host_id, c.machine))
        .collect();
    (!claimed.is_empty()).then(|| {
        format!(
            "host id claimed by two machines: {}; give each machine its own coordination.host_id, then delete the claim-* document",
            claimed.join(", ")
        )
    })
}

/// What the evidence allows before a restore-side step (the safety snapshot, the restore):
/// `Ok(())` to go on, or the decision to make instead (ask a probe, wait, check clients, stop).
/// Called once per round: the large `Err` is not worth a box.
#[allow(clippy::result_large_err)]
fn evidence_gate(
    op: &OperationDoc,
    hosts: &[HostDoc],
    claims: &[ClaimDoc],
    mem: &LeaderMemory,
    now: Duration,
    cfg: &FleetConfig,
    wall: &str,
) -> Result<(), LeaderDecision> {
    // A second machine running an agent with an expected host id may run a Kibana nobody
    // stops: nothing restore-side while such a claim stands.
    if let Some(why) = claims_blocking(op, claims) {
        return Err(LeaderDecision::Wait(format!("{}: {why}", op.phase)));
    }
    let n = match fresh_evidence(op, hosts) {
        Fresh::Ask(probe) => {
            let mut doc = op.clone();
            let why = format!(
                "{}: asking every host to confirm its unit stopped (probe {})",
                op.phase, probe.n
            );
            doc.probe = Some(probe);
            return Err(LeaderDecision::Write { doc, why });
        }
        Fresh::Waiting(h) => {
            return Err(LeaderDecision::Wait(format!(
                "{}: waiting for {} to confirm kibana stopped afresh",
                op.phase,
                h.join(", ")
            )))
        }
        Fresh::Confirmed(n) => n,
    };
    if !op.barrier_client_check {
        return Ok(());
    }
    let check = || {
        Err(run_or_wait(
            mem,
            ClusterStep::CheckKibanaClients { probe: n },
            format!("{}: checking for Kibana clients", op.phase),
        ))
    };
    let Some((probe, stats, at)) = &mem.clients else {
        return check();
    };
    if *probe != n {
        return check();
    }
    let retry_due = now.saturating_sub(*at) >= cfg.retry_every;
    let stats = match stats {
        Ok(s) => s,
        Err(e) if retry_due => {
            let _ = e;
            return check();
        }
        Err(e) => {
            return Err(LeaderDecision::Wait(format!(
                "{}: reading Elasticsearch's clients failed ({e}); retrying",
                op.phase
            )))
        }
    };
    match judge_clients(stats, Purpose::Barrier, &op.expected_hosts, hosts) {
        ClientsVerdict::Clear(_) => {
            if op.barrier_clients.is_empty() && op.barrier_silent_nodes.is_empty() {
                Ok(())
            } else {
                let mut doc = op.clone();
                doc.barrier_clients.clear();
                doc.barrier_silent_nodes.clear();
                Err(LeaderDecision::Write {
                    doc,
                    why: format!("{}: no Kibana client left", op.phase),
                })
            }
        }
        ClientsVerdict::NodesSilent(nodes) => {
            if nodes != op.barrier_silent_nodes {
                let mut doc = op.clone();
                doc.barrier_silent_nodes = nodes;
                doc.barrier_clients.clear();
                return Err(LeaderDecision::Write {
                    doc,
                    why: format!("{}: waiting for nodes that do not answer", op.phase),
                });
            }
            if retry_due {
                return check();
            }
            Err(LeaderDecision::Wait(format!(
                "{}: node(s) {} do not answer _nodes/stats/http; waiting until they answer or leave the cluster",
                op.phase,
                nodes.join(", ")
            )))
        }
        ClientsVerdict::Waiting(live) => {
            if live != op.barrier_clients || !op.barrier_silent_nodes.is_empty() {
                let mut doc = op.clone();
                doc.barrier_clients = live;
                doc.barrier_silent_nodes.clear();
                return Err(LeaderDecision::Write {
                    doc,
                    why: format!("{}: waiting for Kibana clients to go", op.phase),
                });
            }
            if retry_due {
                return check();
            }
            Err(LeaderDecision::Wait(format!(
                "{}: Kibana clients still connected: {}",
                op.phase,
                live.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )))
        }
        ClientsVerdict::CannotVerify(why) => Err(end(
            op,
            failure_target(op),
            None,
            format!(
                "{}: cannot verify that no Kibana talks to Elasticsearch: {why}; fix that, or set \
                 coordination.barrier_client_check = false to rely on the agents' reports alone",
                op.phase
            ),
            wall,
        )),
    }
}

/// Each expected host's last Kibana start as its document reports it.
fn kibana_starts(op: &OperationDoc, hosts: &[HostDoc]) -> BTreeMap<String, Option<u64>> {
    op.expected_hosts
        .iter()
        .filter(|h| !op.is_set_aside(h))
        .map(|h| {
            let started = hosts
                .iter()
                .find(|d| &d.host_id == h)
                .and_then(|d| d.kibana_started);
            (h.clone(), started)
        })
        .collect()
}

/// The hosts whose Kibana started after the barrier confirmed every unit stopped for the safety
/// snapshot (empty when nothing was recorded: safety snapshot off, or an older document).
fn started_since_safety_snapshot(op: &OperationDoc, hosts: &[HostDoc]) -> Vec<String> {
    let Some(before) = op.safety_snapshot.starts_before.as_ref() else {
        return vec![];
    };
    kibana_starts(op, hosts)
        .into_iter()
        .filter(|(h, now)| before.get(h).is_some_and(|b| b != now))
        .map(|(h, _)| h)
        .collect()
}

/// Per-host summary of the acks for `step` in `op`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AckTally {
    pub ok: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub pending: Vec<String>,
}

/// Tally the expected hosts' acks of `step` that answer `op` (see [`super::doc::Ack::answers`]).
/// With `need_stopped`, an OK host whose doc does not report its unit stopped is pending. Hosts
/// set aside after the restore point ([`OperationDoc::hosts_failed`]) are not counted.
pub fn tally(op: &OperationDoc, hosts: &[HostDoc], step: Step, need_stopped: bool) -> AckTally {
    let mut t = AckTally::default();
    for h in op.expected_hosts.iter().filter(|h| !op.is_set_aside(h)) {
        let doc = hosts.iter().find(|d| &d.host_id == h);
        let ack = doc
            .and_then(|d| d.ack.as_ref())
            .filter(|a| a.answers(op, step));
        match ack.map(|a| &a.result) {
            Some(StepResult::Ok)
                if !need_stopped || doc.is_some_and(|d| d.unit_state.is_stopped()) =>
            {
                t.ok.push(h.clone())
            }
            Some(StepResult::Failed { cause }) => t.failed.push((h.clone(), cause.clone())),
            _ => t.pending.push(h.clone()),
        }
    }
    t
}

fn end(
    op: &OperationDoc,
    to: Phase,
    host: Option<String>,
    cause: String,
    wall: &str,
) -> LeaderDecision {
    match transition(op, to, Mover::Leader, cause.clone(), wall) {
        Ok(mut doc) => {
            // The error names what ended the operation; an abort's reason stays in the cause.
            let cause_text = match (&op.error, op.phase) {
                (Some(prev), Phase::Aborting) => {
                    format!("{cause} (while aborting after: {})", prev.cause)
                }
                _ => cause.clone(),
            };
            doc.error = Some(OpError {
                host,
                cause: cause_text,
            });
            LeaderDecision::Write {
                doc,
                why: format!("{} -> {to}: {cause}", op.phase),
            }
        }
        Err(e) => LeaderDecision::Wait(format!("internal: {e}")),
    }
}

fn next(op: &OperationDoc, to: Phase, reason: &str, wall: &str) -> LeaderDecision {
    match transition(op, to, Mover::Leader, reason, wall) {
        Ok(doc) => LeaderDecision::Write {
            doc,
            why: format!("{} -> {to}: {reason}", op.phase),
        },
        Err(e) => LeaderDecision::Wait(format!("internal: {e}")),
    }
}

/// The one Kibana version the hosts reported with their preflight acknowledgements (each read
/// as it acked, so an upgrade its agent had not yet published at `start` counts); `None` when
/// they differ. What `start --undo` returns to, recorded as the operation leaves preflight.
fn version_at_preflight(op: &OperationDoc, hosts: &[HostDoc]) -> Option<Version> {
    let mut versions = op
        .expected_hosts
        .iter()
        .filter(|h| !op.is_set_aside(h))
        .map(|h| {
            hosts
                .iter()
                .find(|d| &d.host_id == h)?
                .installed_version
                .clone()
        });
    let first = versions.next()??;
    versions
        .all(|v| v.as_ref() == Some(&first))
        .then_some(first)
}

/// Where a failure in `phase` leads: abort before the restore point, fail from it on.
/// Where a failure in the current phase leads: before the restore point the operation aborts,
/// unless a restore may already have been issued (a resumed operation), then it fails.
fn failure_target(op: &OperationDoc) -> Phase {
    match op.phase {
        Phase::Preflight => Phase::Aborted,
        Phase::Aborting => Phase::Failed,
        _ if op.restore.is_some() => Phase::Failed,
        p if p.is_before_restore_point() => Phase::Aborting,
        _ => Phase::Failed,
    }
}

fn run_or_wait(mem: &LeaderMemory, step: ClusterStep, what: String) -> LeaderDecision {
    if mem.cluster_inflight.is_some() {
        LeaderDecision::Wait(what)
    } else {
        LeaderDecision::Run(step)
    }
}

/// Decide what the leader does now. Call only while `lease` is valid and no write is in flight.
// Every input of the decision, explicitly: what the leader read and what it remembers.
#[allow(clippy::too_many_arguments)]
pub fn decide_leader(
    op: &OperationDoc,
    hosts: &[HostDoc],
    claims: &[ClaimDoc],
    mem: &LeaderMemory,
    lease: &HeldLease,
    now: Duration,
    cfg: &FleetConfig,
    wall: &str,
) -> LeaderDecision {
    let age = now.saturating_sub(mem.phase_since);
    // Outside this host's policy: still in preflight nothing was touched, so it ends here;
    // later the node steps down before asking (see `node::leader_side`).
    if let Err(why) = super::policy::check(op, &cfg.policy) {
        if op.phase == Phase::Preflight {
            return end(op, Phase::Aborted, None, format!("preflight: {why}"), wall);
        }
        return LeaderDecision::StepDown(why);
    }
    if let Some(req) = op.abort_requested.as_ref().filter(|_| op.restore.is_none()) {
        let cause = format!("aborted by {}: {}", req.by, req.reason);
        match op.phase {
            Phase::Preflight
            | Phase::Prefetching
            | Phase::Stopping
            | Phase::Barrier
            | Phase::SafetySnapshot => {
                return end(op, failure_target(op), None, cause, wall);
            }
            _ => {} // past the restore point (or already aborting): no silent way back
        }
    }
    let waiting = || LeaderDecision::Wait(waiting_for(op, hosts, &[]));
    let timed_out = |t: &AckTally| -> Option<LeaderDecision> {
        let limit = cfg.phase_timeout?;
        (age >= limit).then(|| {
            end(
                op,
                failure_target(op),
                t.pending.first().cloned(),
                format!(
                    "{}: no acknowledgement from {} within {:?}",
                    op.phase,
                    t.pending.join(", "),
                    limit
                ),
                wall,
            )
        })
    };
    match op.phase {
        Phase::Done | Phase::Aborted | Phase::Failed => {
            LeaderDecision::Wait(waiting_for(op, hosts, &[]))
        }
        Phase::Preflight => {
            let t = tally(op, hosts, Step::CheckAvailable, false);
            let cluster_step = ClusterStep::Preflight {
                target_version: op.target_version.clone(),
                snapshot: op.snapshot.clone(),
                expected_hosts: op.expected_hosts.clone(),
                accepted_unjudged: op.snapshot_accepted_by.is_some(),
            };
            if let Some((h, c)) = t.failed.first() {
                // A host refused: the cluster's verdict first, so the ending names every cause
                // (an incompatible Elasticsearch must be rolled back first, whatever the hosts
                // say) whichever check finished first.
                let host_cause = format!("preflight on {h}: {c}");
                return match &mem.preflight {
                    None => run_or_wait(
                        mem,
                        cluster_step,
                        format!("preflight: checking the cluster ({host_cause})"),
                    ),
                    Some(Err(cluster)) => end(
                        op,
                        Phase::Aborted,
                        None,
                        format!("preflight: {cluster}; {host_cause}"),
                        wall,
                    ),
                    Some(Ok(())) => end(op, Phase::Aborted, Some(h.clone()), host_cause, wall),
                };
            }
            match &mem.preflight {
                None => run_or_wait(mem, cluster_step, "preflight: checking the cluster".into()),
                Some(Err(c)) => end(op, Phase::Aborted, None, format!("preflight: {c}"), wall),
                Some(Ok(())) if t.pending.is_empty() => {
                    match next(op, Phase::Prefetching, "preflight passed", wall) {
                        LeaderDecision::Write { mut doc, why } => {
                            doc.from_version = version_at_preflight(op, hosts);
                            LeaderDecision::Write { doc, why }
                        }
                        other => other,
                    }
                }
                Some(Ok(())) => timed_out(&t).unwrap_or_else(waiting),
            }
        }
        Phase::Reinstalling | Phase::Starting => {
            decide_after_restore(op, hosts, mem, age, cfg, wall)
        }
        Phase::Prefetching | Phase::Stopping | Phase::Aborting => {
            let step = op.phase.host_step().expect("host phase");
            let t = tally(op, hosts, step, false);
            if let Some((h, c)) = t.failed.first() {
                return end(
                    op,
                    failure_target(op),
                    Some(h.clone()),
                    format!("{} on {h}: {c}", op.phase),
                    wall,
                );
            }
            if !t.pending.is_empty() {
                return timed_out(&t).unwrap_or_else(waiting);
            }
            match op.phase {
                Phase::Prefetching => next(op, Phase::Stopping, "every host prefetched", wall),
                Phase::Stopping => next(op, Phase::Barrier, "every host stopped", wall),
                _ => next(
                    op,
                    Phase::Aborted,
                    "every unit back on the unchanged package",
                    wall,
                ),
            }
        }
        Phase::Barrier => {
            let t = tally(op, hosts, Step::StopUnit, true);
            // A resumed operation may carry a recorded restore: then it fails, never aborts.
            if let Some((h, c)) = t.failed.first() {
                return end(
                    op,
                    failure_target(op),
                    Some(h.clone()),
                    format!("barrier: {h} could not stop: {c}"),
                    wall,
                );
            }
            if age >= cfg.barrier_timeout {
                return end(
                    op,
                    failure_target(op),
                    t.pending.first().cloned(),
                    format!(
                        "barrier timeout after {:?}: {}",
                        cfg.barrier_timeout,
                        waiting_for(op, hosts, &[])
                    ),
                    wall,
                );
            }
            if !t.pending.is_empty() {
                return waiting();
            }
            if let Err(d) = evidence_gate(op, hosts, claims, mem, now, cfg, wall) {
                return d;
            }
            if op.safety_snapshot.enabled {
                match transition(
                    op,
                    Phase::SafetySnapshot,
                    Mover::Leader,
                    "every unit stopped",
                    wall,
                ) {
                    Ok(mut doc) => {
                        doc.safety_snapshot.starts_before = Some(kibana_starts(op, hosts));
                        LeaderDecision::Write {
                            doc,
                            why: "barrier -> safety_snapshot: every unit stopped".into(),
                        }
                    }
                    Err(e) => LeaderDecision::Wait(format!("internal: {e}")),
                }
            } else {
                next(
                    op,
                    Phase::Restoring,
                    "every unit stopped; safety snapshot disabled by the operator",
                    wall,
                )
            }
        }
        Phase::SafetySnapshot => match &mem.safety {
            None => {
                let name = op
                    .safety_snapshot
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("kibana-rollback-pre-{}", op.id));
                run_or_wait(
                    mem,
                    ClusterStep::SafetySnapshot {
                        repository: op.snapshot.repository.clone(),
                        name,
                    },
                    waiting_for(op, hosts, &[]),
                )
            }
            Some(Ok(uuid)) => match transition(
                op,
                Phase::Restoring,
                Mover::Leader,
                "safety snapshot taken",
                wall,
            ) {
                Ok(mut doc) => {
                    doc.safety_snapshot.taken_uuid = Some(uuid.clone());
                    LeaderDecision::Write {
                        doc,
                        why: "safety_snapshot -> restoring".into(),
                    }
                }
                Err(e) => LeaderDecision::Wait(format!("internal: {e}")),
            },
            Some(Err(c)) => end(
                op,
                failure_target(op),
                None,
                format!("safety snapshot failed: {c}"),
                wall,
            ),
        },
        Phase::Restoring => decide_restoring(op, hosts, claims, mem, lease, now, cfg, wall),
    }
}

/// `reinstalling` and `starting`, past the restore point: a host whose step fails (or that stays
/// silent past the phase timeout) is set aside — it stays stopped and takes no further step —
/// and every other host goes on, so healthy hosts serve. The operation then ends `failed`
/// naming the hosts set aside, and `start --resume` finishes them.
fn decide_after_restore(
    op: &OperationDoc,
    hosts: &[HostDoc],
    mem: &LeaderMemory,
    age: Duration,
    cfg: &FleetConfig,
    wall: &str,
) -> LeaderDecision {
    let step = op.phase.host_step().expect("host phase");
    let t = tally(op, hosts, step, false);
    let timed_out = cfg.phase_timeout.is_some_and(|limit| age >= limit);
    let mut failures: Vec<HostFailure> = t
        .failed
        .iter()
        .map(|(h, c)| HostFailure {
            host: h.clone(),
            step,
            cause: c.clone(),
        })
        .collect();
    if !t.pending.is_empty() {
        if !timed_out {
            return LeaderDecision::Wait(waiting_for(op, hosts, &[]));
        }
        let limit = cfg.phase_timeout.expect("timed out");
        failures.extend(t.pending.iter().map(|h| HostFailure {
            host: h.clone(),
            step,
            cause: format!("no acknowledgement within {limit:?}"),
        }));
    }
    if !failures.is_empty() {
        let mut doc = op.clone();
        let names: Vec<String> = failures.iter().map(|f| f.host.clone()).collect();
        let reason = format!(
            "{} failed on {}: set aside, kept stopped; the other hosts go on",
            op.phase,
            failures
                .iter()
                .map(|f| format!("{} ({})", f.host, f.cause))
                .collect::<Vec<_>>()
                .join(", ")
        );
        doc.hosts_failed.extend(failures);
        doc.history.push(PhaseChange {
            from: op.phase,
            to: op.phase,
            epoch: op.epoch,
            reason: reason.clone(),
            at: wall.to_string(),
        });
        return LeaderDecision::Write {
            doc,
            why: format!("setting aside {}", names.join(", ")),
        };
    }
    let serving = op.expected_hosts.len() - op.hosts_failed.len();
    if serving == 0 {
        return end(
            op,
            Phase::Failed,
            op.hosts_failed.first().map(|f| f.host.clone()),
            format!(
                "{} failed on every host: {}; the restored state is in place, no Kibana was started; fix the hosts and run `kibana-rollback start --resume`",
                op.phase,
                describe_set_aside(op)
            ),
            wall,
        );
    }
    if op.phase == Phase::Reinstalling {
        let why = if op.hosts_failed.is_empty() {
            "every host reinstalled".to_string()
        } else {
            format!(
                "{serving} host(s) reinstalled; {} set aside",
                op.hosts_failed.len()
            )
        };
        return next(op, Phase::Starting, &why, wall);
    }
    match &mem.verify {
        None => run_or_wait(
            mem,
            ClusterStep::VerifyFinal {
                target_version: op.target_version.clone(),
            },
            "starting: verifying the result".into(),
        ),
        Some(Err(c)) => end(
            op,
            Phase::Failed,
            None,
            format!("final verification: {c}"),
            wall,
        ),
        Some(Ok(())) if op.hosts_failed.is_empty() => next(
            op,
            Phase::Done,
            "every host started on the target version",
            wall,
        ),
        Some(Ok(())) => end(
            op,
            Phase::Failed,
            op.hosts_failed.first().map(|f| f.host.clone()),
            format!(
                "{serving} host(s) serve Kibana {}; set aside and kept stopped: {}; fix them and run `kibana-rollback start --resume` to finish them",
                op.target_version,
                describe_set_aside(op)
            ),
            wall,
        ),
    }
}

/// `kb2 (reinstall: dpkg error ...), kb3 (...)`.
pub fn describe_set_aside(op: &OperationDoc) -> String {
    op.hosts_failed
        .iter()
        .map(|f| {
            let step = serde_json::to_value(f.step)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            format!("{} ({step}: {})", f.host, f.cause)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn complete_restore(op: &OperationDoc, detail: String, wall: &str) -> LeaderDecision {
    match transition(
        op,
        Phase::Reinstalling,
        Mover::Leader,
        "restore completed",
        wall,
    ) {
        Ok(mut doc) => {
            let r = doc.restore.get_or_insert(RestoreRecord {
                epoch: op.epoch,
                issued: true,
                completed: false,
                superseded_epochs: vec![],
                detail: String::new(),
            });
            r.completed = true;
            r.detail = detail;
            LeaderDecision::Write {
                doc,
                why: "restoring -> reinstalling: restore completed".into(),
            }
        }
        Err(e) => LeaderDecision::Wait(format!("internal: {e}")),
    }
}

#[allow(clippy::too_many_arguments)]
fn decide_restoring(
    op: &OperationDoc,
    hosts: &[HostDoc],
    claims: &[ClaimDoc],
    mem: &LeaderMemory,
    lease: &HeldLease,
    now: Duration,
    cfg: &FleetConfig,
    wall: &str,
) -> LeaderDecision {
    let snap = format!("{}/{}", op.snapshot.repository, op.snapshot.name);
    if op.safety_snapshot.enabled && op.safety_snapshot.taken_uuid.is_none() {
        return end(
            op,
            Phase::Failed,
            None,
            "internal: restoring without the safety snapshot; refusing to restore".into(),
            wall,
        );
    }
    // Every unit must be known stopped before the restore is recorded and again before it is
    // issued (invariant 1). If that cannot be confirmed: with no restore recorded yet nothing has
    // changed in Elasticsearch, so a failed stop aborts at once and a silent host aborts after the
    // barrier timeout; once a restore is recorded the only way out is `failed`.
    let t = tally(op, hosts, Step::StopUnit, true);
    let age = now.saturating_sub(mem.phase_since);
    let held = || -> LeaderDecision {
        let blocked: Vec<String> = t
            .pending
            .iter()
            .chain(t.failed.iter().map(|(h, _)| h))
            .cloned()
            .collect();
        let first = blocked.first().cloned();
        if op.restore.is_none() {
            if let Some((h, c)) = t.failed.first() {
                return end(
                    op,
                    Phase::Aborting,
                    Some(h.clone()),
                    format!("restoring: {h} could not stop kibana before the restore: {c}"),
                    wall,
                );
            }
            if age >= cfg.barrier_timeout {
                return end(op, Phase::Aborting, first, format!("restoring: units not confirmed stopped within {:?}: {}; nothing was restored", cfg.barrier_timeout, blocked.join(", ")), wall);
            }
        } else if age >= cfg.barrier_timeout {
            return end(op, Phase::Failed, first, format!("restoring: units not confirmed stopped within {:?}: {}; the restore was recorded, check it before --resume", cfg.barrier_timeout, blocked.join(", ")), wall);
        }
        LeaderDecision::Wait(format!(
            "restoring: restore held until every unit is confirmed stopped: {}",
            blocked.join(", ")
        ))
    };
    let all_stopped = t.pending.is_empty() && t.failed.is_empty();
    // Write-ahead record of our own restore, once fresh evidence (every host's answer to a
    // probe of this phase and epoch, then the nodes' clients) says nothing runs.
    let intent = |superseded: Vec<u64>| -> LeaderDecision {
        if !all_stopped {
            return held();
        }
        if let Err(d) = evidence_gate(op, hosts, claims, mem, now, cfg, wall) {
            return match d {
                // With an earlier restore recorded (found never started) the operation cannot
                // abort any more: it fails, and `start --resume` goes on from the barrier.
                LeaderDecision::Wait(w) if age >= cfg.barrier_timeout => end(
                    op,
                    failure_target(op),
                    None,
                    format!(
                        "restoring: no fresh evidence within {:?} ({w}); nothing was restored",
                        cfg.barrier_timeout
                    ),
                    wall,
                ),
                d => d,
            };
        }
        // Kibana ran somewhere since the safety snapshot (the start hold was removed): what it
        // wrote is not in the snapshot, so a new one comes first.
        let ran = started_since_safety_snapshot(op, hosts);
        if op.safety_snapshot.enabled && !ran.is_empty() {
            let why = format!(
                "kibana ran on {} since the safety snapshot was taken: taking a new one",
                ran.join(", ")
            );
            if op.restore.is_some() {
                // An earlier restore was recorded (found never started): no going back.
                return end(
                    op,
                    Phase::Failed,
                    ran.first().cloned(),
                    format!("restoring: {why} is not possible once a restore was recorded; nothing was restored by this epoch, run `kibana-rollback start --resume`"),
                    wall,
                );
            }
            return match transition(op, Phase::SafetySnapshot, Mover::Leader, why.clone(), wall) {
                Ok(mut doc) => {
                    let s = &mut doc.safety_snapshot;
                    if let Some(old) = s.name.take() {
                        s.earlier.push(old);
                    }
                    s.name = Some(format!(
                        "kibana-rollback-pre-{}-e{}-{}",
                        op.id,
                        op.epoch,
                        s.earlier.len()
                    ));
                    s.taken_uuid = None;
                    s.starts_before = Some(kibana_starts(op, hosts));
                    LeaderDecision::Write {
                        doc,
                        why: format!("restoring -> safety_snapshot: {why}"),
                    }
                }
                Err(e) => LeaderDecision::Wait(format!("internal: {e}")),
            };
        }
        let mut doc = op.clone();
        doc.restore = Some(RestoreRecord {
            epoch: op.epoch,
            issued: true,
            completed: false,
            superseded_epochs: superseded,
            detail: String::new(),
        });
        LeaderDecision::Write {
            doc,
            why: format!(
                "recording the restore of {snap} at epoch {} before issuing it",
                op.epoch
            ),
        }
    };
    let Some(rec) = &op.restore else {
        return intent(vec![]);
    };
    if rec.completed {
        return complete_restore(op, rec.detail.clone(), wall);
    }
    if rec.epoch < op.epoch {
        let inspect = || {
            run_or_wait(
                mem,
                ClusterStep::InspectRestore {
                    snapshot: op.snapshot.clone(),
                    recorded_epoch: rec.epoch,
                    after: op
                        .safety_snapshot
                        .taken_uuid
                        .as_ref()
                        .and(op.safety_snapshot.name.clone()),
                },
                format!(
                    "restoring: inspecting the restore recorded at epoch {}",
                    rec.epoch
                ),
            )
        };
        return match &mem.inspect {
            None => inspect(),
            Some((RestoreInspection::InProgress, at)) => {
                if now.saturating_sub(*at) >= cfg.retry_every {
                    inspect()
                } else {
                    LeaderDecision::Wait(format!("restoring: restore issued at epoch {} still running in Elasticsearch", rec.epoch))
                }
            }
            Some((RestoreInspection::Completed, _)) => {
                complete_restore(op, format!("restore issued at epoch {} found completed by epoch {}", rec.epoch, op.epoch), wall)
            }
            // "Not started" counts only once a late request can no longer land.
            Some((RestoreInspection::NotStarted, at)) if age < cfg.restore_grace => {
                if now.saturating_sub(*at) >= cfg.retry_every {
                    inspect()
                } else {
                    LeaderDecision::Wait(format!(
                        "restoring: no trace of the restore recorded at epoch {}; looking again for {:?} before concluding it never started",
                        rec.epoch,
                        cfg.restore_grace.saturating_sub(age)
                    ))
                }
            }
            Some((RestoreInspection::NotStarted, _)) => {
                let mut sup = rec.superseded_epochs.clone();
                sup.push(rec.epoch);
                intent(sup)
            }
            Some((RestoreInspection::Unknown(c), _)) => end(
                op,
                Phase::Failed,
                None,
                format!(
                    "restore outcome unknown after leader change (restore recorded at epoch {}): {c}; check snapshot {snap} \
                     and the .kibana indices, then re-run with --resume",
                    rec.epoch
                ),
                wall,
            ),
        };
    }
    // rec.epoch == op.epoch: ours (a takeover always increases the epoch).
    match &mem.restore {
        Some(RestoreResult::Completed(rep)) if rep.shards_failed == 0 && rep.healthy => complete_restore(op, rep.detail.clone(), wall),
        Some(RestoreResult::Completed(rep)) => end(
            op,
            Phase::Failed,
            None,
            format!(
                "restore of {snap}: {} shards failed, indices healthy: {} ({}); the previous state is in the safety snapshot",
                rep.shards_failed, rep.healthy, rep.detail
            ),
            wall,
        ),
        Some(RestoreResult::Failed(c)) => end(op, Phase::Failed, None, format!("restore of {snap} failed: {c}"), wall),
        Some(RestoreResult::Refused(c)) => end(
            op,
            Phase::Failed,
            None,
            format!("Elasticsearch refused the restore of {snap} before starting it: {c}; nothing was restored, fix the cause and run `kibana-rollback start --resume`"),
            wall,
        ),
        // The answer was lost: inspect, never assume.
        Some(RestoreResult::Unknown(c)) => {
            let inspect = || {
                run_or_wait(
                    mem,
                    ClusterStep::InspectRestore {
                        snapshot: op.snapshot.clone(),
                        recorded_epoch: op.epoch,
                        after: op.safety_snapshot.taken_uuid.as_ref().and(op.safety_snapshot.name.clone()),
                    },
                    format!("restoring: the restore's answer was lost ({c}); inspecting Elasticsearch"),
                )
            };
            match &mem.inspect {
                None => inspect(),
                Some((RestoreInspection::InProgress, at)) => {
                    if now.saturating_sub(*at) >= cfg.retry_every {
                        inspect()
                    } else {
                        LeaderDecision::Wait(format!("restoring: the restore of {snap} is still running in Elasticsearch"))
                    }
                }
                Some((RestoreInspection::Completed, _)) => complete_restore(
                    op,
                    format!("restore of {snap} found completed after its answer was lost"),
                    wall,
                ),
                // At most one restore per epoch: a successor issues the next one at its own.
                Some((RestoreInspection::NotStarted, _)) => LeaderDecision::StepDown(
                    "the restore's answer was lost and Elasticsearch shows no trace of it; stepping down so a successor restores at a new epoch".into(),
                ),
                Some((RestoreInspection::Unknown(u), _)) => end(
                    op,
                    Phase::Failed,
                    None,
                    format!("restore outcome unknown ({c}; {u}); check snapshot {snap} and the .kibana indices, then re-run with --resume"),
                    wall,
                ),
            }
        }
        None if mem.restore_issued_epoch == Some(op.epoch) => {
            LeaderDecision::Wait(format!("restoring: waiting for the restore of {snap} (epoch {})", op.epoch))
        }
        None => {
            // Re-check the hosts right before issuing, then require a fresh renewal.
            if !all_stopped {
                return held();
            }
            if lease.renew_due(now, &cfg.lease) {
                LeaderDecision::Renew
            } else {
                LeaderDecision::IssueRestore
            }
        }
    }
}

/// The renewal document (re-exported for the node).
pub(crate) fn renewal(op: &OperationDoc) -> OperationDoc {
    renew(op)
}
