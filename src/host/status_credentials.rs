//! Whether the Kibana status credentials (`kibana.status_username` + `status_password_file`)
//! will work, asked of Elasticsearch — which is who checks them when Kibana does — while
//! Kibana may not be running at all: `GET _security/_authenticate` with them, and for the
//! versions that redact the status of users without the cluster `monitor` privilege (newer 9.x,
//! kibana PR #268942) `POST _security/user/_has_privileges {"cluster":["monitor"]}`.
//!
//! A cluster without security answers these endpoints with an error, not a 401: in 8.x/9.x the
//! security REST handlers are not registered at all ("no handler found for uri ...", 400; the
//! test node, 8.15 without x-pack, answers 405 "Incorrect HTTP method for uri
//! [/_security/_authenticate] and method [GET], allowed: [POST]"), 7.x says "Security must be explicitly enabled when using a [basic] license" (500), and
//! a license without security "current license is non-compliant for [security]" (403). Those
//! are [`Authenticate::SecurityOff`]: no credentials are checked anywhere, Kibana's status is
//! open, nothing to fix.

use reqwest::Method;

use crate::config::{ElasticsearchSettings, EsAuth, Secret};
use crate::es::{EsError, Idempotence};

/// The answer of `_security/_authenticate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authenticate {
    Authenticated {
        username: String,
        roles: Vec<String>,
    },
    /// 401: wrong user or password.
    Refused { reason: String },
    /// The cluster runs without security (see the module docs).
    SecurityOff { reason: String },
    /// Anything else (unreachable, an unexpected answer).
    Unknown { reason: String },
}

/// Sorts the answer of `_security/_authenticate` (or `_has_privileges`): `Ok` with the body, or
/// the error as `Elasticsearch` reported it.
pub fn judge_authenticate(answer: Result<&str, &EsError>) -> Authenticate {
    match answer {
        Ok(body) => {
            let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            match v["username"].as_str() {
                Some(u) => Authenticate::Authenticated {
                    username: u.to_string(),
                    roles: v["roles"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| r.as_str().map(str::to_string))
                        .collect(),
                },
                None => Authenticate::Unknown {
                    reason: format!("no username in the answer: {body}"),
                },
            }
        }
        Err(e) if is_security_off(e) => Authenticate::SecurityOff {
            reason: e.to_string(),
        },
        Err(e) if e.status().map(|s| s.as_u16()) == Some(401) => Authenticate::Refused {
            reason: e.to_string(),
        },
        Err(e) => Authenticate::Unknown {
            reason: e.to_string(),
        },
    }
}

/// The error answers of a cluster without security on its `_security` endpoints
/// ([`crate::es::security_off`]).
pub fn is_security_off(e: &EsError) -> bool {
    crate::es::security_off(e)
}

/// `has_all_requested` of a `_has_privileges` answer.
pub fn judge_has_privileges(body: &str) -> Option<bool> {
    serde_json::from_str::<serde_json::Value>(body).ok()?["has_all_requested"].as_bool()
}

/// Asks Elasticsearch (the agent's own `[elasticsearch]` hosts and CA) with the status
/// credentials. Returns the authentication and, when asked for and authenticated, whether the
/// user has the cluster `monitor` privilege.
pub async fn check(
    es: &ElasticsearchSettings,
    username: &str,
    password: &Secret,
    want_monitor: bool,
) -> (Authenticate, Option<Result<bool, String>>) {
    let mut settings = es.clone();
    settings.auth = EsAuth::Basic {
        username: username.to_string(),
        password: password.clone(),
        source: Default::default(),
    };
    let client = match crate::es::Client::new(&settings) {
        Ok(c) => c,
        Err(e) => {
            return (
                Authenticate::Unknown {
                    reason: e.to_string(),
                },
                None,
            )
        }
    };
    let auth = client
        .send(
            Method::GET,
            "_security/_authenticate",
            None,
            &[],
            None,
            Idempotence::Safe,
        )
        .await;
    let verdict = judge_authenticate(auth.as_ref().map(|(_, body)| body.as_str()));
    if !want_monitor || !matches!(verdict, Authenticate::Authenticated { .. }) {
        return (verdict, None);
    }
    let body = serde_json::json!({"cluster": ["monitor"]});
    let privileges = client
        .send(
            Method::POST,
            "_security/user/_has_privileges",
            Some(&body),
            &[],
            None,
            Idempotence::Safe,
        )
        .await
        .map_err(|e| e.to_string())
        .and_then(|(_, body)| {
            judge_has_privileges(&body).ok_or_else(|| format!("unexpected answer: {body}"))
        });
    (verdict, Some(privileges))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    fn api(status: u16, err_type: Option<&str>, reason: &str) -> EsError {
        EsError::Api {
            method: "GET".into(),
            path: "_security/_authenticate".into(),
            status: StatusCode::from_u16(status).unwrap(),
            err_type: err_type.map(str::to_string),
            reason: reason.into(),
        }
    }

    // Answers as Elasticsearch documents and sends them (security/authenticate, has-privileges).
    #[test]
    fn recorded_answers() {
        let ok = r#"{"username":"kibana_status","roles":["monitoring_user"],"full_name":null,"email":null,"metadata":{},"enabled":true,"authentication_realm":{"name":"native1","type":"native"},"lookup_realm":{"name":"native1","type":"native"},"authentication_type":"realm"}"#;
        assert_eq!(
            judge_authenticate(Ok(ok)),
            Authenticate::Authenticated {
                username: "kibana_status".into(),
                roles: vec!["monitoring_user".into()]
            }
        );
        let refused = api(
            401,
            Some("security_exception"),
            "unable to authenticate user [kibana_status] for REST request [/_security/_authenticate]",
        );
        assert!(matches!(
            judge_authenticate(Err(&refused)),
            Authenticate::Refused { .. }
        ));
        for off in [
            // 8.x/9.x with xpack.security.enabled: false, and the test node (no x-pack)
            api(400, None, "no handler found for uri [/_security/_authenticate] and method [GET]"),
            // recorded from the test node (ES 8.15 without x-pack)
            api(405, None, "Incorrect HTTP method for uri [/_security/_authenticate] and method [GET], allowed: [POST]"),
            // 7.x basic license, security not enabled
            api(500, Some("exception"), "Security must be explicitly enabled when using a [basic] license. Enable security by setting [xpack.security.enabled] to [true] in the elasticsearch.yml file and restart the node."),
            api(403, Some("security_exception"), "current license is non-compliant for [security]"),
            // recorded from the test node of ES 7.17.29 (no x-pack): a document write to `_security`
            api(400, Some("invalid_index_name_exception"), "Invalid index name [_security], must not start with '_', '-', or '+'"),
        ] {
            assert!(matches!(judge_authenticate(Err(&off)), Authenticate::SecurityOff { .. }), "{off}");
        }
        let forbidden = api(
            403,
            Some("security_exception"),
            "action [cluster:admin/xpack/security/user/authenticate] is unauthorized for user [x]",
        );
        assert!(matches!(
            judge_authenticate(Err(&forbidden)),
            Authenticate::Unknown { .. }
        ));
        assert_eq!(
            judge_has_privileges(
                r#"{"username":"kibana_status","has_all_requested":false,"cluster":{"monitor":false},"index":{},"application":{}}"#
            ),
            Some(false)
        );
        assert_eq!(
            judge_has_privileges(
                r#"{"username":"u","has_all_requested":true,"cluster":{"monitor":true},"index":{},"application":{}}"#
            ),
            Some(true)
        );
        assert_eq!(judge_has_privileges("{}"), None);
    }
}
