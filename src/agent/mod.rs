//! The daemon (`kibana-rollback agent`, unit `kibana-rollbackd.service`): reads the world, asks
//! `fleet::step` what to do, does it, and feeds the results back — nothing here decides.
//!
//! One round: collect the results of finished actions, read the operation and the host
//! documents (one realtime `_mget`), take the latest host facts (gathered beside the loop by
//! [`facts`]), call `step`, start its actions. Writes and steps run as tasks so a long restore
//! does not stop the leader from renewing its lease; `RecordProgress` is written and fsynced
//! before the next action runs. Every Elasticsearch request is bounded by lease/3.
//!
//! Polling adapts, at the pace [`fleet::NodeState::read_every`] sets: every 100 ms while an
//! operation exists (an agent waiting for its step, an acknowledgement or the next phase learns
//! of it that soon; a finished step or write wakes the loop at once), every second while only
//! this host's own step runs (its end wakes the loop), every 5 s (at most the heartbeat period)
//! when idle. A wake between two idle reads (a write's result, the watchdog) decides on the last
//! reading instead of reading again.
//! The same `_mget` reads the fleet's rollback point: one this host has not reported on has its
//! kibana.yml kept beside the loop ([`prepared`]). The loop sends `WATCHDOG=1` itself. Time is `CLOCK_BOOTTIME`, which keeps counting through a
//! suspend (a leader waking from one must see its lease as old as it is).

mod cluster_steps;
mod detector;
mod evidence;
mod facts;
mod host_steps;
mod identity;
mod prepared;
mod progress;
mod telemetry;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::Settings;
use crate::coord::{fleet_config, wall_now, Coord};
use crate::es::{Es, EsError};
use crate::fleet::{self, Action, Event, HostDoc, Inputs, NodeState, OpRead, WriteResult};
use crate::host::kibana_status::StatusProbe;
use crate::host::local::Local;
use crate::host::pkg::PackageManager;
pub use crate::host::readiness::ConfigOnDisk;
use crate::host::systemd::SystemdUnits;

pub use cluster_steps::Cluster;
pub use host_steps::Host;
pub use progress::{PointSeenFile, ProgressFile, RevisionFile};

/// How long a stopping agent waits for the writes it already sent.
const STOP_FLUSH: Duration = Duration::from_secs(5);
/// How often the loop wakes while Elasticsearch or the first readiness report is awaited.
const POLL_UNREADABLE: Duration = fleet::READ_UNREADABLE;
/// How often a leader re-reads the claim documents (a search) while it wants them.
const CLAIMS_EVERY: Duration = Duration::from_secs(1);
/// How long the agent waits for its first readiness report before it registers.
const FIRST_READINESS_LIMIT: Duration = Duration::from_secs(30);

/// Monotonic time that includes suspend.
fn boottime() -> Duration {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .expect("CLOCK_BOOTTIME is available on Linux");
    Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32)
}

fn notify(state: &[sd_notify::NotifyState]) {
    // Outside systemd NOTIFY_SOCKET is unset and this does nothing.
    let _ = sd_notify::notify(state);
}

fn write_result(r: Result<fleet::DocVersion, EsError>) -> WriteResult {
    match r {
        Ok(v) => WriteResult::Ok(v),
        Err(e) if e.is_conflict() || e.is_not_found() => WriteResult::Conflict,
        Err(e) => WriteResult::Unknown(e.to_string()),
    }
}

