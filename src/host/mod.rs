//! Adapters that act on the local Kibana host: its systemd units over D-Bus ([`systemd`]), the
//! hold that keeps Kibana from starting during a rollback ([`hold`]), its package manager
//! ([`pkg`]) and its install records ([`install_history`]), Kibana's status endpoint
//! ([`kibana_status`]), which Kibana a process runs
//! ([`process`]), the unit's journal ([`journal`]), and the readiness checks of what a rollback
//! will need here ([`readiness`], with [`kibana_yml`], [`plugins`], [`status_credentials`] and
//! [`tls_check`]), the pre-upgrade kibana.yml kept for the rollback point ([`prepared_config`]).
//! [`local`] says where the host's files and commands are.
//!
//! Adapters act and report; they make no decisions. What to do with a unit that will not stop,
//! or a host whose Kibana is missing, is decided by `fleet/`.

pub mod hold;
pub mod install_history;
pub mod journal;
pub mod kibana_status;
pub mod kibana_yml;
pub mod local;
pub mod pkg;
pub mod plugins;
pub mod prepared_config;
pub mod process;
pub mod readiness;
pub mod status_credentials;
pub mod systemd;
pub mod tls_check;
pub mod unit_files;
