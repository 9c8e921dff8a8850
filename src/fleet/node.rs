//! One agent's protocol state and the [`step`] function the daemon loop drives.
//!
//! Shaped like `quinn-proto`: [`NodeState`] owns no sockets and reads no clock. Each call to
//! [`step`] gets [`Inputs`] — the monotonic time, what the adapters just read (operation
//! document, host documents, local facts) and the results of actions asked for earlier
//! ([`Event`]s, matched by [`RequestId`]) — and returns [`Action`]s for the adapters to execute.
//! Every agent is a host and a candidate; the one holding the lease is also the leader.
//!
//! Rules the node enforces around the pure decisions ([`super::agent`], [`super::leader`]):
//! * at most one operation-document write, one host step, one host-document write and one cluster
//!   step in flight;
//! * a leader acts only while its lease is valid; it checks that first on every call and emits
//!   [`Action::StopActing`] the moment it is deposed (by time, or because it sees another leader
//!   or epoch). It never regains leadership without a takeover (a new epoch);
//! * a successful write sent at `t` renews the lease from `t` (send time, not reply time);
//! * a write with unknown outcome does not renew; the next read tells.
//!
//! Adapter contract: every action that carries a [`RequestId`] gets exactly one result event
//! (a timeout is reported as a result: [`WriteResult::Unknown`], `ok: false`, a failed step);
//! until then the node does not issue another action of that kind. Results of a previous
//! process are never fed to a new `NodeState` (ids restart at 1).

use super::agent::{
    decide_host_within, HostDecision, HostFacts, HostStep, LocalProgress, ProgressState,
};
use super::doc::{
    Ack, ClaimDoc, DocVersion, HostDoc, MachineIdentity, OperationDoc, Phase, StepResult, Versioned,
};
use super::leader::{
    decide_leader, renewal, ClusterOutcome, ClusterStep, ClusterStepKind, LeaderDecision,
    LeaderMemory,
};
use super::lease::{takeover, HeldLease, LeaseObserver};
use super::FleetConfig;
use std::time::Duration;

/// Correlates an action with its result. Unique within one `NodeState` (one process lifetime).
pub type RequestId = u64;

/// What the adapter read of the `operation` document this round. (One per round: not boxed.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum OpRead {
    /// Could not be read (Elasticsearch unreachable): the node keeps its last view.
    Unreadable,
    /// 404: no active operation.
    Missing,
    /// Written by a newer kibana-rollback in a format this one does not know (the reason): the
    /// node acts as if there were no operation (a leader steps down) and says so.
    Unsupported(String),
    Found(Versioned<OperationDoc>),
}

/// Result of a CAS write or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteResult {
    /// Written; the new `_seq_no`/`_primary_term`.
    Ok(DocVersion),
    /// 409: the document changed (or is gone) since the version we expected.
    Conflict,
    /// Unknown outcome (timeout, 5xx): it may or may not have been applied.
    Unknown(String),
}

/// Results of earlier actions.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    OpWritten {
        id: RequestId,
        result: WriteResult,
    },
    HostDocWritten {
        id: RequestId,
        result: WriteResult,
    },
    ClaimWritten {
        id: RequestId,
    },
    Cluster {
        id: RequestId,
        outcome: ClusterOutcome,
    },
    /// What a running host step is doing now (waiting for the dpkg lock held by ...): shown in
    /// the host's in-progress ack. No result; any number per step.
    HostStepProgress {
        id: RequestId,
        detail: String,
    },
    /// `result` is `Ok` or `Failed`; `detail` goes into the ack.
    HostStepDone {
        id: RequestId,
        result: StepResult,
        detail: String,
    },
    /// `history-<id>` created (a 409 "already exists" is also `ok`).
    Archived {
        id: RequestId,
        ok: bool,
    },
    Deleted {
        id: RequestId,
        result: WriteResult,
    },
}

/// Everything the node learns in one round.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Monotonic time since agent start, from a clock that runs during suspend (`CLOCK_BOOTTIME`).
    pub now: Duration,
    /// Wall clock for history entries; informational, never compared.
    pub wall: String,
    pub op: OpRead,
    /// Host documents as read this round: this host's, and every host's of the operation when
    /// [`NodeState::wants_every_host`] (only a leader decides on the others').
    pub hosts: Vec<HostDoc>,
    /// Whether `hosts` was read with every host of the operation: a leader decides nothing on
    /// a reading without them (its first round after a takeover may still have one).
    pub every_host: bool,
    /// The version of this host's own document as read this round (`None`: absent or unread).
    pub own_version: Option<DocVersion>,
    pub facts: HostFacts,
    /// Results that arrived since the last round. Read `op` *after* collecting them.
    pub events: Vec<Event>,
    /// The claim documents (a second machine with an expected host id), read when
    /// [`NodeState::wants_claims`]; `None`: not read this round (the last reading stands).
    pub claims: Option<Vec<ClaimDoc>>,
    /// The version of the ping document as read this round (`None`: absent or not read). A
    /// version this agent has not seen asks it to heartbeat now: `plan`'s and `prepare`'s
    /// liveness watch, and a second machine asking whether the owner of its host id lives.
    pub ping: Option<DocVersion>,
}

