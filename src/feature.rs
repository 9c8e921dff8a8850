//! The `kibana` feature state as Elasticsearch defines it, per version: the index and data-stream
//! patterns of Elasticsearch's own `KibanaPlugin` (`modules/kibana/.../KibanaPlugin.java`). A
//! feature-state restore deletes every index and data stream matching them, so whatever the tool
//! reasons about — the coordination-index guard, what a restore will discard — uses these lists.
//! Where an exact list exists (a snapshot's `feature_states[kibana].indices`), that is used instead.

use semver::Version;

/// The feature's name in `_features`, snapshots and restores.
pub const NAME: &str = "kibana";

/// 7.12 (feature states) through 8.x: saved objects, reporting, the two APM indices.
const V7_V8: &[&str] = &[
    ".kibana*",
    ".reporting-*",
    ".apm-agent-configuration*",
    ".apm-custom-link*",
];

/// 9.2 adds Onechat (`.chat-*`, elastic/elasticsearch#131419) and workflows (`.workflows-*`,
/// #134067); neither is in 8.19 or (as far as its sources show) 9.1.
const V9_2: &[&str] = &[
    ".kibana*",
    ".reporting-*",
    ".apm-agent-configuration*",
    ".apm-custom-link*",
    ".chat-*",
    ".workflows-*",
];

/// Newer than 9.2 (unreleased when this was written): evaluations (`.evaluation-*`, #148880) and
/// the workflows system data streams (`.workflows-events`, ..., #145822, under `.workflows-*`).
/// Versions the tool does not know get every pattern it knows.
const LATER: &[&str] = &[
    ".kibana*",
    ".reporting-*",
    ".apm-agent-configuration*",
    ".apm-custom-link*",
    ".chat-*",
    ".workflows-*",
    ".evaluation-*",
];

/// The patterns of the `kibana` feature on an Elasticsearch of version `es`.
pub fn patterns(es: &Version) -> &'static [&'static str] {
    match (es.major, es.minor) {
        (..=8, _) | (9, 0..=1) => V7_V8,
        (9, 2) => V9_2,
        _ => LATER,
    }
}

/// Every pattern any supported version uses: what must never hold data of ours.
pub fn all_patterns() -> &'static [&'static str] {
    LATER
}

/// Whether `name` matches a simple `*`-glob `pattern`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((prefix, rest)) => {
            if !name.starts_with(prefix) {
                return false;
            }
            let tail = &name[prefix.len()..];
            if rest.is_empty() {
                return true;
            }
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob_match(rest, &tail[i..]))
        }
    }
}

/// The first pattern of any version that `name` falls under.
pub fn matching_pattern(name: &str) -> Option<&'static str> {
    all_patterns().iter().copied().find(|p| glob_match(p, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(".kibana*", ".kibana"));
        assert!(glob_match(".kibana*", ".kibana_8.14.3_001"));
        assert!(glob_match(".reporting-*", ".reporting-2024"));
        assert!(!glob_match(".reporting-*", ".reporting"));
        assert!(!glob_match(".kibana*", "kibana-rollback"));
    }

    #[test]
    fn nine_two_adds_chat_and_workflows_later_ones_evaluations() {
        assert_eq!(patterns(&Version::new(9, 1, 7)), V7_V8);
        assert!(!patterns(&Version::new(9, 2, 2)).contains(&".evaluation-*"));
        assert!(patterns(&Version::new(9, 4, 0)).contains(&".evaluation-*"));
        let v8 = patterns(&Version::new(8, 19, 21));
        let v9 = patterns(&Version::new(9, 2, 2));
        for name in [".chat-conversations", ".workflows-events"] {
            assert!(!v8.iter().any(|p| glob_match(p, name)), "{name} on 8.x");
            assert!(v9.iter().any(|p| glob_match(p, name)), "{name} on 9.x");
            assert!(matching_pattern(name).is_some());
        }
        assert_eq!(patterns(&Version::new(7, 17, 29)), v8);
        assert!(
            v8.iter().all(|p| v9.contains(p)),
            "9.x keeps 8.x's patterns"
        );
    }
}
