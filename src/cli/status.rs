//! `status`: the fleet table and the operation block, or "no operation running" with the last
//! finished operation's outcome. Read-only.
//!
//! Hosts shown: the operation's expected hosts (a missing host document shows as "not
//! registered"), or every registered host when no operation runs. The STEP column is the host's
//! acknowledgement *of the current operation*: `<step>: <result>`, marked `(earlier phase)` when
//! it answers a step the current phase no longer counts. A host document carries no wall time,
//! only a heartbeat counter, so `status` shows the counter (watch it move between two runs) and
//! leaves liveness judgements to `plan`, which watches it for a heartbeat period.
//!
//! `status --watch` keeps following: each operation as `start --wait` follows it (live on a
//! terminal, plain lines otherwise), and between operations the fleet (on a terminal) or one
//! line saying none runs; Ctrl-C or SIGTERM ends it with exit 0.
//!
//! `--json` keys are stable: `operation` (the document plus `waiting_for`, or null), `hosts`,
//! `waiting_for` (or null), `last_finished` (outcome object of the newest history entry, or null),
//! `rollback_recommended` (while no operation runs and an agent recorded a failed upgrade: the
//! hosts with their evidence, the target and snapshot `start` would use; else null).
//!
//! A recorded failed upgrade (`kibana_rollback::detection`) is shown first, as "rollback
//! recommended" with its evidence (`recommend`); nothing is rolled back until `start`.

use anyhow::{Context, Result};
use kibana_rollback::exit;
use kibana_rollback::fleet::{self, HostDoc, OperationDoc, StepResult};
use serde_json::json;

use kibana_rollback::fleet::describe_error;

use super::context::Ctx;
use super::outcome::{outcome_json, outcome_name};
use super::{print_json, print_table, Cli};

fn step_name<T: serde::Serialize>(s: &T) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The operation document as stored, if one runs.
async fn current_operation(
    coord: &kibana_rollback::coord::Coord<'_>,
) -> Result<Option<OperationDoc>> {
    Ok(coord
        .operation()
        .await
        .context("reading the operation document")?
        .map(|v| v.doc))
}

/// A step's result in words; a failed one's cause cut to `width` (the table) or whole.
fn result_text(result: &StepResult, width: Option<usize>) -> String {
    match result {
        StepResult::Ok => "ok".to_string(),
        StepResult::InProgress => "in progress".to_string(),
        StepResult::Failed { cause } => match width {
            Some(w) => format!("failed ({})", shorten(cause, w)),
            None => format!("failed: {cause}"),
        },
    }
}

/// How much of a failed step's cause the STEP column shows.
const STEP_CAUSE_WIDTH: usize = 36;

/// `text`'s first line cut to `width` display columns (a wide character takes two and is never
/// split), with an ellipsis when anything was left out.
fn shorten(text: &str, width: usize) -> String {
    use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};
    let first = text.lines().next().unwrap_or("");
    if first.width() <= width && !text.contains('\n') {
        return first.to_string();
    }
    let mut cut = String::new();
    let mut used = 0;
    for c in first.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        cut.push(c);
        used += w;
    }
    format!("{}…", cut.trim_end())
}

/// The host's acknowledgement of the current operation, for the STEP column.
pub fn step_cell(op: Option<&OperationDoc>, h: &HostDoc) -> String {
    let (Some(op), Some(ack)) = (op, &h.ack) else {
        return "-".into();
    };
    if ack.operation_id != op.id {
        return "-".into();
    }
    // The table stays narrow: the whole cause is in `status HOST` and `--json`.
    let result = result_text(&ack.result, Some(STEP_CAUSE_WIDTH));
    let current = op.phase.ack_step() == Some(ack.step) && ack.epoch >= op.phase_epoch;
    let mut s = format!("{}: {result}", step_name(&ack.step));
    if !current && !op.phase.is_terminal() {
        s.push_str(" (earlier phase)");
    }
    s
}

pub fn host_json(
    id: &str,
    doc: Option<&HostDoc>,
    op: Option<&OperationDoc>,
    target: Option<&semver::Version>,
) -> serde_json::Value {
    match doc {
        None => json!({"host_id": id, "registered": false}),
        Some(h) => json!({
            "host_id": h.host_id,
            "registered": true,
            "unit_state": h.unit_state,
            "installed_version": h.installed_version.as_ref().map(ToString::to_string),
            "held": h.held,
            "on_target": target.map(|t| h.installed_version.as_ref() == Some(t)),
            "agent_version": h.agent_version,
            "heartbeat": h.heartbeat,
            "ack": h.ack,
            "readiness": h.readiness,
            "detection": h.detection,
            "step": op.map(|_| step_cell(op, h)),
        }),
    }
}