/// What the adapters should do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `PUT <idx>/_doc/operation?if_seq_no=..&if_primary_term=..` → [`Event::OpWritten`].
    CasWriteOperation {
        id: RequestId,
        expected: DocVersion,
        doc: OperationDoc,
        why: String,
    },
    /// `PUT <idx>/_create/history-<op id>` → [`Event::Archived`] (409 counts as ok).
    ArchiveHistory { id: RequestId, doc: OperationDoc },
    /// `DELETE <idx>/_doc/operation?if_seq_no=..` → [`Event::Deleted`].
    DeleteOperation { id: RequestId, expected: DocVersion },
    /// This host's document: `_create` when `expected` is `None`, else a CAS on `expected`, so
    /// only the machine that owns the host id writes it → [`Event::HostDocWritten`].
    WriteHostDoc {
        id: RequestId,
        doc: HostDoc,
        expected: Option<DocVersion>,
    },
    /// `PUT <idx>/_doc/claim-<host id>-<instance>`: another live machine owns our host id;
    /// then a ping (any write of the ping document), so a live owner heartbeats at once
    /// → [`Event::ClaimWritten`].
    WriteClaim { id: RequestId, doc: ClaimDoc },
    /// Persist locally (fsync) before executing the next action. No result.
    RecordProgress(LocalProgress),
    /// Persist the highest revision seen of the current operation (a restarted agent must still
    /// tell a replayed older revision apart): `<state_dir>/revision.json`.
    RecordRevision(RevisionSeen),
    /// → [`Event::HostStepDone`].
    RunHostStep {
        id: RequestId,
        step: HostStep,
        resumed: bool,
    },
    /// → [`Event::Cluster`].
    RunClusterStep { id: RequestId, step: ClusterStep },
    /// Nothing to do until something changes; `what` is for logs and `status`.
    Wait { what: String },
    /// This agent refuses to act at all until the operator fixes something (another machine owns
    /// its host id): unlike [`Action::Wait`], an operator must see it in the journal.
    Refused { why: String },
    /// This node is no longer leader: cancel what can be cancelled of its cluster steps.
    StopActing { reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteKind {
    Takeover,
    Leader,
}

#[derive(Debug, Clone)]
struct PendingWrite {
    id: RequestId,
    sent_at: Duration,
    doc: OperationDoc,
    kind: WriteKind,
}

#[derive(Debug, Clone)]
struct Leading {
    lease: HeldLease,
    op_id: String,
    mem: LeaderMemory,
}

#[derive(Debug, Clone)]
struct PendingHostStep {
    id: RequestId,
    op_id: String,
    epoch: u64,
    step: HostStep,
    acks: bool,
}

#[derive(Debug, Clone)]
enum Archive {
    Creating { id: RequestId, op_id: String },
    Deleting { id: RequestId },
}

/// One agent's in-memory protocol state. Lost on crash; rebuilt from reads and the local
/// progress record.
#[derive(Debug, Clone)]
pub struct NodeState {
    host_id: String,
    cfg: FleetConfig,
    next_id: RequestId,
    view: Option<Versioned<OperationDoc>>,
    observer: LeaseObserver,
    lead: Option<Leading>,
    op_write: Option<PendingWrite>,
    archive: Option<Archive>,
    host_step: Option<PendingHostStep>,
    host_write: Option<(RequestId, HostDoc)>,
    host_written: Option<HostDoc>,
    /// Our own host document's version since we last wrote it; `None`: not owned yet this run.
    host_version: Option<DocVersion>,
    /// Another machine owns our host id: who, its heartbeat, since when unchanged (our clock).
    foreign: Option<(MachineIdentity, u64, Duration)>,
    /// The highest revision seen of the current operation: a lower one is a replay.
    revision_seen: Option<(String, u64)>,
    /// The operations this agent saw before the current one, newest last (at most
    /// [`EARLIER_OPERATIONS_KEPT`]): one of them written back is a replay of an ended operation.
    earlier_ops: Vec<String>,
    /// The latest claim documents read (see [`NodeState::wants_claims`]).
    claims: Vec<ClaimDoc>,
    /// The newest probe seen and when; answered once facts read after that moment come in.
    probe_seen: Option<(u64, Duration)>,
    probe_answered: Option<u64>,
    claim_write: Option<RequestId>,
    /// The last ping document version seen, and whether it still wants a heartbeat.
    ping_seen: Option<DocVersion>,
    ping_due: bool,
    last_heartbeat: Option<Duration>,
    heartbeat: Option<u64>,
    my_ack: Option<Ack>,
    progress: Option<LocalProgress>,
}

impl NodeState {
    /// A fresh agent process. `progress` is the local record left by a previous process, if any.
    pub fn new(
        host_id: impl Into<String>,
        cfg: FleetConfig,
        progress: Option<LocalProgress>,
    ) -> Self {
        NodeState {
            host_id: host_id.into(),
            cfg,
            next_id: 1,
            view: None,
            observer: LeaseObserver::default(),
            lead: None,
            op_write: None,
            archive: None,
            host_step: None,
            host_write: None,
            host_written: None,
            host_version: None,
            foreign: None,
            claim_write: None,
            revision_seen: None,
            earlier_ops: Vec::new(),
            claims: vec![],
            probe_seen: None,
            probe_answered: None,
            ping_seen: None,
            ping_due: false,
            last_heartbeat: None,
            heartbeat: None,
            my_ack: None,
            progress,
        }
    }

    pub fn host_id(&self) -> &str {
        &self.host_id
    }
    /// Whether the next round should read the claim documents: a leader about to take a
    /// restore-side step, which a second machine claiming an expected host id must block.
    pub fn wants_claims(&self) -> bool {
        self.lead.is_some()
            && self
                .view
                .as_ref()
                .is_some_and(|v| v.doc.phase.is_restore_side() && !v.doc.restore_completed())
    }
    /// Whether the next reading should hold every host document of the operation, not only
    /// this host's: a leader, or a node whose takeover write is in flight (its result may
    /// arrive with that reading). Followers decide on their own document alone, so the
    /// fleet's reads grow with N, not N².
    pub fn wants_every_host(&self) -> bool {
        self.lead.is_some()
            || self
                .op_write
                .as_ref()
                .is_some_and(|w| w.kind == WriteKind::Takeover)
    }
    /// How soon this node should read the operation again after reading `op` and deciding on
    /// it: [`READ_ACTIVE`](super::READ_ACTIVE) while an operation exists, slower while only its
    /// own host step is in flight (a leader, or a node whose operation write is pending, keeps
    /// the fast pace), the idle watch without one.
    pub fn read_every(&self, op: &OpRead, heartbeat: Duration) -> Duration {
        match op {
            OpRead::Found(_)
                if self.host_step.is_some() && self.lead.is_none() && self.op_write.is_none() =>
            {
                super::READ_DURING_OWN_STEP
            }
            OpRead::Found(_) => super::READ_ACTIVE,
            OpRead::Missing => super::idle_watch_every(heartbeat),
            OpRead::Unreadable | OpRead::Unsupported(_) => super::READ_UNREADABLE,
        }
    }
    /// The epoch this node leads, if it is leader.
    pub fn leading_epoch(&self) -> Option<u64> {
        self.lead.as_ref().map(|l| l.lease.epoch)
    }
    /// The newest operation document this node knows.
    pub fn view(&self) -> Option<&Versioned<OperationDoc>> {
        self.view.as_ref()
    }
    pub fn progress(&self) -> Option<&LocalProgress> {
        self.progress.as_ref()
    }
    /// A probe is waiting for facts read after it was seen: the adapter should read the host's
    /// facts again before the next round instead of reusing cached ones.
    pub fn wants_fresh_facts(&self) -> bool {
        self.probe_seen
            .is_some_and(|(n, _)| self.probe_answered.is_none_or(|a| a < n))
    }

    fn id(&mut self) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn absorb(&mut self, ev: Event, now: Duration, out: &mut Vec<Action>) {
        match ev {
            Event::OpWritten { id, result } => {
                let Some(w) = self.op_write.take_if(|w| w.id == id) else {
                    return;
                };
                if let WriteResult::Ok(ver) = result {
                    let newer = match &self.view {
                        Some(v) => v.doc.id != w.doc.id || ver.is_newer_than(&v.version()),
                        None => true,
                    };
                    if newer {
                        self.view = Some(Versioned::new(ver, w.doc.clone()));
                    }
                    match w.kind {
                        WriteKind::Takeover => {
                            self.lead = Some(Leading {
                                lease: HeldLease {
                                    epoch: w.doc.epoch,
                                    last_renewed: w.sent_at,
                                },
                                op_id: w.doc.id.clone(),
                                mem: LeaderMemory::new(w.doc.phase, now),
                            });
                        }
                        WriteKind::Leader => {
                            if let Some(l) = self
                                .lead
                                .as_mut()
                                .filter(|l| l.lease.epoch == w.doc.epoch && l.op_id == w.doc.id)
                            {
                                l.lease.renewed(w.sent_at);
                            }
                        }
                    }
                }
            }
            Event::HostDocWritten { id, result } => {
                if let Some((_, doc)) = self.host_write.take_if(|(i, _)| *i == id) {
                    match result {
                        WriteResult::Ok(v) => {
                            self.host_version = Some(v);
                            self.host_written = Some(doc);
                        }
                        // Someone else wrote our document: look at who, next round.
                        WriteResult::Conflict => {
                            self.host_version = None;
                            self.host_written = None;
                        }
                        WriteResult::Unknown(_) => self.host_written = None,
                    }
                }
            }
            Event::ClaimWritten { id } => {
                self.claim_write.take_if(|i| *i == id);
            }
            Event::Cluster { id, outcome } => {
                let not_sent = outcome == ClusterOutcome::RestoreNotSent;
                if let Some(l) = self.lead.as_mut() {
                    if l.mem.record(id, outcome, now) && not_sent {
                        self.lead = None;
                        out.push(Action::StopActing {
                            reason:
                                "restore not sent: lease deadline passed; a successor will inspect"
                                    .into(),
                        });
                    }
                }
            }
            Event::HostStepProgress { id, detail } => {
                if self
                    .host_step
                    .as_ref()
                    .is_some_and(|p| p.id == id && p.acks)
                {
                    if let Some(a) = self
                        .my_ack
                        .as_mut()
                        .filter(|a| a.result == StepResult::InProgress)
                    {
                        a.detail = detail;
                    }
                }
            }
            Event::HostStepDone { id, result, detail } => {
                let Some(p) = self.host_step.take_if(|p| p.id == id) else {
                    return;
                };
                if p.acks {
                    let rec = LocalProgress {
                        operation_id: p.op_id.clone(),
                        epoch: p.epoch,
                        step: p.step.kind(),
                        state: ProgressState::Finished {
                            result: result.clone(),
                            detail: detail.clone(),
                        },
                    };
                    self.progress = Some(rec.clone());
                    out.push(Action::RecordProgress(rec));
                    self.my_ack = Some(Ack {
                        operation_id: p.op_id,
                        epoch: p.epoch,
                        step: p.step.kind(),
                        result,
                        detail,
                    });
                }
            }
            Event::Archived { id, ok } => {
                if let Some(Archive::Creating { op_id, .. }) = self
                    .archive
                    .take_if(|a| matches!(a, Archive::Creating { id: i, .. } if *i == id))
                {
                    if ok {
                        if let Some(expected) = self
                            .view
                            .as_ref()
                            .filter(|v| v.doc.id == op_id)
                            .map(|v| v.version())
                        {
                            let id = self.id();
                            self.archive = Some(Archive::Deleting { id });
                            out.push(Action::DeleteOperation { id, expected });
                        }
                    }
                }
            }
            Event::Deleted { id, result } => {
                if self
                    .archive
                    .take_if(|a| matches!(a, Archive::Deleting { id: i } if *i == id))
                    .is_some()
                    && matches!(result, WriteResult::Ok(_))
                {
                    self.view = None;
                    self.observer.clear();
                }
            }
        }
    }

    fn observe(&mut self, read: OpRead, now: Duration, out: &mut Vec<Action>) {
        match read {
            OpRead::Unreadable => {}
            OpRead::Unsupported(why) => {
                self.view = None;
                self.observer.clear();
                out.push(Action::Wait { what: why });
            }
            OpRead::Missing => {
                self.view = None;
                self.observer.clear();
            }
            OpRead::Found(v) => {
                // An operation this agent already saw replaced is over: written back (a copy
                // saved while it ran, validly signed) it is a replay. A terminal one is harmless.
                if self.earlier_ops.contains(&v.doc.id) && !v.doc.phase.is_terminal() {
                    let why = format!(
                        "operation {} was replaced by {} on this host earlier: an ended operation was written back (a replay); not acted on",
                        v.doc.id,
                        self.revision_seen.as_ref().map(|(id, _)| id.as_str()).unwrap_or("a newer one")
                    );
                    return self.refuse_replay(why, out);
                }
                // Every writer raises the revision (signed with the fleet key): an older version
                // of this operation written back is a replay, and is not obeyed.
                match &self.revision_seen {
                    Some((id, r)) if id == &v.doc.id && v.doc.revision < *r => {
                        let why = format!(
                            "operation {} went back from revision {r} to {}: an old version was written back (a replay); not acted on",
                            v.doc.id, v.doc.revision
                        );
                        return self.refuse_replay(why, out);
                    }
                    Some((id, r)) if id == &v.doc.id && v.doc.revision == *r => {}
                    _ => {
                        if let Some((before, _)) = &self.revision_seen {
                            if before != &v.doc.id {
                                self.earlier_ops.push(before.clone());
                                let extra = self
                                    .earlier_ops
                                    .len()
                                    .saturating_sub(EARLIER_OPERATIONS_KEPT);
                                self.earlier_ops.drain(..extra);
                            }
                        }
                        self.revision_seen = Some((v.doc.id.clone(), v.doc.revision));
                        out.push(Action::RecordRevision(RevisionSeen {
                            operation_id: v.doc.id.clone(),
                            revision: v.doc.revision,
                            earlier: self.earlier_ops.clone(),
                        }));
                    }
                }
                self.observer.observe(&v.doc.id, v.version(), now);
                let keep_ours = self.view.as_ref().is_some_and(|mine| {
                    mine.doc.id == v.doc.id && mine.version().is_newer_than(&v.version())
                });
                if !keep_ours {
                    self.view = Some(v);
                }
            }
        }
    }

    /// A replayed operation document: forget the view (nothing is done for it) and step down.
    fn refuse_replay(&mut self, why: String, out: &mut Vec<Action>) {
        self.view = None;
        self.observer.clear();
        if self.lead.take().is_some() {
            out.push(Action::StopActing {
                reason: why.clone(),
            });
        }
        out.push(Action::Wait { what: why });
    }

    /// Deposed? Checked on every call before anything else the leader does.
    fn check_leadership(&mut self, now: Duration, out: &mut Vec<Action>) {
        let Some(l) = &self.lead else { return };
        let reason = match &self.view {
            None => Some("the operation document is gone".to_string()),
            Some(v) if v.doc.id != l.op_id => Some("another operation replaced ours".into()),
            Some(v)
                if v.doc.epoch != l.lease.epoch
                    || v.doc.leader_id() != Some(self.host_id.as_str())
                    || v.doc
                        .leader
                        .as_ref()
                        .and_then(|l| l.machine.as_ref())
                        .is_some_and(|m| {
                            m != &self.cfg.machine
                                && !super::bugs::on(super::bugs::Bug::HostIdMerge)
                        }) =>
            {
                Some(format!(
                    "lease taken over by {} at epoch {}",
                    v.doc.leader_id().unwrap_or("nobody"),
                    v.doc.epoch
                ))
            }
            Some(v) if v.doc.phase.is_terminal() => {
                Some(format!("operation ended {}", v.doc.phase))
            }
            Some(_) if !l.lease.is_valid(now, &self.cfg.lease) => Some(format!(
                "lease not renewed for {:?} (lease {:?} - margin {:?}): deposed",
                now.saturating_sub(l.lease.last_renewed),
                self.cfg.lease.duration,
                self.cfg.lease.margin
            )),
            Some(_) => None,
        };
        if let Some(reason) = reason {
            let ended = self
                .view
                .as_ref()
                .is_some_and(|v| v.doc.phase.is_terminal());
            self.lead = None;
            if !ended {
                out.push(Action::StopActing { reason });
            }
        }
    }
}

/// The highest revision of an operation this agent has seen, persisted across restarts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RevisionSeen {
    pub operation_id: String,
    pub revision: u64,
    /// The operations seen before this one (a file from an older agent has none).
    #[serde(default)]
    pub earlier: Vec<String>,
}

