//! The agent's part of `prepare`: when its watch sees a rollback point this host has not kept
//! its configuration for, it keeps the pre-upgrade kibana.yml and the keystore's key names
//! (`host::prepared_config`) — but only while its Kibana is still the rollback point's version,
//! since after the upgrade the files may already be the new version's — and reports it in its
//! `prepared-<host>` document, which `prepare` waits for. Beside the protocol: it needs no
//! operation, and nothing in `fleet::step` depends on it.

use std::sync::Arc;

use semver::Version;

use crate::config::Settings;
use crate::coord::Coord;
use crate::es::Es;
use crate::host::pkg::PackageName;
use crate::host::{prepared_config, readiness};
use crate::rollback_point::{PreparedDoc, RollbackPoint};

use super::host_steps::Host;

/// Keeps this host's configuration for `point` and writes its `prepared-<host>` document.
/// `Err`: the document could not be written (tried again on a later round).
pub async fn keep(
    host: Arc<Host>,
    es: Arc<Es>,
    settings: Arc<Settings>,
    point: RollbackPoint,
) -> Result<(), String> {
    let host_id = settings.coordination.host_id.clone();
    let already = prepared_config::load(&settings.coordination.state_dir)
        .filter(|k| k.point_uuid == point.snapshot.uuid);
    let (kept, detail) = match already {
        // Kept by an earlier run of this agent: only the report is written again.
        Some(k) => (true, k.describe()),
        None => match keep_here(&host, &settings, &point).await {
            Ok(k) => (true, k),
            Err(why) => (false, why),
        },
    };
    if kept {
        tracing::info!(snapshot = %point.snapshot.name, "rollback point: {detail}");
    } else {
        tracing::warn!(snapshot = %point.snapshot.name, "rollback point: configuration not kept: {detail}");
    }
    let doc = PreparedDoc {
        format: 1,
        host_id,
        point_uuid: point.snapshot.uuid.clone(),
        kept,
        detail,
    };
    Coord::new(&es, &settings)
        .put_prepared(&doc)
        .await
        .map_err(|e| format!("writing the prepared document: {e}"))
}

async fn keep_here(
    host: &Host,
    settings: &Settings,
    point: &RollbackPoint,
) -> Result<String, String> {
    let k = &settings.kibana;
    let name = PackageName::new(&k.package).map_err(|e| e.to_string())?;
    let installed = host
        .pkg
        .installed_version(&name)
        .await
        .map_err(|e| format!("reading the installed {name}: {e}"))?
        .and_then(|v| Version::parse(v.upstream()).ok());
    if installed.as_ref() != Some(&point.kibana_version) {
        return Err(format!(
            "Kibana {} is installed here, the rollback point is for {}: its kibana.yml is not the pre-upgrade one (keep a copy by hand, or prepare again on a fleet at one version)",
            installed
                .map(|v| v.to_string())
                .unwrap_or_else(|| "(none)".into()),
            point.kibana_version
        ));
    }
    let conf_dir = readiness::conf_dir(&host.units, &host.local, &k.unit).await;
    let keys = prepared_config::keystore_keys(&host.local, "/usr/share/kibana", &conf_dir).await;
    let kept = prepared_config::keep(
        &host.local,
        &settings.coordination.state_dir,
        &conf_dir,
        &point.snapshot.uuid,
        &point.kibana_version,
        keys,
    )?;
    Ok(kept.describe())
}
