//! Kibana plugins installed under the Kibana home (`<home>/plugins/<dir>/kibana.json`) that the
//! target version would refuse. Kibana's rule (`plugin_manifest_parser.ts`): the manifest's
//! `kibanaVersion` (else its `version`) must equal Kibana's version after `semver.coerce`
//! (qualifiers dropped), except the literal `"kibana"`, which is always compatible. An
//! incompatible plugin stops Kibana at start ("Plugin X is only compatible with Kibana version
//! V"), so after a restore it would leave the host without a Kibana.

use std::path::Path;

use semver::Version;

/// An installed plugin whose manifest does not match the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatible {
    /// The plugin's `id` (what `kibana-plugin remove` takes).
    pub id: String,
    /// The Kibana version it is built for.
    pub kibana_version: String,
}

/// `x.y.z` of a version string the way `semver.coerce` reads it (the first `N[.N[.N]]`).
fn coerce(v: &str) -> Option<Version> {
    let start = v.find(|c: char| c.is_ascii_digit())?;
    let nums: Vec<u64> = v[start..]
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()?
        .split('.')
        .filter(|s| !s.is_empty())
        .take(3)
        .map(|s| s.parse().ok())
        .collect::<Option<_>>()?;
    Some(Version::new(
        nums[0],
        nums.get(1).copied().unwrap_or(0),
        nums.get(2).copied().unwrap_or(0),
    ))
}

/// Whether a plugin built for `expected` loads in Kibana `kibana`.
pub fn is_compatible(expected: &str, kibana: &Version) -> bool {
    if expected == "kibana" {
        return true;
    }
    let actual = Version::new(kibana.major, kibana.minor, kibana.patch);
    coerce(expected).is_some_and(|e| e == actual)
}

/// The plugins under `plugins_dir` (as this process reaches it) that `target` would refuse;
/// directories without a readable `kibana.json` are not plugins Kibana loads and are skipped.
pub fn incompatible(plugins_dir: &Path, target: &Version) -> Result<Vec<Incompatible>, String> {
    let entries = match std::fs::read_dir(plugins_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(format!("cannot list {}: {e}", plugins_dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("kibana.json")) else {
            continue;
        };
        let Ok(manifest) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let id = manifest["id"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| entry.file_name().to_string_lossy().into_owned());
        let expected = manifest["kibanaVersion"]
            .as_str()
            .filter(|v| !v.is_empty())
            .or(manifest["version"].as_str())
            .unwrap_or("");
        if !is_compatible(expected, target) {
            out.push(Incompatible {
                id,
                kibana_version: expected.to_string(),
            });
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kibanas_rule() {
        let k = Version::new(8, 14, 3);
        assert!(is_compatible("8.14.3", &k));
        assert!(is_compatible("kibana", &k));
        assert!(is_compatible("v8.14.3", &k));
        assert!(is_compatible("8.14.3-SNAPSHOT", &k));
        assert!(!is_compatible("8.15.0", &k));
        assert!(!is_compatible("8.14", &k));
        assert!(!is_compatible("", &k));
    }

    #[test]
    fn manifests_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = |d: &str, json: &str| {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
            std::fs::write(dir.path().join(d).join("kibana.json"), json).unwrap();
        };
        plugin(
            "ok",
            r#"{"id":"okPlugin","version":"1.0.0","kibanaVersion":"8.14.3"}"#,
        );
        plugin(
            "new",
            r#"{"id":"newPlugin","version":"2.0.0","kibanaVersion":"8.15.0"}"#,
        );
        plugin("old-style", r#"{"id":"bare","version":"8.15.0"}"#);
        plugin(
            "any",
            r#"{"id":"anyVersion","version":"1.0.0","kibanaVersion":"kibana"}"#,
        );
        std::fs::create_dir_all(dir.path().join("not-a-plugin")).unwrap();
        let bad = incompatible(dir.path(), &Version::new(8, 14, 3)).unwrap();
        let ids: Vec<&str> = bad.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["bare", "newPlugin"]);
        assert_eq!(bad[1].kibana_version, "8.15.0");
        assert_eq!(
            incompatible(&dir.path().join("missing"), &Version::new(8, 14, 3)),
            Ok(vec![])
        );
    }
}
