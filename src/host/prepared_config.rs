//! This host's pre-upgrade Kibana configuration, kept when the fleet's rollback point is taken
//! and put back by the rollback's reinstall. An older Kibana refuses settings it does not know
//! (exit 64, "Unknown configuration key(s)"), so an upgrade that added one to kibana.yml would
//! leave the rolled-back Kibana unable to start.
//!
//! * [`keep`]: a copy of `kibana.yml` and the keystore's key **names** (never values:
//!   `kibana-keystore list` prints names only) in `<state_dir>/prepared/`, with `meta.json`
//!   naming the rollback point (its snapshot's uuid) and Kibana version they belong to. Written
//!   aside and renamed, so a crash leaves the previous copy or the new one, never half of one.
//! * [`put_back`]: during the reinstall to exactly that version, a current `kibana.yml` that
//!   differs is moved aside to `kibana.yml.kibana-rollback-<operation>` and the kept one put in
//!   its place with the current file's mode and owner. Idempotent: a resumed reinstall finds the
//!   file already back and the aside copy kept.

use std::path::{Path, PathBuf};

use semver::Version;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::local::Local;

/// The directory under the agent's state directory.
pub const DIR: &str = "prepared";

/// What was kept, for which rollback point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// The rollback point's snapshot uuid.
    pub point_uuid: String,
    pub kibana_version: Version,
    /// Kibana's configuration directory (`KBN_PATH_CONF`, else /etc/kibana).
    pub conf_dir: String,
    /// SHA-256 of the kept kibana.yml; `None`: there was none.
    pub kibana_yml_sha256: Option<String>,
    /// The keystore's key names; `None`: not read (no keystore, or `kibana-keystore` failed:
    /// `keystore_note` says which).
    pub keystore_keys: Option<Vec<String>>,
    pub keystore_note: String,
}