/// How many replaced operations an agent remembers as ended.
pub const EARLIER_OPERATIONS_KEPT: usize = 32;

impl NodeState {
    /// What an earlier process of this agent persisted ([`Action::RecordRevision`]): an older
    /// revision written back while it was down is still a replay.
    pub fn remember_revision(&mut self, seen: RevisionSeen) {
        self.revision_seen = Some((seen.operation_id, seen.revision));
        self.earlier_ops = seen.earlier;
    }
}

/// Advance this node by one round. See the module docs for the contract.
pub fn step(st: &mut NodeState, input: Inputs) -> Vec<Action> {
    let Inputs {
        now,
        wall,
        op,
        hosts,
        every_host,
        own_version,
        facts,
        events,
        claims,
        ping,
    } = input;
    if let Some(c) = claims {
        st.claims = c;
    }
    if ping.is_some() && ping != st.ping_seen {
        st.ping_seen = ping;
        st.ping_due = true;
    }
    let mut out = Vec::new();
    for ev in events {
        st.absorb(ev, now, &mut out);
    }
    st.observe(op, now, &mut out);
    st.check_leadership(now, &mut out);
    archive(st, now, &mut out);
    host_side(st, now, &hosts, own_version, &facts, &mut out);
    if st.foreign.is_some() {
        // Another machine owns our host id: we neither lead nor take the lease.
    } else if st.lead.is_some() {
        if every_host {
            leader_side(st, now, &wall, &hosts, &mut out);
        } else {
            out.push(Action::Wait {
                what: "reading every host's document".into(),
            });
        }
    } else {
        candidate_side(st, now, &wall, &mut out);
    }
    out
}

