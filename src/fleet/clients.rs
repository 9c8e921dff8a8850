//! Who still talks to Elasticsearch as Kibana, judged from what every node reports
//! (`_nodes/stats/http`): the evidence the barrier needs before a restore, and that the
//! preflight uses to find a Kibana no agent controls before anything is stopped.
//!
//! Pure: the adapter reads the nodes' client lists ([`ClientStats`]); this decides.
//!
//! * A client is a Kibana when Elasticsearch records its agent as `kibana` (Kibana sends
//!   `x-elastic-product-origin: kibana`, which the node reports as the agent) or `Kibana/<ver>`.
//! * A Kibana is **live** while it holds an open connection: a running Kibana keeps its pool open
//!   and polls (task manager) every few seconds, and a stopped one closes its sockets on exit.
//!   For an expected host that is all: its agent proves its unit stopped. A Kibana **no expected
//!   host claims** has no agent to ask, and one that crash-loops under systemd (a failed
//!   migration: exit 1, restart 3 s later) is connected only for a moment each round — so its
//!   connections closed within [`UNCLAIMED_QUIET_MS`] (on the reporting node's own clock: its
//!   `timestamp` against the connection's last activity) count too: it may be restarting.
//!   Measured end to end: an 8.14.3 left running beside a failed 8.15.0 upgrade crash-loops when
//!   restarted ("The .kibana_task_manager alias is pointing to a newer version of Kibana"), and a
//!   reading of open connections alone let the barrier pass while it did.
//! * A client is attributed to the expected host whose document lists its address
//!   (`client_addresses`); one no expected host claims is a Kibana nobody controls.
//! * The evidence counts only if it can see: every node that is a member answered, and the
//!   reader's own connection is in the list (otherwise client stats are off —
//!   `http.client_stats.enabled: false` — or the cluster predates them, 7.13). Else
//!   [`ClientsVerdict::CannotVerify`]: refused unless the operator turned the check off.
//! * A member node that does not answer (hung, or stopping) hides its clients. The preflight
//!   refuses (nothing is stopped yet); the barrier waits ([`ClientsVerdict::NodesSilent`]),
//!   bounded by its timeout, until the node answers or the master has removed it from the
//!   cluster — a node that has left is not a member, so it is not judged (a Kibana connected
//!   only to it cannot reach the cluster either).

use serde::{Deserialize, Serialize};

use super::doc::HostDoc;

/// How long a Kibana no expected host claims must have been quiet (no connection activity, on
/// its node's clock) before its closed connections stop counting: longer than a crash-looping
/// Kibana's round under Elastic's unit (`RestartSec=3` plus start-up until it connects).
pub const UNCLAIMED_QUIET_MS: i64 = 30_000;

/// One HTTP client as one node reports it (times on that node's clock, ms).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenClient {
    pub node: String,
    /// `ip:port` as the node saw it.
    pub remote_address: String,
    pub agent: String,
    pub last_request_ms: i64,
    pub closed_ms: Option<i64>,
    pub last_uri: String,
    /// When the connection was opened (0: not reported).
    #[serde(default)]
    pub opened_ms: i64,
    /// The reporting node's clock when it answered (its `timestamp`; 0: not reported).
    #[serde(default)]
    pub node_time_ms: i64,
}

impl SeenClient {
    /// How long ago, on its node's clock, a closed connection last did anything (`None`: open,
    /// or the node did not report its time).
    pub fn closed_ago_ms(&self) -> Option<i64> {
        let closed = self.closed_ms?;
        if self.node_time_ms <= 0 {
            return None;
        }
        let last = closed.max(self.last_request_ms).max(self.opened_ms);
        Some((self.node_time_ms - last).max(0))
    }
    pub fn is_kibana(&self) -> bool {
        self.agent == "kibana" || self.agent.starts_with("Kibana/")
    }
    /// The address without the port (`[::1]:5601` → `::1`).
    pub fn ip(&self) -> &str {
        ip_of(&self.remote_address)
    }
}

/// What the adapter read: every node's clients, and whether the reading can be trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStats {
    /// `_nodes.total` and `_nodes.failed` of the answer.
    pub nodes_total: u32,
    pub nodes_failed: u32,
    /// Names of the nodes that did not answer, when known.
    pub failed_nodes: Vec<String>,
    /// The reader's own connection is in the list: found by the nonce its request carries in
    /// `filter_path`, which the stats show as its `last_uri` (a pooled connection keeps the
    /// `X-Opaque-Id` of its first request, so that cannot identify it).
    pub own_connection_seen: bool,
    pub clients: Vec<SeenClient>,
}

