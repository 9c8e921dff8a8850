//! `plan`: every preflight check the leader will make, made now and read-only, each OK or FAIL
//! with its detail; then the hosts as their documents describe them, and the steps that would run
//! per phase. Changes nothing (not even the coordination index is created).
//!
//! Liveness: a host document holds no wall time (clocks are not trusted), only a heartbeat
//! counter. `plan` reads the counters first and, after the other checks, watches them for up to
//! two heartbeat periods (`coordination.heartbeat`) on its own clock: a host whose counter moved
//! is alive; one whose counter did not is reported with the value it is stuck at.
//!
//! Exit 0 when every check passes, 1 when any fails — including an unreachable Elasticsearch,
//! which is a failed check here, so "exit 0" always means "start would go ahead". A malformed
//! `--to` is a usage error (2) and a broken configuration 78, as everywhere.

use std::time::{Duration, Instant};

use anyhow::Result;
use kibana_rollback::compat::{self, Verdict};
use kibana_rollback::config::{check_coordination_index, SnapshotSelector};
use kibana_rollback::es::{Es, KIBANA_FEATURE};
use kibana_rollback::exit;
use kibana_rollback::fleet::HostDoc;
use semver::Version;
use serde_json::json;

use super::start::{expected_hosts, resolve_snapshot, selector, Ctx, Resolved};
use super::{print_json, print_table, target_version, Cli};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Ok,
    Fail,
    Skipped,
}

#[derive(Debug, serde::Serialize)]
struct Check {
    check: String,
    status: Status,
    detail: String,
    warnings: Vec<String>,
}

#[derive(Default)]
struct Checks(Vec<Check>);

impl Checks {
    fn push(&mut self, check: &str, ok: bool, detail: impl Into<String>) -> &mut Check {
        self.0.push(Check {
            check: check.into(),
            status: if ok { Status::Ok } else { Status::Fail },
            detail: detail.into(),
            warnings: vec![],
        });
        self.0.last_mut().expect("just pushed")
    }
    fn skip(&mut self, check: &str, why: impl Into<String>) {
        self.0.push(Check {
            check: check.into(),
            status: Status::Skipped,
            detail: why.into(),
            warnings: vec![],
        });
    }
    fn passed(&self) -> bool {
        self.0.iter().all(|c| c.status == Status::Ok)
    }
}

struct Step {
    phase: &'static str,
    actor: String,
    action: String,
}

