//! kibana-rollback: rolls a self-managed Kibana fleet back after a failed upgrade migration.
pub mod fleet;
