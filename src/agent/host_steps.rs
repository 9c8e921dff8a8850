//! Runs this host's protocol steps with the host adapters (systemd over D-Bus, apt/dnf, Kibana's
//! status API, the process evidence of `host::process`) and reports each as Ok or Failed with a
//! cause an operator can act on. Every step is idempotent: re-running one after a crash
//! finishes it or finds it already done.
//!
//! * `check_available` (preflight phase) runs the host's readiness checks fresh for the
//!   operation's target (`host::readiness`) and fails naming each failed check and its fix;
//! * `stop_unit` stops the unit and puts the start hold in place (`host::hold`: a drop-in whose
//!   assertion fails every start, in /etc so it survives a reboot, working with 7.x units in
//!   /etc/systemd/system where a mask cannot be created);
//! * `reinstall` makes sure the hold is in place (Elastic's 8.x+ .deb restarts kibana.service on
//!   upgrade and downgrade; the hold refuses that restart), installs and holds the package, then
//!   `daemon-reload`s (the package may have rewritten the unit) and notes when the install
//!   ended, for the start step's evidence; a kibana.yml that differs from the one kept by
//!   `prepare` for exactly that version is put back, the current one kept beside it
//!   (`host::prepared_config`), and the step's detail says so;
//! * `start_unit` lifts the hold (`ResetFailedUnit` included, so a start-limited unit can start
//!   again), starts the unit and waits for Kibana — **failing fast** when the unit crash-loops
//!   (two automatic restarts), exits 64 (a setting the older Kibana does not know), fails or hits
//!   its start limit, quoting the unit's last journal lines and what the exit status means. It
//!   succeeds when Kibana is healthy (HTTP 200, `available` or `degraded`, degraded reported as
//!   a warning naming what is degraded) **and** the version is proven for the running process:
//!   by an unredacted status, or for a redacted one by the process evidence (the unit's main
//!   process started after the install ended and the `package.json` of the Kibana home it runs
//!   says the target). A process older than the install fails the step at once: it runs the old
//!   code however healthy it looks.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use semver::Version;

use crate::config::Settings;
use crate::fleet::{HostFacts, HostStep, Readiness, StepResult, UnitState};
use crate::host::hold::{Hold, HoldError, Lifted};
use crate::host::journal;
use crate::host::kibana_status::{Answer, StatusProbe};
use crate::host::local::Local;
use crate::host::pkg::{PackageManager, PackageName, PackageVersion};
use crate::host::prepared_config;
use crate::host::process::{self, InstallEnd};
use crate::host::readiness::{self, Watch};
use crate::host::systemd::{ActiveState, MainExit, ServiceStatus, SystemdUnits, UnitError};
use crate::host::unit_files::UnitFiles;

/// How many journal lines a failed start quotes.
const JOURNAL_LINES: usize = 10;
/// How often the start step looks at the unit and asks Kibana.
const START_POLL: Duration = Duration::from_secs(1);
/// Automatic restarts after our start that make a crash loop.
const CRASH_LOOP_RESTARTS: u32 = 2;

/// The adapters of this host.
pub struct Host {
    pub units: SystemdUnits,
    pub pkg: PackageManager,
    pub probe: StatusProbe,
    pub settings: Arc<Settings>,
    pub local: Local,
    /// When this agent's last install ended (`CLOCK_BOOTTIME`): the start step's evidence.
    install_end: Mutex<Option<Duration>>,
    readiness: Mutex<Option<Readiness>>,
    watch: Mutex<Watch>,
    /// The fleet's rollback point's Kibana version: the readiness checks' target when
    /// `rollback.target_version` is not configured (`start` with no arguments rolls back to it).
    point_target: Mutex<Option<Version>>,
    /// Why the readiness checks must run again now (the rollback point's version changed).
    retarget: Mutex<Option<String>>,
}

