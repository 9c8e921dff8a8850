//! `host::systemd` against real systemd: two test hosts (real systemd as PID 1 of their own
//! namespaces, real dbus-daemon), booted in parallel on first use, shared by all tests of this
//! file and torn down after the last one — also when tests fail or panic. A third, `c`, is for
//! the one test that freezes its systemd.
//!
//! A custom test main (libtest-mimic) because teardown must run after *all* tests, which the
//! built-in harness has no hook for. Filtering and the usual flags work as with `cargo test`.
//! Not root: every test is reported as ignored, with the reason.

#[path = "common/hosts.rs"]
mod hosts;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hosts::{LazyHosts, TestHost, UnitFile, UnitFile::*};
use kibana_rollback::agent::Host;
use kibana_rollback::config::{self, Sources};
use kibana_rollback::fleet::{HostStep, StepResult};
use kibana_rollback::host::hold::Hold;
use kibana_rollback::host::kibana_status::StatusProbe;
use kibana_rollback::host::local::Local;
use kibana_rollback::host::pkg::PackageManager;
use kibana_rollback::host::systemd::{
    Action, ActiveState, JobResult, LoadState, SystemdUnits, UnitError, Waiting,
};
use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// Generous timeout for operations that should succeed.
const OP: Duration = Duration::from_secs(20);

/// Units installed into every host before boot (`host up --units`).
const UNITS: &[(&str, UnitFile)] = &[
    // stand-in for the real kibana.service (another engineer's stand-in replaces it later)
    ("kibana.service", Text("[Unit]\nDescription=Kibana (test stand-in)\n[Service]\nExecStart=/bin/sleep infinity\n")),
    // its ExecStop hangs; systemd would wait 10 min before killing it
    ("hang-stop.service", Text("[Service]\nExecStart=/bin/sleep infinity\nExecStop=/bin/sleep infinity\nTimeoutStopSec=600\n")),
    // same, but systemd's own job timeout (1 s) gives up first
    ("job-timeout.service", Text("[Unit]\nJobTimeoutSec=1\n[Service]\nExecStart=/bin/sleep infinity\nExecStop=/bin/sleep infinity\nTimeoutStopSec=600\n")),
    // fails to start; oneshot: the start job itself fails (deterministic)
    ("fails.service", Text("[Service]\nType=oneshot\nExecStart=/bin/false\n")),
    // fails to start; simple: the start job is done at fork, the unit fails right after
    ("fails-simple.service", Text("[Service]\nExecStart=/bin/false\n")),
    ("idle.service", Text("[Service]\nExecStart=/bin/sleep infinity\n")),
    ("never-loaded.service", Text("[Service]\nExecStart=/bin/sleep infinity\n")),
    ("denied.service", Text("[Service]\nExecStart=/bin/sleep infinity\n")),
    ("peer.service", Text("[Service]\nExecStart=/bin/sleep infinity\n")),
    ("masked.service", Link("/dev/null")),
    // Kibana's crash loop: exits 1 every time, restarted after 1 s, start limit 3 in 60 s
    ("crashes.service", Text("[Unit]\nStartLimitBurst=3\nStartLimitIntervalSec=60\n[Service]\nExecStart=/bin/sh -c 'echo \"FATAL  Error: Unable to complete saved object migrations for the [.kibana] index\"; exit 1'\nRestart=on-failure\nRestartSec=1\n")),
    // Kibana's answer to a setting it does not know: exit 64
    ("badsetting.service", Text("[Unit]\nStartLimitBurst=3\nStartLimitIntervalSec=60\n[Service]\nExecStart=/bin/sh -c 'echo \"FATAL  Error: Unknown configuration key(s): xpack.newfeature.enabled. Check for spelling errors and ensure that expected plugins are installed.\"; exit 64'\nRestart=on-failure\nRestartSec=1\n")),
    // fails while /var/tmp/kr-limited-fail exists: driven into its start limit, then healed
    ("limited.service", Text("[Unit]\nStartLimitBurst=3\nStartLimitIntervalSec=60\n[Service]\nExecStart=/bin/sh -c 'test -e /var/tmp/kr-limited-fail && exit 1; exec sleep infinity'\nRestart=on-failure\nRestartSec=100ms\n")),
    // a 7.x package's unit: a regular file in /etc/systemd/system (where a mask cannot go)
    ("kibana7.service", Text("[Unit]\nDescription=Kibana 7.x layout\n[Service]\nExecStart=/bin/sleep infinity\nRestart=on-failure\n[Install]\nWantedBy=multi-user.target\n")),
];

/// A test: on the two shared hosts, or without any.
#[derive(Clone, Copy)]
enum Body {
    Hosts(fn(&TestHost, &TestHost) -> Result<(), Failed>),
    /// On host c, which no other test uses.
    Alone(fn(&TestHost) -> Result<(), Failed>),
    Plain(fn() -> Result<(), Failed>),
}