fn cas(
    st: &mut NodeState,
    now: Duration,
    expected: DocVersion,
    doc: OperationDoc,
    kind: WriteKind,
    why: String,
    out: &mut Vec<Action>,
) {
    let id = st.id();
    out.push(Action::CasWriteOperation {
        id,
        expected,
        doc: doc.clone(),
        why,
    });
    st.op_write = Some(PendingWrite {
        id,
        sent_at: now,
        doc,
        kind,
    });
}

fn archive(st: &mut NodeState, now: Duration, out: &mut Vec<Action>) {
    if st.archive.is_some() || st.op_write.is_some() {
        return;
    }
    let Some(v) = &st.view else { return };
    if !matches!(v.doc.phase, Phase::Done | Phase::Aborted) {
        return;
    }
    // The leader that finished it archives at once; anyone else after a lease of no change
    // (covers a leader that crashed between its last write and the archive).
    let mine = v.doc.leader_id() == Some(st.host_id.as_str());
    if mine || st.observer.unchanged_for(now) >= st.cfg.lease.duration {
        let doc = v.doc.clone();
        let id = st.id();
        st.archive = Some(Archive::Creating {
            id,
            op_id: doc.id.clone(),
        });
        out.push(Action::ArchiveHistory { id, doc });
    }
}

