//! Following an operation (`start --wait`, `abort --wait`, `start --resume --wait`, `status
//! --watch`): only reads — the operation document once a second (real-time GET), the expected
//! hosts' documents for "what it waits for", and at the end `history-<id>`. A `done` or
//! `aborted` one ends the wait once it is archived (the lock released, so a command run next
//! finds no operation), or a lease and a few seconds later at most; a `failed` operation stays
//! as the `operation` document (it may be resumed), so `failed` there ends the wait too. Ctrl-C or SIGTERM stops following, never the operation (exit 75: still running).
//!
//! On a terminal (and without `--json`) the progress is drawn live ([`super::live`]): phase
//! changes as lines that stay, below them one block redrawn every second. Otherwise — the
//! journal, Ansible, pipes — plain lines: each phase change with its timestamp, and what the
//! operation waits for whenever that changes.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kibana_rollback::coord::Coord;
use kibana_rollback::es::EsError;
use kibana_rollback::exit;
use kibana_rollback::fleet::{self, describe_error, ClaimDoc, HostDoc, OperationDoc, Phase};
use serde_json::json;

use super::context::Ctx;
use super::live::{self, Screen, View};
use super::outcome::{outcome_json, outcome_name, phase_change_json, phase_change_line};

fn emit(json_mode: bool, v: serde_json::Value, text: impl FnOnce() -> String) {
    if json_mode {
        println!(
            "{}",
            serde_json::to_string(&v).expect("JSON value serializes")
        );
    } else {
        println!("{}", text());
    }
}

enum Seen {
    Running(OperationDoc, Vec<HostDoc>, Vec<ClaimDoc>),
    /// `done` or `aborted`, still the operation document: the lock is released once it is
    /// archived, an instant later (a lease later when its leader is gone).
    Archiving(OperationDoc),
    Finished(OperationDoc),
    Vanished,
}

async fn look(coord: &Coord<'_>, op_id: &str) -> Result<Seen, EsError> {
    if let Some(v) = coord.operation().await? {
        if v.doc.id == op_id {
            // `failed` stays as the operation document (it may be resumed); `done` and `aborted`
            // are archived and deleted, but they are final already.
            if matches!(v.doc.phase, Phase::Done | Phase::Aborted) {
                return Ok(Seen::Archiving(v.doc));
            }
            if v.doc.phase.is_terminal() {
                return Ok(Seen::Finished(v.doc));
            }
            let hosts = coord.hosts(&v.doc.expected_hosts).await?;
            let claims = coord.claims_holding(&v.doc).await;
            return Ok(Seen::Running(v.doc, hosts, claims));
        }
    }
    match coord.history_of(op_id).await? {
        Some(h) => Ok(Seen::Finished(h)),
        None => Ok(Seen::Vanished),
    }
}

/// Follows operation `op_id` until it ends; prints phase changes and what it waits for. Exit
/// code: 0 done, 1 aborted/failed/released/vanished, 75 when a signal stopped the following.
pub async fn follow(ctx: &Ctx, op_id: &str, json_mode: bool) -> Result<u8> {
    Ok(match follow_until(ctx, op_id, json_mode, false).await? {
        Followed::Ended(code) | Followed::Interrupted(code) => code,
    })
}

/// How following ended.
pub enum Followed {
    /// The operation ended (or vanished): the outcome's exit code.
    Ended(u8),
    /// A signal stopped the following; the operation goes on.
    Interrupted(u8),
}

/// The block for a running operation, its expected hosts in order.
fn draw(screen: &mut Screen, op: &OperationDoc, hosts: &[HostDoc], waiting: &str) {
    let view = View {
        op: Some(op),
        hosts: op
            .expected_hosts
            .iter()
            .map(|id| (id.clone(), hosts.iter().find(|h| &h.host_id == id)))
            .collect(),
        waiting: Some(waiting),
        last: None,
    };
    screen.draw(&live::render(&view, live::width()));
}