fn main() {
    if let Ok(step) = std::env::var("KR_TEST_CHILD") {
        return child(&step);
    }
    let args = Arguments::from_args();
    let hosts = Arc::new(LazyHosts::new("sd", &["a", "b", "c"], UNITS));
    let skip = hosts::skip_reason();
    if let Some(reason) = &skip {
        println!("host_systemd: skipping the tests on test hosts: {reason}");
    }

    use Body::*;
    let tests: &[(&str, Body)] = &[
        ("harness_host_view", Hosts(harness_host_view)),
        (
            "status_of_an_installed_inactive_unit",
            Hosts(status_of_installed_inactive_unit),
        ),
        (
            "stop_start_restart_kibana",
            Hosts(stop_start_restart_kibana),
        ),
        (
            "stop_of_a_never_loaded_unit_succeeds",
            Hosts(stop_of_never_loaded_unit),
        ),
        (
            "hanging_stop_hits_our_timeout",
            Hosts(hanging_stop_hits_our_timeout),
        ),
        (
            "systemd_job_timeout_is_reported_as_such",
            Hosts(systemd_job_timeout),
        ),
        (
            "failing_start_reports_exit_code",
            Hosts(failing_start_reports_exit_code),
        ),
        (
            "failing_simple_service_reports_exit_code",
            Hosts(failing_simple_service),
        ),
        ("missing_unit_gives_not_found", Hosts(missing_unit)),
        ("masked_unit_gives_masked", Hosts(masked_unit)),
        (
            "unit_added_after_boot_via_daemon_reload",
            Hosts(unit_added_after_boot),
        ),
        (
            "two_hosts_are_independent",
            Hosts(two_hosts_are_independent),
        ),
        ("unreachable_bus_names_the_address", Plain(unreachable_bus)),
        (
            "start_step_fails_fast_on_a_crash_loop",
            Hosts(start_step_fails_fast_on_a_crash_loop),
        ),
        (
            "start_step_names_exit_64_as_an_unknown_setting",
            Hosts(start_step_names_exit_64),
        ),
        (
            "start_step_waits_out_a_systemd_that_does_not_answer",
            Alone(start_step_waits_out_a_systemd_that_does_not_answer),
        ),
        (
            "start_limited_unit_is_reset_and_started",
            Hosts(start_limited_unit_is_reset_and_started),
        ),
        (
            "hold_keeps_a_7x_unit_in_etc_from_starting",
            Hosts(hold_keeps_a_7x_unit_from_starting),
        ),
        (
            "connect_honours_dbus_system_bus_address",
            Hosts(connect_honours_env),
        ),
        (
            "unprivileged_caller_gets_access_denied",
            Hosts(access_denied),
        ),
    ];
    let trials = tests
        .iter()
        .map(|&(name, body)| {
            let hosts = hosts.clone();
            let skip = skip.clone();
            Trial::ignorable_test(name, move || match body {
                Plain(body) => body().map(|()| Completion::Completed),
                Hosts(_) | Alone(_) if skip.is_some() => {
                    Ok(Completion::ignored_with(skip.unwrap()))
                }
                Alone(body) => body(hosts.get("c")?).map(|()| Completion::Completed),
                Hosts(body) => {
                    let (a, b) = (hosts.get("a")?, hosts.get("b")?);
                    body(a, b).map(|()| Completion::Completed)
                }
            })
        })
        .collect();

    let conclusion = libtest_mimic::run(&args, trials);
    drop(hosts); // the trials are gone: this was the last reference; tears the hosts down
    conclusion.exit();
}

/// Runs an async test body on its own runtime.
fn block_on<F: std::future::Future<Output = Result<(), Failed>>>(f: F) -> Result<(), Failed> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

async fn units(host: &TestHost) -> Result<SystemdUnits, Failed> {
    Ok(SystemdUnits::connect_to(&host.bus).await?)
}

/// What systemctl inside the host says (an independent view of the same state).
fn is_active(host: &TestHost, unit: &str) -> String {
    String::from_utf8_lossy(&host.exec(&["systemctl", "is-active", unit]).stdout)
        .trim()
        .to_owned()
}

/// SIGKILLs every process of the unit (its hanging ExecStop too).
fn kill_unit(host: &TestHost, unit: &str) {
    host.exec_ok(&["systemctl", "kill", "--signal=SIGKILL", unit]);
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(what().into())
    }
}

// --- the harness itself -------------------------------------------------------------------------

