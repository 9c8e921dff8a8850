//! Validated package names and versions, and the mapping from a fleet (upstream) version such as
//! `8.14.3` to the exact package version a repository offers (`8.14.3` in Elastic's .deb,
//! `8.14.3-1` in its .rpm).
//!
//! Both newtypes are checked once, at construction; the adapters only accept them, so nothing
//! that reaches an `apt-get`/`dnf`/`rpm` argv can look like an option, contain whitespace or a
//! glob, or be empty.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::PkgError;

const MAX_LEN: usize = 128;

/// A package name valid for both dpkg and rpm: starts with an ASCII letter or digit, then
/// letters, digits, `+`, `.`, `_`, `-` (Debian forbids upper case and `_`, RPM allows them; the
/// package manager itself rejects what its format does not allow).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PackageName(String);

impl PackageName {
    pub fn new(name: impl Into<String>) -> Result<Self, PkgError> {
        let name = name.into();
        let bad = |reason: &str| PkgError::InvalidName {
            name: name.clone(),
            reason: reason.to_string(),
        };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name.len() > MAX_LEN {
            return Err(bad("it is longer than 128 characters"));
        }
        if !name.as_bytes()[0].is_ascii_alphanumeric() {
            return Err(bad("it must start with a letter or a digit"));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '_' | '-')))
        {
            return Err(bad(&format!(
                "character {c:?} is not allowed (letters, digits, '+', '.', '_', '-' only)"
            )));
        }
        Ok(PackageName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A package version as the package manager spells it: Debian `[epoch:]upstream[-revision]`
/// or RPM `[epoch:]version-release`. Starts with a digit; then letters, digits and
/// `.` `+` `~` `^` `_` `:` `-`. An explicit RPM/Debian epoch `0:` is dropped (it means the same
/// as no epoch, and `rpm`/`dnf` print it inconsistently).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PackageVersion(String);

impl PackageVersion {
    pub fn new(version: impl Into<String>) -> Result<Self, PkgError> {
        let v = version.into();
        validate_version(&v)?;
        let v = match v.strip_prefix("0:") {
            Some(rest) => {
                validate_version(rest)?;
                rest.to_string()
            }
            None => v,
        };
        Ok(PackageVersion(v))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The epoch, if one is spelled (`1:8.14.3` -> `Some("1")`).
    pub fn epoch(&self) -> Option<&str> {
        let (e, _) = self.0.split_once(':')?;
        Some(e)
    }

    /// The upstream part: without epoch and without the last `-revision`/`-release`
    /// (`1:8.14.3-1` -> `8.14.3`; `8.14.3` -> `8.14.3`).
    pub fn upstream(&self) -> &str {
        let no_epoch = match self.0.split_once(':') {
            Some((_, rest)) => rest,
            None => &self.0,
        };
        match no_epoch.rsplit_once('-') {
            Some((up, _)) => up,
            None => no_epoch,
        }
    }
}

fn validate_version(v: &str) -> Result<(), PkgError> {
    let bad = |reason: &str| PkgError::InvalidVersion {
        version: v.to_string(),
        reason: reason.to_string(),
    };
    if v.is_empty() {
        return Err(bad("it is empty"));
    }
    if v.len() > MAX_LEN {
        return Err(bad("it is longer than 128 characters"));
    }
    if !v.as_bytes()[0].is_ascii_digit() {
        return Err(bad("it must start with a digit"));
    }
    if let Some(c) = v.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~' | '^' | '_' | ':' | '-'))
    }) {
        return Err(bad(&format!(
            "character {c:?} is not allowed in a Debian or RPM version"
        )));
    }
    if let Some((epoch, rest)) = v.split_once(':') {
        if !epoch.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the epoch (before ':') must be a number"));
        }
        if rest.contains(':') {
            return Err(bad("only one ':' (after the epoch) is allowed"));
        }
        if !rest.as_bytes().first().is_some_and(u8::is_ascii_digit) {
            return Err(bad("the version after the epoch must start with a digit"));
        }
    }
    if v.ends_with('-') || v.contains("--") {
        return Err(bad("empty revision/release around '-'"));
    }
    Ok(())
}

