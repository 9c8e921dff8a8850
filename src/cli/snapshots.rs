//! `snapshots`: the repository's snapshots, newest first, each marked eligible for a rollback or
//! not, with the reason and the Kibana version evidence from its feature state's index names.

use anyhow::{Context, Result};
use kibana_rollback::es::Es;
use kibana_rollback::{exit, snapshots};
use serde_json::json;

use super::{print_json, print_table, target_version, Cli};

pub async fn run(cli: &Cli, repository: Option<&str>, to: Option<&str>) -> Result<u8> {
    let loaded = cli.load()?;
    let target = target_version(to, &loaded)?;
    let repository = match repository.map(str::to_string).or(loaded.settings.rollback.repository.clone()) {
        Some(r) => r,
        None => {
            return Err(exit::coded(
                exit::CONFIG,
                "no snapshot repository given: set rollback.repository in the configuration or pass --repository",
            ))
        }
    };
    let es = Es::new(&loaded.settings.elasticsearch)?;
    let list = es
        .snapshots(&repository)
        .await
        .with_context(|| format!("listing snapshots of repository {repository:?}"))?;
    let assessed: Vec<_> = list
        .iter()
        .map(|s| (s, snapshots::assess(s, target.as_ref())))
        .collect();
    if cli.json {
        let items: Vec<_> = assessed
            .iter()
            .map(|(s, a)| {
                json!({
                    "snapshot": s.snapshot,
                    "uuid": s.uuid,
                    "state": s.state,
                    "start_time": s.start_time_in_millis.map(format_millis),
                    "elasticsearch_version": s.version,
                    "kibana_feature_state": s.kibana_feature_state().map(|f| &f.indices),
                    "kibana_versions": a.kibana_versions,
                    "eligible": a.eligible,
                    "reasons": a.reasons,
                    "notes": a.notes,
                })
            })
            .collect();
        print_json(&json!({
            "repository": repository,
            "target_version": target.as_ref().map(ToString::to_string),
            "snapshots": items,
        }));
        return Ok(exit::OK);
    }
    let target_note = target
        .as_ref()
        .map(|t| format!(", judged for target {t}"))
        .unwrap_or_default();
    println!(
        "repository {repository}: {} snapshot(s), newest first{target_note}",
        list.len()
    );
    let rows: Vec<Vec<String>> = assessed
        .iter()
        .map(|(s, a)| {
            let why = if a.eligible {
                a.notes.join("; ")
            } else {
                a.reasons.join("; ")
            };
            vec![
                s.snapshot.clone(),
                s.state.clone(),
                s.start_time_in_millis
                    .map(format_millis)
                    .unwrap_or_else(|| "-".into()),
                if a.kibana_versions.is_empty() {
                    "-".into()
                } else {
                    a.kibana_versions.join(",")
                },
                if a.eligible {
                    "yes".into()
                } else {
                    "no".into()
                },
                why,
            ]
        })
        .collect();
    print_table(
        &[
            "SNAPSHOT",
            "STATE",
            "STARTED (UTC)",
            "KIBANA",
            "ELIGIBLE",
            "WHY",
        ],
        &rows,
    );
    Ok(exit::OK)
}

fn format_millis(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}