fn harness_host_view(a: &TestHost, b: &TestHost) -> Result<(), Failed> {
    // own hostname (UTS name and /etc/hostname) and machine-id per host
    for h in [a, b] {
        let name = h.exec_ok(&["hostname"]);
        check(name.trim() == h.name, || {
            format!("hostname {name:?} != {}", h.name)
        })?;
        let file = h.exec_ok(&["cat", "/etc/hostname"]);
        check(file.trim() == h.name, || format!("/etc/hostname {file:?}"))?;
    }
    let ids = [a, b].map(|h| h.exec_ok(&["cat", "/etc/machine-id"]));
    let ours = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    check(ids[0] != ids[1] && ids[0] != ours, || {
        format!("machine-ids not distinct: {ids:?}")
    })?;
    // this machine's root filesystem shows through the overlay (files under /tmp do not: tests
    // stage what hosts must run with `hosts::stage_for_hosts` before booting them)
    let inside = a.exec_ok(&["cat", "/etc/debian_version"]);
    let outside = std::fs::read_to_string("/etc/debian_version").unwrap_or_default();
    check(inside == outside, || {
        format!("/etc/debian_version inside {inside:?}, outside {outside:?}")
    })?;
    // /tmp is a fresh tmpfs
    let tmp = a.exec_ok(&["findmnt", "-n", "-o", "FSTYPE", "/tmp"]);
    check(tmp.trim() == "tmpfs", || format!("/tmp is {tmp:?}"))?;
    // the network namespace is shared: a listener inside is reachable on 127.0.0.1 outside
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port().to_string();
    a.exec_ok(&[
        "bash",
        "-c",
        &format!("echo hello-from-{} > /dev/tcp/127.0.0.1/{port}", a.name),
    ]);
    let (mut conn, _) = listener.accept()?;
    let mut got = String::new();
    std::io::Read::read_to_string(&mut conn, &mut got)?;
    check(got.trim() == format!("hello-from-{}", a.name), || {
        format!("got {got:?}")
    })?;
    // systemd is PID 1 inside
    let comm = a.exec_ok(&["cat", "/proc/1/comm"]);
    check(comm.trim() == "systemd", || format!("PID 1 is {comm:?}"))
}

// --- unit control ---------------------------------------------------------------------------------

fn status_of_installed_inactive_unit(a: &TestHost, _: &TestHost) -> Result<(), Failed> {
    block_on(async {
        let st = units(a).await?.status("idle.service").await?;
        check(st.load_state == LoadState::Loaded, || format!("{st}"))?;
        check(
            st.active_state == ActiveState::Inactive && st.sub_state == "dead",
            || format!("{st}"),
        )?;
        check(st.unit_file_state == "static", || format!("{st}"))?; // no [Install] section
        check(
            st.result.as_deref() == Some("success") && !st.is_masked(),
            || format!("{st}"),
        )?;
        // and a unit that runs: dbus itself
        let st = units(a).await?.status("dbus.service").await?;
        check(st.is_active() && st.sub_state == "running", || {
            format!("{st}")
        })
    })
}

fn stop_start_restart_kibana(a: &TestHost, _: &TestHost) -> Result<(), Failed> {
    block_on(async {
        let sd = units(a).await?;
        let unit = "kibana.service";
        let st = sd.start(unit, OP).await?;
        check(
            st.active_state == ActiveState::Active && st.sub_state == "running",
            || format!("{st}"),
        )?;
        check(is_active(a, unit) == "active", || {
            "systemctl disagrees".into()
        })?;
        let pid = a.exec_ok(&["systemctl", "show", "-P", "MainPID", unit]);

        sd.start(unit, OP).await?; // idempotent
        let again = a.exec_ok(&["systemctl", "show", "-P", "MainPID", unit]);
        check(pid == again, || {
            format!("start of an active unit restarted it: {pid} -> {again}")
        })?;

        let st = sd.restart(unit, OP).await?;
        check(st.is_active(), || format!("{st}"))?;
        let new_pid = a.exec_ok(&["systemctl", "show", "-P", "MainPID", unit]);
        check(new_pid != pid, || format!("restart kept MainPID {pid}"))?;

        let t = Instant::now();
        let st = sd.stop(unit, OP).await?;
        eprintln!("stop of {unit} took {:?}", t.elapsed());
        check(
            st.active_state == ActiveState::Inactive && st.sub_state == "dead",
            || format!("{st}"),
        )?;
        check(st.result.as_deref() == Some("success"), || format!("{st}"))?;
        check(is_active(a, unit) == "inactive", || {
            "systemctl disagrees".into()
        })?;

        let st = sd.stop(unit, OP).await?; // idempotent
        check(st.is_stopped(), || format!("{st}"))
    })
}

fn stop_of_never_loaded_unit(a: &TestHost, _: &TestHost) -> Result<(), Failed> {
    block_on(async {
        // StopUnit answers "not loaded" for a unit systemd has not loaded (nothing referenced
        // never-loaded.service since boot); that must still be a successful stop.
        let st = units(a).await?.stop("never-loaded.service", OP).await?;
        check(
            st.is_stopped() && st.load_state == LoadState::Loaded,
            || format!("{st}"),
        )
    })
}

