//! Plugin discovery as Kibana does it at start-up (`core-plugins-server-internal`:
//! `discovery/plugin_manifest_parser.ts`, `plugins_service.ts` `handleDiscoveryErrors`): every
//! `<home>/plugins/<dir>/kibana.json` is parsed; a plugin built for another Kibana version
//! ("Plugin \"X\" is only compatible with Kibana version \"v\", but used Kibana version is
//! \"v\". (incompatible-version, <path>)") or an invalid manifest is fatal:
//! `Error: Failed to initialize plugins:\n\t<each error>`. A directory without a manifest is
//! ignored (missing-manifest is not reported). Versions are compared after semver `coerce`
//! (`7.0.0-alpha1` is `7.0.0`); `"kibanaVersion": "kibana"` matches every version.
//!
//! (The `Plugin X [v] is incompatible with Kibana [v]` wording is `kibana-plugin install`'s,
//! `src/cli_plugin/install/kibana.js`, not the server's.)

use std::path::Path;

use semver::Version;
use serde_json::Value;

/// The ids of the plugins found, or the discovery errors (each already in Kibana's form).
pub fn discover(home: &Path, version: &Version) -> Result<Vec<String>, Vec<String>> {
    let dir = home.join("plugins");
    let mut entries: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(r) => r
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect(),
        Err(_) => return Ok(vec![]),
    };
    entries.sort();
    let mut ids = Vec::new();
    let mut errors = Vec::new();
    for plugin in entries {
        let manifest = plugin.join("kibana.json");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let path = manifest.display();
        let m: Value = match serde_json::from_str(&text) {
            Ok(m) => m,
            Err(e) => {
                errors.push(format!("{e} (invalid-manifest, {path})"));
                continue;
            }
        };
        let Some(id) = m["id"].as_str() else {
            errors.push(format!(
                "Plugin manifest must contain an \"id\" property. (invalid-manifest, {path})"
            ));
            continue;
        };
        let Some(plugin_version) = m["version"].as_str() else {
            errors.push(format!(
                "Plugin manifest for \"{id}\" must contain a \"version\" property. (invalid-manifest, {path})"
            ));
            continue;
        };
        let expected = m["kibanaVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or(plugin_version);
        if !compatible(expected, version) {
            errors.push(format!(
                "Plugin \"{id}\" is only compatible with Kibana version \"{expected}\", but used Kibana version is \"{version}\". (incompatible-version, {path})"
            ));
            continue;
        }
        ids.push(id.to_string());
    }
    if errors.is_empty() {
        Ok(ids)
    } else {
        Err(errors)
    }
}

fn compatible(expected: &str, actual: &Version) -> bool {
    if expected == "kibana" {
        return true;
    }
    match coerce(expected) {
        Some((a, b, c)) => (a, b, c) == (actual.major, actual.minor, actual.patch),
        None => false,
    }
}

/// semver's `coerce`: the first `N[.N[.N]]` in the string, missing parts 0.
fn coerce(s: &str) -> Option<(u64, u64, u64)> {
    let start = s.find(|c: char| c.is_ascii_digit())?;
    let nums: Vec<u64> = s[start..]
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()?
        .split('.')
        .take(3)
        .map_while(|p| p.parse().ok())
        .collect();
    Some((
        *nums.first()?,
        nums.get(1).copied().unwrap_or(0),
        nums.get(2).copied().unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coerced_comparison() {
        let v = Version::parse("8.14.3").unwrap();
        assert!(compatible("8.14.3", &v));
        assert!(compatible("8.14.3-SNAPSHOT", &v));
        assert!(compatible("kibana", &v));
        assert!(!compatible("8.15.0", &v));
        assert!(!compatible("8.14", &v));
        assert_eq!(coerce("v1"), Some((1, 0, 0)));
    }
}
