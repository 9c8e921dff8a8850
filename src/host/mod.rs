//! Adapters that act on the local Kibana host: its systemd units over D-Bus ([`systemd`]), its
//! package manager ([`pkg`]) and its install records ([`install_history`]), and Kibana's status
//! endpoint ([`kibana_status`]).
//!
//! Adapters act and report; they make no decisions. What to do with a unit that will not stop,
//! or a host whose Kibana is missing, is decided by `fleet/`.

pub mod install_history;
pub mod kibana_status;
pub mod pkg;
pub mod systemd;
