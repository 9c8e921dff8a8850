//! Running package-manager commands: argv only (never a shell), a fixed locale and a
//! non-interactive environment, a time limit, and errors that carry the command line, the exit
//! code and the tail of the output.

use std::ffi::OsString;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;

use super::PkgError;

/// How many bytes of stderr (or stdout) an error keeps.
const TAIL_BYTES: usize = 2000;

/// Runs commands, optionally through a prefix (`["tests/harness/host", "exec", "h1", "--"]`):
/// the prefix is how tests run the very same argv inside an isolated root or a test host.
#[derive(Debug, Clone)]
pub(crate) struct Runner {
    pub(crate) prefix: Vec<OsString>,
    pub(crate) timeout: Duration,
}

/// The result of a command that ran to completion (any exit status).
#[derive(Debug)]
pub(crate) struct Output {
    pub(crate) cmdline: String,
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Output {
    pub(crate) fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// This output as a [`PkgError::Command`]: the tail of stderr (or stdout), led by dpkg's own
    /// error lines when they are elsewhere — apt-get passes dpkg's messages on to its stdout, so
    /// its stderr holds only "E: Sub-process /usr/bin/dpkg returned an error code (N)", which
    /// does not say what went wrong.
    pub(crate) fn error(&self) -> PkgError {
        let tail = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let mut tail = tail_of(tail, TAIL_BYTES);
        let dpkg = dpkg_error_lines(&self.stdout);
        if !dpkg.is_empty() && !tail.contains(&dpkg) {
            tail = format!("{dpkg}\n{tail}");
        }
        PkgError::Command {
            cmdline: self.cmdline.clone(),
            code: self.code,
            stderr_tail: tail,
        }
    }
}

impl Runner {
    /// Runs `program args...` and returns its output whatever the exit status; fails only when it
    /// could not be started or ran past the time limit (then it is killed).
    pub(crate) async fn run(&self, program: &str, args: &[String]) -> Result<Output, PkgError> {
        let (argv0, rest): (OsString, Vec<OsString>) = match self.prefix.split_first() {
            Some((first, more)) => {
                let mut rest: Vec<OsString> = more.to_vec();
                rest.push(program.into());
                rest.extend(args.iter().map(OsString::from));
                (first.clone(), rest)
            }
            None => (program.into(), args.iter().map(OsString::from).collect()),
        };
        let cmdline = render_cmdline(program, args);
        let mut cmd = Command::new(&argv0);
        cmd.args(&rest)
            .env("LC_ALL", "C")
            .env("LANG", "C")
            .env("LANGUAGE", "C")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("APT_LISTCHANGES_FRONTEND", "none")
            .env("NEEDRESTART_MODE", "l")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let started = Instant::now();
        tracing::debug!(cmd = %cmdline, "running");
        let child = cmd.spawn().map_err(|source| PkgError::Spawn {
            cmdline: cmdline.clone(),
            source,
        })?;
        let waited = if self.timeout == Duration::MAX {
            Ok(child.wait_with_output().await)
        } else {
            tokio::time::timeout(self.timeout, child.wait_with_output()).await
        };
        let out = match waited {
            Ok(r) => r.map_err(|source| PkgError::Spawn {
                cmdline: cmdline.clone(),
                source,
            })?,
            // dropping the future kills the child (kill_on_drop)
            Err(_) => {
                return Err(PkgError::Timeout {
                    cmdline,
                    after: self.timeout,
                })
            }
        };
        let out = Output {
            cmdline,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        tracing::debug!(cmd = %out.cmdline, code = ?out.code, ms = started.elapsed().as_millis() as u64, "finished");
        // What our own package hook said inside apt (README "The package hook"): in the journal,
        // so an operator sees why the agent's reinstall passed it.
        for line in out
            .stderr
            .lines()
            .filter(|l| l.starts_with("kibana-rollback: "))
        {
            tracing::info!(cmd = %out.cmdline, "package hook: {}", &line["kibana-rollback: ".len()..]);
        }
        Ok(out)
    }

    /// A package transaction (install, downgrade, `dpkg --configure -a`): never killed once it
    /// started — a dpkg or rpm run cut in the middle leaves a half-installed package — so the
    /// time limit only makes it log, every limit, that it still runs. A non-zero exit is an error.
    pub(crate) async fn run_transaction(
        &self,
        program: &str,
        args: &[String],
    ) -> Result<Output, PkgError> {
        let patient = Runner {
            prefix: self.prefix.clone(),
            timeout: Duration::MAX,
        };
        let cmdline = render_cmdline(program, args);
        let run = patient.run_ok(program, args);
        tokio::pin!(run);
        let started = Instant::now();
        loop {
            tokio::select! {
                r = &mut run => return r,
                _ = tokio::time::sleep(self.timeout) => tracing::warn!(
                    cmd = %cmdline,
                    "package transaction still running after {}; it is never killed (a cut dpkg/rpm run leaves a half-installed package)",
                    humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()))
                ),
            }
        }
    }