impl Host {
    pub fn new(
        units: SystemdUnits,
        pkg: PackageManager,
        probe: StatusProbe,
        settings: Arc<Settings>,
        local: Local,
        config: Option<readiness::ConfigOnDisk>,
    ) -> Host {
        Host {
            units,
            pkg,
            probe,
            local,
            install_end: Mutex::new(None),
            readiness: Mutex::new(None),
            watch: Mutex::new(Watch::new(&settings, config)),
            point_target: Mutex::new(None),
            retarget: Mutex::new(None),
            settings,
        }
    }

    /// The rollback point names Kibana `version`: without a configured target, the readiness
    /// checks judge the host for it (and run again when it changes).
    pub fn use_rollback_point_target(&self, version: &Version) {
        if self.settings.rollback.target_version.is_some() {
            return;
        }
        let mut t = self.point_target.lock().expect("point target lock");
        if t.as_ref() != Some(version) {
            *t = Some(version.clone());
            *self.retarget.lock().expect("retarget lock") =
                Some(format!("the rollback point names Kibana {version}"));
        }
    }

    fn unit(&self) -> &str {
        &self.settings.kibana.unit
    }

    fn package(&self) -> Result<PackageName, String> {
        PackageName::new(&self.settings.kibana.package).map_err(|e| e.to_string())
    }

    fn hold(&self) -> Hold {
        Hold::new(&self.local, self.unit())
    }

