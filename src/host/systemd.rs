//! Control of the local systemd units (the `kibana` service) over the D-Bus system bus.
//!
//! The agent stops Kibana before the restore and starts it again on the older version after it,
//! so it must know, not guess, when a unit is really down or up. [`SystemdUnits`] talks to
//! `org.freedesktop.systemd1` directly (no `systemctl` subprocess to parse) and for each
//! [`stop`](SystemdUnits::stop), [`start`](SystemdUnits::start) or
//! [`restart`](SystemdUnits::restart):
//!
//! 1. listens for the manager's `JobRemoved` signals (the connection called `Subscribe()` when it
//!    was made: without a subscriber systemd does not emit them on the system bus);
//! 2. enqueues the job with mode `replace`, as `systemctl` does;
//! 3. waits for the `JobRemoved` of *that* job (matched by job path) and reads its result
//!    (`done`, `failed`, `timeout`, `canceled`, `dependency`, `skipped`);
//! 4. waits until the unit has settled: `inactive`/`failed` after a stop, `active` after a start.
//!
//! All of it within one timeout per operation, chosen by the caller. When that timeout passes the
//! job is left to systemd (it may still finish, or hit the unit's own timeouts); the error says
//! which unit, which operation, what we were waiting for and the last state seen.
//!
//! Everything is idempotent: stopping an inactive (or never loaded) unit succeeds, starting an
//! active one succeeds. Failures come back as [`UnitError`], one variant per cause the caller may
//! want to tell apart (missing unit, masked unit, failed start with the unit's `Result`, systemd's
//! job timeout vs. our own, unreachable bus, access denied).
//!
//! This adapter acts and reports; it makes no decisions (whether a missing `kibana.service` is
//! fine, whether to retry a stop, how long to wait): that is `fleet/`'s business.

use std::fmt;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::{sleep, timeout_at, Instant};
use zbus::proxy::CacheProperties;
use zbus::{Connection, DBusError as _, OwnedObjectPath};
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy, UnitProxy};

/// How long a single D-Bus method call may take before zbus gives up on it (the D-Bus default).
/// Operations are bounded by their own, caller-chosen timeout as well.
const METHOD_TIMEOUT: Duration = Duration::from_secs(25);
/// How long a daemon-reload may take: systemctl's own bound (`DAEMON_RELOAD_TIMEOUT_SEC`, twice
/// systemd's default timeout of 90 s), since a reload re-runs the generators and re-reads every
/// unit. A busy systemd (many units, many reloads queued) answers after the 25 s of other calls.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(180);
/// How often the unit's state is read while waiting for it to settle after its job finished.
const SETTLE_POLL: Duration = Duration::from_millis(50);
/// How long reading the unit's last state for a timeout error may take.
const LAST_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Declares a string-backed enum for one of systemd's state properties: known values get a
/// variant, anything else is kept verbatim in `Other` (systemd grows new states over time).
macro_rules! systemd_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $(#[doc = concat!("`", $text, "`")] $variant,)+
            /// A value this version does not know, as systemd sent it.
            Other(String),
        }
        impl $name {
            /// The value as systemd spells it.
            pub fn as_str(&self) -> &str {
                match self { $(Self::$variant => $text,)+ Self::Other(s) => s }
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s { $($text => Self::$variant,)+ other => Self::Other(other.to_owned()) }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

systemd_enum! {
    /// A unit's `LoadState`: whether systemd found and parsed its unit file.
    LoadState {
        Loaded = "loaded",
        NotFound = "not-found",
        BadSetting = "bad-setting",
        Error = "error",
        Masked = "masked",
        Stub = "stub",
        Merged = "merged",
    }
}

systemd_enum! {
    /// A unit's `ActiveState`, the high-level activation state.
    ActiveState {
        Active = "active",
        Reloading = "reloading",
        Inactive = "inactive",
        Failed = "failed",
        Activating = "activating",
        Deactivating = "deactivating",
        Maintenance = "maintenance",
        Refreshing = "refreshing",
    }
}

systemd_enum! {
    /// The result systemd reports for a finished job in its `JobRemoved` signal.
    JobResult {
        Done = "done",
        Canceled = "canceled",
        Timeout = "timeout",
        Failed = "failed",
        Dependency = "dependency",
        Skipped = "skipped",
    }
}

/// What was asked of systemd; named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Reading a unit's state.
    Status,
    /// `StartUnit`.
    Start,
    /// `StopUnit`.
    Stop,
    /// `RestartUnit`.
    Restart,
    /// `Manager.Reload` (`systemctl daemon-reload`).
    DaemonReload,
    /// `MaskUnitFiles` / `UnmaskUnitFiles`.
    Mask,
    Unmask,
    /// `ResetFailedUnit` (`systemctl reset-failed`).
    ResetFailed,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Status => "status",
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
            Action::DaemonReload => "daemon-reload",
            Action::Mask => "mask",
            Action::Unmask => "unmask",
            Action::ResetFailed => "reset-failed",
        })
    }
}

