//! The agent's durable local records in its state directory, so a restarted agent resumes or
//! reports instead of guessing: `progress.json` (which step of which operation this host started
//! or finished; written before the step it announces runs) and `revision.json` (the highest
//! revision seen of the current operation: an older one written back while the agent was down
//! is still a replay), `rollback-point.json` (the rollback point last trusted: an older one
//! written back is a replay; `kibana-rollback` commands on the host read it too). Each written
//! atomically and fsynced.

use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};

use crate::fleet::{LocalProgress, RevisionSeen};
use crate::rollback_point::PointSeen;

/// One durable JSON record in the state directory.
pub struct StateFile<T> {
    path: PathBuf,
    what: &'static str,
    _record: PhantomData<T>,
}

pub type ProgressFile = StateFile<LocalProgress>;
pub type RevisionFile = StateFile<RevisionSeen>;
pub type PointSeenFile = StateFile<PointSeen>;

const POINT_SEEN: &str = "rollback-point.json";
const POINT_SEEN_WHAT: &str = "rollback point record";

impl ProgressFile {
    /// Creates the state directory (mode 0700) if needed.
    pub fn open(state_dir: &Path) -> std::io::Result<Self> {
        StateFile::open_named(state_dir, "progress.json", "progress record")
    }
}

impl RevisionFile {
    pub fn open(state_dir: &Path) -> std::io::Result<Self> {
        StateFile::open_named(state_dir, "revision.json", "revision record")
    }
}

impl PointSeenFile {
    pub fn open(state_dir: &Path) -> std::io::Result<Self> {
        StateFile::open_named(state_dir, POINT_SEEN, POINT_SEEN_WHAT)
    }

    /// The rollback point this host's agent last trusted, for a command run beside it: read
    /// only (the agent is its one writer); `None` without an agent's record.
    pub fn read(state_dir: &Path) -> Option<PointSeen> {
        StateFile::<PointSeen> {
            path: state_dir.join(POINT_SEEN),
            what: POINT_SEEN_WHAT,
            _record: PhantomData,
        }
        .load()
    }
}

impl<T: Serialize + DeserializeOwned> StateFile<T> {
    fn open_named(state_dir: &Path, name: &str, what: &'static str) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)?;
        Ok(StateFile {
            path: state_dir.join(name),
            what,
            _record: PhantomData,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record left by an earlier process; a garbled file is reported and ignored (the
    /// protocol then re-runs the current step, which every step allows).
    pub fn load(&self) -> Option<T> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        match serde_json::from_str(&text) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "ignoring unreadable {}: {e}", self.what);
                None
            }
        }
    }

    /// Replaces the record durably: write a temporary file, fsync, rename, fsync the directory.
    pub fn store(&self, record: &T) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(
                serde_json::to_string_pretty(record)
                    .expect("record serializes")
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
