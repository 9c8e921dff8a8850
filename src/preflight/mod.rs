//! The preflight checks: the one implementation of everything that must hold before a rollback
//! may stop anything, and before `prepare` may record the fleet's rollback point. `plan` runs them read-only and prints them, `start` runs them before it
//! writes the operation, and the leader runs them in the `preflight` phase against the operation
//! it leads; `prepare` runs them for the fleet as it is (its one Kibana version, a writable
//! repository) before it takes the rollback point. All get the same list, in the same order, each check with its status and the
//! evidence it was decided on; a check a caller does not run is listed as skipped with the reason,
//! so the three can never silently disagree about what was checked.
//!
//! * [`snapshot`] resolves and judges the snapshot (`latest`, a name, or the one an operation
//!   pinned by uuid);
//! * [`privileges`] asks `_has_privileges` for exactly what the operation needs;
//! * [`hosts`] judges the readiness reports the agents publish in their host documents;
//! * [`liveness`] watches the agents' heartbeat counters (host documents carry no wall time);
//! * [`discard`] says what a restore would delete (for `plan`).

pub mod discard;
pub mod hosts;
pub mod liveness;
pub mod privileges;
pub mod snapshot;

use semver::Version;
use serde::Serialize;

use crate::compat;
use crate::config::{check_coordination_index, Settings, SnapshotSelector};
use crate::coord::Coord;
use crate::es::{Es, EsError, NodeInfo, KIBANA_FEATURE};
use crate::exit;
use crate::fleet::{HostDoc, OperationDoc, SnapshotRef, Versioned};
use crate::snapshots;

pub use snapshot::Resolved;

/// Every preflight check, in the order they are run and reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckId {
    TargetVersion,
    CoordinationIndex,
    ElasticsearchReachable,
    Privileges,
    NodesCompatible,
    KibanaFeature,
    NoOperationRunning,
    ExpectedHostsRegistered,
    HostsReady,
    KibanaClients,
    Snapshot,
    AgentsAlive,
    FleetVersion,
    RepositoryWritable,
}

impl CheckId {
    /// How `plan` names the check.
    pub fn title(self) -> &'static str {
        match self {
            CheckId::TargetVersion => "target version",
            CheckId::CoordinationIndex => "coordination index name",
            CheckId::ElasticsearchReachable => "elasticsearch reachable",
            CheckId::Privileges => "privileges",
            CheckId::NodesCompatible => "nodes compatible with target",
            CheckId::KibanaFeature => "kibana feature",
            CheckId::Snapshot => "snapshot",
            CheckId::NoOperationRunning => "no operation running",
            CheckId::ExpectedHostsRegistered => "expected hosts registered",
            CheckId::HostsReady => "hosts ready (their readiness reports)",
            CheckId::KibanaClients => "kibana clients",
            CheckId::AgentsAlive => "agents alive (heartbeats)",
            CheckId::FleetVersion => "one Kibana version across the fleet",
            CheckId::RepositoryWritable => "snapshot repository writable",
        }
    }

    /// The exit code of a refusal by this check (README "Exit codes").
    fn refusal_code(self) -> u8 {
        match self {
            CheckId::TargetVersion => exit::CONFIG,
            CheckId::ElasticsearchReachable => exit::UNAVAILABLE,
            CheckId::Privileges => exit::NOPERM,
            CheckId::NoOperationRunning => exit::TEMPFAIL,
            _ => exit::FAILED,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Fail,
    Skipped,
}

/// One check's verdict and the evidence behind it.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub id: CheckId,
    /// [`CheckId::title`], for output.
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
    pub warnings: Vec<String>,
    /// The exit code `start` refuses with when this check fails.
    #[serde(skip)]
    pub exit_code: u8,
}

/// The checks of one preflight run, in order.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct Checks(pub Vec<Check>);

