//! Kibana's log output, in the formats the journal and log files show:
//!
//! * 8.x+ (`@kbn/core-logging-server-internal`): the `default` console appender prints the
//!   pattern layout `[%date][%level][%logger] %message` to stdout, e.g.
//!   `[2024-06-01T10:00:00.123+00:00][INFO ][savedobjects-service] [.kibana] INIT -> ...`;
//!   a `file` appender configured in kibana.yml (the OS packages' kibana.yml has one, json
//!   layout, `/var/log/kibana/kibana.log`) gets ECS JSON lines.
//! * 7.x legacy logging: `logging.dest` (stdout, or a file: the 7.x unit passes
//!   `--logging.dest=/var/log/kibana/kibana.log`), JSON lines
//!   `{"type":"log","@timestamp":...,"tags":["info","plugins-service"],"pid":N,"message":...}`
//!   unless `logging.json: false` (JSON is the default when the destination is not a TTY).
//! * A fatal error is always mirrored to stderr as `\n FATAL  <error>\n` (`bootstrap.ts`
//!   `onRootShutdown`), so it reaches the journal even when the log goes to a file.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Settings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Fatal => "fatal",
        }
    }
}

enum Sink {
    Stdout,
    File(Mutex<File>),
}

impl Sink {
    fn write(&self, line: &str) {
        match self {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            Sink::File(f) => {
                let mut f = f.lock().unwrap();
                let _ = writeln!(f, "{line}");
            }
        }
    }
}

enum Format {
    Pattern,
    Ecs,
    LegacyJson,
    LegacyText,
}

pub struct Logger {
    outputs: Vec<(Sink, Format)>,
    min: Level,
}

impl Logger {
    /// The appenders kibana.yml configures for this version. A log file that cannot be opened
    /// is fatal, as in Kibana.
    pub fn from_settings(s: &Settings, legacy: bool) -> Result<Logger, String> {
        let open = |path: &str| -> Result<Sink, String> {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(|f| Sink::File(Mutex::new(f)))
                .map_err(|e| format!("Error: {e}, open '{path}'"))
        };
        if legacy {
            if s.flag("logging.silent") {
                return Ok(Logger {
                    outputs: vec![],
                    min: Level::Fatal,
                });
            }
            let min = if s.flag("logging.quiet") {
                Level::Error
            } else if s.flag("logging.verbose") {
                Level::Debug
            } else {
                Level::Info
            };
            let dest = s.str("logging.dest").unwrap_or_else(|| "stdout".into());
            let sink = if dest == "stdout" {
                Sink::Stdout
            } else {
                open(&dest)?
            };
            // legacy logging config: json defaults to true for a file, to !isTTY for stdout;
            // a service's stdout is never a TTY.
            let format = if s.bool("logging.json").unwrap_or(true) {
                Format::LegacyJson
            } else {
                Format::LegacyText
            };
            return Ok(Logger {
                outputs: vec![(sink, format)],
                min,
            });
        }
        let min = match s.str("logging.root.level").as_deref() {
            Some("all") | Some("trace") | Some("debug") => Level::Debug,
            Some("warn") => Level::Warn,
            Some("error") => Level::Error,
            Some("fatal") | Some("off") => Level::Fatal,
            _ => Level::Info,
        };
        let roots = s.list("logging.root.appenders");
        let roots = if roots.is_empty() {
            vec!["default".to_string()]
        } else {
            roots
        };
        let mut outputs = Vec::new();
        for name in roots {
            if name == "default" {
                outputs.push((Sink::Stdout, Format::Pattern));
                continue;
            }
            let base = format!("logging.appenders.{name}");
            let layout = match s.str(&format!("{base}.layout.type")).as_deref() {
                Some("json") => Format::Ecs,
                _ => Format::Pattern,
            };
            match s.str(&format!("{base}.type")).as_deref() {
                Some("console") => outputs.push((Sink::Stdout, layout)),
                Some("file") | Some("rolling-file") => {
                    let path = s
                        .str(&format!("{base}.fileName"))
                        .ok_or_else(|| format!("[config validation of [logging].appenders.{name}.fileName]: expected value of type [string] but got [undefined]"))?;
                    outputs.push((open(&path)?, layout));
                }
                _ => {}
            }
        }
        Ok(Logger { outputs, min })
    }

    /// Before the configuration is read: the default console appender.
    pub fn console() -> Logger {
        Logger {
            outputs: vec![(Sink::Stdout, Format::Pattern)],
            min: Level::Info,
        }
    }

    pub fn log(&self, level: Level, logger: &str, message: &str) {
        if level < self.min {
            return;
        }
        let now = now_iso();
        for (sink, format) in &self.outputs {
            let line = match format {
                Format::Pattern => format!(
                    "[{now}][{:<5}][{logger}] {message}",
                    level.name().to_uppercase()
                ),
                // Written by hand: Kibana's key order, which serde_json's map would sort.
                Format::Ecs => format!(
                    r#"{{"ecs":{{"version":"8.11.0"}},"@timestamp":"{now}","message":{},"log":{{"level":"{}","logger":{}}},"process":{{"pid":{}}}}}"#,
                    quoted(message),
                    level.name().to_uppercase(),
                    quoted(logger),
                    std::process::id()
                ),
                Format::LegacyJson => format!(
                    r#"{{"type":"log","@timestamp":"{now}","tags":["{}",{}],"pid":{},"message":{}}}"#,
                    level.name(),
                    quoted(logger),
                    std::process::id(),
                    quoted(message)
                ),
                Format::LegacyText => format!(
                    "  log   [{}] [{}][{logger}] {message}",
                    &now[11..23],
                    level.name()
                ),
            };
            sink.write(&line);
        }
    }

    pub fn info(&self, logger: &str, message: &str) {
        self.log(Level::Info, logger, message)
    }
    pub fn warn(&self, logger: &str, message: &str) {
        self.log(Level::Warn, logger, message)
    }
    pub fn error(&self, logger: &str, message: &str) {
        self.log(Level::Error, logger, message)
    }
    pub fn debug(&self, logger: &str, message: &str) {
        self.log(Level::Debug, logger, message)
    }

    /// `root.shutdown(reason)`: the fatal log record, then the stderr mirror of `bootstrap.ts`.
    pub fn fatal(&self, reason: &str) {
        self.log(Level::Fatal, "root", reason);
        eprintln!("\n FATAL  {reason}\n");
    }
}

fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// `YYYY-MM-DDTHH:MM:SS.mmm+00:00` (Kibana's ISO8601_TZ; the stand-in always logs in UTC).
pub fn now_iso() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let secs = d.as_secs() as i64;
    let (y, mo, da) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{da:02}T{:02}:{:02}:{:02}.{:03}+00:00",
        s / 3600,
        (s / 60) % 60,
        s % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(super::civil_from_days(19_783), (2024, 3, 1));
    }
}