/// A unit's state as systemd reports it, read in one go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitStatus {
    /// The unit's name (`kibana.service`).
    pub unit: String,
    /// `LoadState`: `not-found` when no unit file exists, `masked` when masked.
    pub load_state: LoadState,
    /// `ActiveState`.
    pub active_state: ActiveState,
    /// `SubState` (`running`, `dead`, `stop-sigterm`, ...; depends on the unit type).
    pub sub_state: String,
    /// `UnitFileState` (`enabled`, `disabled`, `static`, `masked`, ...; empty when there is no
    /// unit file).
    pub unit_file_state: String,
    /// The service's `Result` (`success`, `exit-code`, `signal`, `timeout`, `core-dump`, ...);
    /// `None` for units that are not services.
    pub result: Option<String>,
    /// `ExecMainStartTimestampMonotonic` (µs; 0 if the main process never started): changes
    /// with every start of the service, so it tells whether it ran since a moment it was read.
    pub main_started_us: Option<u64>,
}

impl UnitStatus {
    /// Masked, by `LoadState` or by its unit file (a runtime mask counts too).
    pub fn is_masked(&self) -> bool {
        self.load_state == LoadState::Masked || self.unit_file_state.starts_with("masked")
    }

    /// `ActiveState` is `inactive` or `failed`: nothing of the unit is running.
    pub fn is_stopped(&self) -> bool {
        matches!(
            self.active_state,
            ActiveState::Inactive | ActiveState::Failed
        )
    }

    /// `ActiveState` is `active` (or `reloading`, which is active too).
    pub fn is_active(&self) -> bool {
        matches!(
            self.active_state,
            ActiveState::Active | ActiveState::Reloading
        )
    }
}

impl fmt::Display for UnitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: LoadState={} ActiveState={} SubState={}",
            self.unit, self.load_state, self.active_state, self.sub_state
        )?;
        if let Some(result) = &self.result {
            write!(f, " Result={result}")?;
        }
        if !self.unit_file_state.is_empty() {
            write!(f, " UnitFileState={}", self.unit_file_state)?;
        }
        Ok(())
    }
}

/// How a service's main process ended (`ExecMainCode`, the `si_code` of its `waitid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MainExit {
    /// Exited with this status (`CLD_EXITED`).
    Exited(i32),
    /// Killed by this signal (`CLD_KILLED`, `CLD_DUMPED`).
    Signal(i32),
}

