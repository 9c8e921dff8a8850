//! Unit tests of the leader decisions, the node's lease handling and bookkeeping, and the
//! status helpers. (Document, lease-rule and host-decision tests live next to their code.)

use super::doc::tests::sample_op;
use super::leader::{decide_leader, LeaderDecision, LeaderMemory};
use super::sim::sim_config;
use super::*;
use std::time::Duration;

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}
fn ver(seq: u64) -> DocVersion {
    DocVersion {
        seq_no: seq,
        primary_term: 1,
    }
}
fn cfg() -> FleetConfig {
    sim_config() // lease 10 s, margin 2 s, barrier 60 s, phase timeout 300 s, retry 3 s
}
fn op_in(phase: Phase) -> OperationDoc {
    let mut op = sample_op();
    op.phase = phase;
    op.epoch = 1;
    op.phase_epoch = 1;
    op.leader = Some(LeaderInfo {
        host_id: "a".into(),
        machine: None,
        renewals: 0,
    });
    if matches!(
        phase,
        Phase::Restoring | Phase::Reinstalling | Phase::Starting
    ) {
        op.safety_snapshot.taken_uuid = Some("safe-1".into());
    }
    // Fresh evidence already asked in this phase (hosts from `all` have answered it); tests of
    // the probe itself clear it.
    if matches!(phase, Phase::Barrier | Phase::Restoring) {
        op.probe = Some(Probe {
            n: 1,
            phase,
            epoch: 1,
        });
    }
    if matches!(phase, Phase::Reinstalling | Phase::Starting) {
        op.restore = Some(RestoreRecord {
            epoch: 1,
            issued: true,
            completed: true,
            superseded_epochs: vec![],
            detail: String::new(),
        });
    }
    op
}
fn hd(id: &str, unit: UnitState, ack: Option<(Step, u64, StepResult)>) -> HostDoc {
    HostDoc {
        format: crate::fleet::doc::FORMAT,
        host_id: id.into(),
        agent_version: "t".into(),
        unit_state: unit,
        installed_version: Some(semver::Version::new(8, 15, 0)),
        held: false,
        heartbeat: 1,
        readiness: None,
        kibana_started: None,
        detection: None,
        ack: ack.map(|(step, epoch, result)| Ack {
            operation_id: "op1".into(),
            epoch,
            step,
            result,
            detail: String::new(),
        }),
        install_history: None,
        machine: None,
        probe_answered: 1,
        client_addresses: vec![format!("10.0.0.{}", id.as_bytes()[0] - b'a' + 1)],
    }
}
/// All three hosts acked `step` OK at epoch 1, units in `unit`.
fn all(step: Step, unit: UnitState) -> Vec<HostDoc> {
    ["a", "b", "c"]
        .iter()
        .map(|h| hd(h, unit, Some((step, 1, StepResult::Ok))))
        .collect()
}
fn lease_at(t: u64) -> HeldLease {
    HeldLease {
        epoch: 1,
        last_renewed: s(t),
    }
}
fn mem(phase: Phase) -> LeaderMemory {
    LeaderMemory::new(phase, s(0))
}
fn decide(op: &OperationDoc, hosts: &[HostDoc], m: &LeaderMemory, now: u64) -> LeaderDecision {
    decide_leader(op, hosts, &[], m, &lease_at(now), s(now), &cfg(), "w")
}
#[track_caller]
fn moves_to(d: LeaderDecision, to: Phase) -> OperationDoc {
    match d {
        LeaderDecision::Write { doc, .. } if doc.phase == to => doc,
        other => panic!("expected a move to {to}, got {other:?}"),
    }
}
#[track_caller]
fn runs(d: LeaderDecision) -> ClusterStep {
    match d {
        LeaderDecision::Run(step) => step,
        other => panic!("expected a cluster step, got {other:?}"),
    }
}
#[track_caller]
fn waits(d: LeaderDecision) -> String {
    match d {
        LeaderDecision::Wait(w) => w,
        other => panic!("expected a wait, got {other:?}"),
    }
}
fn failed(cause: &str) -> StepResult {
    StepResult::Failed {
        cause: cause.into(),
    }
}

// ---------------------------------------------------------------- leader: every transition

#[test]
fn leaving_preflight_records_the_version_the_hosts_acked_with() {
    // `start` recorded what the hosts last published, before their agents saw the upgrade.
    let mut op = op_in(Phase::Preflight);
    op.from_version = Some(semver::Version::new(8, 14, 3));
    let mut m = mem(Phase::Preflight);
    m.preflight = Some(Ok(()));
    let hosts = all(Step::CheckAvailable, UnitState::Active);
    let doc = moves_to(decide(&op, &hosts, &m, 1), Phase::Prefetching);
    assert_eq!(doc.from_version, Some(semver::Version::new(8, 15, 0)));
    // Hosts on different versions: no one version to return to.
    let mut mixed = hosts.clone();
    mixed[2].installed_version = Some(semver::Version::new(8, 14, 3));
    let doc = moves_to(decide(&op, &mixed, &m, 1), Phase::Prefetching);
    assert_eq!(doc.from_version, None);
    // A host set aside (as the tally counts them) does not count.
    op.hosts_failed.push(HostFailure {
        host: "c".into(),
        step: Step::CheckAvailable,
        cause: "gone".into(),
    });
    let doc = moves_to(decide(&op, &mixed, &m, 1), Phase::Prefetching);
    assert_eq!(doc.from_version, Some(semver::Version::new(8, 15, 0)));
}

#[test]
fn preflight_all_ok_moves_to_prefetching_else_aborted_directly() {
    let op = op_in(Phase::Preflight);
    let hosts = all(Step::CheckAvailable, UnitState::Active);
    let mut m = mem(Phase::Preflight);
    assert!(matches!(
        runs(decide(&op, &hosts, &m, 1)),
        ClusterStep::Preflight { .. }
    ));
    m.preflight = Some(Ok(()));
    moves_to(decide(&op, &hosts, &m, 1), Phase::Prefetching);
    // Cluster problem: aborted, nothing changed, cause recorded for the cluster side.
    m.preflight = Some(Err("node es-2 is 8.13.0".into()));
    let doc = moves_to(decide(&op, &hosts, &m, 1), Phase::Aborted);
    assert_eq!(doc.error.as_ref().unwrap().host, None);
    assert!(doc.error.unwrap().cause.contains("8.13.0"));
    // Host problem: aborted naming the host.
    m.preflight = Some(Ok(()));
    let mut hosts2 = hosts.clone();
    hosts2[1].ack.as_mut().unwrap().result = failed("8.14.3 not in repository");
    let doc = moves_to(decide(&op, &hosts2, &m, 1), Phase::Aborted);
    assert_eq!(doc.error.unwrap().host.as_deref(), Some("b"));
    // A host refused before the cluster's verdict: that verdict first, then both causes.
    m.preflight = None;
    assert!(matches!(
        runs(decide(&op, &hosts2, &m, 1)),
        ClusterStep::Preflight { .. }
    ));
    m.preflight = Some(Err("node es-2 is 8.13.0".into()));
    let doc = moves_to(decide(&op, &hosts2, &m, 1), Phase::Aborted);
    let cause = doc.error.unwrap().cause;
    assert!(
        cause.contains("8.13.0") && cause.contains("preflight on b"),
        "{cause}"
    );
    m.preflight = Some(Ok(()));
    // A host that has not answered: wait, then abort after the phase timeout.
    let hosts3 = &hosts[..2];
    assert!(waits(decide(&op, hosts3, &m, 1)).contains("waiting for c"));
    moves_to(decide(&op, hosts3, &m, 301), Phase::Aborted);
}

#[test]
fn host_phases_leave_when_every_host_acked_in_this_operation() {
    for (phase, step, to) in [
        (Phase::Prefetching, Step::Prefetch, Phase::Stopping),
        (Phase::Stopping, Step::StopUnit, Phase::Barrier),
        (Phase::Reinstalling, Step::Reinstall, Phase::Starting),
        (Phase::Aborting, Step::AbortRestart, Phase::Aborted),
    ] {
        let op = op_in(phase);
        let hosts = all(step, UnitState::Inactive);
        let doc = moves_to(decide(&op, &hosts, &mem(phase), 1), to);
        assert_eq!(doc.phase_epoch, 1);
        assert_eq!(doc.history.last().unwrap().from, phase);
        // One host missing: wait and say who.
        assert_eq!(
            waits(decide(&op, &hosts[..2], &mem(phase), 1)),
            format!("{phase}: waiting for c")
        );
    }
}

#[test]
fn acks_of_another_operation_or_an_older_phase_epoch_do_not_count() {
    let mut op = op_in(Phase::Reinstalling);
    op.epoch = 3;
    op.phase_epoch = 3; // re-entered by a resume at epoch 3
    let mut hosts = all(Step::Reinstall, UnitState::Inactive);
    assert!(waits(decide(&op, &hosts, &mem(op.phase), 1)).contains("waiting for a, b, c"));
    for h in &mut hosts {
        h.ack.as_mut().unwrap().epoch = 3;
    }
    hosts[0].ack.as_mut().unwrap().operation_id = "op0".into();
    assert!(waits(decide(&op, &hosts, &mem(op.phase), 1)).contains("waiting for a"));
    hosts[0].ack.as_mut().unwrap().operation_id = "op1".into();
    moves_to(decide(&op, &hosts, &mem(op.phase), 1), Phase::Starting);
}

#[test]
fn host_failure_before_the_restore_point_aborts_after_it_fails() {
    for (phase, step, to) in [
        (Phase::Prefetching, Step::Prefetch, Phase::Aborting),
        (Phase::Stopping, Step::StopUnit, Phase::Aborting),
        (Phase::Aborting, Step::AbortRestart, Phase::Failed),
    ] {
        let op = op_in(phase);
        let mut hosts = all(step, UnitState::Inactive);
        hosts[2].ack.as_mut().unwrap().result = failed("boom");
        let doc = moves_to(decide(&op, &hosts, &mem(phase), 1), to);
        let e = doc.error.unwrap();
        assert_eq!(e.host.as_deref(), Some("c"), "{phase}");
        assert!(e.cause.contains("boom"));
    }
}