/// Sets up the adapters, waiting for what may come up after us (the bus, Elasticsearch).
/// `config`: the configuration files the settings came from, so the agent notices when they
/// change (its readiness report says so).
pub async fn run(settings: Settings, config: Option<ConfigOnDisk>) -> Result<()> {
    let settings = Arc::new(settings);
    let host_id = settings.coordination.host_id.clone();
    let progress = ProgressFile::open(&settings.coordination.state_dir).with_context(|| {
        format!(
            "creating the state directory {}",
            settings.coordination.state_dir.display()
        )
    })?;
    let revisions = RevisionFile::open(&settings.coordination.state_dir)?;
    let point_seen_file = PointSeenFile::open(&settings.coordination.state_dir)?;
    let point_seen = point_seen_file.load();
    let mut telemetry = telemetry::Telemetry::new(&settings, boottime);
    let es = Arc::new(Es::new(&settings.elasticsearch)?.with_observer(telemetry.es_observer()));
    telemetry.start(&settings).await?;
    let telemetry = Arc::new(telemetry);
    let units = SystemdUnits::connect()
        .await
        .context("connecting to systemd over the system bus")?;
    let pkg = PackageManager::from_settings(&settings.package_manager)
        .await
        .context("choosing the package manager")?;
    let probe = StatusProbe::new(&settings.kibana)?;
    let evidence = evidence::Evidence::open(
        &settings.coordination.state_dir,
        &settings.kibana.package,
        pkg.kind(),
    );
    let host = Arc::new(Host::new(
        units,
        pkg,
        probe,
        settings.clone(),
        Local::this_host(),
        config,
    ));
    let cluster = Arc::new(Cluster {
        es: es.clone(),
        settings: settings.clone(),
    });

    let resumed = progress.load();
    if let Some(p) = &resumed {
        tracing::info!(operation_id = %p.operation_id, step = ?p.step, "resuming from the local progress record");
    }
    let machine = identity::machine(&settings.coordination.state_dir);
    tracing::info!(host = %host_id, "this agent is {machine}");
    let mut node = NodeState::new(host_id.clone(), fleet_config(&settings, machine), resumed);
    if let Some(seen) = revisions.load() {
        node.remember_revision(seen);
    }
    let facts = facts::Facts::new(
        host.clone(),
        es.clone(),
        telemetry.clone(),
        evidence,
        detector::Detector::open(&settings.coordination.state_dir, &settings.detection),
        identity::client_addresses(&settings.coordination.client_addresses),
        boottime,
    );
    // Ready once the local adapters are: Elasticsearch may come up after us, and the loop waits
    // for it (pinging the watchdog) rather than failing the start into a restart loop.
    tracing::info!(host = %host_id, index = %settings.coordination.index, "agent started");
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("connecting to Elasticsearch"),
    ]);
    let result = Daemon {
        io_limit: io_limit(&settings),
        poll: POLL_UNREADABLE,
        watch_ids: vec![host_id.clone()],
        claims_read_at: None,
        next_read_at: Duration::ZERO,
        last_op: OpRead::Unreadable,
        last_own_version: None,
        acked: Arc::default(),
        settings: settings.clone(),
        es,
        host,
        cluster,
        progress,
        revisions,
        point_seen_file,
        point_seen,
        point_replayed: None,
        step_tasks: Vec::new(),
        node,
        last_hosts: Vec::new(),
        last_hosts_read: Vec::new(),
        facts,
        readiness_task: None,
        telemetry: telemetry.clone(),
        prepared_task: None,
        prepared_for: Arc::new(std::sync::Mutex::new(None)),
    }
    .run()
    .await;
    telemetry.shutdown().await;
    result
}

/// The longest any one Elasticsearch read or write may hold up the loop or a write task: a
/// third of the lease, so a leader always has time to renew before its lease runs out.
fn io_limit(settings: &Settings) -> Duration {
    (settings.coordination.lease / 3).max(Duration::from_millis(100))
}

/// `fut`, or [`EsError::Timeout`]-like failure after `limit`.
async fn bounded<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, EsError>>,
) -> Result<T, EsError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(EsError::Timeout {
            method: "agent".into(),
            path: what.to_string(),
            host: "Elasticsearch".into(),
            timeout: limit,
        }),
    }
}