fn hanging_stop_hits_our_timeout(a: &TestHost, _: &TestHost) -> Result<(), Failed> {
    block_on(async {
        let sd = units(a).await?;
        sd.start("hang-stop.service", OP).await?;
        let timeout = Duration::from_secs(2);
        let t = Instant::now();
        let err = sd
            .stop("hang-stop.service", timeout)
            .await
            .expect_err("stop must not finish");
        let took = t.elapsed();
        let msg = err.to_string();
        eprintln!("{msg} (after {took:?})");
        kill_unit(a, "hang-stop.service"); // else it delays the host's poweroff
        match &err {
            UnitError::TimedOut {
                unit,
                action: Action::Stop,
                timeout: t,
                waiting: Waiting::Job(_),
                last,
            } => {
                check(unit == "hang-stop.service" && *t == timeout, || {
                    format!("{err:?}")
                })?;
                let last = last.as_ref().ok_or("no last state")?;
                check(last.active_state == ActiveState::Deactivating, || {
                    format!("{last}")
                })?;
            }
            other => return Err(format!("expected our TimedOut, got {other:?}").into()),
        }
        check(
            took >= timeout && took < timeout + Duration::from_secs(2),
            || format!("took {took:?}"),
        )?;
        check(
            msg.contains("hang-stop.service") && msg.contains("stop") && msg.contains("2s"),
            || msg.clone(),
        )?;
        check(msg.contains("our timeout"), || msg.clone())
    })
}

fn systemd_job_timeout(a: &TestHost, _: &TestHost) -> Result<(), Failed> {
    block_on(async {
        let sd = units(a).await?;
        sd.start("job-timeout.service", OP).await?;
        let err = sd
            .stop("job-timeout.service", OP)
            .await
            .expect_err("JobTimeoutSec=1 must cancel the stop");
        eprintln!("{err}");
        kill_unit(a, "job-timeout.service");
        match &err {
            UnitError::JobTimedOut {
                unit,
                action: Action::Stop,
                job_timeout,
                ..
            } => {
                check(unit == "job-timeout.service", || format!("{err:?}"))?;
                check(*job_timeout == Some(Duration::from_secs(1)), || {
                    format!("{err:?}")
                })
            }
            other => Err(format!("expected systemd's JobTimedOut, got {other:?}").into()),
        }
    })
}

fn failing_start_reports_exit_code(a: &TestHost, _: &TestHost) -> Result<(), Failed> {
    block_on(async {
        let err = units(a)
            .await?
            .start("fails.service", OP)
            .await
            .expect_err("/bin/false cannot start");
        eprintln!("{err}");
        match &err {
            UnitError::StartFailed {
                unit,
                action: Action::Start,
                job_result: JobResult::Failed,
                status,
            } => {
                check(unit == "fails.service", || format!("{err:?}"))?;
                check(status.result.as_deref() == Some("exit-code"), || {
                    format!("{status}")
                })?;
                check(status.active_state == ActiveState::Failed, || {
                    format!("{status}")
                })?;
            }
            other => return Err(format!("expected StartFailed, got {other:?}").into()),
        }
        check(err.to_string().contains("Result=exit-code"), || {
            err.to_string()
        })
    })
}