fn host_side(
    st: &mut NodeState,
    now: Duration,
    hosts: &[HostDoc],
    own_version: Option<DocVersion>,
    facts: &HostFacts,
    out: &mut Vec<Action>,
) {
    let own = hosts.iter().find(|h| h.host_id == st.host_id);
    if let Some(why) = foreign_owner(st, now, own, out) {
        out.push(Action::Refused { why });
        return;
    }
    if st.my_ack.is_none() {
        st.my_ack = own.and_then(|h| h.ack.clone());
    }
    if st.heartbeat.is_none() {
        st.heartbeat = Some(own.map_or(0, |h| h.heartbeat));
    }
    if st.probe_answered.is_none() {
        st.probe_answered = Some(own.map_or(0, |h| h.probe_answered));
    }
    // A probe from the leader: answer it with facts read after we saw it.
    if let Some(p) = st.view.as_ref().and_then(|v| v.doc.probe.as_ref()) {
        if st.probe_answered.is_none_or(|a| a < p.n) {
            if st.probe_seen.is_none_or(|(n, _)| n < p.n) {
                st.probe_seen = Some((p.n, now));
            }
            let seen_at = st.probe_seen.expect("just set").1;
            if facts.read_at >= seen_at {
                st.probe_answered = Some(p.n);
            }
        }
    }
    let op = st.view.as_ref().map(|v| &v.doc);
    if st.host_step.is_none() {
        match decide_host_within(
            op,
            &st.host_id,
            st.my_ack.as_ref(),
            facts,
            st.progress.as_ref(),
            &st.cfg.policy,
        ) {
            HostDecision::Idle => {}
            HostDecision::Wait(what) => out.push(Action::Wait { what }),
            HostDecision::Report(ack) => st.my_ack = Some(ack),
            HostDecision::Run {
                step,
                acks,
                resumed,
            } => {
                let op = op.expect("a step needs an operation");
                let (op_id, epoch) = (op.id.clone(), op.epoch);
                let id = st.id();
                if acks {
                    let rec = LocalProgress {
                        operation_id: op_id.clone(),
                        epoch,
                        step: step.kind(),
                        state: ProgressState::Started,
                    };
                    st.progress = Some(rec.clone());
                    out.push(Action::RecordProgress(rec));
                    st.my_ack = Some(Ack {
                        operation_id: op_id.clone(),
                        epoch,
                        step: step.kind(),
                        result: StepResult::InProgress,
                        detail: String::new(),
                    });
                }
                st.host_step = Some(PendingHostStep {
                    id,
                    op_id,
                    epoch,
                    step: step.clone(),
                    acks,
                });
                out.push(Action::RunHostStep { id, step, resumed });
            }
        }
    }
    if st.host_write.is_some() {
        return;
    }
    let desired = HostDoc {
        format: crate::fleet::doc::FORMAT,
        host_id: st.host_id.clone(),
        agent_version: st.cfg.agent_version.clone(),
        unit_state: facts.unit,
        installed_version: facts.installed_version.clone(),
        held: facts.held,
        heartbeat: st.heartbeat.unwrap_or(0),
        ack: st.my_ack.clone(),
        install_history: facts.install_history.clone(),
        machine: Some(st.cfg.machine.clone()),
        probe_answered: st.probe_answered.unwrap_or(0),
        client_addresses: facts.client_addresses.clone(),
        readiness: facts.readiness.clone(),
        kibana_started: facts.kibana_started,
        detection: facts.detection.clone(),
    };
    let same = st.host_written.as_ref().is_some_and(|w| {
        HostDoc {
            heartbeat: desired.heartbeat,
            ..w.clone()
        } == desired
    });
    let hb_due = heartbeat_due(st, now);
    if !same || hb_due {
        st.ping_due = false;
        let hb = st.heartbeat.unwrap_or(0) + 1;
        st.heartbeat = Some(hb);
        st.last_heartbeat = Some(now);
        let doc = HostDoc {
            heartbeat: hb,
            ..desired
        };
        let id = st.id();
        st.host_write = Some((id, doc.clone()));
        let expected = st.host_version.or(own_version);
        out.push(Action::WriteHostDoc { id, doc, expected });
    }
}