/// A service's process-level state: what a start watch needs to see a crash loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    pub unit: UnitStatus,
    /// `MainPID`; 0 when no main process runs.
    pub main_pid: u32,
    /// `NRestarts`: automatic restarts since the last manual start (a manual start resets it).
    pub n_restarts: u32,
    /// How the last main process ended, if one has ended (`ExecMainCode`/`ExecMainStatus`).
    pub last_exit: Option<MainExit>,
    /// `ExecMainExitTimestampMonotonic` (µs, CLOCK_MONOTONIC; 0 if none exited yet): tells a
    /// new exit from one before a start.
    pub last_exit_at_us: u64,
    /// The unit's `Environment=` settings (`KEY=VALUE`).
    pub environment: Vec<String>,
    /// The unit's `EnvironmentFile=` paths (the flag: `-`, missing is fine).
    pub environment_files: Vec<(String, bool)>,
    /// `WorkingDirectory=`; empty when unset.
    pub working_directory: String,
    /// `FragmentPath`: the unit file in use (`/usr/lib/systemd/system/kibana.service`, or
    /// `/etc/systemd/system/kibana.service` as 7.x packages install it).
    pub fragment_path: String,
    /// `DropInPaths`.
    pub drop_in_paths: Vec<String>,
}

impl ServiceStatus {
    /// `KEY` from `Environment=` (the last setting wins, as in systemd).
    pub fn env(&self, key: &str) -> Option<&str> {
        self.environment
            .iter()
            .rev()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }
}

/// What an operation was waiting for when our timeout passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// The reply to the request that enqueues the job.
    Enqueue,
    /// The `JobRemoved` signal of this job (still queued or running in systemd).
    Job(String),
    /// The unit to reach this state after its job finished.
    Settle(&'static str),
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Waiting::Enqueue => f.write_str("systemd to accept the job"),
            Waiting::Job(job) => write!(f, "systemd's job {job} to finish (it stays queued)"),
            Waiting::Settle(state) => write!(f, "the unit to become {state}"),
        }
    }
}

/// Why a unit operation failed. Each variant names the unit and the operation.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    /// No connection to the system bus at all.
    #[error("cannot reach the D-Bus system bus at {address}: {source}")]
    BusUnreachable {
        /// The bus address tried (`unix:path=/run/dbus/system_bus_socket`, or
        /// `DBUS_SYSTEM_BUS_ADDRESS`).
        address: String,
        /// What zbus reported.
        #[source]
        source: zbus::Error,
    },
    /// systemd (or polkit) refused the caller.
    #[error("{}: access denied ({message}); the agent must run as root or be allowed by polkit", what(*.action, .unit))]
    AccessDenied {
        /// The unit acted on (empty for manager-wide actions).
        unit: String,
        /// What was asked.
        action: Action,
        /// systemd's message.
        message: String,
    },
    /// No unit file of this name exists (`LoadState=not-found`).
    #[error(
        "{action} of {unit}: unit not found (LoadState=not-found): no such unit file is installed"
    )]
    NotFound {
        /// The unit asked for.
        unit: String,
        /// What was asked.
        action: Action,
    },
    /// The unit is masked; systemd refuses to start it.
    #[error("{action} of {unit}: the unit is masked (systemctl unmask {unit} to allow it)")]
    Masked {
        /// The masked unit.
        unit: String,
        /// What was asked.
        action: Action,
    },
    /// A start or restart ran, and the unit did not come up.
    #[error("{unit} failed to {action}: {status}, job result {job_result}{}", journal_hint(.unit))]
    StartFailed {
        /// The unit.
        unit: String,
        /// `Start` or `Restart`.
        action: Action,
        /// The job's result (`failed`, `dependency`, or `done` when the unit failed right after).
        job_result: JobResult,
        /// The unit's state afterwards; its `result` is the service's `Result` (`exit-code`...).
        status: UnitStatus,
    },
    /// systemd's own job timeout (the unit's `JobTimeoutSec=`) cancelled the job.
    #[error("{action} of {unit}: systemd's job timed out (JobTimeoutSec={}); {status}", fmt_limit(*.job_timeout))]
    JobTimedOut {
        /// The unit.
        unit: String,
        /// What was asked.
        action: Action,
        /// The unit's `JobTimeoutSec`, if set.
        job_timeout: Option<Duration>,
        /// The unit's state afterwards.
        status: UnitStatus,
    },
    /// The job ended with another result than `done` (e.g. `canceled` by a conflicting job).
    #[error("{action} of {unit}: systemd ended the job with result {job_result}; {status}")]
    JobFailed {
        /// The unit.
        unit: String,
        /// What was asked.
        action: Action,
        /// The job's result.
        job_result: JobResult,
        /// The unit's state afterwards.
        status: UnitStatus,
    },
    /// Our own, caller-chosen timeout for the whole operation passed.
    #[error("{action} of {unit} did not finish within our timeout of {timeout:?}: still waiting for {waiting}; last seen {}", last.as_ref().map_or_else(|| "nothing".to_owned(), |s| s.to_string()))]
    TimedOut {
        /// The unit.
        unit: String,
        /// What was asked.
        action: Action,
        /// The timeout the caller gave.
        timeout: Duration,
        /// What we were waiting for.
        waiting: Waiting,
        /// The unit's state when we gave up, if it could be read.
        last: Option<UnitStatus>,
    },
    /// systemd refused the request with another D-Bus error (e.g. `RefuseManualStart=`, a unit
    /// file that does not parse).
    #[error("{}: systemd refused: {name}: {message}", what(*.action, .unit))]
    Refused {
        /// The unit.
        unit: String,
        /// What was asked.
        action: Action,
        /// The D-Bus error name (`org.freedesktop.systemd1.OnlyByDependency`, ...).
        name: String,
        /// systemd's message.
        message: String,
    },
    /// The bus failed underneath us (connection closed, malformed reply, method call timeout).
    #[error("{}: D-Bus error: {source}", what(*.action, .unit))]
    Bus {
        /// The unit.
        unit: String,
        /// What was asked.
        action: Action,
        /// What zbus reported.
        #[source]
        source: zbus::Error,
    },
}