fn failing_simple_service(a: &TestHost, _: &TestHost) -> Result<(), Failed> {
    block_on(async {
        // Type=simple: the start job is done as soon as systemd forked; /bin/false dies a moment
        // later. start() reports the failure when it sees it while settling; if the unit was
        // still "active" at that instant, start() succeeds and status() shows the failure.
        let sd = units(a).await?;
        match sd.start("fails-simple.service", OP).await {
            Err(UnitError::StartFailed {
                status,
                job_result: JobResult::Done,
                ..
            }) => check(status.result.as_deref() == Some("exit-code"), || {
                format!("{status}")
            }),
            Ok(st) => {
                eprintln!("fails-simple.service still looked {st} when start() returned");
                let t = Instant::now();
                loop {
                    let st = sd.status("fails-simple.service").await?;
                    if st.active_state == ActiveState::Failed {
                        return check(st.result.as_deref() == Some("exit-code"), || {
                            format!("{st}")
                        });
                    }
                    check(t.elapsed() < Duration::from_secs(5), || {
                        format!("never failed: {st}")
                    })?;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(other) => Err(format!("expected StartFailed after job done, got {other:?}").into()),
        }
    })
}

fn missing_unit(a: &TestHost, _: &TestHost) -> Result<(), Failed> {
    block_on(async {
        let sd = units(a).await?;
        let st = sd.status("no-such.service").await?;
        check(
            st.load_state == LoadState::NotFound && st.is_stopped(),
            || format!("{st}"),
        )?;
        for (action, res) in [
            (Action::Start, sd.start("no-such.service", OP).await),
            (Action::Stop, sd.stop("no-such.service", OP).await),
            (Action::Restart, sd.restart("no-such.service", OP).await),
        ] {
            match res {
                Err(UnitError::NotFound {
                    ref unit,
                    action: a,
                }) if unit == "no-such.service" && a == action => {
                    eprintln!("{}", res.unwrap_err())
                }
                other => return Err(format!("{action}: expected NotFound, got {other:?}").into()),
            }
        }
        Ok(())
    })
}

fn masked_unit(a: &TestHost, _: &TestHost) -> Result<(), Failed> {
    block_on(async {
        let sd = units(a).await?;
        let st = sd.status("masked.service").await?;
        check(st.is_masked() && st.load_state == LoadState::Masked, || {
            format!("{st}")
        })?;
        for (action, res) in [
            (Action::Start, sd.start("masked.service", OP).await),
            (Action::Restart, sd.restart("masked.service", OP).await),
        ] {
            match res {
                Err(UnitError::Masked {
                    ref unit,
                    action: a,
                }) if unit == "masked.service" && a == action => {
                    eprintln!("{}", res.unwrap_err())
                }
                other => return Err(format!("{action}: expected Masked, got {other:?}").into()),
            }
        }
        // systemd lets a masked unit be stopped (it may still run from before the mask)
        let st = sd.stop("masked.service", OP).await?;
        check(st.is_stopped(), || format!("{st}"))
    })
}

fn unit_added_after_boot(a: &TestHost, _: &TestHost) -> Result<(), Failed> {
    a.write_unit("late.service", "[Service]\nExecStart=/bin/sleep infinity\n");
    block_on(async {
        let sd = units(a).await?;
        sd.daemon_reload().await?;
        let st = sd.start("late.service", OP).await?;
        check(st.is_active(), || format!("{st}"))?;
        sd.stop("late.service", OP).await?;
        Ok(())
    })
}

fn two_hosts_are_independent(a: &TestHost, b: &TestHost) -> Result<(), Failed> {
    block_on(async {
        let (sa, sb) = (units(a).await?, units(b).await?);
        let (ra, rb) = tokio::join!(sa.start("peer.service", OP), sb.start("peer.service", OP));
        check(ra?.is_active() && rb?.is_active(), || {
            "not both active".into()
        })?;
        sa.stop("peer.service", OP).await?;
        let (st_a, st_b) = (
            sa.status("peer.service").await?,
            sb.status("peer.service").await?,
        );
        check(st_a.is_stopped() && st_b.is_active(), || {
            format!("{st_a} / {st_b}")
        })?;
        check(is_active(b, "peer.service") == "active", || {
            "b's systemctl disagrees".into()
        })?;
        sb.stop("peer.service", OP).await?;
        Ok(())
    })
}

// --- connecting ---------------------------------------------------------------------------------

fn unreachable_bus() -> Result<(), Failed> {
    block_on(async {
        let address = "unix:path=/nonexistent/kr-test/system_bus_socket";
        let err = SystemdUnits::connect_to(address)
            .await
            .expect_err("nothing listens there");
        let msg = err.to_string();
        eprintln!("{msg}");
        check(
            matches!(&err, UnitError::BusUnreachable { address: a, .. } if a == address),
            || format!("{err:?}"),
        )?;
        check(msg.contains(address), || msg.clone())
    })
}

/// Runs this test binary again as a child that performs one step (see [`child`]); returns its
/// stdout.
fn run_child(step: &str, env: &[(&str, &str)], as_nobody: bool) -> Result<String, Failed> {
    let exe = std::env::current_exe()?;
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(exe);
        c
    } else {
        Command::new(exe)
    };
    cmd.env("KR_TEST_CHILD", step)
        .env_remove("DBUS_SYSTEM_BUS_ADDRESS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    check(out.status.success(), || {
        format!(
            "child {step} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    eprint!("{stdout}");
    Ok(stdout)
}

fn connect_honours_env(a: &TestHost, _: &TestHost) -> Result<(), Failed> {
    let out = run_child("status-dbus", &[("DBUS_SYSTEM_BUS_ADDRESS", &a.bus)], false)?;
    check(
        out.contains("OK dbus.service: LoadState=loaded ActiveState=active"),
        || out.clone(),
    )?;
    let bogus = "unix:path=/nonexistent/kr-env/system_bus_socket";
    let out = run_child("status-dbus", &[("DBUS_SYSTEM_BUS_ADDRESS", bogus)], false)?;
    check(
        out.contains("ERR BusUnreachable") && out.contains(bogus),
        || out.clone(),
    )
}

fn access_denied(a: &TestHost, _: &TestHost) -> Result<(), Failed> {
    block_on(async {
        Ok(units(a)
            .await?
            .start("denied.service", OP)
            .await
            .map(drop)?)
    })?;
    // uid 65534, no polkit in the host: systemd refuses to stop the unit; reading is allowed
    let out = run_child("stop-denied", &[("KR_TEST_BUS", &a.bus)], true)?;
    check(
        out.contains("ERR AccessDenied") && out.contains("stop of denied.service"),
        || out.clone(),
    )?;
    check(out.contains("STATUS active"), || out.clone())?;
    block_on(async { Ok(units(a).await?.stop("denied.service", OP).await.map(drop)?) })
}

// --- the host steps on real units ----------------------------------------------------------------

/// The agent's host adapters for test host `h`, managing `unit`: systemd over the host's bus,
/// commands (journalctl) through `host exec`, files under the host's root; Kibana's status URL
/// on a port where nothing listens.
async fn host_steps(h: &TestHost, unit: &str, start_timeout: &str) -> Result<Host, Failed> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let main = dir.path().join("config.toml");
    std::fs::write(
        &main,
        format!(
            "[elasticsearch]\nhosts = [\"http://127.0.0.1:9\"]\n\
             [kibana]\nunit = \"{unit}\"\nstatus_url = \"http://127.0.0.1:{port}/api/status\"\nstart_timeout = \"{start_timeout}\"\n\
             [coordination]\nhost_id = \"t\"\n[package_manager]\nkind = \"apt\"\n"
        ),
    )?;
    let loaded = config::load(&Sources {
        main,
        dropin_dirs: vec![],
        credentials_dir: None,
    })?;
    let settings = Arc::new(loaded.settings);
    let prefix: Vec<std::ffi::OsString> = [hosts::HARNESS, "exec", &h.name, "--"]
        .iter()
        .map(Into::into)
        .collect();
    let pkg =
        PackageManager::with_command_prefix(&settings.package_manager, prefix.clone()).await?;
    let probe = StatusProbe::new(&settings.kibana)?;
    let local = Local {
        root: h.root.clone(),
        command_prefix: prefix,
    };
    Ok(Host::new(
        units(h).await?,
        pkg,
        probe,
        settings,
        local,
        None,
    ))
}

fn v(s: &str) -> semver::Version {
    semver::Version::parse(s).unwrap()
}

fn start_step_fails_fast_on_a_crash_loop(a: &TestHost, _: &TestHost) -> Result<(), Failed> {
    block_on(async {
        let unit = "crashes.service";
        let host = host_steps(a, unit, "2m").await?;
        let t = Instant::now();
        let err = host
            .start(&v("8.14.3"))
            .await
            .expect_err("a crash loop must fail the step");
        let took = t.elapsed();
        println!("crash loop failed the start step after {took:?}: {err}");
        check(took < Duration::from_secs(15), || {
            format!("took {took:?}: {err}")
        })?;
        // The exit status is read from the unit; when systemd already ran the next process by
        // then, the step says so instead (the journal lines below still show the status).
        check(
            (err.contains("exit status 1") || err.contains("its exit status was not seen"))
                && (err.contains("crash-loops") || err.contains("start limit")),
            || err.clone(),
        )?;
        check(
            err.contains("Unable to complete saved object migrations"),
            || format!("journal lines not quoted: {err}"),
        )?;
        let _ = units(a).await?.stop(unit, OP).await;
        let _ = a.exec(&["systemctl", "reset-failed", unit]);
        Ok(())
    })
}

fn start_step_names_exit_64(a: &TestHost, _: &TestHost) -> Result<(), Failed> {
    block_on(async {
        let unit = "badsetting.service";
        let host = host_steps(a, unit, "2m").await?;
        let t = Instant::now();
        let err = host
            .start(&v("8.14.3"))
            .await
            .expect_err("exit 64 must fail the step");
        let took = t.elapsed();
        println!("exit 64 failed the start step after {took:?}: {err}");
        check(took < Duration::from_secs(10), || format!("took {took:?}"))?;
        check(
            err.contains("exit status 64")
                && err.contains("an unknown setting in kibana.yml: the older Kibana does not know a setting the newer one added"),
            || err.clone(),
        )?;
        check(err.contains("xpack.newfeature.enabled"), || err.clone())?;
        let _ = units(a).await?.stop(unit, OP).await;
        let _ = a.exec(&["systemctl", "reset-failed", unit]);
        Ok(())
    })
}

/// Sends SIGCONT to a frozen process when dropped (also when the test fails).
struct Frozen(u32);

impl Frozen {
    fn stop(pid: u32) -> Self {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::SIGSTOP,
        )
        .expect("SIGSTOP");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::SIGCONT,
        );
    }
}

