//! Host adapters: the kibana unit over D-Bus, the package manager, and the Kibana status probe.

pub mod kibana_status;
pub mod pkg;