#[test]
fn phase_timeout_aborts_before_and_fails_after_the_restore_point() {
    let op = op_in(Phase::Stopping);
    let hosts = &all(Step::StopUnit, UnitState::Inactive)[..1];
    assert!(matches!(
        decide(&op, hosts, &mem(op.phase), 299),
        LeaderDecision::Wait(_)
    ));
    let doc = moves_to(decide(&op, hosts, &mem(op.phase), 300), Phase::Aborting);
    assert!(doc.error.unwrap().cause.contains("b, c"));
    // After the restore point a silent host is set aside; the others go on.
    let op = op_in(Phase::Starting);
    let hosts = &all(Step::StartUnit, UnitState::Active)[..2];
    waits(decide(&op, hosts, &mem(op.phase), 299));
    let LeaderDecision::Write { doc, .. } = decide(&op, hosts, &mem(op.phase), 300) else {
        panic!("sets aside the silent host")
    };
    assert_eq!(doc.phase, Phase::Starting);
    assert_eq!(doc.hosts_failed.len(), 1);
    assert_eq!(doc.hosts_failed[0].host, "c");
    assert!(doc.hosts_failed[0].cause.contains("no acknowledgement"));
}

#[test]
fn after_the_restore_a_failed_host_is_set_aside_and_the_others_serve() {
    // c's reinstall fails: it is set aside, a and b go on to start.
    let op = op_in(Phase::Reinstalling);
    let mut hosts = all(Step::Reinstall, UnitState::Inactive);
    hosts[2].ack.as_mut().unwrap().result = failed("dpkg: error processing kibana (--install)");
    let LeaderDecision::Write { doc: aside, .. } = decide(&op, &hosts, &mem(op.phase), 1) else {
        panic!("sets aside c")
    };
    assert_eq!(aside.phase, Phase::Reinstalling);
    assert!(aside.is_set_aside("c") && !aside.is_set_aside("a"));
    assert!(aside.history.last().unwrap().reason.contains("dpkg: error"));
    let starting = moves_to(decide(&aside, &hosts, &mem(op.phase), 2), Phase::Starting);
    // c, set aside, takes no step and is kept stopped; a and b start.
    let running = HostFacts {
        unit: UnitState::Active,
        ..facts(UnitState::Active)
    };
    match decide_host(Some(&starting), "c", None, &running, None) {
        HostDecision::Run { step, acks, .. } => {
            assert_eq!(step, HostStep::StopUnit);
            assert!(!acks);
        }
        d => panic!("c must be kept stopped: {d:?}"),
    }
    assert!(matches!(
        decide_host(
            Some(&starting),
            "c",
            None,
            &facts(UnitState::Inactive),
            None
        ),
        HostDecision::Wait(_)
    ));
    assert!(matches!(
        decide_host(
            Some(&starting),
            "a",
            None,
            &facts(UnitState::Inactive),
            None
        ),
        HostDecision::Run {
            step: HostStep::StartUnit { .. },
            ..
        }
    ));
    // Every other host started: verify, then `failed` naming c and how to finish it.
    let mut hosts = all(Step::StartUnit, UnitState::Active);
    hosts[2].ack = None;
    let mut m = mem(Phase::Starting);
    assert!(matches!(
        runs(decide(&starting, &hosts, &m, 3)),
        ClusterStep::VerifyFinal { .. }
    ));
    m.verify = Some(Ok(()));
    let end = moves_to(decide(&starting, &hosts, &m, 4), Phase::Failed);
    let e = end.error.as_ref().unwrap();
    assert_eq!(e.host.as_deref(), Some("c"));
    assert!(
        e.cause.contains("2 host(s) serve Kibana 8.14.3")
            && e.cause.contains("c (reinstall: dpkg: error")
            && e.cause.contains("start --resume"),
        "{}",
        e.cause
    );
    // `--resume` redoes reinstalling for everyone (a no-op on a and b, which keep serving).
    let resumed = resume(&end, "ops", "w", false).unwrap();
    assert_eq!(resumed.phase, Phase::Reinstalling);
    assert!(resumed.hosts_failed.is_empty());
    let serving = HostFacts {
        unit: UnitState::Active,
        installed_version: Some(semver::Version::new(8, 14, 3)),
        held: true,
        ..facts(UnitState::Active)
    };
    assert!(
        matches!(
            decide_host(Some(&resumed), "a", None, &serving, None),
            HostDecision::Run {
                step: HostStep::Reinstall { .. },
                acks: true,
                ..
            }
        ),
        "a serving host on the target is not stopped by a resumed reinstall"
    );
}

#[test]
fn every_host_failing_after_the_restore_fails_with_nothing_started() {
    let mut op = op_in(Phase::Reinstalling);
    for h in ["a", "b", "c"] {
        op.hosts_failed.push(HostFailure {
            host: h.into(),
            step: Step::Reinstall,
            cause: "no space".into(),
        });
    }
    let doc = moves_to(decide(&op, &[], &mem(op.phase), 1), Phase::Failed);
    assert!(doc.error.unwrap().cause.contains("failed on every host"));
}

#[test]
fn starting_verifies_then_done_or_failed() {
    let op = op_in(Phase::Starting);
    let hosts = all(Step::StartUnit, UnitState::Active);
    let mut m = mem(Phase::Starting);
    assert!(matches!(
        runs(decide(&op, &hosts, &m, 1)),
        ClusterStep::VerifyFinal { .. }
    ));
    m.cluster_inflight = Some((9, leader::ClusterStepKind::VerifyFinal));
    waits(decide(&op, &hosts, &m, 1));
    m.cluster_inflight = None;
    m.verify = Some(Ok(()));
    let doc = moves_to(decide(&op, &hosts, &m, 1), Phase::Done);
    assert_eq!(outcome(&doc), Some(Outcome::Done));
    m.verify = Some(Err("status degraded".into()));
    let doc = moves_to(decide(&op, &hosts, &m, 1), Phase::Failed);
    assert!(matches!(outcome(&doc), Some(Outcome::Failed(Some(_)))));
}

#[test]
fn barrier_needs_every_unit_confirmed_stopped() {
    let op = op_in(Phase::Barrier);
    let mut hosts = all(Step::StopUnit, UnitState::Inactive);
    moves_to(
        decide(&op, &hosts, &mem(op.phase), 1),
        Phase::SafetySnapshot,
    );
    // A unit reported active again (someone started it): hold.
    hosts[1].unit_state = UnitState::Activating;
    assert!(waits(decide(&op, &hosts, &mem(op.phase), 1))
        .contains("waiting for b to confirm kibana stopped"));
    // ... until the barrier timeout, then abort (nothing has changed yet).
    let doc = moves_to(decide(&op, &hosts, &mem(op.phase), 60), Phase::Aborting);
    assert!(doc.error.unwrap().cause.starts_with("barrier timeout"));
    // A failed stop aborts at once.
    hosts[1].unit_state = UnitState::Active;
    hosts[1].ack.as_mut().unwrap().result = failed("timeout stopping kibana.service");
    moves_to(decide(&op, &hosts, &mem(op.phase), 1), Phase::Aborting);
}

#[test]
fn barrier_skips_the_safety_snapshot_only_when_disabled() {
    let mut op = op_in(Phase::Barrier);
    op.safety_snapshot.enabled = false;
    op.safety_snapshot.name = None;
    moves_to(
        decide(
            &op,
            &all(Step::StopUnit, UnitState::Failed),
            &mem(op.phase),
            1,
        ),
        Phase::Restoring,
    );
}

#[test]
fn barrier_client_check_runs_and_is_retried() {
    use crate::fleet::clients::{ClientStats, SeenClient};
    let mut op = op_in(Phase::Barrier);
    op.barrier_client_check = true;
    let hosts = all(Step::StopUnit, UnitState::Inactive);
    let mut m = mem(op.phase);
    assert_eq!(
        runs(decide(&op, &hosts, &m, 1)),
        ClusterStep::CheckKibanaClients { probe: 1 }
    );
    let stats = |open: bool| ClientStats {
        nodes_total: 1,
        nodes_failed: 0,
        failed_nodes: vec![],
        own_connection_seen: true,
        clients: vec![SeenClient {
            node: "es1".into(),
            remote_address: "10.0.0.9:50000".into(),
            agent: "Kibana/8.15.0".into(),
            last_request_ms: 1,
            closed_ms: (!open).then_some(2),
            last_uri: "/_bulk".into(),
            ..Default::default()
        }],
    };
    // A Kibana nobody controls still connected: the operation document names it.
    m.clients = Some((1, Ok(stats(true)), s(1)));
    let LeaderDecision::Write { doc: named, .. } = decide(&op, &hosts, &m, 2) else {
        panic!("names the live clients")
    };
    assert_eq!(named.barrier_clients.len(), 1);
    assert_eq!(named.barrier_clients[0].address, "10.0.0.9:50000");
    assert_eq!(named.barrier_clients[0].host, None);
    assert!(waits(decide(&named, &hosts, &m, 2)).contains("10.0.0.9"));
    assert!(
        waiting_for(&named, &hosts, &[]).contains("10.0.0.9:50000"),
        "{}",
        waiting_for(&named, &hosts, &[])
    );
    // Retried after retry_every; a reading of another probe does not count.
    assert_eq!(
        runs(decide(&named, &hosts, &m, 4)),
        ClusterStep::CheckKibanaClients { probe: 1 }
    );
    m.clients = Some((0, Ok(stats(false)), s(5)));
    assert_eq!(
        runs(decide(&named, &hosts, &m, 5)),
        ClusterStep::CheckKibanaClients { probe: 1 }
    );
    // Closed: the list is cleared, then the barrier moves on.
    m.clients = Some((1, Ok(stats(false)), s(5)));
    let LeaderDecision::Write { doc: cleared, .. } = decide(&named, &hosts, &m, 5) else {
        panic!("clears the list")
    };
    assert!(cleared.barrier_clients.is_empty());
    moves_to(decide(&cleared, &hosts, &m, 5), Phase::SafetySnapshot);
    // A reading that cannot prove anything aborts, saying how to go on.
    let mut blind = stats(false);
    blind.own_connection_seen = false;
    m.clients = Some((1, Ok(blind), s(6)));
    let d = moves_to(decide(&op, &hosts, &m, 6), Phase::Aborting);
    assert!(d
        .error
        .unwrap()
        .cause
        .contains("coordination.barrier_client_check = false"));
}