pub fn host_row(id: &str, doc: Option<&HostDoc>, op: Option<&OperationDoc>) -> Vec<String> {
    match doc {
        None => vec![
            id.to_string(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "not registered".into(),
        ],
        Some(h) => vec![
            h.host_id.clone(),
            step_name(&h.unit_state),
            h.installed_version
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "-".into()),
            if h.held { "yes".into() } else { "no".into() },
            step_cell(op, h),
            format!("{} (heartbeat {})", h.agent_version, h.heartbeat),
        ],
    }
}

pub async fn run(cli: &Cli) -> Result<u8> {
    let ctx = Ctx::new(cli)?;
    let coord = ctx.coord();
    let op = current_operation(&coord).await?;
    coord.refresh().await;
    let history = coord.history().await.context("reading the history")?;
    let last = history.first();

    // Which hosts, and their documents.
    let (ids, docs): (Vec<String>, Vec<HostDoc>) = match &op {
        Some(op) => (
            op.expected_hosts.clone(),
            coord
                .hosts(&op.expected_hosts)
                .await
                .context("reading host documents")?,
        ),
        None => {
            let all = coord
                .all_hosts()
                .await
                .context("listing registered hosts")?;
            (all.iter().map(|h| h.host_id.clone()).collect(), all)
        }
    };
    let find = |id: &str| docs.iter().find(|d| d.host_id == id);
    // Two machines with one host id (a cloned VM): the second one's claim, for the hosts shown.
    let claims: Vec<fleet::ClaimDoc> = coord
        .claims()
        .await
        .unwrap_or_default() // no claim document was ever written
        .into_iter()
        .filter(|c| ids.contains(&c.host_id))
        .collect();
    let waiting = op.as_ref().map(|o| fleet::waiting_for(o, &docs, &claims));
    // Failed upgrades the agents recorded, while no rollback runs.
    let recommended = match &op {
        None => super::recommend::recommendation(&ctx.es, ctx.settings(), &docs).await,
        Some(_) => None,
    };
    let target = op
        .as_ref()
        .map(|o| &o.target_version)
        .or(last.map(|l| &l.target_version));

    if cli.json {
        let operation = op.as_ref().map(|o| {
            let mut v = serde_json::to_value(o).expect("serializes");
            v["waiting_for"] = json!(waiting);
            v
        });
        print_json(&json!({
            "index": coord.index,
            "operation": operation,
            "hosts": ids.iter().map(|id| host_json(id, find(id), op.as_ref(), target)).collect::<Vec<_>>(),
            "waiting_for": waiting,
            "claims": claims,
            "last_finished": last.map(outcome_json),
            "rollback_recommended": recommended,
        }));
        return Ok(exit::OK);
    }
    if let Some(r) = &recommended {
        super::recommend::print(r);
    }

    match &op {
        Some(o) => {
            println!("operation {}", o.id);
            println!(
                "  phase         {} (epoch {}, phase entered at epoch {})",
                o.phase, o.epoch, o.phase_epoch
            );
            println!(
                "  leader        {}",
                o.leader
                    .as_ref()
                    .map(|l| format!("{} ({} renewals)", l.host_id, l.renewals))
                    .unwrap_or_else(|| "none yet".into())
            );
            println!("  target        Kibana {}", o.target_version);
            println!(
                "  snapshot      {}/{} (uuid {})",
                o.snapshot.repository, o.snapshot.name, o.snapshot.uuid
            );
            match (&o.safety_snapshot.enabled, &o.safety_snapshot.name) {
                (true, Some(n)) => println!(
                    "  safety        {}/{n}{}",
                    o.snapshot.repository,
                    o.safety_snapshot
                        .taken_uuid
                        .as_ref()
                        .map(|u| format!(" (taken, uuid {u})"))
                        .unwrap_or_default()
                ),
                _ => println!("  safety        disabled (rollback.safety_snapshot = false)"),
            }
            if let Some(r) = &o.restore {
                println!(
                    "  restore       recorded at epoch {}{}",
                    r.epoch,
                    if r.completed {
                        ", completed"
                    } else {
                        ", not confirmed complete"
                    }
                );
            }
            println!(
                "  requested     by {} at {}",
                o.requested_by, o.requested_at
            );
            if let Some(a) = &o.abort_requested {
                println!("  abort         requested by {}: {}", a.by, a.reason);
            }
            println!("  waiting for   {}", waiting.as_deref().unwrap_or("-"));
            if let Some(e) = &o.error {
                println!("  error         {}", describe_error(Some(e)));
            }
        }
        None => {
            println!("no operation running (coordination index {})", coord.index);
            match last {
                Some(l) => println!(
                    "last finished: {} {} (target {}, snapshot {}/{}, requested by {} at {}){}",
                    l.id,
                    outcome_name(l),
                    l.target_version,
                    l.snapshot.repository,
                    l.snapshot.name,
                    l.requested_by,
                    l.requested_at,
                    l.error
                        .as_ref()
                        .map(|e| format!(": {}", describe_error(Some(e))))
                        .unwrap_or_default()
                ),
                None => println!("no finished operation recorded"),
            }
        }
    }
    println!();
    if ids.is_empty() {
        println!("no host registered");
    } else {
        let rows: Vec<Vec<String>> = ids
            .iter()
            .map(|id| host_row(id, find(id), op.as_ref()))
            .collect();
        print_table(&["HOST", "UNIT", "VERSION", "HELD", "STEP", "AGENT"], &rows);
    }
    for c in &claims {
        println!(
            "host id {} is claimed by two machines: {} owns it, {} also runs an agent with it (it does nothing); give each machine its own coordination.host_id, then delete {}/_doc/{}",
            c.host_id,
            c.owner.as_ref().map(|o| o.to_string()).unwrap_or_else(|| "?".into()),
            c.machine,
            coord.index,
            fleet::ClaimDoc::doc_id(&c.host_id, &c.machine)
        );
    }
    Ok(exit::OK)
}

