//! Deterministic randomized simulator: the real decision code ([`step`]) on N agents against an
//! in-memory document store with `_seq_no`/`_primary_term` CAS semantics, a fake cluster
//! (snapshots, restore) and fake hosts (unit, package), under random message delays, clock
//! drift, crashes with restart (memory lost, local progress record kept), long pauses (also right
//! before a restore is sent), lost replies, step failures on both sides of the restore point,
//! and operator aborts. Invariants 1–5 of DESIGN.md are asserted while it runs and at the end.
//! A failing seed is printed with the tail of the event log; re-run it with `SIM_SEED=<n>`.

use super::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// SplitMix64: tiny, fast, good enough, and fully deterministic.
pub(crate) struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub hosts: usize,
    pub faults: bool,
    pub safety: bool,
    pub client_check: bool,
    pub crash_p: f64,
    pub pause_p: f64,
    pub pause_before_restore_p: f64,
    pub pre_fail_p: f64,
    pub post_fail_p: f64,
    pub cluster_fail_p: f64,
    pub lost_reply_p: f64,
    pub abort_at: Option<u64>,
    /// No new faults after this (ms).
    pub faults_until: u64,
    /// Everything must have ended by this (ms).
    pub horizon: u64,
}

impl Params {
    pub fn random(rng: &mut Rng) -> Self {
        let faults = !rng.chance(0.1);
        let f = |rng: &mut Rng, p: f64| if faults { p * rng.unit() * 2.0 } else { 0.0 };
        Params {
            hosts: rng.range(3, 5) as usize,
            faults,
            safety: !rng.chance(0.15),
            client_check: rng.chance(0.3),
            crash_p: f(rng, 0.004),
            pause_p: f(rng, 0.002),
            pause_before_restore_p: f(rng, 0.15),
            pre_fail_p: f(rng, 0.01),
            post_fail_p: f(rng, 0.01),
            cluster_fail_p: f(rng, 0.03),
            lost_reply_p: f(rng, 0.03),
            abort_at: (faults && rng.chance(0.05)).then(|| rng.range(0, 120_000)),
            faults_until: 1_800_000,
            horizon: 4 * 3_600_000,
        }
    }
    pub fn calm(hosts: usize) -> Self {
        Params {
            hosts,
            faults: false,
            safety: true,
            client_check: true,
            crash_p: 0.0,
            pause_p: 0.0,
            pause_before_restore_p: 0.0,
            pre_fail_p: 0.0,
            post_fail_p: 0.0,
            cluster_fail_p: 0.0,
            lost_reply_p: 0.0,
            abort_at: None,
            faults_until: 0,
            horizon: 3_600_000,
        }
    }
}

pub(crate) fn sim_config() -> FleetConfig {
    FleetConfig {
        lease: LeaseConfig {
            duration: Duration::from_secs(10),
            margin: Duration::from_secs(2),
        },
        barrier_timeout: Duration::from_secs(60),
        phase_timeout: Some(Duration::from_secs(300)),
        retry_every: Duration::from_secs(3),
        heartbeat_every: Duration::from_secs(5),
        agent_version: "sim".into(),
        machine: MachineIdentity::default(),
    }
}

#[allow(clippy::large_enum_variant)] // a test-only event queue
enum Ev {
    Wake {
        h: usize,
        inc: u64,
    },
    Deliver {
        h: usize,
        inc: u64,
        op: OpRead,
        hosts: Vec<HostDoc>,
        own_version: Option<DocVersion>,
        facts: HostFacts,
        events: Vec<Event>,
    },
    Exec {
        h: usize,
        inc: u64,
        action: Action,
    },
    Result {
        h: usize,
        inc: u64,
        event: Event,
    },
    HostStepEnd {
        h: usize,
        inc: u64,
        id: RequestId,
    },
    RestoreEnd {
        h: usize,
        inc: u64,
        id: RequestId,
        ok: bool,
        epoch: u64,
    },
    Restart {
        h: usize,
    },
    OperatorAbort,
}

struct Agent {
    node: NodeState,
    inc: u64,
    boot: u64,
    rate: f64,
    paused_until: u64,
    inbox: Vec<Event>,
}

struct Host {
    id: String,
    unit: UnitState,
    installed: semver::Version,
    held: bool,
    agent: Option<Agent>,
    progress: Option<LocalProgress>,
    running: Option<(u64, RequestId, HostStep, Option<String>)>,
    initial_unit: UnitState,
}

pub(crate) struct Report {
    pub outcome: Option<Outcome>,
    pub history: Vec<Phase>,
    pub restores: usize,
    pub takeovers: u64,
    pub end_ms: u64,
    pub counts: BTreeMap<&'static str, u64>,
}