struct Daemon {
    settings: Arc<Settings>,
    es: Arc<Es>,
    host: Arc<Host>,
    cluster: Arc<Cluster>,
    progress: ProgressFile,
    revisions: RevisionFile,
    /// The rollback point last trusted (kept in `rollback-point.json`), and the snapshot uuid of
    /// the replayed one last reported (reported once).
    point_seen_file: PointSeenFile,
    point_seen: Option<crate::rollback_point::PointSeen>,
    point_replayed: Option<String>,
    /// Running host steps (apart from writes: stopping waits for these, not for a heartbeat).
    step_tasks: Vec<JoinHandle<()>>,
    node: NodeState,
    last_hosts: Vec<HostDoc>,
    /// The host ids `last_hosts` was read for (a leader decides only on a reading of all).
    last_hosts_read: Vec<String>,
    /// Host facts, gathered beside the loop.
    facts: Arc<facts::Facts>,
    /// The readiness checks, when running (they run beside the loop: a slow package query must
    /// not hold up heartbeats).
    readiness_task: Option<JoinHandle<()>>,
    /// Metrics and webhook events (one call per event).
    telemetry: Arc<telemetry::Telemetry>,
    /// Keeping this host's configuration for the rollback point, when running
    /// ([`prepared`]), and the rollback point (snapshot uuid) it was last reported for.
    prepared_task: Option<JoinHandle<()>>,
    prepared_for: Arc<std::sync::Mutex<Option<String>>>,
    /// Bound on each Elasticsearch request of the loop and of its write tasks ([`io_limit`]).
    io_limit: Duration,
    /// How long the loop sleeps when nothing wakes it (set by each round).
    poll: Duration,
    /// The hosts whose documents the watch reads: this one and the last operation's.
    watch_ids: Vec<String>,
    claims_read_at: Option<Duration>,
    /// When the watch reads next, and what it read last (rounds between reads decide on it).
    next_read_at: Duration,
    last_op: OpRead,
    last_own_version: Option<fleet::DocVersion>,
    /// The last acknowledgement a host document write landed with (its landing is logged once:
    /// `scripts/bench-scale` measures phase change -> acknowledgement from the journal).
    acked: Arc<std::sync::Mutex<Option<fleet::Ack>>>,
}

/// What must be true before the loop takes part in the protocol.
#[derive(Default)]
struct Started {
    /// The coordination index exists (Elasticsearch answered).
    index: bool,
    /// The first readiness report is in, or [`FIRST_READINESS_LIMIT`] passed: the first host
    /// document carries one (`plan` and `start` judge hosts by it).
    readiness: bool,
}

