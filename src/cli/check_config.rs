//! `check-config`: validates the configuration exactly as the agent would and prints the merged
//! settings, each with the file (or default, or credential) that set it. Secret values are never
//! read out: only the files that hold them are named.

use anyhow::Result;
use kibana_rollback::config::{self, EsAuth};
use serde_json::json;

use super::{print_json, Cli};

pub fn run(cli: &Cli) -> Result<u8> {
    let loaded = cli.load()?;
    let lines = config::describe(&loaded.merged);
    let auth = match &loaded.settings.elasticsearch.auth {
        EsAuth::None => "none".to_string(),
        EsAuth::ApiKey { source, .. } => format!("API key from {}", source.display()),
        EsAuth::Basic {
            username, source, ..
        } => format!(
            "basic auth as {username:?}, password from {}",
            source.display()
        ),
    };
    let s = &loaded.settings;
    if cli.json {
        let settings: serde_json::Map<String, serde_json::Value> = lines
            .iter()
            .map(|(k, v, o)| (k.clone(), json!({"value": v, "origin": o})))
            .collect();
        print_json(&json!({
            "valid": true,
            "files": loaded.merged.files.iter().filter(|f| f.exists()).map(|f| f.display().to_string()).collect::<Vec<_>>(),
            "elasticsearch_auth": auth,
            "host_id": s.coordination.host_id,
            "settings": settings,
        }));
        return Ok(kibana_rollback::exit::OK);
    }
    println!("# configuration is valid");
    for f in loaded.merged.files.iter().filter(|f| f.exists()) {
        println!("# read {}", f.display());
    }
    println!("# elasticsearch auth: {auth}");
    println!("# host id: {}", s.coordination.host_id);
    let mut section = "";
    for (key, value, origin) in &lines {
        let (sec, name) = key.split_once('.').expect("dotted");
        if sec != section {
            println!("\n[{sec}]");
            section = sec;
        }
        println!("{name} = {value}  # {origin}");
    }
    Ok(kibana_rollback::exit::OK)
}