pub(crate) struct World {
    rng: Rng,
    p: Params,
    cfg: FleetConfig,
    t: u64,
    seq: u64,
    q: BTreeMap<(u64, u64), Ev>,
    op: Option<Versioned<OperationDoc>>,
    seq_no: u64,
    term: u64,
    host_docs: BTreeMap<String, HostDoc>,
    /// Each host document's `_seq_no` (the agents CAS-write their own).
    host_seq: BTreeMap<String, u64>,
    history: BTreeMap<String, OperationDoc>,
    kibana_gen: u64,
    safety: BTreeMap<String, u64>,
    restores: BTreeSet<(String, u64)>,
    restore_running: Vec<(String, u64)>,
    restored: BTreeSet<String>,
    restore_broken: BTreeSet<String>,
    hosts: Vec<Host>,
    target: semver::Version,
    original: semver::Version,
    log: Vec<String>,
    violations: Vec<String>,
    next_inc: u64,
    op_id: String,
    terminal_seen: Option<Phase>,
    counts: BTreeMap<&'static str, u64>,
}

impl World {
    pub fn new(seed: u64, p: Params) -> Self {
        let mut rng = Rng::new(seed);
        let target = semver::Version::new(8, 14, 3);
        let original = semver::Version::new(8, 15, 0);
        let hosts = (0..p.hosts)
            .map(|i| {
                (
                    i,
                    if rng.chance(0.1) {
                        UnitState::Failed
                    } else {
                        UnitState::Active
                    },
                )
            })
            .map(|(i, unit)| Host {
                id: format!("host-{}", (b'a' + i as u8) as char),
                unit,
                initial_unit: unit,
                installed: original.clone(),
                held: false,
                agent: None,
                progress: None,
                running: None,
            })
            .collect();
        let mut w = World {
            rng,
            cfg: sim_config(),
            t: 0,
            seq: 0,
            q: BTreeMap::new(),
            op: None,
            seq_no: 0,
            term: 1,
            host_docs: BTreeMap::new(),
            host_seq: BTreeMap::new(),
            history: BTreeMap::new(),
            kibana_gen: 0,
            safety: BTreeMap::new(),
            restores: BTreeSet::new(),
            restore_running: Vec::new(),
            restored: BTreeSet::new(),
            restore_broken: BTreeSet::new(),
            hosts,
            target,
            original,
            log: vec![],
            violations: vec![],
            next_inc: 1,
            op_id: "op-1".into(),
            terminal_seen: None,
            counts: BTreeMap::new(),
            p,
        };
        for h in 0..w.hosts.len() {
            w.start_agent(h);
        }
        let doc = new_operation(NewOperation {
            id: w.op_id.clone(),
            requested_by: "sim".into(),
            requested_at: "t0".into(),
            target_version: w.target.clone(),
            snapshot: SnapshotRef {
                repository: "repo".into(),
                name: "before-upgrade".into(),
                uuid: "u-1".into(),
            },
            safety_snapshot: w.p.safety,
            snapshot_accepted_by: None,
            safety_snapshot_name: None,
            expected_hosts: w.hosts.iter().map(|h| h.id.clone()).collect(),
            barrier_client_check: w.p.client_check,
        })
        .unwrap();
        w.seq_no += 1;
        w.op = Some(Versioned {
            seq_no: w.seq_no,
            primary_term: w.term,
            doc,
        });
        if let Some(at) = w.p.abort_at {
            w.at(at, Ev::OperatorAbort);
        }
        w
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.q.insert((t.max(self.t), self.seq), ev);
    }

    fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    fn note(&mut self, s: String) {
        self.log.push(format!("{:>9}ms {s}", self.t));
    }

    fn violation(&mut self, s: String) {
        self.note(format!("VIOLATION {s}"));
        self.violations.push(format!("t={}ms: {s}", self.t));
    }

    fn faults_on(&self) -> bool {
        self.p.faults && self.t < self.p.faults_until
    }

    fn start_agent(&mut self, h: usize) {
        let inc = self.next_inc;
        self.next_inc += 1;
        let rate = 1.0 + (self.rng.unit() - 0.5) * 0.04; // ±2 %
        let progress = self.hosts[h].progress.clone();
        let mut cfg = self.cfg.clone();
        cfg.machine = MachineIdentity {
            machine_id: format!("m-{h}"),
            instance: format!("i-{h}"),
        };
        let node = NodeState::new(self.hosts[h].id.clone(), cfg, progress);
        self.hosts[h].agent = Some(Agent {
            node,
            inc,
            boot: self.t,
            rate,
            paused_until: 0,
            inbox: vec![],
        });
        let d = self.rng.range(0, 1000);
        self.at(self.t + d, Ev::Wake { h, inc });
    }

