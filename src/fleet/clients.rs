//! Who still talks to Elasticsearch as Kibana, judged from what every node reports
//! (`_nodes/stats/http`): the evidence the barrier needs before a restore, and that the
//! preflight uses to find a Kibana no agent controls before anything is stopped.
//!
//! Pure: the adapter reads the nodes' client lists ([`ClientStats`]); this decides.
//!
//! * A client is a Kibana when Elasticsearch records its agent as `kibana` (Kibana sends
//!   `x-elastic-product-origin: kibana`, which the node reports as the agent) or `Kibana/<ver>`.
//! * A Kibana is **live** while it holds an open connection: a running Kibana keeps its pool open
//!   and polls (task manager) every few seconds, and a stopped one closes its sockets on exit. No
//!   time window is involved — closed connections stay listed for minutes and prove nothing more.
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

/// One HTTP client as one node reports it (times on that node's clock, ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenClient {
    pub node: String,
    /// `ip:port` as the node saw it.
    pub remote_address: String,
    pub agent: String,
    pub last_request_ms: i64,
    pub closed_ms: Option<i64>,
    pub last_uri: String,
}

impl SeenClient {
    pub fn is_kibana(&self) -> bool {
        self.agent == "kibana" || self.agent.starts_with("Kibana/")
    }
    /// The address without the port (`[::1]:5601` → `::1`).
    pub fn ip(&self) -> &str {
        let a = self.remote_address.as_str();
        if let Some(rest) = a.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        match a.rsplit_once(':') {
            Some((ip, port)) if !ip.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => ip,
            _ => a,
        }
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
    /// The reader's own connection (found by its `X-Opaque-Id`) is in the list.
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
}

impl std::fmt::Display for LiveClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whose = match &self.host {
            Some(h) => format!("{h}'s Kibana"),
            None => "a Kibana no expected host claims".to_string(),
        };
        write!(
            f,
            "{whose} at {} (agent {:?}, connected to node {}, last request {})",
            self.address, self.agent, self.node, self.last_uri
        )
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
        })
        .collect();
    let closed = stats
        .clients
        .iter()
        .filter(|c| c.is_kibana() && c.closed_ms.is_some())
        .count();
    let blocking: Vec<LiveClient> = match purpose {
        Purpose::Barrier => live.clone(),
        Purpose::Preflight => live.iter().filter(|c| c.host.is_none()).cloned().collect(),
    };
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
    fn addresses_drop_their_port() {
        assert_eq!(client("n", "10.0.0.1:5601", "k", false).ip(), "10.0.0.1");
        assert_eq!(client("n", "[::1]:5601", "k", false).ip(), "::1");
        assert_eq!(client("n", "127.0.0.3", "k", false).ip(), "127.0.0.3");
    }
}