#[test]
fn the_barrier_waits_for_a_member_node_that_does_not_answer_and_says_so() {
    use crate::fleet::clients::ClientStats;
    let mut op = op_in(Phase::Barrier);
    op.barrier_client_check = true;
    let hosts = all(Step::StopUnit, UnitState::Inactive);
    let mut m = mem(op.phase);
    let silent = ClientStats {
        nodes_total: 3,
        nodes_failed: 1,
        failed_nodes: vec!["es3".into()],
        own_connection_seen: true,
        clients: vec![],
    };
    m.clients = Some((1, Ok(silent.clone()), s(1)));
    // Recorded for `status`, not an abort.
    let LeaderDecision::Write { doc: waiting, .. } = decide(&op, &hosts, &m, 2) else {
        panic!("records the silent node")
    };
    assert_eq!(waiting.barrier_silent_nodes, ["es3"]);
    assert_eq!(waiting.phase, Phase::Barrier);
    let line = waiting_for(&waiting, &hosts, &[]);
    assert!(line.contains("es3") && line.contains("answer"), "{line}");
    assert!(waits(decide(&waiting, &hosts, &m, 2)).contains("es3"));
    // Asked again after retry_every.
    assert_eq!(
        runs(decide(&waiting, &hosts, &m, 4)),
        ClusterStep::CheckKibanaClients { probe: 1 }
    );
    // The node has left the cluster: two members answer, the barrier goes on.
    let left = ClientStats {
        nodes_total: 2,
        nodes_failed: 0,
        failed_nodes: vec![],
        ..silent.clone()
    };
    m.clients = Some((1, Ok(left), s(5)));
    let LeaderDecision::Write { doc: cleared, .. } = decide(&waiting, &hosts, &m, 5) else {
        panic!("clears the silent nodes")
    };
    assert!(cleared.barrier_silent_nodes.is_empty());
    moves_to(decide(&cleared, &hosts, &m, 5), Phase::SafetySnapshot);
    // Still silent at the barrier timeout: aborted, naming the node.
    m.clients = Some((1, Ok(silent), s(1)));
    let t = cfg().barrier_timeout.as_secs() + 1;
    let d = moves_to(decide(&waiting, &hosts, &m, t), Phase::Aborting);
    assert!(d.error.unwrap().cause.contains("es3"));
}

#[test]
fn a_hosts_stopped_counts_only_as_its_answer_to_a_fresh_probe() {
    let mut op = op_in(Phase::Barrier);
    op.probe = None;
    let mut hosts = all(Step::StopUnit, UnitState::Inactive);
    // No probe yet in this phase: ask one.
    let LeaderDecision::Write { doc: asked, .. } = decide(&op, &hosts, &mem(op.phase), 1) else {
        panic!("asks a probe")
    };
    let p = asked.probe.clone().unwrap();
    assert_eq!((p.phase, p.epoch), (Phase::Barrier, 1));
    // A dead agent's last "stopped" (answered only an older probe) never counts.
    for h in &mut hosts {
        h.probe_answered = p.n - 1;
    }
    hosts[0].probe_answered = p.n;
    let w = waits(decide(&asked, &hosts, &mem(op.phase), 2));
    assert!(w.contains("b, c to confirm kibana stopped afresh"), "{w}");
    // An answer that reports the unit running is no confirmation either.
    hosts[1].probe_answered = p.n;
    hosts[2].probe_answered = p.n;
    hosts[2].unit_state = UnitState::Active;
    assert!(!matches!(
        decide(&asked, &hosts, &mem(op.phase), 3),
        LeaderDecision::Write { ref doc, .. } if doc.phase == Phase::SafetySnapshot
    ));
    hosts[2].unit_state = UnitState::Inactive;
    moves_to(
        decide(&asked, &hosts, &mem(op.phase), 3),
        Phase::SafetySnapshot,
    );
    // A probe of another phase or epoch (a new leader) is asked again.
    let mut older = asked.clone();
    older.epoch = 2;
    assert!(matches!(
        decide(&older, &hosts, &mem(op.phase), 4),
        LeaderDecision::Write { ref doc, .. } if doc.probe.as_ref().unwrap().epoch == 2
    ));
}

#[test]
fn safety_snapshot_then_restoring_or_aborting() {
    let op = op_in(Phase::SafetySnapshot);
    let hosts = all(Step::StopUnit, UnitState::Inactive);
    let mut m = mem(op.phase);
    assert_eq!(
        runs(decide(&op, &hosts, &m, 1)),
        ClusterStep::SafetySnapshot {
            repository: "repo".into(),
            name: "kibana-rollback-pre-op1".into()
        }
    );
    m.safety = Some(Ok("uuid-9".into()));
    let doc = moves_to(decide(&op, &hosts, &m, 1), Phase::Restoring);
    assert_eq!(doc.safety_snapshot.taken_uuid.as_deref(), Some("uuid-9"));
    m.safety = Some(Err("repository_missing_exception".into()));
    moves_to(decide(&op, &hosts, &m, 1), Phase::Aborting);
}

// ---------------------------------------------------------------- restoring

#[test]
fn restore_is_recorded_before_it_is_issued_and_only_with_a_fresh_lease() {
    let op = op_in(Phase::Restoring);
    let hosts = all(Step::StopUnit, UnitState::Inactive);
    let m = mem(op.phase);
    let LeaderDecision::Write { doc, .. } = decide(&op, &hosts, &m, 1) else {
        panic!()
    };
    assert_eq!(doc.phase, Phase::Restoring);
    assert_eq!(
        doc.restore,
        Some(RestoreRecord {
            epoch: 1,
            issued: true,
            completed: false,
            superseded_epochs: vec![],
            detail: String::new()
        })
    );
    // With the record written: issue only if renewed less than lease/3 ago, else renew first.
    let lease = lease_at(10);
    assert_eq!(
        decide_leader(&doc, &hosts, &[], &m, &lease, s(12), &cfg(), "w"),
        LeaderDecision::IssueRestore
    );
    assert_eq!(
        decide_leader(&doc, &hosts, &[], &m, &lease, s(14), &cfg(), "w"),
        LeaderDecision::Renew
    );
    // Once issued at this epoch: wait, never a second one.
    let mut m2 = m.clone();
    m2.restore_issued_epoch = Some(1);
    assert!(waits(decide_leader(
        &doc,
        &hosts,
        &[],
        &m2,
        &lease,
        s(12),
        &cfg(),
        "w"
    ))
    .contains("waiting for the restore"));
}

#[test]
fn restore_is_held_while_any_unit_is_not_confirmed_stopped() {
    let op = op_in(Phase::Restoring);
    let mut hosts = all(Step::StopUnit, UnitState::Inactive);
    hosts[0].unit_state = UnitState::Active;
    assert!(waits(decide(&op, &hosts, &mem(op.phase), 1)).contains("held"));
    // Nothing recorded yet: after the barrier timeout it is still safe to abort.
    moves_to(decide(&op, &hosts, &mem(op.phase), 60), Phase::Aborting);
    // Recorded (maybe issued by a predecessor) and a unit active: never issue; fail after the timeout.
    let mut rec = op.clone();
    rec.restore = Some(RestoreRecord {
        epoch: 1,
        issued: true,
        completed: false,
        superseded_epochs: vec![],
        detail: String::new(),
    });
    let lease = lease_at(1);
    assert!(matches!(
        decide_leader(&rec, &hosts, &[], &mem(op.phase), &lease, s(1), &cfg(), "w"),
        LeaderDecision::Wait(_)
    ));
    moves_to(
        decide_leader(
            &rec,
            &hosts,
            &[],
            &mem(op.phase),
            &lease_at(60),
            s(60),
            &cfg(),
            "w",
        ),
        Phase::Failed,
    );
    // restoring -> aborting is refused by the document layer once a restore is recorded.
    assert!(transition(&rec, Phase::Aborting, Mover::Leader, "x", "w").is_err());
    // A failed stop with nothing recorded aborts at once.
    hosts[0].ack.as_mut().unwrap().result = failed("unit refuses to stop");
    moves_to(decide(&op, &hosts, &mem(op.phase), 1), Phase::Aborting);
}

#[test]
fn restore_result_completes_or_fails_never_aborts() {
    let mut op = op_in(Phase::Restoring);
    op.restore = Some(RestoreRecord {
        epoch: 1,
        issued: true,
        completed: false,
        superseded_epochs: vec![],
        detail: String::new(),
    });
    let hosts = all(Step::StopUnit, UnitState::Inactive);
    let mut m = mem(op.phase);
    m.restore_issued_epoch = Some(1);
    m.restore = Some(RestoreResult::Completed(RestoreReport {
        shards_failed: 0,
        healthy: true,
        detail: "12 shards".into(),
    }));
    let doc = moves_to(decide(&op, &hosts, &m, 1), Phase::Reinstalling);
    assert!(doc.restore_completed());
    m.restore = Some(RestoreResult::Completed(RestoreReport {
        shards_failed: 3,
        healthy: false,
        detail: String::new(),
    }));
    let doc = moves_to(decide(&op, &hosts, &m, 1), Phase::Failed);
    assert!(doc.error.unwrap().cause.contains("3 shards failed"));
    m.restore = Some(RestoreResult::Failed(
        "security_exception: no write on restricted indices".into(),
    ));
    moves_to(decide(&op, &hosts, &m, 1), Phase::Failed);
    // Refused before anything happened: failed, saying nothing was restored.
    m.restore = Some(RestoreResult::Refused("snapshot missing".into()));
    let doc = moves_to(decide(&op, &hosts, &m, 1), Phase::Failed);
    assert!(doc.error.unwrap().cause.contains("nothing was restored"));
    // No answer: never assumed either way — inspected; at most one restore per epoch, so an
    // inspection that finds nothing makes this leader step down for a successor's epoch.
    m.restore = Some(RestoreResult::Unknown("connection reset".into()));
    assert!(matches!(
        runs(decide(&op, &hosts, &m, 1)),
        ClusterStep::InspectRestore {
            recorded_epoch: 1,
            ..
        }
    ));
    m.inspect = Some((RestoreInspection::InProgress, s(1)));
    waits(decide(&op, &hosts, &m, 2));
    m.inspect = Some((RestoreInspection::Completed, s(5)));
    moves_to(decide(&op, &hosts, &m, 5), Phase::Reinstalling);
    m.inspect = Some((RestoreInspection::NotStarted, s(5)));
    assert!(matches!(
        decide(&op, &hosts, &m, 5),
        LeaderDecision::StepDown(_)
    ));
    m.inspect = None;
    // An operator's abort request past the restore point is ignored.
    op.abort_requested = Some(AbortRequest {
        by: "bob".into(),
        reason: "x".into(),
    });
    m.restore = None;
    assert!(matches!(
        decide(&op, &hosts, &m, 1),
        LeaderDecision::Wait(_)
    ));
}

