//! kibana-rollback: rolls a self-managed Kibana fleet back after a failed upgrade migration.
//!
//! `config` turns files into settings, `es` talks to Elasticsearch, `compat` and `snapshots`
//! hold Kibana's rules for versions and eligible snapshots, `exit` the documented exit codes.

pub mod config;
pub mod compat;
pub mod es;
pub mod snapshots;
pub mod exit;
pub mod logging;
pub mod host;
