//! A staged Kibana fleet for the end-to-end tests: real systemd test hosts, the `kibana` test
//! packages (the Kibana stand-in as their program) and kibana-rollback installed with apt as an
//! operator installs them, on a real Elasticsearch cluster of any version the harness runs —
//! then an upgrade that goes wrong, and the agents running. A scenario says what differs
//! ([`Spec`]: the cluster, Kibana OLD → NEW, how the upgrade fails, security, per-host tweaks)
//! and checks the outcome with [`Fleet`]'s helpers; [`Support`] records what it ran for the
//! support table (`scripts/support-table` renders docs/support.md from those records).
//!
//! The staging, in order: boot the hosts (agents' and, optionally, Kibana hosts without an
//! agent) in parallel; on each: only the local apt repositories, the kibana-rollback package (its
//! units byte for byte `systemd/`, a drop-in for the debug log level), its configuration,
//! Kibana OLD and kibana.yml (its own port and source address); start Kibana, save objects (and
//! write the plugin indices the scenario asks for), take the operator's pre-upgrade snapshot
//! (and a nightly one without the kibana feature state), wait past `rollback.snapshot_margin`,
//! upgrade every host to NEW the way the upgrade goes wrong, start the agents and wait until
//! every one has registered.
//!
//! Include with `#[path = "common/fleet.rs"] mod fleet;` next to `mod common;` and the
//! `hosts`/`testbed` modules (it refers to them as `crate::...`).
#![allow(dead_code)] // each e2e binary uses a different part of this

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{self, raw_at, repo_root, unique, EsCluster, KibanaFeatureTurn};
use crate::hosts::{self, Hosts, TestHost};
use crate::testbed;

/// The packaged binary, as installed on every test host.
pub const AGENT_BIN: &str = "/usr/bin/kibana-rollback";

/// The status user of secured fleets (Kibana's `standin.users`, the agents'
/// `kibana.status_username`).
pub const STATUS_USER: &str = "kr-status";
pub const STATUS_PASSWORD: &str = "kr-status-secret";

fn state_root() -> PathBuf {
    PathBuf::from(std::env::var("KR_TEST_STATE").unwrap_or_else(|_| "/var/tmp/kr-test".into()))
}

/// Whether `version` is a 7.x Kibana (unit in /etc/systemd/system, legacy status format).
pub fn is_7x(version: &str) -> bool {
    version.starts_with("7.")
}

// ---- the packages --------------------------------------------------------------------------

/// The kibana-rollback agent as operators get it: the .deb built by `packaging/build --repo`
/// from the binary under test, in an apt repository at `$KR_TEST_STATE/agent-repo` (test hosts
/// have a private /tmp but see /var/tmp). Built before any host boots (overlays see lower-layer
/// files that existed then) and reused by every test binary of a run while the binary and the
/// packaging sources are the same (a stamp of their hashes). Returns the apt source line.
pub fn agent_repo() -> &'static str {
    static SOURCE: OnceLock<String> = OnceLock::new();
    SOURCE.get_or_init(|| {
        let state = state_root();
        std::fs::create_dir_all(&state).unwrap();
        let repo = state.join("agent-repo");
        let source = format!("deb [trusted=yes] file:{} ./", repo.display());
        // One builder at a time per state dir (test binaries of concurrent runs).
        let lock = std::fs::File::create(state.join("agent-repo.lock")).unwrap();
        lock.lock().expect("flock agent-repo.lock");
        let stamp = agent_stamp();
        if std::fs::read_to_string(repo.join(".stamp")).ok().as_deref() == Some(&stamp) {
            eprintln!("kibana-rollback .deb: reusing {}", repo.display());
            return source;
        }
        // Built aside and renamed into place, so a concurrent run never reads a half-written one.
        let pid = std::process::id();
        let new = state.join(format!("agent-repo.new-{pid}"));
        let old = state.join(format!("agent-repo.old-{pid}"));
        let _ = std::fs::remove_dir_all(&new);
        let t0 = Instant::now();
        let out = Command::new(repo_root().join("packaging/build"))
            .args(["deb", "--repo", "--fast", "--binary"])
            .arg(common::packaged_binary())
            .arg("--out")
            .arg(&new)
            .output()
            .expect("run packaging/build");
        assert!(
            out.status.success(),
            "packaging/build deb --repo failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(new.join(".stamp"), &stamp).unwrap();
        let _ = std::fs::rename(&repo, &old);
        std::fs::rename(&new, &repo).expect("move the agent repository into place");
        let _ = std::fs::remove_dir_all(&old);
        eprintln!(
            "kibana-rollback .deb and its apt repository in {:.1}s: {}",
            t0.elapsed().as_secs_f64(),
            repo.display()
        );
        // The index names the .deb relative to the repository, so the move keeps it valid.
        source
    })
}

/// What the agent's .deb is made of: the binary and the packaging sources it is built with.
fn agent_stamp() -> String {
    let root = repo_root();
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            "{ sha256sum \"$1\"; find packaging systemd config -type f -print0 | sort -z | xargs -0 sha256sum; } | sha256sum",
        )
        .arg("stamp")
        .arg(common::packaged_binary())
        .current_dir(&root)
        .output()
        .expect("hash the agent's inputs");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The Kibana packages (every test version, the stand-in as their program): the apt source.
pub fn package_repo() -> String {
    testbed::testbed().apt_source.clone()
}

/// A port on 127.0.0.1 nothing listens on, never handed out twice by this process (fleets of
/// one test binary run side by side; test hosts share the machine's network).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let p = testbed::free_port();
        if !given.contains(&p) {
            given.push(p);
            return p;
        }
    }
}

// ---- the cluster ---------------------------------------------------------------------------

/// The Elasticsearch cluster a fleet runs on: the shared default node (8.15.0, `ES_URL`) or a
/// named [`EsCluster`].
#[derive(Clone)]
pub struct Cluster {
    urls: Vec<String>,
    repo_path: String,
    named: Option<EsCluster>,
}

impl Cluster {
    /// The test node every test binary shares (`tests/harness/es-node up`).
    pub fn default_node() -> Cluster {
        let n = common::es_node();
        Cluster {
            urls: vec![n.url.clone()],
            repo_path: n.repo_path.clone(),
            named: None,
        }
    }

    pub fn named(c: &EsCluster) -> Cluster {
        Cluster {
            urls: c.urls().to_vec(),
            repo_path: c.repo_path().to_string(),
            named: Some(c.clone()),
        }
    }