/// systemd answering nothing for 32 s — longer than a D-Bus call's 25 s — while the start
/// step lifts the hold and starts the unit (as under a queue of other clients' reloads): the
/// step asks again and gets the unit started, and then fails only on what it waits for next
/// (no Kibana answers on the status port here), not on a D-Bus timeout.
fn start_step_waits_out_a_systemd_that_does_not_answer(c: &TestHost) -> Result<(), Failed> {
    block_on(async {
        let unit = "idle.service";
        let host = host_steps(c, unit, "50s").await?;
        let frozen = Frozen::stop(c.pid1);
        let thaw = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(32));
            drop(frozen);
        });
        let t = Instant::now();
        let err = host
            .start(&v("8.14.3"))
            .await
            .expect_err("no Kibana answers: the step must fail in the end");
        let took = t.elapsed();
        let _ = thaw.join();
        println!("the start step with a frozen systemd ended after {took:?}: {err}");
        let state = is_active(c, unit);
        let _ = units(c).await?.stop(unit, OP).await;
        check(!err.contains("D-Bus error"), || {
            format!("failed on the unanswered call: {err}")
        })?;
        check(state == "active", || {
            format!("{unit} is {state}, not started: {err}")
        })?;
        check(took >= Duration::from_secs(32), || {
            format!("took {took:?}: systemd was frozen for 32 s")
        })
    })
}