    fn clock(&self, h: usize, t: u64) -> Duration {
        let a = self.hosts[h].agent.as_ref().unwrap();
        Duration::from_micros(((t - a.boot) as f64 * a.rate * 1000.0) as u64)
    }

    fn agent_live(&self, h: usize, inc: u64) -> bool {
        self.hosts[h].agent.as_ref().is_some_and(|a| a.inc == inc)
    }

    fn delay(&mut self) -> u64 {
        if self.faults_on() && self.rng.chance(0.05) {
            self.rng.range(500, 4000)
        } else {
            self.rng.range(0, 300)
        }
    }

    fn deliver(&mut self, h: usize, inc: u64, event: Event) {
        let d = self.delay();
        self.at(self.t + d, Ev::Result { h, inc, event });
    }

    fn crash(&mut self, h: usize) {
        let Some(a) = self.hosts[h].agent.take() else {
            return;
        };
        self.count("crashes");
        self.note(format!(
            "{} CRASH (leader epoch {:?})",
            self.hosts[h].id,
            a.node.leading_epoch()
        ));
        if let Some((_, _, step, fail)) = self.hosts[h].running.take() {
            // The systemd job / dpkg run may finish without the agent.
            if fail.is_none() && self.rng.chance(0.5) {
                self.apply_step(h, &step);
            }
        }
        let d = self.rng.range(1000, 40_000);
        self.at(self.t + d, Ev::Restart { h });
    }

    fn apply_step(&mut self, h: usize, step: &HostStep) {
        match step {
            HostStep::StopUnit => self.hosts[h].unit = UnitState::Inactive,
            HostStep::Reinstall { version } => {
                if !self.hosts[h].unit.is_stopped() {
                    self.violation(format!(
                        "{} reinstalled while its unit is {:?}",
                        self.hosts[h].id, self.hosts[h].unit
                    ));
                }
                self.hosts[h].installed = version.clone();
                self.hosts[h].held = true;
            }
            HostStep::StartUnit { .. } | HostStep::AbortRestart => {
                let (id, installed) = (self.hosts[h].id.clone(), self.hosts[h].installed.clone());
                if installed == self.target && !self.restored.contains(&self.op_id) {
                    self.violation(format!(
                        "invariant 3: {id} starts kibana {installed} before the restore completed"
                    ));
                }
                if !self.restore_running.is_empty() {
                    self.violation(format!(
                        "invariant 1: {id} starts kibana while a restore runs"
                    ));
                }
                self.hosts[h].unit = UnitState::Active;
            }
            HostStep::CheckAvailable { .. } | HostStep::Prefetch { .. } => {}
        }
    }