#[test]
fn a_successor_inspects_an_unfinished_restore_of_an_older_epoch() {
    let mut op = op_in(Phase::Restoring);
    op.epoch = 2;
    op.leader = Some(LeaderInfo {
        host_id: "b".into(),
        machine: None,
        renewals: 0,
    });
    op.restore = Some(RestoreRecord {
        epoch: 1,
        issued: true,
        completed: false,
        superseded_epochs: vec![],
        detail: String::new(),
    });
    // The successor has its own fresh evidence (a probe of its epoch, answered).
    op.probe.as_mut().unwrap().epoch = 2;
    let hosts = all(Step::StopUnit, UnitState::Inactive);
    let mut m = mem(op.phase);
    let lease = HeldLease {
        epoch: 2,
        last_renewed: s(1),
    };
    let d = |m: &LeaderMemory, now| decide_leader(&op, &hosts, &[], m, &lease, s(now), &cfg(), "w");
    assert_eq!(
        runs(d(&m, 1)),
        ClusterStep::InspectRestore {
            snapshot: op.snapshot.clone(),
            recorded_epoch: 1,
            after: Some("kibana-rollback-pre-op1".into()),
        }
    );
    m.inspect = Some((RestoreInspection::InProgress, s(1)));
    assert!(waits(d(&m, 2)).contains("still running"));
    assert!(matches!(runs(d(&m, 4)), ClusterStep::InspectRestore { .. }));
    m.inspect = Some((RestoreInspection::Completed, s(4)));
    let doc = moves_to(d(&m, 4), Phase::Reinstalling);
    assert!(doc.restore_completed());
    // "Not started" is believed only after the grace (sim config: 8 s) that covers a late send.
    m.inspect = Some((RestoreInspection::NotStarted, s(4)));
    assert!(waits(d(&m, 5)).contains("before concluding it never started"));
    assert!(matches!(runs(d(&m, 7)), ClusterStep::InspectRestore { .. }));
    m.inspect = Some((RestoreInspection::NotStarted, s(8)));
    let LeaderDecision::Write { doc, .. } = d(&m, 8) else {
        panic!()
    };
    assert_eq!(
        doc.restore.unwrap(),
        RestoreRecord {
            epoch: 2,
            issued: true,
            completed: false,
            superseded_epochs: vec![1],
            detail: String::new()
        }
    );
    m.inspect = Some((RestoreInspection::Unknown("recovery API 403".into()), s(4)));
    let doc = moves_to(d(&m, 4), Phase::Failed);
    let cause = doc.error.unwrap().cause;
    assert!(
        cause.contains("restore outcome unknown after leader change")
            && cause.contains("--resume")
            && cause.contains("repo/snap"),
        "{cause}"
    );
}

#[test]
fn operator_abort_is_honoured_before_the_restore_point() {
    for (phase, to) in [
        (Phase::Preflight, Phase::Aborted),
        (Phase::Prefetching, Phase::Aborting),
        (Phase::Stopping, Phase::Aborting),
        (Phase::Barrier, Phase::Aborting),
        (Phase::SafetySnapshot, Phase::Aborting),
    ] {
        let op = request_abort(&op_in(phase), "bob", "wrong snapshot").unwrap();
        let doc = moves_to(decide(&op, &[], &mem(phase), 1), to);
        assert!(doc
            .error
            .unwrap()
            .cause
            .contains("aborted by bob: wrong snapshot"));
    }
    for phase in [
        Phase::Restoring,
        Phase::Reinstalling,
        Phase::Starting,
        Phase::Aborting,
        Phase::Done,
        Phase::Failed,
    ] {
        assert!(request_abort(&op_in(phase), "bob", "x").is_err(), "{phase}");
    }
}

// ---------------------------------------------------------------- node: lease and bookkeeping

fn facts(unit: UnitState) -> HostFacts {
    HostFacts {
        unit,
        installed_version: Some(semver::Version::new(8, 15, 0)),
        held: false,
        install_history: None,
        read_at: Duration::ZERO,
        client_addresses: vec![],
        readiness: None,
        kibana_started: None,
        detection: None,
    }
}
fn input(
    now: u64,
    op: Option<(u64, &OperationDoc)>,
    hosts: Vec<HostDoc>,
    events: Vec<Event>,
) -> Inputs {
    Inputs {
        now: s(now),
        wall: format!("{now}s"),
        op: match op {
            Some((seq, d)) => OpRead::Found(Versioned::new(ver(seq), d.clone())),
            None => OpRead::Missing,
        },
        hosts,
        every_host: true,
        own_version: None,
        facts: facts(UnitState::Active),
        events,
        claims: None,
        ping: None,
    }
}
/// The round in which stop step ID ended well: the unit is inactive.
fn stop_done(now: u64, op: &OperationDoc, id: RequestId) -> Inputs {
    let mut inp = input(
        now,
        Some((3, op)),
        vec![],
        vec![Event::HostStepDone {
            id,
            result: StepResult::Ok,
            detail: "inactive".into(),
        }],
    );
    inp.facts = facts(UnitState::Inactive);
    inp
}
fn cas_of(actions: &[Action]) -> Option<(RequestId, DocVersion, OperationDoc)> {
    actions.iter().find_map(|a| match a {
        Action::CasWriteOperation {
            id, expected, doc, ..
        } => Some((*id, *expected, doc.clone())),
        _ => None,
    })
}
fn stop_acting(actions: &[Action]) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::StopActing { .. }))
}
fn written(id: RequestId, seq: u64) -> Event {
    Event::OpWritten {
        id,
        result: WriteResult::Ok(ver(seq)),
    }
}

/// Makes node "a" leader of a fresh operation at epoch 1; returns (node, doc, seq).
fn leader_a(now: u64) -> (NodeState, OperationDoc, u64) {
    let (n, doc, seq, _) = leader_a_acts(now);
    (n, doc, seq)
}
fn leader_a_acts(now: u64) -> (NodeState, OperationDoc, u64, Vec<Action>) {
    let mut n = NodeState::new("a", cfg(), None);
    let op = sample_op();
    let acts = step(&mut n, input(now, Some((1, &op)), vec![], vec![]));
    let (id, expected, doc) = cas_of(&acts).expect("acquires a free lease at once");
    assert_eq!(expected, ver(1));
    assert_eq!(doc.epoch, 1);
    assert_eq!(doc.leader_id(), Some("a"));
    let acts = step(
        &mut n,
        input(now, Some((1, &op)), vec![], vec![written(id, 2)]),
    );
    assert_eq!(n.leading_epoch(), Some(1));
    (n, doc, 2, acts)
}

#[test]
fn a_free_lease_is_acquired_and_renewed_every_third_of_the_lease() {
    let (mut n, doc, seq) = leader_a(100);
    // Renewal due 10/3 s after the acquisition was *sent*.
    let acts = step(&mut n, input(103, Some((seq, &doc)), vec![], vec![]));
    assert!(cas_of(&acts).is_none_or(
        |(_, _, d)| d.phase != Phase::Preflight || d.leader.as_ref().unwrap().renewals == 0
    ));
    let acts = step(&mut n, input(104, Some((seq, &doc)), vec![], vec![]));
    let (id, expected, renewed) = cas_of(&acts).expect("renewal");
    assert_eq!(expected, ver(seq));
    assert_eq!(renewed.leader.as_ref().unwrap().renewals, 1);
    assert_eq!(renewed.epoch, 1);
    // Its success (sent at 104) keeps the lease valid until 104 + 10 - 2.
    step(
        &mut n,
        input(104, Some((seq, &doc)), vec![], vec![written(id, seq + 1)]),
    );
    let acts = step(
        &mut n,
        input(111, Some((seq + 1, &renewed)), vec![], vec![]),
    );
    assert!(!stop_acting(&acts));
    assert_eq!(n.leading_epoch(), Some(1));
}

#[test]
fn a_deposed_leader_stops_acting_and_does_not_come_back_by_itself() {
    let (mut n, doc, seq) = leader_a(100);
    // Its renewals conflict or get lost from now on; at 100 + 10 - 2 it must stop.
    let acts = step(&mut n, input(104, Some((seq, &doc)), vec![], vec![]));
    let (id, _, _) = cas_of(&acts).unwrap_or_else(|| panic!("{acts:?}"));
    let acts = step(
        &mut n,
        input(
            105,
            Some((seq, &doc)),
            vec![],
            vec![Event::OpWritten {
                id,
                result: WriteResult::Unknown("timeout".into()),
            }],
        ),
    );
    let (id2, _, _) = cas_of(&acts).expect("retries the renewal");
    let acts = step(
        &mut n,
        input(
            107,
            Some((seq, &doc)),
            vec![],
            vec![Event::OpWritten {
                id: id2,
                result: WriteResult::Conflict,
            }],
        ),
    );
    assert!(!stop_acting(&acts));
    // (A conflict is not a deposition by itself: the doc still names a at epoch 1.)
    let id3 = cas_of(&acts).map(|c| c.0);
    let acts = step(&mut n, input(108, Some((seq, &doc)), vec![], vec![]));
    assert!(stop_acting(&acts), "{acts:?}");
    assert_eq!(n.leading_epoch(), None);
    assert!(!acts
        .iter()
        .any(|a| matches!(a, Action::RunClusterStep { .. })));
    // As a candidate it waits for expiry by observation like anyone else: it first *read*
    // this version at 104, so not before 114.
    let answered: Vec<Event> = id3
        .into_iter()
        .map(|id| Event::OpWritten {
            id,
            result: WriteResult::Conflict,
        })
        .collect();
    let acts = step(&mut n, input(113, Some((seq, &doc)), vec![], answered));
    assert!(cas_of(&acts).is_none());
    let acts = step(&mut n, input(114, Some((seq, &doc)), vec![], vec![]));
    assert_eq!(
        cas_of(&acts).unwrap().2.epoch,
        2,
        "takeover bumps the epoch"
    );
}

#[test]
fn a_leader_that_sees_another_epoch_stops_at_once() {
    let (mut n, doc, seq) = leader_a(100);
    let other = lease::takeover(&doc, "b", &MachineIdentity::default(), "w");
    let acts = step(&mut n, input(101, Some((seq + 1, &other)), vec![], vec![]));
    assert!(stop_acting(&acts));
    assert_eq!(n.leading_epoch(), None);
}

#[test]
fn a_candidate_takes_over_only_after_a_whole_lease_without_change_on_its_own_clock() {
    let mut op = sample_op();
    op.epoch = 1;
    op.leader = Some(LeaderInfo {
        host_id: "a".into(),
        machine: None,
        renewals: 0,
    });
    let mut b = NodeState::new("b", cfg(), None);
    let mut seq = 5;
    // The leader keeps renewing: no takeover, however long.
    for t in (1000..1100).step_by(3) {
        seq += 1;
        op.leader.as_mut().unwrap().renewals += 1;
        let acts = step(&mut b, input(t, Some((seq, &op)), vec![], vec![]));
        assert!(
            cas_of(&acts).is_none(),
            "takeover at {t} while the leader renews"
        );
    }
    // It stops renewing at 1099 (b saw that version at 1099): expiry at 1109, not earlier.
    for t in 1100..1108 {
        assert!(cas_of(&step(&mut b, input(t, Some((seq, &op)), vec![], vec![]))).is_none());
    }
    let acts = step(&mut b, input(1109, Some((seq, &op)), vec![], vec![]));
    let (id, expected, doc) = cas_of(&acts).expect("takeover");
    assert_eq!(expected, ver(seq));
    assert_eq!((doc.epoch, doc.leader_id()), (2, Some("b")));
    // Conflict: someone else won; b stays a candidate and watches the new version afresh.
    step(
        &mut b,
        input(
            1109,
            Some((seq, &op)),
            vec![],
            vec![Event::OpWritten {
                id,
                result: WriteResult::Conflict,
            }],
        ),
    );
    assert_eq!(b.leading_epoch(), None);
    let c_doc = lease::takeover(&op, "c", &MachineIdentity::default(), "w");
    let acts = step(&mut b, input(1110, Some((seq + 1, &c_doc)), vec![], vec![]));
    assert!(cas_of(&acts).is_none());
}