/// On host b: a daemon-reload makes systemd forget start limits (systemd#29574) and the other
/// tests reload host a (the hold does) while this one runs.
fn start_limited_unit_is_reset_and_started(_: &TestHost, b: &TestHost) -> Result<(), Failed> {
    let unit = "limited.service";
    b.write("/var/tmp/kr-limited-fail", "");
    let _ = b.exec(&["systemctl", "start", unit]);
    let t = Instant::now();
    // systemd 252 keeps Result=exit-code when the limit hits; the journal says "Start request
    // repeated too quickly"
    while b
        .exec_ok(&["systemctl", "show", "-P", "ActiveState", unit])
        .trim()
        != "failed"
        || !b
            .exec_ok(&["journalctl", "--no-pager", "-u", unit, "-o", "cat"])
            .contains("Start request repeated too quickly")
    {
        check(t.elapsed() < Duration::from_secs(20), || {
            let status = b.exec(&["systemctl", "status", "--no-pager", unit]);
            format!(
                "{unit} never hit its start limit: {}",
                String::from_utf8_lossy(&status.stdout)
            )
        })?;
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_file(b.root.join("var/tmp/kr-limited-fail"))?;
    // systemd itself refuses a plain start now ...
    let out = b.exec(&["systemctl", "start", unit]);
    check(!out.status.success(), || {
        "a start-limited unit started without reset-failed".into()
    })?;
    // ... the start step resets it first and starts it (then waits for a Kibana that is not there)
    block_on(async {
        let host = host_steps(b, unit, "3s").await?;
        let err = host
            .start(&v("8.14.3"))
            .await
            .expect_err("no Kibana answers");
        check(
            err.contains("was not healthy at version 8.14.3 within 3s"),
            || err.clone(),
        )?;
        check(is_active(b, unit) == "active", || {
            format!("{unit} is {}", is_active(b, unit))
        })?;
        units(b).await?.stop(unit, OP).await?;
        Ok(())
    })
}

fn hold_keeps_a_7x_unit_from_starting(a: &TestHost, _: &TestHost) -> Result<(), Failed> {
    let unit = "kibana7.service";
    // the 7.x layout: the unit file itself is in /etc/systemd/system, so no mask can be made
    let frag = a.exec_ok(&["systemctl", "show", "-P", "FragmentPath", unit]);
    check(frag.trim() == "/etc/systemd/system/kibana7.service", || {
        frag.clone()
    })?;
    let mask = a.exec(&["systemctl", "mask", unit]);
    check(!mask.status.success(), || {
        "mask succeeded over a unit file in /etc".into()
    })?;
    println!(
        "systemctl mask: {}",
        String::from_utf8_lossy(&mask.stderr).trim()
    );

    let refused = |what: &str| -> Result<(), Failed> {
        let out = a.exec(&["systemctl", "start", unit]);
        check(
            !out.status.success() && is_active(a, unit) != "active",
            || format!("{what}: systemctl start kibana7 started it during the hold"),
        )?;
        println!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim());
        Ok(())
    };
    block_on(async {
        let host = host_steps(a, unit, "3s").await?;
        units(a).await?.start(unit, OP).await?;
        let (result, detail) = host.run(&HostStep::StopUnit, false).await;
        check(result == StepResult::Ok, || detail.clone())?;
        check(is_active(a, unit) == "inactive", || is_active(a, unit))?;
        let hold = Hold::new(&host.local, unit);
        check(hold.is_held(), || {
            "no hold drop-in after the stop step".into()
        })?;
        refused("during the hold")?;
        // a reboot, as far as the unit files go: systemd re-reads them, then boot starts it
        a.exec_ok(&["systemctl", "daemon-reload"]);
        refused("after daemon-reload")?;
        let status = status_text(a, unit);
        check(status.contains("zz-kibana-rollback-hold.conf"), || {
            status.clone()
        })?;
        // the start step: systemd's view was current, so it starts without a reload and
        // reloads after
        start_after_hold(a, &host, unit, false).await?;
        check(!hold.is_held(), || "the start step left the hold".into())?;
        let status = status_text(a, unit);
        check(!status.contains("zz-kibana-rollback-hold.conf"), || {
            format!("systemd still lists the removed hold: {status}")
        })?;

        // held again, and the unit file changed on disk meanwhile (as a package does) while
        // systemd keeps the unit loaded (a unit ordered after it holds a reference, as
        // multi-user.target does for an enabled Kibana; an unreferenced inactive unit is
        // loaded afresh anyway): the start step reloads before it starts, so the start uses
        // the file as it is now
        a.write(
            "/etc/systemd/system/kr-pin7.service",
            "[Unit]\nAfter=kibana7.service\n[Service]\nExecStart=/bin/sleep infinity\n",
        );
        a.exec_ok(&["systemctl", "daemon-reload"]);
        a.exec_ok(&["systemctl", "start", "kr-pin7.service"]);
        let (result, detail) = host.run(&HostStep::StopUnit, false).await;
        check(result == StepResult::Ok, || detail.clone())?;
        std::thread::sleep(Duration::from_millis(20));
        a.exec_ok(&["touch", "/etc/systemd/system/kibana7.service"]);
        let stale = a.exec_ok(&["systemctl", "show", "-P", "NeedDaemonReload", unit]);
        check(stale.trim() == "yes", || {
            format!("systemd does not see the changed unit file: NeedDaemonReload={stale}")
        })?;
        start_after_hold(a, &host, unit, true).await?;
        units(a).await?.stop(unit, OP).await?;
        units(a).await?.stop("kr-pin7.service", OP).await?;
        Ok(())
    })
}

