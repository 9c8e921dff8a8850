//! `abort`: ask the leader to abort the running operation. Only before the restore point: the
//! request is a compare-and-set of `abort_requested` on the operation document (re-read and
//! retried when an agent wrote in between); the leader then brings every unit back on its
//! unchanged package and ends the operation `aborted`.
//!
//! Exit codes: 0 the request is recorded (or already was) or no operation runs — aborting nothing
//! is not an error, so scripts may call it unconditionally; 1 refused (past the restore point or
//! already ended); 75 the document kept changing under us. With `--wait` the exit code is the
//! outcome's, as with `start --wait`.

use anyhow::{Context, Result};
use kibana_rollback::fleet::{self, Phase};
use kibana_rollback::{coord, exit};
use serde_json::json;

use super::context::{requested_by, Ctx};
use super::follow::follow;
use super::{print_json, Cli};

const ATTEMPTS: usize = 5;

pub async fn run(cli: &Cli, reason: Option<&str>, wait: bool) -> Result<u8> {
    let ctx = Ctx::new(cli)?;
    let coord = ctx.coord();
    let by = requested_by(ctx.settings());
    let reason = reason.unwrap_or("requested with `kibana-rollback abort`");
    for _ in 0..ATTEMPTS {
        let Some(current) = coord
            .operation()
            .await
            .context("reading the operation document")?
        else {
            if cli.json {
                print_json(
                    &json!({"operation": null, "abort_requested": false, "message": "no operation running"}),
                );
            } else {
                println!("no operation running; nothing to abort");
            }
            return Ok(exit::OK);
        };
        let op = &current.doc;
        if let Some(a) = &op.abort_requested {
            if !op.phase.is_terminal() {
                if cli.json && !wait {
                    print_json(
                        &json!({"operation": op.id, "phase": op.phase, "abort_requested": a, "already": true}),
                    );
                } else if !cli.json {
                    println!(
                        "abort of operation {} was already requested by {} ({}); phase {}",
                        op.id, a.by, a.reason, op.phase
                    );
                }
                return if wait {
                    follow(&ctx, &op.id, cli.json).await
                } else {
                    Ok(exit::OK)
                };
            }
        }
        // Nobody ever took the lease: nothing was checked, stopped or changed, and no agent
        // would act on a request. End it here (compare-and-set: an agent taking the lease at
        // this moment makes exactly one of us win), then archive it and release the lock.
        if let Ok(withdrawn) = fleet::withdraw(op, &by, reason, &coord::wall_now()) {
            match coord.cas_operation(&withdrawn, current.version()).await {
                Ok(version) => {
                    coord
                        .archive(&withdrawn)
                        .await
                        .context("archiving the withdrawn operation")?;
                    match coord.delete_operation(version).await {
                        Ok(()) => {}
                        // An agent archived and deleted it first: the same end.
                        Err(e) if e.is_conflict() || e.is_not_found() => {}
                        Err(e) => return Err(anyhow::Error::new(e).context("releasing the lock")),
                    }
                    if cli.json {
                        print_json(
                            &json!({"operation": op.id, "phase": "aborted", "withdrawn": true}),
                        );
                    } else {
                        println!(
                            "operation {} withdrawn before any agent acted: nothing was stopped or changed; it is archived as aborted",
                            op.id
                        );
                    }
                    return Ok(exit::OK);
                }
                Err(e) if e.is_conflict() => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
                Err(e) => return Err(anyhow::Error::new(e).context("withdrawing the operation")),
            }
        }
        let next = match fleet::request_abort(op, &by, reason) {
            Ok(n) => n,
            Err(_) if op.phase == Phase::Failed => {
                return Err(exit::coded(
                    exit::FAILED,
                    format!(
                        "operation {} already ended failed and cannot be aborted; inspect it with `kibana-rollback status` and release it with `kibana-rollback lock --force-release --yes`",
                        op.id
                    ),
                ))
            }
            Err(_) if op.phase.is_terminal() => {
                return Err(exit::coded(exit::FAILED, format!("operation {} already ended {}; nothing to abort", op.id, op.phase)))
            }
            Err(e) => {
                let safety = match (&op.safety_snapshot.enabled, &op.safety_snapshot.name) {
                    (true, Some(n)) => format!(
                        "; to roll forward again afterwards, stop every Kibana and restore the kibana feature state from the safety snapshot {}/{n}, then reinstall the newer Kibana",
                        op.snapshot.repository
                    ),
                    _ => "; the safety snapshot is disabled for this operation, so the post-upgrade state cannot be restored".into(),
                };
                return Err(exit::coded(
                    exit::FAILED,
                    format!("cannot abort: {e}; it will end done or failed — follow it with `kibana-rollback status`{safety}"),
                ));
            }
        };
        match coord.cas_operation(&next, current.version()).await {
            Ok(_) => {
                if cli.json && !wait {
                    print_json(
                        &json!({"operation": op.id, "phase": op.phase, "abort_requested": next.abort_requested, "already": false}),
                    );
                } else if !cli.json {
                    println!(
                        "abort of operation {} requested (phase {}); the leader brings every unit back on its unchanged package and ends it aborted",
                        op.id, op.phase
                    );
                    if op.leader.is_none() {
                        println!(
                            "note: no agent holds the lease right now, so the request waits for the next leader"
                        );
                    }
                }
                return if wait {
                    follow(&ctx, &op.id, cli.json).await
                } else {
                    Ok(exit::OK)
                };
            }
            Err(e) if e.is_conflict() => {
                tracing::debug!(
                    "operation document changed while requesting the abort; re-reading"
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context("writing the abort request")),
        }
    }
    Err(exit::coded(
        exit::TEMPFAIL,
        format!(
            "the operation document changed {ATTEMPTS} times while requesting the abort; try again"
        ),
    ))
}
