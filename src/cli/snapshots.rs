//! `snapshots`: the repository's snapshots, the fleet's rollback point (`prepare`) first, then
//! newest first, each marked eligible for a rollback,
//! not, or "cannot be judged", with the reason: its state, its kibana feature state, its start
//! against the upgrade's start (the expected hosts' install evidence, `.kibana*` creation times)
//! and the Kibana version evidence from its index names.

use anyhow::{Context, Result};
use kibana_rollback::coord::Coord;
use kibana_rollback::es::Es;
use kibana_rollback::{exit, preflight, snapshots};
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
    let mut list = es
        .snapshots(&repository)
        .await
        .with_context(|| format!("listing snapshots of repository {repository:?}"))?;
    // The fleet's rollback point comes first: `prepare` recorded it as the state before the
    // upgrade, the strongest evidence there is. One that does not verify is named, not used.
    let point = match Coord::new(&es, &loaded.settings)
        .trusted_rollback_point(super::context::point_seen(&loaded.settings).as_ref())
        .await
    {
        Ok(p) => p.filter(|p| p.snapshot.repository == repository),
        Err(e @ kibana_rollback::es::EsError::Untrusted { .. }) => {
            eprintln!("kibana-rollback: warning: the stored rollback point is refused: {e}");
            None
        }
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(anyhow::Error::new(e).context("reading the rollback point")),
    };
    let is_point = |s: &kibana_rollback::es::SnapshotInfo| {
        point.as_ref().is_some_and(|p| p.snapshot.uuid == s.uuid)
    };
    if let Some(at) = list.iter().position(is_point) {
        let p = list.remove(at);
        list.insert(0, p);
    }
    let target = target.or_else(|| point.as_ref().map(|p| p.kibana_version.clone()));
    let window = match &target {
        Some(t) => {
            let coord = Coord::new(&es, &loaded.settings);
            let (ids, _) = coord
                .expected_hosts(&loaded.settings.coordination.expected_hosts)
                .await
                .context("listing the hosts")?;
            let docs = coord.hosts(&ids).await.context("reading host documents")?;
            let hosts: Vec<_> = ids
                .iter()
                .map(|h| (h.clone(), docs.iter().find(|d| &d.host_id == h).cloned()))
                .collect();
            Some(
                preflight::upgrade_window(&es, t, &hosts)
                    .await
                    .context("reading the .kibana* indices")?,
            )
        }
        None => None,
    };
    let margin_ms = loaded.settings.rollback.snapshot_margin.as_millis() as i64;
    let against = match (&target, &window) {
        (Some(target), Some(window)) => Some(snapshots::Against {
            target,
            window,
            margin_ms,
        }),
        _ => None,
    };
    let assessed: Vec<_> = list
        .iter()
        .map(|s| (s, snapshots::assess(s, against)))
        .collect();
    if cli.json {
        let items: Vec<_> = assessed
            .iter()
            .map(|(s, a)| {
                json!({
                    "snapshot": s.snapshot,
                    "rollback_point": is_point(s),
                    "uuid": s.uuid,
                    "state": s.state,
                    "start_time": s.start_time_in_millis.map(format_millis),
                    "elasticsearch_version": s.version,
                    "kibana_feature_state": s.kibana_feature_state().map(|f| &f.indices),
                    "kibana_versions": a.kibana_versions,
                    "eligible": a.eligible,
                    "cannot_be_judged": a.unjudged,
                    "timing": a.timing,
                    "reasons": a.reasons,
                    "notes": a.notes,
                })
            })
            .collect();
        print_json(&json!({
            "repository": repository,
            "target_version": target.as_ref().map(ToString::to_string),
            "upgrade_window": window,
            "rollback_point": point,
            "snapshots": items,
        }));
        return Ok(exit::OK);
    }
    let target_note = target
        .as_ref()
        .map(|t| format!(", judged for target {t}"))
        .unwrap_or_default();
    println!(
        "repository {repository}: {} snapshot(s), the rollback point first, then newest first{target_note}",
        list.len()
    );
    match &point {
        Some(p) => println!("rollback point: {}", p.describe()),
        None => println!("no rollback point: run `kibana-rollback prepare` before an upgrade"),
    }
    let rows: Vec<Vec<String>> = assessed
        .iter()
        .map(|(s, a)| {
            let why = if a.eligible {
                std::iter::once(a.timing.clone())
                    .chain(a.notes.iter().cloned())
                    .collect::<Vec<_>>()
                    .join("; ")
            } else if let Some(u) = &a.unjudged {
                format!(
                    "{u}; to use it: start --snapshot {} --accept-unjudged-snapshot",
                    s.snapshot
                )
            } else {
                a.reasons.join("; ")
            };
            vec![
                if is_point(s) {
                    format!("{} (ROLLBACK POINT)", s.snapshot)
                } else {
                    s.snapshot.clone()
                },
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
                } else if a.unjudged.is_some() {
                    "cannot judge".into()
                } else {
                    "no".into()
                },
                why,
            ]
        })
        .collect();
    print_table(&SNAPSHOT_HEADER, &rows);
    Ok(exit::OK)
}

/// The columns of the `snapshots` table.
pub(super) const SNAPSHOT_HEADER: [&str; 6] = [
    "SNAPSHOT",
    "STATE",
    "STARTED (UTC)",
    "KIBANA",
    "ELIGIBLE",
    "WHY",
];

fn format_millis(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}
