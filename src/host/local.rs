//! Where this host's files and commands are, for the adapters that read or write files
//! (kibana.yml, `/proc`, the Kibana home, unit drop-ins) or run commands (journalctl, apt,
//! dnf): `/` and no prefix for the agent on its own host; a test host's root
//! (`/proc/<pid1>/root`) and `tests/harness/host exec NAME --` when a test drives a host from
//! outside. Paths handed around are always as the host sees them (`/etc/kibana/kibana.yml`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Local {
    /// The host's `/` as this process sees it.
    pub root: PathBuf,
    /// Prepended to every command's argv (empty: run directly).
    pub command_prefix: Vec<OsString>,
}

impl Default for Local {
    fn default() -> Self {
        Local::this_host()
    }
}

impl Local {
    /// The host this process runs on.
    pub fn this_host() -> Self {
        Local {
            root: PathBuf::from("/"),
            command_prefix: Vec::new(),
        }
    }

    /// A path of the host (`/etc/kibana/kibana.yml`) as this process reaches it.
    pub fn path(&self, host_path: impl AsRef<Path>) -> PathBuf {
        let p = host_path.as_ref();
        self.root.join(p.strip_prefix("/").unwrap_or(p))
    }
}