/// [`follow`], telling an interruption apart from an end (for `status --watch`, which passes
/// `watching`: a signal then ends it silently, as the watch it is).
pub async fn follow_until(
    ctx: &Ctx,
    op_id: &str,
    json_mode: bool,
    watching: bool,
) -> Result<Followed> {
    use tokio::signal::unix::{signal, SignalKind};
    let coord = ctx.coord();
    let live = !json_mode && live::stdout_is_terminal();
    let mut screen = Screen::default();
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut printed = 0usize;
    let mut last_wait = String::new();
    let mut last_phase: Option<Phase> = None;
    let mut vanished = 0u32;
    let mut failing_since: Option<Instant> = None;
    // Elasticsearch may be briefly unreachable (a node restarting); give up after this long.
    let patience = Duration::from_secs(120).max(ctx.settings().elasticsearch.request_timeout * 2);
    // Anyone archives an ended operation a lease after its last change (its leader at once).
    let archive_patience = ctx.settings().coordination.lease + Duration::from_secs(5);
    let mut archiving_since: Option<Instant> = None;
    loop {
        match look(&coord, op_id).await {
            Ok(seen) => {
                if failing_since.take().is_some() && !json_mode {
                    let msg = format!(
                        "kibana-rollback: Elasticsearch answers again; still following {op_id}"
                    );
                    if live {
                        screen.log(&msg);
                    } else {
                        eprintln!("{msg}");
                    }
                }
                let op = match &seen {
                    Seen::Running(op, ..) | Seen::Archiving(op) | Seen::Finished(op) => Some(op),
                    Seen::Vanished => None,
                };
                if let Some(op) = op {
                    for c in op.history.iter().skip(printed) {
                        if live {
                            screen.log(&phase_change_line(c));
                            continue;
                        }
                        emit(
                            json_mode,
                            json!({"event": "phase", "operation": op_id, "change": phase_change_json(c)}),
                            || phase_change_line(c),
                        );
                    }
                    printed = printed.max(op.history.len());
                    last_phase = Some(op.phase);
                }
                match seen {
                    Seen::Running(op, hosts, claims) => {
                        vanished = 0;
                        let w = fleet::waiting_for(&op, &hosts, &claims);
                        if live {
                            draw(&mut screen, &op, &hosts, &w);
                        } else if w != last_wait {
                            emit(
                                json_mode,
                                json!({"event": "waiting", "operation": op_id, "phase": op.phase, "epoch": op.epoch, "leader": op.leader_id(), "waiting_for": w}),
                                || format!("    {w}"),
                            );
                            last_wait = w;
                        }
                    }
                    Seen::Archiving(op) => {
                        let since = *archiving_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= archive_patience {
                            screen.keep();
                            return Ok(Followed::Ended(finish(&op, json_mode)));
                        }
                    }
                    Seen::Finished(op) => {
                        screen.keep();
                        return Ok(Followed::Ended(finish(&op, json_mode)));
                    }
                    Seen::Vanished => {
                        vanished += 1;
                        if vanished >= 3 {
                            let msg = format!(
                                "operation {op_id} is gone and left no history-{op_id} record (last seen in phase {}); check `kibana-rollback history`",
                                last_phase.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
                            );
                            screen.keep();
                            emit(
                                json_mode,
                                json!({"event": "outcome", "operation": op_id, "outcome": "vanished", "error": msg}),
                                || msg.clone(),
                            );
                            return Ok(Followed::Ended(exit::FAILED));
                        }
                    }
                }
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= patience {
                    return Err(anyhow::Error::new(e).context(format!(
                        "following operation {op_id} (it may still be running)"
                    )));
                }
                if since.elapsed() < Duration::from_millis(10) {
                    let msg = format!(
                        "kibana-rollback: warning: cannot read operation {op_id} ({e}); retrying"
                    );
                    if live {
                        screen.log(&msg);
                    } else {
                        eprintln!("{msg}");
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = &mut ctrl_c => {
                screen.keep();
                if watching {
                    return Ok(Followed::Interrupted(exit::OK));
                }
                return Ok(Followed::Interrupted(stop_following(op_id, last_phase, json_mode, "interrupt")));
            }
            _ = sigterm.recv() => {
                screen.keep();
                if watching {
                    return Ok(Followed::Interrupted(exit::OK));
                }
                return Ok(Followed::Interrupted(stop_following(op_id, last_phase, json_mode, "SIGTERM")));
            }
        }
    }
}

fn stop_following(op_id: &str, phase: Option<Phase>, json_mode: bool, signal: &str) -> u8 {
    let phase = phase.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
    let msg = format!(
        "stopped following operation {op_id} ({signal}); the operation goes on (phase {phase}): \
         follow it with `kibana-rollback status`, stop it with `kibana-rollback abort`"
    );
    emit(
        json_mode,
        json!({"event": "stopped_following", "operation": op_id, "phase": phase, "signal": signal}),
        || msg.clone(),
    );
    if json_mode {
        eprintln!("kibana-rollback: {msg}");
    }
    exit::TEMPFAIL
}

fn finish(op: &OperationDoc, json_mode: bool) -> u8 {
    let name = outcome_name(op);
    let mut event = outcome_json(op);
    event["event"] = json!("outcome");
    emit(json_mode, event, || {
        match name {
        "done" => format!(
            "operation {} done: every expected host ({}) runs Kibana {} on the restored state of {}/{}",
            op.id,
            op.expected_hosts.join(", "),
            op.target_version,
            op.snapshot.repository,
            op.snapshot.name
        ),
        "aborted" => format!(
            "operation {} aborted: {}; nothing was restored and every unit is back on its unchanged package",
            op.id,
            describe_error(op.error.as_ref())
        ),
        "failed" => {
            let mut s = format!("operation {} failed in {}: {}", op.id, failed_in(op), describe_error(op.error.as_ref()));
            if let (true, Some(name)) = (op.restore.is_some(), &op.safety_snapshot.name) {
                s.push_str(&format!(
                    "; the state from before the restore is in snapshot {}/{name}",
                    op.snapshot.repository
                ));
            }
            s
        }
        _ => format!("operation {} ended {name} in phase {}: {}", op.id, op.phase, describe_error(op.error.as_ref())),
    }
    });
    if name == "done" {
        exit::OK
    } else {
        exit::FAILED
    }
}

fn failed_in(op: &OperationDoc) -> String {
    op.history
        .iter()
        .rev()
        .find(|c| c.to == Phase::Failed && c.from != Phase::Failed)
        .map(|c| c.from.to_string())
        .unwrap_or_else(|| "?".into())
}