impl UnitError {
    /// Whether systemd did not answer within the method timeout: busy (working off a queue of
    /// reloads, say) or hung. The call may have been carried out; made again it does no harm
    /// where it is idempotent.
    pub fn is_no_answer(&self) -> bool {
        matches!(self, UnitError::Bus { source: zbus::Error::InputOutput(e), .. }
            if e.kind() == std::io::ErrorKind::TimedOut)
    }
}

/// "stop of kibana.service", or just "daemon-reload" for manager-wide actions.
fn what(action: Action, unit: &str) -> String {
    if unit.is_empty() {
        action.to_string()
    } else {
        format!("{action} of {unit}")
    }
}

fn journal_hint(unit: &str) -> String {
    format!(" (journalctl -u {unit})")
}

fn fmt_limit(limit: Option<Duration>) -> String {
    limit.map_or_else(|| "infinity".to_owned(), |d| format!("{d:?}"))
}

/// The D-Bus error name and message of a method error reply, if `e` is one.
fn method_error(e: &zbus::Error) -> Option<(String, String)> {
    match e {
        zbus::Error::MethodError(name, message, _) => {
            Some((name.to_string(), message.clone().unwrap_or_default()))
        }
        zbus::Error::FDO(e) => Some((
            e.name().to_string(),
            e.description().unwrap_or_default().to_owned(),
        )),
        _ => None,
    }
}

/// Turns a failed call into the error that names its cause.
fn classify(e: zbus::Error, unit: &str, action: Action) -> UnitError {
    let unit = unit.to_owned();
    let Some((name, message)) = method_error(&e) else {
        return UnitError::Bus {
            unit,
            action,
            source: e,
        };
    };
    match name.as_str() {
        "org.freedesktop.DBus.Error.AccessDenied"
        | "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired" => {
            UnitError::AccessDenied {
                unit,
                action,
                message,
            }
        }
        "org.freedesktop.systemd1.NoSuchUnit" => UnitError::NotFound { unit, action },
        "org.freedesktop.systemd1.UnitMasked" => UnitError::Masked { unit, action },
        _ => UnitError::Refused {
            unit,
            action,
            name,
            message,
        },
    }
}

/// The units of one systemd instance, reached over its D-Bus system bus.
///
/// Cheap to clone; clones share the connection. Operations may run concurrently.
#[derive(Clone)]
pub struct SystemdUnits {
    conn: Connection,
    manager: ManagerProxy<'static>,
    /// The manager on a connection of its own with [`RELOAD_TIMEOUT`] (zbus bounds calls per
    /// connection), made at the first reload.
    reloader: std::sync::Arc<tokio::sync::OnceCell<ManagerProxy<'static>>>,
    address: String,
}