#[test]
fn agents_not_expected_never_take_the_lease() {
    let mut z = NodeState::new("z", cfg(), None);
    let acts = step(&mut z, input(1, Some((1, &sample_op())), vec![], vec![]));
    assert!(cas_of(&acts).is_none());
}

#[test]
fn leader_issues_restore_with_the_lease_deadline_and_only_once() {
    let (mut n, _, _) = leader_a(100);
    let mut op = op_in(Phase::Restoring);
    op.restore = Some(RestoreRecord {
        epoch: 1,
        issued: true,
        completed: false,
        superseded_epochs: vec![],
        detail: String::new(),
    });
    let hosts = all(Step::StopUnit, UnitState::Inactive);
    // Phase change seen: a renewal is not due yet (acquired at 100), so it issues.
    let acts = step(&mut n, input(101, Some((9, &op)), hosts.clone(), vec![]));
    let restores: Vec<_> = acts
        .iter()
        .filter_map(|a| match a {
            Action::RunClusterStep {
                id,
                step:
                    ClusterStep::Restore {
                        epoch, deadline, ..
                    },
            } => Some((*id, *epoch, *deadline)),
            _ => None,
        })
        .collect();
    assert_eq!(restores.len(), 1, "{acts:?}");
    let (rid, epoch, deadline) = restores[0];
    assert_eq!((epoch, deadline), (1, s(108)));
    for t in 102..104 {
        let acts = step(&mut n, input(t, Some((9, &op)), hosts.clone(), vec![]));
        assert!(
            !acts
                .iter()
                .any(|a| matches!(a, Action::RunClusterStep { .. })),
            "second restore at {t}"
        );
    }
    // Adapter refused to send it (deadline passed): the leader steps down.
    let acts = step(
        &mut n,
        input(
            104,
            Some((9, &op)),
            hosts,
            vec![Event::Cluster {
                id: rid,
                outcome: ClusterOutcome::RestoreNotSent,
            }],
        ),
    );
    assert!(stop_acting(&acts));
    assert_eq!(n.leading_epoch(), None);
}

#[test]
fn stale_results_are_ignored() {
    let (mut n, doc, seq, acts) = leader_a_acts(100);
    // The new leader starts on the phase's cluster step in the same round.
    let pid = acts
        .iter()
        .find_map(|a| match a {
            Action::RunClusterStep { id, .. } => Some(*id),
            _ => None,
        })
        .expect("preflight");
    // A result with an unknown id (e.g. from before a takeover) changes nothing.
    let acts = step(
        &mut n,
        input(
            101,
            Some((seq, &doc)),
            vec![],
            vec![Event::Cluster {
                id: pid + 100,
                outcome: ClusterOutcome::Preflight(Err("x".into())),
            }],
        ),
    );
    assert!(cas_of(&acts).is_none());
    // The right one is used.
    let acts = step(
        &mut n,
        input(
            101,
            Some((seq, &doc)),
            vec![],
            vec![Event::Cluster {
                id: pid,
                outcome: ClusterOutcome::Preflight(Err("old ES".into())),
            }],
        ),
    );
    assert_eq!(cas_of(&acts).unwrap().2.phase, Phase::Aborted);
}

#[test]
fn host_step_is_recorded_before_it_runs_and_acked_after() {
    let mut n = NodeState::new("b", cfg(), None);
    let op = op_in(Phase::Stopping);
    let acts = step(&mut n, input(1, Some((3, &op)), vec![], vec![]));
    let rec = acts.iter().position(|a| matches!(a, Action::RecordProgress(p) if p.state == ProgressState::Started && p.step == Step::StopUnit));
    let run = acts.iter().position(|a| {
        matches!(
            a,
            Action::RunHostStep {
                step: HostStep::StopUnit,
                resumed: false,
                ..
            }
        )
    });
    assert!(rec.is_some() && run.is_some() && rec < run, "{acts:?}");
    let id = match &acts[run.unwrap()] {
        Action::RunHostStep { id, .. } => *id,
        _ => unreachable!(),
    };
    let first_write = acts.iter().find_map(|a| match a {
        Action::WriteHostDoc { id, .. } => Some(*id),
        _ => None,
    });
    // No second run while it is in flight.
    let acts = step(&mut n, input(2, Some((3, &op)), vec![], vec![]));
    assert!(!acts.iter().any(|a| matches!(a, Action::RunHostStep { .. })));
    // What it is doing meanwhile goes into the in-progress ack (status shows it); progress of
    // another step is ignored.
    let written = |acts: &[Action]| {
        acts.iter().find_map(|a| match a {
            Action::WriteHostDoc { id, doc, .. } => Some((*id, doc.clone())),
            _ => None,
        })
    };
    let mut pending = written(&acts).map(|(i, _)| i).or(first_write);
    let mut seen = None;
    for (t, events) in [
        (
            2,
            vec![Event::HostStepProgress {
                id: id + 100,
                detail: "someone else's".into(),
            }],
        ),
        (
            2,
            vec![Event::HostStepProgress {
                id,
                detail: "waiting for the package manager's lock: pid 7 (unattended-upgr)".into(),
            }],
        ),
        (2, vec![]),
    ] {
        let mut ev = events;
        if let Some(w) = pending.take() {
            ev.push(Event::HostDocWritten {
                id: w,
                result: WriteResult::Ok(ver(9)),
            });
        }
        let acts = step(&mut n, input(t, Some((3, &op)), vec![], ev));
        if let Some((w, doc)) = written(&acts) {
            pending = Some(w);
            seen = Some(doc);
        }
    }
    let ack = seen.expect("the ack is written again").ack.unwrap();
    assert_eq!(ack.result, StepResult::InProgress);
    assert!(ack.detail.contains("pid 7 (unattended-upgr)"), "{ack:?}");
    let acts = step(&mut n, stop_done(3, &op, id));
    assert!(acts.iter().any(|a| matches!(a, Action::RecordProgress(p) if matches!(p.state, ProgressState::Finished { .. }))));
    let doc = acts.iter().find_map(|a| match a {
        Action::WriteHostDoc { doc, .. } => Some(doc.clone()),
        _ => None,
    });
    // The previous host-doc write is still in flight, so the ack goes out once it is answered.
    let doc = doc.or_else(|| {
        let mut inp = input(
            4,
            Some((3, &op)),
            vec![],
            vec![
                Event::HostDocWritten {
                    id: 2,
                    result: WriteResult::Ok(ver(3)),
                },
                Event::HostDocWritten {
                    id: 3,
                    result: WriteResult::Ok(ver(4)),
                },
            ],
        );
        inp.facts = facts(UnitState::Inactive);
        step(&mut n, inp).into_iter().find_map(|a| match a {
            Action::WriteHostDoc { doc, .. } => Some(doc),
            _ => None,
        })
    });
    let doc = doc.expect("host doc with the ack");
    assert_eq!(doc.unit_state, UnitState::Inactive);
    let ack = doc.ack.unwrap();
    assert_eq!(
        (ack.step, ack.epoch, ack.result),
        (Step::StopUnit, 1, StepResult::Ok)
    );
}

#[test]
fn after_a_crash_the_same_step_is_resumed_or_reported() {
    let op = op_in(Phase::Reinstalling);
    let started = LocalProgress {
        operation_id: "op1".into(),
        epoch: 1,
        step: Step::Reinstall,
        state: ProgressState::Started,
    };
    let mut n = NodeState::new("b", cfg(), Some(started.clone()));
    let mut inp = input(1, Some((3, &op)), vec![], vec![]);
    inp.facts = facts(UnitState::Inactive);
    let acts = step(&mut n, inp);
    assert!(
        acts.iter().any(|a| matches!(
            a,
            Action::RunHostStep {
                step: HostStep::Reinstall { .. },
                resumed: true,
                ..
            }
        )),
        "{acts:?}"
    );
    let finished = LocalProgress {
        state: ProgressState::Finished {
            result: StepResult::Ok,
            detail: "held".into(),
        },
        ..started
    };
    let mut n = NodeState::new("b", cfg(), Some(finished));
    let mut inp = input(1, Some((3, &op)), vec![], vec![]);
    inp.facts = facts(UnitState::Inactive);
    let acts = step(&mut n, inp);
    assert!(!acts.iter().any(|a| matches!(a, Action::RunHostStep { .. })));
    let doc = acts
        .iter()
        .find_map(|a| match a {
            Action::WriteHostDoc { doc, .. } => Some(doc.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(doc.ack.unwrap().result, StepResult::Ok);
}

#[test]
fn a_finished_operation_is_archived_then_deleted_by_its_leader() {
    let (mut n, _, _) = leader_a(100);
    let mut op = op_in(Phase::Done);
    op.restore = Some(RestoreRecord {
        epoch: 1,
        issued: true,
        completed: true,
        superseded_epochs: vec![],
        detail: String::new(),
    });
    let acts = step(&mut n, input(101, Some((20, &op)), vec![], vec![]));
    let aid = acts
        .iter()
        .find_map(|a| match a {
            Action::ArchiveHistory { id, doc } if doc.id == "op1" => Some(*id),
            _ => None,
        })
        .expect("archive");
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::DeleteOperation { .. })),
        "not before the archive exists"
    );
    let acts = step(
        &mut n,
        input(
            102,
            Some((20, &op)),
            vec![],
            vec![Event::Archived { id: aid, ok: true }],
        ),
    );
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::DeleteOperation { expected, .. } if *expected == ver(20))));
    // A failed operation stays: it is the lock, and `--resume` continues it.
    let (mut n, _, _) = leader_a(100);
    let mut f = op_in(Phase::Failed);
    f.error = Some(OpError {
        host: Some("c".into()),
        cause: "x".into(),
    });
    let acts = step(&mut n, input(101, Some((20, &f)), vec![], vec![]));
    assert!(!acts.iter().any(|a| matches!(
        a,
        Action::ArchiveHistory { .. } | Action::DeleteOperation { .. }
    )));
    let acts = step(&mut n, input(500, Some((20, &f)), vec![], vec![]));
    assert!(!acts.iter().any(|a| matches!(
        a,
        Action::ArchiveHistory { .. } | Action::CasWriteOperation { .. }
    )));
}

