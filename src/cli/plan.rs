//! `plan`: the preflight ([`kibana_rollback::preflight`]: every check `start` makes before it
//! writes anything and the leader repeats, here read-only and with the agents' liveness watched),
//! each OK, FAIL or SKIP with its detail; then the hosts as their documents describe them, and
//! the steps that would run per phase. Changes nothing (not even the coordination index is
//! created).
//!
//! Exit 0 when every check passes, 1 when any fails — including an unreachable Elasticsearch,
//! which is a failed check here, so "exit 0" always means "start would go ahead". A malformed
//! `--to` is a usage error (2) and a broken configuration 78, as everywhere.

use anyhow::Result;
use kibana_rollback::exit;
use kibana_rollback::fleet::HostDoc;
use kibana_rollback::preflight::{self, Resolved, Scope, Status};
use semver::Version;
use serde_json::json;

use super::context::{asked, Ctx};
use super::{print_json, print_table, target_version, Cli};

struct Step {
    phase: &'static str,
    actor: String,
    action: String,
}

pub async fn run(
    cli: &Cli,
    to: Option<&str>,
    snapshot: Option<&str>,
    accept_unjudged: bool,
) -> Result<u8> {
    let ctx = Ctx::new(cli)?;
    // `--to` syntax (2) before anything is asked.
    target_version(to, &ctx.loaded)?;
    let asked = asked(&ctx, to, snapshot).await?;
    let (target, sel) = (asked.target.clone(), asked.selector.clone());
    let report = preflight::run(
        &ctx.es,
        ctx.settings(),
        Scope::Plan,
        preflight::Request {
            target: target.as_ref(),
            target_from: asked.target_from,
            snapshot: &sel,
            accept_unjudged,
        },
    )
    .await;
    let checks = &report.checks;
    let resolved = report.snapshot.clone();
    let expected = report.expected.clone();
    let expected_from = report.expected_from;
    let hosts_seen = report.hosts.clone();
    let alive = |h: &str| report.alive(h);

    // What the restore would replace, when there is a snapshot to restore.
    let discard = match (&resolved, &report.nodes) {
        (Some(r), Some(nodes)) => {
            let versions: Vec<Version> = nodes
                .iter()
                .filter_map(|n| kibana_rollback::compat::coerce(&n.version))
                .collect();
            match preflight::discard::discard(&ctx.es, &versions, &r.info).await {
                Ok(d) => Some(d),
                Err(e) => {
                    eprintln!(
                        "kibana-rollback: warning: cannot read what the restore would replace: {e}"
                    );
                    None
                }
            }
        }
        _ => None,
    };
    let steps = steps(
        &ctx,
        target.as_ref(),
        resolved.as_ref(),
        &expected,
        &hosts_seen,
    );
    let ok = checks.passed();

    if cli.json {
        print_json(&json!({
            "ok": ok,
            "target_version": target.as_ref().map(ToString::to_string),
            "target_from": asked.target_from,
            "rollback_point": asked.point,
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
            "restore_replaces": discard,
        }));
        return Ok(if ok { exit::OK } else { exit::FAILED });
    }

    if let Some(p) = &asked.point {
        println!(
            "rollback point (prepare, the strongest evidence): {}",
            p.describe()
        );
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
        rows.push(vec![c.check.to_string(), r.into(), c.detail.clone()]);
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
    if let Some(d) = &discard {
        print_discard(d);
    }
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

fn stamp(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// What the restore deletes and what it brings back.
fn print_discard(d: &preflight::discard::Discard) {
    println!("the restore deletes the current kibana feature state (kept in the safety snapshot):");
    if d.current.is_empty() {
        println!("  (no index of the feature exists now)");
    }
    for (index, docs) in &d.current {
        println!("  {index}  {docs} docs");
    }
    match (d.newest_update_ms, &d.newest_update_unknown) {
        (Some(ms), _) => {
            let lost = d.snapshot_start_ms.is_some_and(|s| ms > s);
            println!(
                "  newest saved-object update: {}{}",
                stamp(ms),
                if lost {
                    " — after the snapshot started: changes since then are lost"
                } else {
                    ""
                }
            );
        }
        (None, Some(why)) => println!("  newest saved-object update: unknown ({why})"),
        (None, None) => println!("  newest saved-object update: none recorded"),
    }
    println!(
        "and restores the snapshot's {} (started {})",
        if d.snapshot_indices.is_empty() {
            "indices".to_string()
        } else {
            d.snapshot_indices.join(", ")
        },
        d.snapshot_start_ms.map(stamp).unwrap_or_else(|| "?".into())
    );
    println!();
}