impl fmt::Debug for SystemdUnits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SystemdUnits")
            .field("address", &self.address)
            .finish()
    }
}

impl SystemdUnits {
    /// Connects to the system bus: `DBUS_SYSTEM_BUS_ADDRESS` if set, else the standard socket.
    pub async fn connect() -> Result<Self, UnitError> {
        let address = zbus::Address::system().map_err(|source| UnitError::BusUnreachable {
            address: std::env::var("DBUS_SYSTEM_BUS_ADDRESS").unwrap_or_default(),
            source,
        })?;
        Self::connect_to(&address.to_string()).await
    }

    /// Connects to the bus at `address` (`unix:path=/some/system_bus_socket`), e.g. a test host's.
    pub async fn connect_to(address: &str) -> Result<Self, UnitError> {
        let unreachable = |source| UnitError::BusUnreachable {
            address: address.to_owned(),
            source,
        };
        let conn = zbus::connection::Builder::address(address)
            .method_timeout(METHOD_TIMEOUT)
            .build()
            .await
            .map_err(unreachable)?;
        let manager = ManagerProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(unreachable)?;
        // Without a subscriber systemd does not send JobRemoved on the system bus. The
        // subscription lasts as long as this connection.
        manager
            .subscribe()
            .await
            .map_err(|e| classify(e, "", Action::Status))?;
        Ok(Self {
            conn,
            manager,
            reloader: Default::default(),
            address: address.to_owned(),
        })
    }

    /// The bus address this talks to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Reads the unit's state. A unit without a unit file is not an error here: its
    /// `load_state` says `not-found` (and `masked` for a masked one).
    pub async fn status(&self, unit: &str) -> Result<UnitStatus, UnitError> {
        let err = |e| classify(e, unit, Action::Status);
        // LoadUnit (unlike GetUnit) answers for units systemd has not loaded yet, too.
        let path = self.manager.load_unit(unit.to_owned()).await.map_err(err)?;
        let proxy = self.unit_proxy(path.clone()).await.map_err(err)?;
        let (load_state, active_state, sub_state, unit_file_state) = tokio::try_join!(
            proxy.load_state(),
            proxy.active_state(),
            proxy.sub_state(),
            proxy.unit_file_state(),
        )
        .map_err(err)?;
        let (result, main_started_us) = if unit.ends_with(".service") {
            let s = self.service(path).await.map_err(err)?;
            let (result, started) =
                tokio::try_join!(s.result(), s.exec_main_start_timestamp_monotonic())
                    .map_err(err)?;
            (Some(result), Some(started))
        } else {
            (None, None)
        };
        Ok(UnitStatus {
            unit: unit.to_owned(),
            load_state: LoadState::from(load_state.as_str()),
            active_state: ActiveState::from(active_state.as_str()),
            sub_state,
            unit_file_state,
            result,
            main_started_us,
        })
    }

    /// Reads a service's process-level state along with its unit state.
    pub async fn service_status(&self, unit: &str) -> Result<ServiceStatus, UnitError> {
        let err = |e| classify(e, unit, Action::Status);
        let status = self.status(unit).await?;
        let path = self.manager.load_unit(unit.to_owned()).await.map_err(err)?;
        let u = self.unit_proxy(path.clone()).await.map_err(err)?;
        let s = self.service(path).await.map_err(err)?;
        let (main_pid, n_restarts, code, exit_status, last_exit_at_us) = tokio::try_join!(
            s.main_pid(),
            s.n_restarts(),
            s.exec_main_code(),
            s.exec_main_status(),
            s.exec_main_exit_timestamp_monotonic(),
        )
        .map_err(err)?;
        let (environment, environment_files, working_directory) = tokio::try_join!(
            s.environment(),
            s.environment_files(),
            s.working_directory()
        )
        .map_err(err)?;
        let (fragment_path, drop_in_paths) =
            tokio::try_join!(u.fragment_path(), u.drop_in_paths()).map_err(err)?;
        // CLD_EXITED = 1, CLD_KILLED = 2, CLD_DUMPED = 3 (waitid(2)); 0: nothing exited yet.
        let last_exit = match code {
            1 => Some(MainExit::Exited(exit_status)),
            2 | 3 => Some(MainExit::Signal(exit_status)),
            _ => None,
        };
        Ok(ServiceStatus {
            unit: status,
            main_pid,
            n_restarts,
            last_exit,
            last_exit_at_us,
            environment,
            environment_files,
            working_directory,
            fragment_path,
            drop_in_paths,
        })
    }