#[test]
fn heartbeats_are_frequent_during_an_operation_rare_when_idle_and_at_once_for_a_ping() {
    let hb = |acts: &[Action]| {
        acts.iter().find_map(|a| match a {
            Action::WriteHostDoc { id, doc, .. } => Some((*id, doc.heartbeat)),
            _ => None,
        })
    };
    let written = |id| {
        vec![Event::HostDocWritten {
            id,
            result: WriteResult::Ok(ver(5)),
        }]
    };
    let at = |now, op: Option<(u64, &OperationDoc)>, events, ping: Option<u64>| Inputs {
        ping: ping.map(ver),
        ..input(now, op, vec![], events)
    };
    // Idle: the first round registers; then nothing until the idle period, however long the
    // operation heartbeat's period is past.
    let mut n = NodeState::new("b", cfg(), None);
    let (id, h1) = hb(&step(&mut n, at(1, None, vec![], None))).unwrap();
    assert!(hb(&step(&mut n, at(2, None, written(id), None))).is_none());
    assert!(hb(&step(&mut n, at(60, None, vec![], None))).is_none());
    let idle = cfg().idle_heartbeat_every.as_secs();
    let (id, h2) = hb(&step(&mut n, at(1 + idle, None, vec![], None))).unwrap();
    assert_eq!(h2, h1 + 1);
    step(&mut n, at(2 + idle, None, written(id), None));
    // A ping is answered at once (a version seen for the first time), once.
    let t = 10 + idle;
    let (id, h3) = hb(&step(&mut n, at(t, None, vec![], Some(40)))).unwrap();
    assert_eq!(h3, h2 + 1);
    assert!(hb(&step(&mut n, at(t + 1, None, written(id), Some(40)))).is_none());
    assert!(hb(&step(&mut n, at(t + 3, None, vec![], Some(40)))).is_none());
    // A new ping: answered again.
    let (id, _) = hb(&step(&mut n, at(t + 4, None, vec![], Some(41)))).unwrap();
    step(&mut n, at(t + 5, None, written(id), Some(41)));
    // While an operation runs (this host not in it): every heartbeat period.
    let mut op = op_in(Phase::Stopping);
    op.expected_hosts = vec!["a".into()];
    let every = cfg().heartbeat_every.as_secs();
    // The last heartbeat was at t + 4.
    assert!(hb(&step(&mut n, at(t + 6, Some((3, &op)), vec![], Some(41)))).is_none());
    let (id, _) = hb(&step(
        &mut n,
        at(t + 4 + every, Some((3, &op)), vec![], Some(41)),
    ))
    .unwrap();
    step(
        &mut n,
        at(t + 5 + every, Some((3, &op)), written(id), Some(41)),
    );
    assert!(hb(&step(
        &mut n,
        at(t + 4 + 2 * every, Some((3, &op)), vec![], Some(41))
    ))
    .is_some());
}

#[test]
fn pings_are_answered_at_most_once_a_second() {
    let mut n = NodeState::new("b", cfg(), None);
    let acts = step(&mut n, input(1, None, vec![], vec![]));
    let id = acts
        .iter()
        .find_map(|a| match a {
            Action::WriteHostDoc { id, .. } => Some(*id),
            _ => None,
        })
        .unwrap();
    let ms = |m: u64| Duration::from_millis(m);
    let round = |n: &mut NodeState, now: Duration, events, ping| {
        step(
            n,
            Inputs {
                now,
                ping: Some(ver(ping)),
                ..input(0, None, vec![], events)
            },
        )
        .iter()
        .any(|a| matches!(a, Action::WriteHostDoc { .. }))
    };
    let written = vec![Event::HostDocWritten {
        id,
        result: WriteResult::Ok(ver(5)),
    }];
    // Seen 300 ms after the last heartbeat: waits until a second has passed, then answers.
    assert!(!round(&mut n, s(1) + ms(300), written, 7));
    assert!(!round(&mut n, s(1) + ms(900), vec![], 8));
    assert!(round(&mut n, s(2), vec![], 8));
}

// ---------------------------------------------------------------- status helpers

#[test]
fn new_operation_validates_and_starts_in_preflight_without_leader() {
    let req = NewOperation {
        id: "op7".into(),
        requested_by: "alice".into(),
        requested_at: "2026-01-01T00:00:00Z".into(),
        target_version: semver::Version::new(8, 14, 3),
        snapshot: SnapshotRef {
            repository: "r".into(),
            name: "s".into(),
            uuid: "u".into(),
        },
        safety_snapshot: true,
        snapshot_accepted_by: None,
        safety_snapshot_name: None,
        expected_hosts: vec!["a".into(), "b".into()],
        barrier_client_check: false,
    };
    let op = new_operation(req.clone()).unwrap();
    assert_eq!(
        (op.phase, op.epoch, op.leader.clone()),
        (Phase::Preflight, 0, None)
    );
    assert_eq!(
        op.safety_snapshot.name.as_deref(),
        Some("kibana-rollback-pre-op7")
    );
    assert_eq!(outcome(&op), None);
    assert!(waiting_for(&op, &[], &[]).contains("waiting for an agent"));
    assert!(new_operation(NewOperation {
        expected_hosts: vec![],
        ..req.clone()
    })
    .is_err());
    assert!(new_operation(NewOperation {
        expected_hosts: vec!["a".into(), "a".into()],
        ..req.clone()
    })
    .is_err());
    let off = new_operation(NewOperation {
        safety_snapshot: false,
        snapshot_accepted_by: None,
        ..req
    })
    .unwrap();
    assert_eq!(
        off.safety_snapshot,
        SafetySnapshot {
            enabled: false,
            name: None,
            taken_uuid: None,
            earlier: vec![],
            starts_before: None,
        }
    );
}

#[test]
fn waiting_for_names_the_hosts_and_the_cause() {
    let op = op_in(Phase::Stopping);
    let mut hosts = all(Step::StopUnit, UnitState::Inactive);
    hosts.remove(1);
    hosts.remove(1);
    assert_eq!(waiting_for(&op, &hosts, &[]), "stopping: waiting for b, c");
    hosts.push(hd(
        "b",
        UnitState::Active,
        Some((Step::StopUnit, 1, failed("timeout"))),
    ));
    assert_eq!(
        waiting_for(&op, &hosts, &[]),
        "stopping: waiting for c; failed on b (timeout)"
    );
    let mut f = op_in(Phase::Failed);
    f.error = Some(OpError {
        host: Some("c".into()),
        cause: "reinstall: dpkg error".into(),
    });
    assert_eq!(
        waiting_for(&f, &[], &[]),
        "failed: on c: reinstall: dpkg error"
    );
    let mut r = op_in(Phase::Restoring);
    r.restore = Some(RestoreRecord {
        epoch: 1,
        issued: true,
        completed: false,
        superseded_epochs: vec![],
        detail: String::new(),
    });
    assert_eq!(
        waiting_for(&r, &[], &[]),
        "restoring: waiting for the restore of repo/snap (epoch 1)"
    );
}

#[test]
fn waiting_for_names_a_claim_that_holds_the_restore() {
    let claim = ClaimDoc {
        host_id: "b".into(),
        machine: machine("clone"),
        owner: Some(machine("b")),
        heartbeat: 1,
    };
    let hosts = all(Step::StopUnit, UnitState::Inactive);
    let r = op_in(Phase::Restoring);
    let line = waiting_for(&r, &hosts, std::slice::from_ref(&claim));
    assert!(
        line.starts_with("restoring: host id claimed by two machines: b (also claimed by"),
        "{line}"
    );
    // Not before the barrier, and not once the restore is recorded: the claim holds neither.
    let stopping = op_in(Phase::Stopping);
    assert!(!waiting_for(&stopping, &[], std::slice::from_ref(&claim)).contains("claimed"));
    let mut issued = op_in(Phase::Restoring);
    issued.restore = Some(RestoreRecord {
        epoch: 1,
        issued: true,
        completed: false,
        superseded_epochs: vec![],
        detail: String::new(),
    });
    assert!(!waiting_for(&issued, &hosts, &[claim]).contains("claimed"));
}

#[test]
fn resume_reenters_the_failed_phase_at_a_new_epoch_so_steps_are_redone() {
    let mut op = op_in(Phase::Starting);
    op.epoch = 4;
    let failed_op = transition(
        &op,
        Phase::Failed,
        Mover::Leader,
        "starting on c: timeout",
        "w",
    )
    .unwrap();
    let r = resume(&failed_op, "alice", "w2", false).unwrap();
    assert_eq!(
        (
            r.phase,
            r.epoch,
            r.phase_epoch,
            r.leader.clone(),
            r.error.clone()
        ),
        (Phase::Starting, 5, 5, None, None)
    );
    let old_ack = Ack {
        operation_id: "op1".into(),
        epoch: 4,
        step: Step::StartUnit,
        result: StepResult::Ok,
        detail: String::new(),
    };
    assert!(!r.ack_counts(&old_ack));
    assert!(
        resume(&op, "alice", "w", false).is_err(),
        "only failed operations"
    );
    // --resume with forget_restore drops an unfinished restore record.
    let mut rs = op_in(Phase::Restoring);
    rs.restore = Some(RestoreRecord {
        epoch: 1,
        issued: true,
        completed: false,
        superseded_epochs: vec![],
        detail: String::new(),
    });
    rs.safety_snapshot.taken_uuid = Some("first".into());
    let f = transition(&rs, Phase::Failed, Mover::Leader, "restore failed", "w").unwrap();
    let r = resume(&f, "a", "w", false).unwrap();
    assert!(r.restore.is_some());
    assert!(resume(&f, "a", "w", true).unwrap().restore.is_none());
    // A restore that never completed resumes from the barrier, with a new safety snapshot:
    // whatever was written while the operation sat failed is kept too.
    assert_eq!(r.phase, Phase::Barrier);
    assert_eq!(
        r.safety_snapshot.name.as_deref(),
        Some(format!("kibana-rollback-pre-op1-e{}", r.epoch).as_str())
    );
    assert_eq!(r.safety_snapshot.taken_uuid, None);
    assert_eq!(r.safety_snapshot.earlier, ["kibana-rollback-pre-op1"]);
    // A completed restore resumes where it failed.
    let mut done = rs.clone();
    done.restore.as_mut().unwrap().completed = true;
    done.phase = Phase::Reinstalling;
    let f = transition(&done, Phase::Failed, Mover::Leader, "x", "w").unwrap();
    assert_eq!(
        resume(&f, "a", "w", false).unwrap().phase,
        Phase::Reinstalling
    );
}