    fn readiness_ctx(&self) -> readiness::Ctx<'_> {
        readiness::Ctx {
            units: &self.units,
            pkg: &self.pkg,
            probe: &self.probe,
            settings: &self.settings,
            local: &self.local,
        }
    }

    /// What the protocol needs to know about this host right now.
    pub async fn facts(&self) -> HostFacts {
        let (unit, kibana_started) = match self.units.status(self.unit()).await {
            Ok(s) => {
                let unit = match s.active_state {
                    ActiveState::Active => UnitState::Active,
                    ActiveState::Reloading => UnitState::Reloading,
                    ActiveState::Activating => UnitState::Activating,
                    ActiveState::Deactivating => UnitState::Deactivating,
                    ActiveState::Inactive if s.load_state.as_str() != "not-found" => {
                        UnitState::Inactive
                    }
                    ActiveState::Failed => UnitState::Failed,
                    _ => UnitState::Unknown,
                };
                (unit, s.main_started_us)
            }
            Err(e) => {
                tracing::warn!("cannot read the state of {}: {e}", self.unit());
                (UnitState::Unknown, None)
            }
        };
        let (installed_version, held) = match self.package() {
            Ok(name) => {
                // Commands run only when the package database changed (PackageManager::state).
                match self.pkg.state(&name).await {
                    Ok(s) => (
                        s.installed
                            .and_then(|v| semver::Version::parse(v.upstream()).ok()),
                        s.held,
                    ),
                    Err(e) => {
                        tracing::warn!("cannot read the installed version of {name}: {e}");
                        (None, false)
                    }
                }
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
            readiness: self.readiness.lock().expect("readiness lock").clone(),
            kibana_started,
            detection: None,
        }
    }

    /// Why the readiness report should be made again now, if it should: the agent just started,
    /// a file it depends on changed (cheap: a few `stat`s), or the period passed.
    pub fn readiness_due(&self, now: Duration) -> Option<String> {
        if let Some(why) = self.retarget.lock().expect("retarget lock").take() {
            return Some(why);
        }
        self.watch.lock().expect("watch lock").due(now, &self.local)
    }

    /// Runs the readiness checks for the configured target (else the rollback point's) and
    /// keeps the report for the host document.
    pub async fn refresh_readiness(&self, trigger: String) {
        let config_problem = self.watch.lock().expect("watch lock").config_problem();
        let target = self
            .settings
            .rollback
            .target_version
            .clone()
            .or_else(|| self.point_target.lock().expect("point target lock").clone());
        let report = readiness::check(
            &self.readiness_ctx(),
            target.as_ref(),
            &trigger,
            config_problem,
        )
        .await;
        for c in report.failures() {
            tracing::warn!(check = %c.check, "readiness: {} (fix: {})", c.detail, c.fix.as_deref().unwrap_or("-"));
        }
        *self.readiness.lock().expect("readiness lock") = Some(report);
    }

    /// Runs one step; the text is the ack's detail (Ok) or the cause (Failed).
    pub async fn run(&self, step: &HostStep, resumed: bool) -> (StepResult, String) {
        let (progress, _) = tokio::sync::mpsc::unbounded_channel();
        self.run_reporting("manual", step, resumed, &progress).await
    }

    /// [`Host::run`] for operation `op_id`, with `progress` taking what a long step is doing
    /// meanwhile (for the ack).
    pub async fn run_reporting(
        &self,
        op_id: &str,
        step: &HostStep,
        resumed: bool,
        progress: &tokio::sync::mpsc::UnboundedSender<String>,
    ) -> (StepResult, String) {
        let outcome = match step {
            HostStep::CheckAvailable { version } => self.check_available(version).await,
            HostStep::Prefetch { version } => self.prefetch(version).await,
            HostStep::StopUnit => self.stop().await,
            HostStep::Reinstall { version } => {
                self.reinstall(op_id, version, resumed, progress).await
            }
            HostStep::StartUnit { expect_version } => self.start(expect_version).await,
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

    async fn resolve(&self, version: &Version) -> Result<(PackageName, PackageVersion), String> {
        let name = self.package()?;
        let v = self
            .pkg
            .resolve(&name, &version.to_string())
            .await
            .map_err(|e| e.to_string())?;
        Ok((name, v))
    }

    /// The preflight phase's host step: the readiness checks, fresh (package lists refreshed
    /// first), for the operation's target.
    pub async fn check_available(&self, version: &Version) -> Result<String, String> {
        self.pkg
            .refresh()
            .await
            .map_err(|e| format!("refreshing the package lists: {e}"))?;
        let config_problem = self.watch.lock().expect("watch lock").config_problem();
        let report = readiness::check(
            &self.readiness_ctx(),
            Some(version),
            "the preflight phase",
            config_problem,
        )
        .await;
        let failed: Vec<String> = report.failures().map(|c| c.one_line()).collect();
        let summary = report.summary();
        *self.readiness.lock().expect("readiness lock") = Some(report);
        if failed.is_empty() {
            Ok(summary)
        } else {
            Err(format!(
                "this host is not ready for Kibana {version}: {}",
                failed.join("; ")
            ))
        }
    }

    async fn prefetch(&self, version: &Version) -> Result<String, String> {
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
        // a package script, a reboot): a Kibana of either version running during the restore
        // corrupts it.
        let hold = self.hold();
        hold.apply(&self.units)
            .await
            .map_err(|e| format!("stopped, but the start hold failed: {e}"))?;
        Ok(format!(
            "{unit} stopped ({}); starts are refused until the rollback starts it ({})",
            status.active_state,
            hold.path()
        ))
    }

    async fn reinstall(
        &self,
        op_id: &str,
        version: &Version,
        resumed: bool,
        progress: &tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<String, String> {
        // Held before the install (and before a repair, which configures the package too), so
        // the package's own restart (Elastic's 8.x+ .deb restarts kibana.service on upgrade and
        // downgrade: RESTART_ON_UPGRADE in /etc/default/kibana) is refused too: the start step
        // starts Kibana.
        let hold = self.hold();
        if !hold.is_held() {
            hold.apply(&self.units)
                .await
                .map_err(|e| format!("the start hold failed: {e}"))?;
        }
        // What systemd reads for the unit, to reload after the install only if the package
        // changed it (a resumed run may have changed it before: it always reloads).
        let unit_files = (!resumed).then(|| UnitFiles::read(&self.local, self.unit()));
        if resumed {
            // The previous run was interrupted or failed, maybe inside dpkg: finish what it left
            // first.
            tracing::info!(
                "resuming an interrupted or failed reinstall of {version}: repairing first"
            );
            self.pkg
                .repair()
                .await
                .map_err(|e| format!("repairing the interrupted install: {e}"))?;
        }
        let (name, v) = self.resolve(version).await?;
        // While it runs, say what it waits for: another process on the package manager's lock
        // (unattended-upgrades, an admin's apt) makes the install wait, visibly.
        let watch = {
            let progress = progress.clone();
            let pkg = self.pkg.clone();
            let what = format!("installing {name} {v}");
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let secs = started.elapsed().as_secs();
                    let line = match pkg.lock_holder() {
                        Some(h) => format!("{what}: waiting for the package manager's lock: {h}"),
                        None => format!("{what} ({secs}s)"),
                    };
                    if progress.send(line).is_err() {
                        return;
                    }
                }
            })
        };
        let installed = self.pkg.install_exact(&name, &v).await;
        watch.abort();
        let installed = installed.map_err(|e| e.to_string())?;
        let ended = process::boottime_now();
        self.pkg
            .verify(&name, &v, self.settings.package_manager.hold)
            .await
            .map_err(|e| format!("installed, but verification failed: {e}"))?;
        // The kibana.yml kept by `prepare` for exactly this version, when the upgrade changed it:
        // an older Kibana refuses settings it does not know (exit 64).
        let conf = match prepared_config::put_back(
            &self.local,
            &self.settings.coordination.state_dir,
            version,
            op_id,
        ) {
            Ok(done) => done.describe(),
            Err(e) => Some(format!("WARNING: {e}")),
        };
        if let Some(c) = &conf {
            tracing::info!(operation_id = op_id, "{c}");
        }
        // The package may have replaced the unit file (7.x ships it in /etc/systemd/system).
        let changed = unit_files
            .as_ref()
            .map(|before| before.changed(&UnitFiles::read(&self.local, self.unit())));
        let stale = self.units.needs_reload(self.unit()).await.unwrap_or(true);
        if changed.as_ref().is_none_or(|c| !c.is_empty()) || stale {
            tracing::info!(
                operation_id = op_id,
                "reloading systemd after the install (unit files changed: {:?}, systemd's view stale: {stale})",
                changed.unwrap_or_default()
            );
            self.units
                .daemon_reload()
                .await
                .map_err(|e| format!("installed, but daemon-reload failed: {e}"))?;
        }
        if installed.previous.as_ref() != Some(&v) {
            *self.install_end.lock().expect("install_end lock") = Some(ended);
        }
        let was = installed
            .previous
            .map(|p| p.to_string())
            .unwrap_or_else(|| "not installed".into());
        Ok(format!(
            "{name} {v} installed (was {was}){}{}",
            if installed.held { ", held" } else { "" },
            conf.map(|c| format!("; {c}")).unwrap_or_default()
        ))
    }

    /// An abort puts the host back as it was: the unit running on the unchanged package. That
    /// package is the one whose migration failed, so Kibana is not expected to become available;
    /// the step succeeds once the unit is active again, and says what Kibana reports.
    async fn abort_restart(&self) -> Result<String, String> {
        let unit = self.unit();
        self.hold()
            .lift(&self.units)
            .await
            .map_err(|e| e.to_string())?;
        let status = self
            .units
            .start(unit, self.settings.kibana.start_timeout)
            .await
            .map_err(|e| e.to_string())?;
        let installed = self.facts().await.installed_version;
        let kibana = self.probe.probe(installed.as_ref()).await.describe();
        Ok(format!(
            "{unit} {} again on the unchanged package; Kibana: {kibana}",
            status.active_state
        ))
    }

    /// Lifts the hold, starts the unit and waits until Kibana is healthy at `expect`, proven
    /// for the running process; fails fast on a crash loop (see the module docs). systemd
    /// re-reads the unit without the hold's drop-in only after that: off the downtime.
    pub async fn start(&self, expect: &Version) -> Result<String, String> {
        let unit = self.unit();
        let timeout = self.settings.kibana.start_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let hold = self.hold();
        let was_held = hold.is_held();
        let lifted = patiently(
            deadline,
            "lifting the hold",
            HoldError::is_no_answer,
            || hold.lift_for_start(&self.units),
        )
        .await
        .map_err(|e| e.to_string())?;
        let result = self.start_lifted(unit, expect, deadline).await;
        // (A try that systemd did not answer may have removed the drop-in already.)
        if lifted == Lifted::ReloadAfterStart || (was_held && lifted == Lifted::WasNotHeld) {
            if let Err(e) = self.units.daemon_reload().await {
                tracing::warn!("after starting {unit}: daemon-reload failed: {e} (systemctl status lists the removed hold until the next reload)");
            }
        }
        result
    }

    async fn start_lifted(
        &self,
        unit: &str,
        expect: &Version,
        deadline: tokio::time::Instant,
    ) -> Result<String, String> {
        let status = || {
            patiently(
                deadline,
                "reading the unit",
                UnitError::is_no_answer,
                || self.units.service_status(unit),
            )
        };
        let before = status().await.map_err(|e| e.to_string())?;
        let started = patiently(
            deadline,
            "starting the unit",
            UnitError::is_no_answer,
            || {
                self.units.start(
                    unit,
                    deadline.saturating_duration_since(tokio::time::Instant::now()),
                )
            },
        );
        match started.await {
            Ok(_) => {}
            Err(UnitError::StartFailed { .. }) => {
                let now = status().await.map_err(|e| e.to_string())?;
                let why = CrashWatch::new(before)
                    .verdict(&now)
                    .unwrap_or_else(|| format!("did not start ({})", now.unit));
                return Err(self.failed_start(unit, &why).await);
            }
            Err(e) => return Err(e.to_string()),
        }
        let mut watch = CrashWatch::new(before);
        let mut last;
        loop {
            let svc = status().await.map_err(|e| e.to_string())?;
            if let Some(why) = watch.verdict(&svc) {
                return Err(self.failed_start(unit, &why).await);
            }
            let answer = self.probe.probe(Some(expect)).await;
            match &answer {
                Answer::AuthRefused {
                    with_credentials, ..
                } => return Err(auth_refused(self.probe.url(), *with_credentials, expect)),
                Answer::TlsFailed { cause } => {
                    return Err(format!(
                        "{unit} started, but the TLS handshake with Kibana at {} failed: {cause}; fix: set kibana.status_ca_file to the CA that signed Kibana's server.ssl.certificate (and use the host name the certificate names in kibana.status_url)",
                        self.probe.url()
                    ))
                }
                a if a.is_healthy() => {
                    let proof = match a.version() {
                        Some(v) if v == expect.to_string() => {
                            Ok(format!("Kibana {v} reports itself, core {}", a.core_level().expect("healthy has a level")))
                        }
                        Some(v) => match self.process_evidence(&svc, expect).await {
                            Err(Proof::Fatal(why)) => Err(Proof::Fatal(why)),
                            _ => Err(Proof::NotYet(format!("Kibana answers as {v}, not {expect}"))),
                        },
                        None => self.process_evidence(&svc, expect).await,
                    };
                    match proof {
                        Ok(proof) => return Ok(started_detail(unit, a, &proof)),
                        Err(Proof::Fatal(why)) => return Err(format!("{unit} started, but {why}")),
                        Err(Proof::NotYet(why)) => last = format!("{}; {why}", a.describe()),
                    }
                }
                a => last = a.describe(),
            }
            if tokio::time::Instant::now() + START_POLL > deadline {
                return Err(format!(
                    "{unit} started, but Kibana at {} was not healthy at version {expect} within {}: last seen {last}; unit {}",
                    self.probe.url(),
                    humantime::format_duration(self.settings.kibana.start_timeout),
                    svc.unit
                ));
            }
            tokio::time::sleep(START_POLL).await;
        }
    }

    /// The version of the unit's running process, from evidence tied to it (the status was
    /// redacted).
    async fn process_evidence(
        &self,
        svc: &ServiceStatus,
        expect: &Version,
    ) -> Result<String, Proof> {
        if svc.main_pid == 0 {
            return Err(Proof::NotYet("the unit has no main process".into()));
        }
        let p = process::inspect(&self.local, svc.main_pid).map_err(Proof::NotYet)?;
        let recorded = *self.install_end.lock().expect("install_end lock");
        let install = match recorded {
            Some(end) => Some(InstallEnd::Boottime(end)),
            None => match self.package() {
                Ok(name) => self
                    .pkg
                    .installed_at(&name)
                    .await
                    .ok()
                    .flatten()
                    .map(InstallEnd::WallSecs),
                Err(_) => None,
            },
        };
        let Some(install) = install else {
            return Err(Proof::NotYet(
                "the package's install time cannot be read".into(),
            ));
        };
        let home = format!("{}/package.json", p.home.display());
        match process::started_after_install(
            p.started,
            install,
            process::boottime_now(),
            SystemTime::now(),
        ) {
            Some(false) => Err(Proof::Fatal(format!(
                "its process (pid {}) started before the package install ended: it still runs the previous version's code{}; restart {} so the installed Kibana runs",
                p.pid,
                p.version.as_deref().map(|v| format!(" although {home} now says {v}")).unwrap_or_default(),
                self.unit()
            ))),
            None => Err(Proof::NotYet(format!(
                "pid {} started in the same second the install ended (the package database keeps whole seconds)",
                p.pid
            ))),
            Some(true) => match p.version.as_deref() {
                Some(v) if v == expect.to_string() => Ok(format!(
                    "the status is redacted; version from the process: pid {} started after the install, {home} (home from {}) says {v}",
                    p.pid, p.home_from
                )),
                Some(v) => Err(Proof::Fatal(format!(
                    "the Kibana home its process (pid {}) runs, {home}, says {v}, not {expect}",
                    p.pid
                ))),
                None => Err(Proof::NotYet(format!("{home} has no version"))),
            },
        }
    }

    /// The cause of a failed start: what happened and the unit's last journal lines.
    async fn failed_start(&self, unit: &str, why: &str) -> String {
        let lines = journal::last_lines(&self.local, unit, JOURNAL_LINES).await;
        format!(
            "{unit} {why}; last journal lines (journalctl -u {unit}):\n  | {}",
            lines.join("\n  | ")
        )
    }
}