fn status_text(h: &TestHost, unit: &str) -> String {
    String::from_utf8_lossy(&h.exec(&["systemctl", "status", "--no-pager", unit]).stdout)
        .into_owned()
}

/// The start step after a hold: it lifts it and starts the unit (no Kibana answers, so the step
/// then times out waiting for one, which is not what is tested), reloading systemd before the
/// start or after it as `reload_before` says.
async fn start_after_hold(
    h: &TestHost,
    host: &Host,
    unit: &str,
    reload_before: bool,
) -> Result<(), Failed> {
    let cursor = journal_cursor(h);
    let err = host
        .start(&v("7.17.29"))
        .await
        .expect_err("no Kibana answers");
    check(err.contains("not healthy"), || err.clone())?;
    check(is_active(h, unit) == "active", || is_active(h, unit))?;
    reloaded_around_start(h, &cursor, unit, reload_before)
}

fn journal_cursor(h: &TestHost) -> String {
    let out = h.exec_ok(&["journalctl", "--no-pager", "-n", "0", "--show-cursor"]);
    out.lines()
        .find_map(|l| l.strip_prefix("-- cursor: "))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Whether systemd (PID 1's journal since CURSOR) reloaded before it started UNIT, as
/// `before` says, and reloaded at all.
fn reloaded_around_start(
    h: &TestHost,
    cursor: &str,
    unit: &str,
    before: bool,
) -> Result<(), Failed> {
    let log = h.exec_ok(&[
        "journalctl",
        "--no-pager",
        "-o",
        "cat",
        "_PID=1",
        "--after-cursor",
        cursor,
    ]);
    let lines: Vec<&str> = log.lines().collect();
    let reload = lines.iter().position(|l| l.starts_with("Reloading"));
    let name = unit.trim_end_matches(".service");
    let start = lines
        .iter()
        .position(|l| l.starts_with("Start") && l.contains(name));
    check(reload.is_some() && start.is_some(), || {
        format!("no reload or no start of {unit} in systemd's journal:\n{log}")
    })?;
    check((reload < start) == before, || {
        format!(
            "systemd reloaded {} it started {unit}:\n{log}",
            if before { "after" } else { "before" }
        )
    })
}

/// Child mode of this binary (`KR_TEST_CHILD=step`): performs one step in a fresh process (its
/// own environment, or another uid) and prints the outcome on stdout.
fn child(step: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let name = |e: &UnitError| {
            format!("{e:?}")
                .split([' ', '{', '('])
                .next()
                .unwrap()
                .to_owned()
        };
        match step {
            "status-dbus" => match SystemdUnits::connect().await {
                Ok(sd) => match sd.status("dbus.service").await {
                    Ok(st) => println!("OK {st}"),
                    Err(e) => println!("ERR {} {e}", name(&e)),
                },
                Err(e) => println!("ERR {} {e}", name(&e)),
            },
            "stop-denied" => {
                let sd = SystemdUnits::connect_to(&std::env::var("KR_TEST_BUS").unwrap())
                    .await
                    .unwrap();
                match sd.stop("denied.service", OP).await {
                    Ok(st) => println!("OK {st}"),
                    Err(e) => println!("ERR {} {e}", name(&e)),
                }
                match sd.status("denied.service").await {
                    Ok(st) => println!("STATUS {}", st.active_state),
                    Err(e) => println!("STATUS-ERR {e}"),
                }
            }
            other => panic!("unknown child step {other}"),
        }
    });
}
