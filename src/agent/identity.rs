//! Which machine this agent runs on: `/etc/machine-id` (systemd's, unique per installation;
//! a cloned VM that kept it is told apart by the instance) and an instance id the agent creates
//! once in its state directory. Host documents and the lease carry it, so two machines claiming
//! one host id are never merged into one host.

use std::io::Write;
use std::path::Path;

use crate::fleet::MachineIdentity;

pub fn machine(state_dir: &Path) -> MachineIdentity {
    let machine_id = std::fs::read_to_string("/etc/machine-id")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    MachineIdentity {
        machine_id,
        instance: instance(state_dir),
    }
}

/// `<state_dir>/instance-id`, created on first use (16 random bytes, hex).
fn instance(state_dir: &Path) -> String {
    let path = state_dir.join("instance-id");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        if !s.is_empty() {
            return s.to_string();
        }
    }
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_extension("tmp");
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(id.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), "cannot keep the instance id (a new one each start): {e}");
    }
    id
}

/// The addresses this host's Kibana may connect to Elasticsearch from: `configured`, else every
/// address of this machine's interfaces (loopback too: a Kibana beside a local node uses it).
pub fn client_addresses(configured: &[String]) -> Vec<String> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    let mut out: Vec<String> = nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| a.address)
                .filter_map(|a| {
                    if let Some(v4) = a.as_sockaddr_in() {
                        Some(std::net::IpAddr::V4(v4.ip()).to_string())
                    } else {
                        a.as_sockaddr_in6()
                            .map(|v6| std::net::IpAddr::V6(v6.ip()).to_string())
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_instance_id_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = super::machine(dir.path());
        let b = super::machine(dir.path());
        assert_eq!(a, b);
        assert_eq!(a.instance.len(), 32);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(super::machine(other.path()).instance, a.instance);
    }

    #[test]
    fn configured_addresses_win_and_the_default_lists_loopback() {
        assert_eq!(super::client_addresses(&["10.1.2.3".into()]), ["10.1.2.3"]);
        assert!(super::client_addresses(&[])
            .iter()
            .any(|a| a == "127.0.0.1"));
    }
}