impl Kept {
    /// One line for the agent's report.
    pub fn describe(&self) -> String {
        format!(
            "{}/kibana.yml {} and {} kept for Kibana {}",
            self.conf_dir,
            match &self.kibana_yml_sha256 {
                Some(h) => format!("(sha256 {})", &h[..12.min(h.len())]),
                None => "(absent)".into(),
            },
            match &self.keystore_keys {
                Some(k) => format!("the keystore's {} key name(s)", k.len()),
                None => format!("no keystore key list ({})", self.keystore_note),
            },
            self.kibana_version
        )
    }
}

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DIR)
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("new");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// What was kept last, if anything.
pub fn load(state_dir: &Path) -> Option<Kept> {
    let text = std::fs::read_to_string(dir(state_dir).join("meta.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Keeps `conf_dir`/kibana.yml and `keystore_keys` for the rollback point `point_uuid` of
/// Kibana `version`.
pub fn keep(
    local: &Local,
    state_dir: &Path,
    conf_dir: &str,
    point_uuid: &str,
    version: &Version,
    keystore: Result<Vec<String>, String>,
) -> Result<Kept, String> {
    let d = dir(state_dir);
    std::fs::create_dir_all(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    let yml_path = format!("{}/kibana.yml", conf_dir.trim_end_matches('/'));
    let kept_yml = d.join("kibana.yml");
    let hash = match std::fs::read(local.path(&yml_path)) {
        Ok(bytes) => {
            write_atomic(&kept_yml, &bytes)
                .map_err(|e| format!("keeping {yml_path} in {}: {e}", kept_yml.display()))?;
            Some(sha256(&bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let _ = std::fs::remove_file(&kept_yml);
            None
        }
        Err(e) => return Err(format!("reading {yml_path}: {e}")),
    };
    let (keystore_keys, keystore_note) = match keystore {
        Ok(keys) => (Some(keys), String::new()),
        Err(why) => (None, why),
    };
    let kept = Kept {
        point_uuid: point_uuid.to_string(),
        kibana_version: version.clone(),
        conf_dir: conf_dir.to_string(),
        kibana_yml_sha256: hash,
        keystore_keys,
        keystore_note,
    };
    let meta = serde_json::to_vec_pretty(&kept).expect("serialises");
    write_atomic(&d.join("meta.json"), &meta)
        .map_err(|e| format!("writing {}: {e}", d.join("meta.json").display()))?;
    Ok(kept)
}

/// How long `kibana-keystore list` may take (it starts Node.js).
const KEYSTORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The keystore's key names (`kibana-keystore list` in `home`, with `KBN_PATH_CONF=conf_dir`):
/// names only, one per line, as the tool prints them — it never prints values. `Err` says why
/// there is no list (no keystore file, the tool failed).
pub async fn keystore_keys(
    local: &Local,
    home: &str,
    conf_dir: &str,
) -> Result<Vec<String>, String> {
    let store = format!("{}/kibana.keystore", conf_dir.trim_end_matches('/'));
    if !local.path(&store).exists() {
        return Err(format!("no keystore at {store}"));
    }
    let run = super::pkg::run::Runner {
        prefix: local.command_prefix.clone(),
        timeout: KEYSTORE_TIMEOUT + std::time::Duration::from_secs(2),
    };
    let tool = format!("{}/bin/kibana-keystore", home.trim_end_matches('/'));
    let args: Vec<String> = [
        format!("KBN_PATH_CONF={conf_dir}"),
        "timeout".into(),
        KEYSTORE_TIMEOUT.as_secs().to_string(),
        tool.clone(),
        "list".into(),
    ]
    .into();
    match run.run("env", &args).await {
        Ok(out) if out.success() => Ok(out
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()),
        // Only the exit status: its output is not ours to repeat.
        Ok(_) => Err(format!("{tool} list failed")),
        Err(e) => Err(format!("{tool} could not run: {e}")),
    }
}

/// What [`put_back`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutBack {
    /// Nothing kept on this host (no rollback point seen, or an agent older than this).
    NothingKept,
    /// The kept one is for another version than the reinstall's target: left alone.
    OtherVersion(Version),
    /// The current kibana.yml is the kept one.
    Same,
    /// The kept kibana.yml is back; the current one was moved to `aside`.
    Restored { path: String, aside: String },
}

impl PutBack {
    /// For the step's detail (the host document, the journal, `status`).
    pub fn describe(&self) -> Option<String> {
        match self {
            PutBack::Restored { path, aside } => Some(format!(
                "{path} differed from the one kept by prepare: put back, the upgraded one kept as {aside}"
            )),
            PutBack::OtherVersion(v) => Some(format!(
                "kibana.yml left as it is: the one kept by prepare is for Kibana {v}"
            )),
            PutBack::Same => Some("kibana.yml is the one kept by prepare".into()),
            PutBack::NothingKept => None,
        }
    }
}

/// Puts the kept kibana.yml back for a reinstall of `target` by operation `op_id`, when the
/// current one differs.
pub fn put_back(
    local: &Local,
    state_dir: &Path,
    target: &Version,
    op_id: &str,
) -> Result<PutBack, String> {
    let Some(kept) = load(state_dir) else {
        return Ok(PutBack::NothingKept);
    };
    if &kept.kibana_version != target {
        return Ok(PutBack::OtherVersion(kept.kibana_version));
    }
    let Some(kept_hash) = &kept.kibana_yml_sha256 else {
        // There was no kibana.yml before the upgrade; one added since is left to the operator.
        return Ok(PutBack::Same);
    };
    let path = format!("{}/kibana.yml", kept.conf_dir.trim_end_matches('/'));
    let live = local.path(&path);
    let current = match std::fs::read(&live) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("reading {path}: {e}")),
    };
    if current.as_deref().map(sha256).as_ref() == Some(kept_hash) {
        return Ok(PutBack::Same);
    }
    let saved = std::fs::read(dir(state_dir).join("kibana.yml"))
        .map_err(|e| format!("reading the kibana.yml kept by prepare: {e}"))?;
    if &sha256(&saved) != kept_hash {
        return Err(format!(
            "the kibana.yml kept by prepare in {} does not match its recorded checksum; kibana.yml left as it is",
            dir(state_dir).display()
        ));
    }
    let aside = format!("{path}.kibana-rollback-{op_id}");
    let aside_live = local.path(&aside);
    let meta = std::fs::metadata(&live).ok();
    if current.is_some() && !aside_live.exists() {
        std::fs::copy(&live, &aside_live).map_err(|e| format!("keeping {path} as {aside}: {e}"))?;
    }
    let tmp = local.path(format!("{path}.kibana-rollback-new"));
    std::fs::write(&tmp, &saved).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    if let Some(m) = meta {
        use std::os::unix::fs::MetadataExt;
        let _ = std::fs::set_permissions(&tmp, m.permissions());
        let _ = std::os::unix::fs::chown(&tmp, Some(m.uid()), Some(m.gid()));
    }
    std::fs::rename(&tmp, &live).map_err(|e| format!("putting {path} back: {e}"))?;
    Ok(PutBack::Restored { path, aside })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Local, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let local = Local {
            root: root.path().to_path_buf(),
            command_prefix: vec![],
        };
        std::fs::create_dir_all(local.path("/etc/kibana")).unwrap();
        let state = root.path().join("state");
        (root, local, state)
    }

    #[test]
    fn the_kept_kibana_yml_comes_back_when_the_upgrade_changed_it() {
        let (_root, local, state) = setup();
        let v = Version::new(8, 14, 3);
        std::fs::write(local.path("/etc/kibana/kibana.yml"), "server.port: 5601\n").unwrap();
        let kept = keep(
            &local,
            &state,
            "/etc/kibana",
            "u1",
            &v,
            Ok(vec!["elasticsearch.password".into()]),
        )
        .unwrap();
        assert_eq!(load(&state).unwrap(), kept);
        assert!(
            kept.describe().contains("1 key name(s)"),
            "{}",
            kept.describe()
        );
        // Unchanged: nothing to do.
        assert_eq!(put_back(&local, &state, &v, "rb-1").unwrap(), PutBack::Same);
        // Another target: left alone.
        assert_eq!(
            put_back(&local, &state, &Version::new(8, 13, 0), "rb-1").unwrap(),
            PutBack::OtherVersion(v.clone())
        );
        // The upgrade added a setting.
        std::fs::write(
            local.path("/etc/kibana/kibana.yml"),
            "server.port: 5601\nfeature.newInThisVersion: true\n",
        )
        .unwrap();
        let done = put_back(&local, &state, &v, "rb-1").unwrap();
        assert_eq!(
            done,
            PutBack::Restored {
                path: "/etc/kibana/kibana.yml".into(),
                aside: "/etc/kibana/kibana.yml.kibana-rollback-rb-1".into()
            }
        );
        assert!(done.describe().unwrap().contains("put back"));
        assert_eq!(
            std::fs::read_to_string(local.path("/etc/kibana/kibana.yml")).unwrap(),
            "server.port: 5601\n"
        );
        assert!(
            std::fs::read_to_string(local.path("/etc/kibana/kibana.yml.kibana-rollback-rb-1"))
                .unwrap()
                .contains("newInThisVersion")
        );
        // A resumed reinstall: already back, the aside copy untouched.
        assert_eq!(put_back(&local, &state, &v, "rb-1").unwrap(), PutBack::Same);
    }

    #[test]
    fn nothing_kept_or_a_tampered_copy_changes_nothing() {
        let (_root, local, state) = setup();
        let v = Version::new(8, 14, 3);
        assert_eq!(
            put_back(&local, &state, &v, "rb-1").unwrap(),
            PutBack::NothingKept
        );
        std::fs::write(local.path("/etc/kibana/kibana.yml"), "a: 1\n").unwrap();
        keep(
            &local,
            &state,
            "/etc/kibana",
            "u1",
            &v,
            Err("no keystore".into()),
        )
        .unwrap();
        std::fs::write(state.join(DIR).join("kibana.yml"), "tampered: 1\n").unwrap();
        std::fs::write(local.path("/etc/kibana/kibana.yml"), "a: 2\n").unwrap();
        assert!(put_back(&local, &state, &v, "rb-1")
            .unwrap_err()
            .contains("does not match"));
        assert_eq!(
            std::fs::read_to_string(local.path("/etc/kibana/kibana.yml")).unwrap(),
            "a: 2\n"
        );
    }
}
