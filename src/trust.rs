//! Which coordination documents the agents obey. Anyone who can write the coordination index
//! could otherwise make every agent stop, hold and downgrade Kibana as root — or write an
//! operation straight into `reinstalling` with a "completed" restore. With a fleet key
//! (`coordination.fleet_key_file`, or the systemd credential `fleet-key`) every document the tool
//! writes carries an HMAC-SHA256 over its whole content, and a document whose MAC does not verify
//! is refused: not acted on, reported in `status` and the journal.
//!
//! * The MAC covers the canonical JSON of the document (keys sorted, `signature` left out), so
//!   it binds the operation's id, epoch and `revision` — a counter every writer raises — and an
//!   old, validly signed version replayed later is told apart by its lower revision
//!   ([`crate::fleet::node`] keeps the highest it saw).
//! * Rotation without downtime: the key file may hold several keys, one per line; the first
//!   signs, any verifies. Add the new key as the second line everywhere, then swap the lines
//!   everywhere, then drop the old one.
//! * Without a key nothing is signed or checked (and `plan` says so).
//!
//! Pure: keys and values in, MACs and verdicts out.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::Secret;

type HmacSha256 = Hmac<Sha256>;

/// The field that carries the MAC: `hmac-sha256:<key id>:<base64>`.
pub const FIELD: &str = "signature";

/// The fleet's keys: the first signs, any verifies.
#[derive(Clone)]
pub struct FleetKeys {
    keys: Vec<Secret>,
}

impl std::fmt::Debug for FleetKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FleetKeys({} key(s), ids {:?})",
            self.keys.len(),
            self.ids()
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("it carries no signature, and this fleet requires one (coordination.fleet_key_file): written without the fleet key")]
    Unsigned,
    #[error("its signature is made with key {0}, which this agent does not have (a key rotation half done?)")]
    UnknownKey(String),
    #[error("its signature does not match its content: forged or altered")]
    Mismatch,
    #[error("its signature is malformed")]
    Malformed,
    /// Validly signed, but older than one this host already trusted (why): a replay.
    #[error("{0}")]
    Replayed(String),
}

impl FleetKeys {
    /// One key per non-empty line of `text` (the key file's content).
    pub fn from_text(text: &str) -> Result<FleetKeys, String> {
        let keys: Vec<Secret> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| Secret::new(l.to_string()))
            .collect();
        if keys.is_empty() {
            return Err("the fleet key file holds no key".into());
        }
        if keys.iter().any(|k| k.expose().len() < 16) {
            return Err(
                "a fleet key is shorter than 16 characters; use e.g. `openssl rand -base64 32`"
                    .into(),
            );
        }
        Ok(FleetKeys { keys })
    }

    /// A short public id of each key (the first 8 hex digits of its SHA-256).
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(key_id).collect()
    }

    /// Sets `value[signature]` to the MAC of the rest of `value` with the signing key.
    pub fn sign(&self, value: &mut Value) {
        let key = &self.keys[0];
        if let Some(obj) = value.as_object_mut() {
            obj.remove(FIELD);
        }
        let mac = mac(key, &canonical(value));
        if let Some(obj) = value.as_object_mut() {
            obj.insert(
                FIELD.into(),
                Value::String(format!("hmac-sha256:{}:{mac}", key_id(key))),
            );
        }
    }

    /// Whether `value` carries a valid MAC of any of the keys.
    pub fn verify(&self, value: &Value) -> Result<(), TrustError> {
        let sig = match value.get(FIELD) {
            None | Some(Value::Null) => return Err(TrustError::Unsigned),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(TrustError::Malformed),
        };
        let mut parts = sig.splitn(3, ':');
        let (Some("hmac-sha256"), Some(id), Some(given)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(TrustError::Malformed);
        };
        let Some(key) = self.keys.iter().find(|k| key_id(k) == id) else {
            return Err(TrustError::UnknownKey(id.to_string()));
        };
        let Ok(given) = base64::engine::general_purpose::STANDARD.decode(given) else {
            return Err(TrustError::Malformed);
        };
        let mut rest = value.clone();
        if let Some(obj) = rest.as_object_mut() {
            obj.remove(FIELD);
        }
        let mut m = HmacSha256::new_from_slice(key.expose().as_bytes()).expect("any key length");
        m.update(&canonical(&rest));
        m.verify_slice(&given).map_err(|_| TrustError::Mismatch)
    }
}