    /// `systemctl reset-failed UNIT`: forgets a `failed` state and the start-limit counter, so
    /// a unit that hit `StartLimitBurst=` can be started again. A unit that is not failed is
    /// left as it is.
    pub async fn reset_failed(&self, unit: &str) -> Result<(), UnitError> {
        match self.manager.reset_failed_unit(unit.to_owned()).await {
            Ok(()) => Ok(()),
            Err(e) => match classify(e, unit, Action::ResetFailed) {
                // never loaded: nothing to reset
                UnitError::NotFound { .. } => Ok(()),
                e => Err(e),
            },
        }
    }

    /// Stops the unit and waits until it is `inactive` or `failed`, within `timeout`.
    /// Succeeds at once for a unit that is not running (or not loaded); a masked unit can be
    /// stopped. Returns the unit's state afterwards.
    pub async fn stop(&self, unit: &str, timeout: Duration) -> Result<UnitStatus, UnitError> {
        self.run_job(unit, Action::Stop, timeout).await
    }

    /// Starts the unit and waits until it is `active`, within `timeout`. Succeeds at once for
    /// an active unit. A unit that runs and exits successfully (a oneshot) counts as started;
    /// the returned state then says `inactive` with `Result=success`.
    pub async fn start(&self, unit: &str, timeout: Duration) -> Result<UnitStatus, UnitError> {
        self.run_job(unit, Action::Start, timeout).await
    }

    /// Restarts the unit (starts it when stopped) and waits until it is `active`, within
    /// `timeout`.
    pub async fn restart(&self, unit: &str, timeout: Duration) -> Result<UnitStatus, UnitError> {
        self.run_job(unit, Action::Restart, timeout).await
    }

    /// Whether systemd's loaded view of the unit is older than its files on disk (its unit file
    /// or drop-ins changed since the last reload: `NeedDaemonReload`).
    pub async fn needs_reload(&self, unit: &str) -> Result<bool, UnitError> {
        let err = |e| classify(e, unit, Action::Status);
        let path = self.manager.load_unit(unit.to_owned()).await.map_err(err)?;
        let proxy = self.unit_proxy(path).await.map_err(err)?;
        proxy.need_daemon_reload().await.map_err(err)
    }

    /// Makes systemd re-read all unit files (`systemctl daemon-reload`), e.g. after a package
    /// replaced `kibana.service`. Returns when the reload is complete.
    pub async fn daemon_reload(&self) -> Result<(), UnitError> {
        self.reload()
            .await
            .map_err(|e| classify(e, "", Action::DaemonReload))
    }

    /// `Manager.Reload`, bounded by [`RELOAD_TIMEOUT`] rather than [`METHOD_TIMEOUT`].
    async fn reload(&self) -> zbus::Result<()> {
        let reloader = self
            .reloader
            .get_or_try_init(|| async {
                let conn = zbus::connection::Builder::address(self.address.as_str())
                    .method_timeout(RELOAD_TIMEOUT)
                    .build()
                    .await?;
                ManagerProxy::builder(&conn)
                    .cache_properties(CacheProperties::No)
                    .build()
                    .await
            })
            .await?;
        reloader.reload().await
    }

