//! Pure helpers for the trigger and the operator commands: build an operation, read its
//! outcome, say what it waits for, request an abort, resume a failed one.

use super::doc::ClaimDoc;
use super::doc::{
    transition, AbortRequest, DocError, Exclusion, HostDoc, HostFailure, Mover, OpError,
    OperationDoc, Phase, PhaseChange, SafetySnapshot, SnapshotRef, Step,
};
use super::leader::{claims_blocking, claims_can_hold, tally};
use semver::Version;

/// What the trigger (`kibana-rollback start`) knows when it creates an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOperation {
    pub id: String,
    pub requested_by: String,
    /// Wall clock of the trigger, informational only.
    pub requested_at: String,
    pub target_version: Version,
    pub snapshot: SnapshotRef,
    /// Who accepted a snapshot that could not be judged, and why it could not.
    pub snapshot_accepted_by: Option<String>,
    /// `false` only when the operator turned the safety snapshot off explicitly.
    pub safety_snapshot: bool,
    /// Defaults to `kibana-rollback-pre-<id>`.
    pub safety_snapshot_name: Option<String>,
    pub expected_hosts: Vec<String>,
    pub barrier_client_check: bool,
}

/// The document to `_create` as `operation`: phase `preflight`, epoch 0, no leader yet (the
/// first agent to CAS itself in becomes leader at epoch 1).
pub fn new_operation(req: NewOperation) -> Result<OperationDoc, DocError> {
    // The id names the safety snapshot (`kibana-rollback-pre-<id>`) and the history document:
    // Elasticsearch takes only lowercase snapshot names.
    if req.id.is_empty()
        || !req
            .id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(DocError::Invalid(format!(
            "operation id {:?} must be non-empty lowercase letters, digits and '-'",
            req.id
        )));
    }
    if req.expected_hosts.is_empty() {
        return Err(DocError::Invalid(
            "no expected hosts: name every Kibana host that runs an agent".into(),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for h in &req.expected_hosts {
        if h.is_empty() || !seen.insert(h) {
            return Err(DocError::Invalid(format!(
                "expected host {h:?} is empty or listed twice"
            )));
        }
    }
    if req.snapshot.repository.is_empty() || req.snapshot.name.is_empty() {
        return Err(DocError::Invalid(
            "snapshot repository and name are required".into(),
        ));
    }
    let name = req.safety_snapshot.then(|| {
        req.safety_snapshot_name
            .clone()
            .unwrap_or_else(|| format!("kibana-rollback-pre-{}", req.id))
    });
    Ok(OperationDoc {
        format: super::doc::FORMAT,
        revision: 0,
        history: vec![PhaseChange {
            from: Phase::Preflight,
            to: Phase::Preflight,
            epoch: 0,
            reason: format!("requested by {}", req.requested_by),
            at: req.requested_at.clone(),
        }],
        id: req.id,
        requested_by: req.requested_by,
        requested_at: req.requested_at,
        target_version: req.target_version,
        snapshot: req.snapshot,
        snapshot_accepted_by: req.snapshot_accepted_by,
        safety_snapshot: SafetySnapshot {
            enabled: req.safety_snapshot,
            name,
            taken_uuid: None,
            earlier: vec![],
            starts_before: None,
        },
        expected_hosts: req.expected_hosts,
        phase: Phase::Preflight,
        phase_epoch: 0,
        epoch: 0,
        leader: None,
        barrier_client_check: req.barrier_client_check,
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
    })
}

/// How a finished operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Every unit back on the unchanged package, nothing changed in Elasticsearch.
    Aborted(Option<OpError>),
    /// Host (or cluster) and cause.
    Failed(Option<OpError>),
}

/// `Some` once the operation is finished.
pub fn outcome(op: &OperationDoc) -> Option<Outcome> {
    match op.phase {
        Phase::Done => Some(Outcome::Done),
        Phase::Aborted => Some(Outcome::Aborted(op.error.clone())),
        Phase::Failed => Some(Outcome::Failed(op.error.clone())),
        _ => None,
    }
}

/// An operation's error as one phrase: `on <host>: <cause>`, or the cause of a cluster-side error.
pub fn describe_error(e: Option<&OpError>) -> String {
    match e {
        Some(OpError {
            host: Some(h),
            cause,
        }) => format!("on {h}: {cause}"),
        Some(OpError { host: None, cause }) => cause.clone(),
        None => "no cause recorded".into(),
    }
}

/// The refusal of a second `start` (and `plan`'s detail) while `op` holds the lock.
pub fn running_message(op: &OperationDoc) -> String {
    if op.phase == Phase::Failed {
        return format!(
            "operation {} (requested by {} at {}) failed ({}) and still holds the lock; inspect it with `kibana-rollback status`, \
             fix the cause and continue it with `kibana-rollback start --resume --wait`, or release it with \
             `kibana-rollback lock --force-release --yes` once every host is in a known state",
            op.id,
            op.requested_by,
            op.requested_at,
            describe_error(op.error.as_ref())
        );
    }
    format!(
        "operation {} (phase {}, requested by {} at {}) is already running; follow it with `kibana-rollback status` or stop it with `kibana-rollback abort`",
        op.id, op.phase, op.requested_by, op.requested_at
    )
}

/// What the barrier's client check waits for, as the leader recorded it: member nodes that do
/// not answer, or Kibanas still connected.
fn clients_line(op: &OperationDoc) -> Option<String> {
    if !op.barrier_silent_nodes.is_empty() {
        return Some(format!(
            "{}: waiting for node(s) {} to answer _nodes/stats/http: a member that does not answer \
             hides the Kibanas connected to it; judged again once it answers or has left the cluster",
            op.phase,
            op.barrier_silent_nodes.join(", ")
        ));
    }
    (!op.barrier_clients.is_empty()).then(|| {
        format!(
            "{}: waiting for Kibana clients to disconnect: {}",
            op.phase,
            op.barrier_clients
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })
}

/// One line for `status`: the phase and what it waits for, e.g.
/// `stopping: waiting for host-b, host-c`. `claims`: the claim documents read with the hosts
/// (empty when not read); a claim holding the restore-side steps is named first.
pub fn waiting_for(op: &OperationDoc, hosts: &[HostDoc], claims: &[ClaimDoc]) -> String {
    let phase = op.phase;
    let snap = format!("{}/{}", op.snapshot.repository, op.snapshot.name);
    match phase {
        Phase::Done => return "done".into(),
        Phase::Aborted => return format!("aborted: {}", describe_error(op.error.as_ref())),
        Phase::Failed => return format!("failed: {}", describe_error(op.error.as_ref())),
        _ => {}
    }
    if op.leader.is_none() {
        return format!(
            "{phase}: waiting for an agent on {} to take the lease",
            op.expected_hosts.join(", ")
        );
    }
    let hosts_line = |step: Step, need_stopped: bool, what: &str| -> Option<String> {
        let t = tally(op, hosts, step, need_stopped);
        let mut parts = vec![];
        if !t.pending.is_empty() {
            parts.push(format!("waiting for {}{what}", t.pending.join(", ")));
        }
        if !t.failed.is_empty() {
            let f: Vec<String> = t.failed.iter().map(|(h, c)| format!("{h} ({c})")).collect();
            parts.push(format!("failed on {}", f.join(", ")));
        }
        (!parts.is_empty()).then(|| format!("{phase}: {}", parts.join("; ")))
    };
    if let Some(why) = claims_blocking(op, claims).filter(|_| claims_can_hold(op)) {
        return format!("{phase}: {why}");
    }
    match phase {
        Phase::Preflight => hosts_line(Step::CheckAvailable, false, "")
            .unwrap_or_else(|| "preflight: checking the cluster".into()),
        Phase::Barrier => hosts_line(Step::StopUnit, true, " to confirm kibana stopped")
            .or_else(|| clients_line(op))
            .unwrap_or_else(|| {
                if op.barrier_client_check {
                    "barrier: checking that no Kibana client still talks to Elasticsearch".into()
                } else {
                    "barrier: every unit stopped".into()
                }
            }),
        Phase::SafetySnapshot => format!(
            "safety_snapshot: waiting for snapshot {}/{}",
            op.snapshot.repository,
            op.safety_snapshot.name.as_deref().unwrap_or("?")
        ),
        Phase::Restoring => {
            match &op.restore {
                None => hosts_line(Step::StopUnit, true, " to confirm kibana stopped")
                    .or_else(|| clients_line(op))
                    .unwrap_or_else(|| {
                        format!("restoring: waiting for the leader to issue the restore of {snap}")
                    }),
                Some(r) if r.epoch < op.epoch => {
                    format!("restoring: checking the outcome of the restore of {snap} issued at epoch {}", r.epoch)
                }
                Some(r) => format!(
                    "restoring: waiting for the restore of {snap} (epoch {})",
                    r.epoch
                ),
            }
        }
        _ => {
            let step = phase.host_step().expect("host phase");
            hosts_line(step, false, "")
                .unwrap_or_else(|| format!("{phase}: every host acknowledged; finishing"))
        }
    }
}

/// The document an operator's `abort` CAS-writes. Refused past the restore point: from there
/// the only ways out are `done` and `failed`.
pub fn request_abort(op: &OperationDoc, by: &str, reason: &str) -> Result<OperationDoc, DocError> {
    if op.phase.is_terminal() {
        return Err(DocError::Invalid(format!(
            "operation {} already ended {}",
            op.id, op.phase
        )));
    }
    if !matches!(
        op.phase,
        Phase::Preflight
            | Phase::Prefetching
            | Phase::Stopping
            | Phase::Barrier
            | Phase::SafetySnapshot
    ) {
        return Err(DocError::Invalid(format!(
            "operation {} is in {}: past the restore point it can only finish (done) or fail",
            op.id, op.phase
        )));
    }
    if op.restore.is_some() {
        return Err(DocError::Invalid(format!(
            "operation {} may already have restored (a restore was recorded at epoch {}): it can only finish or fail",
            op.id,
            op.restore.as_ref().map_or(0, |r| r.epoch)
        )));
    }
    let mut next = op.clone();
    next.abort_requested = Some(AbortRequest {
        by: by.into(),
        reason: reason.into(),
    });
    Ok(next)
}

/// The document `abort` archives (then deletes the operation) when no agent ever took the lease:
/// still in preflight at epoch 0 with no leader, so nothing was checked, stopped or changed and
/// nobody would act on an abort request. Refused otherwise: then the leader must do the abort.
/// The caller writes it with compare-and-set semantics (delete at the version it read), so an
/// agent taking the lease at the same moment makes exactly one of the two win.
pub fn withdraw(
    op: &OperationDoc,
    by: &str,
    reason: &str,
    at: &str,
) -> Result<OperationDoc, DocError> {
    if op.phase != Phase::Preflight || op.epoch != 0 || op.leader.is_some() {
        return Err(DocError::Invalid(format!(
            "operation {} has been picked up by an agent (phase {}, epoch {}); the leader must abort it",
            op.id, op.phase, op.epoch
        )));
    }
    let mut next = transition(
        op,
        Phase::Aborted,
        Mover::Operator,
        format!("withdrawn by {by} before any agent acted: {reason}"),
        at,
    )?;
    next.abort_requested = Some(AbortRequest {
        by: by.into(),
        reason: reason.into(),
    });
    next.error = Some(OpError {
        host: None,
        cause: format!("withdrawn by {by} before any agent acted: {reason}"),
    });
    Ok(next)
}

/// The document `start --resume` CAS-writes for a `failed` operation: back into the phase it
/// failed in, at a new epoch with no leader, so every host redoes that phase's step (acks older
/// than the new `phase_epoch` do not count). With `forget_restore`, a restore recorded but not
/// completed is dropped and will be issued again: the operator says it certainly did not happen
/// (or that restoring once more is what they want).
///
/// Resume is as safe as the first run: an operation that failed in `restoring` without a
/// completed restore goes back to the `barrier` (fresh evidence that every unit is stopped) and
/// takes a new safety snapshot (data written while it sat `failed` is kept too; the earlier one
/// stays listed). One with hosts set aside after the restore goes back to `reinstalling`, so
/// those hosts reinstall and start while the others, already on the target, keep serving.
pub fn resume(
    op: &OperationDoc,
    by: &str,
    at: &str,
    forget_restore: bool,
) -> Result<OperationDoc, DocError> {
    if op.phase != Phase::Failed {
        return Err(DocError::Invalid(format!(
            "only a failed operation can be resumed; {} is {}",
            op.id, op.phase
        )));
    }
    let failed_in = op
        .history
        .iter()
        .rev()
        .find(|c| c.to == Phase::Failed && c.from != Phase::Failed)
        .map(|c| c.from)
        .ok_or_else(|| {
            DocError::Invalid("history does not say where the operation failed".into())
        })?;
    let mut bumped = op.clone();
    bumped.epoch = op.epoch + 1;
    bumped.leader = None;
    bumped.error = None;
    bumped.hosts_failed.clear();
    let restore_done = op.restore_completed();
    let (to, why) = match failed_in {
        Phase::Restoring if !restore_done => (
            Phase::Barrier,
            "from the barrier: fresh evidence and a new safety snapshot before any restore",
        ),
        Phase::Starting if !op.hosts_failed.is_empty() => (
            Phase::Reinstalling,
            "from reinstalling: the hosts set aside reinstall, the others keep serving",
        ),
        p => (p, ""),
    };
    if to == Phase::Barrier
        && bumped.safety_snapshot.enabled
        && !super::bugs::on(super::bugs::Bug::NoNewSafetySnapshotOnResume)
    {
        let s = &mut bumped.safety_snapshot;
        if let Some(old) = s.name.take() {
            s.earlier.push(old);
        }
        s.name = Some(format!("kibana-rollback-pre-{}-e{}", op.id, bumped.epoch));
        s.taken_uuid = None;
        s.starts_before = None;
    }
    let reason = if why.is_empty() {
        format!("resumed by {by}")
    } else {
        format!("resumed by {by} {why}")
    };
    let mut next = transition(&bumped, to, Mover::Operator, reason, at)?;
    if forget_restore {
        if let Some(r) = &next.restore {
            if !r.completed {
                next.restore = None;
            }
        }
    }
    Ok(next)
}

/// The document `exclude-host HOST` CAS-writes: HOST is gone for good (a dead machine), and the
/// running operation goes on without it. Invariants 1 and 3 decide what each phase allows:
///
/// * `preflight`, `prefetching`: HOST is no longer expected; it had changed nothing.
/// * `stopping`, `barrier`, `safety_snapshot`, `restoring` before a restore is recorded: HOST is
///   no longer expected, but its Kibana may still run: allowed only with the barrier's client
///   check on, whose evidence from every node (any open Kibana connection blocks the restore)
///   then stands in for HOST's own report.
/// * once a restore is recorded, `reinstalling`, `starting`: HOST is set aside (kept stopped if
///   its agent comes back, no further step), the others go on, and the operation ends `failed`
///   naming it, to be finished by `start --resume` once it is back or replaced.
/// * `aborting`: HOST is no longer expected; the others come back.
///
/// An excluded host's agent that comes back keeps its Kibana stopped while the operation runs.
/// The last expected host cannot be excluded.
pub fn exclude_host(
    op: &OperationDoc,
    host: &str,
    by: &str,
    reason: &str,
    at: &str,
) -> Result<OperationDoc, DocError> {
    if op.phase.is_terminal() {
        return Err(DocError::Invalid(format!(
            "operation {} has ended ({}): nothing to exclude from",
            op.id, op.phase
        )));
    }
    if !op.is_expected(host) {
        return Err(DocError::Invalid(format!(
            "{host} is not an expected host of operation {} (expected: {})",
            op.id,
            op.expected_hosts.join(", ")
        )));
    }
    if op.is_set_aside(host) {
        return Err(DocError::Invalid(format!("{host} is already set aside")));
    }
    if op.expected_hosts.len() - op.hosts_failed.len() <= 1 {
        return Err(DocError::Invalid(format!(
            "{host} is the last host of operation {}: abort it instead",
            op.id
        )));
    }
    let restore_recorded = op.restore.is_some();
    let mut next = op.clone();
    let note = format!("{host} excluded by {by}: {reason}");
    match op.phase {
        Phase::Reinstalling | Phase::Starting => set_aside(&mut next, host, &note),
        Phase::Restoring if restore_recorded => set_aside(&mut next, host, &note),
        Phase::Stopping | Phase::Barrier | Phase::SafetySnapshot | Phase::Restoring
            if !op.barrier_client_check =>
        {
            return Err(DocError::Invalid(format!(
                "{host} may still run Kibana and operation {} has the barrier's client check off, \
                 so nothing would prove it stopped before the restore: bring {host} back, or \
                 abort and start again with coordination.barrier_client_check = true",
                op.id
            )));
        }
        _ => {
            next.expected_hosts.retain(|h| h != host);
            next.excluded.push(Exclusion {
                host: host.to_string(),
                by: by.to_string(),
                phase: op.phase,
                reason: reason.to_string(),
            });
        }
    }
    next.history.push(PhaseChange {
        from: op.phase,
        to: op.phase,
        epoch: op.epoch,
        reason: note,
        at: at.to_string(),
    });
    Ok(next)
}

fn set_aside(op: &mut OperationDoc, host: &str, why: &str) {
    let step = op.phase.host_step().unwrap_or(Step::StopUnit);
    op.hosts_failed.push(HostFailure {
        host: host.to_string(),
        step,
        cause: why.to_string(),
    });
}
