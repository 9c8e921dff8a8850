//! `start`: validate, run the preflight, write the operation request, and with `--wait` follow it
//! to its end; `start --resume` continues a failed operation.
//!
//! Order, so that bad input never writes anything:
//! 1. local: configuration (78), `--to` and `--snapshot` syntax (2), a target and a repository at
//!    all (78). With neither `--to` nor `--snapshot` the fleet's rollback point (`prepare`) gives
//!    exactly the target and the snapshot; a configured `rollback.target_version`, `snapshot` or
//!    `repository` that disagrees with it is refused naming both (78);
//! 2. read-only: the preflight ([`kibana_rollback::preflight`], the same checks `plan` prints and
//!    the leader repeats). A running operation is busy (75), or attached to with `--wait` when it
//!    is the same request; otherwise the first failed check refuses with its exit code
//!    (unreachable 69, credentials 77, any other refusal 1), naming the others that failed;
//! 3. only then the coordination index is ensured and the `operation` document `_create`d. Losing
//!    that race to another trigger is the same 75 as finding it running.

use std::hash::{BuildHasher, Hasher};

use anyhow::{Context, Result};
use kibana_rollback::config::{Settings, SnapshotSelector};
use kibana_rollback::coord;
use kibana_rollback::es::Es;
use kibana_rollback::exit;
use kibana_rollback::fleet::{self, NewOperation, OperationDoc, Phase};
use kibana_rollback::preflight::{self, Scope};
use semver::Version;
use serde_json::json;

use super::context::{asked, requested_by, require_repository, require_target, selector, Ctx};
use super::follow::follow;
use super::{print_json, target_version, Cli};

/// `rb-<UTC yyyymmddthhmmss>-<4 hex>`: sortable, readable, unique enough for one-at-a-time use.
/// Lowercase throughout: the id becomes part of the safety snapshot's name, and Elasticsearch
/// refuses snapshot names with capitals.
pub fn new_operation_id(wall: &str) -> String {
    // Whole seconds: the fraction of `wall` stays out of the id.
    let stamp = kibana_rollback::coord::compact_stamp(wall);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("rb-{stamp}-{:04x}", h.finish() & 0xffff)
}

/// Whether a running operation is what this `start` would have asked for.
fn same_request(
    op: &OperationDoc,
    target: &Version,
    repository: &str,
    sel: &SnapshotSelector,
    settings: &Settings,
) -> bool {
    let snap_ok = match sel {
        SnapshotSelector::Latest => true,
        SnapshotSelector::Named(n) => &op.snapshot.name == n,
    };
    let hosts = &settings.coordination.expected_hosts;
    let hosts_ok = hosts.is_empty() || {
        let mut a = hosts.clone();
        let mut b = op.expected_hosts.clone();
        a.sort();
        b.sort();
        a == b
    };
    &op.target_version == target && op.snapshot.repository == repository && snap_ok && hosts_ok
}

async fn busy(ctx: &Ctx, op: &OperationDoc, same: bool, wait: bool, json_mode: bool) -> Result<u8> {
    if same && wait && op.phase != Phase::Failed {
        let msg = format!(
            "operation {} with the same request (target {}, snapshot {}/{}) is already running in phase {}; following it",
            op.id, op.target_version, op.snapshot.repository, op.snapshot.name, op.phase
        );
        if json_mode {
            println!(
                "{}",
                json!({"event": "attached", "operation": op.id, "phase": op.phase})
            );
        } else {
            println!("{msg}");
        }
        return follow(ctx, &op.id, json_mode).await;
    }
    let mut msg = fleet::running_message(op);
    if same && op.phase != Phase::Failed {
        msg.push_str(" (it is the same request: `start --wait` follows it)");
    }
    Err(exit::coded(exit::TEMPFAIL, msg))
}

/// `start --resume`: a `failed` operation keeps the lock; this puts it back into the phase it
/// failed in at a new epoch (every host redoes that phase's step) and, with `--wait`, follows it.
pub async fn resume(cli: &Cli, forget_restore: bool, wait: bool) -> Result<u8> {
    let ctx = Ctx::new(cli)?;
    let coord = ctx.coord();
    let Some(current) = coord
        .operation()
        .await
        .context("reading the coordination index")?
    else {
        return Err(exit::coded(
            exit::FAILED,
            "no operation to resume: none is recorded in the coordination index",
        ));
    };
    let op = &current.doc;
    let next = fleet::resume(
        op,
        &requested_by(ctx.settings()),
        &coord::wall_now(),
        forget_restore,
    )
    .map_err(|e| {
        exit::coded(
            exit::FAILED,
            format!("{e}; `kibana-rollback status` shows where it stands"),
        )
    })?;
    match coord.cas_operation(&next, current.version()).await {
        Ok(_) => {}
        Err(e) if e.is_conflict() => {
            return Err(exit::coded(
                exit::TEMPFAIL,
                format!(
                "operation {} changed while resuming it; look again with `kibana-rollback status`",
                op.id
            ),
            ))
        }
        Err(e) => return Err(anyhow::Error::new(e).context("writing the resumed operation")),
    }
    if cli.json {
        println!(
            "{}",
            json!({"event": "resumed", "operation": op.id, "phase": next.phase, "epoch": next.epoch})
        );
    } else {
        println!(
            "resumed operation {} in phase {} at epoch {}",
            op.id, next.phase, next.epoch
        );
    }
    if wait {
        return follow(&ctx, &op.id, cli.json).await;
    }
    Ok(exit::OK)
}