impl Checks {
    fn push(&mut self, id: CheckId, status: Status, detail: impl Into<String>) -> &mut Check {
        self.0.push(Check {
            id,
            check: id.title(),
            status,
            detail: detail.into(),
            warnings: vec![],
            exit_code: id.refusal_code(),
        });
        self.0.last_mut().expect("just pushed")
    }
    fn ok(&mut self, id: CheckId, detail: impl Into<String>) -> &mut Check {
        self.push(id, Status::Ok, detail)
    }
    fn fail(&mut self, id: CheckId, detail: impl Into<String>) -> &mut Check {
        self.push(id, Status::Fail, detail)
    }
    /// A failure caused by Elasticsearch's answer: the exit code follows the error (401/403 is
    /// 77, unreachable 69), not the check.
    fn fail_es(&mut self, id: CheckId, detail: impl Into<String>, e: &EsError) -> &mut Check {
        let c = self.fail(id, detail);
        if e.is_auth() {
            c.exit_code = exit::NOPERM;
        } else if e.is_unreachable() {
            c.exit_code = exit::UNAVAILABLE;
        }
        c
    }
    fn skip(&mut self, id: CheckId, why: impl Into<String>) {
        self.push(id, Status::Skipped, why);
    }

    /// Every check that was run passed (skipped ones do not count against it).
    pub fn passed(&self) -> bool {
        self.0.iter().all(|c| c.status != Status::Fail)
    }

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.0.iter().filter(|c| c.status == Status::Fail)
    }

    pub fn get(&self, id: CheckId) -> Option<&Check> {
        self.0.iter().find(|c| c.id == id)
    }

    /// Every warning, prefixed with its check.
    pub fn warnings(&self) -> Vec<String> {
        self.0
            .iter()
            .flat_map(|c| c.warnings.iter().map(move |w| format!("{}: {w}", c.check)))
            .collect()
    }
}

/// Who runs the preflight, which decides what it is asked about and what it can skip.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// `plan`: every check, including the liveness watch (which takes up to two heartbeats).
    Plan,
    /// `start`, before it writes the operation: every check but the liveness watch.
    Start,
    /// The leader, in the `preflight` phase of its operation: the target, the snapshot (pinned by
    /// uuid) and the hosts are the operation's; that the operation runs is no refusal.
    Leader {
        target: &'a Version,
        snapshot: &'a SnapshotRef,
        expected: &'a [String],
        /// The operator accepted a snapshot that cannot be judged (`--accept-unjudged-snapshot`).
        accepted_unjudged: bool,
    },
    /// `prepare`, before it takes the rollback point: no target is asked for — the fleet's own
    /// version (every host the same) is checked against every node; the repository must be
    /// writable; the liveness watch runs as for `plan`. Nothing is judged for a rollback
    /// (readiness, Kibana clients, an eligible snapshot): that is `plan`'s and `start`'s.
    Prepare,
}

/// What the operator asks for (`plan`/`start`); the leader's comes from its operation.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub target: Option<&'a Version>,
    /// Where the target came from, for the report (`--to`, `rollback.target_version`).
    pub target_from: &'a str,
    pub snapshot: &'a SnapshotSelector,
    /// `--accept-unjudged-snapshot`: a named snapshot whose timing cannot be judged is taken.
    pub accept_unjudged: bool,
}

/// The checks and what they found, for the caller to act on or print.
#[derive(Debug, Default)]
pub struct Report {
    pub checks: Checks,
    pub target: Option<Version>,
    /// Node versions as the first reachable Elasticsearch host reported them.
    pub nodes: Option<Vec<NodeInfo>>,
    pub compat: Option<compat::Report>,
    pub snapshot: Option<Resolved>,
    /// The operation found running (plan/start).
    pub running: Option<Versioned<OperationDoc>>,
    pub expected: Vec<String>,
    /// Where the expected hosts came from (`coordination.expected_hosts`, registered agents, the operation).
    pub expected_from: &'static str,
    /// Each expected host with its document, if registered.
    pub hosts: Vec<(String, Option<HostDoc>)>,
    /// When the upgrade began, as the evidence bounds it (once the snapshot was judged).
    pub window: Option<snapshots::UpgradeWindow>,
    /// Each expected host: `Some(true)` heartbeat moved, `Some(false)` did not, `None` not watched.
    pub alive: Vec<(String, Option<bool>)>,
    /// The one Kibana version every expected host runs (`prepare`).
    pub fleet_version: Option<Version>,
}

