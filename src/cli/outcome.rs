//! Naming what became of an operation: its outcome as a word, its phase changes as lines or
//! JSON, the outcome object `--wait` and `history --json` print.

use kibana_rollback::fleet::{self, OperationDoc, PhaseChange};
use serde_json::json;

/// How an operation ended, as a word: `done`, `aborted`, `failed`, `released` (archived by
/// `lock --force-release` before it ended), or `running`.
pub fn outcome_name(op: &OperationDoc) -> &'static str {
    match fleet::outcome(op) {
        Some(fleet::Outcome::Done) => "done",
        Some(fleet::Outcome::Aborted(_)) => "aborted",
        Some(fleet::Outcome::Failed(_)) => "failed",
        None if op
            .error
            .as_ref()
            .is_some_and(|e| e.cause.contains(FORCE_RELEASED)) =>
        {
            "released"
        }
        None => "running",
    }
}

/// Marker in the error of an operation archived by `lock --force-release`.
pub const FORCE_RELEASED: &str = "lock force-released";

/// When the operation reached its last phase (from its history), if recorded.
pub fn finished_at(op: &OperationDoc) -> Option<&str> {
    op.history.last().map(|c| c.at.as_str())
}

pub fn phase_change_line(c: &PhaseChange) -> String {
    if c.from == c.to {
        format!("{}  {} (epoch {}): {}", c.at, c.to, c.epoch, c.reason)
    } else {
        format!(
            "{}  {} -> {} (epoch {}): {}",
            c.at, c.from, c.to, c.epoch, c.reason
        )
    }
}

pub fn phase_change_json(c: &PhaseChange) -> serde_json::Value {
    json!({"from": c.from, "to": c.to, "epoch": c.epoch, "reason": c.reason, "at": c.at})
}

/// The outcome object printed at the end of `--wait` (and used by `history --json`).
pub fn outcome_json(op: &OperationDoc) -> serde_json::Value {
    json!({
        "operation": op.id,
        "outcome": outcome_name(op),
        "phase": op.phase,
        "target_version": op.target_version.to_string(),
        "snapshot": op.snapshot,
        "safety_snapshot": op.safety_snapshot,
        "expected_hosts": op.expected_hosts,
        "requested_by": op.requested_by,
        "requested_at": op.requested_at,
        "finished_at": finished_at(op),
        "error": op.error,
    })
}
