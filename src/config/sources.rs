//! Where configuration comes from: the main file plus drop-in fragments, found and ordered the
//! way systemd orders its own drop-ins, so operators get no surprises.
//!
//! Fragments named `*.toml` are collected from the drop-in directories. When two directories hold
//! a fragment of the same name, only the one in the higher-priority directory counts (by default
//! `/etc` masks `/run` masks `/usr/lib`, as in systemd); a fragment that is a symlink to
//! `/dev/null` (or empty) masks the others of its name and contributes nothing. The surviving
//! fragments are applied in name order after the main file, later ones winning per key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::ConfigError;

pub const DEFAULT_CONFIG: &str = "/etc/kibana-rollback/config.toml";

/// Drop-in directories, highest priority first (systemd's order: /etc, /run, /usr/lib).
pub const DEFAULT_DROPIN_DIRS: &[&str] = &[
    "/etc/kibana-rollback/config.d",
    "/run/kibana-rollback/config.d",
    "/usr/lib/kibana-rollback/config.d",
];

/// Overrides the drop-in directories (colon-separated, highest priority first); for tests and
/// for installs under another prefix.
pub const DROPIN_DIRS_ENV: &str = "KIBANA_ROLLBACK_DROPIN_DIRS";

#[derive(Debug, Clone)]
pub struct Sources {
    pub main: PathBuf,
    pub dropin_dirs: Vec<PathBuf>,
    /// systemd's `$CREDENTIALS_DIRECTORY`, where `LoadCredential=` puts secrets.
    pub credentials_dir: Option<PathBuf>,
}

impl Sources {
    /// The main file given (or the default) and the drop-in directories from the environment
    /// override or the defaults.
    pub fn new(main: Option<&Path>) -> Self {
        let dropin_dirs = match std::env::var_os(DROPIN_DIRS_ENV) {
            Some(v) => std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect(),
            None => DEFAULT_DROPIN_DIRS.iter().map(PathBuf::from).collect(),
        };
        Sources {
            main: main
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG)),
            dropin_dirs,
            credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        }
    }

    /// The files to read, in application order: the main file, then the unmasked fragments by name.
    pub fn files(&self) -> Result<Vec<PathBuf>, ConfigError> {
        let mut files = vec![self.main.clone()];
        // name -> winning path (None when masked); the first directory (highest priority) wins.
        let mut by_name: BTreeMap<String, Option<PathBuf>> = BTreeMap::new();
        for dir in &self.dropin_dirs {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(ConfigError::file(
                        dir,
                        format!("cannot read drop-in directory: {e}"),
                    )
                    .fix("make the directory readable by the agent or remove it"))
                }
            };
            for entry in entries {
                let entry = entry.map_err(|e| {
                    ConfigError::file(dir, format!("cannot list drop-in directory: {e}"))
                        .fix("make the directory readable by the agent")
                })?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.ends_with(".toml") || by_name.contains_key(&name) {
                    continue;
                }
                let path = entry.path();
                by_name.insert(name, if is_mask(&path) { None } else { Some(path) });
            }
        }
        files.extend(by_name.into_values().flatten());
        Ok(files)
    }
}

fn is_mask(path: &Path) -> bool {
    if let Ok(target) = std::fs::read_link(path) {
        if target == Path::new("/dev/null") {
            return true;
        }
    }
    std::fs::metadata(path)
        .map(|m| m.len() == 0)
        .unwrap_or(false)
}
