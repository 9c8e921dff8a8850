//! `lock`: show the operation lock (the `operation` document is the lease), and with
//! `--force-release` remove it.
//!
//! A forced release archives the document as `history-<id>` with an error saying who released it
//! in which phase, then deletes it with a compare-and-set on the version just read (a changed
//! document is re-read and the release retried). It is for a fleet whose agents are dead: a live
//! leader may be in the middle of a step (even a restore), and agents that still see nothing
//! keep their units as they are. So it prints a loud warning and needs confirmation:
//! `--yes`, or typing the operation id on an interactive terminal. Without either (and with
//! stdin not a terminal) it refuses with exit 2 and changes nothing. Non-interactive callers
//! (Ansible) pass `--yes`. After the release the agents lift nothing on their own (nobody knows
//! in which state each host is): this host's hold is lifted here if it is one of the fleet's
//! (Kibana is not started), and the exact commands for the others are printed.
//! An operation document that does not verify with the fleet key is removed (with `--yes`) and
//! printed, not archived: no agent acted on it, and archiving would sign it.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, Result};
use kibana_rollback::coord;
use kibana_rollback::es::EsError;
use kibana_rollback::exit;
use kibana_rollback::fleet::{self, OpError, PhaseChange};
use serde_json::json;

use kibana_rollback::fleet::describe_error;

use super::context::{requested_by, Ctx};
use super::outcome::FORCE_RELEASED;
use super::{print_json, Cli};

const ATTEMPTS: usize = 5;

/// Removes an operation document that does not verify with the fleet key. Nothing acted on it
/// (agents refuse it), so there is nothing to lift; it is not archived, since archiving would
/// sign a forgery into history. Its content is printed for the record.
async fn release_untrusted(
    cli: &Cli,
    coord: &coord::Coord<'_>,
    why: &str,
    yes: bool,
) -> Result<u8> {
    let Some(stored) = coord
        .operation_unverified()
        .await
        .context("reading the operation document")?
    else {
        println!("the lock is free: no operation document in {}", coord.index);
        return Ok(exit::OK);
    };
    eprintln!(
        "WARNING: the operation document in {} does not verify with the fleet key ({why}); no agent acts on it. \
         Removing it; it is not archived. Find out who could write the index.",
        coord.index
    );
    if !yes {
        return Err(exit::coded(
            exit::USAGE,
            "removing an unverified operation needs --yes; nothing was changed",
        ));
    }
    match coord
        .delete_operation(fleet::DocVersion {
            seq_no: stored.seq_no,
            primary_term: stored.primary_term,
        })
        .await
    {
        Ok(()) => {}
        Err(e) if e.is_conflict() || e.is_not_found() => {
            return Err(exit::coded(
                exit::TEMPFAIL,
                "the operation document changed while it was being removed; nothing was removed, run it again",
            ))
        }
        Err(e) => return Err(e).context("removing the unverified operation document"),
    }
    if cli.json {
        print_json(
            &json!({"released": true, "unverified": true, "why": why, "document": stored.doc}),
        );
    } else {
        println!("removed the unverified operation document; it read:");
        println!("{}", serde_json::to_string(&stored.doc).unwrap_or_default());
    }
    Ok(exit::OK)
}

