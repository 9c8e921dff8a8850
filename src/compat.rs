//! Kibana's own compatibility rule between a Kibana version and the Elasticsearch nodes: same
//! major, and every node's minor at least Kibana's; patch is ignored; any other difference that
//! is still compatible is a warning. Checked against **every** node, as Kibana does.

use semver::Version;
use serde::Serialize;

use crate::es::NodeInfo;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Compatible,
    /// Compatible, but not the same version (Kibana logs a warning).
    Warning {
        reason: String,
    },
    Incompatible {
        reason: String,
    },
}

/// Applies the rule to one node.
pub fn check(kibana: &Version, es: &Version) -> Verdict {
    if es.major != kibana.major {
        return Verdict::Incompatible {
            reason: format!("Elasticsearch {es} has another major version than Kibana {kibana}"),
        };
    }
    if es.minor < kibana.minor {
        return Verdict::Incompatible {
            reason: format!(
                "Elasticsearch {es} is older than Kibana {kibana} (minor {} < {})",
                es.minor, kibana.minor
            ),
        };
    }
    if es.minor != kibana.minor || es.patch != kibana.patch {
        return Verdict::Warning {
            reason: format!("Elasticsearch {es} differs from Kibana {kibana}; compatible"),
        };
    }
    Verdict::Compatible
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeVerdict {
    pub node: NodeInfo,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// The rule applied to every node of the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub kibana: String,
    pub nodes: Vec<NodeVerdict>,
}

impl Report {
    pub fn new(kibana: &Version, nodes: &[NodeInfo]) -> Self {
        let nodes = nodes
            .iter()
            .map(|n| {
                let verdict = match crate::config::parse_version(&n.version) {
                    Ok(v) => check(kibana, &v),
                    Err(e) => Verdict::Incompatible {
                        reason: format!("node reports version {:?}: {e}", n.version),
                    },
                };
                NodeVerdict {
                    node: n.clone(),
                    verdict,
                }
            })
            .collect();
        Report {
            kibana: kibana.to_string(),
            nodes,
        }
    }

    pub fn compatible(&self) -> bool {
        !self.nodes.is_empty()
            && self
                .nodes
                .iter()
                .all(|n| !matches!(n.verdict, Verdict::Incompatible { .. }))
    }

    /// One line naming every incompatible node, for refusals.
    pub fn refusal(&self) -> Option<String> {
        if self.nodes.is_empty() {
            return Some("Elasticsearch reported no nodes".into());
        }
        let bad: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| match &n.verdict {
                Verdict::Incompatible { reason } => Some(format!(
                    "node {} ({}): {reason}",
                    n.node.name, n.node.version
                )),
                _ => None,
            })
            .collect();
        (!bad.is_empty()).then(|| {
            format!(
                "Kibana {} is not compatible with {}; roll Elasticsearch back first or choose another target",
                self.kibana,
                bad.join(", ")
            )
        })
    }

    /// Every node's verdict on one line (`es1 8.15.0: compatible (warning), ...`).
    pub fn summary(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let v = match &n.verdict {
                    Verdict::Compatible => "compatible",
                    Verdict::Warning { .. } => "compatible (warning)",
                    Verdict::Incompatible { .. } => "INCOMPATIBLE",
                };
                format!("{} {}: {v}", n.node.name, n.node.version)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn warnings(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter_map(|n| match &n.verdict {
                Verdict::Warning { reason } => Some(format!("node {}: {reason}", n.node.name)),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }
    fn node(name: &str, version: &str) -> NodeInfo {
        NodeInfo {
            id: format!("id-{name}"),
            name: name.into(),
            version: version.into(),
        }
    }

    #[test]
    fn table() {
        let cases = [
            // kibana, es, expected
            ("8.14.3", "8.14.3", "compatible"),
            ("8.14.3", "8.14.0", "warning"), // patch ignored, but a difference
            ("8.14.3", "8.15.0", "warning"), // ES newer minor
            ("8.14.3", "8.13.4", "incompatible"), // ES older minor
            ("8.15.0", "8.14.3", "incompatible"),
            ("7.17.20", "8.15.0", "incompatible"), // other major
            ("8.15.0", "9.0.0", "incompatible"),
        ];
        for (kb, es, want) in cases {
            let got = match check(&v(kb), &v(es)) {
                Verdict::Compatible => "compatible",
                Verdict::Warning { .. } => "warning",
                Verdict::Incompatible { .. } => "incompatible",
            };
            assert_eq!(got, want, "kibana {kb} on es {es}");
        }
    }

    #[test]
    fn mixed_version_cluster_is_judged_by_every_node() {
        let nodes = [
            node("es1", "8.15.0"),
            node("es2", "8.14.1"),
            node("es3", "8.15.2"),
        ];
        let ok = Report::new(&v("8.14.3"), &nodes);
        assert!(ok.compatible());
        assert_eq!(ok.warnings().len(), 3);
        let bad = Report::new(&v("8.15.0"), &nodes);
        assert!(!bad.compatible());
        let msg = bad.refusal().unwrap();
        assert!(msg.contains("node es2 (8.14.1)"), "{msg}");
        assert!(!msg.contains("es1"), "{msg}");
    }

    #[test]
    fn garbled_or_missing_versions_are_refused() {
        assert!(!Report::new(&v("8.14.3"), &[node("es1", "")]).compatible());
        assert!(!Report::new(&v("8.14.3"), &[]).compatible());
    }
}