#[test]
fn withdraw_only_before_any_agent_acted() {
    use crate::fleet::{new_operation, withdraw, NewOperation, SnapshotRef};
    let op = new_operation(NewOperation {
        id: "rb-w".into(),
        requested_by: "ops".into(),
        requested_at: "t0".into(),
        target_version: semver::Version::new(8, 14, 3),
        snapshot: SnapshotRef {
            repository: "r".into(),
            name: "s".into(),
            uuid: "u".into(),
        },
        safety_snapshot: true,
        snapshot_accepted_by: None,
        safety_snapshot_name: None,
        expected_hosts: vec!["a".into()],
        barrier_client_check: false,
    })
    .unwrap();
    let w = withdraw(&op, "ops", "agents down", "t1").unwrap();
    assert_eq!(w.phase, crate::fleet::Phase::Aborted);
    assert!(w.error.unwrap().cause.contains("agents down"));
    let mut led = op.clone();
    led.epoch = 1;
    assert!(
        withdraw(&led, "ops", "x", "t1").is_err(),
        "a leader took it: only the leader aborts"
    );
    let mut later = op;
    later.phase = crate::fleet::Phase::Prefetching;
    assert!(withdraw(&later, "ops", "x", "t1").is_err());
}

#[test]
fn an_operation_in_a_newer_format_is_not_acted_on_and_a_leader_steps_down() {
    let (mut n, _, _) = leader_a(100);
    let mut inp = input(101, None, vec![], vec![]);
    inp.op = OpRead::Unsupported("operation has document format 3".into());
    let acts = step(&mut n, inp);
    assert!(stop_acting(&acts), "{acts:?}");
    assert!(n.leading_epoch().is_none());
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Wait { what } if what.contains("document format 3"))));
    assert!(!acts.iter().any(|a| matches!(
        a,
        Action::RunHostStep { .. } | Action::CasWriteOperation { .. }
    )));
}

#[test]
fn documents_carry_their_format_and_old_ones_read_as_format_1() {
    let op = sample_op();
    let v = serde_json::to_value(&op).unwrap();
    assert_eq!(v["format"], FORMAT);
    let mut old = v.clone();
    old.as_object_mut().unwrap().remove("format");
    assert_eq!(crate::fleet::format_of(&old), 1);
    let back: OperationDoc = serde_json::from_value(old).unwrap();
    assert_eq!(back.format, 1);
}

fn machine(n: &str) -> MachineIdentity {
    MachineIdentity {
        machine_id: format!("mid-{n}"),
        instance: format!("inst-{n}"),
    }
}

fn node_on(host: &str, m: &str) -> NodeState {
    let mut c = cfg();
    c.machine = machine(m);
    NodeState::new(host, c, None)
}

#[test]
fn a_second_machine_with_a_taken_host_id_claims_it_and_does_nothing_else() {
    let mut clone = node_on("a", "clone");
    let op = sample_op();
    let mut owned = hd("a", UnitState::Active, None);
    owned.machine = Some(machine("first"));
    let round = |n: &mut NodeState, t: u64, hb: u64| {
        let mut doc = owned.clone();
        doc.heartbeat = hb;
        let mut inp = input(t, Some((1, &op)), vec![doc], vec![]);
        inp.own_version = Some(ver(7));
        step(n, inp)
    };
    let acts = round(&mut clone, 100, 1);
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::WriteClaim { doc, .. }
            if doc.owner == Some(machine("first")) && doc.machine == machine("clone"))),
        "{acts:?}"
    );
    assert!(acts.iter().any(
        |a| matches!(a, Action::Refused { why } if why.contains("belongs to machine mid-first"))
    ));
    for a in &acts {
        assert!(
            !matches!(
                a,
                Action::WriteHostDoc { .. }
                    | Action::CasWriteOperation { .. }
                    | Action::RunHostStep { .. }
            ),
            "the clone must not write, lead or act: {a:?}"
        );
    }
    // The owner keeps beating: still refused, however long.
    for (t, hb) in [(150, 2), (250, 3), (400, 4)] {
        let acts = round(&mut clone, t, hb);
        assert!(!acts
            .iter()
            .any(|a| matches!(a, Action::WriteHostDoc { .. })));
    }
    // The owner went silent for ten heartbeats. While an operation runs another machine never
    // takes its document over: the owner may only be paused or cut off, its Kibana running.
    let quiet = 400 + cfg().takeover_after().as_secs();
    assert!(!round(&mut clone, 400 + 10, 4)
        .iter()
        .any(|a| matches!(a, Action::WriteHostDoc { .. })));
    assert!(!round(&mut clone, quiet, 4)
        .iter()
        .any(|a| matches!(a, Action::WriteHostDoc { .. })));
    // No operation running (it was reinstalled, say): taken over by CAS on the version read,
    // never blindly.
    let mut inp = input(
        quiet + 1,
        None,
        vec![{
            let mut d = owned.clone();
            d.heartbeat = 4;
            d
        }],
        vec![],
    );
    inp.own_version = Some(ver(7));
    let acts = step(&mut clone, inp);
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::WriteHostDoc { expected, doc, .. }
            if *expected == Some(ver(7)) && doc.machine == Some(machine("clone")))),
        "{acts:?}"
    );
}

#[test]
fn a_reinstalled_agent_takes_its_machines_quiet_document_over_even_mid_operation() {
    // Same machine id, new instance: the same Kibana unit, so the old agent is really gone.
    let mut c = cfg();
    c.machine = MachineIdentity {
        machine_id: "mid-first".into(),
        instance: "inst-new".into(),
    };
    let mut fresh = NodeState::new("a", c, None);
    let op = sample_op();
    let mut owned = hd("a", UnitState::Active, None);
    owned.machine = Some(machine("first"));
    let quiet = 100 + cfg().takeover_after().as_secs();
    let mut acts = vec![];
    for t in [100, quiet] {
        let mut inp = input(t, Some((1, &op)), vec![owned.clone()], vec![]);
        inp.own_version = Some(ver(7));
        acts = step(&mut fresh, inp);
    }
    assert!(
        acts.iter().any(
            |a| matches!(a, Action::WriteHostDoc { expected, .. } if *expected == Some(ver(7)))
        ),
        "{acts:?}"
    );
}

#[test]
fn leadership_belongs_to_the_machine_not_the_host_id() {
    let (mut n, doc, seq) = leader_a(100);
    let mut taken = doc.clone();
    taken.leader.as_mut().unwrap().machine = Some(machine("someone-else"));
    let acts = step(&mut n, input(101, Some((seq + 1, &taken)), vec![], vec![]));
    assert!(stop_acting(&acts), "{acts:?}");
}

#[test]
fn a_host_gone_for_good_is_excluded_by_rules_that_keep_the_invariants() {
    use crate::fleet::exclude_host;
    // Before anything stopped: simply no longer expected.
    let op = op_in(Phase::Prefetching);
    let x = exclude_host(&op, "c", "ops", "disk died", "w").unwrap();
    assert_eq!(x.expected_hosts, ["a", "b"]);
    assert!(x.is_excluded("c") && !x.is_set_aside("c"));
    assert!(x
        .history
        .last()
        .unwrap()
        .reason
        .contains("c excluded by ops: disk died"));
    // Once the stop began, its Kibana may still run: only the barrier's evidence from
    // Elasticsearch can stand in for its report.
    let mut blind = op_in(Phase::Barrier);
    blind.barrier_client_check = false;
    let e = exclude_host(&blind, "c", "ops", "x", "w").unwrap_err();
    assert!(e.to_string().contains("client check off"), "{e}");
    let mut seeing = blind.clone();
    seeing.barrier_client_check = true;
    let x = exclude_host(&seeing, "c", "ops", "x", "w").unwrap();
    assert!(!x.is_expected("c"));
    // The barrier then goes on without it: its probe asks only the others.
    let hosts = all(Step::StopUnit, UnitState::Inactive)[..2].to_vec();
    let mut no_probe = x.clone();
    no_probe.probe = Some(Probe {
        n: 1,
        phase: Phase::Barrier,
        epoch: 1,
    });
    no_probe.barrier_client_check = false; // (the client reading itself is tested elsewhere)
    moves_to(
        decide(&no_probe, &hosts, &mem(Phase::Barrier), 1),
        Phase::SafetySnapshot,
    );
    // Past the restore point: set aside, kept stopped, the operation ends failed naming it.
    let x = exclude_host(&op_in(Phase::Reinstalling), "c", "ops", "x", "w").unwrap();
    assert!(x.is_set_aside("c") && x.is_expected("c"));
    let mut rec = op_in(Phase::Restoring);
    rec.restore = Some(RestoreRecord {
        epoch: 1,
        issued: true,
        completed: false,
        superseded_epochs: vec![],
        detail: String::new(),
    });
    assert!(exclude_host(&rec, "c", "ops", "x", "w")
        .unwrap()
        .is_set_aside("c"));
    // Not the last host, not an unknown one, not after the end.
    let mut two_gone = op_in(Phase::Starting);
    for h in ["a", "b"] {
        two_gone.hosts_failed.push(HostFailure {
            host: h.into(),
            step: Step::StartUnit,
            cause: "x".into(),
        });
    }
    assert!(exclude_host(&two_gone, "c", "ops", "x", "w").is_err());
    assert!(exclude_host(&op, "zz", "ops", "x", "w").is_err());
    assert!(exclude_host(&op_in(Phase::Done), "c", "ops", "x", "w").is_err());
}

#[test]
fn an_excluded_host_that_comes_back_keeps_kibana_stopped() {
    let mut restoring = op_in(Phase::Restoring);
    restoring.barrier_client_check = true;
    let op = crate::fleet::exclude_host(&restoring, "c", "ops", "x", "w").unwrap();
    match decide_host(Some(&op), "c", None, &facts(UnitState::Active), None) {
        HostDecision::Run { step, acks, .. } => assert!(step == HostStep::StopUnit && !acks),
        d => panic!("{d:?}"),
    }
    assert!(matches!(
        decide_host(Some(&op), "c", None, &facts(UnitState::Inactive), None),
        HostDecision::Wait(w) if w.contains("excluded")
    ));
}

fn strict_node(host: &str) -> NodeState {
    let mut c = cfg();
    c.policy = crate::fleet::policy::LocalPolicy {
        allowed_targets: Some(vec![semver::Version::new(8, 14, 3)]),
        repository: Some("repo".into()),
        fleet: vec!["a".into(), "b".into(), "c".into()],
        safety_snapshot_required: true,
        client_check_required: false,
        leaders: None,
    };
    NodeState::new(host, c, None)
}

