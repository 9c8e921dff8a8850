//! `history`: finished operations (`history-<id>` documents), newest first by request time, each
//! with its outcome, target, snapshot, who asked when, every phase change with its time, and the
//! error. `released` marks one archived by `lock --force-release` before it ended.

use anyhow::{Context, Result};
use kibana_rollback::exit;
use serde_json::json;

use kibana_rollback::fleet::describe_error;

use super::context::Ctx;
use super::outcome::{
    finished_at, outcome_json, outcome_name, phase_change_json, phase_change_line,
};
use super::{print_json, Cli};

pub async fn run(cli: &Cli) -> Result<u8> {
    let ctx = Ctx::new(cli)?;
    let coord = ctx.coord();
    coord.refresh().await;
    let ops = coord.history().await.context("reading the history")?;
    if cli.json {
        let items: Vec<_> = ops
            .iter()
            .map(|op| {
                let mut v = outcome_json(op);
                v["phases"] = json!(op.history.iter().map(phase_change_json).collect::<Vec<_>>());
                v
            })
            .collect();
        print_json(&json!({"index": coord.index, "operations": items}));
        return Ok(exit::OK);
    }
    if ops.is_empty() {
        println!("no finished operation in {}", coord.index);
        return Ok(exit::OK);
    }
    for (i, op) in ops.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!(
            "{}  {}  Kibana {}  snapshot {}/{}  hosts {}",
            op.id,
            outcome_name(op),
            op.target_version,
            op.snapshot.repository,
            op.snapshot.name,
            op.expected_hosts.join(",")
        );
        println!(
            "  requested by {} at {}; ended {}",
            op.requested_by,
            op.requested_at,
            finished_at(op).unwrap_or("-")
        );
        for c in &op.history {
            println!("  {}", phase_change_line(c));
        }
        if op.error.is_some() {
            println!("  error: {}", describe_error(op.error.as_ref()));
        }
    }
    Ok(exit::OK)
}
