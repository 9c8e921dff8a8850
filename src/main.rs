//! `kibana-rollback`: parse the command line, set up logging, run the subcommand, and turn its
//! outcome into a documented exit code with a one-line error.

mod cli;

use kibana_rollback::{exit, logging};

fn main() -> std::process::ExitCode {
    let args = cli::parse();
    if !matches!(args.command, cli::Command::Agent) {
        // A listing piped into `head` should end quietly, as other CLI tools do; the daemon keeps
        // Rust's default (SIGPIPE ignored) so a closed socket is an error, not a death.
        // SAFETY: setting a signal disposition before any thread is started.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            )
        };
    }
    logging::init(args.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kibana-rollback: error: cannot start the async runtime: {e}");
            return exit::SOFTWARE.into();
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code.into(),
        Err(err) => {
            let code = exit::code_for(&err);
            // `{:#}` joins the context chain on one line: "listing snapshots ...: Elasticsearch is unreachable (...)".
            eprintln!("kibana-rollback: error: {err:#}");
            code.into()
        }
    }
}