impl Report {
    /// The refusal `start` exits with: the first failed check's detail (and exit code), naming
    /// the others that failed too.
    pub fn refusal(&self) -> Option<anyhow::Error> {
        let mut failed = self.checks.failures();
        let first = failed.next()?;
        let rest: Vec<&str> = failed.map(|c| c.check).collect();
        let mut msg = first.detail.clone();
        if !rest.is_empty() {
            msg.push_str(&format!(
                " (also failed: {}; `kibana-rollback plan` shows every check)",
                rest.join(", ")
            ));
        }
        Some(exit::coded(first.exit_code, msg))
    }

    /// The leader's form: one problem per line, each naming its check.
    pub fn problems(&self) -> Result<(), String> {
        let lines: Vec<String> = self
            .checks
            .failures()
            .map(|c| format!("{}: {}", c.check, c.detail))
            .collect();
        if lines.is_empty() {
            Ok(())
        } else {
            Err(lines.join("\n"))
        }
    }

    pub fn alive(&self, host: &str) -> Option<bool> {
        self.alive
            .iter()
            .find(|(h, _)| h == host)
            .and_then(|(_, v)| *v)
    }
}

/// Runs every check for `scope`. `request` is the operator's (ignored for the leader, whose
/// request is its operation). Never fails: what cannot be asked is a failed check.
pub async fn run(es: &Es, settings: &Settings, scope: Scope<'_>, request: Request<'_>) -> Report {
    let mut r = Report::default();
    let c = &mut r.checks;

    // Local: what the request is.
    let target = match scope {
        Scope::Prepare => {
            c.skip(
                CheckId::TargetVersion,
                "prepare records the version the fleet runs (checked below)",
            );
            None
        }
        Scope::Leader { target, .. } => {
            c.ok(
                CheckId::TargetVersion,
                format!("Kibana {target} (the operation's)"),
            );
            Some(target.clone())
        }
        _ => {
            let allowed = settings.rollback.allowed_targets.as_ref();
            match request.target {
                Some(t) if allowed.is_some_and(|a| !a.contains(t)) => {
                    let refused = c.fail(
                    CheckId::TargetVersion,
                    format!(
                        "Kibana {t} ({}) is not in rollback.allowed_targets ({}): the agents would take no step for it; add it there on every host",
                        request.target_from,
                        allowed
                            .expect("checked")
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                    refused.exit_code = exit::FAILED;
                    refused
                }
                Some(t) => c.ok(
                    CheckId::TargetVersion,
                    format!("Kibana {t} ({})", request.target_from),
                ),
                None => c.fail(
                    CheckId::TargetVersion,
                    "no target version: pass --to VERSION or set rollback.target_version in the configuration",
                ),
            };
            request.target.cloned()
        }
    };
    r.target = target.clone();
    let index = &settings.coordination.index;
    let check = match check_coordination_index(index) {
        Ok(()) => c.ok(
            CheckId::CoordinationIndex,
            format!(
                "{index} is outside the kibana feature state; documents {}",
                if settings.coordination.fleet_keys.is_some() {
                    "signed with the fleet key"
                } else {
                    "unsigned"
                }
            ),
        ),
        Err(e) => c.fail(CheckId::CoordinationIndex, format!("{index}: {e}")),
    };
    if settings.coordination.fleet_keys.is_none() {
        check.warnings.push(format!(
            "no fleet key (coordination.fleet_key_file): anyone who can write {index} is obeyed by every agent, as root"
        ));
    }

    // Reachability, host by host, so the operator sees which endpoint answers.
    r.nodes = reachability(settings, c).await;
    let Some(nodes) = r.nodes.clone() else {
        for id in [
            CheckId::Privileges,
            CheckId::NodesCompatible,
            CheckId::KibanaFeature,
            CheckId::NoOperationRunning,
            CheckId::ExpectedHostsRegistered,
            CheckId::HostsReady,
            CheckId::KibanaClients,
            CheckId::Snapshot,
            CheckId::AgentsAlive,
            CheckId::FleetVersion,
            CheckId::RepositoryWritable,
        ] {
            c.skip(id, "Elasticsearch not reachable");
        }
        return r;
    };

    // What the credentials may do, before anything is stopped.
    let versions: Vec<Version> = nodes
        .iter()
        .filter_map(|n| compat::coerce(&n.version))
        .collect();
    // A host coordination.leaders leaves out never snapshots or restores.
    let role = if crate::fleet::policy::may_lead(
        &settings.coordination.host_id,
        &crate::coord::local_policy(settings),
    ) {
        privileges::Role::Leader
    } else {
        privileges::Role::Follower
    };
    match es
        .has_privileges(&privileges::request(index, &versions, role))
        .await
    {
        Ok(None) => {
            c.ok(
                CheckId::Privileges,
                "Elasticsearch runs without security: every request is allowed",
            );
        }
        Ok(Some(answer)) => match privileges::judge(&answer, role) {
            Ok(v) if v.missing.is_empty() => {
                c.ok(
                    CheckId::Privileges,
                    match role {
                        privileges::Role::Leader => {
                            format!("{} holds every privilege the rollback needs", v.username)
                        }
                        privileges::Role::Follower => format!(
                            "{} holds every privilege this host needs (coordination.leaders leaves it out: it never snapshots or restores)",
                            v.username
                        ),
                    },
                );
            }
            Ok(v) => {
                c.fail(
                    CheckId::Privileges,
                    format!(
                        "{} lacks {}: grant them (README \"Elasticsearch role\" has the role descriptor; `manage` is the only privilege that allows a restore)",
                        v.username,
                        v.missing.join(", ")
                    ),
                );
            }
            Err(e) => {
                c.fail(
                    CheckId::Privileges,
                    format!("unexpected _has_privileges answer: {e}"),
                )
                .exit_code = exit::SOFTWARE;
            }
        },
        Err(e) => {
            c.fail_es(
                CheckId::Privileges,
                format!("asking _security/user/_has_privileges: {e}"),
                &e,
            );
        }
    }

    // Kibana's compatibility rule against every node (prepare: the fleet's version, below).
    match &target {
        Some(t) => nodes_compatible(&mut r, t, &nodes),
        None if matches!(scope, Scope::Prepare) => {}
        None => r.checks.skip(CheckId::NodesCompatible, "no target version"),
    }
    let c = &mut r.checks;

    // The restore needs the feature installed on the master.
    match es.features().await {
        Ok(f) if f.iter().any(|n| n == KIBANA_FEATURE) => {
            c.ok(CheckId::KibanaFeature, "_features lists kibana")
        }
        Ok(f) => c.fail(
            CheckId::KibanaFeature,
            format!(
                "_features does not list kibana (has: {}): this cluster cannot snapshot or restore Kibana's state",
                f.join(", ")
            ),
        ),
        Err(e) => c.fail_es(CheckId::KibanaFeature, format!("GET _features: {e}"), &e),
    };

    let coord = Coord::new(es, settings);
    match scope {
        Scope::Leader { .. } => c.skip(CheckId::NoOperationRunning, "the leader's own operation"),
        _ => match coord.operation().await {
            Ok(None) => {
                c.ok(
                    CheckId::NoOperationRunning,
                    format!("no operation document in {index}"),
                );
            }
            Ok(Some(v)) => {
                c.fail(
                    CheckId::NoOperationRunning,
                    crate::fleet::running_message(&v.doc),
                );
                r.running = Some(v);
            }
            Err(e) => {
                c.fail_es(
                    CheckId::NoOperationRunning,
                    format!("reading {index}: {e}"),
                    &e,
                );
            }
        },
    }

    // The hosts: each expected one registered by its agent, and (plan) alive.
    let expected = match scope {
        Scope::Leader { expected, .. } => Ok((expected.to_vec(), "the operation")),
        _ => {
            coord
                .expected_hosts(&settings.coordination.expected_hosts)
                .await
        }
    };
    match expected {
        Ok((ids, from)) => {
            r.expected = ids;
            r.expected_from = from;
        }
        Err(e) => {
            c.fail_es(
                CheckId::ExpectedHostsRegistered,
                format!("listing registered hosts in {index}: {e}"),
                &e,
            );
        }
    }
    if c.get(CheckId::ExpectedHostsRegistered).is_none() {
        registration(&coord, &mut r).await;
    }
    if let Scope::Prepare = scope {
        return prepare_checks(es, settings, &coord, r, &nodes).await;
    }
    r.checks.skip(
        CheckId::FleetVersion,
        "only `prepare` records the fleet's version",
    );
    match scope {
        Scope::Leader { .. } => r.checks.skip(
            CheckId::HostsReady,
            "every host's check_available step runs its readiness checks fresh for the operation's target",
        ),
        _ => hosts::check(&mut r, target.as_ref()),
    }
    kibana_clients(es, settings, &mut r).await;
    snapshot_check(es, settings, &mut r, scope, request).await;
    r.checks.skip(
        CheckId::RepositoryWritable,
        "the snapshot check reads the repository; `prepare` verifies it can be written",
    );
    match scope {
        Scope::Prepare => unreachable!("handled above"),
        Scope::Plan => {
            liveness::check(&coord, &settings.coordination, &mut r).await
        }
        Scope::Start => r.checks.skip(
            CheckId::AgentsAlive,
            "not watched by start (it pings the agents and waits up to two of their watches): `kibana-rollback plan` watches them",
        ),
        Scope::Leader { .. } => r.checks.skip(
            CheckId::AgentsAlive,
            "the phase timeout names hosts that do not answer",
        ),
    }
    r
}

fn nodes_compatible(r: &mut Report, target: &Version, nodes: &[NodeInfo]) {
    let report = compat::Report::new(target, nodes);
    let check = match report.refusal() {
        None => r.checks.ok(CheckId::NodesCompatible, report.summary()),
        Some(refusal) => r.checks.fail(CheckId::NodesCompatible, refusal),
    };
    check.warnings = report.warnings();
    r.compat = Some(report);
}

/// The one Kibana version the registered expected hosts run: `Err` names every host with its
/// version (or none installed) when they differ.
pub fn fleet_version(hosts: &[(String, Option<HostDoc>)]) -> Result<Version, String> {
    let registered: Vec<(&String, &HostDoc)> = hosts
        .iter()
        .filter_map(|(h, d)| Some((h, d.as_ref()?)))
        .collect();
    let none: Vec<&str> = registered
        .iter()
        .filter(|(_, d)| d.installed_version.is_none())
        .map(|(h, _)| h.as_str())
        .collect();
    if !none.is_empty() {
        return Err(format!(
            "no Kibana package installed on {} (as its agent reports): install it, or take the host out of the fleet",
            none.join(", ")
        ));
    }
    let mut versions: Vec<&Version> = registered
        .iter()
        .filter_map(|(_, d)| d.installed_version.as_ref())
        .collect();
    versions.sort();
    versions.dedup();
    match versions.as_slice() {
        [] => Err("no registered host to read a Kibana version from".into()),
        [one] => Ok((*one).clone()),
        _ => Err(format!(
            "the fleet runs more than one Kibana version ({}): a rollback point is one version's state; \
             finish the upgrade on every host or bring every host back to one version, then prepare again",
            registered
                .iter()
                .map(|(h, d)| format!(
                    "{h} {}",
                    d.installed_version.as_ref().expect("checked above")
                ))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// `prepare`'s part after the hosts are read: one version across the fleet, every node
/// compatible with it, the repository writable, the agents alive.
async fn prepare_checks(
    es: &Es,
    settings: &Settings,
    coord: &Coord<'_>,
    mut r: Report,
    nodes: &[NodeInfo],
) -> Report {
    let registered = r
        .checks
        .get(CheckId::ExpectedHostsRegistered)
        .map(|c| c.status);
    match registered {
        Some(Status::Ok) => match fleet_version(&r.hosts) {
            Ok(v) => {
                r.checks.ok(
                    CheckId::FleetVersion,
                    format!("Kibana {v} on {}", r.expected.join(", ")),
                );
                nodes_compatible(&mut r, &v, nodes);
                r.fleet_version = Some(v);
            }
            Err(why) => {
                r.checks.fail(CheckId::FleetVersion, why);
                r.checks
                    .skip(CheckId::NodesCompatible, "no single fleet version");
            }
        },
        _ => {
            r.checks.skip(
                CheckId::FleetVersion,
                "not every expected host is registered",
            );
            r.checks.skip(CheckId::NodesCompatible, "no fleet version");
        }
    }
    for (id, why) in [
        (
            CheckId::HostsReady,
            "readiness is judged for a rollback's target (`plan`)",
        ),
        (
            CheckId::KibanaClients,
            "the fleet's Kibanas keep running while prepare takes its snapshot",
        ),
        (
            CheckId::Snapshot,
            "prepare takes its own snapshot of the kibana feature state",
        ),
    ] {
        r.checks.skip(id, why);
    }
    match &settings.rollback.repository {
        None => {
            r.checks
                .fail(
                    CheckId::RepositoryWritable,
                    "no snapshot repository: set rollback.repository in the configuration",
                )
                .exit_code = exit::CONFIG;
        }
        Some(repo) => match es.verify_repository(repo).await {
            Ok(nodes) => {
                r.checks.ok(
                    CheckId::RepositoryWritable,
                    format!("{repo}: verified writable by {}", nodes.join(", ")),
                );
            }
            Err(e) => {
                r.checks.fail_es(
                    CheckId::RepositoryWritable,
                    format!("{repo} (rollback.repository): POST _snapshot/{repo}/_verify: {e}"),
                    &e,
                );
            }
        },
    }
    liveness::check(coord, &settings.coordination, &mut r).await;
    r
}

/// Every Kibana connected to Elasticsearch must be one of the expected hosts': a Kibana no agent
/// controls would keep migrating the restored indices. The same judgement the barrier makes
/// ([`crate::fleet::clients::judge`]), for the time before anything stops.
async fn kibana_clients(es: &Es, settings: &Settings, r: &mut Report) {
    use crate::fleet::clients::{judge, ClientsVerdict, Purpose};
    if !settings.coordination.barrier_client_check {
        r.checks.skip(
            CheckId::KibanaClients,
            "coordination.barrier_client_check = false: only the agents' reports are trusted",
        );
        return;
    }
    let stats = match es.http_clients().await {
        Ok(s) => s,
        Err(e) => {
            r.checks.fail_es(
                CheckId::KibanaClients,
                format!("reading _nodes/stats/http: {e}"),
                &e,
            );
            return;
        }
    };
    let docs: Vec<HostDoc> = r.hosts.iter().filter_map(|(_, d)| d.clone()).collect();
    match judge(&stats, Purpose::Preflight, &r.expected, &docs) {
        ClientsVerdict::Clear(seen) => {
            r.checks.ok(CheckId::KibanaClients, seen);
        }
        ClientsVerdict::Waiting(uncontrolled) => {
            r.checks.fail(
                CheckId::KibanaClients,
                format!(
                    "{}: stop it, or add its host to the fleet (an agent there, the host in coordination.expected_hosts, its address in that agent's coordination.client_addresses)",
                    uncontrolled
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            );
        }
        // (the preflight's judgement says CannotVerify for these; kept for completeness)
        ClientsVerdict::NodesSilent(nodes) => {
            r.checks.fail(
                CheckId::KibanaClients,
                format!("node(s) {} did not answer _nodes/stats/http: a Kibana connected to them cannot be seen; wait until they answer or have left the cluster", nodes.join(", ")),
            );
        }
        ClientsVerdict::CannotVerify(why) => {
            r.checks.fail(
                CheckId::KibanaClients,
                format!("cannot verify who talks to Elasticsearch as Kibana: {why}; fix that, or set coordination.barrier_client_check = false"),
            );
        }
    }
}

/// The snapshot: selected by the operator, or pinned by the operation; judged against the
/// upgrade's window from the expected hosts' install evidence and the `.kibana*` creation times.
async fn snapshot_check(
    es: &Es,
    settings: &Settings,
    r: &mut Report,
    scope: Scope<'_>,
    request: Request<'_>,
) {
    let (pinned, accept_unjudged) = match scope {
        Scope::Leader {
            snapshot,
            accepted_unjudged,
            ..
        } => (Some(snapshot), accepted_unjudged),
        _ => (None, request.accept_unjudged),
    };
    let target = r.target.clone();
    let c = &mut r.checks;
    let repository = match pinned {
        Some(p) => Some(p.repository.clone()),
        None => settings.rollback.repository.clone(),
    };
    match (&target, &repository) {
        (Some(t), Some(repo)) => {
            let window = match upgrade_window(es, t, &r.hosts).await {
                Ok(w) => w,
                Err(e) => {
                    c.fail_es(
                        CheckId::Snapshot,
                        format!("reading the creation times of the .kibana* indices: {e}"),
                        &e,
                    );
                    return;
                }
            };
            let against = snapshots::Against {
                target: t,
                window: &window,
                margin_ms: settings.rollback.snapshot_margin.as_millis() as i64,
            };
            let found = match pinned {
                Some(p) => snapshot::pinned(es, p, against, accept_unjudged).await,
                None => {
                    snapshot::resolve(es, repo, request.snapshot, against, accept_unjudged).await
                }
            };
            match found {
                Ok(Ok(res)) => {
                    let check = c.ok(CheckId::Snapshot, res.describe(request.snapshot, pinned));
                    check.warnings = res.assessment.notes.clone();
                    r.snapshot = Some(res);
                }
                Ok(Err(why)) => {
                    c.fail(CheckId::Snapshot, why);
                }
                Err(e) => {
                    c.fail_es(
                        CheckId::Snapshot,
                        format!("reading snapshots of {repo}: {e}"),
                        &e,
                    );
                }
            }
            r.window = Some(window);
        }
        (_, None) => {
            c.fail(
                CheckId::Snapshot,
                "no snapshot repository: set rollback.repository in the configuration",
            )
            .exit_code = exit::CONFIG;
        }
        (None, _) => c.skip(
            CheckId::Snapshot,
            "no target version to judge eligibility against",
        ),
    }
}

/// When the upgrade to a Kibana newer than `target` began, from the hosts' install evidence
/// (an expected host without a document counts as unknown) and the `.kibana*` creation times.
pub async fn upgrade_window(
    es: &Es,
    target: &Version,
    hosts: &[(String, Option<HostDoc>)],
) -> Result<snapshots::UpgradeWindow, EsError> {
    let created = es.index_creation_ms(".kibana*").await?;
    let docs: Vec<HostDoc> = hosts.iter().filter_map(|(_, d)| d.clone()).collect();
    let mut window = snapshots::upgrade_window(target, &docs, &created);
    for (h, d) in hosts {
        if d.is_none() {
            window.none_newer = false;
            window
                .unknown_hosts
                .push(format!("{h} (not registered: no evidence)"));
        }
    }
    Ok(window)
}

/// Asks every configured host on its own; the node versions come from the first that answers.
async fn reachability(settings: &Settings, c: &mut Checks) -> Option<Vec<NodeInfo>> {
    let mut reachable = None;
    let mut unreachable = vec![];
    let mut auth_error = None;
    for h in &settings.elasticsearch.hosts {
        let mut one = settings.elasticsearch.clone();
        one.hosts = vec![h.clone()];
        let answer = match Es::new(&one) {
            Ok(es) => es.node_versions().await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(nodes) => {
                if reachable.is_none() {
                    reachable = Some((h.to_string(), nodes));
                }
            }
            Err(EsError::Unreachable { attempts }) => unreachable.push(attempts),
            Err(e) => {
                unreachable.push(format!("{h}: {e}"));
                if e.is_auth() {
                    auth_error = Some(e);
                }
            }
        }
    }
    match reachable {
        Some((host, nodes)) => {
            let check = c.ok(
                CheckId::ElasticsearchReachable,
                format!("{host} answers; cluster of {} node(s)", nodes.len()),
            );
            check.warnings = unreachable
                .iter()
                .map(|u| format!("not reachable: {u}"))
                .collect();
            Some(nodes)
        }
        None => {
            let detail = format!(
                "no Elasticsearch host answers (elasticsearch.hosts): {}",
                unreachable.join("; ")
            );
            let check = c.fail(CheckId::ElasticsearchReachable, detail);
            if auth_error.is_some() {
                check.exit_code = exit::NOPERM;
            }
            None
        }
    }
}

/// Every expected host has a host document (its agent registered); none expected is a failure.
async fn registration(coord: &Coord<'_>, r: &mut Report) {
    let c = &mut r.checks;
    if r.expected.is_empty() {
        c.fail(
            CheckId::ExpectedHostsRegistered,
            format!(
                "no expected hosts: coordination.expected_hosts is empty and no agent is registered in index {}; \
                 start kibana-rollbackd on every Kibana host or list them in coordination.expected_hosts",
                coord.index
            ),
        );
        return;
    }
    match coord.hosts(&r.expected).await {
        Ok(docs) => {
            r.hosts = r
                .expected
                .iter()
                .map(|h| (h.clone(), docs.iter().find(|d| &d.host_id == h).cloned()))
                .collect();
            let missing: Vec<&str> = r
                .hosts
                .iter()
                .filter(|(_, d)| d.is_none())
                .map(|(h, _)| h.as_str())
                .collect();
            // Two machines with one host id (a cloned VM, a reused hostname): the second one
            // writes a claim and does nothing; the fleet must not go on as if they were one.
            let claims: Vec<String> = match coord.claims().await {
                Ok(cl) => cl
                    .into_iter()
                    .filter(|cl| r.expected.contains(&cl.host_id))
                    .map(|cl| {
                        format!(
                            "host id {} is claimed by two machines: {} owns it, {} also runs an agent with it",
                            cl.host_id,
                            cl.owner.map(|o| o.to_string()).unwrap_or_else(|| "?".into()),
                            cl.machine
                        )
                    })
                    .collect(),
                Err(_) => vec![], // no claim document was ever written
            };
            if !claims.is_empty() {
                c.fail(
                    CheckId::ExpectedHostsRegistered,
                    format!(
                        "{}: give each machine its own coordination.host_id (then delete the claim-* document of the one renamed from {})",
                        claims.join("; "),
                        coord.index
                    ),
                );
            } else if missing.is_empty() {
                c.ok(
                    CheckId::ExpectedHostsRegistered,
                    format!("{} ({})", r.expected.join(", "), r.expected_from),
                );
            } else {
                c.fail(
                    CheckId::ExpectedHostsRegistered,
                    format!(
                        "expected host(s) {} not registered in {} (no host document): start kibana-rollbackd there, \
                         or remove them from coordination.expected_hosts ({})",
                        missing.join(", "),
                        coord.index,
                        r.expected_from
                    ),
                );
            }
        }
        Err(e) => {
            c.fail_es(
                CheckId::ExpectedHostsRegistered,
                format!("reading host documents: {e}"),
                &e,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: &anyhow::Error) -> u8 {
        exit::code_for(e)
    }

    #[test]
    fn refusal_is_the_first_failure_naming_the_others() {
        let mut r = Report::default();
        r.checks.ok(CheckId::TargetVersion, "Kibana 8.14.3");
        r.checks.skip(CheckId::AgentsAlive, "not watched");
        assert!(r.checks.passed(), "skipped checks do not fail the run");
        assert!(r.refusal().is_none());
        r.checks
            .fail(CheckId::NodesCompatible, "node es2 (8.13.0) is older");
        r.checks.fail(CheckId::Snapshot, "no eligible snapshot");
        let e = r.refusal().unwrap();
        assert_eq!(code(&e), exit::FAILED);
        let msg = e.to_string();
        assert!(msg.starts_with("node es2 (8.13.0) is older"), "{msg}");
        assert!(msg.contains("also failed: snapshot"), "{msg}");
        assert_eq!(
            r.problems().unwrap_err(),
            "nodes compatible with target: node es2 (8.13.0) is older\nsnapshot: no eligible snapshot"
        );
    }

    #[test]
    fn refusal_codes_follow_the_check_and_the_cause() {
        let busy = {
            let mut r = Report::default();
            r.checks.fail(CheckId::NoOperationRunning, "running");
            r.refusal().unwrap()
        };
        assert_eq!(code(&busy), exit::TEMPFAIL);
        let unreachable = {
            let mut r = Report::default();
            r.checks
                .fail(CheckId::ElasticsearchReachable, "none answers");
            r.refusal().unwrap()
        };
        assert_eq!(code(&unreachable), exit::UNAVAILABLE);
        let denied = {
            let mut r = Report::default();
            let e = EsError::Api {
                method: "GET".into(),
                path: "_snapshot/r/_all".into(),
                status: reqwest::StatusCode::FORBIDDEN,
                err_type: Some("security_exception".into()),
                reason: "action [cluster:admin/snapshot/get] is unauthorized".into(),
            };
            r.checks.fail_es(CheckId::Snapshot, "denied", &e);
            r.refusal().unwrap()
        };
        assert_eq!(code(&denied), exit::NOPERM);
    }
}