    /// Like [`Runner::run`], but a non-zero exit is an error.
    pub(crate) async fn run_ok(&self, program: &str, args: &[String]) -> Result<Output, PkgError> {
        let out = self.run(program, args).await?;
        if out.success() {
            Ok(out)
        } else {
            Err(out.error())
        }
    }

    /// Whether `program` can be run (`program --version` exits 0). Through a prefix a missing
    /// program shows as exit 126/127 of the prefix, directly as a spawn error: both are "no".
    pub(crate) async fn has(&self, program: &str) -> bool {
        self.version(program).await.is_some()
    }

    /// What `program --version` prints when it can be run (see [`Runner::has`]).
    pub(crate) async fn version(&self, program: &str) -> Option<String> {
        match self.run(program, &["--version".to_string()]).await {
            Ok(o) if o.success() => Some(o.stdout),
            _ => None,
        }
    }
}

/// dpkg's error messages in `out`: each line starting with `dpkg: error` with the indented lines
/// that continue it, and the closing "Errors were encountered while processing:" list; the last
/// [`DPKG_ERROR_LINES`] of them, joined by newlines ("" when there are none).
fn dpkg_error_lines(out: &str) -> String {
    let mut lines: Vec<&str> = Vec::new();
    let mut in_block = false;
    for line in out.lines() {
        let line = line.trim_end();
        if line.starts_with("dpkg: error")
            || line.starts_with("Errors were encountered while processing")
        {
            in_block = true;
            lines.push(line);
        } else if in_block && line.starts_with(' ') && !line.trim().is_empty() {
            lines.push(line);
        } else {
            in_block = false;
        }
    }
    let from = lines.len().saturating_sub(DPKG_ERROR_LINES);
    lines[from..].join("\n")
}

/// How many of dpkg's error lines an error keeps.
const DPKG_ERROR_LINES: usize = 8;

/// `prog arg 'arg with space'` — for messages and logs only, never executed.
pub(crate) fn render_cmdline(program: &str, args: &[String]) -> String {
    let mut s = quote(program);
    for a in args {
        s.push(' ');
        s.push_str(&quote(a));
    }
    s
}