/// Whether this round's host document write is due as a heartbeat: every
/// [`FleetConfig::heartbeat_every`] while an operation runs (its leader's checks and a clone's
/// watch count on it), every [`FleetConfig::idle_heartbeat_every`] otherwise — so an idle agent
/// costs its watch and little else — and at once (at most once a second) for a ping not
/// answered yet.
fn heartbeat_due(st: &NodeState, now: Duration) -> bool {
    let Some(last) = st.last_heartbeat else {
        return true;
    };
    let since = now.saturating_sub(last);
    let running = st.view.as_ref().is_some_and(|v| !v.doc.phase.is_terminal());
    let period = if running {
        st.cfg.heartbeat_every
    } else {
        st.cfg.idle_heartbeat_every.max(st.cfg.heartbeat_every)
    };
    since >= period || (st.ping_due && since >= PING_ANSWER_FLOOR)
}

/// A ping is answered at most this often: anyone who can write the ping document can make the
/// agents write, but no faster than this.
const PING_ANSWER_FLOOR: Duration = Duration::from_secs(1);

/// Whether another live machine owns our host id (a cloned VM, a reused hostname): then this
/// agent writes only a claim document naming both, takes no step and never leads. An owner whose
/// heartbeat has not moved for [`FleetConfig::takeover_after`] on our clock is gone (the machine
/// was reinstalled): its document is taken over by CAS — while an operation runs, only by an
/// agent on the same machine (same machine id).
fn foreign_owner(
    st: &mut NodeState,
    now: Duration,
    own: Option<&HostDoc>,
    out: &mut Vec<Action>,
) -> Option<String> {
    if st.host_version.is_some() || super::bugs::on(super::bugs::Bug::HostIdMerge) {
        st.foreign = None;
        return None; // we wrote it last; a foreign write would have failed our CAS
    }
    let other = own.and_then(|d| d.machine.clone().map(|m| (m, d.heartbeat)))?;
    if other.0 == st.cfg.machine {
        st.foreign = None;
        return None;
    }
    let seen = match st.foreign.take() {
        Some((m, hb, since)) if m == other.0 && hb == other.1 => (m, hb, since),
        _ => (other.0.clone(), other.1, now),
    };
    let quiet = now.saturating_sub(seen.2);
    // Taking over mid-operation is safe only from this very machine (its agent reinstalled,
    // the same Kibana unit): another machine's quiet agent may have been paused or cut off
    // while its Kibana runs, stops or restarts, and only its own agent can answer for it.
    let same_machine = other.0.machine_id == st.cfg.machine.machine_id;
    let operation_running = st.view.as_ref().is_some_and(|v| !v.doc.phase.is_terminal());
    st.foreign = Some(seen);
    if quiet >= st.cfg.takeover_after() && (same_machine || !operation_running) {
        st.foreign = None;
        return None; // gone: write over it (CAS on the version we read)
    }
    st.lead = None;
    // The claim is a heartbeat too: written at the heartbeat interval, not every round.
    let due = st
        .last_heartbeat
        .is_none_or(|t| now.saturating_sub(t) >= st.cfg.heartbeat_every);
    if st.claim_write.is_none() && due {
        let id = st.id();
        st.claim_write = Some(id);
        st.last_heartbeat = Some(now);
        st.heartbeat = Some(st.heartbeat.unwrap_or(0) + 1);
        out.push(Action::WriteClaim {
            id,
            doc: ClaimDoc {
                host_id: st.host_id.clone(),
                machine: st.cfg.machine.clone(),
                owner: Some(other.0.clone()),
                heartbeat: st.heartbeat.unwrap_or(0),
            },
        });
    }
    Some(format!(
        "host id {} belongs to {}, not to this {}: give this machine its own coordination.host_id; \
         this agent does nothing until then",
        st.host_id, other.0, st.cfg.machine
    ))
}