/// `status HOST`: one host in full — what the fleet table shortens.
pub async fn one_host(cli: &Cli, host: &str) -> Result<u8> {
    let ctx = Ctx::new(cli)?;
    let coord = ctx.coord();
    let op = current_operation(&coord).await?;
    let doc = coord
        .hosts(&[host.to_string()])
        .await
        .context("reading the host document")?
        .into_iter()
        .find(|d| d.host_id == host);
    let expected = op.as_ref().is_some_and(|o| o.is_expected(host));
    let Some(h) = doc else {
        let known = match &op {
            Some(o) => o.expected_hosts.join(", "),
            None => coord
                .all_hosts()
                .await
                .map(|all| {
                    all.into_iter()
                        .map(|h| h.host_id)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default(),
        };
        eprintln!(
            "kibana-rollback: error: no agent registered as host {host:?} in {} (hosts: {}); fix: give the host id as `status` lists it",
            coord.index,
            if known.is_empty() { "none" } else { &known }
        );
        return Ok(exit::USAGE);
    };
    let claims: Vec<fleet::ClaimDoc> = coord
        .claims()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.host_id == host)
        .collect();
    let target = op.as_ref().map(|o| &o.target_version);
    if cli.json {
        let mut v = host_json(host, Some(&h), op.as_ref(), target);
        v["machine"] = json!(h.machine);
        v["expected"] = json!(expected);
        v["kibana_started_us"] = json!(h.kibana_started);
        v["client_addresses"] = json!(h.client_addresses);
        v["claims"] = json!(claims);
        print_json(&v);
        return Ok(exit::OK);
    }
    println!("host {}", h.host_id);
    if let Some(m) = &h.machine {
        println!("  machine       {m}");
    }
    println!(
        "  agent         {} (heartbeat {})",
        h.agent_version, h.heartbeat
    );
    println!("  unit          {}", step_name(&h.unit_state));
    println!(
        "  kibana        {}{}",
        h.installed_version
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "not installed".into()),
        if h.held { ", held" } else { "" }
    );
    if !h.client_addresses.is_empty() {
        println!("  addresses     {}", h.client_addresses.join(", "));
    }
    match (&op, &h.ack) {
        (Some(o), _) if !expected => {
            println!("  operation     {} (this host is not expected)", o.id)
        }
        (Some(o), Some(ack)) if ack.operation_id == o.id => {
            let result = result_text(&ack.result, None);
            println!("  operation     {} in {}", o.id, o.phase);
            println!(
                "  step          {} at epoch {}: {result}",
                step_name(&ack.step),
                ack.epoch
            );
            if !ack.detail.is_empty() {
                println!("  detail        {}", ack.detail);
            }
        }
        (Some(o), _) => println!(
            "  operation     {} in {} (no step acknowledged yet)",
            o.id, o.phase
        ),
        (None, _) => println!("  operation     none running"),
    }
    if let Some(f) = op
        .as_ref()
        .and_then(|o| o.hosts_failed.iter().find(|f| f.host == host))
    {
        println!("  set aside     {} failed: {}", step_name(&f.step), f.cause);
    }
    match &h.readiness {
        Some(r) => {
            println!(
                "  readiness     {} (for Kibana {})",
                r.summary(),
                r.target
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "-".into())
            );
            for c in &r.checks {
                println!("    {:<6} {}", step_name(&c.status), c.one_line());
            }
        }
        None => println!("  readiness     not reported yet"),
    }
    if let Some(d) = &h.detection {
        println!(
            "  upgrade       FAILED ({}) after {}: {}; rollback recommended",
            d.kind.as_str(),
            d.change(),
            d.detail
        );
        if let Some(l) = &d.first_error {
            println!("    first error: {l}");
        }
    }
    for c in &claims {
        println!(
            "  claim         also claimed by {} (owner {}); give that machine its own coordination.host_id, then delete {}/_doc/{}",
            c.machine,
            c.owner.as_ref().map(|o| o.to_string()).unwrap_or_else(|| "?".into()),
            coord.index,
            fleet::ClaimDoc::doc_id(&c.host_id, &c.machine)
        );
    }
    Ok(exit::OK)
}

