//! Which of Elastic's package repositories holds a Kibana version, and the lines that configure
//! it: Elastic publishes one repository per major (`7.x`, `8.x`, `9.x`), so a target of another
//! major than the installed Kibana (7.17 after a failed 8.x upgrade, 8.18/8.19 after a failed
//! 9.x one) is usually missing from a host that only has the newer major's repository.

use semver::Version;

/// Elastic's repository name for `v`'s major (`8.x`).
pub fn repository(v: &Version) -> String {
    format!("{}.x", v.major)
}

/// The apt sources line (as Elastic documents it, without the keyring option).
pub fn apt_line(v: &Version) -> String {
    format!(
        "deb https://artifacts.elastic.co/packages/{}/apt stable main",
        repository(v)
    )
}

/// The dnf `.repo` file (`/etc/yum.repos.d/elastic-<major>.x.repo`), one line per setting.
pub fn dnf_repo(v: &Version) -> String {
    let r = repository(v);
    format!(
        "[elastic-{r}] name=Elastic repository for {r} packages; baseurl=https://artifacts.elastic.co/packages/{r}/yum; gpgcheck=1; gpgkey=https://artifacts.elastic.co/GPG-KEY-elasticsearch; enabled=1; autorefresh=1; type=rpm-md"
    )
}

/// How to make `target` installable when `installed` is of another major.
pub fn advice(target: &Version, installed: Option<&Version>, apt: bool) -> Option<String> {
    let installed = installed?;
    if installed.major == target.major {
        return None;
    }
    let r = repository(target);
    Some(if apt {
        format!(
            "Kibana {target} is in Elastic's {r} repository, not the {}.x one: add `{}` to /etc/apt/sources.list.d/elastic-{r}.list (with the Elastic signing key, as for the {}.x one), then run apt-get update",
            installed.major,
            apt_line(target),
            installed.major
        )
    } else {
        format!(
            "Kibana {target} is in Elastic's {r} repository, not the {}.x one: create /etc/yum.repos.d/elastic-{r}.repo with the lines {}",
            installed.major,
            dnf_repo(target)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_major_targets_name_the_repository_lines() {
        let t = Version::new(7, 17, 29);
        let i = Version::new(8, 15, 0);
        assert_eq!(
            apt_line(&t),
            "deb https://artifacts.elastic.co/packages/7.x/apt stable main"
        );
        let a = advice(&t, Some(&i), true).unwrap();
        assert!(
            a.contains("`deb https://artifacts.elastic.co/packages/7.x/apt stable main`"),
            "{a}"
        );
        let d = advice(&Version::new(8, 19, 3), Some(&Version::new(9, 1, 0)), false).unwrap();
        assert!(
            d.contains("[elastic-8.x]")
                && d.contains("baseurl=https://artifacts.elastic.co/packages/8.x/yum"),
            "{d}"
        );
        assert_eq!(advice(&Version::new(8, 14, 3), Some(&i), true), None);
        assert_eq!(advice(&t, None, true), None);
    }
}