pub async fn run(
    cli: &Cli,
    to: Option<&str>,
    snapshot: Option<&str>,
    accept_unjudged: bool,
    wait: bool,
) -> Result<u8> {
    // 1. Local validation: nothing leaves this host until the input is known good.
    let loaded = cli.load()?;
    // `--to` syntax (2) before anything is asked.
    target_version(to, &loaded)?;
    require_repository(&loaded)?;
    if let SnapshotSelector::Named(n) = &selector(snapshot, &loaded) {
        if n.is_empty() || n.contains(['/', ',', '*', ' ']) {
            return Err(exit::coded(
                exit::USAGE,
                format!("--snapshot {n:?}: not a snapshot name; give a name or \"latest\""),
            ));
        }
    }
    let es = Es::new(&loaded.settings.elasticsearch)?;
    let ctx = Ctx { loaded, es };

    // With no --to and no --snapshot, the fleet's rollback point decides (read-only).
    let asked = asked(&ctx, to, snapshot).await?;
    let target = match asked.target.clone() {
        Some(t) => t,
        None => require_target(to, &ctx.loaded)?,
    };
    let note = if asked.point.is_some() {
        ": the fleet's rollback point"
    } else {
        ""
    };
    request(
        cli,
        &ctx,
        Request {
            target,
            selector: asked.selector.clone(),
            target_from: asked.target_from,
            accept_unjudged,
            wait,
            note: note.into(),
            undoes: None,
        },
    )
    .await
}

/// `start --undo OPERATION`: the fleet back to the version and state it had before that `done`
/// rollback — its `from_version`, from its safety snapshot (pinned by uuid) — as a new operation
/// through the same preflight and protocol (its own safety snapshot, exactly one restore).
pub async fn undo(cli: &Cli, op_id: &str, wait: bool) -> Result<u8> {
    let loaded = cli.load()?;
    let repository = require_repository(&loaded)?;
    let es = Es::new(&loaded.settings.elasticsearch)?;
    let ctx = Ctx { loaded, es };
    let Some(done) = ctx
        .coord()
        .history_of(op_id)
        .await
        .with_context(|| format!("reading operation {op_id}"))?
    else {
        return Err(exit::coded(
            exit::FAILED,
            format!("no finished operation {op_id} in the coordination index: `kibana-rollback history` lists them"),
        ));
    };
    if done.phase != Phase::Done {
        return Err(exit::coded(
            exit::FAILED,
            format!(
                "operation {op_id} ended {}, not done: only a done rollback can be undone (an aborted one changed nothing)",
                done.phase
            ),
        ));
    }
    let (Some(safety), Some(uuid)) = (
        done.safety_snapshot.name.clone(),
        done.safety_snapshot.taken_uuid.clone(),
    ) else {
        return Err(exit::coded(
            exit::FAILED,
            format!("operation {op_id} took no safety snapshot (rollback.safety_snapshot = false): there is nothing to return to"),
        ));
    };
    let Some(from) = done.from_version.clone() else {
        return Err(exit::coded(
            exit::FAILED,
            format!(
                "operation {op_id} does not record one Kibana version before it (its hosts reported more than one at its preflight, or an older kibana-rollback ran it): \
                 `kibana-rollback start --to VERSION --snapshot {safety} --accept-unjudged-snapshot` with the version the fleet ran"
            ),
        ));
    };
    if !done.failed_upgrade_on.is_empty() {
        eprintln!(
            "kibana-rollback: warning: {op_id} rolled back over a failed upgrade ({}): undoing it returns the fleet to that upgrade and its state, where Kibana failed; fix the cause first (`kibana-rollback status` showed the evidence)",
            done.failed_upgrade_on.join("; ")
        );
    }
    if done.snapshot.repository != repository {
        return Err(exit::coded(
            exit::CONFIG,
            format!(
                "operation {op_id}'s safety snapshot is in repository {}, rollback.repository is {repository}: set rollback.repository = \"{}\"",
                done.snapshot.repository, done.snapshot.repository
            ),
        ));
    }
    request(
        cli,
        &ctx,
        Request {
            target: from,
            selector: SnapshotSelector::Named(safety),
            target_from: "the undone operation",
            accept_unjudged: false,
            wait,
            note: format!(": undoing {op_id}"),
            undoes: Some((op_id.to_string(), uuid)),
        },
    )
    .await
}

/// What one `start` asks for, resolved.
struct Request {
    target: Version,
    selector: SnapshotSelector,
    target_from: &'static str,
    accept_unjudged: bool,
    wait: bool,
    /// Appended to the "requested rollback" line.
    note: String,
    /// `start --undo`: the operation undone and its safety snapshot's uuid (the one to restore).
    undoes: Option<(String, String)>,
}