    fn run(&mut self) -> Report {
        let mut takeovers = 0;
        while let Some(((t, _), ev)) = self.q.pop_first() {
            self.t = t;
            if t > self.p.horizon {
                break;
            }
            match ev {
                Ev::Wake { h, inc } => {
                    if !self.agent_live(h, inc) {
                        continue;
                    }
                    if self.hosts[h].unit == UnitState::Active
                        && self.hosts[h].installed == self.original
                    {
                        self.kibana_gen += 1; // Kibana keeps writing its indices
                    }
                    if self.faults_on() && self.rng.chance(self.p.crash_p) {
                        self.crash(h);
                        continue;
                    }
                    let paused_until = self.hosts[h].agent.as_ref().unwrap().paused_until;
                    if paused_until > t {
                        self.at(paused_until, Ev::Wake { h, inc });
                        continue;
                    }
                    let leading = self.hosts[h]
                        .agent
                        .as_ref()
                        .unwrap()
                        .node
                        .leading_epoch()
                        .is_some();
                    if self.faults_on()
                        && self.rng.chance(if leading {
                            self.p.pause_p * 3.0
                        } else {
                            self.p.pause_p
                        })
                    {
                        let until = t + self.rng.range(5_000, 35_000);
                        self.count("pauses");
                        self.note(format!(
                            "{} PAUSE until {until} (leading: {leading})",
                            self.hosts[h].id
                        ));
                        self.hosts[h].agent.as_mut().unwrap().paused_until = until;
                        self.at(until, Ev::Wake { h, inc });
                        continue;
                    }
                    let op = if self.faults_on() && self.rng.chance(0.02) {
                        OpRead::Unreadable
                    } else {
                        match &self.op {
                            Some(v) => OpRead::Found(v.clone()),
                            None => OpRead::Missing,
                        }
                    };
                    let hosts: Vec<HostDoc> = self.host_docs.values().cloned().collect();
                    let own_version = self.host_seq.get(&self.hosts[h].id).map(|s| DocVersion {
                        seq_no: *s,
                        primary_term: 1,
                    });
                    let host = &self.hosts[h];
                    let facts = HostFacts {
                        unit: host.unit,
                        installed_version: Some(host.installed.clone()),
                        held: host.held,
                        install_history: None,
                        read_at: self.clock(h, t),
                        client_addresses: vec![host.id.clone()],
                        readiness: None,
                    };
                    let events = std::mem::take(&mut self.hosts[h].agent.as_mut().unwrap().inbox);
                    let d = self.rng.range(0, 300);
                    self.at(
                        t + d,
                        Ev::Deliver {
                            h,
                            inc,
                            op,
                            hosts,
                            own_version,
                            facts,
                            events,
                        },
                    );
                }
                Ev::Deliver {
                    h,
                    inc,
                    op,
                    hosts,
                    own_version,
                    facts,
                    events,
                } => {
                    if !self.agent_live(h, inc) {
                        continue;
                    }
                    let now = self.clock(h, t);
                    let a = self.hosts[h].agent.as_mut().unwrap();
                    let before = a.node.leading_epoch();
                    let actions = step(
                        &mut a.node,
                        Inputs {
                            now,
                            wall: format!("{t}ms"),
                            op,
                            hosts,
                            own_version,
                            facts,
                            events,
                        },
                    );
                    let after = a.node.leading_epoch();
                    if after.is_some() && after != before {
                        takeovers += 1;
                        self.note(format!("{} LEADS epoch {:?}", self.hosts[h].id, after));
                    }
                    for action in actions {
                        self.dispatch(h, inc, action);
                    }
                    let tick = self.rng.range(800, 1200);
                    self.at(t + tick, Ev::Wake { h, inc });
                }
                Ev::Exec { h, inc, action } => self.exec(h, inc, action),
                Ev::Result { h, inc, event } => {
                    if let Some(a) = self.hosts[h].agent.as_mut().filter(|a| a.inc == inc) {
                        a.inbox.push(event);
                    }
                }
                Ev::HostStepEnd { h, inc, id } => {
                    let matches = matches!(&self.hosts[h].running, Some((i, r, _, _)) if *i == inc && *r == id);
                    if !matches {
                        continue;
                    }
                    let (_, _, step, fail) = self.hosts[h].running.take().unwrap();
                    let (result, detail) = match fail {
                        None => {
                            self.apply_step(h, &step);
                            (StepResult::Ok, "ok".to_string())
                        }
                        Some(cause) => (
                            StepResult::Failed {
                                cause: cause.clone(),
                            },
                            cause,
                        ),
                    };
                    self.note(format!(
                        "{} step {:?} -> {:?}",
                        self.hosts[h].id,
                        step.kind(),
                        result
                    ));
                    self.deliver(h, inc, Event::HostStepDone { id, result, detail });
                }
                Ev::RestoreEnd {
                    h,
                    inc,
                    id,
                    ok,
                    epoch,
                } => {
                    let op_id = self.op_id.clone();
                    self.restore_running.retain(|r| r.1 != epoch);
                    let outcome = if ok {
                        self.restored.insert(op_id.clone());
                        ClusterOutcome::Restore(RestoreResult::Completed(RestoreReport {
                            shards_failed: 0,
                            healthy: true,
                            detail: "ok".into(),
                        }))
                    } else {
                        self.restore_broken.insert(op_id.clone());
                        ClusterOutcome::Restore(RestoreResult::Completed(RestoreReport {
                            shards_failed: 2,
                            healthy: false,
                            detail: "2 shards failed".into(),
                        }))
                    };
                    self.note(format!("restore of {op_id} epoch {epoch} ended ok={ok}"));
                    self.deliver(h, inc, Event::Cluster { id, outcome });
                }
                Ev::Restart { h } => {
                    self.note(format!("{} RESTART", self.hosts[h].id));
                    self.start_agent(h);
                }
                Ev::OperatorAbort => {
                    if let Some(v) = &self.op {
                        if let Ok(doc) = request_abort(&v.doc, "operator", "changed my mind") {
                            self.seq_no += 1;
                            self.op = Some(Versioned {
                                seq_no: self.seq_no,
                                primary_term: self.term,
                                doc,
                            });
                            self.note("operator requested abort".into());
                        }
                    }
                }
            }
            self.check_progress();
            if self.finished() {
                break;
            }
        }
        self.final_checks();
        let doc = self
            .op
            .as_ref()
            .map(|v| v.doc.clone())
            .or_else(|| self.history.get(&self.op_id).cloned());
        Report {
            outcome: doc.as_ref().and_then(outcome),
            history: doc
                .map(|d| {
                    d.history
                        .iter()
                        .filter(|c| c.from != c.to)
                        .map(|c| c.to)
                        .collect()
                })
                .unwrap_or_default(),
            restores: self.restores.len(),
            takeovers,
            end_ms: self.t,
            counts: std::mem::take(&mut self.counts),
        }
    }