impl Daemon {
    async fn run(mut self) -> Result<()> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let mut inflight: Vec<JoinHandle<()>> = Vec::new();
        let mut cluster_tasks: Vec<JoinHandle<()>> = Vec::new();
        let mut pending: Vec<Event> = Vec::new();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut stopping = false;
        let mut last_status = String::new();
        let mut last_phase: Option<(String, fleet::Phase)> = None;
        let mut facts_rx = self.facts.subscribe();
        let refresher = self.facts.spawn_refresher(
            self.settings
                .coordination
                .heartbeat
                .min(Duration::from_secs(5)),
        );
        let mut started = Started::default();
        let first_readiness_by = boottime() + FIRST_READINESS_LIMIT;
        let mut index_retry = Duration::from_secs(1);
        let mut index_next_try = Duration::ZERO;
        // Facts were asked for after this instant and have not come in yet.
        let mut facts_asked: Option<Duration> = None;
        let mut watchdog_at: Option<Duration> = None;
        // The loop wakes at least this often to feed systemd's watchdog (half its period).
        let watchdog_every = sd_notify::watchdog_enabled()
            .map(|d| d / 2)
            .unwrap_or(Duration::MAX);
        let result = loop {
            // From the loop itself: a loop that hangs is restarted by systemd (WatchdogSec).
            if watchdog_at.is_none_or(|t| {
                boottime().saturating_sub(t) >= watchdog_every.min(Duration::from_secs(1))
            }) {
                notify(&[sd_notify::NotifyState::Watchdog]);
                watchdog_at = Some(boottime());
            }
            inflight.retain(|h| !h.is_finished());
            self.step_tasks.retain(|h| !h.is_finished());
            cluster_tasks.retain(|h| !h.is_finished());
            while let Ok(ev) = rx.try_recv() {
                pending.push(ev);
            }
            if stopping
                && self.step_tasks.is_empty()
                && cluster_tasks.is_empty()
                && pending.is_empty()
            {
                // Every round writes (a heartbeat at least), so waiting for no write in flight
                // could last for minutes on a busy host. The writes already sent (the acks of
                // the steps that just finished among them) get a bounded grace; a lost one is
                // re-reported from the progress record by the next process.
                let flush = futures_util::future::join_all(inflight.drain(..));
                if tokio::time::timeout(STOP_FLUSH, flush).await.is_err() {
                    tracing::warn!("stopping: writes still in flight after {STOP_FLUSH:?}, left to the next start");
                }
                tracing::info!("stopped");
                break Ok(());
            }
            let now = boottime();

            let readiness_done = self
                .readiness_task
                .as_ref()
                .is_some_and(|t| t.is_finished());
            if readiness_done {
                self.readiness_task = None;
                started.readiness = true;
            }
            if now >= first_readiness_by && !started.readiness {
                tracing::warn!("the first readiness checks took longer than {FIRST_READINESS_LIMIT:?}; registering without a report");
                started.readiness = true;
            }
            if self.readiness_task.is_none() && !stopping {
                if let Some(trigger) = self.host.readiness_due(now) {
                    tracing::debug!("readiness checks: {trigger}");
                    let host = self.host.clone();
                    let facts = self.facts.clone();
                    self.readiness_task = Some(tokio::spawn(async move {
                        host.refresh_readiness(trigger).await;
                        // The report is part of the facts: published before this task counts as
                        // finished, so the first host document carries it (and the publication
                        // wakes the loop).
                        facts.read_now().await;
                    }));
                }
            }

            if !started.index && now >= index_next_try {
                let coord = Coord::new(&self.es, &self.settings);
                match bounded(
                    self.io_limit,
                    "creating the coordination index",
                    coord.ensure_index(),
                )
                .await
                {
                    Ok(()) => {
                        started.index = true;
                        notify(&[sd_notify::NotifyState::Status("idle: no operation")]);
                    }
                    Err(e)
                        if e.is_unreachable()
                            || e.status().is_some_and(|s| s.is_server_error()) =>
                    {
                        tracing::warn!(
                            "Elasticsearch not reachable yet, retrying in {index_retry:?}: {e}"
                        );
                        notify(&[sd_notify::NotifyState::Status(&format!(
                            "waiting for Elasticsearch: {e}"
                        ))]);
                        index_next_try = now + index_retry;
                        index_retry = (index_retry * 2).min(Duration::from_secs(15));
                    }
                    Err(e) => {
                        break Err(anyhow::Error::new(e).context(format!(
                            "creating the coordination index {}",
                            self.settings.coordination.index
                        )))
                    }
                }
            }
            let facts = facts_rx.borrow_and_update().clone();
            if let (true, true, Some(facts)) = (started.index, started.readiness, facts) {
                let answered = facts_asked.is_some_and(|t| facts.read_at >= t);
                if answered {
                    facts_asked = None;
                }
                // Read when the poll is due, and on every wake while an operation runs; an idle
                // agent woken by a write's result or the watchdog decides on what it last read.
                let read = now >= self.next_read_at || self.poll == fleet::READ_ACTIVE;
                if read || answered || !pending.is_empty() {
                    let events = std::mem::take(&mut pending);
                    self.round(
                        read,
                        facts,
                        events,
                        &mut last_phase,
                        &mut last_status,
                        &mut inflight,
                        &mut cluster_tasks,
                        &tx,
                        stopping,
                    )
                    .await;
                }
                // A probe waits for facts read after it was seen: one request at a time.
                if self.node.wants_fresh_facts() && facts_asked.is_none() {
                    let at = boottime();
                    self.facts.want_after(at);
                    facts_asked = Some(at);
                }
            }

            tokio::select! {
                ev = rx.recv() => if let Some(ev) = ev { pending.push(ev) },
                r = facts_rx.changed(), if facts_asked.is_some() || !started.readiness => {
                    let _ = r;
                }
                _ = tokio::time::sleep(self.poll_interval(&started).min(watchdog_every)) => {}
                _ = term.recv(), if !stopping => {
                    tracing::info!("SIGTERM: finishing running steps, starting no new ones");
                    notify(&[sd_notify::NotifyState::Stopping]);
                    stopping = true;
                    if !started.index {
                        break Ok(());
                    }
                }
            }
        };
        refresher.abort();
        result
    }

    /// How long the loop sleeps when nothing wakes it.
    fn poll_interval(&self, started: &Started) -> Duration {
        if !started.index || !started.readiness {
            // Waiting for Elasticsearch (retries are timed by `index_next_try`) or for the first
            // readiness report (its end wakes the loop).
            return POLL_UNREADABLE;
        }
        self.next_read_at.saturating_sub(boottime())
    }

    /// A rollback point this host has not reported on yet: keep its configuration beside the
    /// loop ([`prepared`]).
    fn observe_rollback_point(&mut self, point: crate::rollback_point::RollbackPoint) {
        use crate::rollback_point::{recency, PointSeen, Recency};
        match recency(&point, self.point_seen.as_ref()) {
            Recency::Seen => {}
            Recency::Newer => {
                let seen = PointSeen::of(&point);
                if let Err(e) = self.point_seen_file.store(&seen) {
                    tracing::error!(path = %self.point_seen_file.path().display(), "cannot record the rollback point trusted: {e}");
                }
                self.point_seen = Some(seen);
                self.point_replayed = None;
            }
            Recency::Replayed(why) => {
                if self.point_replayed.as_deref() != Some(point.snapshot.uuid.as_str()) {
                    tracing::error!("the stored rollback point is refused: {why}; not used (run `kibana-rollback prepare` again)");
                    self.point_replayed = Some(point.snapshot.uuid.clone());
                }
                return;
            }
        }
        self.host.use_rollback_point_target(&point.kibana_version);
        let uuid = point.snapshot.uuid.clone();
        if self.prepared_for.lock().expect("prepared lock").as_deref() == Some(uuid.as_str()) {
            return;
        }
        if self
            .prepared_task
            .as_ref()
            .is_some_and(|t| !t.is_finished())
        {
            return;
        }
        let (host, es, settings) = (self.host.clone(), self.es.clone(), self.settings.clone());
        let done = self.prepared_for.clone();
        self.prepared_task = Some(tokio::spawn(async move {
            match prepared::keep(host, es, settings, point).await {
                Ok(()) => *done.lock().expect("prepared lock") = Some(uuid),
                Err(e) => tracing::warn!("rollback point: {e}; trying again"),
            }
        }));
    }

    /// One round of the protocol: read the operation and the host documents, ask `step`, start
    /// what it says.
    #[allow(clippy::too_many_arguments)]
    async fn round(
        &mut self,
        read: bool,
        facts: fleet::HostFacts,
        events: Vec<Event>,
        last_phase: &mut Option<(String, fleet::Phase)>,
        last_status: &mut String,
        inflight: &mut Vec<JoinHandle<()>>,
        cluster_tasks: &mut Vec<JoinHandle<()>>,
        tx: &mpsc::UnboundedSender<Event>,
        stopping: bool,
    ) {
        let es = self.es.clone();
        let settings = self.settings.clone();
        let coord = Coord::new(&es, &settings);
        // One realtime `_mget` for the operation and the host documents this agent looks at
        // (its own; a leader's also those of the operation it last saw); a second only when a
        // leader's operation names hosts the first did not ask for.
        let own = self.settings.coordination.host_id.clone();
        let mut asked = self.watch_ids.clone();
        let watched = if read {
            bounded(
                self.io_limit,
                "reading the operation and host documents",
                coord.watch(&asked),
            )
            .await
        } else {
            Err(EsError::Check("not read this round".into()))
        };
        let mut ping = None;
        let (op, mut hosts) = match watched {
            _ if !read => (self.last_op.clone(), None),
            Ok(w) => {
                ping = w.ping;
                if let Ok(Some(point)) = w.rollback_point {
                    self.observe_rollback_point(point);
                }
                let op = match w.operation {
                    Ok(Some(v)) => OpRead::Found(v),
                    Ok(None) => OpRead::Missing,
                    Err(e @ (EsError::NewerFormat { .. } | EsError::Untrusted { .. })) => {
                        tracing::error!("{e}");
                        OpRead::Unsupported(e.to_string())
                    }
                    Err(e) => {
                        tracing::warn!("cannot read the operation document: {e}");
                        OpRead::Unreadable
                    }
                };
                (op, Some(w.hosts))
            }
            Err(e) => {
                tracing::warn!("cannot read the operation and host documents: {e}");
                (OpRead::Unreadable, None)
            }
        };
        if read {
            self.telemetry.operation_read(&op, &self.es, &self.settings);
            match &op {
                OpRead::Found(v) => self.facts.set_operation_running(!v.doc.phase.is_terminal()),
                OpRead::Missing => self.facts.set_operation_running(false),
                OpRead::Unreadable | OpRead::Unsupported(_) => {}
            }
            self.last_op = op.clone();
        }
        let mut ids: BTreeSet<String> = BTreeSet::new();
        ids.insert(own.clone());
        let wants_every_host = self.node.wants_every_host();
        if let OpRead::Found(v) = &op {
            if wants_every_host {
                ids.extend(v.doc.expected_hosts.iter().cloned());
            }
            let now_phase = (v.doc.id.clone(), v.doc.phase);
            if last_phase.as_ref() != Some(&now_phase) {
                tracing::info!(operation_id = %v.doc.id, phase = %v.doc.phase.as_str(), epoch = v.doc.epoch, "operation {} is in phase {}", v.doc.id, v.doc.phase.as_str());
                *last_phase = Some(now_phase);
            }
        }
        if !matches!(op, OpRead::Unreadable) {
            self.watch_ids = ids.iter().cloned().collect();
        }
        if hosts.is_some() && !ids.iter().all(|h| asked.contains(h)) {
            asked = ids.into_iter().collect();
            hosts = match bounded(
                self.io_limit,
                "reading the host documents",
                coord.hosts_versioned(&asked),
            )
            .await
            {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!("cannot read host documents: {e}");
                    None
                }
            };
        }
        // Not read this round: the last reading stands (the node tracks its own writes).
        let mut own_version = self.last_own_version;
        if let Some(h) = hosts {
            own_version = h.iter().find(|v| v.doc.host_id == own).map(|v| v.version());
            self.last_own_version = own_version;
            self.last_hosts = h.into_iter().map(|v| v.doc).collect();
            self.last_hosts_read = asked.clone();
        }
        let every_host = match &op {
            OpRead::Found(v) => v
                .doc
                .expected_hosts
                .iter()
                .all(|h| self.last_hosts_read.contains(h)),
            _ => true,
        };
        let op_id = match &op {
            OpRead::Found(v) => Some(v.doc.id.clone()),
            _ => None,
        };

        // Read only by a leader about to take a restore-side step.
        // A search: at most once per CLAIMS_EVERY, however fast the rounds.
        let claims_due = self
            .claims_read_at
            .is_none_or(|t| boottime().saturating_sub(t) >= CLAIMS_EVERY);
        let claims = if self.node.wants_claims() && claims_due {
            self.claims_read_at = Some(boottime());
            match bounded(self.io_limit, "reading the claim documents", coord.claims()).await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!("cannot read claim documents: {e}");
                    None
                }
            }
        } else {
            None
        };
        let actions = fleet::step(
            &mut self.node,
            Inputs {
                now: boottime(),
                wall: wall_now(),
                op,
                hosts: self.last_hosts.clone(),
                every_host,
                own_version,
                facts,
                events,
                claims,
                ping,
            },
        );
        // The pace of the next reads, from what the node now waits on (`self.last_op` is this
        // round's reading). Shorter than the wait already set: the sooner wins.
        let poll = self
            .node
            .read_every(&self.last_op, self.settings.coordination.heartbeat);
        self.next_read_at = if read {
            boottime() + poll
        } else {
            self.next_read_at.min(boottime() + poll)
        };
        self.poll = poll;
        self.telemetry.leading(self.node.leading_epoch());
        // A write of the operation sent while not leading is a takeover.
        let takeover = self.node.leading_epoch().is_none();
        for action in actions {
            match action {
                Action::RecordProgress(p) => {
                    // Durable before the step it announces: a crash after this resumes it.
                    if let Err(e) = self.progress.store(&p) {
                        tracing::error!(path = %self.progress.path().display(), "cannot record progress: {e}");
                    }
                }
                Action::RecordRevision(seen) => {
                    if let Err(e) = self.revisions.store(&seen) {
                        tracing::error!(path = %self.revisions.path().display(), "cannot record the revision seen: {e}");
                    }
                }
                Action::Wait { what } => {
                    if what != *last_status {
                        tracing::debug!(
                            operation_id = op_id.as_deref().unwrap_or(""),
                            "waiting: {what}"
                        );
                        notify(&[sd_notify::NotifyState::Status(&what)]);
                        *last_status = what;
                    }
                }
                Action::Refused { why } => {
                    // Logged at warn (once per change): the agent does nothing until an
                    // operator fixes it, so the journal must say why.
                    if why != *last_status {
                        tracing::warn!("{why}");
                        notify(&[sd_notify::NotifyState::Status(&why)]);
                        *last_status = why;
                    }
                }
                Action::StopActing { reason } => {
                    self.telemetry.lease_lost();
                    tracing::warn!(
                        operation_id = op_id.as_deref().unwrap_or(""),
                        "no longer leader: {reason}"
                    );
                    for h in cluster_tasks.drain(..) {
                        h.abort();
                    }
                }
                Action::RunHostStep { id, step, resumed } if !stopping => {
                    tracing::info!(operation_id = op_id.as_deref().unwrap_or(""), step = ?step.kind(), resumed, "running host step {step:?}");
                    let host = self.host.clone();
                    let facts = self.facts.clone();
                    let tx = tx.clone();
                    let op_id = op_id.clone().unwrap_or_default();
                    let telemetry = self.telemetry.clone();
                    telemetry.host_step_started(&op_id, step.kind());
                    self.step_tasks.push(tokio::spawn(async move {
                        let (ptx, mut prx) = mpsc::unbounded_channel::<String>();
                        let forward = {
                            let tx = tx.clone();
                            tokio::spawn(async move {
                                while let Some(detail) = prx.recv().await {
                                    let _ = tx.send(Event::HostStepProgress { id, detail });
                                }
                            })
                        };
                        let (result, detail) = host.run_reporting(&op_id, &step, resumed, &ptx).await;
                        drop(ptx);
                        let _ = forward.await;
                        telemetry.host_step_finished(&op_id, step.kind(), &result);
                        tracing::info!(operation_id = %op_id, step = ?step.kind(), result = ?result, "host step finished: {detail}");
                        // The round that learns of the step sees facts read after it.
                        facts.read_now().await;
                        let _ = tx.send(Event::HostStepDone { id, result, detail });
                    }));
                }
                Action::RunClusterStep { id, step } if !stopping => {
                    tracing::info!(operation_id = op_id.as_deref().unwrap_or(""), step = ?step.kind(), "running cluster step");
                    let cluster = self.cluster.clone();
                    let tx = tx.clone();
                    let op_id = op_id.clone().unwrap_or_default();
                    cluster_tasks.push(tokio::spawn(async move {
                        let outcome = cluster.run(&step, boottime).await;
                        tracing::info!(operation_id = %op_id, step = ?step.kind(), "cluster step finished: {outcome:?}");
                        let _ = tx.send(Event::Cluster { id, outcome });
                    }));
                }
                Action::RunHostStep { .. } | Action::RunClusterStep { .. } => {
                    // Stopping: start nothing new; the next agent process resumes.
                }
                // Listed, not `other`: a new kind of action fails to compile here instead of
                // reaching spawn_write.
                write @ (Action::CasWriteOperation { .. }
                | Action::ArchiveHistory { .. }
                | Action::DeleteOperation { .. }
                | Action::WriteHostDoc { .. }
                | Action::WriteClaim { .. }) => {
                    inflight.push(self.spawn_write(write, op_id.clone(), takeover, tx.clone()))
                }
            }
        }
    }

    /// Document writes run as tasks too: a slow Elasticsearch must not stall the loop.
    fn spawn_write(
        &self,
        action: Action,
        op_id: Option<String>,
        takeover: bool,
        tx: mpsc::UnboundedSender<Event>,
    ) -> JoinHandle<()> {
        let es = self.es.clone();
        let telemetry = self.telemetry.clone();
        let settings = self.settings.clone();
        let limit = self.io_limit;
        let acked = self.acked.clone();
        tokio::spawn(async move {
            let coord = Coord::new(&es, &settings);
            let op_id = op_id.unwrap_or_default();
            let ev = match action {
                Action::CasWriteOperation {
                    id,
                    expected,
                    doc,
                    why,
                } => {
                    let r = write_result(
                        bounded(
                            limit,
                            "writing the operation",
                            coord.cas_operation(&doc, expected),
                        )
                        .await,
                    );
                    telemetry.operation_written(&doc, takeover, &r);
                    if matches!(r, WriteResult::Ok(_)) {
                        tracing::info!(operation_id = %doc.id, phase = %doc.phase.as_str(), epoch = doc.epoch, "operation updated: {why}");
                    } else {
                        tracing::debug!(operation_id = %doc.id, "operation write not applied ({why}): {r:?}");
                    }
                    Event::OpWritten { id, result: r }
                }
                Action::ArchiveHistory { id, doc } => {
                    let r = bounded(limit, "archiving the operation", coord.archive(&doc)).await;
                    if let Err(e) = &r {
                        tracing::warn!(operation_id = %doc.id, "archiving failed: {e}");
                    } else {
                        tracing::info!(operation_id = %doc.id, phase = %doc.phase.as_str(), "operation archived as history");
                    }
                    Event::Archived { id, ok: r.is_ok() }
                }
                Action::DeleteOperation { id, expected } => {
                    let r = match bounded(
                        limit,
                        "deleting the operation",
                        coord.delete_operation(expected),
                    )
                    .await
                    {
                        Ok(()) => WriteResult::Ok(expected),
                        Err(e) if e.is_conflict() || e.is_not_found() => WriteResult::Conflict,
                        Err(e) => WriteResult::Unknown(e.to_string()),
                    };
                    if matches!(r, WriteResult::Ok(_)) {
                        tracing::info!(operation_id = %op_id, "operation finished; lock released");
                    }
                    Event::Deleted { id, result: r }
                }
                Action::WriteHostDoc { id, doc, expected } => {
                    let r = write_result(
                        bounded(
                            limit,
                            "writing the host document",
                            coord.write_host(&doc, expected),
                        )
                        .await,
                    );
                    telemetry.host_doc_written(&doc, &r);
                    if let (WriteResult::Ok(_), Some(ack)) = (&r, &doc.ack) {
                        let mut last = acked.lock().unwrap_or_else(|e| e.into_inner());
                        if ack.result != fleet::StepResult::InProgress && last.as_ref() != Some(ack)
                        {
                            tracing::info!(operation_id = %ack.operation_id, step = ?ack.step, epoch = ack.epoch, "acknowledged {:?}: {:?}", ack.step, ack.result);
                            *last = Some(ack.clone());
                        }
                    }
                    if let WriteResult::Unknown(e) = &r {
                        tracing::warn!("writing the host document failed: {e}");
                    }
                    Event::HostDocWritten { id, result: r }
                }
                Action::WriteClaim { id, doc } => {
                    if let Err(e) = bounded(limit, "writing a claim", coord.write_claim(&doc)).await
                    {
                        tracing::warn!("writing the claim document failed: {e}");
                    }
                    // The owner of the host id, if alive, answers with a heartbeat.
                    let by = format!("claim@{}", doc.machine);
                    if let Err(e) = bounded(limit, "pinging the agents", coord.ping(&by)).await {
                        tracing::warn!("writing the ping document failed: {e}");
                    }
                    Event::ClaimWritten { id }
                }
                // The round passes only the writes its arm lists.
                other => unreachable!("not a write: {other:?}"),
            };
            let _ = tx.send(ev);
        })
    }
}
