//! Manual pages and shell completions, generated from the clap definitions in `cli/mod.rs` so the
//! documentation can never drift from the parser. `packaging/build` runs the packaged binary's
//! hidden `generate-docs DIR` at package build time and installs what it writes:
//!
//! ```text
//! DIR/man/kibana-rollback.1, DIR/man/kibana-rollback-<subcommand>.1 ...
//! DIR/completions/kibana-rollback.bash, DIR/completions/_kibana-rollback, DIR/completions/kibana-rollback.fish
//! ```
//!
//! `generate-docs` itself is added by `main` only for parsing, not to [`Cli`], so it appears in
//! neither the pages nor the completions.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{bold, italic, roman, Roff};
use clap_mangen::Man;
use kibana_rollback::exit;

use super::Cli;

/// The name of the hidden subcommand `main` adds.
pub const SUBCOMMAND: &str = "generate-docs";

/// The hidden subcommand's definition, for `main` to add to the parser.
pub fn subcommand() -> clap::Command {
    clap::Command::new(SUBCOMMAND)
        .hide(true)
        .about("Write the manual pages and shell completions into DIR (used by packaging/build)")
        .arg(
            clap::Arg::new("dir")
                .value_name("DIR")
                .required(true)
                .value_parser(clap::value_parser!(std::path::PathBuf)),
        )
}

/// What every exit code means (the numbers come from `exit`, the words match the README).
const EXIT_STATUS: &[(u8, &str)] = &[
    (exit::OK, "success; start --wait: the operation ended done; plan: every check passed"),
    (exit::FAILED, "the operation ended failed or aborted, or a check refused (incompatible target, ineligible or missing snapshot, unregistered expected host, abort past the restore point; prepare: mixed Kibana versions, a dead agent, a snapshot that failed verification; a rollback point that does not verify with the fleet key); plan: a check failed"),
    (exit::USAGE, "command-line usage error"),
    (exit::UNAVAILABLE, "Elasticsearch (or the system bus) unreachable"),
    (exit::SOFTWARE, "internal error, or an answer that could not be understood"),
    (exit::TEMPFAIL, "busy: another operation is running or the lock is held (also for prepare); start --wait stopped following (signal) while the operation still runs"),
    (exit::NOPERM, "Elasticsearch refused the credentials or privileges (401/403)"),
    (exit::CONFIG, "invalid configuration, or no target version or repository configured, or a configured target, snapshot or repository that disagrees with the rollback point; nothing was done"),
];

const FILES: &[(&str, &str)] = &[
    ("/etc/kibana-rollback/config.toml", "the main configuration file; every key is documented in /usr/share/doc/kibana-rollback/config.toml"),
    ("/etc/kibana-rollback/config.d/*.toml, /run/kibana-rollback/config.d/*.toml, /usr/lib/kibana-rollback/config.d/*.toml", "drop-ins, merged in systemd's order (name-sorted, later wins per key; /etc masks /usr/lib)"),
    ("/var/lib/kibana-rollback", "the agent's local progress (the unit's StateDirectory=)"),
    ("$CREDENTIALS_DIRECTORY/elasticsearch-api-key", "the Elasticsearch API key passed with LoadCredential= (used when no api_key_file is configured)"),
];

/// Writes every page and completion script into `dir` (created if needed).
pub fn generate(dir: &Path) -> Result<()> {
    let man_dir = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man_dir, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let date = source_date();
    let name = cmd.get_name().to_string();
    write(&man_dir.join(format!("{name}.1")), &main_page(&cmd, &date)?)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let full = format!("{name}-{}", sub.get_name());
        // The page's command is the whole invocation, so SYNOPSIS reads `kibana-rollback start`.
        let sub = sub
            .clone()
            .name(full.clone())
            .bin_name(format!("{name} {}", sub.get_name()))
            .version(cmd.get_version().unwrap_or_default().to_string());
        write(
            &man_dir.join(format!("{full}.1")),
            &sub_page(sub, &name, &date)?,
        )?;
    }
    for (shell, file) in [
        (Shell::Bash, format!("{name}.bash")),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), &name, &mut buf);
        write(&completions.join(file), &buf)?;
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// The pages' date: `SOURCE_DATE_EPOCH` (reproducible builds; packaging/build sets it to the
/// last commit's time), else today.
fn source_date() -> String {
    let when = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
        .unwrap_or_else(std::time::SystemTime::now);
    humantime::format_rfc3339(when).to_string()[..10].to_string()
}