macro_rules! string_newtype_impls {
    ($t:ident) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl FromStr for $t {
            type Err = PkgError;
            fn from_str(s: &str) -> Result<Self, PkgError> {
                $t::new(s)
            }
        }
        impl TryFrom<String> for $t {
            type Error = PkgError;
            fn try_from(s: String) -> Result<Self, PkgError> {
                $t::new(s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}
string_newtype_impls!(PackageName);
string_newtype_impls!(PackageVersion);

/// Maps a requested version (normally the fleet's upstream version, `8.14.3`) to the one package
/// version in `available` it means:
///
/// 1. a package version equal to the request (`8.14.3` in a .deb repo, or a request already
///    spelled as a package version such as `8.14.3-1`), else
/// 2. the package versions whose upstream part ([`PackageVersion::upstream`]) equals the request
///    (`8.14.3-1` in an .rpm repo).
///
/// Exactly one must match: none is [`PkgError::NotAvailable`] (listing what is available), more
/// than one (`8.14.3-1` and `8.14.3-2`, or two epochs) is [`PkgError::AmbiguousVersion`] — the
/// operator then has to name the package version.
pub fn match_upstream_version(
    package: &PackageName,
    requested: &str,
    available: &[PackageVersion],
) -> Result<PackageVersion, PkgError> {
    let req = PackageVersion::new(requested)?;
    let mut exact: Vec<&PackageVersion> = available.iter().filter(|a| **a == req).collect();
    exact.dedup();
    if let [one] = exact.as_slice() {
        return Ok((*one).clone());
    }
    let mut by_upstream: Vec<&PackageVersion> = available
        .iter()
        .filter(|a| a.upstream() == req.as_str())
        .collect();
    by_upstream.sort();
    by_upstream.dedup();
    match by_upstream.as_slice() {
        [] => Err(PkgError::NotAvailable {
            package: package.clone(),
            version: requested.to_string(),
            available: available.to_vec(),
        }),
        [one] => Ok((*one).clone()),
        many => Err(PkgError::AmbiguousVersion {
            package: package.clone(),
            requested: requested.to_string(),
            candidates: many.iter().map(|v| (*v).clone()).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> PackageVersion {
        PackageVersion::new(s).unwrap()
    }
    fn vs(list: &[&str]) -> Vec<PackageVersion> {
        list.iter().map(|s| v(s)).collect()
    }
    fn kibana() -> PackageName {
        PackageName::new("kibana").unwrap()
    }

    #[test]
    fn names_accepted() {
        for ok in [
            "kibana",
            "kibana-oss",
            "libc6",
            "g++",
            "python3.11",
            "Foo_Bar",
            "0ad",
        ] {
            assert!(PackageName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn names_rejected() {
        for bad in [
            "",
            "-y",
            "--allow-downgrades",
            "kib ana",
            "kibana=8.14.3",
            "kib*",
            "a/b",
            "kibana\n",
            ".hidden",
            "kibana;rm",
            "kíbana",
            "$(x)",
        ] {
            let e = PackageName::new(bad).unwrap_err();
            assert!(matches!(e, PkgError::InvalidName { .. }), "{bad:?}: {e}");
        }
        assert!(PackageName::new("a".repeat(129)).is_err());
    }

    #[test]
    fn versions_accepted() {
        for ok in [
            "8.14.3",
            "8.14.3-1",
            "1:8.14.3-1",
            "8.15.0~rc1",
            "8.14.3-1.el9",
            "2.0+dfsg-1",
            "1.2^git1",
            "8.14.3-1ubuntu0.1",
            "1.0_beta",
        ] {
            assert_eq!(v(ok).as_str(), ok);
        }
    }

    #[test]
    fn zero_epoch_is_dropped() {
        assert_eq!(v("0:8.14.3-1").as_str(), "8.14.3-1");
        assert_eq!(v("0:8.14.3-1").epoch(), None);
        assert_eq!(v("2:8.14.3-1").epoch(), Some("2"));
    }

    #[test]
    fn versions_rejected() {
        for bad in [
            "",
            "-1",
            "--allow-unauthenticated",
            "v8.14.3",
            "8.14.3 ",
            " 8.14.3",
            "8.14 .3",
            "8.14.3;reboot",
            "8.14.*",
            "8.14.3/..",
            "a:8.14.3",
            "1:2:3",
            "1:x",
            "8.14.3-",
            "8.14.3--1",
            "8.14.3\t",
            "8.14.3=1",
            "$(id)",
            "8.14.3\n",
        ] {
            let e = PackageVersion::new(bad).unwrap_err();
            assert!(matches!(e, PkgError::InvalidVersion { .. }), "{bad:?}: {e}");
        }
        assert!(PackageVersion::new(format!("1.{}", "0".repeat(127))).is_err());
    }

    #[test]
    fn upstream_part() {
        assert_eq!(v("8.14.3").upstream(), "8.14.3");
        assert_eq!(v("8.14.3-1").upstream(), "8.14.3");
        assert_eq!(v("1:8.14.3-1.el9").upstream(), "8.14.3");
        assert_eq!(v("1:8.14.3").upstream(), "8.14.3");
        assert_eq!(v("2.0-beta-1").upstream(), "2.0-beta");
    }

    #[test]
    fn match_deb_exact() {
        let got = match_upstream_version(&kibana(), "8.14.3", &vs(&["8.15.0", "8.14.3"])).unwrap();
        assert_eq!(got, "8.14.3");
    }

    #[test]
    fn match_rpm_release() {
        let got =
            match_upstream_version(&kibana(), "8.14.3", &vs(&["8.14.3-1", "8.15.0-1"])).unwrap();
        assert_eq!(got, "8.14.3-1");
        let got = match_upstream_version(&kibana(), "8.14.3", &vs(&["1:8.14.3-1.el9", "8.15.0-1"]))
            .unwrap();
        assert_eq!(got, "1:8.14.3-1.el9");
    }

    #[test]
    fn match_requested_as_package_version() {
        let got =
            match_upstream_version(&kibana(), "8.14.3-2", &vs(&["8.14.3-1", "8.14.3-2"])).unwrap();
        assert_eq!(got, "8.14.3-2");
    }

    #[test]
    fn match_exact_beats_upstream() {
        // a deb repo carrying both 8.14.3 and 8.14.3-1: the literal version wins
        let got =
            match_upstream_version(&kibana(), "8.14.3", &vs(&["8.14.3-1", "8.14.3"])).unwrap();
        assert_eq!(got, "8.14.3");
    }

    #[test]
    fn match_no_prefix_confusion() {
        let e = match_upstream_version(
            &kibana(),
            "8.14.3",
            &vs(&["8.14.30-1", "8.14.3.1", "18.14.3"]),
        )
        .unwrap_err();
        assert!(matches!(e, PkgError::NotAvailable { .. }), "{e}");
    }

    #[test]
    fn match_missing_lists_available() {
        let e = match_upstream_version(&kibana(), "9.9.9", &vs(&["8.15.0", "8.14.3"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "version 9.9.9 of kibana is not available in the configured repositories \
             (available: 8.15.0, 8.14.3)"
        );
        let e = match_upstream_version(&kibana(), "9.9.9", &[]).unwrap_err();
        assert!(e.to_string().ends_with("(available: none)"), "{e}");
    }

    #[test]
    fn match_ambiguous() {
        let e = match_upstream_version(
            &kibana(),
            "8.14.3",
            &vs(&["8.14.3-1", "8.14.3-2", "8.15.0-1"]),
        )
        .unwrap_err();
        match &e {
            PkgError::AmbiguousVersion { candidates, .. } => {
                assert_eq!(candidates, &vs(&["8.14.3-1", "8.14.3-2"]))
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("8.14.3-1, 8.14.3-2"), "{e}");
    }

    #[test]
    fn match_duplicates_are_one() {
        // the same version from two repositories (madison lists both)
        let got =
            match_upstream_version(&kibana(), "8.14.3", &vs(&["8.14.3-1", "8.14.3-1"])).unwrap();
        assert_eq!(got, "8.14.3-1");
        let got = match_upstream_version(&kibana(), "8.14.3", &vs(&["8.14.3", "8.14.3"])).unwrap();
        assert_eq!(got, "8.14.3");
    }

    #[test]
    fn match_rejects_bad_request() {
        let e = match_upstream_version(&kibana(), "--force", &vs(&["8.14.3"])).unwrap_err();
        assert!(matches!(e, PkgError::InvalidVersion { .. }));
    }

    #[test]
    fn serde_validates() {
        let ok: PackageVersion = serde_json::from_str("\"8.14.3\"").unwrap();
        assert_eq!(ok, "8.14.3");
        assert!(serde_json::from_str::<PackageVersion>("\"-x\"").is_err());
        assert!(serde_json::from_str::<PackageName>("\"a b\"").is_err());
    }
}