/// A Kibana still connected, as the operation document and `status` name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveClient {
    pub address: String,
    pub node: String,
    pub agent: String,
    /// Node clock, ms.
    pub last_request_ms: i64,
    pub last_uri: String,
    /// The expected host whose address it is, if any.
    pub host: Option<String>,
    /// A Kibana no expected host claims whose connection closed this long ago (it may be
    /// restarting); `None`: the connection is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_ago_ms: Option<i64>,
}

impl std::fmt::Display for LiveClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whose = match &self.host {
            Some(h) => format!("{h}'s Kibana"),
            None => "a Kibana no expected host claims".to_string(),
        };
        match self.closed_ago_ms {
            None => write!(
                f,
                "{whose} at {} (agent {:?}, connected to node {}, last request {})",
                self.address, self.agent, self.node, self.last_uri
            ),
            Some(ago) => write!(
                f,
                "{whose} at {} (agent {:?}, node {}, last request {}; its connection closed {}s ago: it may be restarting, so it counts until quiet for {}s)",
                self.address,
                self.agent,
                self.node,
                self.last_uri,
                ago / 1000,
                UNCLAIMED_QUIET_MS / 1000
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientsVerdict {
    /// Nothing stands in the way; the text says what was seen.
    Clear(String),
    /// These Kibanas are live (barrier) or uncontrolled (preflight).
    Waiting(Vec<LiveClient>),
    /// The reading cannot prove anything (why).
    CannotVerify(String),
    /// Barrier only: these member nodes did not answer; wait until they answer or leave.
    NodesSilent(Vec<String>),
}

/// What the judgement is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Before anything stops: the expected hosts' Kibanas run, as they should; a live Kibana
    /// that no expected host claims would keep migrating the restored indices.
    Preflight,
    /// Before the safety snapshot and again right before the restore: no Kibana may be live.
    Barrier,
}

/// The address of `ip:port` without the port (`[::1]:5601` → `::1`).
fn ip_of(a: &str) -> &str {
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match a.rsplit_once(':') {
        Some((ip, port)) if !ip.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => ip,
        _ => a,
    }
}

/// Which expected host (by its document's `client_addresses`) an address belongs to.
fn owner<'a>(ip: &str, expected: &[String], hosts: &'a [HostDoc]) -> Option<&'a str> {
    hosts
        .iter()
        .filter(|h| expected.contains(&h.host_id))
        .find(|h| h.client_addresses.iter().any(|a| a == ip))
        .map(|h| h.host_id.as_str())
}