/// Calls `op` again while it fails only because systemd did not answer in time (`no_answer`:
/// busy, e.g. reloading for other clients, or hung), until `deadline`: the start step's calls
/// are idempotent (lifting the hold, reading the unit, a start job), and a host whose systemd
/// answers slowly should start late, not be set aside.
async fn patiently<T, E, F, Fut>(
    deadline: tokio::time::Instant,
    what: &str,
    no_answer: fn(&E) -> bool,
    mut op: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    loop {
        match op().await {
            Err(e) if no_answer(&e) && tokio::time::Instant::now() < deadline => {
                tracing::warn!(%e, "systemd did not answer while {what}: asking again");
            }
            r => return r,
        }
    }
}

/// Why a healthy answer does not prove the target version yet.
enum Proof {
    /// It never will: fail the step now.
    Fatal(String),
    /// Maybe later: keep waiting.
    NotYet(String),
}

/// The start step's detail for a healthy answer: what proved the version, and as a warning what
/// is not available — core degraded, or any plugin not available (they do not decide health:
/// Kibana's own HTTP code follows core).
fn started_detail(unit: &str, a: &Answer, proof: &str) -> String {
    use crate::host::kibana_status::Level;
    let mut d = format!("{unit} active; {proof}");
    let what = a.not_available();
    if !what.is_empty() {
        let overall = a.level().map(Level::as_str).unwrap_or("unknown");
        d.push_str(&format!(
            "; warning: Kibana is {overall}: {}",
            what.join("; ")
        ));
    } else if a.core_level() == Some(Level::Degraded) {
        d.push_str("; warning: Kibana is degraded (the redacted status does not say what)");
    }
    d
}