/// `status --watch`: follows every operation that runs, until a signal.
pub async fn watch(cli: &Cli) -> Result<u8> {
    use super::follow::{follow_until, Followed};
    use super::live::{self, Screen, View};
    use tokio::signal::unix::{signal, SignalKind};
    let ctx = Ctx::new(cli)?;
    let coord = ctx.coord();
    let live = !cli.json && live::stdout_is_terminal();
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut screen = Screen::default();
    // The operation last followed to its end: a `failed` one stays as the document.
    let mut ended: Option<String> = None;
    let mut idle_said = false;
    loop {
        match coord.operation().await {
            Ok(Some(v))
                if ended.as_deref() != Some(v.doc.id.as_str()) || !v.doc.phase.is_terminal() =>
            {
                screen.keep();
                idle_said = false;
                match follow_until(&ctx, &v.doc.id, cli.json, true).await? {
                    Followed::Interrupted(_) => return Ok(exit::OK),
                    Followed::Ended(_) => ended = Some(v.doc.id.clone()),
                }
                continue;
            }
            Ok(op) => {
                let op = op.map(|v| v.doc);
                if live {
                    coord.refresh().await;
                    let history = coord.history().await.unwrap_or_default();
                    let hosts = match &op {
                        Some(o) => coord.hosts(&o.expected_hosts).await.unwrap_or_default(),
                        None => coord.all_hosts().await.unwrap_or_default(),
                    };
                    let claims = match &op {
                        Some(o) => coord.claims_holding(o).await,
                        None => vec![],
                    };
                    let waiting = op.as_ref().map(|o| fleet::waiting_for(o, &hosts, &claims));
                    let ids: Vec<String> = match &op {
                        Some(o) => o.expected_hosts.clone(),
                        None => hosts.iter().map(|h| h.host_id.clone()).collect(),
                    };
                    let view = View {
                        op: op.as_ref(),
                        hosts: ids
                            .iter()
                            .map(|id| (id.clone(), hosts.iter().find(|h| &h.host_id == id)))
                            .collect(),
                        waiting: waiting.as_deref(),
                        last: history.first(),
                    };
                    screen.draw(&live::render(&view, live::width()));
                } else if !idle_said {
                    idle_said = true;
                    match &op {
                        None if cli.json => {
                            println!("{}", json!({"event": "idle", "index": coord.index}))
                        }
                        None => println!(
                            "no operation running (coordination index {}); watching for one",
                            coord.index
                        ),
                        // A failed operation that was followed to its end: said already.
                        Some(_) => {}
                    }
                }
            }
            Err(e) => {
                let msg =
                    format!("kibana-rollback: warning: cannot read the operation ({e}); retrying");
                if live {
                    screen.log(&msg);
                } else {
                    eprintln!("{msg}");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = &mut ctrl_c => { screen.keep(); return Ok(exit::OK) }
            _ = sigterm.recv() => { screen.keep(); return Ok(exit::OK) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shorten;

    #[test]
    fn long_causes_are_shortened_for_the_table() {
        assert_eq!(shorten("apt-get failed", 36), "apt-get failed");
        let long = "E: Sub-process /usr/bin/dpkg returned an error code (1) and then some";
        let s = shorten(long, 36);
        assert_eq!(s.chars().count(), 36, "{s}");
        assert!(s.ends_with('…'));
        assert_eq!(shorten("first line\nsecond", 36), "first line…");
    }

    #[test]
    fn causes_are_cut_by_display_columns_never_inside_a_wide_character() {
        use unicode_width::UnicodeWidthStr;
        // Ten wide characters: twenty columns.
        let wide = "软件包安装失败请重试";
        assert_eq!(shorten(wide, 20), wide);
        // 9 columns: four wide characters (8) and the ellipsis, not four and a half.
        assert_eq!(shorten(wide, 9), "软件包安…");
        assert_eq!(shorten(wide, 10), "软件包安…");
        let mixed = "dpkg: 错误: 处理软件包 kibana (--configure) 时出错";
        for w in 5..40 {
            let s = shorten(mixed, w);
            assert!(s.width() <= w, "{w}: {s:?} is {} columns", s.width());
            assert!(mixed.starts_with(s.trim_end_matches('…')), "{w}: {s:?}");
        }
    }
}