    /// The first node (the master of a cluster `up` formed).
    pub fn url(&self) -> &str {
        &self.urls[0]
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    pub fn handle(&self) -> Option<&EsCluster> {
        self.named.as_ref()
    }

    /// This cluster's turn on the kibana feature state.
    pub fn lock(&self) -> KibanaFeatureTurn {
        match &self.named {
            Some(c) => c.kibana_feature_lock(),
            None => common::kibana_feature_lock(),
        }
    }

    /// Raw HTTP against the first node (never as Kibana: see [`common::raw`]).
    pub async fn raw(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        raw_at(self.url(), method, path, body).await
    }

    /// `GET path` with curl (for polling from synchronous closures); `None` unless JSON came back.
    pub fn get(&self, path: &str) -> Option<Value> {
        let out = Command::new("curl")
            .args(["-s", "-m", "10", &format!("{}/{path}", self.url())])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Every node's name and version, in node order.
    pub async fn nodes(&self) -> Vec<(String, String)> {
        let (_, v) = self
            .raw(
                "GET",
                "_nodes/_all/_none?filter_path=nodes.*.name,nodes.*.version",
                None,
            )
            .await;
        let mut nodes: Vec<(String, String)> = v["nodes"]
            .as_object()
            .map(|m| {
                m.values()
                    .map(|n| {
                        (
                            n["name"].as_str().unwrap_or("").to_string(),
                            n["version"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        nodes.sort();
        nodes
    }

    /// The versions of the nodes, sorted and deduplicated (for the support table).
    pub async fn versions(&self) -> Vec<String> {
        let mut v: Vec<String> = self.nodes().await.into_iter().map(|(_, v)| v).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Deletes every index of the kibana feature (as a restore would), so a fleet starts clean.
    pub async fn reset_kibana_feature(&self) {
        let (_, v) = self
            .raw(
                "GET",
                "_cat/indices/.kibana*,.reporting-*,.apm-agent-configuration*,.apm-custom-link*,.chat-*,.workflows-*?expand_wildcards=all&format=json&h=index",
                None,
            )
            .await;
        for idx in v.as_array().cloned().unwrap_or_default() {
            if let Some(name) = idx["index"].as_str() {
                let (s, body) = self.raw("DELETE", name, None).await;
                assert!(s == 200 || s == 404, "deleting {name}: {body}");
            }
        }
    }

    /// The kibana feature's patterns on this cluster's node versions (`src/feature.rs`: every
    /// version's `.kibana*`, ...; 9.2 adds `.chat-*` and `.workflows-*`), comma-separated.
    pub async fn feature_patterns(&self) -> String {
        let versions: Vec<semver::Version> = self
            .versions()
            .await
            .iter()
            .map(|v| {
                kibana_rollback::compat::coerce(v).unwrap_or_else(|| panic!("node version {v:?}"))
            })
            .collect();
        assert!(!versions.is_empty(), "the cluster reports no node");
        kibana_rollback::preflight::privileges::feature_patterns(&versions).join(",")
    }

    /// The kibana feature's state, what a feature-state restore replaces: every index of the
    /// feature's patterns on this cluster's versions ([`Cluster::feature_patterns`]) with its
    /// documents (id → source, sorted) and the aliases pointing at it.
    pub async fn kibana_state(&self) -> KibanaState {
        let patterns = self.feature_patterns().await;
        self.raw(
            "POST",
            &format!("{patterns}/_refresh?expand_wildcards=all"),
            None,
        )
        .await;
        let (_, v) = self
            .raw(
                "GET",
                &format!("_cat/indices/{patterns}?expand_wildcards=all&format=json&h=index"),
                None,
            )
            .await;
        let mut state = BTreeMap::new();
        for idx in v.as_array().cloned().unwrap_or_default() {
            let Some(name) = idx["index"].as_str() else {
                continue;
            };
            let (_, a) = self.raw("GET", &format!("{name}/_alias"), None).await;
            let mut aliases: Vec<String> = a[name]["aliases"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            aliases.sort();
            let (s, hits) = self
                .raw(
                    "POST",
                    &format!("{name}/_search"),
                    Some(json!({"size": 1000, "sort": ["_doc"]})),
                )
                .await;
            assert_eq!(s, 200, "{name}: {hits}");
            let mut docs: Vec<(String, Value)> = hits["hits"]["hits"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|h| (h["_id"].as_str().unwrap().to_string(), h["_source"].clone()))
                .collect();
            docs.sort_by(|a, b| a.0.cmp(&b.0));
            state.insert(name.to_string(), (aliases, docs));
        }
        state
    }

    /// The indices the `.kibana` alias points at.
    pub async fn kibana_alias(&self) -> Vec<String> {
        let (_, v) = self.raw("GET", "_alias/.kibana", None).await;
        let mut names: Vec<String> = v
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The restores of snapshots of `repo` the node's test plugin counted.
    pub async fn restores_of(&self, repo: &str) -> Vec<Value> {
        common::restores_at(self.url(), repo).await
    }

    /// `n` saved objects of type `tag` written through `.kibana`, as users of Kibana `version`
    /// saved them (ids `tag:00000`...; a failing migration fails on the middle one).
    pub async fn save_objects(&self, n: usize, version: &str) {
        let mut body = String::new();
        for i in 0..n {
            body.push_str(&json!({"index": {"_id": format!("tag:{i:05}")}}).to_string());
            body.push('\n');
            let mut doc = json!({"type": "tag", "tag": {"name": format!("tag {i}")}, "coreMigrationVersion": version});
            if is_7x(version) {
                doc["migrationVersion"] = json!({ "tag": version });
            } else {
                doc["typeMigrationVersion"] = json!(version);
            }
            body.push_str(&doc.to_string());
            body.push('\n');
        }
        // Not as Kibana (no x-elastic-product-origin): the barrier would count it as one.
        kibana_rollback::crypto::install_provider();
        let r = reqwest::Client::new()
            .post(format!("{}/.kibana/_bulk?refresh=true", self.url()))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .expect("bulk to the node");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["errors"], false, "{v}");
    }
}

/// Each `.kibana*` index: its aliases and its documents (id, source), sorted.
pub type KibanaState = BTreeMap<String, (Vec<String>, Vec<(String, Value)>)>;

// ---- what a scenario stages ----------------------------------------------------------------

/// How the staged upgrade to NEW goes wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// The saved-object migration fails half-way on the reindex path (a temp index holds the
    /// documents copied before the failing one): every instance exits and systemd restarts it,
    /// as with real Kibana (the fleet crash-loops).
    FailsMigration,
    /// The migration fails half-way on the compatible path (8.6+): the documents before the
    /// failing one are updated in place in the old index, which keeps its name.
    FailsCompatibleMigration,
    /// Every instance hangs, running, waiting for an Elasticsearch it cannot reach (its
    /// `elasticsearch.hosts` points at a closed port): the units stay active.
    Hangs,
}

impl Upgrade {
    pub fn describe(self) -> &'static str {
        match self {
            Upgrade::FailsMigration => "migration fails half-way (reindex path)",
            Upgrade::FailsCompatibleMigration => {
                "migration fails half-way (compatible path, same index names)"
            }
            Upgrade::Hangs => "Kibana hangs waiting for Elasticsearch",
        }
    }
}

type HostFn<T> = Box<dyn Fn(usize) -> T + Send + Sync>;
type TweakFn = Box<dyn Fn(&TestHost, usize) + Send + Sync>;

/// What a scenario's fleet looks like. `Spec::new("kb", "8.14.3", "8.15.0")` is today's fleet:
/// three agent hosts on the default node, the 8.15.0 migration failing, no security.
pub struct Spec {
    pub prefix: String,
    pub cluster: Option<Cluster>,
    pub old: String,
    pub new: String,
    pub upgrade: Upgrade,
    /// Hosts with an agent (the expected hosts).
    pub agents: usize,
    /// Kibana hosts without an agent (Kibana OLD, started before the upgrade, never upgraded).
    pub unmanaged: usize,
    /// The stand-ins require credentials as Kibana does with security on (8.9+: a redacted
    /// status without them, 401 before), and kibana.yml authenticates to Elasticsearch.
    pub secured: bool,
    /// The agents get `kibana.status_username` / `status_password_file`.
    pub status_credentials: bool,
    /// The nodes host `i` (its agent and its Kibana) lists, by index, in order; default: every
    /// node in node order.
    pub nodes: HostFn<Vec<usize>>,
    /// More snapshots the operator took right after the pre-upgrade one: (name, request body).
    pub snapshots: Vec<(String, Value)>,
    /// More TOML for agent host `i`, as the drop-in /etc/kibana-rollback/config.d/50-scenario.toml.
    pub config: HostFn<String>,
    /// More kibana.yml lines for host `i` (every version's, before and after the upgrade).
    pub kibana_yml: HostFn<String>,
    /// Runs on agent host `i` after its setup (drop-ins, edits).
    pub tweak: TweakFn,
    /// Indices Kibana's plugins keep in the feature besides the saved objects (9.2's `.chat-*`,
    /// `.workflows-*`): (name, documents), written through Elasticsearch before the pre-upgrade
    /// snapshot, so the snapshot, the restore and [`Fleet::before`] hold them.
    pub plugin_indices: Vec<(String, usize)>,
    /// The agents start on the healthy fleet (Kibana OLD) and the upgrade is left to the test:
    /// the whole fleet with [`Fleet::upgrade`] (for `prepare`, which runs before an upgrade) or
    /// host by host with [`Fleet::upgrade_host`] (detection watching it happen).
    pub upgrade_later: bool,
}

impl Spec {
    pub fn new(prefix: &str, old: &str, new: &str) -> Spec {
        Spec {
            prefix: prefix.into(),
            cluster: None,
            old: old.into(),
            new: new.into(),
            upgrade: Upgrade::FailsMigration,
            agents: 3,
            unmanaged: 0,
            secured: false,
            status_credentials: false,
            nodes: Box::new(|_| vec![]),
            snapshots: vec![],
            config: Box::new(|_| String::new()),
            kibana_yml: Box::new(|_| String::new()),
            tweak: Box::new(|_, _| {}),
            plugin_indices: vec![],
            upgrade_later: false,
        }
    }
    /// Agents up on the healthy fleet; the test upgrades it ([`Fleet::upgrade`],
    /// [`Fleet::upgrade_host`]).
    pub fn upgrade_later(mut self) -> Spec {
        self.upgrade_later = true;
        self
    }
    pub fn on(mut self, c: &EsCluster) -> Spec {
        self.cluster = Some(Cluster::named(c));
        self
    }
    pub fn upgrade(mut self, u: Upgrade) -> Spec {
        self.upgrade = u;
        self
    }
    pub fn unmanaged(mut self, n: usize) -> Spec {
        self.unmanaged = n;
        self
    }
    pub fn secured(mut self, status_credentials: bool) -> Spec {
        self.secured = true;
        self.status_credentials = status_credentials;
        self
    }
    /// Host `i` lists the nodes `f(i)` (indices into the cluster's nodes), in that order.
    pub fn nodes(mut self, f: impl Fn(usize) -> Vec<usize> + Send + Sync + 'static) -> Spec {
        self.nodes = Box::new(f);
        self
    }
    /// Another snapshot taken right after the pre-upgrade one (before the upgrade began).
    pub fn snapshot(mut self, name: &str, body: Value) -> Spec {
        self.snapshots.push((name.into(), body));
        self
    }
    pub fn config(mut self, f: impl Fn(usize) -> String + Send + Sync + 'static) -> Spec {
        self.config = Box::new(f);
        self
    }
    pub fn kibana_yml(mut self, f: impl Fn(usize) -> String + Send + Sync + 'static) -> Spec {
        self.kibana_yml = Box::new(f);
        self
    }
    pub fn tweak(mut self, f: impl Fn(&TestHost, usize) + Send + Sync + 'static) -> Spec {
        self.tweak = Box::new(f);
        self
    }
    /// A plugin's index of the feature with `docs` documents (ids `<plugin>:<n>`) before the
    /// pre-upgrade snapshot; see [`Spec::plugin_indices`].
    pub fn plugin_index(mut self, name: &str, docs: usize) -> Spec {
        self.plugin_indices.push((name.into(), docs));
        self
    }

    /// Stages the fleet (see the module doc). `None` (after saying why) when test hosts
    /// cannot boot here: the test then skips.
    pub async fn stage(self) -> Option<Fleet> {
        stage(self).await
    }
}

/// One Kibana host of the fleet.
#[derive(Clone, Debug)]
pub struct Member {
    pub name: String,
    pub port: u16,
    /// `standin.source_address` of its Kibana, and its agent's `coordination.client_addresses`.
    pub address: String,
    /// Whether an agent runs there (an expected host).
    pub agent: bool,
    /// The Elasticsearch URLs its Kibana (and agent) list, in order.
    pub es_hosts: Vec<String>,
}

/// A staged fleet whose upgrade to NEW went wrong, agents running.
pub struct Fleet {
    /// This test's turn on the cluster's kibana feature state (held as long as the fleet lives).
    _turn: KibanaFeatureTurn,
    pub hosts: Hosts,
    pub cluster: Cluster,
    pub spec: Spec,
    /// The agent hosts (expected hosts), then the Kibana hosts without an agent.
    pub members: Vec<Member>,
    /// The agent hosts' names.
    pub names: Vec<String>,
    pub index: String,
    pub repo: String,
    /// The kibana feature state as the pre-upgrade snapshot holds it.
    pub before: KibanaState,
    pub t0: Instant,
}

const SAVED_OBJECTS: usize = 10;

async fn stage(spec: Spec) -> Option<Fleet> {
    if let Some(why) = hosts::skip_reason() {
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let cluster = spec.cluster.clone().unwrap_or_else(Cluster::default_node);
    let turn = cluster.lock();
    let t0 = Instant::now();
    // Both repositories exist before any host boots: overlays see lower-layer files that
    // existed then.
    let agent_source = agent_repo();
    let apt_source = package_repo();
    cluster.reset_kibana_feature().await;
    let repo = unique("kr-e2e-repo");
    let index = unique("kr-e2e-coord");
    let (s, v) = cluster
        .raw(
            "PUT",
            &format!("_snapshot/{repo}"),
            Some(json!({"type": "fs", "settings": {"location": format!("{}/{repo}", cluster.repo_path)}})),
        )
        .await;
    assert_eq!(s, 200, "snapshot repository: {v}");

    let members: Vec<Member> = (0..spec.agents + spec.unmanaged)
        .map(|i| {
            let agent = i < spec.agents;
            let order = (spec.nodes)(i);
            let es_hosts = if order.is_empty() {
                cluster.urls().to_vec()
            } else {
                order.iter().map(|&n| cluster.urls()[n].clone()).collect()
            };
            Member {
                name: if agent {
                    format!("{}{}", spec.prefix, i + 1)
                } else {
                    format!("{}x{}", spec.prefix, i + 1 - spec.agents)
                },
                port: free_port(),
                address: format!("127.0.0.{}", if agent { 11 + i } else { 51 + i }),
                agent,
                es_hosts,
            }
        })
        .collect();
    let names: Vec<String> = members
        .iter()
        .filter(|m| m.agent)
        .map(|m| m.name.clone())
        .collect();
    let all: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    let hosts = Hosts::up(&all, None).expect("boot test hosts");
    let mut fleet = Fleet {
        _turn: turn,
        hosts,
        cluster,
        spec,
        members,
        names,
        index,
        repo,
        before: BTreeMap::new(),
        t0,
    };
    fleet.log(&format!(
        "{} hosts up ({} with an agent)",
        all.len(),
        fleet.names.len()
    ));
    std::thread::scope(|s| {
        for (i, m) in fleet.members.iter().enumerate() {
            let f = &fleet;
            let sources = [apt_source.as_str(), agent_source];
            s.spawn(move || {
                let h = f.hosts.get(&m.name);
                f.setup_host(h, i, m, &sources);
                if m.agent {
                    (f.spec.tweak)(h, i);
                }
                h.exec_ok(&["systemctl", "daemon-reload"]);
            });
        }
    });
    let old = fleet.spec.old.clone();
    let new = fleet.spec.new.clone();
    fleet.log(&format!("kibana {old} installed on every host"));
    // The agent and the trigger run from the packaged unit files, byte for byte the shipped
    // ones, with no drop-in but the test's log level.
    for (_, h) in fleet.each() {
        for unit in ["kibana-rollbackd.service", "kibana-rollback.service"] {
            let shipped = std::fs::read_to_string(repo_root().join("systemd").join(unit)).unwrap();
            assert_eq!(
                h.exec_ok(&["cat", &format!("/lib/systemd/system/{unit}")]),
                shipped,
                "{}: installed {unit} differs from systemd/{unit}",
                h.name
            );
            let dropins = h.exec_ok(&["systemctl", "show", "-P", "DropInPaths", unit]);
            assert_eq!(
                dropins.trim(),
                format!("/etc/systemd/system/{unit}.d/debug.conf"),
                "{}: drop-ins of {unit}",
                h.name
            );
        }
    }
    if is_7x(&old) {
        for m in &fleet.members {
            assert_eq!(
                fleet.unit_fragment(fleet.hosts.get(&m.name)),
                "/etc/systemd/system/kibana.service",
                "{}: the 7.x package's unit",
                m.name
            );
        }
    }

    // The fleet runs OLD; Kibana creates its indices; users save objects.
    for m in &fleet.members {
        fleet
            .hosts
            .get(&m.name)
            .exec_ok(&["systemctl", "start", "kibana.service"]);
    }
    for i in 0..fleet.members.len() {
        fleet.wait_available(i, &old);
    }
    fleet.cluster.save_objects(SAVED_OBJECTS, &old).await;
    for (index, docs) in &fleet.spec.plugin_indices {
        for n in 0..*docs {
            let (s, v) = fleet
                .cluster
                .raw(
                    "PUT",
                    &format!("{index}/_doc/plugin:{n}?refresh=true"),
                    Some(json!({"kibana_version": old, "n": n})),
                )
                .await;
            assert!(s == 200 || s == 201, "{index}: {v}");
        }
    }
    fleet.before = fleet.cluster.kibana_state().await;
    for (index, docs) in &fleet.spec.plugin_indices {
        assert_eq!(
            fleet.before.get(index).map(|(_, d)| d.len()),
            Some(*docs),
            "{index} must be in the kibana feature state of {:?}",
            fleet.cluster.versions().await
        );
    }
    assert!(
        fleet
            .before
            .values()
            .any(|(_, docs)| docs.len() >= SAVED_OBJECTS),
        "{:?}",
        fleet.before
    );

    // The operator's pre-upgrade snapshot of the kibana feature state, and an ordinary
    // nightly snapshot without it.
    let repo = fleet.repo.clone();
    let (s, v) = fleet
        .cluster
        .raw(
            "PUT",
            &format!("_snapshot/{repo}/pre-upgrade?wait_for_completion=true"),
            Some(json!({"indices": "-*", "include_global_state": false, "feature_states": ["kibana"]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["snapshot"]["state"], "SUCCESS", "{v}");
    for (name, body) in &fleet.spec.snapshots {
        let (s, v) = fleet
            .cluster
            .raw(
                "PUT",
                &format!("_snapshot/{repo}/{name}?wait_for_completion=true"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(s, 200, "snapshot {name}: {v}");
    }
    // The upgrade starts over a second after the snapshot (margin 1 s; dpkg logs whole seconds):
    // eligibility compares the snapshot's start with the install of the newer package.
    std::thread::sleep(Duration::from_millis(2200));
    let data = unique("kr-e2e-data");
    fleet
        .cluster
        .raw(
            "PUT",
            &format!("{data}/_doc/1?refresh=true"),
            Some(json!({"a": 1})),
        )
        .await;
    let (s, v) = fleet
        .cluster
        .raw(
            "PUT",
            &format!("_snapshot/{repo}/nightly-data?wait_for_completion=true"),
            Some(
                json!({"indices": data, "include_global_state": false, "feature_states": ["none"]}),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    if fleet.spec.upgrade_later {
        fleet.log(&format!(
            "every host runs {old}; the test upgrades them to {new}"
        ));
    } else {
        fleet.stage_upgrade(false).await;
        fleet.log(&format!(
            "upgrade to {new} staged: {}",
            fleet.spec.upgrade.describe()
        ));
    }

    // The agents come up on every agent host and register.
    for (_, h) in fleet.each() {
        h.exec_ok(&["systemctl", "start", "kibana-rollbackd.service"]);
    }
    fleet.wait_registered();
    fleet.log("agents registered");
    Some(fleet)
}

impl Fleet {
    /// The agent hosts with their index (their Kibana's port, address, ...).
    pub fn each(&self) -> impl Iterator<Item = (usize, &TestHost)> {
        self.members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.agent)
            .map(|(i, m)| (i, self.hosts.get(&m.name)))
    }
    pub fn first(&self) -> &TestHost {
        self.hosts.get(&self.names[0])
    }
    pub fn host(&self, i: usize) -> &TestHost {
        self.hosts.get(&self.members[i].name)
    }
    /// Kibana OLD (the rollback's target) and NEW (the failed upgrade's).
    pub fn old(&self) -> &str {
        &self.spec.old
    }
    pub fn upgraded_to(&self) -> &str {
        &self.spec.new
    }
    pub fn log(&self, what: &str) {
        eprintln!(
            "[{} {:>6.1}s] {what}",
            self.spec.prefix,
            self.t0.elapsed().as_secs_f64()
        );
    }
    /// `kibana-rollback ARGS` on host `h`, with the host's configuration.
    pub fn cli(&self, h: &TestHost, args: &[&str]) -> std::process::Output {
        let mut cmd = vec![AGENT_BIN];
        cmd.extend_from_slice(args);
        h.exec(&cmd)
    }
    pub fn journal(&self, h: &TestHost, unit: &str) -> String {
        String::from_utf8_lossy(
            &h.exec(&["journalctl", "-u", unit, "--no-pager", "-o", "cat"])
                .stdout,
        )
        .into_owned()
    }
    /// The agents' journals for a failure message: the last 80 lines of each, long lines (the
    /// debug log's client lists) and bare package-command lines left out.
    pub fn agent_journals(&self) -> String {
        self.each()
            .map(|(_, h)| {
                let j = self.journal(h, "kibana-rollbackd.service");
                // The package commands' debug lines lose their fields in `-o cat`: noise here.
                let lines: Vec<&str> = j
                    .lines()
                    .filter(|l| !matches!(*l, "running" | "finished"))
                    .collect();
                let tail: Vec<String> = lines[lines.len().saturating_sub(80)..]
                    .iter()
                    .map(|l| match l.char_indices().nth(400) {
                        Some((at, _)) => format!("{} [...]", &l[..at]),
                        None => l.to_string(),
                    })
                    .collect();
                format!("== {}\n{}", h.name, tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
    pub fn unit_fragment(&self, h: &TestHost) -> String {
        h.exec_ok(&["systemctl", "show", "-P", "FragmentPath", "kibana.service"])
            .trim()
            .to_string()
    }

    /// One host as an operator sets it up: only the local apt repositories, the kibana-rollback
    /// package (agent hosts), its configuration, the debug log level as a drop-in of each unit,
    /// Kibana OLD and its kibana.yml.
    fn setup_host(&self, h: &TestHost, i: usize, m: &Member, apt_sources: &[&str]) {
        // Only the local repositories: the hosts have no business with Debian's mirrors here.
        h.exec_ok(&[
            "sh",
            "-c",
            "rm -f /etc/apt/sources.list.d/*; : > /etc/apt/sources.list",
        ]);
        h.write(
            "/etc/apt/sources.list.d/kibana-test.list",
            &(apt_sources.join("\n") + "\n"),
        );
        h.exec_ok(&["apt-get", "update", "-qq"]);
        if m.agent {
            apt_install(h, "kibana-rollback");
            for unit in ["kibana-rollbackd.service", "kibana-rollback.service"] {
                h.write(
                    &format!("/etc/systemd/system/{unit}.d/debug.conf"),
                    "[Service]\nEnvironment=KIBANA_ROLLBACK_LOG=info,kibana_rollback=debug\n",
                );
            }
            h.write("/etc/kibana-rollback/config.toml", &self.agent_config(m));
            if self.spec.status_credentials {
                self.add_status_credentials(h);
            }
            let extra = (self.spec.config)(i);
            if !extra.is_empty() {
                h.write(
                    "/etc/kibana-rollback/config.d/50-scenario.toml",
                    &(extra + "\n"),
                );
            }
        }
        install(h, &self.spec.old);
        self.write_kibana_yml(i, KibanaYml::Serving);
    }

    fn agent_config(&self, m: &Member) -> String {
        format!(
            r#"[elasticsearch]
hosts = {es:?}
[kibana]
status_url = "http://127.0.0.1:{port}/api/status"
stop_timeout = "30s"
start_timeout = "90s"
[rollback]
target_version = "{old}"
repository = "{repo}"
snapshot = "pre-upgrade"
# The staged upgrade follows the snapshot by seconds; dpkg logs whole seconds.
snapshot_margin = "1s"
[coordination]
index = "{index}"
host_id = "{name}"
expected_hosts = {expected:?}
client_addresses = ["{address}"]
lease = "6s"
heartbeat = "2s"
barrier_timeout = "60s"
phase_timeout = "3m"
[package_manager]
kind = "apt"
"#,
            es = m.es_hosts,
            port = m.port,
            old = self.spec.old,
            repo = self.repo,
            index = self.index,
            name = m.name,
            expected = self.names,
            address = m.address,
        )
    }

    /// The status user as an operator configures it: its password in a file only root reads,
    /// named in a drop-in. (The agent must be restarted to use it.)
    pub fn add_status_credentials(&self, h: &TestHost) {
        h.write(
            "/etc/kibana-rollback/kibana-status-password",
            STATUS_PASSWORD,
        );
        h.exec_ok(&[
            "chmod",
            "600",
            "/etc/kibana-rollback/kibana-status-password",
        ]);
        h.write(
            "/etc/kibana-rollback/config.d/40-status-user.toml",
            &format!(
                "[kibana]\nstatus_username = \"{STATUS_USER}\"\nstatus_password_file = \"/etc/kibana-rollback/kibana-status-password\"\n"
            ),
        );
    }

    /// kibana.yml of host `i`: its port, its source address, the cluster, and how it runs.
    pub fn write_kibana_yml(&self, i: usize, how: KibanaYml) {
        let m = &self.members[i];
        let es_hosts: Vec<String> = match how {
            KibanaYml::Hanging => vec![format!("http://127.0.0.1:{}", free_port())],
            _ => m.es_hosts.clone(),
        };
        let mut yml = format!(
            "server.port: {}\nserver.host: \"127.0.0.1\"\nelasticsearch.hosts: {:?}\nstandin.source_address: {}\n",
            m.port, es_hosts, m.address
        );
        if self.spec.secured {
            // Security on, as Kibana sees it: it authenticates to Elasticsearch, and these users
            // may log in (the test node has no security plugin: see the stand-in's http.rs).
            yml.push_str(&format!(
                "elasticsearch.username: \"kibana_system\"\nelasticsearch.password: \"kibana-system-secret\"\nstandin.users: [\"{STATUS_USER}:{STATUS_PASSWORD}\"]\n"
            ));
        } else {
            // the test node has no security (as Kibana sees it: full status without credentials)
            yml.push_str("standin.security: false\n");
        }
        match how {
            KibanaYml::Serving | KibanaYml::Hanging => {}
            KibanaYml::SlowMigration { batch_delay_ms } => yml.push_str(&format!(
                // The reindex path, as a failed reindex before it took (its temp index is reused).
                "migrations.batchSize: 1\nstandin.migration_batch_delay: {batch_delay_ms}\nstandin.migration: reindex\n"
            )),
            KibanaYml::FailingMigration { compatible } => yml.push_str(&format!(
                // Batches of 2: the documents before the failing one are written (half-way).
                "standin.fail_migration: true\nstandin.migration: {}\nmigrations.batchSize: 2\n",
                if compatible { "compatible" } else { "reindex" }
            )),
        }
        yml.push_str(&(self.spec.kibana_yml)(i));
        self.host(i).write("/etc/kibana/kibana.yml", &yml);
    }

    /// The upgrade to NEW of a fleet staged with [`Spec::upgrade_later`], as [`Spec::stage`]
    /// does it otherwise.
    pub async fn upgrade(&self) {
        self.stage_upgrade(true).await;
        self.log(&format!(
            "upgrade to {} staged: {}",
            self.spec.new,
            self.spec.upgrade.describe()
        ));
    }

    /// The upgrade to NEW on every agent host (hosts without an agent keep running OLD): every
    /// instance stopped, kibana.yml for the upgrade, the package upgraded, Kibana started, until
    /// the upgrade has gone wrong as the spec says.
    /// `guarded`: the package hook judges the upgrade (after `prepare`); otherwise it is off
    /// for it ([`install_unguarded`]: the staged fleet's agents are not up yet).
    async fn stage_upgrade(&self, guarded: bool) {
        let new = self.spec.new.clone();
        for (_, h) in self.each() {
            h.exec_ok(&["systemctl", "stop", "kibana.service"]);
        }
        let how = match self.spec.upgrade {
            Upgrade::FailsMigration => KibanaYml::FailingMigration { compatible: false },
            Upgrade::FailsCompatibleMigration => KibanaYml::FailingMigration { compatible: true },
            Upgrade::Hangs => KibanaYml::Hanging,
        };
        let idx: Vec<usize> = self.each().map(|(i, _)| i).collect();
        for i in idx {
            let h = self.host(i);
            // before the upgrade: an 8.x .deb upgrade restarts kibana.service (RESTART_ON_UPGRADE)
            self.write_kibana_yml(i, how);
            if guarded {
                install(h, &new);
            } else {
                install_unguarded(h, &new);
            }
            if is_7x(&self.spec.old) && !is_7x(&new) {
                // The 7.x unit in /etc survives the upgrade (a conffile) and overrides the 8.x one,
                // whose Kibana then exits 64 on the 7.x unit's --logging.dest: the upgrade guide's
                // step the operator takes is removing it.
                h.exec_ok(&["rm", "-f", "/etc/systemd/system/kibana.service"]);
                h.exec_ok(&["systemctl", "daemon-reload"]);
                let _ = h.exec(&["systemctl", "reset-failed", "kibana.service"]);
                // The 8.x package's unit (Debian's /lib is /usr/lib).
                let fragment = self.unit_fragment(h);
                assert!(
                    [
                        "/usr/lib/systemd/system/kibana.service",
                        "/lib/systemd/system/kibana.service"
                    ]
                    .contains(&fragment.as_str()),
                    "{}: {fragment}",
                    h.name
                );
            }
            h.exec_ok(&["systemctl", "start", "kibana.service"]);
        }
        match self.spec.upgrade {
            Upgrade::FailsMigration => {
                let temp = format!(".kibana_{new}_reindex_temp/_count");
                wait_for(
                    &format!("the {new} migration to fail half-way"),
                    Duration::from_secs(90),
                    || {
                        self.cluster
                            .get(&temp)
                            .is_some_and(|v| v["count"].as_u64().is_some())
                    },
                )
            }
            Upgrade::FailsCompatibleMigration => {
                let alias = format!("_alias/.kibana_{new}");
                wait_for(
                    &format!("the {new} compatible migration to fail half-way"),
                    Duration::from_secs(90),
                    || {
                        // The version alias on the old index and a unit that failed at least once.
                        self.cluster.get(&alias).is_some_and(|v| {
                            v.as_object()
                                .is_some_and(|m| !m.is_empty() && m.get("error").is_none())
                        }) && self.each().all(|(_, h)| {
                            h.exec_ok(&["systemctl", "show", "-P", "NRestarts", "kibana.service"])
                                .trim()
                                .parse::<u32>()
                                .unwrap_or(0)
                                >= 1
                                || unit_state(h, "kibana.service") == "failed"
                        })
                    },
                )
            }
            Upgrade::Hangs => wait_for(
                &format!("every {new} instance running, waiting"),
                Duration::from_secs(60),
                || {
                    self.each()
                        .all(|(_, h)| unit_state(h, "kibana.service") == "active")
                },
            ),
        }
    }

    /// Upgrades agent host `i` to NEW as an admin does: Kibana stopped, kibana.yml for the
    /// new version (`how`), the package upgraded with apt (the package hook off: detection
    /// watches an upgrade nobody prepared for), Kibana started.
    pub fn upgrade_host(&self, i: usize, how: KibanaYml) {
        let h = self.host(i);
        h.exec_ok(&["systemctl", "stop", "kibana.service"]);
        self.write_kibana_yml(i, how);
        install_unguarded(h, &self.spec.new);
        h.exec_ok(&["systemctl", "start", "kibana.service"]);
    }

    pub fn wait_registered(&self) {
        let ids =
            json!({"ids": self.names.iter().map(|n| format!("host-{n}")).collect::<Vec<_>>()})
                .to_string();
        let url = format!("{}/{}/_mget", self.cluster.url(), self.index);
        wait_for("every agent registered", Duration::from_secs(60), || {
            let out = Command::new("curl")
                .args([
                    "-s",
                    &url,
                    "-H",
                    "content-type: application/json",
                    "-d",
                    &ids,
                ])
                .output()
                .unwrap();
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            v["docs"].as_array().is_some_and(|d| {
                d.iter().filter(|x| x["found"] == true).count() == self.names.len()
            })
        });
    }

    /// Host `i`'s Kibana status: (HTTP code, body), with the status user's credentials on a
    /// secured fleet, in the v8 format from a 7.x Kibana.
    pub fn kibana_status(&self, i: usize, version_hint: &str) -> Option<(u16, Value)> {
        let m = &self.members[i];
        let query = if is_7x(version_hint) {
            "?v8format=true"
        } else {
            ""
        };
        let url = format!("http://127.0.0.1:{}/api/status{query}", m.port);
        let mut args = vec!["-s", "-m", "5", "-w", "\n%{http_code}"];
        let creds = format!("{STATUS_USER}:{STATUS_PASSWORD}");
        if self.spec.secured {
            args.extend(["-u", &creds]);
        }
        args.push(&url);
        let out = Command::new("curl").args(&args).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n')?;
        Some((
            code.trim().parse().ok()?,
            serde_json::from_str(body).unwrap_or(Value::Null),
        ))
    }

    pub fn wait_available(&self, i: usize, version: &str) {
        let m = &self.members[i];
        wait_for(
            &format!(
                "kibana on {} (port {}) available at {version}",
                m.name, m.port
            ),
            Duration::from_secs(90),
            || {
                matches!(self.kibana_status(i, version), Some((200, v))
                    if v["version"]["number"] == version
                        && v["status"]["overall"]["level"] == "available")
            },
        );
    }

    /// The operation document (the lock), if one exists.
    pub fn operation_doc(&self) -> Option<Value> {
        let v = self
            .cluster
            .get(&format!("{}/_doc/operation", self.index))?;
        (v["found"] == true).then(|| v["_source"].clone())
    }

    /// The fleet's rollback point document (`prepare`), if one exists.
    pub fn rollback_point_doc(&self) -> Option<Value> {
        let v = self
            .cluster
            .get(&format!("{}/_doc/rollback-point", self.index))?;
        (v["found"] == true).then(|| v["_source"].clone())
    }

    /// Finished operations (`history-*` documents).
    pub async fn history(&self) -> Vec<Value> {
        self.cluster
            .raw("POST", &format!("{}/_refresh", self.index), None)
            .await;
        let (_, hist) = self
            .cluster
            .raw(
                "POST",
                &format!("{}/_search", self.index),
                Some(json!({"size": 50})),
            )
            .await;
        hist["hits"]["hits"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|h| h["_id"].as_str().unwrap_or("").starts_with("history-"))
            .map(|h| h["_source"].clone())
            .collect()
    }

    pub async fn snapshot_names(&self) -> Vec<String> {
        let (_, v) = self
            .cluster
            .raw("GET", &format!("_snapshot/{}/_all", self.repo), None)
            .await;
        let mut names: Vec<String> = v["snapshots"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|s| s["snapshot"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    }

    pub async fn restores(&self) -> Vec<Value> {
        self.cluster.restores_of(&self.repo).await
    }

    /// `systemctl start kibana-rollback.service` on the first host, as an operator triggers the
    /// rollback: (whether the unit succeeded, how long it took, the trigger's journal).
    pub fn trigger(&self) -> (bool, Duration, String) {
        let h = self.first();
        let started = Instant::now();
        let out = h.exec(&["systemctl", "start", "kibana-rollback.service"]);
        let took = started.elapsed();
        let journal = self.journal(h, "kibana-rollback.service");
        self.log(&format!(
            "trigger finished ({}) after {:.1}s:\n{journal}",
            out.status,
            took.as_secs_f64()
        ));
        (out.status.success(), took, journal)
    }

    /// Starts the trigger unit on the first host without waiting (`--no-block`).
    pub fn trigger_no_block(&self) -> Instant {
        self.first().exec_ok(&[
            "systemctl",
            "start",
            "--no-block",
            "kibana-rollback.service",
        ]);
        Instant::now()
    }

    /// Waits until the trigger unit started by [`Self::trigger_no_block`] has finished:
    /// (whether it succeeded, its journal).
    pub fn wait_trigger(&self, timeout: Duration) -> (bool, String) {
        let h = self.first();
        // Activating until the oneshot's ExecStart returns; then inactive (success) or failed.
        std::thread::sleep(Duration::from_millis(500));
        wait_for("the trigger unit to finish", timeout, || {
            let state = unit_state(h, "kibana-rollback.service");
            state == "inactive" || state == "failed"
        });
        let result = h.exec_ok(&[
            "systemctl",
            "show",
            "-P",
            "Result",
            "kibana-rollback.service",
        ]);
        let journal = self.journal(h, "kibana-rollback.service");
        self.log(&format!("trigger finished ({}):\n{journal}", result.trim()));
        (result.trim() == "success", journal)
    }

    /// The operation document and every agent's journal tail, for a wait that timed out.
    pub fn operation_and_journals(&self) -> String {
        format!(
            "operation: {}\nagents:\n{}",
            self.operation_doc().unwrap_or(Value::Null),
            self.agent_journals()
        )
    }

    /// Waits until the operation is in one of `phases`; returns the operation document.
    pub fn wait_phase(&self, phases: &[&str], timeout: Duration) -> Value {
        let mut doc = Value::Null;
        wait_for_explained(
            &format!("the operation in {phases:?}"),
            timeout,
            || match self.operation_doc() {
                Some(op) if phases.iter().any(|p| op["phase"] == *p) => {
                    doc = op;
                    true
                }
                _ => false,
            },
            || self.operation_and_journals(),
        );
        doc
    }

    /// Every agent host still on NEW with its unit running (or crash-looping, as a Kibana whose
    /// migration failed does): never stopped by the operation (that would be inactive).
    pub fn assert_untouched(&self) {
        for (_, h) in self.each() {
            assert_eq!(
                h.exec_ok(&["dpkg-query", "-W", "-f", "${Version}", "kibana"]),
                self.spec.new,
                "{}",
                h.name
            );
            let state = unit_state(h, "kibana.service");
            assert!(
                matches!(state.as_str(), "active" | "activating" | "failed"),
                "{}: kibana.service is {state}",
                h.name
            );
            let enabled = String::from_utf8_lossy(
                &h.exec(&["systemctl", "is-enabled", "kibana.service"])
                    .stdout,
            )
            .trim()
            .to_string();
            assert_ne!(enabled, "masked", "{}: kibana.service left masked", h.name);
            assert!(
                !h.root
                    .join("etc/systemd/system/kibana.service.d/zz-kibana-rollback-hold.conf")
                    .exists(),
                "{}: the start hold was left behind",
                h.name
            );
        }
    }

    /// Every agent host on OLD: installed and held, the hold lifted, unit active, Kibana
    /// available at OLD (7.x: from its unit in /etc/systemd/system).
    pub fn assert_rolled_back(&self) {
        let old = &self.spec.old;
        for (i, h) in self.each() {
            let v = h.exec_ok(&["dpkg-query", "-W", "-f", "${Version}", "kibana"]);
            assert_eq!(&v, old, "{}", h.name);
            let held = h.exec_ok(&["apt-mark", "showhold"]);
            assert!(
                held.lines().any(|l| l == "kibana"),
                "{}: kibana not held: {held}",
                h.name
            );
            assert!(
                !h.root
                    .join("etc/systemd/system/kibana.service.d/zz-kibana-rollback-hold.conf")
                    .exists(),
                "{}: the start hold was not lifted",
                h.name
            );
            assert_eq!(unit_state(h, "kibana.service"), "active", "{}", h.name);
            if is_7x(old) {
                assert_eq!(
                    self.unit_fragment(h),
                    "/etc/systemd/system/kibana.service",
                    "{}: the 7.x unit",
                    h.name
                );
            }
            let (code, status) = self.kibana_status(i, old).expect("status answers");
            assert_eq!(code, 200, "{}: {status}", h.name);
            assert_eq!(status["version"]["number"], old.as_str(), "{}", h.name);
            let level = status["status"]["overall"]["level"].as_str().unwrap_or("");
            assert!(
                level == "available" || level == "degraded",
                "{}: {status}",
                h.name
            );
        }
    }

    /// What every matrix scenario checks after a rollback the trigger reported `done`: the
    /// operation archived `done` and the lock released; exactly one restore, of the pre-upgrade
    /// snapshot, by the node's own count; the kibana feature state equal to the snapshot's; the
    /// safety snapshot taken; every host on OLD, held, available; `status --json` agreeing.
    /// Returns the operation.
    pub async fn assert_done(&self, support: &mut Support) -> Value {
        let s = self
            .cluster
            .get(&format!("{}/_doc/operation", self.index))
            .map(|v| v["found"] == true);
        assert_eq!(
            s,
            Some(false),
            "the operation document (the lock) must be gone"
        );
        let history = self.history().await;
        assert_eq!(history.len(), 1, "{history:?}");
        let op = history[0].clone();
        assert_eq!(op["phase"], "done", "{op}\n{}", self.agent_journals());
        support.check("operation done");

        let restores = self.restores().await;
        assert_eq!(restores.len(), 1, "{restores:?}");
        assert_eq!(restores[0]["snapshot"], "pre-upgrade", "{restores:?}");
        assert_eq!(restores[0]["outcome"], "ok", "{restores:?}");
        support.check("exactly one restore (node's counter)");

        let after = self.cluster.kibana_state().await;
        assert_eq!(
            after, self.before,
            "the kibana feature state must be the pre-upgrade snapshot's"
        );
        support.check("restored state = snapshot's");

        let op_id = op["id"].as_str().unwrap();
        let safety = format!("kibana-rollback-pre-{op_id}");
        let (s, snap) = self
            .cluster
            .raw("GET", &format!("_snapshot/{}/{safety}", self.repo), None)
            .await;
        assert_eq!(s, 200, "{snap}");
        assert_eq!(snap["snapshots"][0]["state"], "SUCCESS", "{snap}");
        if self.spec.upgrade == Upgrade::FailsMigration {
            let fs = snap["snapshots"][0]["feature_states"].to_string();
            assert!(
                fs.contains(&format!(".kibana_{}_reindex_temp", self.spec.new)),
                "the safety snapshot should hold the failed {} state: {fs}",
                self.spec.new
            );
        }
        support.check("safety snapshot of the failed state");

        self.assert_rolled_back();
        support.check(&format!("every host on {}, held, available", self.spec.old));

        let st = self.first().exec_ok(&[AGENT_BIN, "--json", "status"]);
        let st: Value =
            serde_json::from_str(&st).unwrap_or_else(|e| panic!("status --json: {e}: {st}"));
        for h in st["hosts"].as_array().unwrap() {
            assert_eq!(h["installed_version"], self.spec.old.as_str(), "{st}");
        }
        op
    }

    pub async fn teardown(self) {
        for (_, h) in self.each() {
            let _ = h.exec(&[
                "systemctl",
                "stop",
                "kibana-rollbackd.service",
                "kibana.service",
            ]);
        }
        for m in self.members.iter().filter(|m| !m.agent) {
            let _ = self
                .hosts
                .get(&m.name)
                .exec(&["systemctl", "stop", "kibana.service"]);
        }
        self.cluster.raw("DELETE", &self.index, None).await;
        self.log("torn down");
    }
}

/// How a kibana.yml runs Kibana.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KibanaYml {
    /// Serving, against the cluster.
    Serving,
    /// This version's migration fails half-way (batches of 2) on the reindex or compatible path.
    FailingMigration { compatible: bool },
    /// Against an Elasticsearch that is not there (a closed port): running, never ready.
    Hanging,
    /// Serving, but its migration (the reindex path) takes batches of one document and pauses
    /// this long (ms) after each: slow, logging progress all along.
    SlowMigration { batch_delay_ms: u64 },
}

pub fn install(h: &TestHost, version: &str) {
    apt_install(h, &format!("kibana={version}"));
}

/// [`install`] with the package hook off for this run (`KIBANA_ROLLBACK_HOOK=off`): the
/// upgrades the harness stages as an operator who never ran `prepare` would (before the agents
/// are up, or to watch detection), which the hook would otherwise refuse or prepare for.
pub fn install_unguarded(h: &TestHost, version: &str) {
    apt_install_env(
        h,
        &[HOOK_OFF],
        &["--allow-downgrades"],
        &format!("kibana={version}"),
    );
}

/// The environment that turns the package hook off for one apt run.
pub const HOOK_OFF: &str = "KIBANA_ROLLBACK_HOOK=off";

pub fn apt_install(h: &TestHost, what: &str) {
    apt_install_with(h, &["--allow-downgrades"], what);
}

/// `apt-get install WHAT` with `options` (e.g. `--allow-change-held-packages` for a package
/// a rollback held), keeping local config edits.
pub fn apt_install_with(h: &TestHost, options: &[&str], what: &str) {
    apt_install_env(h, &[], options, what);
}

/// [`apt_install_with`] with `env` (`NAME=value`) in apt's environment (and its hooks').
pub fn apt_install_env(h: &TestHost, env: &[&str], options: &[&str], what: &str) {
    h.exec_ok(&apt_install_cmd(env, options, what));
}

/// The `apt-get install` command line of [`apt_install_env`], for a test that checks its failure.
pub fn apt_install_cmd<'a>(env: &[&'a str], options: &[&'a str], what: &'a str) -> Vec<&'a str> {
    let mut cmd = vec!["env", "DEBIAN_FRONTEND=noninteractive"];
    cmd.extend_from_slice(env);
    cmd.extend(["apt-get", "install", "-y", "-qq"]);
    cmd.extend_from_slice(options);
    cmd.extend(["-o", "Dpkg::Options::=--force-confold", what]);
    cmd
}

/// `systemctl is-active UNIT` inside the host.
pub fn unit_state(h: &TestHost, unit: &str) -> String {
    String::from_utf8_lossy(&h.exec(&["systemctl", "is-active", unit]).stdout)
        .trim()
        .to_string()
}

pub fn wait_for(what: &str, timeout: Duration, ok: impl FnMut() -> bool) {
    assert!(
        wait_until(timeout, ok),
        "timed out after {timeout:?} waiting for {what}"
    );
}

/// [`wait_for`], with what `context` says (documents, journals) in the panic when it times out,
/// so a failure on a loaded CI machine can be read from its log alone.
pub fn wait_for_explained(
    what: &str,
    timeout: Duration,
    ok: impl FnMut() -> bool,
    context: impl FnOnce() -> String,
) {
    if !wait_until(timeout, ok) {
        panic!(
            "timed out after {timeout:?} waiting for {what}\n{}",
            context()
        );
    }
}

/// Whether `ok` became true within `timeout` (polled every 250 ms).
pub fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    true
}

// ---- the support table's records -------------------------------------------------------------

/// What one scenario ran and how it ended, for the support table: written to
/// `$KR_TEST_STATE/support/<id>.json` when the scenario passes ([`Support::pass`]), or as
/// `fail` when it panicked before. `scripts/support-table` renders every record into
/// docs/support.md.
pub struct Support {
    id: String,
    scenario: String,
    es: Vec<String>,
    nodes: usize,
    kibana: (String, String),
    upgrade: String,
    checks: Vec<String>,
    started: Instant,
    written: bool,
}

impl Support {
    /// `id` orders the table and names the record; `es` the cluster's node versions.
    pub fn new(
        id: &str,
        scenario: &str,
        es: &[String],
        nodes: usize,
        old: &str,
        new: &str,
    ) -> Support {
        Support {
            id: id.into(),
            scenario: scenario.into(),
            es: es.to_vec(),
            nodes,
            kibana: (old.into(), new.into()),
            upgrade: String::new(),
            checks: vec![],
            started: Instant::now(),
            written: false,
        }
    }

    /// A record for a staged fleet's scenario.
    pub async fn for_fleet(id: &str, scenario: &str, f: &Fleet) -> Support {
        let mut s = Support::new(
            id,
            scenario,
            &f.cluster.versions().await,
            f.cluster.urls().len(),
            f.old(),
            f.upgraded_to(),
        );
        s.upgrade = f.spec.upgrade.describe().into();
        s
    }

    pub fn upgrade(&mut self, how: &str) {
        self.upgrade = how.into();
    }

    /// One thing the scenario verified (short, for the table).
    pub fn check(&mut self, what: &str) {
        if !self.checks.iter().any(|c| c == what) {
            self.checks.push(what.into());
        }
    }

    pub fn pass(mut self) {
        self.write("pass");
    }

    fn write(&mut self, outcome: &str) {
        self.written = true;
        let dir = state_root().join("support");
        let _ = std::fs::create_dir_all(&dir);
        let record = json!({
            "id": self.id,
            "scenario": self.scenario,
            "elasticsearch": self.es,
            "nodes": self.nodes,
            "kibana_old": self.kibana.0,
            "kibana_new": self.kibana.1,
            "upgrade": self.upgrade,
            "checks": self.checks,
            "outcome": outcome,
            "seconds": self.started.elapsed().as_secs(),
            "finished_at": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        });
        let path = dir.join(format!("{}.json", self.id));
        if let Err(e) = std::fs::write(&path, serde_json::to_string_pretty(&record).unwrap()) {
            eprintln!("support record {}: {e}", path.display());
        }
    }
}

impl Drop for Support {
    fn drop(&mut self) {
        if !self.written && std::thread::panicking() {
            self.write("fail");
        }
    }
}

/// Makes `path` inside host `h` readable as a `Path` from outside.
pub fn host_path(h: &TestHost, path: &str) -> PathBuf {
    h.root.join(path.trim_start_matches('/'))
}

/// Whether a file exists inside host `h`.
pub fn host_file_exists(h: &TestHost, path: &str) -> bool {
    Path::new(&host_path(h, path)).exists()
}