    fn dispatch(&mut self, h: usize, inc: u64, action: Action) {
        match action {
            Action::RecordProgress(rec) => self.hosts[h].progress = Some(rec),
            Action::Wait { .. } => {}
            Action::StopActing { reason } => {
                self.count("deposed");
                self.note(format!("{} STOPS ACTING: {reason}", self.hosts[h].id));
            }
            Action::RunHostStep { .. } => self.at(self.t, Ev::Exec { h, inc, action }),
            Action::RunClusterStep {
                step: ClusterStep::Restore { .. },
                ..
            } if self.faults_on() && self.rng.chance(self.p.pause_before_restore_p) => {
                // The process stalls between deciding and sending: longer than the lease.
                let until = self.t + self.rng.range(9_000, 25_000);
                self.note(format!(
                    "{} PAUSE before sending the restore, until {until}",
                    self.hosts[h].id
                ));
                self.hosts[h].agent.as_mut().unwrap().paused_until = until;
                self.at(until, Ev::Exec { h, inc, action });
            }
            _ => {
                let d = self.delay();
                self.at(self.t + d, Ev::Exec { h, inc, action });
            }
        }
    }

    fn exec(&mut self, h: usize, inc: u64, action: Action) {
        let lost = self.faults_on() && self.rng.chance(self.p.lost_reply_p);
        match action {
            Action::CasWriteOperation {
                id,
                expected,
                doc,
                why,
            } => {
                let cur = self.op.as_ref().map(|v| v.version());
                let result = if cur == Some(expected) {
                    let old = self.op.as_ref().map(|v| v.doc.phase).unwrap();
                    if old != doc.phase {
                        let msg = format!(
                            "{} writes {old} -> {} (epoch {}): {why}",
                            self.hosts[h].id, doc.phase, doc.epoch
                        );
                        self.note(msg);
                    }
                    if old.is_terminal() {
                        self.violation(format!("terminal operation rewritten: {why}"));
                    }
                    if self.faults_on() && self.rng.chance(0.01) {
                        self.term += 1; // a primary failover: same seq_no history, new term
                    }
                    self.seq_no += 1;
                    let ver = DocVersion {
                        seq_no: self.seq_no,
                        primary_term: self.term,
                    };
                    self.op = Some(Versioned::new(ver, doc));
                    WriteResult::Ok(ver)
                } else {
                    WriteResult::Conflict
                };
                let result = if lost {
                    WriteResult::Unknown("timeout".into())
                } else {
                    result
                };
                self.deliver(h, inc, Event::OpWritten { id, result });
            }
            Action::ArchiveHistory { id, doc } => {
                self.history.entry(doc.id.clone()).or_insert(doc);
                self.deliver(h, inc, Event::Archived { id, ok: !lost });
            }
            Action::DeleteOperation { id, expected } => {
                let result = if self.op.as_ref().map(|v| v.version()) == Some(expected) {
                    if !self.history.contains_key(&self.op_id) {
                        self.violation("operation deleted before it was archived".into());
                    }
                    self.op = None;
                    self.note(format!("{} deleted the operation", self.hosts[h].id));
                    WriteResult::Ok(expected)
                } else {
                    WriteResult::Conflict
                };
                self.deliver(h, inc, Event::Deleted { id, result });
            }
            Action::WriteHostDoc { id, doc, expected } => {
                let current = self.host_seq.get(&doc.host_id).copied();
                let applies = match (expected, current) {
                    (None, None) => true,
                    (Some(e), Some(c)) => e.seq_no == c,
                    _ => false,
                };
                let result = if applies {
                    self.seq_no += 1;
                    self.host_seq.insert(doc.host_id.clone(), self.seq_no);
                    self.host_docs.insert(doc.host_id.clone(), doc);
                    WriteResult::Ok(DocVersion {
                        seq_no: self.seq_no,
                        primary_term: 1,
                    })
                } else {
                    WriteResult::Conflict
                };
                let result = if lost {
                    WriteResult::Unknown("reply lost".into())
                } else {
                    result
                };
                self.deliver(h, inc, Event::HostDocWritten { id, result });
            }
            Action::WriteClaim { id, .. } => {
                self.violation(format!("{} claims its own host id", self.hosts[h].id));
                self.deliver(h, inc, Event::ClaimWritten { id });
            }
            Action::RunHostStep {
                id,
                step,
                resumed: _,
            } => {
                if !self.agent_live(h, inc) {
                    return;
                }
                if self.hosts[h].running.is_some() {
                    self.violation(format!("{} runs two host steps at once", self.hosts[h].id));
                }
                let post = matches!(
                    step,
                    HostStep::Reinstall { .. } | HostStep::StartUnit { .. }
                );
                let p = if post {
                    self.p.post_fail_p
                } else {
                    self.p.pre_fail_p
                };
                let fail = (self.faults_on() && self.rng.chance(p))
                    .then(|| format!("injected {:?} failure", step.kind()));
                let dur = if self.rng.chance(0.05) {
                    self.rng.range(10_000, 40_000)
                } else {
                    self.rng.range(300, 6000)
                };
                self.hosts[h].running = Some((inc, id, step, fail));
                self.at(self.t + dur, Ev::HostStepEnd { h, inc, id });
            }
            Action::RunClusterStep { id, step } => self.cluster(h, inc, id, step, lost),
            Action::RecordProgress(_) | Action::Wait { .. } | Action::StopActing { .. } => {}
        }
    }

