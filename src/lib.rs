//! kibana-rollback: rolls a self-managed Kibana fleet back after a failed upgrade migration.
//!
//! `config` turns files into settings, `es` talks to Elasticsearch, `compat` and `snapshots`
//! hold Kibana's rules for versions and eligible snapshots, `host` acts on the local machine
//! (systemd, package manager, Kibana's status), `preflight` holds the one implementation of the
//! checks before a rollback (and before `prepare`), `rollback_point` what `prepare` records,
//! `package_hook` what the apt hook decides before Kibana changes version, `exit` holds the
//! documented exit codes.

pub mod agent;
pub mod compat;
pub mod config;
pub mod coord;
pub mod crypto;
pub mod detection;
pub mod es;
pub mod exit;
pub mod feature;
pub mod fleet;
pub mod host;
pub mod http_roots;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod package_hook;
pub mod preflight;
pub mod rollback_point;
pub mod snapshots;
pub mod trust;
