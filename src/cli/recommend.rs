//! "rollback recommended": what `status` says when agents recorded a failed upgrade
//! (`kibana_rollback::detection`) — the hosts and their evidence, and what `start` would use
//! today: the target (`rollback.target_version`, else the version the hosts came from) and the
//! snapshot the preflight's own selection picks (`preflight::snapshot::resolve`, the same call
//! `start` makes). Read-only: nothing is rolled back until the admin runs `start`.

use kibana_rollback::config::Settings;
use kibana_rollback::es::Es;
use kibana_rollback::fleet::{Detection, HostDoc};
use kibana_rollback::preflight;
use kibana_rollback::snapshots::Against;
use semver::Version;
use serde::Serialize;

/// One host's failed upgrade.
#[derive(Debug, Clone, Serialize)]
pub struct Flagged {
    pub host: String,
    #[serde(flatten)]
    pub detection: Detection,
    /// `since_ms` as RFC 3339 (UTC), for people.
    pub since: Option<String>,
}

/// The recommendation, with what `start` would use.
#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    pub hosts: Vec<Flagged>,
    pub target_version: Option<Version>,
    /// `repository/name` of the snapshot `start` would restore today.
    pub snapshot: Option<String>,
    /// Why no snapshot could be named, if none.
    pub snapshot_problem: Option<String>,
}

fn rfc3339(ms: i64) -> Option<String> {
    let t =
        std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(ms.try_into().ok()?))?;
    Some(humantime::format_rfc3339_seconds(t).to_string())
}

/// The hosts with a recorded failed upgrade, or `None` when there is none.
pub async fn recommendation(
    es: &Es,
    settings: &Settings,
    docs: &[HostDoc],
) -> Option<Recommendation> {
    let hosts: Vec<Flagged> = docs
        .iter()
        .filter_map(|h| {
            h.detection.as_ref().map(|d| Flagged {
                host: h.host_id.clone(),
                detection: d.clone(),
                since: d.since_ms.and_then(rfc3339),
            })
        })
        .collect();
    if hosts.is_empty() {
        return None;
    }
    let target = settings
        .rollback
        .target_version
        .clone()
        .or_else(|| hosts.iter().find_map(|f| f.detection.from_version.clone()));
    let (snapshot, snapshot_problem) = match (&target, &settings.rollback.repository) {
        (None, _) => (
            None,
            Some("no target version: set rollback.target_version".into()),
        ),
        (_, None) => (
            None,
            Some("no snapshot repository: set rollback.repository".into()),
        ),
        (Some(t), Some(repo)) => {
            let with_docs: Vec<(String, Option<HostDoc>)> = docs
                .iter()
                .map(|d| (d.host_id.clone(), Some(d.clone())))
                .collect();
            match preflight::upgrade_window(es, t, &with_docs).await {
                Err(e) => (None, Some(format!("cannot judge snapshots: {e}"))),
                Ok(window) => {
                    let against = Against {
                        target: t,
                        window: &window,
                        margin_ms: settings.rollback.snapshot_margin.as_millis() as i64,
                    };
                    match preflight::snapshot::resolve(
                        es,
                        repo,
                        &settings.rollback.snapshot,
                        against,
                        false,
                    )
                    .await
                    {
                        Ok(Ok(r)) => (Some(format!("{}/{}", r.sref.repository, r.sref.name)), None),
                        Ok(Err(why)) => (None, Some(why)),
                        Err(e) => (None, Some(format!("cannot list snapshots of {repo}: {e}"))),
                    }
                }
            }
        }
    };
    Some(Recommendation {
        hosts,
        target_version: target,
        snapshot,
        snapshot_problem,
    })
}

/// The text block `status` prints.
pub fn print(r: &Recommendation) {
    let names: Vec<&str> = r.hosts.iter().map(|f| f.host.as_str()).collect();
    println!(
        "rollback recommended: the Kibana upgrade failed on {} (nothing is rolled back until you run `kibana-rollback start`)",
        names.join(", ")
    );
    for f in &r.hosts {
        let d = &f.detection;
        println!(
            "  {:<13} {} after {}, since {}: {}",
            f.host,
            d.kind.as_str(),
            d.change(),
            f.since.as_deref().unwrap_or("(time unknown)"),
            d.detail
        );
        if let Some(l) = &d.first_error {
            println!("  {:<13} first error: {l}", "");
        }
    }
    println!(
        "  target        Kibana {}",
        r.target_version
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "? (set rollback.target_version)".into())
    );
    match (&r.snapshot, &r.snapshot_problem) {
        (Some(s), _) => println!("  snapshot      {s} (what `start` would restore today)"),
        (None, Some(p)) => println!("  snapshot      none eligible: {p}"),
        (None, None) => println!("  snapshot      none eligible"),
    }
    println!("  run           kibana-rollback start --wait");
    println!();
}