    fn cluster(&mut self, h: usize, inc: u64, id: RequestId, step: ClusterStep, lost: bool) {
        let fail = self.faults_on() && self.rng.chance(self.p.cluster_fail_p);
        let outcome = match step {
            ClusterStep::Preflight { .. } => ClusterOutcome::Preflight(if fail {
                Err("node 8.13.0 too old".into())
            } else {
                Ok(())
            }),
            ClusterStep::CheckKibanaClients { probe } => {
                // Every running Kibana holds an open connection, from its host's address.
                let clients = self
                    .hosts
                    .iter()
                    .map(|x| clients::SeenClient {
                        node: "es1".into(),
                        remote_address: format!("{}:5601", x.id),
                        agent: "kibana".into(),
                        last_request_ms: 0,
                        closed_ms: x.unit.is_stopped().then_some(1),
                        last_uri: "/".into(),
                        ..Default::default()
                    })
                    .collect();
                ClusterOutcome::KibanaClients {
                    probe,
                    stats: Ok(clients::ClientStats {
                        nodes_total: 1,
                        nodes_failed: 0,
                        failed_nodes: vec![],
                        own_connection_seen: true,
                        clients,
                    }),
                }
            }
            ClusterStep::SafetySnapshot { name, .. } => {
                if fail {
                    ClusterOutcome::SafetySnapshot(Err("repository missing".into()))
                } else {
                    if self.hosts.iter().any(|x| !x.unit.is_stopped()) {
                        self.note("safety snapshot taken while a unit runs".into());
                    }
                    self.safety.insert(name, self.kibana_gen);
                    ClusterOutcome::SafetySnapshot(Ok("safety-uuid".into()))
                }
            }
            ClusterStep::Restore {
                snapshot: _,
                epoch,
                deadline,
            } => {
                if !self.agent_live(h, inc) {
                    return; // the process died before sending
                }
                if self.clock(h, self.t) > deadline {
                    self.count("restore not sent (deadline)");
                    self.note(format!(
                        "{} did not send the restore: deadline passed",
                        self.hosts[h].id
                    ));
                    self.deliver(
                        h,
                        inc,
                        Event::Cluster {
                            id,
                            outcome: ClusterOutcome::RestoreNotSent,
                        },
                    );
                    return;
                }
                self.restore_checks(h, epoch);
                if self.restores.iter().any(|(o, _)| *o == self.op_id) {
                    self.count("restore re-issued by a successor");
                }
                self.restores.insert((self.op_id.clone(), epoch));
                self.restore_running.push((self.op_id.clone(), epoch));
                let dur = if self.rng.chance(0.2) {
                    self.rng.range(12_000, 30_000)
                } else {
                    self.rng.range(500, 6_000)
                };
                let ok = !fail;
                self.at(
                    self.t + dur,
                    Ev::RestoreEnd {
                        h,
                        inc,
                        id,
                        ok,
                        epoch,
                    },
                );
                return;
            }
            ClusterStep::InspectRestore { .. } => {
                self.count("restore inspected by a successor");
                ClusterOutcome::InspectRestore(if !self.restore_running.is_empty() {
                    RestoreInspection::InProgress
                } else if self.restored.contains(&self.op_id) {
                    RestoreInspection::Completed
                } else if self.restore_broken.contains(&self.op_id) {
                    RestoreInspection::Unknown("kibana indices partially restored".into())
                } else if fail {
                    RestoreInspection::Unknown("recovery API unavailable".into())
                } else {
                    RestoreInspection::NotStarted
                })
            }
            ClusterStep::VerifyFinal { .. } => {
                let ok = self
                    .hosts
                    .iter()
                    .all(|x| x.unit == UnitState::Active && x.installed == self.target);
                ClusterOutcome::VerifyFinal(if ok && !fail {
                    Ok(())
                } else {
                    Err("kibana not available at target".into())
                })
            }
        };
        // Reply lost: the adapter reports its request timeout as the step's error (it must
        // answer every action), later.
        let outcome = if !lost {
            outcome
        } else {
            let e = || Err("request timed out".to_string());
            match outcome {
                ClusterOutcome::Preflight(_) => ClusterOutcome::Preflight(e()),
                ClusterOutcome::KibanaClients { probe, .. } => ClusterOutcome::KibanaClients {
                    probe,
                    stats: Err("request timed out".into()),
                },
                ClusterOutcome::SafetySnapshot(_) => {
                    ClusterOutcome::SafetySnapshot(Err("request timed out".into()))
                }
                ClusterOutcome::InspectRestore(_) => ClusterOutcome::InspectRestore(
                    RestoreInspection::Unknown("request timed out".into()),
                ),
                ClusterOutcome::VerifyFinal(_) => ClusterOutcome::VerifyFinal(e()),
                other => other,
            }
        };
        let d = if lost { 30_000 } else { 0 };
        self.at(
            self.t + d,
            Ev::Result {
                h,
                inc,
                event: Event::Cluster { id, outcome },
            },
        );
    }