    /// `systemctl mask UNIT`: nothing can start the unit until it is unmasked — not an admin,
    /// a timer, a package script, nor a reboot (hence not `--runtime`, which a reboot clears).
    /// Used while Kibana must stay stopped.
    pub async fn mask(&self, unit: &str) -> Result<(), UnitError> {
        let err = |e| classify(e, unit, Action::Mask);
        self.manager
            .mask_unit_files(vec![unit.to_owned()], false, true)
            .await
            .map_err(err)?;
        self.reload().await.map_err(err)
    }

    /// `systemctl unmask UNIT`; a unit that is not masked is left as it is.
    pub async fn unmask(&self, unit: &str) -> Result<(), UnitError> {
        let err = |e| classify(e, unit, Action::Unmask);
        let changes = self
            .manager
            .unmask_unit_files(vec![unit.to_owned()], false)
            .await
            .map_err(err)?;
        if !changes.is_empty() {
            self.reload().await.map_err(err)?;
        }
        Ok(())
    }

    // Uncached proxies: every read is a fresh answer from systemd, and no match rules pile up.
    async fn unit_proxy(&self, path: OwnedObjectPath) -> zbus::Result<UnitProxy<'static>> {
        UnitProxy::builder(&self.conn)
            .path(path)
            .cache_properties(CacheProperties::No)
            .build()
            .await
    }

    async fn service(&self, path: OwnedObjectPath) -> zbus::Result<ServiceProxy<'static>> {
        ServiceProxy::builder(&self.conn)
            .path(path)
            .cache_properties(CacheProperties::No)
            .build()
            .await
    }

    async fn enqueue(&self, unit: &str, action: Action) -> zbus::Result<OwnedObjectPath> {
        let (name, mode) = (unit.to_owned(), "replace".to_owned());
        match action {
            Action::Start => self.manager.start_unit(name, mode).await,
            Action::Stop => self.manager.stop_unit(name, mode).await,
            Action::Restart => self.manager.restart_unit(name, mode).await,
            Action::Status
            | Action::DaemonReload
            | Action::Mask
            | Action::Unmask
            | Action::ResetFailed => {
                unreachable!("{action} is not a unit job")
            }
        }
    }

    async fn run_job(
        &self,
        unit: &str,
        action: Action,
        timeout: Duration,
    ) -> Result<UnitStatus, UnitError> {
        self.job_until(unit, action, timeout, Instant::now() + timeout)
            .await
    }

    /// The unit's state for a timeout error: best effort, and quick (systemd may be the one
    /// that hangs).
    async fn last_status(&self, unit: &str) -> Option<UnitStatus> {
        tokio::time::timeout(LAST_STATUS_TIMEOUT, self.status(unit))
            .await
            .ok()?
            .ok()
    }

    async fn job_until(
        &self,
        unit: &str,
        action: Action,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<UnitStatus, UnitError> {
        let timed_out = |waiting: Waiting, last: Option<UnitStatus>| UnitError::TimedOut {
            unit: unit.to_owned(),
            action,
            timeout,
            waiting,
            last,
        };
        let err = |e| classify(e, unit, action);

        // Listen before enqueueing, so the signal of a job that finishes at once is not missed.
        // Matched by job path, not by unit name: an alias would carry the unit's real name.
        let mut removed = self.manager.receive_job_removed().await.map_err(err)?;
        let job = match timeout_at(deadline, self.enqueue(unit, action)).await {
            Err(_) => return Err(timed_out(Waiting::Enqueue, self.last_status(unit).await)),
            Ok(Ok(job)) => job,
            Ok(Err(e)) => match err(e) {
                // StopUnit does not load units: "not loaded" may mean "no such unit file" or
                // "installed, never started". Either way nothing runs; tell the two apart.
                UnitError::NotFound { .. } if action == Action::Stop => {
                    let status = self.status(unit).await?;
                    return match status.load_state {
                        LoadState::NotFound => Err(UnitError::NotFound {
                            unit: unit.to_owned(),
                            action,
                        }),
                        _ if status.is_stopped() => Ok(status),
                        // loaded and running by now: someone started it meanwhile; stop again
                        _ => Box::pin(self.job_until(unit, action, timeout, deadline)).await,
                    };
                }
                e => return Err(e),
            },
        };
        tracing::debug!(unit, %action, job = %job.as_str(), "job enqueued");

        let job_result = loop {
            match timeout_at(deadline, removed.next()).await {
                Err(_) => {
                    let waiting = Waiting::Job(job.to_string());
                    return Err(timed_out(waiting, self.last_status(unit).await));
                }
                Ok(None) => {
                    let source = zbus::Error::Failure(
                        "connection closed while waiting for JobRemoved".into(),
                    );
                    return Err(UnitError::Bus {
                        unit: unit.to_owned(),
                        action,
                        source,
                    });
                }
                Ok(Some(signal)) => {
                    let args = signal.args().map_err(err)?;
                    if args.job == job {
                        break JobResult::from(args.result.as_str());
                    }
                }
            }
        };
        tracing::debug!(unit, %action, %job_result, "job finished");

        let starting = matches!(action, Action::Start | Action::Restart);
        match job_result {
            JobResult::Done => {}
            JobResult::Timeout => {
                let job_timeout = self.job_timeout(unit).await;
                let status = self.status(unit).await?;
                return Err(UnitError::JobTimedOut {
                    unit: unit.to_owned(),
                    action,
                    job_timeout,
                    status,
                });
            }
            JobResult::Failed | JobResult::Dependency if starting => {
                let status = self.status(unit).await?;
                return Err(UnitError::StartFailed {
                    unit: unit.to_owned(),
                    action,
                    job_result,
                    status,
                });
            }
            job_result => {
                let status = self.status(unit).await?;
                return Err(UnitError::JobFailed {
                    unit: unit.to_owned(),
                    action,
                    job_result,
                    status,
                });
            }
        }

        // The job is done; wait for the unit to settle (a service that dies right after its
        // start job completed shows up here as failed).
        let target = if starting {
            "active"
        } else {
            "inactive or failed"
        };
        loop {
            let status = self.status(unit).await?;
            if starting {
                let ran_fine = status.active_state == ActiveState::Inactive
                    && status.result.as_deref().is_none_or(|r| r == "success");
                if status.is_active() || ran_fine {
                    return Ok(status);
                }
                if status.is_stopped() {
                    return Err(UnitError::StartFailed {
                        unit: unit.to_owned(),
                        action,
                        job_result,
                        status,
                    });
                }
            } else if status.is_stopped() {
                return Ok(status);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(timed_out(Waiting::Settle(target), Some(status)));
            }
            sleep(SETTLE_POLL.min(deadline - now)).await;
        }
    }

    /// The unit's `JobTimeoutSec`, for the error message; `None` if infinite or unreadable.
    async fn job_timeout(&self, unit: &str) -> Option<Duration> {
        let path = self.manager.load_unit(unit.to_owned()).await.ok()?;
        let proxy = self.unit_proxy(path).await.ok()?;
        match proxy.job_timeout_u_sec().await.ok()? {
            u64::MAX => None,
            usec => Some(Duration::from_micros(usec)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_keep_unknown_values() {
        assert_eq!(LoadState::from("not-found"), LoadState::NotFound);
        assert_eq!(ActiveState::from("deactivating").as_str(), "deactivating");
        let new = JobResult::from("once-in-systemd-300");
        assert_eq!(new, JobResult::Other("once-in-systemd-300".into()));
        assert_eq!(new.to_string(), "once-in-systemd-300");
    }

    #[test]
    fn errors_name_unit_and_action() {
        let e = UnitError::NotFound {
            unit: "kibana.service".into(),
            action: Action::Stop,
        };
        assert!(e
            .to_string()
            .starts_with("stop of kibana.service: unit not found"));
        let e = UnitError::AccessDenied {
            unit: String::new(),
            action: Action::DaemonReload,
            message: "Access denied".into(),
        };
        assert!(
            e.to_string().starts_with("daemon-reload: access denied"),
            "{e}"
        );
    }
}