fn auth_refused(url: &reqwest::Url, with_credentials: bool, expect: &Version) -> String {
    if with_credentials {
        format!(
            "Kibana at {url} refused the status credentials; fix: check kibana.status_username and the password in kibana.status_password_file"
        )
    } else {
        format!(
            "Kibana {expect} at {url} needs credentials for /api/status (7.x and 8.0–8.8 answer 401 without them); fix: set kibana.status_username and kibana.status_password_file"
        )
    }
}

/// What an exit status of Kibana means.
pub fn exit_meaning(exit: MainExit) -> String {
    match exit {
        MainExit::Exited(1) => "exit status 1: Kibana stopped on a fatal error (the journal lines below say which)".into(),
        MainExit::Exited(64) => "exit status 64: an unknown setting in kibana.yml: the older Kibana does not know a setting the newer one added; fix: remove or comment out that setting (the journal names it: \"Unknown configuration key(s)\")".into(),
        MainExit::Exited(n) => format!("exit status {n}"),
        MainExit::Signal(9) => "killed by signal 9 (SIGKILL; out of memory?)".into(),
        MainExit::Signal(n) => format!("killed by signal {n}"),
    }
}

/// What the start step has seen of the unit since just before its start. systemd clears
/// `ExecMainStatus` when it starts the next process of a crash loop, so a read that lands while
/// the new process runs has no exit: the last exit seen by an earlier read stays known.
pub struct CrashWatch {
    before: ServiceStatus,
    last_exit: Option<MainExit>,
}