    fn restore_checks(&mut self, h: usize, epoch: u64) {
        let me = self.hosts[h].id.clone();
        self.note(format!("{me} RESTORE sent at epoch {epoch}"));
        // Invariant 1: every expected unit stopped and not about to start.
        for x in 0..self.hosts.len() {
            let host = &self.hosts[x];
            let starting = matches!(
                &host.running,
                Some((_, _, HostStep::StartUnit { .. } | HostStep::AbortRestart, _))
            );
            if !host.unit.is_stopped() || starting {
                let msg = format!(
                    "invariant 1: restore while {} is {:?} (starting: {starting})",
                    host.id, host.unit
                );
                self.violation(msg);
            }
        }
        if !self.restore_running.is_empty() {
            self.violation("invariant 1/2: a restore while another is running".into());
        }
        // Invariant 2: one per epoch, not by a deposed leader.
        if self.restores.contains(&(self.op_id.clone(), epoch)) {
            self.violation(format!("invariant 2: second restore at epoch {epoch}"));
        }
        match &self.op {
            Some(v) if v.doc.epoch == epoch && v.doc.leader_id() == Some(me.as_str()) => {}
            Some(v) => {
                let msg = format!("invariant 2: restore by deposed {me} at epoch {epoch}; document at epoch {} led by {:?}", v.doc.epoch, v.doc.leader_id());
                self.violation(msg);
            }
            None => self.violation("restore without an operation".into()),
        }
        // Invariant 5: what the restore replaces is in the safety snapshot.
        if let Some(v) = &self.op {
            if v.doc.safety_snapshot.enabled {
                let name = v.doc.safety_snapshot.name.clone().unwrap_or_default();
                match self.safety.get(&name) {
                    Some(g) if *g == self.kibana_gen => {}
                    Some(g) => {
                        let msg = format!(
                            "invariant 5: safety snapshot at generation {g}, data at {}",
                            self.kibana_gen
                        );
                        self.violation(msg);
                    }
                    None => {
                        self.violation("invariant 5: restore without the safety snapshot".into())
                    }
                }
            }
        }
    }

    fn check_progress(&mut self) {
        if let Some(v) = &self.op {
            if v.doc.phase.is_terminal() && self.terminal_seen.is_none() {
                self.terminal_seen = Some(v.doc.phase);
                let msg = format!(
                    "operation ended {}: {}",
                    v.doc.phase,
                    waiting_for(&v.doc, &[])
                );
                self.note(msg);
            }
        }
    }

    fn finished(&self) -> bool {
        let archived = self.op.is_none() && self.history.contains_key(&self.op_id);
        let failed = self
            .op
            .as_ref()
            .is_some_and(|v| v.doc.phase == Phase::Failed);
        (archived || failed) && self.hosts.iter().all(|h| h.running.is_none())
    }