pub async fn run(cli: &Cli, to: Option<&str>, snapshot: Option<&str>) -> Result<u8> {
    let ctx = Ctx::new(cli)?;
    let s = ctx.settings().clone();
    let target = target_version(to, &ctx.loaded)?;
    let sel = selector(snapshot, &ctx.loaded);
    let mut checks = Checks::default();

    match &target {
        Some(t) => checks.push(
            "target version",
            true,
            format!(
                "Kibana {t}{}",
                if to.is_some() {
                    " (--to)"
                } else {
                    " (rollback.target_version)"
                }
            ),
        ),
        None => checks.push(
            "target version",
            false,
            "none: pass --to VERSION or set rollback.target_version",
        ),
    };
    match check_coordination_index(&s.coordination.index) {
        Ok(()) => checks.push(
            "coordination index name",
            true,
            format!(
                "{} is outside the kibana feature state",
                s.coordination.index
            ),
        ),
        Err(e) => checks.push(
            "coordination index name",
            false,
            format!("{}: {e}", s.coordination.index),
        ),
    };

    // Reachability, host by host, so the operator sees which endpoint answers.
    let mut reachable = None;
    let mut unreachable = vec![];
    for h in &s.elasticsearch.hosts {
        let mut one = s.elasticsearch.clone();
        one.hosts = vec![h.clone()];
        let answer = match Es::new(&one) {
            Ok(es) => es.node_versions().await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(nodes) => {
                if reachable.is_none() {
                    reachable = Some((h.to_string(), nodes));
                }
            }
            Err(kibana_rollback::es::EsError::Unreachable { attempts }) => {
                unreachable.push(attempts)
            }
            Err(e) => unreachable.push(format!("{h}: {e}")),
        }
    }
    let nodes = match reachable {
        Some((host, nodes)) => {
            let c = checks.push(
                "elasticsearch reachable",
                true,
                format!("{host} answers; cluster of {} node(s)", nodes.len()),
            );
            c.warnings = unreachable
                .iter()
                .map(|u| format!("not reachable: {u}"))
                .collect();
            Some(nodes)
        }
        None => {
            checks.push("elasticsearch reachable", false, unreachable.join("; "));
            None
        }
    };

    let mut resolved: Option<Resolved> = None;
    let mut hosts_seen: Vec<(String, Option<HostDoc>)> = vec![];
    let mut expected: Vec<String> = vec![];
    let mut expected_from = "";
    let mut heartbeat_verdict: Vec<(String, Option<bool>)> = vec![];
    if let Some(nodes) = &nodes {
        // Compatibility of the target with every node.
        match &target {
            Some(t) => {
                let report = compat::Report::new(t, nodes);
                let detail = report
                    .nodes
                    .iter()
                    .map(|n| {
                        let v = match &n.verdict {
                            Verdict::Compatible => "compatible",
                            Verdict::Warning { .. } => "compatible (warning)",
                            Verdict::Incompatible { .. } => "INCOMPATIBLE",
                        };
                        format!("{} {}: {v}", n.node.name, n.node.version)
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let c = match report.refusal() {
                    None => checks.push("nodes compatible with target", true, detail),
                    Some(r) => checks.push("nodes compatible with target", false, r),
                };
                c.warnings = report.warnings();
            }
            None => checks.skip("nodes compatible with target", "no target version"),
        }
        match ctx.es.features().await {
            Ok(f) if f.iter().any(|n| n == KIBANA_FEATURE) => checks.push("kibana feature", true, "_features lists kibana"),
            Ok(f) => checks.push("kibana feature", false, format!("_features does not list kibana (has: {}): this cluster cannot snapshot or restore Kibana's state", f.join(", "))),
            Err(e) => checks.push("kibana feature", false, format!("GET _features: {e}")),
        };
        match (&target, &s.rollback.repository) {
            (Some(t), Some(repo)) => match resolve_snapshot(&ctx.es, repo, &sel, t).await {
                Ok(Ok(r)) => {
                    let fs = r
                        .info
                        .kibana_feature_state()
                        .map(|f| f.indices.join(", "))
                        .unwrap_or_default();
                    let evidence = if r.assessment.kibana_versions.is_empty() {
                        "none".into()
                    } else {
                        r.assessment.kibana_versions.join(", ")
                    };
                    let how = if sel == SnapshotSelector::Latest {
                        "newest eligible"
                    } else {
                        "named"
                    };
                    let c = checks.push(
                        "snapshot",
                        true,
                        format!(
                            "{repo}/{} ({how}, uuid {}): state {}, kibana feature state [{fs}], Kibana version evidence: {evidence}",
                            r.info.snapshot, r.info.uuid, r.info.state
                        ),
                    );
                    c.warnings = r.assessment.notes.clone();
                    resolved = Some(r);
                }
                Ok(Err(why)) => {
                    checks.push("snapshot", false, why);
                }
                Err(e) => {
                    checks.push(
                        "snapshot",
                        false,
                        format!("listing snapshots of {repo}: {e}"),
                    );
                }
            },
            (_, None) => {
                checks.push("snapshot", false, "no repository: set rollback.repository");
            }
            (None, _) => checks.skip("snapshot", "no target version to judge eligibility against"),
        }
        let coord = ctx.coord();
        match coord.operation().await {
            Ok(None) => checks.push(
                "no operation running",
                true,
                format!("no operation document in {}", coord.index),
            ),
            Ok(Some(v)) => checks.push(
                "no operation running",
                false,
                format!(
                    "operation {} is in phase {} (requested by {} at {})",
                    v.doc.id, v.doc.phase, v.doc.requested_by, v.doc.requested_at
                ),
            ),
            Err(e) => checks.push(
                "no operation running",
                false,
                format!("reading {}: {e}", coord.index),
            ),
        };
        match expected_hosts(&ctx).await {
            Ok((ids, from)) => {
                expected = ids;
                expected_from = from;
            }
            Err(e) => {
                checks.push("expected hosts registered", false, format!("{e:#}"));
            }
        }
        if expected.is_empty() && expected_from == "registered agents" {
            checks.push(
                "expected hosts registered",
                false,
                "coordination.expected_hosts is empty and no agent is registered",
            );
        } else if !expected.is_empty() {
            let t0 = Instant::now();
            match coord.hosts(&expected).await {
                Ok(docs) => {
                    hosts_seen = expected
                        .iter()
                        .map(|h| (h.clone(), docs.iter().find(|d| &d.host_id == h).cloned()))
                        .collect();
                    let missing: Vec<&str> = hosts_seen
                        .iter()
                        .filter(|(_, d)| d.is_none())
                        .map(|(h, _)| h.as_str())
                        .collect();
                    if missing.is_empty() {
                        checks.push(
                            "expected hosts registered",
                            true,
                            format!("{} ({expected_from})", expected.join(", ")),
                        );
                    } else {
                        checks.push(
                            "expected hosts registered",
                            false,
                            format!("no host document for {}: is kibana-rollbackd running there? ({expected_from})", missing.join(", ")),
                        );
                    }
                    heartbeat_verdict =
                        watch_heartbeats(&ctx, &hosts_seen, t0, s.coordination.heartbeat).await;
                    let registered: Vec<_> = heartbeat_verdict
                        .iter()
                        .filter(|(_, v)| v.is_some())
                        .collect();
                    if registered.is_empty() {
                        checks.skip("agents alive (heartbeats)", "no registered host to watch");
                    } else {
                        let stale: Vec<String> = hosts_seen
                            .iter()
                            .filter(|(h, _)| {
                                heartbeat_verdict
                                    .iter()
                                    .any(|(x, v)| x == h && *v == Some(false))
                            })
                            .map(|(h, d)| {
                                format!(
                                    "{h} (stuck at {})",
                                    d.as_ref().map(|d| d.heartbeat).unwrap_or(0)
                                )
                            })
                            .collect();
                        let window =
                            humantime::format_duration(heartbeat_window(s.coordination.heartbeat));
                        if stale.is_empty() {
                            checks.push(
                                "agents alive (heartbeats)",
                                true,
                                format!("every registered agent wrote a heartbeat within {window}"),
                            );
                        } else {
                            checks.push(
                                "agents alive (heartbeats)",
                                false,
                                format!("no heartbeat within {window} from {}: is kibana-rollbackd running there?", stale.join(", ")),
                            );
                        }
                    }
                }
                Err(e) => {
                    checks.push(
                        "expected hosts registered",
                        false,
                        format!("reading host documents: {e}"),
                    );
                }
            }
        }
    } else {
        for c in [
            "nodes compatible with target",
            "kibana feature",
            "snapshot",
            "no operation running",
            "expected hosts registered",
            "agents alive (heartbeats)",
        ] {
            checks.skip(c, "Elasticsearch not reachable");
        }
    }

    let steps = steps(
        &ctx,
        target.as_ref(),
        resolved.as_ref(),
        &expected,
        &hosts_seen,
    );
    let ok = checks.passed();
    let alive = |h: &str| {
        heartbeat_verdict
            .iter()
            .find(|(x, _)| x == h)
            .and_then(|(_, v)| *v)
    };

    if cli.json {
        print_json(&json!({
            "ok": ok,
            "target_version": target.as_ref().map(ToString::to_string),
            "snapshot": resolved.as_ref().map(|r| &r.sref),
            "expected_hosts": expected,
            "expected_hosts_from": expected_from,
            "checks": checks.0,
            "hosts": hosts_seen.iter().map(|(h, d)| match d {
                None => json!({"host_id": h, "registered": false}),
                Some(d) => json!({
                    "host_id": h,
                    "registered": true,
                    "alive": alive(h),
                    "unit_state": d.unit_state,
                    "installed_version": d.installed_version.as_ref().map(ToString::to_string),
                    "held": d.held,
                    "agent_version": d.agent_version,
                    "heartbeat": d.heartbeat,
                }),
            }).collect::<Vec<_>>(),
            "steps": steps.iter().map(|s| json!({"phase": s.phase, "actor": s.actor, "action": s.action})).collect::<Vec<_>>(),
        }));
        return Ok(if ok { exit::OK } else { exit::FAILED });
    }

    println!(
        "plan: roll Kibana back to {} from {} on {}",
        target
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "?".into()),
        resolved
            .as_ref()
            .map(|r| format!("{}/{}", r.sref.repository, r.sref.name))
            .unwrap_or_else(|| "?".into()),
        if expected.is_empty() {
            "?".to_string()
        } else {
            format!("{} ({expected_from})", expected.join(", "))
        }
    );
    println!();
    let mut rows = vec![];
    for c in &checks.0 {
        let r = match c.status {
            Status::Ok => "OK",
            Status::Fail => "FAIL",
            Status::Skipped => "SKIP",
        };
        rows.push(vec![c.check.clone(), r.into(), c.detail.clone()]);
        for w in &c.warnings {
            rows.push(vec![String::new(), "warn".into(), w.clone()]);
        }
    }
    print_table(&["CHECK", "RESULT", "DETAIL"], &rows);
    if !hosts_seen.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = hosts_seen
            .iter()
            .map(|(h, d)| match d {
                None => vec![
                    h.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "not registered".into(),
                ],
                Some(d) => vec![
                    h.clone(),
                    serde_json::to_value(d.unit_state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    d.installed_version
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_else(|| "-".into()),
                    if d.held { "yes".into() } else { "no".into() },
                    d.agent_version.clone(),
                    match alive(h) {
                        Some(true) => format!("alive ({})", d.heartbeat),
                        Some(false) => format!("STALE (stuck at {})", d.heartbeat),
                        None => "-".into(),
                    },
                ],
            })
            .collect();
        print_table(
            &["HOST", "UNIT", "INSTALLED", "HELD", "AGENT", "HEARTBEAT"],
            &rows,
        );
    }
    println!();
    println!("steps that would run (<id> is the operation id `start` assigns):");
    let w = steps.iter().map(|s| s.phase.len()).max().unwrap_or(0);
    for s in &steps {
        println!("  {:<w$}  {}: {}", s.phase, s.actor, s.action);
    }
    println!();
    println!(
        "{}",
        if ok {
            "every check passed: `kibana-rollback start` would go ahead"
        } else {
            "some checks FAILED: `kibana-rollback start` would refuse or abort in preflight"
        }
    );
    Ok(if ok { exit::OK } else { exit::FAILED })
}

fn heartbeat_window(period: Duration) -> Duration {
    (period * 2 + Duration::from_secs(1)).min(Duration::from_secs(120))
}

/// For each host: `Some(true)` its heartbeat counter moved within the window, `Some(false)` it
/// did not, `None` not registered.
async fn watch_heartbeats(
    ctx: &Ctx,
    first: &[(String, Option<HostDoc>)],
    since: Instant,
    period: Duration,
) -> Vec<(String, Option<bool>)> {
    let mut verdict: Vec<(String, Option<bool>)> = first
        .iter()
        .map(|(h, d)| (h.clone(), d.as_ref().map(|_| false)))
        .collect();
    let ids: Vec<String> = first
        .iter()
        .filter(|(_, d)| d.is_some())
        .map(|(h, _)| h.clone())
        .collect();
    let window = heartbeat_window(period);
    loop {
        if let Ok(now) = ctx.coord().hosts(&ids).await {
            for (h, v) in verdict.iter_mut() {
                let before = first
                    .iter()
                    .find(|(x, _)| x == h)
                    .and_then(|(_, d)| d.as_ref())
                    .map(|d| d.heartbeat);
                let after = now.iter().find(|d| &d.host_id == h).map(|d| d.heartbeat);
                if let (Some(b), Some(a)) = (before, after) {
                    if a != b {
                        *v = Some(true);
                    }
                }
            }
        }
        if verdict.iter().all(|(_, v)| *v != Some(false)) || since.elapsed() >= window {
            return verdict;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn steps(
    ctx: &Ctx,
    target: Option<&Version>,
    snap: Option<&Resolved>,
    hosts: &[String],
    seen: &[(String, Option<HostDoc>)],
) -> Vec<Step> {
    let s = ctx.settings();
    let t = target
        .map(ToString::to_string)
        .unwrap_or_else(|| "<target>".into());
    let all = if hosts.is_empty() {
        "<expected hosts>".to_string()
    } else {
        hosts.join(", ")
    };
    let repo = s
        .rollback
        .repository
        .clone()
        .unwrap_or_else(|| "<repository>".into());
    let snap_name = snap
        .map(|r| r.sref.name.clone())
        .unwrap_or_else(|| "<snapshot>".into());
    let unit = &s.kibana.unit;
    let pkg = &s.kibana.package;
    let leader = "leader".to_string();
    let downgrades: Vec<String> = seen
        .iter()
        .filter_map(|(h, d)| {
            d.as_ref()
                .and_then(|d| d.installed_version.as_ref())
                .map(|v| format!("{h} {v} -> {t}"))
        })
        .collect();
    let mut out = vec![
        Step {
            phase: "preflight",
            actor: leader.clone(),
            action: format!(
                "check Elasticsearch reachable, every node compatible with Kibana {t}, snapshot {repo}/{snap_name} SUCCESS with the kibana feature state"
            ),
        },
        Step { phase: "preflight", actor: all.clone(), action: format!("check {pkg} {t} is available in the package repositories") },
        Step { phase: "prefetching", actor: all.clone(), action: format!("download {pkg} {t} (no install)") },
        Step { phase: "stopping", actor: all.clone(), action: format!("stop {unit} and wait until inactive") },
        Step {
            phase: "barrier",
            actor: leader.clone(),
            action: format!(
                "verify every host acknowledged {unit} inactive{} (timeout {}: abort)",
                if s.coordination.barrier_client_check { " and no Kibana client still talks to Elasticsearch" } else { "" },
                humantime::format_duration(s.coordination.barrier_timeout)
            ),
        },
    ];
    if s.rollback.safety_snapshot {
        out.push(Step {
            phase: "safety_snapshot",
            actor: leader.clone(),
            action: format!(
                "snapshot the current kibana feature state as {repo}/kibana-rollback-pre-<id>"
            ),
        });
    } else {
        out.push(Step {
            phase: "safety_snapshot",
            actor: leader.clone(),
            action: "SKIPPED (rollback.safety_snapshot = false): the post-upgrade state is lost for good".into(),
        });
    }
    out.push(Step {
        phase: "restoring",
        actor: leader,
        action: format!(
            "restore the kibana feature state from {repo}/{snap_name} (deletes the current .kibana* indices first) — the restore point: from here it ends done or failed"
        ),
    });
    out.push(Step {
        phase: "reinstalling",
        actor: all.clone(),
        action: format!(
            "install {pkg} {t}{}{}",
            if s.package_manager.hold {
                " and hold it"
            } else {
                ""
            },
            if downgrades.is_empty() {
                String::new()
            } else {
                format!(" ({})", downgrades.join(", "))
            }
        ),
    });
    out.push(Step {
        phase: "starting",
        actor: all,
        action: format!("start {unit}, wait until active and Kibana reports available at {t}"),
    });
    out
}
