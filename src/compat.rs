//! Kibana's own compatibility rule between a Kibana version and the Elasticsearch nodes, as
//! Kibana's `es_kibana_version_compatability.ts` has it (with `ensure_es_version.ts` for what it
//! warns about), checked against **every** node as Kibana does:
//!
//! * the last minor of a major accepts the next Elasticsearch major: Kibana 7.17 accepts ES 8.x
//!   (kibana#122627), 8.18 and so 8.19 accept ES 9.x ("On 8.18: Accept the next major version of
//!   ES") — exactly the rollbacks after a failed major upgrade, where ES went first;
//! * otherwise the majors must match and the node's minor must be at least Kibana's (patch is
//!   ignored);
//! * a compatible node whose version differs from Kibana's after `coerce` (qualifiers such as
//!   `-SNAPSHOT` dropped) is a warning, as Kibana logs one.

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

/// The last minors that accept the next Elasticsearch major: `(major, first minor)`.
const NEXT_MAJOR_FROM: &[(u64, u64)] = &[(7, 17), (8, 18)];

/// Whether Kibana `kibana` accepts Elasticsearch of major `kibana.major + 1`.
pub fn accepts_next_major(kibana: &Version) -> bool {
    NEXT_MAJOR_FROM
        .iter()
        .any(|&(major, minor)| kibana.major == major && kibana.minor >= minor)
}

/// semver's `coerce`: the first `major[.minor[.patch]]` in the text, qualifiers dropped.
pub fn coerce(text: &str) -> Option<Version> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let mut parts = text[start..]
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()?
        .split('.')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u64>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some(Version::new(major, minor, patch))
}

/// Applies the rule to one node.
pub fn check(kibana: &Version, es: &Version) -> Verdict {
    let (kb, es) = (
        Version::new(kibana.major, kibana.minor, kibana.patch),
        Version::new(es.major, es.minor, es.patch),
    );
    let next_major = es.major == kb.major + 1 && accepts_next_major(&kb);
    if next_major {
        return Verdict::Warning {
            reason: format!(
                "Elasticsearch {es} is the next major of Kibana {kb}, which {}.{} accepts; compatible",
                kb.major, kb.minor
            ),
        };
    }
    if es.major != kb.major {
        let hint = if es.major == kb.major + 1 {
            format!(
                " (only the last minor of a major accepts the next: {})",
                NEXT_MAJOR_FROM
                    .iter()
                    .filter(|(m, _)| *m == kb.major)
                    .map(|(m, n)| format!("Kibana {m}.{n}+ on ES {}.x", m + 1))
                    .next()
                    .unwrap_or_else(|| format!("none is known for Kibana {}.x", kb.major))
            )
        } else {
            String::new()
        };
        return Verdict::Incompatible {
            reason: format!("Elasticsearch {es} has another major version than Kibana {kb}{hint}"),
        };
    }
    if es.minor < kb.minor {
        return Verdict::Incompatible {
            reason: format!(
                "Elasticsearch {es} is older than Kibana {kb} (minor {} < {})",
                es.minor, kb.minor
            ),
        };
    }
    if es != kb {
        return Verdict::Warning {
            reason: format!("Elasticsearch {es} differs from Kibana {kb}; compatible"),
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
                let verdict = match coerce(&n.version) {
                    Some(v) => check(kibana, &v),
                    None => Verdict::Incompatible {
                        reason: format!("node reports version {:?}: not a version", n.version),
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

    fn verdict(kb: &str, es: &str) -> &'static str {
        match check(&v(kb), &coerce(es).unwrap()) {
            Verdict::Compatible => "compatible",
            Verdict::Warning { .. } => "warning",
            Verdict::Incompatible { .. } => "incompatible",
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
            ("8.15.0", "9.0.0", "incompatible"), // next major only from 8.18
            ("8.17.9", "9.2.2", "incompatible"),
            ("7.16.3", "8.15.0", "incompatible"), // next major only from 7.17
            // the next-major exception: the last minor of a major accepts the next ES major
            ("7.17.29", "8.15.0", "warning"),
            ("7.17.0", "8.0.0", "warning"),
            ("7.17.28", "8.19.21", "warning"),
            ("8.18.8", "9.0.8", "warning"),
            ("8.19.21", "9.2.2", "warning"),
            ("8.19.21", "9.9.0", "warning"),
            // never two majors, never backwards
            ("7.17.29", "9.2.2", "incompatible"),
            ("8.19.21", "10.0.0", "incompatible"),
            ("9.2.2", "8.19.21", "incompatible"),
            ("9.1.7", "9.2.2", "warning"),
            ("9.2.2", "9.1.7", "incompatible"),
            ("9.2.2", "10.0.0", "incompatible"), // no exception known for 9.x
            // qualifiers are dropped (coerce), as Kibana does
            ("8.15.0", "8.15.0-SNAPSHOT", "compatible"),
            ("8.19.21", "9.3.0-SNAPSHOT", "warning"),
            ("8.14.3", "8.13.0-rc1", "incompatible"),
        ];
        for (kb, es, want) in cases {
            assert_eq!(verdict(kb, es), want, "kibana {kb} on es {es}");
        }
    }

    #[test]
    fn a_pre_release_kibana_is_judged_by_its_numbers() {
        assert_eq!(verdict("8.19.0-beta1", "9.0.0"), "warning");
        assert_eq!(verdict("8.15.0-rc1", "8.15.0"), "compatible");
    }

    #[test]
    fn incompatible_next_major_says_which_minor_would_accept_it() {
        let Verdict::Incompatible { reason } = check(&v("8.17.2"), &v("9.2.2")) else {
            panic!()
        };
        assert!(reason.contains("Kibana 8.18+ on ES 9.x"), "{reason}");
    }

    #[test]
    fn coerce_takes_the_leading_numbers() {
        assert_eq!(coerce("8.15.0"), Some(v("8.15.0")));
        assert_eq!(coerce("8.15.0-SNAPSHOT"), Some(v("8.15.0")));
        assert_eq!(coerce("v9.2"), Some(v("9.2.0")));
        assert_eq!(coerce("7"), Some(v("7.0.0")));
        assert_eq!(coerce(""), None);
        assert_eq!(coerce("unknown"), None);
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
    fn rolling_major_upgrade_cluster_names_the_older_node() {
        // An 8.19 master with a 9.2 node joined, as during a rolling upgrade.
        let nodes = [node("es-old", "8.19.21"), node("es-new", "9.2.2")];
        let to_9 = Report::new(&v("9.2.2"), &nodes);
        let msg = to_9.refusal().unwrap();
        assert!(msg.contains("node es-old (8.19.21)"), "{msg}");
        assert!(!msg.contains("es-new"), "{msg}");
        let to_8 = Report::new(&v("8.19.21"), &nodes);
        assert!(to_8.compatible(), "{:?}", to_8.refusal());
        assert_eq!(to_8.warnings().len(), 1, "the 9.2.2 node is a warning");
    }

    #[test]
    fn garbled_or_missing_versions_are_refused() {
        assert!(!Report::new(&v("8.14.3"), &[node("es1", "")]).compatible());
        assert!(!Report::new(&v("8.14.3"), &[]).compatible());
    }
}