    fn final_checks(&mut self) {
        let archived = self.history.get(&self.op_id).cloned();
        let doc = self.op.as_ref().map(|v| v.doc.clone()).or(archived.clone());
        let Some(doc) = doc else {
            self.violation("operation vanished without an archive".into());
            return;
        };
        if !doc.phase.is_terminal() {
            let hosts: Vec<HostDoc> = self.host_docs.values().cloned().collect();
            let msg = format!(
                "invariant 4: not finished by {}ms: {}",
                self.p.horizon,
                waiting_for(&doc, &hosts)
            );
            self.violation(msg);
            return;
        }
        if matches!(doc.phase, Phase::Done | Phase::Aborted)
            && (self.op.is_some() || archived.is_none())
        {
            self.violation(format!("{} operation not archived and deleted", doc.phase));
        }
        match doc.phase {
            Phase::Done => {
                if !self.restored.contains(&self.op_id) {
                    self.violation("done without a completed restore".into());
                }
                for x in &self.hosts {
                    if x.unit != UnitState::Active || x.installed != self.target || !x.held {
                        let msg = format!(
                            "done but {} is {:?} on {} (held {})",
                            x.id, x.unit, x.installed, x.held
                        );
                        self.violations.push(msg);
                    }
                }
            }
            Phase::Aborted => {
                if self.restores.iter().any(|(o, _)| *o == self.op_id) {
                    self.violation("aborted after a restore was issued".into());
                }
                // From preflight nothing was touched; later, every unit was (re)started.
                let untouched = doc
                    .history
                    .iter()
                    .any(|c| c.from == Phase::Preflight && c.to == Phase::Aborted);
                for x in &self.hosts {
                    let unit_ok = if untouched {
                        x.unit == x.initial_unit
                    } else {
                        x.unit == UnitState::Active
                    };
                    if !unit_ok || x.installed != self.original {
                        let msg =
                            format!("aborted but {} is {:?} on {}", x.id, x.unit, x.installed);
                        self.violations.push(msg);
                    }
                }
            }
            Phase::Failed => {
                if doc.error.is_none() {
                    self.violation("failed without host and cause".into());
                }
            }
            _ => unreachable!(),
        }
    }
}

/// Run one seed; on any violation, panic with the seed and the log tail.
pub(crate) fn run_seed(seed: u64, p: Params) -> Report {
    let mut w = World::new(seed, p.clone());
    let report = w.run();
    if !w.violations.is_empty() {
        let tail = w
            .log
            .iter()
            .rev()
            .take(80)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        panic!(
            "simulation seed {seed} (re-run: SIM_SEED={seed} cargo test --lib fleet::sim) violated:\n  {}\nparams: {p:?}\nlog tail:\n{tail}",
            w.violations.join("\n  ")
        );
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn happy_path_goes_through_every_phase() {
        for hosts in 3..=5 {
            let r = run_seed(1000 + hosts as u64, Params::calm(hosts));
            assert_eq!(r.outcome, Some(Outcome::Done));
            assert_eq!(
                r.history,
                vec![
                    Phase::Prefetching,
                    Phase::Stopping,
                    Phase::Barrier,
                    Phase::SafetySnapshot,
                    Phase::Restoring,
                    Phase::Reinstalling,
                    Phase::Starting,
                    Phase::Done
                ]
            );
            assert_eq!(r.restores, 1);
            assert_eq!(r.takeovers, 1, "one leader, no takeover");
        }
    }

    #[test]
    fn without_safety_snapshot_the_barrier_leads_straight_to_restoring() {
        let mut p = Params::calm(3);
        p.safety = false;
        let r = run_seed(7, p);
        assert_eq!(r.outcome, Some(Outcome::Done));
        assert!(!r.history.contains(&Phase::SafetySnapshot));
    }

    #[test]
    fn random_seeds_keep_the_invariants() {
        let (start, n) = match std::env::var("SIM_SEED") {
            Ok(s) => (s.parse().expect("SIM_SEED=<u64>"), 1),
            Err(_) => (
                0u64,
                std::env::var("SIM_SEEDS")
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(2000u64),
            ),
        };
        let began = std::time::Instant::now();
        let mut ends: BTreeMap<String, usize> = BTreeMap::new();
        let (mut takeovers, mut restores) = (0, 0);
        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut latest_end = 0;
        for seed in start..start + n {
            let mut rng = Rng::new(seed.wrapping_mul(7919));
            let p = Params::random(&mut rng);
            let r = run_seed(seed, p);
            let key = match &r.outcome {
                Some(Outcome::Done) => "done".to_string(),
                Some(Outcome::Aborted(_)) => "aborted".into(),
                Some(Outcome::Failed(e)) => format!(
                    "failed: {}",
                    e.as_ref()
                        .map(|e| e.cause.split(':').next().unwrap_or("").to_string())
                        .unwrap_or_default()
                ),
                None => "unfinished".into(),
            };
            *ends.entry(key).or_default() += 1;
            takeovers += r.takeovers;
            latest_end = latest_end.max(r.end_ms);
            for (k, v) in r.counts {
                *counts.entry(k).or_default() += v;
            }
            restores += r.restores;
        }
        let el = began.elapsed();
        eprintln!("{n} seeds in {el:?} ({:.0}/s); latest end at {:.1} simulated min; {takeovers} leaderships, {restores} restores; faults: {counts:?}; outcomes: {ends:#?}", n as f64 / el.as_secs_f64(), latest_end as f64 / 60_000.0);
        if n > 100 {
            assert!(ends.get("done").copied().unwrap_or(0) > 0);
            assert!(ends.get("aborted").copied().unwrap_or(0) > 0);
            assert!(ends.keys().any(|k| k.starts_with("failed")));
        }
    }
}