impl CrashWatch {
    /// Watches from `before`, the unit's state read just before the start.
    pub fn new(before: ServiceStatus) -> Self {
        Self {
            before,
            last_exit: None,
        }
    }

    /// Whether the unit is failing since the start, given its state `now`: see [`crash_verdict`].
    pub fn verdict(&mut self, now: &ServiceStatus) -> Option<String> {
        if now.last_exit_at_us > self.before.last_exit_at_us {
            self.last_exit = now.last_exit.or(self.last_exit);
        }
        crash_verdict(&self.before, now, self.last_exit)
    }
}

/// Whether the unit is failing since `before` (read just before our start), `last` being the
/// last exit seen since: the main process exited 64 (deterministic: waiting cannot help), the
/// unit is `failed` (start limit hit or no `Restart=`), or systemd restarted it
/// [`CRASH_LOOP_RESTARTS`] times.
fn crash_verdict(
    before: &ServiceStatus,
    now: &ServiceStatus,
    last: Option<MainExit>,
) -> Option<String> {
    let restarts = now.n_restarts.saturating_sub(before.n_restarts);
    let last_text = || {
        last.map(exit_meaning).unwrap_or_else(|| {
            "its exit status was not seen (the next process already ran when it was read)".into()
        })
    };
    if last == Some(MainExit::Exited(64)) {
        return Some(format!("failed to start: {}", last_text()));
    }
    if now.unit.active_state == ActiveState::Failed {
        let result = now.unit.result.as_deref().unwrap_or("?");
        let what = if result == "start-limit-hit" || restarts > 0 {
            // systemd 252 keeps Result=exit-code when the start limit hits
            format!(
                "failed (Result={result}) after {restarts} automatic restart(s): systemd gives up after StartLimitBurst= quick restarts (its start limit)"
            )
        } else {
            format!("failed (Result={result})")
        };
        return Some(format!("{what}; {}", last_text()));
    }
    if restarts >= CRASH_LOOP_RESTARTS {
        return Some(format!(
            "crash-loops: systemd restarted it {restarts} times since the start; {}",
            last_text()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::systemd::{LoadState, UnitStatus};

    fn svc(
        state: &str,
        result: &str,
        restarts: u32,
        exit: Option<MainExit>,
        at: u64,
    ) -> ServiceStatus {
        ServiceStatus {
            unit: UnitStatus {
                unit: "kibana.service".into(),
                load_state: LoadState::Loaded,
                active_state: ActiveState::from(state),
                sub_state: String::new(),
                unit_file_state: "enabled".into(),
                result: Some(result.into()),
                main_started_us: Some(at),
            },
            main_pid: 0,
            n_restarts: restarts,
            last_exit: exit,
            last_exit_at_us: at,
            environment: vec![],
            environment_files: vec![],
            working_directory: String::new(),
            fragment_path: String::new(),
            drop_in_paths: vec![],
        }
    }

    /// A fresh watch's verdict on one read after `before`.
    fn verdict(before: &ServiceStatus, now: &ServiceStatus) -> Option<String> {
        CrashWatch::new(before.clone()).verdict(now)
    }

    #[test]
    fn crash_verdicts() {
        let before = svc("inactive", "success", 0, Some(MainExit::Exited(64)), 100);
        // the old exit 64 from before our start does not count
        assert_eq!(
            verdict(
                &before,
                &svc("active", "success", 0, Some(MainExit::Exited(64)), 100)
            ),
            None
        );
        let v = verdict(
            &before,
            &svc(
                "activating",
                "exit-code",
                0,
                Some(MainExit::Exited(64)),
                200,
            ),
        )
        .unwrap();
        assert!(v.contains("unknown setting in kibana.yml"), "{v}");
        assert_eq!(
            verdict(
                &before,
                &svc("activating", "exit-code", 1, Some(MainExit::Exited(1)), 200)
            ),
            None,
            "one crash is not a loop yet"
        );
        let v = verdict(
            &before,
            &svc("activating", "exit-code", 2, Some(MainExit::Exited(1)), 300),
        )
        .unwrap();
        assert!(
            v.contains("restarted it 2 times") && v.contains("exit status 1"),
            "{v}"
        );
        let v = verdict(
            &before,
            &svc(
                "failed",
                "start-limit-hit",
                3,
                Some(MainExit::Exited(1)),
                300,
            ),
        )
        .unwrap();
        assert!(v.contains("start limit"), "{v}");
        let v = verdict(
            &before,
            &svc("failed", "signal", 0, Some(MainExit::Signal(9)), 300),
        )
        .unwrap();
        assert!(v.contains("Result=signal") && v.contains("SIGKILL"), "{v}");

        // a read while the loop's next process runs: systemd cleared the exit status; the one
        // an earlier read saw still names the cause
        let mut watch = CrashWatch::new(before.clone());
        assert_eq!(
            watch.verdict(&svc(
                "activating",
                "exit-code",
                1,
                Some(MainExit::Exited(1)),
                200
            )),
            None
        );
        let v = watch
            .verdict(&svc("active", "success", 3, None, 0))
            .unwrap();
        assert!(
            v.contains("restarted it 3 times") && v.contains("exit status 1"),
            "{v}"
        );
        let v = verdict(&before, &svc("active", "success", 3, None, 0)).unwrap();
        assert!(v.contains("exit status was not seen"), "{v}");
    }

    /// Healthy answers name what is not available as a warning: plugins (any state) and a
    /// degraded core; nothing when all is available.
    #[test]
    fn the_start_detail_warns_of_what_is_not_available() {
        use crate::host::kibana_status::classify;
        let body = |overall: &str, es: &str, task: &str| {
            format!(
                r#"{{"version":{{"number":"8.15.0"}},"status":{{"overall":{{"level":"{overall}"}},
                "core":{{"elasticsearch":{{"level":"{es}","summary":"es {es}"}},"savedObjects":{{"level":"available"}}}},
                "plugins":{{"taskManager":{{"level":"{task}","summary":"Task Manager is {task}"}}}}}}}}"#
            )
        };
        let all = classify(200, &body("available", "available", "available"), true);
        assert_eq!(
            started_detail("kibana.service", &all, "proof"),
            "kibana.service active; proof"
        );
        let plugin = classify(200, &body("unavailable", "available", "unavailable"), true);
        assert!(plugin.is_healthy());
        assert_eq!(
            started_detail("kibana.service", &plugin, "proof"),
            "kibana.service active; proof; warning: Kibana is unavailable: plugin taskManager unavailable (Task Manager is unavailable)"
        );
        let core = classify(200, &body("degraded", "degraded", "available"), true);
        assert_eq!(
            started_detail("kibana.service", &core, "proof"),
            "kibana.service active; proof; warning: Kibana is degraded: core elasticsearch degraded (es degraded)"
        );
        let redacted = classify(200, r#"{"status":{"overall":{"level":"degraded"}}}"#, false);
        assert_eq!(
            started_detail("kibana.service", &redacted, "proof"),
            "kibana.service active; proof; warning: Kibana is degraded (the redacted status does not say what)"
        );
    }
}
