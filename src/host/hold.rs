//! Keeping Kibana from starting while the rollback needs it stopped — from the stop step until
//! the start step (or an abort) lifts the hold; across reboots and package installs too.
//!
//! `systemctl mask` cannot do it everywhere: a mask is a symlink to `/dev/null` at
//! `/etc/systemd/system/kibana.service`, and that is exactly where the **7.x** packages install
//! their unit as a regular file (systemd refuses: "File /etc/systemd/system/kibana.service
//! already exists", kibana#16046, systemd#27965); and a 7.17 package installed during the
//! reinstall would put its unit file back where a mask sits. So the hold is a **drop-in**,
//! `/etc/systemd/system/<unit>.d/zz-kibana-rollback-hold.conf`, which works with the unit file in
//! either place and which no package owns or replaces:
//!
//! ```ini
//! [Unit]
//! AssertPathExists=!/etc/systemd/system/kibana.service.d/zz-kibana-rollback-hold.conf
//! ```
//!
//! The assertion fails as long as the drop-in exists, so every start — `systemctl start` by an
//! admin or Ansible, a dependency, the boot — fails loudly ("Assertion failed on job for
//! kibana.service"), and `systemctl status kibana` shows the drop-in and the failed assertion,
//! which names the file to look at. An assertion, not a condition: a failed condition would make
//! `systemctl start` succeed silently without starting anything. Nothing runs, so `Restart=`
//! does not loop. Deleting the file (even without `daemon-reload`) lifts it.
//!
//! [`lift`](Hold::lift) also unmasks the unit: agents before this mechanism masked it, and an
//! operation they began may be finished by this one.

use std::io::Write;
use std::path::PathBuf;

use super::local::Local;
use super::systemd::{SystemdUnits, UnitError};

/// The drop-in's file name: sorts after the usual `NN-*.conf` so nothing later resets it.
pub const DROP_IN_NAME: &str = "zz-kibana-rollback-hold.conf";

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("cannot write the hold drop-in {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove the hold drop-in {path}: {source}")]
    Remove {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Unit(#[from] UnitError),
}

impl HoldError {
    /// See [`UnitError::is_no_answer`].
    pub fn is_no_answer(&self) -> bool {
        matches!(self, HoldError::Unit(e) if e.is_no_answer())
    }
}

/// The hold of one unit on one host.
#[derive(Debug, Clone)]
pub struct Hold {
    local: Local,
    unit: String,
}

impl Hold {
    pub fn new(local: &Local, unit: &str) -> Self {
        Hold {
            local: local.clone(),
            unit: unit.to_string(),
        }
    }

    /// The drop-in as the host sees it.
    pub fn path(&self) -> String {
        format!("/etc/systemd/system/{}.d/{DROP_IN_NAME}", self.unit)
    }

    fn local_path(&self) -> PathBuf {
        self.local.path(self.path())
    }

    pub fn contents(&self) -> String {
        format!(
            "# Written by kibana-rollback while a rollback needs {unit} stopped: every start fails\n\
             # until the rollback starts it (or aborts). Removing this file lifts the hold.\n\
             [Unit]\n\
             AssertPathExists=!{path}\n",
            unit = self.unit,
            path = self.path()
        )
    }

    /// Whether the drop-in is in place.
    pub fn is_held(&self) -> bool {
        self.local_path().exists()
    }

    /// Puts the drop-in in place (atomically, synced) and reloads systemd. Idempotent.
    pub async fn apply(&self, units: &SystemdUnits) -> Result<(), HoldError> {
        let path = self.local_path();
        let err = |source| HoldError::Write {
            path: self.path(),
            source,
        };
        let dir = path.parent().expect("drop-in has a directory");
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp = dir.join(format!(".{DROP_IN_NAME}.tmp"));
        {
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(self.contents().as_bytes()).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, &path).map_err(err)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        units.daemon_reload().await?;
        Ok(())
    }

    /// Removes the drop-in (and a mask left by an older agent), reloads systemd and clears a
    /// `failed` state. Idempotent.
    pub async fn lift(&self, units: &SystemdUnits) -> Result<(), HoldError> {
        if self.lift_for_start(units).await? == Lifted::ReloadAfterStart {
            units.daemon_reload().await?;
        }
        Ok(())
    }

    /// [`lift`](Hold::lift) for a start that follows at once: when systemd's view of the unit
    /// was current before the drop-in went, the reload is left to the caller after the start
    /// ([`Lifted::ReloadAfterStart`]) — the assertion passes once the file is gone, so the
    /// start needs no reload, and a reload is CPU every host of a fleet would spend at once in
    /// its downtime. Otherwise (something else changed the unit on disk) it reloads first.
    pub async fn lift_for_start(&self, units: &SystemdUnits) -> Result<Lifted, HoldError> {
        let current = !units.needs_reload(&self.unit).await?;
        let path = self.local_path();
        let had = path.exists();
        Self::remove(&path).map_err(|source| HoldError::Remove {
            path: self.path(),
            source,
        })?;
        units.unmask(&self.unit).await?;
        let lifted = if !current {
            units.daemon_reload().await?;
            Lifted::Reloaded
        } else if had {
            Lifted::ReloadAfterStart
        } else {
            Lifted::WasNotHeld
        };
        units.reset_failed(&self.unit).await?;
        Ok(lifted)
    }

    /// Removes the drop-in (and its directory if that is left empty). Idempotent.
    fn remove(path: &std::path::Path) -> std::io::Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir(dir); // only if empty: admins' drop-ins stay
        }
        Ok(())
    }
}

/// What [`Hold::lift_for_start`] did, and left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifted {
    /// Something else had changed the unit on disk: systemd re-read it (without the drop-in).
    Reloaded,
    /// systemd still lists the removed drop-in (`systemctl status` says to reload): reload once
    /// the unit has started.
    ReloadAfterStart,
    /// There was no drop-in to remove (already lifted, maybe by an earlier try of this call).
    WasNotHeld,
}