fn key_id(key: &Secret) -> String {
    let digest = Sha256::digest(key.expose().as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

fn mac(key: &Secret, bytes: &[u8]) -> String {
    let mut m = HmacSha256::new_from_slice(key.expose().as_bytes()).expect("any key length");
    m.update(bytes);
    base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
}

/// JSON with every object's keys sorted, so a document serialises to the same bytes wherever it
/// was written or read.
fn canonical(v: &Value) -> Vec<u8> {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_vec(&sorted(v)).expect("JSON serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const K1: &str = "first-fleet-key-0123456789";
    const K2: &str = "second-fleet-key-abcdefghij";

    #[test]
    fn a_signed_document_verifies_and_any_change_breaks_it() {
        let keys = FleetKeys::from_text(K1).unwrap();
        let mut doc = json!({"id": "rb-1", "epoch": 2, "revision": 7, "phase": "stopping",
                             "expected_hosts": ["a", "b"]});
        keys.sign(&mut doc);
        assert!(doc[FIELD].as_str().unwrap().starts_with("hmac-sha256:"));
        keys.verify(&doc).unwrap();
        // Key order does not matter (canonical form); content does.
        let reordered: Value = serde_json::from_str(&serde_json::to_string(&doc).unwrap()).unwrap();
        keys.verify(&reordered).unwrap();
        for (field, forged) in [
            ("phase", json!("reinstalling")),
            ("epoch", json!(3)),
            ("revision", json!(8)),
            ("expected_hosts", json!(["a"])),
        ] {
            let mut f = doc.clone();
            f[field] = forged;
            assert_eq!(keys.verify(&f), Err(TrustError::Mismatch), "{field}");
        }
        let mut unsigned = doc.clone();
        unsigned.as_object_mut().unwrap().remove(FIELD);
        assert_eq!(keys.verify(&unsigned), Err(TrustError::Unsigned));
        let mut garbled = doc.clone();
        garbled[FIELD] = json!("hmac-sha256:zz");
        assert_eq!(keys.verify(&garbled), Err(TrustError::Malformed));
    }

    #[test]
    fn a_key_rotates_without_downtime() {
        let old = FleetKeys::from_text(K1).unwrap();
        let both = FleetKeys::from_text(&format!("{K1}\n{K2}\n")).unwrap();
        let swapped = FleetKeys::from_text(&format!("{K2}\n{K1}\n")).unwrap();
        let new = FleetKeys::from_text(K2).unwrap();
        let mut by_old = json!({"id": "x", "revision": 1});
        old.sign(&mut by_old);
        let mut by_new = json!({"id": "x", "revision": 2});
        swapped.sign(&mut by_new);
        // Step 1 (both, old first) reads the old; step 2 (swapped) reads both; step 3 the new.
        both.verify(&by_old).unwrap();
        swapped.verify(&by_old).unwrap();
        swapped.verify(&by_new).unwrap();
        new.verify(&by_new).unwrap();
        assert!(matches!(
            new.verify(&by_old),
            Err(TrustError::UnknownKey(_))
        ));
    }

    #[test]
    fn weak_or_empty_key_files_are_refused_and_keys_never_print() {
        assert!(FleetKeys::from_text("\n \n").is_err());
        assert!(FleetKeys::from_text("short").is_err());
        let keys = FleetKeys::from_text(K1).unwrap();
        let shown = format!("{keys:?}");
        assert!(!shown.contains(K1) && shown.contains("1 key(s)"), "{shown}");
    }
}