/// Not leader: take the lease if nobody holds it or it expired by observation.
fn candidate_side(st: &mut NodeState, now: Duration, wall: &str, out: &mut Vec<Action>) {
    if st.op_write.is_some() {
        return;
    }
    let Some(v) = &st.view else { return };
    let op = &v.doc;
    if op.phase.is_terminal() || !op.is_expected(&st.host_id) {
        return;
    }
    // Only a listed leader stands (coordination.leaders).
    if !super::policy::may_lead(&st.host_id, &st.cfg.policy) {
        return;
    }
    // An operation outside this host's policy is led only to end it in preflight. Its lease
    // holder does not count here: a listed candidate replaces an unlisted one when it expires.
    if op.phase != Phase::Preflight
        && !super::policy::content_violations(op, &st.cfg.policy).is_empty()
    {
        return;
    }
    let free = op.leader.is_none();
    if free || st.observer.expired(&op.id, v.version(), now, &st.cfg.lease) {
        let expected = v.version();
        let doc = takeover(op, &st.host_id, &st.cfg.machine, wall);
        let why = if free {
            "acquiring the free lease".to_string()
        } else {
            format!(
                "lease expired by observation ({:?} unchanged)",
                st.observer.unchanged_for(now)
            )
        };
        cas(st, now, expected, doc, WriteKind::Takeover, why, out);
    }
}