pub fn judge(
    stats: &ClientStats,
    purpose: Purpose,
    expected: &[String],
    hosts: &[HostDoc],
) -> ClientsVerdict {
    if stats.nodes_failed > 0 && purpose == Purpose::Barrier {
        return ClientsVerdict::NodesSilent(if stats.failed_nodes.is_empty() {
            vec![format!("{} of {}", stats.nodes_failed, stats.nodes_total)]
        } else {
            stats.failed_nodes.clone()
        });
    }
    if stats.nodes_failed > 0 {
        return ClientsVerdict::CannotVerify(format!(
            "{} of {} nodes did not answer _nodes/stats/http{}: a Kibana connected to them cannot be seen",
            stats.nodes_failed,
            stats.nodes_total,
            if stats.failed_nodes.is_empty() {
                String::new()
            } else {
                format!(" ({})", stats.failed_nodes.join(", "))
            }
        ));
    }
    if !stats.own_connection_seen {
        return ClientsVerdict::CannotVerify(
            "the reader's own connection is missing from _nodes/stats/http: client statistics are \
             off (http.client_stats.enabled: false) or the cluster predates them (7.13), so an \
             empty list proves nothing"
                .into(),
        );
    }
    let live: Vec<LiveClient> = stats
        .clients
        .iter()
        .filter(|c| c.is_kibana() && c.closed_ms.is_none())
        .map(|c| LiveClient {
            address: c.remote_address.clone(),
            node: c.node.clone(),
            agent: c.agent.clone(),
            last_request_ms: c.last_request_ms,
            last_uri: c.last_uri.clone(),
            host: owner(c.ip(), expected, hosts).map(str::to_string),
            closed_ago_ms: None,
        })
        .collect();
    // Kibanas no expected host claims, not connected now but active within the quiet time: the
    // most recent connection of each address on each node, unless that address is live.
    let mut restarting: Vec<LiveClient> = vec![];
    for c in stats.clients.iter().filter(|c| c.is_kibana()) {
        let Some(ago) = c.closed_ago_ms().filter(|a| *a < UNCLAIMED_QUIET_MS) else {
            continue;
        };
        if owner(c.ip(), expected, hosts).is_some()
            || live.iter().any(|l| ip_of(&l.address) == c.ip())
        {
            continue;
        }
        let seen = LiveClient {
            address: c.remote_address.clone(),
            node: c.node.clone(),
            agent: c.agent.clone(),
            last_request_ms: c.last_request_ms,
            last_uri: c.last_uri.clone(),
            host: None,
            closed_ago_ms: Some(ago),
        };
        match restarting
            .iter_mut()
            .find(|r| ip_of(&r.address) == c.ip() && r.node == c.node)
        {
            Some(r) if r.closed_ago_ms > seen.closed_ago_ms => *r = seen,
            Some(_) => {}
            None => restarting.push(seen),
        }
    }
    let closed = stats
        .clients
        .iter()
        .filter(|c| c.is_kibana() && c.closed_ms.is_some())
        .count();
    let mut blocking: Vec<LiveClient> = match purpose {
        Purpose::Barrier => live.clone(),
        Purpose::Preflight => live.iter().filter(|c| c.host.is_none()).cloned().collect(),
    };
    blocking.extend(restarting);
    if !blocking.is_empty() {
        return ClientsVerdict::Waiting(blocking);
    }
    ClientsVerdict::Clear(format!(
        "{} node(s) report {} open and {closed} closed Kibana connection(s){}",
        stats.nodes_total,
        live.len(),
        if purpose == Purpose::Preflight && !live.is_empty() {
            ", each from an expected host"
        } else {
            ""
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::UnitState;

    fn client(node: &str, addr: &str, agent: &str, closed: bool) -> SeenClient {
        SeenClient {
            node: node.into(),
            remote_address: addr.into(),
            agent: agent.into(),
            last_request_ms: 1000,
            closed_ms: closed.then_some(2000),
            last_uri: "/_bulk".into(),
            ..Default::default()
        }
    }
    impl SeenClient {
        fn with_closed(mut self, at: i64) -> SeenClient {
            self.closed_ms = Some(at);
            self
        }
    }
    fn host(id: &str, addrs: &[&str]) -> HostDoc {
        HostDoc {
            format: crate::fleet::FORMAT,
            host_id: id.into(),
            agent_version: "t".into(),
            unit_state: UnitState::Inactive,
            installed_version: None,
            held: false,
            heartbeat: 1,
            ack: None,
            install_history: None,
            machine: None,
            probe_answered: 0,
            client_addresses: addrs.iter().map(|a| a.to_string()).collect(),
            readiness: None,
            kibana_started: None,
            detection: None,
        }
    }
    fn stats(clients: Vec<SeenClient>) -> ClientStats {
        ClientStats {
            nodes_total: 2,
            nodes_failed: 0,
            failed_nodes: vec![],
            own_connection_seen: true,
            clients,
        }
    }
    fn ids() -> Vec<String> {
        vec!["kb1".into(), "kb2".into()]
    }

    #[test]
    fn the_barrier_waits_for_every_open_kibana_connection_on_any_node() {
        let hosts = [host("kb1", &["10.0.0.1"]), host("kb2", &["10.0.0.2"])];
        let s = stats(vec![
            client("es1", "10.0.0.1:50000", "kibana", true),
            client("es2", "10.0.0.2:50001", "Kibana/8.15.0", false),
            client("es1", "10.0.0.3:50002", "Logstash/8.15.0", false),
            client("es1", "10.0.0.9:50003", "kibana-rollback/0.1.0", false),
        ]);
        match judge(&s, Purpose::Barrier, &ids(), &hosts) {
            ClientsVerdict::Waiting(w) => {
                assert_eq!(w.len(), 1);
                assert_eq!(w[0].host.as_deref(), Some("kb2"));
                assert_eq!(w[0].node, "es2");
                assert!(w[0]
                    .to_string()
                    .starts_with("kb2's Kibana at 10.0.0.2:50001"));
            }
            v => panic!("{v:?}"),
        }
        let all_closed = stats(vec![client("es1", "10.0.0.1:50000", "kibana", true)]);
        assert!(matches!(
            judge(&all_closed, Purpose::Barrier, &ids(), &hosts),
            ClientsVerdict::Clear(_)
        ));
    }

    #[test]
    fn the_preflight_names_a_kibana_no_expected_host_claims() {
        let hosts = [host("kb1", &["10.0.0.1"]), host("kb2", &["10.0.0.2"])];
        let s = stats(vec![
            client("es1", "10.0.0.1:50000", "kibana", false),
            client("es1", "10.0.0.7:50009", "kibana", false),
        ]);
        match judge(&s, Purpose::Preflight, &ids(), &hosts) {
            ClientsVerdict::Waiting(w) => {
                assert_eq!(w.len(), 1);
                assert_eq!(w[0].host, None);
                assert!(w[0].to_string().contains("no expected host claims"));
            }
            v => panic!("{v:?}"),
        }
        // The expected hosts' own Kibanas are expected to run before anything stops.
        let ours = stats(vec![client("es1", "10.0.0.1:50000", "kibana", false)]);
        assert!(matches!(
            judge(&ours, Purpose::Preflight, &ids(), &hosts),
            ClientsVerdict::Clear(_)
        ));
    }

    #[test]
    fn an_empty_list_proves_nothing_unless_the_reader_sees_itself_and_every_node_answered() {
        let mut s = stats(vec![]);
        s.own_connection_seen = false;
        assert!(matches!(
            judge(&s, Purpose::Barrier, &ids(), &[]),
            ClientsVerdict::CannotVerify(w) if w.contains("client_stats.enabled")
        ));
        // A member that does not answer: the preflight refuses, the barrier waits for it.
        let mut s = stats(vec![]);
        s.nodes_failed = 1;
        s.failed_nodes = vec!["es3".into()];
        assert!(matches!(
            judge(&s, Purpose::Preflight, &ids(), &[]),
            ClientsVerdict::CannotVerify(w) if w.contains("es3")
        ));
        assert_eq!(
            judge(&s, Purpose::Barrier, &ids(), &[]),
            ClientsVerdict::NodesSilent(vec!["es3".into()])
        );
    }

    #[test]
    fn an_unclaimed_kibana_that_closed_its_connection_moments_ago_may_be_restarting() {
        let hosts = [host("kb1", &["10.0.0.1"]), host("kb2", &["10.0.0.2"])];
        let at = |addr: &str, closed: i64, node_time: i64| {
            SeenClient {
                node_time_ms: node_time,
                last_request_ms: closed,
                ..client("es1", addr, "kibana", true)
            }
            .with_closed(closed)
        };
        // A crash-looping stray: its last connection closed 5 s ago (node clock). Both the
        // preflight and the barrier count it, once per address, the most recent connection.
        let s = stats(vec![
            at("10.0.0.7:50001", 1_000, 10_000),
            at("10.0.0.7:50002", 5_000, 10_000),
            at("10.0.0.1:50003", 9_000, 10_000),
        ]);
        for purpose in [Purpose::Preflight, Purpose::Barrier] {
            match judge(&s, purpose, &ids(), &hosts) {
                ClientsVerdict::Waiting(w) => {
                    assert_eq!(w.len(), 1, "{w:?}");
                    assert_eq!(w[0].address, "10.0.0.7:50002");
                    assert_eq!(w[0].closed_ago_ms, Some(5_000));
                    let text = w[0].to_string();
                    assert!(
                        text.contains("closed 5s ago: it may be restarting"),
                        "{text}"
                    );
                }
                v => panic!("{purpose:?}: {v:?}"),
            }
        }
        // Quiet for longer than UNCLAIMED_QUIET_MS, or the node's time unknown: it is gone.
        let quiet = stats(vec![at(
            "10.0.0.7:50002",
            5_000,
            5_000 + UNCLAIMED_QUIET_MS,
        )]);
        assert!(matches!(
            judge(&quiet, Purpose::Barrier, &ids(), &hosts),
            ClientsVerdict::Clear(_)
        ));
        let unknown = stats(vec![at("10.0.0.7:50002", 5_000, 0)]);
        assert!(matches!(
            judge(&unknown, Purpose::Barrier, &ids(), &hosts),
            ClientsVerdict::Clear(_)
        ));
        // An expected host's closed connection never counts: its agent proves the unit stopped.
        let ours = stats(vec![at("10.0.0.2:50002", 9_999, 10_000)]);
        assert!(matches!(
            judge(&ours, Purpose::Barrier, &ids(), &hosts),
            ClientsVerdict::Clear(_)
        ));
    }

    #[test]
    fn addresses_drop_their_port() {
        assert_eq!(client("n", "10.0.0.1:5601", "k", false).ip(), "10.0.0.1");
        assert_eq!(client("n", "[::1]:5601", "k", false).ip(), "::1");
        assert_eq!(client("n", "127.0.0.3", "k", false).ip(), "127.0.0.3");
    }
}
