//! Runs this host's protocol steps with the host adapters (systemd over D-Bus, apt/dnf, Kibana's
//! status API) and reports each as Ok or Failed with a cause an operator can act on. Every step
//! is idempotent: re-running one after a crash finishes it or finds it already done.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Settings;
use crate::fleet::{HostFacts, HostStep, StepResult, UnitState};
use crate::host::kibana_status::StatusProbe;
use crate::host::pkg::{PackageManager, PackageName, PackageVersion};
use crate::host::systemd::{ActiveState, SystemdUnits};

/// The adapters of this host.
pub struct Host {
    pub units: SystemdUnits,
    pub pkg: PackageManager,
    pub probe: StatusProbe,
    pub settings: Arc<Settings>,
}

impl Host {
    fn unit(&self) -> &str {
        &self.settings.kibana.unit
    }

    fn package(&self) -> Result<PackageName, String> {
        PackageName::new(&self.settings.kibana.package).map_err(|e| e.to_string())
    }

    /// What the protocol needs to know about this host right now.
    pub async fn facts(&self) -> HostFacts {
        let unit = match self.units.status(self.unit()).await {
            Ok(s) => match s.active_state {
                ActiveState::Active => UnitState::Active,
                ActiveState::Reloading => UnitState::Reloading,
                ActiveState::Activating => UnitState::Activating,
                ActiveState::Deactivating => UnitState::Deactivating,
                ActiveState::Inactive if s.load_state.as_str() != "not-found" => {
                    UnitState::Inactive
                }
                ActiveState::Failed => UnitState::Failed,
                _ => UnitState::Unknown,
            },
            Err(e) => {
                tracing::warn!("cannot read the state of {}: {e}", self.unit());
                UnitState::Unknown
            }
        };
        let (installed_version, held) = match self.package() {
            Ok(name) => {
                let installed = match self.pkg.installed_version(&name).await {
                    Ok(v) => v.and_then(|v| semver::Version::parse(v.upstream()).ok()),
                    Err(e) => {
                        tracing::warn!("cannot read the installed version of {name}: {e}");
                        None
                    }
                };
                let held = self.pkg.is_held(&name).await.unwrap_or(false);
                (installed, held)
            }
            Err(_) => (None, false),
        };
        HostFacts {
            unit,
            installed_version,
            held,
            // Filled in by the daemon: the install evidence (it has the clock offset), when these
            // facts were read, and the addresses.
            install_history: None,
            read_at: Duration::ZERO,
            client_addresses: vec![],
        }
    }

    /// Runs one step; the text is the ack's detail (Ok) or the cause (Failed).
    pub async fn run(&self, step: &HostStep, resumed: bool) -> (StepResult, String) {
        let outcome = match step {
            HostStep::CheckAvailable { version } => self.check_available(version).await,
            HostStep::Prefetch { version } => self.prefetch(version).await,
            HostStep::StopUnit => self.stop().await,
            HostStep::Reinstall { version } => self.reinstall(version, resumed).await,
            HostStep::StartUnit { expect_version } => self.start(Some(expect_version)).await,
            HostStep::AbortRestart => self.abort_restart().await,
        };
        match outcome {
            Ok(detail) => (StepResult::Ok, detail),
            Err(cause) => (
                StepResult::Failed {
                    cause: cause.clone(),
                },
                cause,
            ),
        }
    }

    async fn resolve(
        &self,
        version: &semver::Version,
    ) -> Result<(PackageName, PackageVersion), String> {
        let name = self.package()?;
        let v = self
            .pkg
            .resolve(&name, &version.to_string())
            .await
            .map_err(|e| e.to_string())?;
        Ok((name, v))
    }

    async fn check_available(&self, version: &semver::Version) -> Result<String, String> {
        // Fresh package lists, so "available" means available now.
        self.pkg
            .refresh()
            .await
            .map_err(|e| format!("refreshing the package lists: {e}"))?;
        let (name, v) = self.resolve(version).await?;
        Ok(format!("{name} {v} is available"))
    }

    async fn prefetch(&self, version: &semver::Version) -> Result<String, String> {
        let (name, v) = self.resolve(version).await?;
        let r = self
            .pkg
            .prefetch(&name, &v)
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!("{name} {v}: {r:?}"))
    }

    async fn stop(&self) -> Result<String, String> {
        let timeout = self.settings.kibana.stop_timeout;
        let unit = self.unit();
        let status = self
            .units
            .stop(unit, timeout)
            .await
            .map_err(|e| e.to_string())?;
        // Until the rollback starts it again, nothing else may start Kibana (a timer, an admin,
        // a package script): a Kibana of either version running during the restore corrupts it.
        self.units
            .mask(unit)
            .await
            .map_err(|e| format!("stopped, but masking failed: {e}"))?;
        Ok(format!(
            "{unit} stopped ({}) and masked until the rollback starts it",
            status.active_state
        ))
    }

    async fn reinstall(&self, version: &semver::Version, resumed: bool) -> Result<String, String> {
        if resumed {
            tracing::info!("resuming an interrupted reinstall of {version}");
        }
        let (name, v) = self.resolve(version).await?;
        let installed = self
            .pkg
            .install_exact(&name, &v)
            .await
            .map_err(|e| e.to_string())?;
        self.pkg
            .verify(&name, &v, self.settings.package_manager.hold)
            .await
            .map_err(|e| format!("installed, but verification failed: {e}"))?;
        let was = installed
            .previous
            .map(|p| p.to_string())
            .unwrap_or_else(|| "not installed".into());
        Ok(format!(
            "{name} {v} installed (was {was}){}",
            if installed.held { ", held" } else { "" }
        ))
    }

    /// An abort puts the host back as it was: the unit running on the unchanged package. That
    /// package is the one whose migration failed, so Kibana is not expected to become available;
    /// the step succeeds once the unit is active again, and says what Kibana reports.
    async fn abort_restart(&self) -> Result<String, String> {
        let unit = self.unit();
        self.units.unmask(unit).await.map_err(|e| e.to_string())?;
        let status = self
            .units
            .start(unit, self.settings.kibana.start_timeout)
            .await
            .map_err(|e| e.to_string())?;
        let kibana = match self.probe.probe().await {
            Ok(s) => format!(
                "Kibana reports {:?} at version {}",
                s.level,
                s.version.unwrap_or_else(|| "unknown".into())
            ),
            Err(e) => e.to_string(),
        };
        Ok(format!(
            "{unit} {} again on the unchanged package; {kibana}",
            status.active_state
        ))
    }

    /// Starts the unit and waits until Kibana reports `available` at `expect`.
    async fn start(&self, expect: Option<&semver::Version>) -> Result<String, String> {
        let unit = self.unit();
        let timeout = self.settings.kibana.start_timeout;
        self.units.unmask(unit).await.map_err(|e| e.to_string())?;
        let expect = expect.map(ToString::to_string).unwrap_or_default();
        let started = tokio::time::Instant::now();
        self.units
            .start(unit, timeout)
            .await
            .map_err(|e| e.to_string())?;
        let left = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(1));
        let status = self
            .probe
            .wait_available(&expect, left, Duration::from_secs(1))
            .await
            .map_err(|e| format!("{unit} started, but {e}"))?;
        Ok(format!(
            "{unit} active; Kibana {} {:?}",
            status.version.unwrap_or_default(),
            status.level
        ))
    }
}