fn leader_side(
    st: &mut NodeState,
    now: Duration,
    wall: &str,
    hosts: &[HostDoc],
    out: &mut Vec<Action>,
) {
    if st.op_write.is_some() {
        return;
    }
    let Some(v) = st.view.clone() else { return };
    let l = st.lead.as_mut().expect("leading");
    if l.mem.phase != v.doc.phase {
        l.mem = LeaderMemory::new(v.doc.phase, now);
    }
    let lease = l.lease;
    let decision = decide_leader(
        &v.doc, hosts, &st.claims, &l.mem, &lease, now, &st.cfg, wall,
    );
    let mut wrote = false;
    match decision {
        LeaderDecision::Write { doc, why } => {
            cas(st, now, v.version(), doc, WriteKind::Leader, why, out);
            wrote = true;
        }
        LeaderDecision::Renew => {
            cas(
                st,
                now,
                v.version(),
                renewal(&v.doc),
                WriteKind::Leader,
                "renewing before the restore".into(),
                out,
            );
            wrote = true;
        }
        LeaderDecision::Run(step) => {
            if l.mem.cluster_inflight.is_none() {
                let id = st.next_id;
                st.next_id += 1;
                let l = st.lead.as_mut().expect("leading");
                l.mem.cluster_inflight = Some((id, step.kind()));
                out.push(Action::RunClusterStep { id, step });
            }
        }
        LeaderDecision::IssueRestore => {
            if l.mem.cluster_inflight.is_none() && l.mem.restore_issued_epoch != Some(lease.epoch) {
                let id = st.next_id;
                st.next_id += 1;
                let l = st.lead.as_mut().expect("leading");
                l.mem.restore_issued_epoch = Some(lease.epoch);
                l.mem.cluster_inflight = Some((id, ClusterStepKind::Restore));
                let step = ClusterStep::Restore {
                    snapshot: v.doc.snapshot.clone(),
                    epoch: lease.epoch,
                    deadline: lease.deadline(&st.cfg.lease),
                };
                out.push(Action::RunClusterStep { id, step });
            }
        }
        LeaderDecision::Wait(what) => out.push(Action::Wait { what }),
        LeaderDecision::StepDown(reason) => {
            // No renewal: the lease runs out and a successor takes over at a new epoch.
            st.lead = None;
            out.push(Action::StopActing { reason });
            return;
        }
    }
    if !wrote && lease.renew_due(now, &st.cfg.lease) {
        cas(
            st,
            now,
            v.version(),
            renewal(&v.doc),
            WriteKind::Leader,
            "lease renewal".into(),
            out,
        );
    }
}