#[test]
fn an_operation_outside_the_local_policy_gets_no_step_and_ends_in_preflight() {
    // A document written straight into `reinstalling` with a "completed" restore, leaving out c:
    // no agent downgrades anything, nobody takes its lease.
    let mut forged = op_in(Phase::Reinstalling);
    forged.expected_hosts = vec!["a".into(), "b".into()];
    forged.leader = None;
    let mut n = strict_node("a");
    let acts = step(&mut n, input(100, Some((5, &forged)), vec![], vec![]));
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Wait { what } if what.contains("leaves out c"))));
    assert!(!acts.iter().any(|a| matches!(
        a,
        Action::RunHostStep { .. } | Action::CasWriteOperation { .. }
    )));
    // Still in preflight, the leader ends it as aborted: nothing was touched.
    let mut wrong = op_in(Phase::Preflight);
    wrong.target_version = semver::Version::new(7, 0, 0);
    let mut lead = cfg();
    lead.policy.allowed_targets = Some(vec![semver::Version::new(8, 14, 3)]);
    let d = decide_leader(
        &wrong,
        &[],
        &[],
        &mem(Phase::Preflight),
        &lease_at(0),
        s(1),
        &lead,
        "w",
    );
    let doc = moves_to(d, Phase::Aborted);
    assert!(doc
        .error
        .unwrap()
        .cause
        .contains("rollback.allowed_targets"));
}

fn leaders_node(host: &str, leaders: &[&str]) -> NodeState {
    let mut c = cfg();
    c.policy.leaders = Some(leaders.iter().map(|h| h.to_string()).collect());
    NodeState::new(host, c, None)
}

#[test]
fn only_a_listed_leader_takes_the_lease() {
    let mut free = op_in(Phase::Preflight);
    free.leader = None;
    free.epoch = 0;
    let mut a = leaders_node("a", &["b"]);
    let acts = step(&mut a, input(1, Some((3, &free)), vec![], vec![]));
    assert!(cas_of(&acts).is_none(), "a is not listed: {acts:?}");
    let mut b = leaders_node("b", &["b"]);
    let acts = step(&mut b, input(1, Some((3, &free)), vec![], vec![]));
    let (_, _, doc) = cas_of(&acts).expect("b takes the free lease");
    assert_eq!(doc.leader.unwrap().host_id, "b");
}

#[test]
fn no_step_under_a_leader_the_local_list_leaves_out() {
    // Led by a (op_in's leader), which this host's coordination.leaders does not list.
    let op = op_in(Phase::Stopping);
    let mut c = leaders_node("c", &["b"]);
    let acts = step(&mut c, input(1, Some((3, &op)), vec![], vec![]));
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::Wait { what } if what.contains("coordination.leaders"))),
        "{acts:?}"
    );
    assert!(!acts.iter().any(|a| matches!(a, Action::RunHostStep { .. })));
    // Listed, the same leader is obeyed.
    let mut c = leaders_node("c", &["a", "b"]);
    let acts = step(&mut c, input(1, Some((3, &op)), vec![], vec![]));
    assert!(
        acts.iter().any(|a| matches!(a, Action::RunHostStep { .. })),
        "{acts:?}"
    );
}

#[test]
fn a_listed_candidate_replaces_an_unlisted_leader_whose_lease_expired() {
    let op = op_in(Phase::Stopping); // led by a
    let mut b = leaders_node("b", &["b"]);
    step(&mut b, input(1, Some((3, &op)), vec![], vec![]));
    // The same version observed for longer than a lease (10 s): expired.
    let acts = step(&mut b, input(30, Some((3, &op)), vec![], vec![]));
    let (_, _, doc) = cas_of(&acts).expect("b takes the expired lease over");
    assert_eq!(doc.leader.unwrap().host_id, "b");
}

#[test]
fn an_ended_operation_written_back_is_a_replay_also_after_a_restart() {
    let mut n = NodeState::new("b", cfg(), None);
    let mut first = op_in(Phase::Reinstalling);
    first.id = "rb-first".into();
    first.revision = 12;
    step(&mut n, input(1, Some((20, &first)), vec![], vec![]));
    let mut second = op_in(Phase::Stopping);
    second.id = "rb-second".into();
    second.revision = 2;
    let acts = step(&mut n, input(2, Some((30, &second)), vec![], vec![]));
    let recorded = acts
        .iter()
        .find_map(|a| match a {
            Action::RecordRevision(r) => Some(r.clone()),
            _ => None,
        })
        .expect("the new operation is recorded");
    assert_eq!(recorded.earlier, ["rb-first"]);
    // The first one's copy, validly signed, written back after the second one.
    let replayed = |n: &mut NodeState| {
        let acts = step(n, input(3, Some((31, &first)), vec![], vec![]));
        assert!(
            acts.iter()
                .any(|a| matches!(a, Action::Wait { what } if what.contains("a replay"))),
            "{acts:?}"
        );
        assert!(
            !acts.iter().any(|a| matches!(a, Action::RunHostStep { .. })),
            "{acts:?}"
        );
    };
    replayed(&mut n);
    let mut restarted = NodeState::new("b", cfg(), None);
    restarted.remember_revision(recorded);
    replayed(&mut restarted);
    // Ended, it is harmless and read as such.
    let mut done = first.clone();
    done.phase = Phase::Done;
    let acts = step(&mut restarted, input(4, Some((32, &done)), vec![], vec![]));
    assert!(!acts
        .iter()
        .any(|a| matches!(a, Action::Wait { what } if what.contains("a replay"))));
}

#[test]
fn an_older_revision_written_back_is_a_replay_and_is_not_obeyed() {
    let mut n = NodeState::new("b", cfg(), None);
    let mut op = op_in(Phase::Stopping);
    op.revision = 9;
    step(&mut n, input(1, Some((20, &op)), vec![], vec![]));
    let mut old = op.clone();
    old.revision = 4;
    old.phase = Phase::Reinstalling;
    let acts = step(&mut n, input(2, Some((21, &old)), vec![], vec![]));
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Wait { what } if what.contains("a replay"))));
    assert!(!acts.iter().any(|a| matches!(a, Action::RunHostStep { .. })));
}

#[test]
fn a_restarted_agent_still_refuses_a_revision_older_than_it_persisted() {
    // Found by the simulator (seed 922238249176): a leader restarted, then read a replayed
    // revision from before its restore was recorded, and restored a second time.
    let mut first = NodeState::new("b", cfg(), None);
    let mut op = op_in(Phase::Stopping);
    op.revision = 9;
    let acts = step(&mut first, input(1, Some((20, &op)), vec![], vec![]));
    let seen = acts
        .iter()
        .find_map(|a| match a {
            Action::RecordRevision(s) => Some(s.clone()),
            _ => None,
        })
        .expect("the revision seen is persisted");
    assert_eq!(seen.revision, 9);
    // The same revision again is not persisted again.
    let again = step(&mut first, input(2, Some((20, &op)), vec![], vec![]));
    assert!(!again.iter().any(|a| matches!(a, Action::RecordRevision(_))));
    let mut restarted = NodeState::new("b", cfg(), None);
    restarted.remember_revision(seen);
    let mut old = op.clone();
    old.revision = 4;
    old.phase = Phase::Reinstalling;
    let acts = step(&mut restarted, input(3, Some((21, &old)), vec![], vec![]));
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Wait { what } if what.contains("a replay"))));
    assert!(!acts.iter().any(|a| matches!(a, Action::RunHostStep { .. })));
}

#[test]
fn only_a_leader_reads_every_host_and_decides_on_a_complete_reading_only() {
    // A follower decides on its own document alone: its reads do not grow with the fleet.
    let op = op_in(Phase::Stopping); // led by a
    let mut c = NodeState::new("c", cfg(), None);
    step(&mut c, input(1, Some((3, &op)), vec![], vec![]));
    assert!(!c.wants_every_host());

    // A takeover in flight asks for every host: its result may come with that reading.
    let mut n = NodeState::new("a", cfg(), None);
    let free = sample_op();
    let acts = step(&mut n, input(1, Some((1, &free)), vec![], vec![]));
    let (id, _, doc) = cas_of(&acts).expect("takes the free lease");
    assert!(n.wants_every_host());
    // The lease lands with a reading that still lacks the others: nothing decided on it.
    let mut partial = input(1, Some((2, &doc)), vec![], vec![written(id, 2)]);
    partial.every_host = false;
    let acts = step(&mut n, partial);
    assert_eq!(n.leading_epoch(), Some(1));
    assert!(
        acts.iter().all(|a| matches!(a, Action::Wait { .. })),
        "{acts:?}"
    );
    assert!(n.wants_every_host());
    // With every host's document read, it leads.
    let acts = step(&mut n, input(1, Some((2, &doc)), vec![], vec![]));
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::RunClusterStep { .. })),
        "{acts:?}"
    );
}

#[test]
fn reads_slow_down_only_while_a_followers_own_step_runs() {
    use crate::fleet::{idle_watch_every, READ_ACTIVE, READ_DURING_OWN_STEP, READ_UNREADABLE};
    let hb = s(10);
    // A follower ("b"; "a" leads op_in's operation) waiting for its step: the fast pace.
    let mut n = NodeState::new("b", cfg(), None);
    let op = op_in(Phase::Stopping);
    let found = OpRead::Found(Versioned::new(ver(3), op.clone()));
    assert_eq!(n.read_every(&found, hb), READ_ACTIVE);
    let acts = step(&mut n, input(1, Some((3, &op)), vec![], vec![]));
    let id = acts
        .iter()
        .find_map(|a| match a {
            Action::RunHostStep { id, .. } => Some(*id),
            _ => None,
        })
        .expect("runs its stop step");
    // Its own step in flight: nothing to see before it ends (its end wakes the loop).
    assert_eq!(n.read_every(&found, hb), READ_DURING_OWN_STEP);
    step(&mut n, stop_done(2, &op, id));
    // Done: it waits for the next phase again, at the fast pace.
    assert_eq!(n.read_every(&found, hb), READ_ACTIVE);
    assert_eq!(n.read_every(&OpRead::Missing, hb), idle_watch_every(hb));
    assert_eq!(n.read_every(&OpRead::Unreadable, hb), READ_UNREADABLE);

    // A leader keeps the fast pace while its own host step runs: it waits on every host.
    // (Node "a" leads a fresh operation in preflight and runs its readiness check.)
    let mut a = NodeState::new("a", cfg(), None);
    let op = sample_op();
    let acts = step(&mut a, input(100, Some((1, &op)), vec![], vec![]));
    let (wid, _, doc) = cas_of(&acts).expect("acquires a free lease at once");
    let ran = |acts: &[Action]| acts.iter().any(|x| matches!(x, Action::RunHostStep { .. }));
    let first = ran(&acts);
    let acts = step(
        &mut a,
        input(100, Some((1, &op)), vec![], vec![written(wid, 2)]),
    );
    assert!(first || ran(&acts), "{acts:?}");
    assert_eq!(a.leading_epoch(), Some(1));
    let found = OpRead::Found(Versioned::new(ver(2), doc));
    assert_eq!(a.read_every(&found, hb), READ_ACTIVE);
}
