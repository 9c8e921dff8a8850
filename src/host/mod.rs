//! Adapters that act on the local Kibana host: its systemd units over D-Bus ([`systemd`]),
//! and (elsewhere) its package manager and Kibana's status endpoint.
//!
//! Adapters act and report; they make no decisions. What to do with a unit that will not stop,
//! or a host whose Kibana is missing, is decided by `fleet/`.

pub mod systemd;