pub async fn run(cli: &Cli, force_release: bool, yes: bool) -> Result<u8> {
    let ctx = Ctx::new(cli)?;
    let coord = ctx.coord();
    let current = match coord.operation().await {
        Err(EsError::Untrusted { why, .. }) if force_release => {
            return release_untrusted(cli, &coord, &why.to_string(), yes).await;
        }
        other => other.context("reading the operation document")?,
    };
    let Some(current) = current else {
        if cli.json {
            print_json(&json!({"index": coord.index, "held": false, "operation": null}));
        } else {
            println!("the lock is free: no operation document in {}", coord.index);
        }
        return Ok(exit::OK);
    };
    let op = &current.doc;
    if !force_release {
        if cli.json {
            print_json(&json!({
                "index": coord.index,
                "held": true,
                "operation": op.id,
                "phase": op.phase,
                "epoch": op.epoch,
                "leader": op.leader,
                "seq_no": current.seq_no,
                "primary_term": current.primary_term,
                "requested_by": op.requested_by,
                "requested_at": op.requested_at,
            }));
        } else {
            println!("lock held by operation {} in {}", op.id, coord.index);
            println!("  phase         {}", op.phase);
            println!("  epoch         {}", op.epoch);
            match &op.leader {
                Some(l) => println!("  leader        {} ({} renewals)", l.host_id, l.renewals),
                None => println!("  leader        none (no agent has taken the lease)"),
            }
            println!(
                "  seq_no        {} (primary term {})",
                current.seq_no, current.primary_term
            );
            println!(
                "  requested     by {} at {}",
                op.requested_by, op.requested_at
            );
            println!("A live leader renews every lease/3 (coordination.lease = {}): run `lock` again and", humantime::format_duration(ctx.settings().coordination.lease));
            println!("the renewals and seq_no move. If they do not, no agent leads the operation.");
        }
        return Ok(exit::OK);
    }

    let warning = format!(
        "WARNING: force-releasing the lock of operation {} (phase {}, leader {}). Agents may still be acting on it: \
         a leader may be stopping units or restoring the kibana feature state right now, and hosts keep whatever state \
         they reached. Use this only when every agent of the fleet is dead or stopped; check each host's Kibana unit afterwards.",
        op.id,
        op.phase,
        op.leader_id().unwrap_or("none")
    );
    eprintln!("{warning}");
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(exit::coded(
                exit::USAGE,
                "--force-release needs --yes when stdin is not a terminal; nothing was changed",
            ));
        }
        eprint!("type the operation id ({}) to release it: ", op.id);
        std::io::stderr().flush().ok();
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .context("reading the confirmation")?;
        if answer.trim() != op.id {
            return Err(exit::coded(
                exit::USAGE,
                "not confirmed; nothing was changed",
            ));
        }
    }

    let by = requested_by(ctx.settings());
    let mut seen = current;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            match coord
                .operation()
                .await
                .context("re-reading the operation document")?
            {
                Some(v) if v.doc.id == seen.doc.id => seen = v,
                Some(v) => {
                    return Err(exit::coded(
                        exit::TEMPFAIL,
                        format!(
                            "operation {} ended and {} started meanwhile; nothing was released",
                            seen.doc.id, v.doc.id
                        ),
                    ))
                }
                None => {
                    println!(
                        "operation {} ended on its own meanwhile; the lock is free",
                        seen.doc.id
                    );
                    return Ok(exit::OK);
                }
            }
        }
        let op = &seen.doc;
        let wall = coord::wall_now();
        let cause = format!(
            "{FORCE_RELEASED} by {by} at {wall} while in phase {} (epoch {}, leader {}); agents may have been acting",
            op.phase,
            op.epoch,
            op.leader_id().unwrap_or("none")
        );
        let mut archived = op.clone();
        archived.history.push(PhaseChange {
            from: op.phase,
            to: op.phase,
            epoch: op.epoch,
            reason: cause.clone(),
            at: wall,
        });
        archived.error = Some(match &op.error {
            Some(prev) => OpError {
                host: prev.host.clone(),
                cause: format!("{cause}; earlier error: {}", describe_error(Some(prev))),
            },
            None => OpError {
                host: None,
                cause: cause.clone(),
            },
        });
        // Overwrite, not create: the latest state with the release note is what history keeps.
        coord
            .put_history(&archived)
            .await
            .context("archiving the operation before releasing it")?;
        match coord.delete_operation(seen.version()).await {
            Ok(()) => {
                let after = after_release(&ctx, op).await;
                if cli.json {
                    print_json(
                        &json!({"released": true, "operation": op.id, "phase": op.phase, "history": fleet::history_doc_id(&op.id), "error": archived.error, "lifted_here": after.lifted_here, "commands": after.commands, "restore_in_doubt": after.restore_in_doubt}),
                    );
                } else {
                    println!(
                        "released the lock of operation {}; archived as {}",
                        op.id,
                        fleet::history_doc_id(&op.id)
                    );
                    if let Some(l) = &after.lifted_here {
                        println!("{l}");
                    }
                    if let Some(w) = &after.restore_in_doubt {
                        eprintln!("WARNING: {w}");
                    }
                    if !after.commands.is_empty() {
                        println!("the agents keep their hosts' Kibana stopped and held; on each host, once you know which Kibana should run there:");
                        for (host, cmd) in &after.commands {
                            println!("  {host}: {cmd}");
                        }
                    }
                }
                return Ok(exit::OK);
            }
            Err(e) if e.is_conflict() => continue,
            Err(e) if e.is_not_found() => {
                println!(
                    "operation {} was removed meanwhile; the lock is free",
                    op.id
                );
                return Ok(exit::OK);
            }
            Err(e) => return Err(anyhow::Error::new(e).context("deleting the operation document")),
        }
    }
    Err(exit::coded(
        exit::TEMPFAIL,
        format!("the operation document kept changing ({ATTEMPTS} attempts): an agent is live and leading it; use `abort` instead"),
    ))
}