fn quote(a: &str) -> String {
    let plain = !a.is_empty()
        && a.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    '-' | '_' | '.' | '/' | ':' | '=' | ',' | '+' | '@' | '%' | '~' | '^'
                )
        });
    if plain {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

/// The last `max` bytes of `s` (cut at a char boundary, starting at a line if one starts
/// within), trimmed.
pub(crate) fn tail_of(s: &str, max: usize) -> String {
    let s = s.trim_end();
    if s.len() <= max {
        return s.trim_start().to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    let cut = &s[start..];
    let cut = match cut.find('\n') {
        Some(i) if i + 1 < cut.len() => &cut[i + 1..],
        _ => cut,
    };
    format!("...\n{}", cut.trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_errors_on_apts_stdout_lead_the_error() {
        let out = Output {
            cmdline: "apt-get install kibana=8.14.3".into(),
            code: Some(100),
            stdout: "Preparing to unpack .../kibana_8.14.3_amd64.deb ...\n\
                     Unpacking kibana (8.14.3) over (8.15.0) ...\n\
                     Setting up kibana (8.14.3) ...\n\
                     dpkg: error processing package kibana (--configure):\n \
                     installed kibana package post-installation script subprocess returned error exit status 1\n\
                     Errors were encountered while processing:\n kibana\n"
                .into(),
            stderr: "E: Sub-process /usr/bin/dpkg returned an error code (1)\n".into(),
        };
        assert_eq!(
            out.error().to_string(),
            "`apt-get install kibana=8.14.3` exited with code 100: \
             dpkg: error processing package kibana (--configure):\n \
             installed kibana package post-installation script subprocess returned error exit status 1\n\
             Errors were encountered while processing:\n kibana\n\
             E: Sub-process /usr/bin/dpkg returned an error code (1)"
        );
        // Nothing of dpkg's: the tail alone, as before.
        let plain = Output {
            stdout: "Reading package lists...\n".into(),
            stderr: "E: Unable to locate package kibana\n".into(),
            ..out
        };
        assert_eq!(
            plain.error().to_string(),
            "`apt-get install kibana=8.14.3` exited with code 100: E: Unable to locate package kibana"
        );
    }

    #[test]
    fn cmdline_quotes_only_when_needed() {
        let args: Vec<String> = [
            "-y",
            "install",
            "kibana=8.14.3",
            "-o",
            "Dpkg::Options::=--force-confold",
            "a b",
            "it's",
            "${Status}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            render_cmdline("apt-get", &args),
            r#"apt-get -y install kibana=8.14.3 -o Dpkg::Options::=--force-confold 'a b' 'it'\''s' '${Status}'"#
        );
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail_of("  short\n", 100), "short");
        let long = (0..100)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        let t = tail_of(&long, 30);
        assert!(t.starts_with("...\n"), "{t}");
        assert!(t.ends_with("line 99"), "{t}");
        assert!(t.len() <= 35);
        let uni = "é".repeat(100);
        assert!(tail_of(&uni, 11).ends_with('é'));
    }

    #[tokio::test]
    async fn runs_argv_without_shell_and_reports_failures() {
        let r = Runner {
            prefix: vec![],
            timeout: Duration::from_secs(10),
        };
        // a shell metacharacter is just an argument
        let o = r.run_ok("echo", &["$(id);".to_string()]).await.unwrap();
        assert_eq!(o.stdout, "$(id);\n");
        let e = r
            .run_ok("ls", &["/nonexistent-kr-test".to_string()])
            .await
            .unwrap_err();
        match &e {
            PkgError::Command {
                cmdline,
                code,
                stderr_tail,
            } => {
                assert_eq!(cmdline, "ls /nonexistent-kr-test");
                assert_eq!(*code, Some(2));
                assert!(stderr_tail.contains("No such file"), "{stderr_tail}");
            }
            other => panic!("{other}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains("`ls /nonexistent-kr-test` exited with code 2"),
            "{msg}"
        );
        assert!(matches!(
            r.run("/nonexistent-kr-test", &[]).await,
            Err(PkgError::Spawn { .. })
        ));
        assert!(r.has("ls").await);
        assert!(!r.has("/nonexistent-kr-test").await);
    }

    #[tokio::test]
    async fn prefix_and_environment() {
        let r = Runner {
            prefix: vec!["env".into()],
            timeout: Duration::from_secs(10),
        };
        let o = r
            .run_ok("sh", &["-c".into(), "echo $LC_ALL $DEBIAN_FRONTEND".into()])
            .await
            .unwrap();
        assert_eq!(o.stdout, "C noninteractive\n");
    }

    #[tokio::test]
    async fn timeout_kills() {
        let r = Runner {
            prefix: vec![],
            timeout: Duration::from_millis(200),
        };
        let t = Instant::now();
        let e = r.run("sleep", &["5".into()]).await.unwrap_err();
        assert!(matches!(e, PkgError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