/// Steps 2 and 3 of `start`: the preflight, then the operation document.
async fn request(cli: &Cli, ctx: &Ctx, req: Request) -> Result<u8> {
    let settings = ctx.settings();
    let coord = ctx.coord();
    let repository = require_repository(&ctx.loaded)?;
    let (target, sel, wait) = (&req.target, &req.selector, req.wait);

    // 2. The preflight, read-only.
    let report = preflight::run(
        &ctx.es,
        settings,
        Scope::Start,
        preflight::Request {
            target: Some(target),
            target_from: req.target_from,
            snapshot: sel,
            accept_unjudged: req.accept_unjudged,
        },
    )
    .await;
    if let Some(running) = &report.running {
        let same = same_request(&running.doc, target, &repository, sel, settings);
        return busy(ctx, &running.doc, same, wait, cli.json).await;
    }
    if let Some(refusal) = report.refusal() {
        return Err(refusal);
    }
    let resolved = report
        .snapshot
        .as_ref()
        .expect("a passed preflight resolved the snapshot");
    if let Some((op, uuid)) = &req.undoes {
        if &resolved.sref.uuid != uuid {
            return Err(exit::coded(
                exit::FAILED,
                format!(
                    "snapshot {} is not the safety snapshot operation {op} took (uuid {}, now {}): it was replaced; nothing was requested",
                    resolved.sref.name, uuid, resolved.sref.uuid
                ),
            ));
        }
    }
    let (hosts, source) = (report.expected.clone(), report.expected_from);

    // 3. Write the request.
    let wall = coord::wall_now();
    let id = new_operation_id(&wall);
    let mut doc = fleet::new_operation(NewOperation {
        id: id.clone(),
        requested_by: requested_by(settings),
        requested_at: wall,
        target_version: target.clone(),
        snapshot: resolved.sref.clone(),
        safety_snapshot: settings.rollback.safety_snapshot,
        snapshot_accepted_by: resolved.assessment.unjudged.as_ref().map(|why| {
            format!(
                "{} with --accept-unjudged-snapshot (it cannot be judged: {why})",
                requested_by(settings)
            )
        }),
        safety_snapshot_name: None,
        expected_hosts: hosts.clone(),
        barrier_client_check: settings.coordination.barrier_client_check,
    })
    .map_err(|e| exit::coded(exit::FAILED, e.to_string()))?;
    // What `start --undo` of this operation returns to. The leader records it afresh as the
    // operation leaves preflight; this stays for a leader whose agent predates that.
    doc.from_version = preflight::fleet_version(&report.hosts).ok();
    doc.undoes = req.undoes.as_ref().map(|(op, _)| op.clone());
    doc.failed_upgrade_on = report
        .hosts
        .iter()
        .filter_map(|(h, d)| {
            let found = d.as_ref()?.detection.as_ref()?;
            Some(format!("{h}: {} ({})", found.kind.as_str(), found.change()))
        })
        .collect();
    coord
        .ensure_index()
        .await
        .context("creating the coordination index")?;
    match coord.create_operation(&doc).await {
        Ok(_) => {}
        Err(e) if e.is_conflict() => {
            return match coord
                .operation()
                .await
                .context("reading the running operation")?
            {
                Some(running) => {
                    let same = same_request(&running.doc, target, &repository, sel, settings);
                    busy(ctx, &running.doc, same, wait, cli.json).await
                }
                None => Err(exit::coded(
                    exit::TEMPFAIL,
                    "another operation was being created or just ended; try again",
                )),
            };
        }
        Err(e) => return Err(anyhow::Error::new(e).context("writing the operation request")),
    }

    let warnings = report.checks.warnings();
    if cli.json {
        let v = json!({
            "event": "started",
            "operation": id,
            "target_version": target.to_string(),
            "snapshot": resolved.sref,
            "expected_hosts": hosts,
            "expected_hosts_from": source,
            "target_from": req.target_from,
            "undoes": doc.undoes,
            "safety_snapshot": doc.safety_snapshot,
            "warnings": warnings,
        });
        if wait {
            println!("{}", serde_json::to_string(&v).expect("serializes"));
        } else {
            print_json(&v);
        }
    } else {
        println!("{id}");
        eprintln!(
            "requested rollback {id}: Kibana {target} from snapshot {repository}/{} on {} ({source}){}",
            resolved.sref.name,
            hosts.join(", "),
            req.note
        );
        for w in &warnings {
            eprintln!("warning: {w}");
        }
    }
    if !wait {
        return Ok(exit::OK);
    }
    follow(ctx, &id, cli.json).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_are_readable_and_differ() {
        let a = new_operation_id("2026-03-04T05:06:07Z");
        assert!(a.starts_with("rb-20260304t050607-"), "{a}");
        assert_eq!(a.len(), "rb-20260304t050607-abcd".len());
        let ids: std::collections::BTreeSet<_> = (0..50)
            .map(|_| new_operation_id("2026-03-04T05:06:07Z"))
            .collect();
        assert!(ids.len() > 40);
    }
}