fn man(cmd: clap::Command, date: &str) -> Man {
    let title = cmd.get_name().to_uppercase();
    let source = format!("kibana-rollback {}", cmd.get_version().unwrap_or_default());
    Man::new(cmd)
        .title(title)
        .source(source)
        .date(date)
        .manual("kibana-rollback manual")
}

/// `kibana-rollback(1)`: clap's sections, then FILES, ENVIRONMENT, EXIT STATUS and SEE ALSO.
fn main_page(cmd: &clap::Command, date: &str) -> Result<Vec<u8>> {
    let page = man(cmd.clone(), date);
    let mut out = Vec::new();
    page.render_title(&mut out)?;
    page.render_name_section(&mut out)?;
    page.render_synopsis_section(&mut out)?;
    page.render_description_section(&mut out)?;
    page.render_options_section(&mut out)?;
    page.render_subcommands_section(&mut out)?;
    let mut roff = Roff::default();
    roff.control("SH", ["FILES"]);
    for (path, what) in FILES {
        roff.control("TP", [])
            .text([bold(*path)])
            .text([roman(*what)]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    roff.control("TP", [])
        .text([bold("KIBANA_ROLLBACK_LOG")])
        .text([roman(
        "log filter in tracing's EnvFilter syntax, e.g. info,kibana_rollback=debug; overrides -v",
    )]);
    roff.control("TP", [])
        .text([bold("KIBANA_ROLLBACK_CONFIG")])
        .text([roman("the main configuration file, as --config")]);
    roff.control("TP", [])
        .text([bold("CREDENTIALS_DIRECTORY")])
        .text([roman("set by systemd for LoadCredential=; see FILES")]);
    roff.control("SH", ["EXIT STATUS"]);
    for (code, what) in EXIT_STATUS {
        roff.control("TP", [])
            .text([bold(code.to_string())])
            .text([roman(*what)]);
    }
    roff.control("SH", ["SEE ALSO"]);
    let mut refs: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| format!("{}-{}(1)", cmd.get_name(), s.get_name()))
        .collect();
    refs.extend(["systemctl(1)".into(), "systemd.exec(5)".into()]);
    roff.text([roman(refs.join(", "))]);
    roff.text([
        roman("The units "),
        italic("kibana-rollbackd.service"),
        roman(" (the agent) and "),
        italic("kibana-rollback.service"),
        roman(" (the trigger: systemctl start kibana-rollback)."),
    ]);
    roff.to_writer(&mut out)?;
    page.render_version_section(&mut out)?;
    Ok(out)
}

/// `kibana-rollback-<sub>(1)`: clap's sections and a SEE ALSO back to the main page.
fn sub_page(sub: clap::Command, main: &str, date: &str) -> Result<Vec<u8>> {
    let has_args = sub.get_arguments().any(|a| !a.is_hide_set());
    let page = man(sub, date);
    let mut out = Vec::new();
    page.render_title(&mut out)?;
    page.render_name_section(&mut out)?;
    page.render_synopsis_section(&mut out)?;
    page.render_description_section(&mut out)?;
    if has_args {
        page.render_options_section(&mut out)?;
    }
    let mut roff = Roff::default();
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(format!("{main}(1)"))]);
    roff.to_writer(&mut out)?;
    page.render_version_section(&mut out)?;
    Ok(out)
}
