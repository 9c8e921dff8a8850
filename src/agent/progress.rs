//! The agent's local progress record (`<state_dir>/progress.json`): which step of which
//! operation this host started or finished, so a restarted agent resumes or reports instead of
//! guessing. Written atomically and fsynced before the step it announces runs.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::fleet::LocalProgress;

pub struct ProgressFile {
    path: PathBuf,
}

impl ProgressFile {
    /// Creates the state directory (mode 0700) if needed.
    pub fn open(state_dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)?;
        Ok(ProgressFile {
            path: state_dir.join("progress.json"),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record left by an earlier process; a garbled file is reported and ignored (the
    /// protocol then re-runs the current step, which every step allows).
    pub fn load(&self) -> Option<LocalProgress> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        match serde_json::from_str(&text) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "ignoring unreadable progress record: {e}");
                None
            }
        }
    }

    /// Replaces the record durably: write a temporary file, fsync, rename, fsync the directory.
    pub fn store(&self, progress: &LocalProgress) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(
                serde_json::to_string_pretty(progress)
                    .expect("progress serializes")
                    .as_bytes(),
            )?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{ProgressState, Step};

    #[test]
    fn roundtrip_and_garbled() {
        let dir = tempfile::tempdir().unwrap();
        let f = ProgressFile::open(&dir.path().join("state")).unwrap();
        assert!(f.load().is_none());
        let p = LocalProgress {
            operation_id: "op".into(),
            epoch: 2,
            step: Step::StopUnit,
            state: ProgressState::Started,
        };
        f.store(&p).unwrap();
        assert_eq!(f.load(), Some(p));
        std::fs::write(f.path(), "{not json").unwrap();
        assert!(f.load().is_none());
    }
}