/// What `--force-release` leaves for the operator: the agents lift nothing on their own (the
/// state is unknown), so the hold that keeps each host's Kibana stopped stays; this host's own
/// is lifted here (Kibana is not started), and the exact commands are printed for the others.
struct AfterRelease {
    lifted_here: Option<String>,
    commands: Vec<(String, String)>,
    restore_in_doubt: Option<String>,
}

/// A restore the released operation may have issued and never recorded finished: nobody
/// watches it now, and a Kibana started while it runs, or on what it left half done, starts on
/// that. Said before the commands that start Kibana.
fn restore_in_doubt(op: &fleet::OperationDoc) -> Option<String> {
    let r = op.restore.as_ref().filter(|_| !op.restore_completed())?;
    let safety = match (&op.safety_snapshot.name, &op.safety_snapshot.taken_uuid) {
        (Some(name), Some(_)) => {
            format!("; the safety snapshot {name} holds the state from before it")
        }
        _ => String::new(),
    };
    Some(format!(
        "operation {} may have issued the restore of {}/{} (epoch {}) and did not record it finished: \
         before starting any Kibana, check that no restore runs (`GET _recovery?active_only=true`) and that the cluster \
         is green (`GET _cluster/health`); if it did not complete, `kibana-rollback start` \
         rolls back again (every Kibana stopped, one more restore){safety}",
        op.id, op.snapshot.repository, op.snapshot.name, r.epoch
    ))
}

async fn after_release(ctx: &Ctx, op: &fleet::OperationDoc) -> AfterRelease {
    let unit = &ctx.settings().kibana.unit;
    let hold = kibana_rollback::host::hold::Hold::new(
        &kibana_rollback::host::local::Local::this_host(),
        unit,
    );
    let me = &ctx.settings().coordination.host_id;
    let lifted_here = if op.is_expected(me) && hold.is_held() {
        match kibana_rollback::host::systemd::SystemdUnits::connect().await {
            Ok(units) => Some(match hold.lift(&units).await {
                Ok(()) => format!("lifted the hold on {unit} here ({me}); it is not started"),
                Err(e) => format!("could not lift the hold on {unit} here ({me}): {e}"),
            }),
            Err(e) => Some(format!(
                "could not reach systemd to lift the hold here ({me}): {e}"
            )),
        }
    } else {
        None
    };
    let commands = op
        .expected_hosts
        .iter()
        .chain(op.excluded.iter().map(|x| &x.host))
        .filter(|h| !(lifted_here.is_some() && *h == me))
        .map(|h| {
            (
                h.clone(),
                format!(
                    "rm -f {} && systemctl unmask {unit} 2>/dev/null; systemctl daemon-reload && systemctl start {unit}",
                    hold.path()
                ),
            )
        })
        .collect();
    AfterRelease {
        lifted_here,
        commands,
        restore_in_doubt: restore_in_doubt(op),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kibana_rollback::fleet::RestoreRecord;

    #[test]
    fn a_restore_issued_and_not_recorded_finished_is_said_with_what_to_check() {
        let mut op = fleet::new_operation(fleet::NewOperation {
            id: "rb-1".into(),
            requested_by: "t".into(),
            requested_at: "w".into(),
            target_version: semver::Version::new(8, 14, 3),
            snapshot: fleet::SnapshotRef {
                repository: "backups".into(),
                name: "nightly-1".into(),
                uuid: "s1".into(),
            },
            snapshot_accepted_by: None,
            safety_snapshot: true,
            safety_snapshot_name: None,
            expected_hosts: vec!["a".into()],
            barrier_client_check: true,
        })
        .unwrap();
        assert_eq!(restore_in_doubt(&op), None, "no restore recorded");
        op.restore = Some(RestoreRecord {
            epoch: 3,
            issued: true,
            completed: false,
            superseded_epochs: vec![],
            detail: String::new(),
        });
        op.safety_snapshot.taken_uuid = Some("u1".into());
        let w = restore_in_doubt(&op).expect("in doubt");
        let safety = op.safety_snapshot.name.clone().unwrap();
        assert!(
            w.contains(&op.snapshot.name)
                && w.contains("epoch 3")
                && w.contains("_recovery")
                && w.contains(&safety),
            "{w}"
        );
        op.restore.as_mut().unwrap().completed = true;
        assert_eq!(
            restore_in_doubt(&op),
            None,
            "a finished restore is no doubt"
        );
    }
}
